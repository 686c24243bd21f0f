//! The runtime's error type: every variant names the step, and the path, syscall or
//! container it failed on.

use std::path::PathBuf;

use crate::cgroup::CgroupError;
use crate::seccomp::SeccompError;

/// What failed while driving a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container id {id:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId { id: String },
    #[error("container {id} already exists")]
    AlreadyExists { id: String },
    #[error("container {id} not found")]
    NotFound { id: String },
    #[error("container {id}: invalid spec: {reason}")]
    InvalidSpec { id: String, reason: String },
    #[error("{step} {path}: {err}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("container {id}: {step}: {message}")]
    Shim {
        id: String,
        step: String,
        message: String,
    },
    #[error("container {id}: shim protocol on {path}: {err}")]
    Protocol {
        id: String,
        path: PathBuf,
        #[source]
        err: serde_json::Error,
    },
    #[error("container {id} is {status}, {wanted}")]
    WrongState {
        id: String,
        status: crate::Status,
        wanted: &'static str,
    },
    #[error("container {id}: shim (pid {pid}) is gone and left no exit status")]
    ShimGone { id: String, pid: i32 },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("container {id}: delete left {what}")]
    Leftover { id: String, what: String },
}

impl RuntimeError {
    pub(crate) fn io(step: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        RuntimeError::Io {
            step,
            path: path.into(),
            err,
        }
    }
}
