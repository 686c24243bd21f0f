//! Why a task could not be placed, aggregated over all nodes so the message says what to
//! change: "no suitable node: 2 nodes not ready, insufficient memory on 3 nodes".
//! Each node is counted once, under the first filter that turned it away.

use std::collections::BTreeMap;
use std::fmt;

use crate::constraint::ConstraintError;
use crate::filter::Rejection;

/// How many nodes each filter turned away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    counts: BTreeMap<Rejection, u32>,
}

impl Tally {
    pub fn add(&mut self, r: Rejection) {
        *self.counts.entry(r).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (r, n) in &other.counts {
            *self.counts.entry(r.clone()).or_insert(0) += n;
        }
    }

    /// Nodes counted.
    pub fn total(&self) -> u32 {
        self.counts.values().sum()
    }

    pub fn count(&self, r: &Rejection) -> u32 {
        self.counts.get(r).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Rejection, u32)> {
        self.counts.iter().map(|(r, n)| (r, *n))
    }
}

/// A task that no node can take now. `Display` is the text for the task's status
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unplaceable {
    /// Every node was turned away; `nodes` is the cluster's size.
    #[error("no suitable node: {}", Explain { nodes: *nodes, tally })]
    NoSuitableNode { nodes: u32, tally: Tally },
    /// The spec's placement can't be read (validation at deploy time should have
    /// refused it).
    #[error("invalid placement")]
    InvalidPlacement(#[source] ConstraintError),
    #[error("task {task} has no spec")]
    NoSpec { task: String },
    /// The task names a node (global service, rebalance target) that is not in the
    /// cluster.
    #[error("no suitable node: node {node} is not in the cluster")]
    UnknownNode { node: String },
}

impl Unplaceable {
    /// The message for people, with the cause of an invalid placement spelled out
    /// (the `Display` of this error leaves it to the source chain).
    pub fn message(&self) -> String {
        match self {
            Unplaceable::InvalidPlacement(e) => format!("invalid placement: {e}"),
            other => other.to_string(),
        }
    }
}

struct Explain<'a> {
    nodes: u32,
    tally: &'a Tally,
}

impl fmt::Display for Explain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes in the cluster");
        }
        // Nodes still in the running when a filter was reached: for constraints,
        // "matched none" means it turned away every node that got that far.
        let mut remaining = self.nodes;
        let mut first = true;
        for (r, n) in self.tally.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            let nodes = plural(n);
            match r {
                Rejection::NotReady => write!(f, "{nodes} not ready")?,
                Rejection::Unavailable => write!(f, "{nodes} paused or drained")?,
                Rejection::Platform => write!(f, "platform not supported on {nodes}")?,
                Rejection::Constraint { text, .. } if n == remaining => {
                    write!(f, "constraint {text} matched none ({nodes})")?;
                }
                Rejection::Constraint { text, .. } => {
                    write!(f, "constraint {text} not satisfied on {nodes}")?;
                }
                Rejection::MaxReplicas(max) => {
                    write!(f, "max replicas per node ({max}) reached on {nodes}")?;
                }
                Rejection::HostPort(p) => write!(f, "host port {p} in use on {nodes}")?,
                Rejection::InsufficientMemory => write!(f, "insufficient memory on {nodes}")?,
                Rejection::InsufficientCpu => write!(f, "insufficient cpu on {nodes}")?,
            }
            remaining = remaining.saturating_sub(n);
        }
        Ok(())
    }
}

fn plural(n: u32) -> String {
    if n == 1 {
        "1 node".into()
    } else {
        format!("{n} nodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_pipeline_order_with_counts() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add(Rejection::InsufficientMemory);
        }
        for _ in 0..5 {
            t.add(Rejection::Constraint {
                index: 0,
                text: "node.labels.zone==b".into(),
            });
        }
        t.add(Rejection::NotReady);
        let u = Unplaceable::NoSuitableNode { nodes: 9, tally: t };
        assert_eq!(
            u.to_string(),
            "no suitable node: 1 node not ready, constraint node.labels.zone==b not satisfied on 5 nodes, insufficient memory on 3 nodes"
        );
    }

    #[test]
    fn a_constraint_that_turned_away_everyone_left_says_matched_none() {
        let mut t = Tally::default();
        t.add(Rejection::Unavailable);
        for _ in 0..5 {
            t.add(Rejection::Constraint {
                index: 1,
                text: "node.labels.zone==b".into(),
            });
        }
        let u = Unplaceable::NoSuitableNode { nodes: 6, tally: t };
        assert_eq!(
            u.to_string(),
            "no suitable node: 1 node paused or drained, constraint node.labels.zone==b matched none (5 nodes)"
        );
    }

    #[test]
    fn empty_cluster_and_other_reasons() {
        let u = Unplaceable::NoSuitableNode {
            nodes: 0,
            tally: Tally::default(),
        };
        assert_eq!(u.to_string(), "no suitable node: no nodes in the cluster");
        let mut t = Tally::default();
        t.add(Rejection::MaxReplicas(2));
        t.add(Rejection::HostPort(crate::filter::HostPort {
            port: 80,
            udp: false,
        }));
        t.add(Rejection::HostPort(crate::filter::HostPort {
            port: 80,
            udp: false,
        }));
        t.add(Rejection::InsufficientCpu);
        t.add(Rejection::Platform);
        let u = Unplaceable::NoSuitableNode { nodes: 5, tally: t };
        assert_eq!(
            u.to_string(),
            "no suitable node: platform not supported on 1 node, max replicas per node (2) reached on 1 node, host port 80/tcp in use on 2 nodes, insufficient cpu on 1 node"
        );
        let bad = crate::constraint::Constraint::parse("zone").expect_err("bad");
        let u = Unplaceable::InvalidPlacement(bad);
        assert_eq!(
            u.message(),
            "invalid placement: constraint \"zone\" has no operator: use == or !="
        );
    }
}
