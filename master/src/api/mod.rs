//! The master's gRPC surface: the cluster API for `skiffctl`, access checks, and the
//! one place domain errors become statuses.

pub mod auth;
pub mod cluster;
pub mod deploy;
pub mod images;
pub mod proxy;
pub mod status;
