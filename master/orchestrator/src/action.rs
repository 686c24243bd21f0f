//! What the orchestrator asks for, as data: the leader's loop turns these into store
//! writes (see `command`), logs the reasons, and runs the orchestrator again at the
//! earliest `RequeueAt`.

use std::fmt;

use skiff_proto::v1 as pb;

use crate::ids::TaskId;

/// Why a task is asked to stop (or, with desired state COMPLETE, not to restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Its slot is above the service's replica count.
    ScaledDown,
    /// Another task of the same slot is kept (e.g. after a partition healed).
    Duplicate,
    /// A newer task of the same slot is up.
    Superseded,
    /// Its node is drained.
    NodeDrained,
    /// Its node no longer matches the service's placement (global services).
    NodeIneligible,
    /// It ended and a new task takes its slot.
    Restarted,
    /// It runs an outdated spec: the rolling update replaces it.
    Updated,
    /// It moves to an emptier node.
    Rebalanced,
    /// It was sent to a node that could not take it (rebalance target).
    PlacementFailed,
    /// The restart policy says no more restarts; the text says why.
    RestartPolicy(String),
    /// Its service was removed.
    ServiceRemoved,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::ScaledDown => f.write_str("scaled down"),
            StopReason::Duplicate => f.write_str("duplicate of its slot"),
            StopReason::Superseded => f.write_str("replaced by a newer task"),
            StopReason::NodeDrained => f.write_str("node drained"),
            StopReason::NodeIneligible => f.write_str("node no longer matches the placement"),
            StopReason::Restarted => f.write_str("restarted by the restart policy"),
            StopReason::Updated => f.write_str("replaced by the rolling update"),
            StopReason::Rebalanced => f.write_str("moved to balance the service over its nodes"),
            StopReason::PlacementFailed => f.write_str("its target node could not take it"),
            StopReason::RestartPolicy(why) => write!(f, "not restarted: {why}"),
            StopReason::ServiceRemoved => f.write_str("service removed"),
        }
    }
}

/// One write (or wake-up) the orchestrator wants. Every variant names the service it
/// belongs to, so writes can be grouped into one transaction per service.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Put this new task (it must not exist yet: expected version 0). Status NEW, desired
    /// RUNNING; `node_id` set for global services and rebalance moves, else empty for
    /// the scheduler. Network attachments are left for IPAM to fill in.
    CreateTask(Box<pb::Task>),
    /// Set the task's desired state: SHUTDOWN (stop it), COMPLETE (it ended and stays
    /// ended: the restart policy said no) or REMOVE (stop and forget).
    SetDesiredState {
        service_id: String,
        task_id: TaskId,
        state: pb::TaskState,
        reason: StopReason,
    },
    /// Its node is lost: status ORPHANED (a final state), desired SHUTDOWN. The agent, if
    /// it ever comes back, stops the container since the task leaves its assignment.
    Orphan {
        service_id: String,
        task_id: TaskId,
        node_id: String,
    },
    /// The task runs but its health check says unhealthy: status FAILED with `reason`
    /// as the error; the restart policy then treats it as any failed task (Swarm's
    /// agent does the same by killing it).
    Fail {
        service_id: String,
        task_id: TaskId,
        reason: String,
    },
    /// Record rolling-update progress on the service.
    SetUpdateStatus {
        service_id: String,
        status: pb::UpdateStatus,
    },
    /// Roll the service back: `spec` and `previous_spec` swap, `spec_version` goes up by
    /// one, `update_status` becomes `status` (ROLLBACK_STARTED).
    Rollback {
        service_id: String,
        status: pb::UpdateStatus,
    },
    /// Delete an ended task's record (history beyond the limit, or of a removed service).
    DeleteTask { service_id: String, task_id: TaskId },
    /// No write: the service's tasks are not created yet because of `depends_on`.
    Blocked { service_id: String, reason: String },
    /// No write: run the orchestrator again at this time (restart delay, update delay,
    /// end of a monitor window).
    RequeueAt(i64),
}

impl Action {
    /// The service this action belongs to; `None` for `RequeueAt`.
    pub fn service_id(&self) -> Option<&str> {
        match self {
            Action::CreateTask(t) => Some(&t.service_id),
            Action::SetDesiredState { service_id, .. }
            | Action::Orphan { service_id, .. }
            | Action::Fail { service_id, .. }
            | Action::SetUpdateStatus { service_id, .. }
            | Action::Rollback { service_id, .. }
            | Action::DeleteTask { service_id, .. }
            | Action::Blocked { service_id, .. } => Some(service_id),
            Action::RequeueAt(_) => None,
        }
    }

    /// Whether this action changes the store (everything but `Blocked` and `RequeueAt`).
    pub fn is_write(&self) -> bool {
        !matches!(self, Action::Blocked { .. } | Action::RequeueAt(_))
    }
}

/// The earliest `RequeueAt` among `actions`.
pub fn next_wakeup(actions: &[Action]) -> Option<i64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RequeueAt(t) => Some(*t),
            _ => None,
        })
        .min()
}
