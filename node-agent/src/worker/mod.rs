//! The worker: keeps the containers on this node converged to the tasks the masters
//! assigned. `reconcile` is the pure decision; each task then gets a runner, a small
//! async task that owns that task's life (prepare → start → wait, or stop → remove) and
//! reports every state change. Assignments are kept on disk so that, after a restart
//! with no master reachable, the agent still knows what should run and leaves it alone.
//!
//! ```text
//!  session ──Assignments──► Worker ──reconcile──► Start / Stop / Remove
//!                             │                        │
//!                             │            runner per task (desired: watch)
//!                             │                        │ prepare, start, wait, stop
//!  session ◄──statuses────────┴────────────────────────┘ (Executor)
//! ```

pub mod executor;
pub mod health;
pub mod reconcile;
mod runner;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prost::Message;
use skiff_proto::v1::{self as pb, TaskState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session::SessionEvent;
use executor::Executor;
use reconcile::{Action, Observed};
use runner::Runner;

/// A task's latest status, shared between its runner and the worker.
pub type SharedStatus = Arc<Mutex<pb::TaskStatus>>;

type Registry = Arc<Mutex<BTreeMap<String, SharedStatus>>>;

struct Handle {
    desired: watch::Sender<TaskState>,
    status: SharedStatus,
    has_container: bool,
}

/// The worker's state: the current assignment and a runner per task.
pub struct Worker<E: Executor> {
    executor: Arc<E>,
    statuses: mpsc::Sender<pb::TaskStatusUpdate>,
    state_file: PathBuf,
    assignments: pb::Assignments,
    tasks: HashMap<String, Handle>,
    /// The same statuses, shared with the session for `Register`.
    registry: Registry,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Errors of the worker's own bookkeeping (task failures are statuses, not errors).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot read assignments {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("assignments file {path} is corrupt: {err}")]
    Decode {
        path: PathBuf,
        err: prost::DecodeError,
    },
    #[error("cannot write assignments {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("listing containers at start: {0}")]
    List(executor::ExecError),
}

impl<E: Executor> Worker<E> {
    /// Loads the last assignment from `state_file` and re-adopts the containers the
    /// executor finds (they kept running while the agent was away).
    pub async fn start(
        executor: Arc<E>,
        statuses: mpsc::Sender<pb::TaskStatusUpdate>,
        state_file: PathBuf,
        shutdown: CancellationToken,
    ) -> Result<Self, WorkerError> {
        let assignments = load_assignments(&state_file)?;
        let mut worker = Worker {
            executor,
            statuses,
            state_file,
            assignments,
            tasks: HashMap::new(),
            registry: Registry::default(),
            tracker: TaskTracker::new(),
            shutdown,
        };
        let existing = worker.executor.list().await.map_err(WorkerError::List)?;
        for found in existing {
            let task = worker
                .assignments
                .tasks
                .iter()
                .find(|t| t.id == found.task_id)
                .cloned()
                .unwrap_or_else(|| pb::Task {
                    id: found.task_id.clone(),
                    desired_state: TaskState::Shutdown as i32,
                    ..Default::default()
                });
            tracing::info!(task = %found.task_id, running = found.exit.is_none(), "re-adopting container");
            worker.spawn_runner(task, Some(found));
        }
        worker.converge();
        Ok(worker)
    }

    /// Statuses of every task the worker knows, for the session's `Register`.
    pub fn snapshot(&self) -> Vec<pb::TaskStatusUpdate> {
        snapshot_of(&self.registry)
    }

    /// A cheap handle the session calls before each `Register`.
    pub fn snapshot_fn(&self) -> impl Fn() -> Vec<pb::TaskStatusUpdate> + Send + Sync + 'static {
        let registry = self.registry.clone();
        move || snapshot_of(&registry)
    }

    /// Runs until `shutdown`: applies each assignment the session delivers. Containers
    /// keep running when the worker stops.
    pub async fn run(mut self, mut events: mpsc::Receiver<SessionEvent>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(SessionEvent::Assignments(a)) => self.assign(a),
                    Some(_) => {}
                    None => break,
                },
                _ = tick.tick() => self.converge(),
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Takes a new full assignment: persists it, then converges.
    pub fn assign(&mut self, assignments: pb::Assignments) {
        if let Err(err) = self.persist(&assignments) {
            tracing::error!(%err, "keeping assignments in memory only");
        }
        self.assignments = assignments;
        self.converge();
    }

    fn persist(&self, a: &pb::Assignments) -> Result<(), WorkerError> {
        let tmp = self.state_file.with_extension("tmp");
        let write = |err| WorkerError::Write {
            path: self.state_file.clone(),
            err,
        };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        std::fs::write(&tmp, a.encode_to_vec()).map_err(write)?;
        std::fs::rename(&tmp, &self.state_file).map_err(write)
    }

    /// One reconcile pass: compare assignments with runners and act.
    fn converge(&mut self) {
        let observed: BTreeMap<String, Observed> = self
            .tasks
            .iter()
            .map(|(id, h)| {
                (
                    id.clone(),
                    Observed {
                        task_id: id.clone(),
                        state: lock(&h.status).state(),
                        has_container: h.has_container,
                    },
                )
            })
            .collect();
        for action in reconcile::reconcile(&self.assignments.tasks, &observed) {
            match action {
                Action::Start(task) => self.spawn_runner(*task, None),
                Action::Stop { task_id, .. } => {
                    if let Some(h) = self.tasks.get(&task_id) {
                        h.desired.send_replace(TaskState::Shutdown);
                    }
                }
                Action::Remove { task_id } => {
                    if let Some(h) = self.tasks.get_mut(&task_id) {
                        h.desired.send_replace(TaskState::Remove);
                        h.has_container = false;
                    }
                }
                Action::ReportShutdown { task_id } => {
                    // Sent again on the next pass (2 s) if the session is busy, until
                    // the assignment shows the masters recorded it.
                    let update = pb::TaskStatusUpdate {
                        task_id,
                        status: Some(pb::TaskStatus {
                            state: TaskState::Shutdown as i32,
                            timestamp_ms: now_ms(),
                            message: "called off before it started on this node".into(),
                            ..Default::default()
                        }),
                        networks: Vec::new(),
                    };
                    let _ = self.statuses.try_send(update);
                }
            }
        }
        // Runners whose task ended and was removed are forgotten once unassigned.
        let assigned: std::collections::HashSet<&str> = self
            .assignments
            .tasks
            .iter()
            .map(|t| t.id.as_str())
            .collect();
        self.tasks.retain(|id, h| {
            assigned.contains(id.as_str()) || h.has_container || !h.desired.is_closed()
        });
        lock(&self.registry).retain(|id, _| self.tasks.contains_key(id));
    }

    fn spawn_runner(&mut self, task: pb::Task, adopt: Option<executor::Existing>) {
        let (desired_tx, desired_rx) = watch::channel(task.desired_state());
        let initial = match &adopt {
            Some(found) if found.exit.is_none() => TaskState::Running,
            Some(_) => TaskState::Complete,
            None => TaskState::Accepted,
        };
        let status: SharedStatus = Arc::new(Mutex::new(pb::TaskStatus {
            state: initial as i32,
            timestamp_ms: now_ms(),
            ..Default::default()
        }));
        let runner = Runner {
            executor: self.executor.clone(),
            task: task.clone(),
            desired: desired_rx,
            status: status.clone(),
            statuses: self.statuses.clone(),
            shutdown: self.shutdown.clone(),
        };
        lock(&self.registry).insert(task.id.clone(), status.clone());
        self.tasks.insert(
            task.id.clone(),
            Handle {
                desired: desired_tx,
                status,
                has_container: true,
            },
        );
        let span = tracing::info_span!("task", id = %task.id);
        self.tracker
            .spawn(tracing::Instrument::instrument(runner.run(adopt), span));
    }
}

/// The assignment last persisted in `state_file` (empty if there is none yet).
pub fn load_assignments(state_file: &std::path::Path) -> Result<pb::Assignments, WorkerError> {
    match std::fs::read(state_file) {
        Ok(bytes) => pb::Assignments::decode(bytes.as_slice()).map_err(|err| WorkerError::Decode {
            path: state_file.to_owned(),
            err,
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(pb::Assignments::default()),
        Err(err) => Err(WorkerError::Read {
            path: state_file.to_owned(),
            err,
        }),
    }
}

fn snapshot_of(registry: &Registry) -> Vec<pb::TaskStatusUpdate> {
    lock(registry)
        .iter()
        .map(|(id, s)| pb::TaskStatusUpdate {
            task_id: id.clone(),
            status: Some(lock(s).clone()),
            networks: Vec::new(),
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A runner that panicked while holding the lock left a status behind; it is still
    // the best we know.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
