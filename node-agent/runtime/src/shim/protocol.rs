//! The typed messages between the library and a container's shim: the create reply on
//! the shim's stdout, then one JSON request line and one JSON response line per
//! connection on `<state_dir>/<id>/shim.sock`.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroup::Layout;
use crate::config::Rootfs;
use crate::seccomp::CompiledFilters;
use crate::state::ExitStatus;

/// Everything the shim needs, written by the library to `<dir>/shim.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: Rootfs,
    pub layout: Layout,
    pub cgroup: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// Compiled once by the library from `spec.linux.seccomp`.
    pub seccomp: Option<CompiledFilters>,
}

/// The shim's first and only line on its stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CreateReply {
    Created { pid: i32, shim_pid: i32 },
    Failed { step: String, message: String },
}

/// A request to a running shim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Let the created process exec its entrypoint.
    Start,
    /// Signal the container's PID 1 through the shim's pidfd (no pid reuse race).
    Kill { signal: i32 },
    /// Reply once the container has exited.
    Wait,
}

/// The shim's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Started { pid: i32 },
    Done,
    Exited(ExitStatus),
    Failed { step: String, message: String },
}

/// Files of a container's state directory.
pub mod files {
    pub const SHIM_CONFIG: &str = "shim.json";
    pub const SOCKET: &str = "shim.sock";
    pub const SHIM_LOG: &str = "shim.log";
    pub const LOG: &str = "container.log";
    /// The mount point of every container's root, beside the containers' directories
    /// (`<state>/.rootfs`): each container mounts its root there inside its own private
    /// mount namespace before `pivot_root`, so one directory serves them all and a
    /// container costs no mount-point directory of its own on the host's disk.
    pub const ROOTFS: &str = ".rootfs";
}
