//! One service's reconciliation: from its spec, its tasks (history included) and the
//! nodes, the actions that bring it to exactly one serving task per slot. The pass
//! runs in a fixed order, each step seeing what the previous ones decided:
//!
//! ```text
//!  tasks on lost nodes ──► orphaned;  unhealthy tasks ──► failed
//!  update failures over the limit ──► pause, or roll back (then create nothing now)
//!  slots (1..=replicas, or one per eligible node):
//!    live tasks: drained node → stop; failed rebalance target → stop
//!    two live tasks in a slot → keep the best (up, current spec, newest), stop the rest
//!    none live: ended → restart policy (now / later / retire); stopping → wait;
//!               retired → done; nothing → create (unless depends_on holds it back)
//!  slots beyond the count, ineligible nodes ──► stop
//!  rolling update (update.rs) ──► rebalance (rebalance.rs) ──► history pruning
//! ```

use std::collections::HashMap;

use skiff_proto::v1::{self as pb, TaskState};
use skiff_scheduler::Requirements;

use crate::action::{Action, StopReason};
use crate::depends::Gate;
use crate::ids::{SlotKey, TaskId, task_id};
use crate::nodes::{Nodes, accepts_tasks, availability};
use crate::restart::{self, Decision};
use crate::view::{Phase, View};

/// "Would this task fit on this node now?" (resources, host ports, max replicas per
/// node), asked before a rebalance move; `skiff_scheduler::Scheduler::fits` answers it.
pub type FitsOracle<'a> = &'a dyn Fn(&pb::Task, &str) -> bool;

/// Everything one service's reconciliation reads.
pub struct ServiceInput<'a> {
    pub service: &'a pb::Service,
    /// Every task of the service in the store, ended ones included.
    pub tasks: &'a [&'a pb::Task],
    pub nodes: &'a Nodes<'a>,
    pub now_ms: i64,
    /// Whether `depends_on` lets the service's first tasks be created.
    pub gate: Gate,
    /// Asked before a rebalance move; `None` answers yes for every eligible node.
    pub fits: Option<FitsOracle<'a>>,
    /// Ended tasks kept per slot (`ClusterSettings.task_history_per_slot`); 0 keeps all.
    pub history_per_slot: u64,
}

/// The actions for one service. See the crate documentation for how to apply them.
pub fn reconcile(input: &ServiceInput<'_>) -> Vec<Action> {
    let Some(spec) = input.service.spec.as_ref() else {
        return Vec::new();
    };
    let mut pass = Pass::new(input, spec);
    pass.run();
    pass.finish()
}

/// What a slot came to in this pass; the rolling update and the rebalancer read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// A live task (`winner`), maybe with a newer one on its way to replace it.
    Occupied {
        winner: usize,
        candidate: Option<usize>,
    },
    /// A task was created for the slot in this pass.
    Created,
    /// The restart delay runs, or the slot may not get a task now.
    Waiting,
    /// A task of the slot is being stopped; its successor comes once it has.
    Stopping,
    /// The slot's task ended and the restart policy said no.
    Retired(usize),
    /// `depends_on` holds the service back.
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// The slot should have a task.
    Create,
    /// Keep what runs, create nothing (global service on a paused or unready node).
    Keep,
    /// Nothing should run in the slot.
    Remove(StopReason),
}

pub(crate) struct Pass<'a> {
    pub input: &'a ServiceInput<'a>,
    pub spec: &'a pb::ServiceSpec,
    pub req: Option<Requirements>,
    pub global: bool,
    pub views: Vec<View<'a>>,
    /// Views per slot, oldest generation first.
    pub slots: HashMap<SlotKey, Vec<usize>>,
    pub actions: Vec<Action>,
    requeue: Option<i64>,
    /// The service's update state as this pass leaves it, and when that update started.
    pub update_state: pb::update_status::State,
    pub update_started: i64,
    /// The pass rolled the spec back: nothing is created from the spec it read.
    pub frozen: bool,
}

impl<'a> Pass<'a> {
    fn new(input: &'a ServiceInput<'a>, spec: &'a pb::ServiceSpec) -> Pass<'a> {
        let req = Requirements::from_spec(spec).ok();
        let global = matches!(spec.mode, Some(pb::service_spec::Mode::Global(_)));
        let views: Vec<View<'a>> = input
            .tasks
            .iter()
            .map(|t| {
                View::new(
                    t,
                    spec,
                    input.service.spec_version,
                    req.as_ref(),
                    input.nodes,
                    input.now_ms,
                )
            })
            .collect();
        let mut slots: HashMap<SlotKey, Vec<usize>> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            let key = if global {
                SlotKey::Node(v.t.node_id.clone())
            } else {
                SlotKey::Slot(v.t.slot)
            };
            slots.entry(key).or_default().push(i);
        }
        for idxs in slots.values_mut() {
            idxs.sort_by_key(|&i| (views[i].generation, views[i].created_at()));
        }
        let status = input.service.update_status.clone().unwrap_or_default();
        Pass {
            input,
            spec,
            req,
            global,
            views,
            slots,
            actions: Vec::new(),
            requeue: None,
            update_state: status.state(),
            update_started: status.started_at_ms,
            frozen: false,
        }
    }

    pub fn now(&self) -> i64 {
        self.input.now_ms
    }

    fn finish(mut self) -> Vec<Action> {
        if let Some(at) = self.requeue {
            self.actions.push(Action::RequeueAt(at));
        }
        self.actions
    }

    fn run(&mut self) {
        self.orphan_lost();
        self.fail_unhealthy();
        let modes = self.modes();
        let total = modes.iter().filter(|(_, m)| *m == Mode::Create).count();
        // Before any slot is refilled: a failed update may roll the spec back, and then
        // nothing must be created from the spec being abandoned.
        self.check_update_failures(total);
        let mut states: Vec<(SlotKey, SlotState)> = Vec::new();
        // Slots that keep what they have but get nothing new (global service on a
        // paused node): a replacement in flight there still counts against parallelism.
        let mut kept: Vec<SlotState> = Vec::new();
        let mut removed = Vec::new();
        for (key, mode) in modes {
            let idxs = self.slots.get(&key).cloned().unwrap_or_default();
            match mode {
                Mode::Create => {
                    let st = self.slot(&key, &idxs, !self.frozen);
                    states.push((key, st));
                }
                Mode::Keep => kept.push(self.slot(&key, &idxs, false)),
                Mode::Remove(reason) => removed.push((idxs, reason)),
            }
        }
        // Highest slots first: the order in which they are written, and logged.
        for (idxs, reason) in removed.into_iter().rev() {
            self.remove(&idxs, &reason);
        }
        if !self.frozen {
            self.drive_update(&states, &kept);
            self.rebalance(&states);
        }
        self.prune();
    }

    // ------------------------------------------------------------------ actions

    pub fn stop(&mut self, i: usize, state: TaskState, reason: StopReason) {
        let v = &mut self.views[i];
        self.actions.push(Action::SetDesiredState {
            service_id: self.input.service.id.clone(),
            task_id: TaskId::new(&v.t.id),
            state,
            reason,
        });
        v.phase = crate::view::phase(state, v.state);
    }

    fn orphan(&mut self, i: usize) {
        let v = &mut self.views[i];
        self.actions.push(Action::Orphan {
            service_id: self.input.service.id.clone(),
            task_id: TaskId::new(&v.t.id),
            node_id: v.t.node_id.clone(),
        });
        v.state = TaskState::Orphaned;
        v.phase = Phase::Gone;
        v.orphaned = true;
        v.ended_at = self.input.now_ms;
    }

    fn fail(&mut self, i: usize, reason: &str) {
        let v = &mut self.views[i];
        self.actions.push(Action::Fail {
            service_id: self.input.service.id.clone(),
            task_id: TaskId::new(&v.t.id),
            reason: reason.to_owned(),
        });
        v.state = TaskState::Failed;
        v.phase = Phase::Ended;
        v.up = false;
        v.ended_at = self.input.now_ms;
    }

    pub fn requeue(&mut self, at: i64) {
        self.requeue = Some(self.requeue.map_or(at, |r| r.min(at)));
    }

    /// Creates the next task of slot `key`. Global tasks and rebalance moves name their
    /// node; others are left to the scheduler.
    pub fn create(&mut self, key: &SlotKey, attempt: u64, node: Option<&str>) {
        let generation = self
            .slots
            .get(key)
            .and_then(|idxs| idxs.iter().map(|&i| self.views[i].generation).max())
            .unwrap_or(0)
            .max(self.created_generation(key))
            + 1;
        let svc = self.input.service;
        let now = self.input.now_ms;
        let node_id = match key {
            SlotKey::Node(n) => n.clone(),
            SlotKey::Slot(_) => node.unwrap_or_default().to_owned(),
        };
        let task = pb::Task {
            id: task_id(&svc.id, key, generation).as_str().to_owned(),
            meta: Some(pb::Meta {
                version: 0,
                created_at_ms: now,
                updated_at_ms: now,
            }),
            service_id: svc.id.clone(),
            service_name: service_name(self.spec),
            slot: match key {
                SlotKey::Slot(n) => *n,
                SlotKey::Node(_) => 0,
            },
            node_id,
            spec: Some(self.spec.clone()),
            spec_version: svc.spec_version,
            desired_state: TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: TaskState::New as i32,
                timestamp_ms: now,
                message: "created".into(),
                ..Default::default()
            }),
            networks: Vec::new(),
            attempt,
            image_digest: String::new(),
        };
        self.actions.push(Action::CreateTask(Box::new(task)));
    }

    /// Highest generation created for `key` in this pass (a slot gets at most one new
    /// task per pass, but a rebalance move and a restart must never collide).
    fn created_generation(&self, key: &SlotKey) -> u64 {
        let prefix = format!("{}.{key}.", self.input.service.id);
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateTask(t) if t.id.starts_with(&prefix) => {
                    Some(crate::ids::generation(&t.id))
                }
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    pub fn set_update_status(
        &mut self,
        state: pb::update_status::State,
        started_at_ms: i64,
        message: String,
    ) {
        let completed_at_ms = match state {
            pb::update_status::State::Completed | pb::update_status::State::RollbackCompleted => {
                self.now()
            }
            _ => 0,
        };
        self.actions.push(Action::SetUpdateStatus {
            service_id: self.input.service.id.clone(),
            status: pb::UpdateStatus {
                state: state as i32,
                started_at_ms,
                completed_at_ms,
                message,
            },
        });
    }

    // ------------------------------------------------------------------ steps

    /// Tasks whose node is down or gone will never report again: orphan them so their
    /// slots are refilled elsewhere.
    fn orphan_lost(&mut self) {
        for i in 0..self.views.len() {
            let v = &self.views[i];
            let holds = matches!(v.phase, Phase::Live | Phase::Stopping);
            if holds && !v.t.node_id.is_empty() && self.input.nodes.is_lost(&v.t.node_id) {
                self.orphan(i);
            }
        }
    }

    /// A running task whose health check says unhealthy is failed, as Swarm's agent
    /// does by killing it; the restart policy takes it from there.
    fn fail_unhealthy(&mut self) {
        for i in 0..self.views.len() {
            let v = &self.views[i];
            let unhealthy =
                v.t.status
                    .as_ref()
                    .is_some_and(|s| s.health() == pb::HealthState::Unhealthy);
            if v.phase == Phase::Live && v.state == TaskState::Running && unhealthy {
                self.fail(i, "health check failed: unhealthy");
            }
        }
    }

    /// Which slots should exist, and what to do with the others, in a fixed order:
    /// replica slots ascending (or the nodes in the order given), then the slots that
    /// should not exist, ascending.
    fn modes(&self) -> Vec<(SlotKey, Mode)> {
        let mut modes = Vec::new();
        let wanted: Box<dyn Fn(&SlotKey) -> bool + '_> = if self.global {
            for n in self.input.nodes.list() {
                let fits = self
                    .req
                    .as_ref()
                    .is_some_and(|r| r.placement_check(n).is_ok());
                let mode = if n.state() == pb::NodeState::Down {
                    Mode::Remove(StopReason::NodeIneligible)
                } else if availability(n) == pb::NodeAvailability::Drain {
                    Mode::Remove(StopReason::NodeDrained)
                } else if !fits {
                    Mode::Remove(StopReason::NodeIneligible)
                } else if accepts_tasks(n) {
                    Mode::Create
                } else {
                    Mode::Keep
                };
                modes.push((SlotKey::Node(n.id.clone()), mode));
            }
            Box::new(
                |k: &SlotKey| matches!(k, SlotKey::Node(id) if self.input.nodes.get(id).is_some()),
            )
        } else {
            let replicas = match &self.spec.mode {
                Some(pb::service_spec::Mode::Replicated(r)) => r.replicas,
                _ => 0,
            };
            modes.extend((1..=replicas).map(|slot| (SlotKey::Slot(slot), Mode::Create)));
            Box::new(move |k: &SlotKey| matches!(k, SlotKey::Slot(n) if (1..=replicas).contains(n)))
        };
        let mut extra: Vec<&SlotKey> = self.slots.keys().filter(|k| !wanted(k)).collect();
        extra.sort();
        let reason = if self.global {
            StopReason::NodeIneligible
        } else {
            StopReason::ScaledDown
        };
        modes.extend(
            extra
                .into_iter()
                .map(|k| (k.clone(), Mode::Remove(reason.clone()))),
        );
        modes
    }

    /// Brings one slot that should exist to a single task. With `can_create` false only
    /// existing tasks are looked after.
    fn slot(&mut self, key: &SlotKey, idxs: &[usize], can_create: bool) -> SlotState {
        for &i in idxs {
            let v = &self.views[i];
            if v.phase != Phase::Live {
                continue;
            }
            let node = v.t.node_id.as_str();
            if !self.global && !node.is_empty() && self.input.nodes.is_drained(node) {
                self.stop(i, TaskState::Shutdown, StopReason::NodeDrained);
                self.views[i].drain_stop = true;
            } else if !self.global && !node.is_empty() && v.state == TaskState::Pending {
                // A rebalance move the scheduler could not place: drop it, the slot is
                // refilled the ordinary way.
                self.stop(i, TaskState::Shutdown, StopReason::PlacementFailed);
            }
        }

        let live: Vec<usize> = idxs
            .iter()
            .copied()
            .filter(|&i| self.views[i].phase == Phase::Live)
            .collect();
        let mut winner = None;
        let mut candidate = None;
        if let Some(&w) = live.iter().max_by_key(|&&i| {
            let v = &self.views[i];
            (v.up, !v.dirty, v.generation)
        }) {
            let wkey = (!self.views[w].dirty, self.views[w].generation);
            // A candidate is a newer task on its way up to replace the winner (start-first
            // update or rebalance move); one that runs an outdated spec is not worth
            // waiting for.
            candidate = live
                .iter()
                .copied()
                .filter(|&i| i != w && !self.views[i].up && !self.views[i].dirty)
                .filter(|&i| (!self.views[i].dirty, self.views[i].generation) > wkey)
                .max_by_key(|&i| (!self.views[i].dirty, self.views[i].generation));
            for &i in &live {
                if i == w || Some(i) == candidate {
                    continue;
                }
                let reason =
                    if self.views[w].up && self.views[w].generation > self.views[i].generation {
                        StopReason::Superseded
                    } else {
                        StopReason::Duplicate
                    };
                self.stop(i, TaskState::Shutdown, reason);
            }
            winner = Some(w);
        }

        // Ended tasks that are not the slot's newest are history: let their containers go.
        let newest = idxs
            .iter()
            .filter(|&&i| self.views[i].phase != Phase::Gone)
            .map(|&i| self.views[i].generation)
            .max()
            .unwrap_or(0);
        for &i in idxs {
            let v = &self.views[i];
            if matches!(v.phase, Phase::Ended | Phase::Retired) && v.generation < newest {
                self.stop(i, TaskState::Shutdown, StopReason::Superseded);
            }
        }

        if let Some(w) = winner {
            return SlotState::Occupied {
                winner: w,
                candidate,
            };
        }
        let newest_in = |phase: Phase, views: &[View<'_>]| {
            idxs.iter()
                .copied()
                .filter(|&i| views[i].phase == phase)
                .max_by_key(|&i| views[i].generation)
        };
        if let Some(e) = newest_in(Phase::Ended, &self.views) {
            if !can_create {
                return SlotState::Waiting;
            }
            return self.restart(key, e, idxs);
        }
        let stopping = idxs.iter().any(|&i| {
            let v = &self.views[i];
            v.phase == Phase::Stopping
                && !v.drain_stop
                && !self.input.nodes.is_drained(&v.t.node_id)
        });
        if stopping {
            return SlotState::Stopping;
        }
        if let Some(r) = newest_in(Phase::Retired, &self.views) {
            return SlotState::Retired(r);
        }
        if !can_create {
            return SlotState::Waiting;
        }
        if let Gate::Waiting(reason) = &self.input.gate {
            if !self
                .actions
                .iter()
                .any(|a| matches!(a, Action::Blocked { .. }))
            {
                self.actions.push(Action::Blocked {
                    service_id: self.input.service.id.clone(),
                    reason: reason.clone(),
                });
            }
            return SlotState::Blocked;
        }
        // A slot emptied by a lost node keeps its restart count.
        let attempt = idxs
            .iter()
            .copied()
            .max_by_key(|&i| self.views[i].generation)
            .filter(|&i| self.views[i].orphaned && !self.views[i].dirty)
            .map_or(0, |i| self.views[i].t.attempt);
        self.create(key, attempt, None);
        SlotState::Created
    }

    fn restart(&mut self, key: &SlotKey, e: usize, idxs: &[usize]) -> SlotState {
        let node = self.views[e].t.node_id.clone();
        let drained = !node.is_empty() && self.input.nodes.is_drained(&node);
        let decision = {
            let slot: Vec<&View<'_>> = idxs.iter().map(|&i| &self.views[i]).collect();
            restart::decide(&self.views[e], &slot, self.spec, drained, self.now())
        };
        match decision {
            Decision::Restart { at, attempt } if at <= self.now() => {
                self.stop(e, TaskState::Shutdown, StopReason::Restarted);
                self.create(key, attempt, None);
                SlotState::Created
            }
            Decision::Restart { at, .. } => {
                self.requeue(at);
                SlotState::Waiting
            }
            Decision::Retire(why) => {
                self.stop(e, TaskState::Complete, StopReason::RestartPolicy(why));
                SlotState::Retired(e)
            }
        }
    }

    /// A slot that should not exist: stop what runs, let ended tasks go.
    fn remove(&mut self, idxs: &[usize], reason: &StopReason) {
        for &i in idxs {
            if matches!(
                self.views[i].phase,
                Phase::Live | Phase::Ended | Phase::Retired
            ) {
                self.stop(i, TaskState::Shutdown, reason.clone());
            }
        }
    }

    /// Deletes the oldest ended tasks of each slot beyond `history_per_slot`. The newest
    /// task of a slot is never deleted (its generation numbers the next one), nor are
    /// the restarts a `max_attempts` window still counts.
    fn prune(&mut self) {
        let limit = self.input.history_per_slot;
        if limit == 0 {
            return;
        }
        let keep = match &self.spec.restart_policy {
            Some(p) if p.window_ms > 0 && p.max_attempts > 0 => limit.max(p.max_attempts + 1),
            _ => limit,
        } as usize;
        let mut deletes = Vec::new();
        for idxs in self.slots.values() {
            let newest = idxs
                .iter()
                .map(|&i| self.views[i].generation)
                .max()
                .unwrap_or(0);
            let mut gone: Vec<usize> = idxs
                .iter()
                .copied()
                .filter(|&i| {
                    self.views[i].phase == Phase::Gone && self.views[i].generation < newest
                })
                .collect();
            gone.sort_by_key(|&i| std::cmp::Reverse(self.views[i].generation));
            deletes.extend(gone.into_iter().skip(keep.saturating_sub(1)));
        }
        deletes.sort_by_key(|&i| {
            (
                self.views[i].t.slot,
                &self.views[i].t.node_id,
                self.views[i].generation,
            )
        });
        for i in deletes {
            // Only what was already gone when read: a task stopped in this pass is
            // deleted in a later one.
            if crate::view::phase(
                self.views[i].t.desired_state(),
                crate::view::state(self.views[i].t),
            ) == Phase::Gone
            {
                self.actions.push(Action::DeleteTask {
                    service_id: self.input.service.id.clone(),
                    task_id: TaskId::new(&self.views[i].t.id),
                });
            }
        }
    }
}

/// The cluster-wide name of a service: `<project>_<name>`, or the name alone.
pub fn service_name(spec: &pb::ServiceSpec) -> String {
    if spec.project.is_empty() {
        spec.name.clone()
    } else {
        format!("{}_{}", spec.project, spec.name)
    }
}

#[cfg(test)]
mod tests;
