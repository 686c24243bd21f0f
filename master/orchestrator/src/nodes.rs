//! The nodes as the orchestrator asks about them: by id, down or not, drained or not.
//! Built once per pass and shared by every service.

use std::collections::HashMap;

use skiff_proto::v1 as pb;

/// An index of the cluster's nodes.
pub struct Nodes<'a> {
    list: &'a [pb::Node],
    by_id: HashMap<&'a str, &'a pb::Node>,
}

impl<'a> Nodes<'a> {
    pub fn new(list: &'a [pb::Node]) -> Nodes<'a> {
        Nodes {
            list,
            by_id: list.iter().map(|n| (n.id.as_str(), n)).collect(),
        }
    }

    pub fn list(&self) -> &'a [pb::Node] {
        self.list
    }

    pub fn get(&self, id: &str) -> Option<&'a pb::Node> {
        self.by_id.get(id).copied()
    }

    /// The node is DOWN or no longer in the cluster: nothing on it will report again.
    pub fn is_lost(&self, id: &str) -> bool {
        self.get(id)
            .is_none_or(|n| n.state() == pb::NodeState::Down)
    }

    pub fn is_drained(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|n| availability(n) == pb::NodeAvailability::Drain)
    }
}

pub(crate) fn availability(n: &pb::Node) -> pb::NodeAvailability {
    n.spec
        .as_ref()
        .map_or(pb::NodeAvailability::Active, |s| s.availability())
}

/// Ready and active: the node may get new tasks.
pub(crate) fn accepts_tasks(n: &pb::Node) -> bool {
    n.state() == pb::NodeState::Ready && availability(n) == pb::NodeAvailability::Active
}
