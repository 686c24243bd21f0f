//! Helpers on the ordered task state enum: which states are final, which are live.

use crate::v1::TaskState;

/// Questions every controller asks of a task state.
pub trait TaskStateExt {
    /// The task has ended (complete, shutdown, failed, rejected, orphaned) and will
    /// not run again.
    fn is_terminal(&self) -> bool;
    /// The task holds (or is about to hold) resources on its node.
    fn is_active(&self) -> bool;
    /// Lower-case name for people: "running", "pending".
    fn label(&self) -> &'static str;
}

impl TaskStateExt for TaskState {
    fn is_terminal(&self) -> bool {
        *self >= TaskState::Complete && *self != TaskState::Remove
    }

    fn is_active(&self) -> bool {
        *self >= TaskState::Assigned && *self <= TaskState::Running
    }

    fn label(&self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_ordered_as_a_task_moves() {
        assert!(TaskState::Pending < TaskState::Assigned);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(TaskState::Running.is_active());
        assert!(!TaskState::Pending.is_active());
        assert!(TaskState::Failed.is_terminal());
        assert!(TaskState::Orphaned.is_terminal());
        assert!(!TaskState::Remove.is_terminal());
        assert!(!TaskState::Running.is_terminal());
    }

    #[test]
    fn messages_round_trip_through_the_wire_format() {
        use crate::v1::{Task, TaskStatus};
        use prost::Message;
        let task = Task {
            id: "t1".into(),
            slot: 3,
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                message: "no suitable node: insufficient memory on 3 nodes".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = task.encode_to_vec();
        let back = Task::decode(bytes.as_slice()).expect("decode what we encoded");
        assert_eq!(back, task);
    }

    #[test]
    fn json_uses_proto3_names_for_fields_and_enums() {
        use crate::v1::{Task, TaskStatus};
        let task = Task {
            id: "t1".into(),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&task).expect("to json");
        assert_eq!(json["desiredState"], "TASK_STATE_RUNNING");
        assert_eq!(json["status"]["state"], "TASK_STATE_PENDING");
        let back: Task = serde_json::from_value(json).expect("from json");
        assert_eq!(back, task);
    }
}
