//! The orchestrator: from services, tasks and nodes as the store holds them, the writes
//! that converge the cluster to what the services ask for. Replicated services (slots
//! 1..=replicas) and global services (one task per eligible node), restart policies,
//! rolling updates and rollbacks, orphaning tasks of lost nodes, drain and pause,
//! `depends_on` gates, rebalancing onto new nodes, and node liveness from heartbeats.
//! Pure and level-triggered: no I/O, no clock (time comes in as `now_ms`), no memory
//! between calls; every decision is re-derived from the store, so a new leader picks up
//! exactly where the last one stopped.
//!
//! ```text
//!            store snapshot (services, tasks, nodes) + now
//!                          │
//!   node_health ───────────┼──────────► NodeStateChange (READY ⇄ DOWN)
//!                          ▼
//!   reconcile_all ── per project: depends_on gates (depends.rs)
//!                 ── per service (service.rs):
//!                      orphan lost → slots (restart.rs) → update.rs → rebalance.rs → prune
//!                          │
//!                          ▼
//!                   Vec<Action> ── commands() ──► one pb::Command per service (CAS)
//!                          │                           │ raft write
//!                          └── next_wakeup() ──► run again then, or on the next store change
//!   scheduler (skiff-scheduler::schedule) places the new tasks; agents move them on.
//! ```
//!
//! # The leader's loop
//! ```text
//! on store change, on node heartbeat timeout, or at next_wakeup:
//!   let snap = store.snapshot();
//!   for c in node_health(&snap.nodes_with_heartbeats, now, &liveness) { write c.apply(node) (CAS) }
//!   let actions = reconcile_all(&ClusterView { services, tasks, nodes, now_ms: now, history_per_slot });
//!   log the Blocked reasons and the stop reasons;
//!   for cmd in commands(&actions, services, tasks, now)? { fill network attachments of new
//!       tasks (IPAM), then raft write; on a conflict: re-read and start over }
//!   for t in skiff_scheduler::schedule(nodes, tasks, now) { write t (CAS) }
//!   sleep until the earliest of next_wakeup(&actions) and next_check(nodes, &liveness)
//! ```
//!
//! ## Limitations
//! - Restart counting relies on task history: with a `max_attempts` window, pruning keeps
//!   at least `max_attempts + 1` tasks per slot; a deleted service's tasks are removed.
//! - A global update skips nodes that are paused or not ready; their tasks are updated
//!   when the node becomes active again.
//! - Rebalancing considers the service alone (its tasks per node), not the total load of
//!   a node, and never moves binpacked services.
//! - A task that becomes unhealthy is failed by the orchestrator (status FAILED); its
//!   container is stopped when the restart policy replaces it, after the delay.

mod action;
mod command;
mod depends;
mod ids;
mod liveness;
mod nodes;
mod rebalance;
mod restart;
mod service;
mod update;
mod view;

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};

use skiff_proto::v1 as pb;
use skiff_scheduler::Scheduler;

pub use action::{Action, StopReason, next_wakeup};
pub use command::{CommandError, commands};
pub use depends::{Gate, desired_count, gates};
pub use ids::{SlotKey, TaskId, generation, task_id};
pub use liveness::{
    DEFAULT_HEARTBEAT_MISSES, DEFAULT_HEARTBEAT_PERIOD_MS, Liveness, NodeStateChange, next_check,
    node_health,
};
pub use nodes::Nodes;
pub use restart::DEFAULT_DELAY_MS;
pub use service::{FitsOracle, ServiceInput, reconcile, service_name};
pub use update::{RollbackError, default_update_config, effective_config, new_spec, rollback};
pub use view::{has_healthcheck, is_up};

/// The whole store as one pass of the orchestrator reads it.
#[derive(Debug, Clone, Copy)]
pub struct ClusterView<'a> {
    pub services: &'a [pb::Service],
    pub tasks: &'a [pb::Task],
    pub nodes: &'a [pb::Node],
    pub now_ms: i64,
    /// `ClusterSettings.task_history_per_slot`: ended tasks kept per slot; 0 keeps all.
    pub history_per_slot: u64,
}

/// Reconciles every service (in id order) and cleans up the tasks of removed services.
/// Rebalance moves ask a scheduler view of the whole cluster whether the target node
/// fits, built only if some service wants to move.
pub fn reconcile_all(view: &ClusterView<'_>) -> Vec<Action> {
    let nodes = Nodes::new(view.nodes);
    let mut by_service: HashMap<&str, Vec<&pb::Task>> = HashMap::new();
    for t in view.tasks {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    let gates = gates(view.services, &by_service, &nodes);
    let scheduler: OnceCell<Scheduler<'_>> = OnceCell::new();
    let fits = |task: &pb::Task, node: &str| {
        scheduler
            .get_or_init(|| Scheduler::new(view.nodes, view.tasks))
            .fits(task, node)
            .is_ok()
    };
    let mut services: Vec<&pb::Service> = view.services.iter().collect();
    services.sort_by(|a, b| a.id.cmp(&b.id));
    let mut actions = Vec::new();
    let empty = Vec::new();
    for svc in services {
        let tasks = by_service.get(svc.id.as_str()).unwrap_or(&empty);
        let input = ServiceInput {
            service: svc,
            tasks,
            nodes: &nodes,
            now_ms: view.now_ms,
            gate: gates.get(&svc.id).cloned().unwrap_or(Gate::Open),
            fits: Some(&fits),
            history_per_slot: view.history_per_slot,
        };
        actions.extend(reconcile(&input));
    }
    let known: HashSet<&str> = view.services.iter().map(|s| s.id.as_str()).collect();
    let mut orphans: Vec<&pb::Task> = view
        .tasks
        .iter()
        .filter(|t| !known.contains(t.service_id.as_str()))
        .collect();
    orphans.sort_by(|a, b| a.id.cmp(&b.id));
    actions.extend(remove_tasks(&orphans, &nodes));
    // One wake-up is enough: the earliest.
    let wake = next_wakeup(&actions);
    actions.retain(|a| !matches!(a, Action::RequeueAt(_)));
    if let Some(at) = wake {
        actions.push(Action::RequeueAt(at));
    }
    actions
}

/// Tasks of a removed service: stop what may run (desired REMOVE), delete the records
/// of what has ended or whose node is lost.
fn remove_tasks(tasks: &[&pb::Task], nodes: &Nodes<'_>) -> Vec<Action> {
    let mut out = Vec::new();
    for t in tasks {
        let phase = view::phase(t.desired_state(), view::state(t));
        let lost = !t.node_id.is_empty() && nodes.is_lost(&t.node_id);
        let done = matches!(phase, view::Phase::Gone | view::Phase::Retired)
            || lost
            || (t.node_id.is_empty() && view::state(t) < pb::TaskState::Assigned);
        if done {
            out.push(Action::DeleteTask {
                service_id: t.service_id.clone(),
                task_id: TaskId::new(&t.id),
            });
        } else if t.desired_state() < pb::TaskState::Remove {
            out.push(Action::SetDesiredState {
                service_id: t.service_id.clone(),
                task_id: TaskId::new(&t.id),
                state: pb::TaskState::Remove,
                reason: StopReason::ServiceRemoved,
            });
        }
    }
    out
}
