//! What the worker needs from the machine to run one task, as a narrow trait: the real
//! implementation (`containers.rs`) pulls images, prepares the network and drives
//! skiff-runtime; the worker's own tests use a recording fake.

use std::future::Future;
use std::time::Duration;

use skiff_proto::v1 as pb;

/// How a container ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// The signal that killed it, 0 if none.
    pub signal: i32,
    pub oom_killed: bool,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal == 0 && !self.oom_killed
    }
}

/// A container found on the machine at start-up (the agent restarted, the container
/// kept running under its shim).
#[derive(Clone, Debug, PartialEq)]
pub struct Existing {
    pub task_id: String,
    /// None while it runs.
    pub exit: Option<Exit>,
    pub pid: u32,
}

/// A step of a task's life that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct ExecError {
    pub step: &'static str,
    pub message: String,
    /// The agent refuses the task outright (bad spec, unknown image) rather than it
    /// failing while running: reported as REJECTED.
    pub reject: bool,
}

impl ExecError {
    pub fn new(step: &'static str, err: impl std::fmt::Display) -> Self {
        ExecError {
            step,
            message: err.to_string(),
            reject: false,
        }
    }

    pub fn rejected(step: &'static str, err: impl std::fmt::Display) -> Self {
        ExecError {
            step,
            message: err.to_string(),
            reject: true,
        }
    }
}

/// Runs tasks on this machine. Every method is keyed by task id and idempotent enough
/// to be retried after an agent restart.
pub trait Executor: Send + Sync + 'static {
    /// Pulls the image, prepares the network and creates the container (not started).
    fn prepare(&self, task: &pb::Task) -> impl Future<Output = Result<(), ExecError>> + Send;
    /// Starts the prepared container; returns its pid.
    fn start(&self, task_id: &str) -> impl Future<Output = Result<u32, ExecError>> + Send;
    /// Waits until the container exits.
    fn wait(&self, task_id: &str) -> impl Future<Output = Result<Exit, ExecError>> + Send;
    /// Sends the stop signal, then SIGKILL after `grace`.
    fn stop(
        &self,
        task_id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;
    /// Gives up the network attachment of a task that has ended (its addresses go back
    /// to the masters, which may hand them to a new task at once), keeping the
    /// container and its logs until `remove`. Idempotent.
    fn release_network(&self, task_id: &str) -> impl Future<Output = Result<(), ExecError>> + Send;
    /// Deletes the container and its network attachment.
    fn remove(&self, task_id: &str) -> impl Future<Output = Result<(), ExecError>> + Send;
    /// Runs `argv` inside the running container (its namespaces and cgroup) and returns
    /// its exit code; killed after `timeout`. Used for health checks.
    fn exec(
        &self,
        task_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<i32, ExecError>> + Send;
    /// The health check the task's image defines (Docker's `HEALTHCHECK`), used where
    /// the service sets none or leaves fields out. Asked once the image is on the node.
    fn image_healthcheck(
        &self,
        task: &pb::Task,
    ) -> impl Future<Output = Option<pb::HealthCheck>> + Send {
        let _ = task;
        async { None }
    }
    /// Containers on this machine, running or exited, that skiff made.
    fn list(&self) -> impl Future<Output = Result<Vec<Existing>, ExecError>> + Send;
}
