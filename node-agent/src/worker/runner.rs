//! One task's life on this node, owned by one async task: prepare → start → wait for
//! exit or a stop request → stop → release its network → (once unassigned) remove. Every state change is
//! reported with a timestamp and, on failure, the step that failed. When the agent
//! shuts down the runner just returns: the container keeps running under its shim.

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::v1::{self as pb, TaskState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::executor::{ExecError, Executor, Existing, Exit};
use super::health::{Check, Tracker, merge};
use super::{SharedStatus, lock, now_ms};

pub(super) struct Runner<E: Executor> {
    pub executor: Arc<E>,
    pub task: pb::Task,
    pub desired: watch::Receiver<TaskState>,
    pub status: SharedStatus,
    pub statuses: mpsc::Sender<pb::TaskStatusUpdate>,
    pub shutdown: CancellationToken,
}

/// How the runner's main phase ended.
enum Ended {
    /// The container is gone or never ran; wait for removal.
    Done,
    /// The agent is shutting down: leave everything as it is.
    AgentStopping,
}

impl<E: Executor> Runner<E> {
    pub async fn run(mut self, adopt: Option<Existing>) {
        let ended = match adopt {
            Some(found) => match found.exit {
                Some(exit) => {
                    self.report_exit(&exit, false).await;
                    Ended::Done
                }
                None => {
                    self.set(TaskState::Running, |s| {
                        s.pid = i32::try_from(found.pid).unwrap_or(0)
                    })
                    .await;
                    // The health the masters last recorded carries over an agent
                    // restart (Docker keeps it in the container's state too).
                    let known = self
                        .task
                        .status
                        .as_ref()
                        .map(pb::TaskStatus::health)
                        .filter(|h| {
                            matches!(h, pb::HealthState::Healthy | pb::HealthState::Unhealthy)
                        });
                    self.supervise(known).await
                }
            },
            None => self.launch().await,
        };
        if let Ended::AgentStopping = ended {
            return;
        }
        // Ended: its addresses are free again as far as the masters know, and may be
        // given to a new task any moment; a namespace still holding them would answer
        // in its place (same address and MAC on the bridge). The container (its logs)
        // stays until the task is unassigned.
        if let Err(err) = self.executor.release_network(&self.task.id).await {
            tracing::warn!(%err, "releasing the network of an ended task");
        }
        loop {
            if *self.desired.borrow_and_update() == TaskState::Remove {
                if let Err(err) = self.executor.remove(&self.task.id).await {
                    tracing::warn!(%err, "removing container");
                }
                return;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                changed = self.desired.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Prepare and start, then supervise.
    async fn launch(&mut self) -> Ended {
        if self.wants_stop() {
            self.set(TaskState::Shutdown, |s| {
                s.message = "stopped before it started".into()
            })
            .await;
            return Ended::Done;
        }
        self.set(TaskState::Preparing, |s| {
            s.message = "pulling image, preparing network".into()
        })
        .await;
        let prepared = tokio::select! {
            () = self.shutdown.cancelled() => return Ended::AgentStopping,
            r = self.executor.prepare(&self.task) => r,
        };
        if let Err(err) = prepared {
            self.fail(err).await;
            return Ended::Done;
        }
        if self.wants_stop() {
            self.set(TaskState::Shutdown, |s| {
                s.message = "stopped before it started".into()
            })
            .await;
            return Ended::Done;
        }
        self.set(TaskState::Starting, |s| s.message = "starting".into())
            .await;
        match self.executor.start(&self.task.id).await {
            Ok(pid) => {
                self.set(TaskState::Running, |s| {
                    s.pid = i32::try_from(pid).unwrap_or(0);
                    s.message = "started".into();
                })
                .await;
            }
            Err(err) => {
                self.fail(err).await;
                return Ended::Done;
            }
        }
        self.supervise(None).await
    }

    /// Waits for the container to exit, or for a stop request; runs the health check
    /// meanwhile.
    async fn supervise(&mut self, known_health: Option<pb::HealthState>) -> Ended {
        let id = self.task.id.clone();
        let executor = self.executor.clone();
        let wait = executor.wait(&id);
        tokio::pin!(wait);
        let image_check = self.executor.image_healthcheck(&self.task).await;
        let merged = merge(
            self.task
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .and_then(|c| c.healthcheck.as_ref()),
            image_check.as_ref(),
        );
        let check = Check::from_spec(merged.as_ref());
        let started = tokio::time::Instant::now();
        let mut tracker = check.as_ref().map(|c| match known_health {
            Some(h) => Tracker::resume(c, h),
            None => Tracker::new(c),
        });
        if let Some(t) = &tracker {
            self.set_health(t.state).await;
        }
        let period = check
            .as_ref()
            .map_or(Duration::from_secs(3600), |c| c.interval);
        let mut probe = tokio::time::interval_at(started + period, period);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Ended::AgentStopping,
                _ = probe.tick(), if check.is_some() => {
                    let (Some(check), Some(tracker)) = (&check, tracker.as_mut()) else { continue };
                    let ok = matches!(
                        self.executor.exec(&id, &check.argv, check.timeout).await,
                        Ok(0)
                    );
                    if let Some(state) = tracker.record(ok, started.elapsed()) {
                        tracing::info!(health = ?state, "health changed");
                        self.set_health(state).await;
                    }
                }
                exit = &mut wait => {
                    match exit {
                        Ok(exit) => self.report_exit(&exit, false).await,
                        Err(err) => self.fail(err).await,
                    }
                    return Ended::Done;
                }
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return Ended::AgentStopping;
                    }
                    if self.wants_stop() {
                        break;
                    }
                }
            }
        }
        let grace = Duration::from_millis(super::reconcile::grace_ms(&self.task));
        if let Err(err) = self.executor.stop(&id, grace).await {
            tracing::warn!(%err, "stopping container");
        }
        match wait.await {
            Ok(exit) => self.report_exit(&exit, true).await,
            Err(err) => self.fail(err).await,
        }
        Ended::Done
    }

    fn wants_stop(&self) -> bool {
        *self.desired.borrow() > TaskState::Running
    }

    async fn report_exit(&self, exit: &Exit, requested: bool) {
        let state = if requested {
            TaskState::Shutdown
        } else if exit.success() {
            TaskState::Complete
        } else {
            TaskState::Failed
        };
        let message = if exit.oom_killed {
            "killed: out of memory".to_string()
        } else if exit.signal != 0 {
            format!("killed by signal {}", exit.signal)
        } else {
            format!("exited with code {}", exit.code)
        };
        let exit = exit.clone();
        self.set(state, move |s| {
            s.exit_code = exit.code;
            s.signal = exit.signal;
            s.oom_killed = exit.oom_killed;
            if state == TaskState::Failed {
                s.err = message.clone();
            }
            s.message = message;
        })
        .await;
    }

    async fn fail(&self, err: ExecError) {
        let state = if err.reject {
            TaskState::Rejected
        } else {
            TaskState::Failed
        };
        tracing::warn!(%err, "task failed");
        self.set(state, |s| {
            s.err = err.to_string();
            s.message = format!("{} failed", err.step);
        })
        .await;
    }

    /// Records a health change without moving the task's state.
    async fn set_health(&self, health: pb::HealthState) {
        let update = {
            let mut s = lock(&self.status);
            s.health = health as i32;
            s.timestamp_ms = now_ms();
            pb::TaskStatusUpdate {
                task_id: self.task.id.clone(),
                status: Some(s.clone()),
                networks: self.task.networks.clone(),
            }
        };
        let _ = self.statuses.send(update).await;
    }

    /// Moves the status to `state` (never backwards), applies `edit`, and reports it.
    async fn set(&self, state: TaskState, edit: impl FnOnce(&mut pb::TaskStatus)) {
        let update = {
            let mut s = lock(&self.status);
            if s.state() > state && s.state() != TaskState::Accepted {
                return;
            }
            s.state = state as i32;
            s.timestamp_ms = now_ms();
            edit(&mut s);
            pb::TaskStatusUpdate {
                task_id: self.task.id.clone(),
                status: Some(s.clone()),
                networks: self.task.networks.clone(),
            }
        };
        // The session buffers while disconnected; a closed channel means the agent is
        // stopping.
        let _ = self.statuses.send(update).await;
    }
}
