//! skiff-agent as a library: joining a cluster, the assembled daemon (session with the
//! masters, the worker that reconciles assigned tasks with running containers, the node
//! network, the agent API), and the glue to the runtime, image and network crates.
//! `main.rs` only parses flags and calls in here.
//!
//! ```text
//!  join.rs ──► identity.rs (<data>/agent.toml, <data>/tls) ◄── renew.rs (2/3 of the lifetime)
//!  agent.rs ──► session/ (masters) ──► network router ──► worker/ ──► containers.rs
//!          └──► api.rs (TaskLogs, TaskExec for managers)          (runtime, image, network)
//! ```

pub mod agent;
pub mod api;
pub mod config;
pub mod containers;
pub mod host;
pub mod identity;
pub mod join;
pub mod malloc;
pub mod renew;
pub mod session;
pub mod worker;
