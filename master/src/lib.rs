//! skiff-master as a library: the raft-replicated store, the cluster and dispatcher
//! APIs, and the leader's controllers. `main.rs` only parses flags and calls in here.
//!
//! ```text
//!  skiffctl ──mTLS──► api::cluster (ClusterApi) ─┐ follower: forward the call to the leader
//!  agents  ──mTLS──► dispatcher (leader's)        ├─► MasterHandle ─► raft::RaftNode ─► openraft
//!  masters ──mTLS──► raft::service (RaftTransport)┘        │ read / watch        │ raft-log, snapshots
//!                                                          ▼                     ▼
//!                                                    store::Store ◄── state machine applies
//!                                                          ▲ CAS writes
//!  controllers (leader only): liveness, orchestrator, IPAM, scheduler
//! ```
//!
//! ## For the dispatcher and the controllers: `MasterHandle`
//!
//! [`handle::MasterHandle`] is cheap to clone and is all a component needs:
//! - `read(|state: &StoreState| ...)`: the store as this master applied it (indexes:
//!   `tasks_of_service`, `tasks_on_node`, `service_by_name`, `nodes_by_hostname`, ...);
//!   `linearize().await` first for a read that sees every committed write.
//! - `watch(after_revision, kinds)`: change events with revision = raft index;
//!   `revisions()`: a `tokio::sync::watch` that ticks after every applied entry.
//! - `propose(pb::Command).await -> Result<revision, ProposeError>`: every mutation is
//!   compare-and-swap on `Meta.version` unless `unconditional`; a set `request_id` makes
//!   retries safe. `ProposeError::Rejected(ApplyError::Conflict{..})` = re-read and retry.
//! - `is_leader()`, `leader()` (a `watch::Receiver<LeaderInfo>` that changes with
//!   elections), `raft_id()`, `cluster_id()`, `addr()`.
//! - It implements `dispatcher::service::DispatchStore`.
//!
//! ## What every master runs
//!
//! `server::Master::start` serves, on one port: the raft transport, `Join` (with TLS),
//! the cluster API and the dispatcher (`dispatcher::server`: sessions checked by
//! `dispatcher::access`, refused on followers with the leader's address). It then spawns
//! the leader's controllers (`controllers::Controllers`), which act only while this
//! master leads: node liveness from the dispatcher's heartbeats, orchestration, network
//! allocation and placement, as one pure pass (`controllers::pass`) per store change or
//! timer. Shutdown: stop serving, stop the controllers, `raft.shutdown()`.
//!
//! More gRPC services go on the same server through [`server::ExtraServices`]:
//! `Master::start(&opts, mode, Some(Box::new(|handle, routes| { routes.add_service(...);
//! })))`. Access checks for them: `api::auth::Guard` (the one in `server::TlsSetup`) or
//! `skiff_pki::Authorizer`.

pub mod api;
pub mod config;
pub mod controllers;
pub mod dispatcher;
pub mod handle;
pub mod raft;
pub mod recovery;
pub mod server;
pub mod store;
pub mod tls;
