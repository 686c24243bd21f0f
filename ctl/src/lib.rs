//! skiffctl as a library: compose parsing and validation, the cluster client, output
//! formatting and progress. `main.rs` only parses flags and dispatches to `commands`.

pub mod cli;
pub mod client;
pub mod commands;
pub mod compose;
pub mod context;
pub mod output;
