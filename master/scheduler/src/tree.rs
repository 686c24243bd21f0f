//! The candidate nodes of one task group, arranged so each placement costs O(log n):
//! a min-heap of nodes by score per leaf, and, for spread preferences, one level of
//! branches per preference (nodes grouped by the label's value), each branch a min-heap
//! of its children by how many of the service's tasks they hold. Descending always into
//! the emptiest branch spreads tasks evenly over zones, then racks, then nodes: Swarm's
//! decision-tree semantics, greedily, one task at a time.
//!
//! Scores only grow as tasks are placed (more tasks, less free room), except for binpack
//! where a fuller node is preferred; entries are re-checked against the current score
//! when they surface (lazy update), so a heap never hands out a stale choice.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::filter::Rejection;
use crate::unplaceable::Tally;

/// Smaller is better. Spread: (tasks of the service, tasks in total, 0); binpack: (free
/// memory, free CPU, -tasks in total).
pub(crate) type Score = (i64, i64, i64);

/// What the tree needs to know of and do to the nodes.
pub(crate) trait Candidates {
    fn score(&self, node: u32) -> Score;
    /// The dynamic filters: max replicas per node, host ports, memory, CPU.
    fn check(&self, node: u32) -> Result<(), Rejection>;
    /// Accounts one more task of the group on `node`.
    fn commit(&mut self, node: u32);
}

pub(crate) enum Tree {
    Leaf(BinaryHeap<Reverse<(Score, u32)>>),
    Branch {
        children: Vec<Tree>,
        /// Tasks of the service in each child's subtree.
        counts: Vec<u64>,
        /// (count when pushed, child); entries whose count is stale are skipped.
        heap: BinaryHeap<Reverse<(u64, u32)>>,
    },
}

/// One eligible node: its index, its preference values (outermost first) and how many
/// tasks of the service it already runs.
pub(crate) struct Entry {
    pub node: u32,
    pub path: Vec<String>,
    pub service_tasks: u64,
}

impl Tree {
    pub fn build(entries: Vec<Entry>, depth: usize, score: &impl Fn(u32) -> Score) -> Tree {
        let levels = entries.first().map_or(0, |e| e.path.len());
        if depth >= levels {
            let heap = entries
                .into_iter()
                .map(|e| Reverse((score(e.node), e.node)))
                .collect::<Vec<_>>();
            return Tree::Leaf(BinaryHeap::from(heap));
        }
        let mut by_value: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in entries {
            by_value.entry(e.path[depth].clone()).or_default().push(e);
        }
        let mut children = Vec::with_capacity(by_value.len());
        let mut counts = Vec::with_capacity(by_value.len());
        for (_, group) in by_value {
            counts.push(group.iter().map(|e| e.service_tasks).sum());
            children.push(Tree::build(group, depth + 1, score));
        }
        let heap = counts
            .iter()
            .enumerate()
            .map(|(i, c)| Reverse((*c, i as u32)))
            .collect::<Vec<_>>();
        Tree::Branch {
            children,
            counts,
            heap: BinaryHeap::from(heap),
        }
    }

    /// Picks the best node that passes the dynamic filters, commits the task to it and
    /// returns it. Nodes that fail are dropped for good (for this group, room only
    /// shrinks) and counted in `dropped`. `None` once no candidate is left.
    pub fn place(&mut self, c: &mut impl Candidates, dropped: &mut Tally) -> Option<u32> {
        match self {
            Tree::Leaf(heap) => loop {
                let Reverse((score, node)) = heap.pop()?;
                let now = c.score(node);
                if now != score {
                    heap.push(Reverse((now, node)));
                    continue;
                }
                match c.check(node) {
                    Ok(()) => {
                        c.commit(node);
                        heap.push(Reverse((c.score(node), node)));
                        return Some(node);
                    }
                    Err(r) => dropped.add(r),
                }
            },
            Tree::Branch {
                children,
                counts,
                heap,
            } => loop {
                let Reverse((count, child)) = *heap.peek()?;
                let i = child as usize;
                if count != counts[i] {
                    heap.pop();
                    continue;
                }
                heap.pop();
                if let Some(node) = children[i].place(c, dropped) {
                    counts[i] += 1;
                    heap.push(Reverse((counts[i], child)));
                    return Some(node);
                }
                // The child has no room left: it stays out of the heap.
            },
        }
    }
}
