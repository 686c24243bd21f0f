//! What the caller configures: the runtime as a whole (`RuntimeConfig`) and one
//! container (`CreateOptions`: spec, root filesystem, /etc files). Also the container id
//! newtype, which is a path component everywhere and is therefore validated.

use std::fmt;
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroup::Layout;
use crate::error::RuntimeError;

/// A container's id: 1-64 of `[A-Za-z0-9_.-]`, not starting with `.`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl ContainerId {
    pub fn new(id: impl Into<String>) -> Result<Self, RuntimeError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 64
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(ContainerId(id))
        } else {
            Err(RuntimeError::InvalidId { id })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContainerId {
    type Error = RuntimeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ContainerId::new(s)
    }
}

impl From<ContainerId> for String {
    fn from(id: ContainerId) -> String {
        id.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the runtime is set up on this machine.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// One directory per container below it (state, logs, shim socket).
    pub state_dir: PathBuf,
    /// cgroups are made at `<hierarchy>/<cgroup_parent>/<id>`; `skiff` in production,
    /// `skiff-test-<unique>` in tests.
    pub cgroup_parent: String,
    /// The `skiff-shim` binary.
    pub shim_path: PathBuf,
    /// Rotate the json log when it would grow past this; 0 disables rotation.
    pub log_max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub log_max_files: u32,
    /// Override the probed cgroup layout (tests).
    pub cgroup_layout: Option<Layout>,
}

impl RuntimeConfig {
    /// Production defaults below `state_dir`: cgroup parent `skiff`, logs rotated at
    /// 10 MiB keeping 3 files (Docker's json-file default is unbounded).
    pub fn new(state_dir: impl Into<PathBuf>, shim_path: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            state_dir: state_dir.into(),
            cgroup_parent: "skiff".into(),
            shim_path: shim_path.into(),
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 3,
            cgroup_layout: None,
        }
    }
}

/// The container's root filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rootfs {
    /// A ready directory, bind-mounted as the root.
    Dir(PathBuf),
    /// overlayfs of image layer directories (`lowers`, lowest layer first) under a
    /// per-container `upper` and `work` (same filesystem, both owned by the caller).
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
}

/// Content for `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, written to the
/// container's state directory and bind-mounted over the image's. A file the spec
/// already mounts is left to the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcFiles {
    pub hosts: Option<String>,
    pub hostname: Option<String>,
    pub resolv_conf: Option<String>,
}

/// Everything `create` needs for one container.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub spec: Spec,
    pub rootfs: Rootfs,
    pub etc: EtcFiles,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_safe() {
        assert!(ContainerId::new("web.1_a-b").is_ok());
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(ContainerId::new(bad).is_err(), "{bad:?}");
        }
    }
}
