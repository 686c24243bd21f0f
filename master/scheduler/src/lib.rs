//! Placement of tasks onto nodes: filters (readiness, availability, platform,
//! constraints, replicas per node, host ports, memory, CPU) then scores (spread,
//! spread preferences, binpack). Pure: no I/O, no clock; time comes in as `now_ms`.
//!
//! ```text
//!  store snapshot (nodes, tasks)
//!        │ Scheduler::new: capacity minus reservations of tasks that hold resources
//!        ▼
//!  tasks that need a node ──group by service + placement spec──┐
//!        │                                                      │ once per group:
//!        │                                  static filters on every node (tally why not)
//!        │                                  tree of min-heaps (preference branches → nodes)
//!        ▼                                                      │
//!  place(task) ── pop best node ── dynamic filters ── commit ◄──┘  O(log n) per task
//!        │ Ok(NodeId)                    │ Err(Unplaceable): "no suitable node: ..."
//!        ▼                               ▼
//!  task: node_id, ASSIGNED          task: PENDING, status message = the reason
//! ```
//!
//! The leader's loop calls [`schedule`] with the store's nodes and tasks and writes
//! back what it returns; [`Scheduler`] is the batch API underneath, and
//! [`Scheduler::fits`] answers the orchestrator's "would it fit there" for rebalancing.
//!
//! ## Limitations
//! - Spread counts tasks, as Swarm does; it does not weigh nodes by free resources.
//! - Spread preferences evenly split tasks over the values of a label, whatever the
//!   number of nodes behind each value (Swarm's semantics); nodes without the label form
//!   one more branch (value "").
//! - Reservations are checked against what agents report (`NodeDescription.resources`);
//!   nothing is overcommitted and limits are not looked at.
//! - Within a batch, tasks are placed group by group: a later group sees the earlier
//!   groups' placements, never the other way round.

mod constraint;
mod filter;
mod place;
mod tree;
mod unplaceable;

use std::fmt;

use skiff_proto::v1 as pb;

pub use constraint::{Constraint, ConstraintError, Key, Op, normalize_arch, validate};
pub use filter::{HostPort, Rejection, Requirements, host_ports};
pub use place::{Scheduler, holds_resources, needs_placement};
pub use unplaceable::{Tally, Unplaceable};

/// A node's id as the store keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> NodeId {
        NodeId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> NodeId {
        NodeId(s.to_owned())
    }
}

/// One scheduling pass: every task in `tasks` that [`needs_placement`] is placed, in
/// the order given. Returns the tasks to write back (compare-and-swap on the version
/// read): placed ones with `node_id` set and status ASSIGNED, unplaceable ones with
/// status PENDING and the reason as the status message. A task already pending for the
/// same reason is not returned, so an unplaceable task costs no write per pass.
pub fn schedule(nodes: &[pb::Node], tasks: &[pb::Task], now_ms: i64) -> Vec<pb::Task> {
    let pending: Vec<&pb::Task> = tasks.iter().filter(|t| needs_placement(t)).collect();
    if pending.is_empty() {
        return Vec::new();
    }
    let mut scheduler = Scheduler::new(nodes, tasks);
    let results = scheduler.place_all(&pending);
    let mut out = Vec::new();
    for (task, result) in pending.into_iter().zip(results) {
        match result {
            Ok(node) => out.push(assigned(task, &node, now_ms)),
            Err(why) => {
                let message = why.message();
                let status = task.status.as_ref();
                let same = status
                    .is_some_and(|s| s.state() == pb::TaskState::Pending && s.message == message);
                if !same {
                    out.push(pending_with(task, message, now_ms));
                }
            }
        }
    }
    out
}

/// `task` assigned to `node` at `now_ms`.
pub fn assigned(task: &pb::Task, node: &NodeId, now_ms: i64) -> pb::Task {
    let mut t = task.clone();
    t.node_id = node.as_str().to_owned();
    t.status = Some(pb::TaskStatus {
        state: pb::TaskState::Assigned as i32,
        timestamp_ms: now_ms,
        message: format!("assigned to node {node}"),
        ..Default::default()
    });
    t
}

fn pending_with(task: &pb::Task, message: String, now_ms: i64) -> pb::Task {
    let mut t = task.clone();
    t.status = Some(pb::TaskStatus {
        state: pb::TaskState::Pending as i32,
        timestamp_ms: now_ms,
        message,
        ..Default::default()
    });
    t
}
