//! The lab: skiff "machines" as network namespaces on one host, each running the real
//! binaries, with guards that remove everything they made. Used by the `skiff-lab` CLI
//! (the README's main command) and by the multi-node suites in `tests/tests/`.

pub mod cgroup;
pub mod cluster;
pub mod eventually;
pub mod host;
pub mod lab;
pub mod process;
pub mod topology;

pub use cluster::{Binaries, Cluster, ClusterError, CtlOutput, REGISTRY_BIN};
pub use lab::{Lab, LabError, LabState, Machine, Role};
