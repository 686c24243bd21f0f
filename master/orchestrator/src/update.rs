//! Rolling updates as a state machine over (service, tasks, now), re-entered on every
//! pass; all progress lives in the store (`Service.update_status`, the tasks), none in
//! memory, so a new leader carries on where the last one stopped.
//!
//! ```text
//!   NONE/COMPLETED ──outdated tasks──► UPDATING ──all replaced, monitor over──► COMPLETED
//!                                        │ failures > max_failure_ratio
//!                      pause ◄───────────┼──────────► rollback: spec ⇄ previous_spec
//!                        ▼               │ continue          ▼
//!                     PAUSED          (go on)        ROLLBACK_STARTED ──► ROLLBACK_COMPLETED
//!                                                           │ failures
//!                                                           ▼
//!                                                    ROLLBACK_PAUSED
//! ```
//!
//! Each pass: count failures of tasks made since the update started (failed, rejected,
//! or failed by their health check); count slots in flight (a new task not yet up, or
//! up for less than `delay`; a stop-first slot whose old task is still stopping); start
//! `parallelism - in flight` more slots, tasks that are not up first. A task with a
//! health check counts as up only once healthy. `start-first` starts the new task
//! beside the old one, which the slot logic stops once the new one is up; `stop-first`
//! stops the old one and creates the new one when it has stopped.
//!
//! The API handlers use [`new_spec`] and [`rollback`] to change a service, so the
//! update state machine restarts cleanly.

use skiff_proto::v1::{
    self as pb, TaskState, update_config::FailureAction, update_config::Order, update_status::State,
};

use crate::action::{Action, StopReason};
use crate::ids::SlotKey;
use crate::service::{Pass, SlotState};
use crate::view::Phase;

/// Swarm's defaults when a spec sets no update (or rollback) config: one task at a
/// time, pause on failure, watch each new task for 5 s, stop the old one first.
pub fn default_update_config() -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: FailureAction::Pause as i32,
        monitor_ms: 5_000,
        max_failure_ratio: 0.0,
        order: Order::StopFirst as i32,
    }
}

/// The config in force: `update_config` while updating; while rolling back the restored
/// spec's `rollback_config`, else the failed spec's, else the default.
pub fn effective_config(service: &pb::Service, rolling_back: bool) -> pb::UpdateConfig {
    let spec = service.spec.as_ref();
    let found = if rolling_back {
        spec.and_then(|s| s.rollback_config).or_else(|| {
            service
                .previous_spec
                .as_ref()
                .and_then(|s| s.rollback_config)
        })
    } else {
        spec.and_then(|s| s.update_config)
    };
    found.unwrap_or_else(default_update_config)
}

/// The service after an operator changed its spec: the old spec is kept for rollback,
/// the version goes up and the update state starts afresh (a paused update resumes
/// toward the new spec).
pub fn new_spec(service: &pb::Service, spec: pb::ServiceSpec) -> pb::Service {
    let mut s = service.clone();
    s.previous_spec = s.spec.take();
    s.spec = Some(spec);
    s.spec_version += 1;
    s.update_status = None;
    s
}

/// Rollback on demand is refused when there is nothing to go back to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("service {service} has no previous spec to roll back to")]
    NoPreviousSpec { service: String },
}

/// The service rolled back on an operator's request: specs swap, the version goes up,
/// the update state is ROLLBACK_STARTED; the orchestrator then replaces the tasks using
/// the rollback config.
pub fn rollback(service: &pb::Service, now_ms: i64) -> Result<pb::Service, RollbackError> {
    if service.previous_spec.is_none() {
        return Err(RollbackError::NoPreviousSpec {
            service: service.id.clone(),
        });
    }
    let mut s = service.clone();
    std::mem::swap(&mut s.spec, &mut s.previous_spec);
    s.spec_version += 1;
    s.update_status = Some(pb::UpdateStatus {
        state: State::RollbackStarted as i32,
        started_at_ms: now_ms,
        completed_at_ms: 0,
        message: "manually requested rollback".into(),
    });
    Ok(s)
}

/// A slot the update must still replace.
#[derive(Clone, Copy)]
enum Outdated {
    Live(usize),
    Retired,
}

impl Pass<'_> {
    /// Applies the failure action when too many tasks made by the running update (or
    /// rollback) failed. Runs before the slots are refilled.
    pub(crate) fn check_update_failures(&mut self, total: usize) {
        let state = self.update_state;
        if !matches!(state, State::Updating | State::RollbackStarted) {
            return;
        }
        let rolling_back = state == State::RollbackStarted;
        let cfg = effective_config(self.input.service, rolling_back);
        self.update_failed(&cfg, total, self.update_started, rolling_back);
    }

    pub(crate) fn drive_update(&mut self, slots: &[(SlotKey, SlotState)], kept: &[SlotState]) {
        let mut state = self.update_state;
        let mut started = self.update_started;
        let outdated = self.outdated(slots);
        match state {
            State::None | State::Completed | State::RollbackCompleted => {
                if outdated.is_empty() {
                    return;
                }
                state = State::Updating;
                started = self.now();
                self.update_state = state;
                self.update_started = started;
                self.set_update_status(state, started, "update in progress".into());
            }
            State::Paused | State::RollbackPaused => return,
            State::Updating | State::RollbackStarted => {}
        }
        let rolling_back = state == State::RollbackStarted;
        let cfg = effective_config(self.input.service, rolling_back);

        // Slots in flight.
        let now = self.now();
        let mut in_flight = 0usize;
        let mut monitor_end = started;
        for st in slots.iter().map(|(_, st)| st).chain(kept) {
            match *st {
                SlotState::Created | SlotState::Stopping => in_flight += 1,
                SlotState::Occupied { winner, candidate } => {
                    let fresh = candidate
                        .filter(|&c| !self.views[c].dirty)
                        .or(Some(winner).filter(|&w| {
                            !self.views[w].dirty && self.views[w].created_at() >= started
                        }));
                    let Some(n) = fresh else { continue };
                    let (up, since) = (self.views[n].up, self.views[n].since());
                    if !up {
                        in_flight += 1;
                        continue;
                    }
                    let settled = since.saturating_add(cfg.delay_ms as i64);
                    if now < settled {
                        in_flight += 1;
                        self.requeue(settled);
                    }
                    monitor_end = monitor_end.max(since.saturating_add(cfg.monitor_ms as i64));
                }
                _ => {}
            }
        }

        let parallelism = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            cfg.parallelism as usize
        };
        let budget = parallelism.saturating_sub(in_flight);
        let remaining = outdated.len();
        for (key, slot) in outdated.into_iter().take(budget) {
            self.replace(&key, slot, cfg.order());
        }

        if remaining == 0 && in_flight == 0 {
            if now >= monitor_end {
                let (done, message) = if rolling_back {
                    (State::RollbackCompleted, "rollback completed")
                } else {
                    (State::Completed, "update completed")
                };
                self.update_state = done;
                self.set_update_status(done, started, message.into());
            } else {
                self.requeue(monitor_end);
            }
        }
    }

    /// Slots whose task runs an outdated spec, tasks that are not up first.
    fn outdated(&self, slots: &[(SlotKey, SlotState)]) -> Vec<(SlotKey, Outdated)> {
        let mut out: Vec<(bool, SlotKey, Outdated)> = Vec::new();
        for (key, st) in slots {
            match *st {
                SlotState::Occupied { winner, candidate } => {
                    let w = &self.views[winner];
                    let replacing = candidate.is_some_and(|c| !self.views[c].dirty);
                    if w.dirty && !replacing {
                        out.push((w.up, key.clone(), Outdated::Live(winner)));
                    }
                }
                SlotState::Retired(r) if self.views[r].dirty => {
                    out.push((false, key.clone(), Outdated::Retired))
                }
                _ => {}
            }
        }
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out.into_iter().map(|(_, k, o)| (k, o)).collect()
    }

    fn replace(&mut self, key: &SlotKey, slot: Outdated, order: Order) {
        match slot {
            Outdated::Retired => self.create(key, 0, None),
            Outdated::Live(w) => {
                if !self.views[w].up {
                    // It serves nothing yet: no order to respect.
                    self.stop(w, TaskState::Shutdown, StopReason::Updated);
                    self.create(key, 0, None);
                } else if order == Order::StartFirst {
                    self.create(key, 0, None);
                } else {
                    self.stop(w, TaskState::Shutdown, StopReason::Updated);
                    if self.views[w].phase == Phase::Gone {
                        self.create(key, 0, None);
                    }
                }
            }
        }
    }

    /// Applies the failure action when too many new tasks failed: pause, or roll back
    /// (and freeze the pass), or carry on.
    fn update_failed(
        &mut self,
        cfg: &pb::UpdateConfig,
        total: usize,
        started: i64,
        rolling_back: bool,
    ) {
        let failed: Vec<usize> = (0..self.views.len())
            .filter(|&i| {
                let v = &self.views[i];
                !v.dirty
                    && v.created_at() >= started
                    && matches!(v.state, TaskState::Failed | TaskState::Rejected)
                    && v.ended_at >= started
            })
            .collect();
        let Some(&first) = failed.first() else {
            return;
        };
        let ratio = failed.len() as f32 / total.max(1) as f32;
        if ratio <= cfg.max_failure_ratio {
            return;
        }
        let v = &self.views[first];
        let err = if crate::view::state(v.t) != v.state {
            // Failed in this pass, by its health check.
            "health check failed: unhealthy".to_owned()
        } else {
            v.t.status
                .as_ref()
                .map(|s| {
                    if s.err.is_empty() {
                        s.message.clone()
                    } else {
                        s.err.clone()
                    }
                })
                .unwrap_or_default()
        };
        let what = format!(
            "{} of {} new tasks failed (max_failure_ratio {}); task {}: {}",
            failed.len(),
            total,
            cfg.max_failure_ratio,
            v.t.id,
            err
        );
        match (rolling_back, cfg.failure_action()) {
            (_, FailureAction::Continue) => {}
            (false, FailureAction::Rollback) if self.input.service.previous_spec.is_some() => {
                self.frozen = true;
                self.update_state = State::RollbackStarted;
                self.actions.push(Action::Rollback {
                    service_id: self.input.service.id.clone(),
                    status: pb::UpdateStatus {
                        state: State::RollbackStarted as i32,
                        started_at_ms: self.now(),
                        completed_at_ms: 0,
                        message: format!("update rolled back: {what}"),
                    },
                });
            }
            (false, _) => {
                self.update_state = State::Paused;
                self.set_update_status(State::Paused, started, format!("update paused: {what}"));
            }
            (true, _) => {
                self.update_state = State::RollbackPaused;
                self.set_update_status(
                    State::RollbackPaused,
                    started,
                    format!("rollback paused: {what}"),
                );
            }
        }
    }
}
