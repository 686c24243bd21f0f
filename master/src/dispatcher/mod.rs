//! The dispatcher: one bidirectional session per agent, held with the leader.
//! Assignments and endpoint tables go down whenever what a node must know changes;
//! heartbeats and batched task statuses come up and are written to the store.
//! Served on the master's gRPC port by every master (followers point agents at the
//! leader); the heartbeats it records feed the leader's node liveness
//! (`controllers`).

pub mod access;
pub mod assign;
pub mod service;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use skiff_proto::v1::dispatcher_server::DispatcherServer;

use crate::api::auth::Guard;
use crate::handle::MasterHandle;
use service::{DispatcherService, Heartbeats};

/// The `skiff.v1.Dispatcher` service of this master: sessions checked by `guard`,
/// heartbeats recorded into `heartbeats`, the masters announced to agents read from
/// the raft membership when each session opens.
pub fn server(
    handle: &MasterHandle,
    guard: Guard,
    heartbeats: Heartbeats,
) -> DispatcherServer<DispatcherService<MasterHandle>> {
    let members = handle.clone();
    let masters = Arc::new(move || {
        members
            .raft()
            .masters()
            .into_iter()
            .filter(|(_, _, voter)| *voter)
            .map(|(_, addr, _)| addr)
            .collect()
    });
    DispatcherServer::new(DispatcherService::new(
        handle.clone(),
        access::authenticate(guard),
        heartbeats,
        masters,
    ))
}
