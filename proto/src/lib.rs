//! skiff's wire contracts: the `skiff.v1` protobuf messages and gRPC services, generated
//! at build time from `proto/skiff/v1/*.proto`. Every crate imports them as
//! `use skiff_proto::v1 as pb;`.

/// `skiff.v1`: objects, store commands, and the cluster, dispatcher, raft and agent APIs.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("skiff.v1");
    include!(concat!(env!("OUT_DIR"), "/skiff.v1.serde.rs"));
}

mod short_id;
mod task_state;

pub use short_id::short_id;
pub use task_state::TaskStateExt;
