//! The batch scheduler: a view of the nodes and what runs on them, updated by every
//! placement it makes, so a batch of any size never overcommits a node. Tasks of one
//! service with one placement spec form a group; the group's static filters run once
//! per node, then each of its tasks costs a heap pop and push (see `tree`).

use std::collections::HashMap;

use skiff_proto::TaskStateExt;
use skiff_proto::v1 as pb;

use crate::NodeId;
use crate::filter::{HostPort, Rejection, Requirements, host_ports};
use crate::tree::{Candidates, Entry, Score, Tree};
use crate::unplaceable::{Tally, Unplaceable};

/// One node and what is placed on it so far.
struct NodeState<'a> {
    node: &'a pb::Node,
    cap_cpu: i64,
    cap_mem: i64,
    used_cpu: i64,
    used_mem: i64,
    tasks: u32,
    ports: Vec<HostPort>,
}

impl NodeState<'_> {
    fn free_mem(&self) -> i64 {
        self.cap_mem - self.used_mem
    }

    fn free_cpu(&self) -> i64 {
        self.cap_cpu - self.used_cpu
    }

    /// The dynamic filters, in pipeline order.
    fn check(&self, req: &Requirements, service_tasks: u32) -> Result<(), Rejection> {
        if req.max_replicas_per_node > 0 && u64::from(service_tasks) >= req.max_replicas_per_node {
            return Err(Rejection::MaxReplicas(req.max_replicas_per_node));
        }
        if let Some(p) = req.host_ports.iter().find(|p| self.ports.contains(p)) {
            return Err(Rejection::HostPort(*p));
        }
        if req.memory_bytes > 0 && self.free_mem() < req.memory_bytes {
            return Err(Rejection::InsufficientMemory);
        }
        if req.nano_cpus > 0 && self.free_cpu() < req.nano_cpus {
            return Err(Rejection::InsufficientCpu);
        }
        Ok(())
    }

    fn add(&mut self, nano_cpus: i64, memory_bytes: i64, ports: &[HostPort]) {
        self.used_cpu += nano_cpus;
        self.used_mem += memory_bytes;
        self.tasks += 1;
        self.ports.extend_from_slice(ports);
    }
}

/// The parts of a spec placement depends on; equal parts (and service) = same group.
#[derive(PartialEq)]
struct GroupKey {
    service_id: String,
    placement: Option<pb::Placement>,
    resources: Option<pb::ResourceRequirements>,
    endpoint: Option<pb::EndpointSpec>,
}

impl GroupKey {
    fn matches(&self, task: &pb::Task, spec: &pb::ServiceSpec) -> bool {
        self.service_id == task.service_id
            && self.placement == spec.placement
            && self.resources == spec.resources
            && self.endpoint == spec.endpoint
    }

    fn of(task: &pb::Task, spec: &pb::ServiceSpec) -> GroupKey {
        GroupKey {
            service_id: task.service_id.clone(),
            placement: spec.placement.clone(),
            resources: spec.resources,
            endpoint: spec.endpoint.clone(),
        }
    }
}

/// The candidates of the group being placed.
struct Group {
    key: GroupKey,
    req: Requirements,
    /// Tasks of the service per node (dense copy of `Scheduler::services[service]`).
    service_tasks: Vec<u32>,
    tree: Tree,
    /// Nodes turned away by the static filters when the group was built.
    rejected: Tally,
    /// Nodes dropped since, by the dynamic filters.
    dropped: Tally,
}

/// Places tasks onto nodes. Build it from the nodes and the tasks in the store, then
/// call [`Scheduler::place`] (or [`Scheduler::place_all`]) for each task that needs a
/// node; every placement is accounted before the next one is made.
pub struct Scheduler<'a> {
    /// Sorted by node id: ties go to the smallest id, so results are reproducible.
    nodes: Vec<NodeState<'a>>,
    by_id: HashMap<&'a str, u32>,
    /// Active tasks per service per node.
    services: HashMap<String, HashMap<u32, u32>>,
    group: Option<Group>,
}

/// A task occupies its node's resources from assignment until it has ended: a task
/// asked to shut down still holds them until the agent reports it stopped.
pub fn holds_resources(task: &pb::Task) -> bool {
    !task.node_id.is_empty() && task.status.as_ref().is_some_and(|s| s.state().is_active())
}

/// A task waits for the scheduler while it is wanted running and has not been assigned.
/// Tasks that already name a node (global services, rebalance moves) are checked
/// against that node only.
pub fn needs_placement(task: &pb::Task) -> bool {
    let state = task
        .status
        .as_ref()
        .map_or(pb::TaskState::New, |s| s.state());
    task.desired_state() <= pb::TaskState::Running && state <= pb::TaskState::Pending
}

impl<'a> Scheduler<'a> {
    /// A view of `nodes` with the resources, host ports and task counts of the `tasks`
    /// that hold them (see [`holds_resources`]); other tasks are ignored, so the whole
    /// task table can be passed.
    pub fn new(nodes: &'a [pb::Node], tasks: &[pb::Task]) -> Scheduler<'a> {
        let mut sorted: Vec<&'a pb::Node> = nodes.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|a, b| a.id == b.id);
        let nodes: Vec<NodeState<'a>> = sorted
            .into_iter()
            .map(|node| {
                let res = node.description.as_ref().and_then(|d| d.resources.as_ref());
                NodeState {
                    node,
                    cap_cpu: res.map_or(0, |r| r.nano_cpus),
                    cap_mem: res.map_or(0, |r| r.memory_bytes),
                    used_cpu: 0,
                    used_mem: 0,
                    tasks: 0,
                    ports: Vec::new(),
                }
            })
            .collect();
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.id.as_str(), i as u32))
            .collect();
        let mut s = Scheduler {
            nodes,
            by_id,
            services: HashMap::new(),
            group: None,
        };
        for t in tasks.iter().filter(|t| holds_resources(t)) {
            let Some(&idx) = s.by_id.get(t.node_id.as_str()) else {
                continue;
            };
            let (cpu, mem, ports) = t.spec.as_ref().map_or((0, 0, Vec::new()), |spec| {
                let r = spec
                    .resources
                    .as_ref()
                    .and_then(|r| r.reservations.as_ref());
                (
                    r.map_or(0, |r| r.nano_cpus.max(0)),
                    r.map_or(0, |r| r.memory_bytes.max(0)),
                    host_ports(spec),
                )
            });
            s.nodes[idx as usize].add(cpu, mem, &ports);
            *s.services
                .entry(t.service_id.clone())
                .or_default()
                .entry(idx)
                .or_insert(0) += 1;
        }
        s
    }

    /// Number of nodes in the view.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Chooses a node for `task` and accounts the task there. A task that already
    /// names a node is checked against that node only.
    pub fn place(&mut self, task: &pb::Task) -> Result<NodeId, Unplaceable> {
        let spec = task.spec.as_ref().ok_or_else(|| Unplaceable::NoSpec {
            task: task.id.clone(),
        })?;
        if !task.node_id.is_empty() {
            return self.place_on(task, spec);
        }
        if !self
            .group
            .as_ref()
            .is_some_and(|g| g.key.matches(task, spec))
        {
            self.group = None;
            self.group = Some(self.build_group(task, spec)?);
        }
        let Scheduler {
            nodes,
            services,
            group,
            ..
        } = self;
        let Some(group) = group.as_mut() else {
            unreachable!("the group was built above");
        };
        let mut cands = GroupCandidates {
            nodes: &mut nodes[..],
            req: &group.req,
            service_tasks: &mut group.service_tasks,
            service_map: services.entry(task.service_id.clone()).or_default(),
        };
        match group.tree.place(&mut cands, &mut group.dropped) {
            Some(idx) => Ok(NodeId::new(&nodes[idx as usize].node.id)),
            None => {
                let mut tally = group.rejected.clone();
                tally.merge(&group.dropped);
                Err(Unplaceable::NoSuitableNode {
                    nodes: nodes.len() as u32,
                    tally,
                })
            }
        }
    }

    /// Places a batch. Tasks that name a node go first (they can go nowhere else), then
    /// the others group by group in order of first appearance, each group in one pass.
    /// Results are in the order of `tasks`.
    pub fn place_all(&mut self, tasks: &[&pb::Task]) -> Vec<Result<NodeId, Unplaceable>> {
        let mut results: Vec<Option<Result<NodeId, Unplaceable>>> = vec![None; tasks.len()];
        let mut groups: Vec<Vec<usize>> = Vec::new();
        // (service, spec version) → groups with that pair; specs are compared too, so
        // a caller that never bumps spec_version still gets correct groups.
        let mut index: HashMap<(&str, u64), Vec<usize>> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if !t.node_id.is_empty() || t.spec.is_none() {
                results[i] = Some(self.place(t));
                continue;
            }
            let candidates = index
                .entry((t.service_id.as_str(), t.spec_version))
                .or_default();
            let found = candidates
                .iter()
                .copied()
                .find(|&g| same_group(tasks[groups[g][0]], t));
            match found {
                Some(g) => groups[g].push(i),
                None => {
                    candidates.push(groups.len());
                    groups.push(vec![i]);
                }
            }
        }
        for group in groups {
            for i in group {
                results[i] = Some(self.place(tasks[i]));
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every task got a result"))
            .collect()
    }

    /// Whether `task` would fit on `node_id` now, without placing it: what the
    /// orchestrator asks before moving a task there.
    pub fn fits(&self, task: &pb::Task, node_id: &str) -> Result<(), Unplaceable> {
        let spec = task.spec.as_ref().ok_or_else(|| Unplaceable::NoSpec {
            task: task.id.clone(),
        })?;
        let req = Requirements::from_spec(spec).map_err(Unplaceable::InvalidPlacement)?;
        let idx = self.index(node_id)?;
        self.check_one(task, &req, idx)
    }

    fn index(&self, node_id: &str) -> Result<u32, Unplaceable> {
        self.by_id
            .get(node_id)
            .copied()
            .ok_or_else(|| Unplaceable::UnknownNode {
                node: node_id.to_owned(),
            })
    }

    fn service_tasks(&self, service_id: &str, idx: u32) -> u32 {
        self.services
            .get(service_id)
            .and_then(|m| m.get(&idx))
            .copied()
            .unwrap_or(0)
    }

    fn check_one(&self, task: &pb::Task, req: &Requirements, idx: u32) -> Result<(), Unplaceable> {
        let n = &self.nodes[idx as usize];
        req.static_check(n.node)
            .and_then(|()| n.check(req, self.service_tasks(&task.service_id, idx)))
            .map_err(|r| {
                let mut tally = Tally::default();
                tally.add(r);
                Unplaceable::NoSuitableNode { nodes: 1, tally }
            })
    }

    fn place_on(&mut self, task: &pb::Task, spec: &pb::ServiceSpec) -> Result<NodeId, Unplaceable> {
        let req = Requirements::from_spec(spec).map_err(Unplaceable::InvalidPlacement)?;
        let idx = self.index(&task.node_id)?;
        self.check_one(task, &req, idx)?;
        // Counts changed outside the cached group: rebuild it when next needed.
        self.group = None;
        self.nodes[idx as usize].add(req.nano_cpus, req.memory_bytes, &req.host_ports);
        *self
            .services
            .entry(task.service_id.clone())
            .or_default()
            .entry(idx)
            .or_insert(0) += 1;
        Ok(NodeId::new(&task.node_id))
    }

    fn build_group(&self, task: &pb::Task, spec: &pb::ServiceSpec) -> Result<Group, Unplaceable> {
        let req = Requirements::from_spec(spec).map_err(Unplaceable::InvalidPlacement)?;
        let mut service_tasks = vec![0u32; self.nodes.len()];
        if let Some(m) = self.services.get(&task.service_id) {
            for (&idx, &n) in m {
                service_tasks[idx as usize] = n;
            }
        }
        let mut rejected = Tally::default();
        let mut entries = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match req.static_check(n.node) {
                Ok(()) => entries.push(Entry {
                    node: i as u32,
                    path: req
                        .preferences
                        .iter()
                        .map(|k| k.value(n.node).to_owned())
                        .collect(),
                    service_tasks: u64::from(service_tasks[i]),
                }),
                Err(r) => rejected.add(r),
            }
        }
        let tree = {
            let score =
                |idx: u32| score(&self.nodes[idx as usize], &req, service_tasks[idx as usize]);
            Tree::build(entries, 0, &score)
        };
        Ok(Group {
            key: GroupKey::of(task, spec),
            req,
            service_tasks,
            tree,
            rejected,
            dropped: Tally::default(),
        })
    }
}

fn same_group(a: &pb::Task, b: &pb::Task) -> bool {
    match (&a.spec, &b.spec) {
        (Some(x), Some(y)) => {
            a.service_id == b.service_id
                && x.placement == y.placement
                && x.resources == y.resources
                && x.endpoint == y.endpoint
        }
        _ => false,
    }
}

fn score(n: &NodeState<'_>, req: &Requirements, service_tasks: u32) -> Score {
    if req.binpack {
        (n.free_mem(), n.free_cpu(), -i64::from(n.tasks))
    } else {
        (i64::from(service_tasks), i64::from(n.tasks), 0)
    }
}

struct GroupCandidates<'s, 'a> {
    nodes: &'s mut [NodeState<'a>],
    req: &'s Requirements,
    service_tasks: &'s mut Vec<u32>,
    service_map: &'s mut HashMap<u32, u32>,
}

impl Candidates for GroupCandidates<'_, '_> {
    fn score(&self, node: u32) -> Score {
        let i = node as usize;
        score(&self.nodes[i], self.req, self.service_tasks[i])
    }

    fn check(&self, node: u32) -> Result<(), Rejection> {
        let i = node as usize;
        self.nodes[i].check(self.req, self.service_tasks[i])
    }

    fn commit(&mut self, node: u32) {
        let i = node as usize;
        let req = self.req;
        self.nodes[i].add(req.nano_cpus, req.memory_bytes, &req.host_ports);
        self.service_tasks[i] += 1;
        *self.service_map.entry(node).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests;
