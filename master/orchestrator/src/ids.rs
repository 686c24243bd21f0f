//! Task ids derived from what a task is: `<service id>.<slot or node id>.<generation>`,
//! the generation counting up within the slot. Two passes that decide the same creation
//! make the same id, so the store's "must not exist" check turns a repeated write into
//! a conflict instead of a duplicate task; and the generation orders a slot's tasks
//! without trusting clocks.

use std::fmt;

/// A task's id as the store keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(String);

impl TaskId {
    pub fn new(id: impl Into<String>) -> TaskId {
        TaskId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which instance of a service a task is: a replica slot (1..=replicas) or, for a
/// global service, the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    Slot(u64),
    Node(String),
}

impl fmt::Display for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotKey::Slot(n) => write!(f, "{n}"),
            SlotKey::Node(id) => f.write_str(id),
        }
    }
}

/// The id of the `generation`-th task of `key` in `service_id`.
pub fn task_id(service_id: &str, key: &SlotKey, generation: u64) -> TaskId {
    TaskId(format!("{service_id}.{key}.{generation}"))
}

/// The generation of a task id made by [`task_id`]; 0 for ids made otherwise.
pub fn generation(id: &str) -> u64 {
    id.rsplit_once('.')
        .and_then(|(_, g)| g.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_slot_and_a_generation() {
        let id = task_id("svc1", &SlotKey::Slot(3), 7);
        assert_eq!(id.as_str(), "svc1.3.7");
        assert_eq!(generation(id.as_str()), 7);
        let id = task_id("svc1", &SlotKey::Node("node.a".into()), 12);
        assert_eq!(id.as_str(), "svc1.node.a.12");
        assert_eq!(generation(id.as_str()), 12);
        assert_eq!(generation("5f3c-uuid"), 0);
        assert_eq!(generation("x.y"), 0);
    }
}
