//! skiff's own container runtime: creates, starts, supervises and deletes containers
//! from OCI runtime specs with Linux namespaces, cgroups (v1 and v2), overlayfs and
//! seccomp. No runc, crun or containerd underneath.
//!
//! ```text
//!  agent (tokio) ── Runtime ──spawn──► skiff-shim (one per container, single-threaded)
//!        │   create/start/kill/wait over <state>/<id>/shim.sock    │ clone3(PIDFD, ns flags)
//!        │   state/list from <state>/<id>/state.json               ▼
//!        │   pause/stats/delete on cgroups directly             container init (child.rs):
//!        │   exec: skiff-shim exec (setns via pidfd, fork, exec)   cgroup, setns, rootfs
//!        └── logs from <state>/<id>/container.log (json-file)      (overlay, mounts, pivot_root,
//!                                                                  masks), user, caps, seccomp,
//!                                                                  close_range, execve
//! ```
//!
//! ## Limitations
//! - x86_64 only for seccomp (the syscall table); rootful only (no user namespaces).
//! - `cgroup`-type mounts in a spec are skipped (no /sys/fs/cgroup inside containers).
//! - cgroup v2 device rules (eBPF) are not applied; /dev holds only the nodes created.
//! - The log follower polls every 100 ms; lines written during a rotation between two
//!   polls may be missed by a follower (not by the file).
//! - A container's own TTY output goes to the log as `stdout`; there is no attach.
//! - If the shim is SIGKILLed the container keeps running but its exit is not recorded;
//!   `state` then reports it stopped without an exit status.

pub mod cgroup;
mod child;
pub mod config;
pub mod error;
mod init_layer;
pub mod placement;
pub mod process;
mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod state;
mod sys;

pub use cgroup::{Cgroup, CgroupError, Layout, Stats};
pub use config::{ContainerId, CreateOptions, EtcFiles, Rootfs, RuntimeConfig};
pub use error::RuntimeError;
pub use runtime::{ExecOptions, ExecProcess, LogOptions, Runtime};
pub use shim::log::LogEntry;
pub use spec::{SpecOptions, docker_spec};
pub use state::{ContainerState, ExitStatus, Status};
