//! One pass of the leader's controllers, pure: from a snapshot of the store, the
//! heartbeats this leader has seen and the clock, the commands that move the cluster one
//! step toward what its services ask for. Every write is compare-and-swap on what the
//! snapshot held, so a pass computed from a stale snapshot fails to write, never
//! overwrites.
//!
//! ```text
//!  snapshot + heartbeats ──► node_health ──► node writes (READY ⇄ DOWN), one command each
//!        │ (nodes as just decided)
//!        ▼
//!  reconcile_all ──► commands(): one command per service (create, stop, orphan, update…)
//!        │ projected store = snapshot + those commands
//!        ▼
//!  network::allocate ── new subnets? ─yes─► network writes only (run_again_now): the
//!        │                                    services' commands come next pass
//!        │ no: VIPs and task addresses merged into their service's command
//!        ▼
//!  skiff_scheduler::schedule (tasks that need addresses wait for them)
//!        │ placements and "pending: why" merged into their service's command
//!        ▼
//!  Pass { writes, wake_at = min(next_wakeup, next_check), blocked, problems }
//! ```
//!
//! Merging means a task the orchestrator creates is written once, already with its
//! addresses and its node, in the same transaction as the rest of its service's changes.

use std::collections::{BTreeMap, HashMap};

use skiff_orchestrator::{self as orch, Action, ClusterView, Liveness, StopReason};
use skiff_proto::v1 as pb;

use super::network;
use crate::dispatcher::service::Snapshot;

/// The overlay range used when the cluster object names none.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.213.0.0/16";

/// What one pass reads besides the store.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub snapshot: &'a Snapshot,
    /// Each node's last heartbeat (wall clock, ms) as this leader saw it.
    pub heartbeats: &'a HashMap<String, i64>,
    /// When this leader began watching heartbeats: no node is judged silent for longer
    /// than it has been leader (a new leader has seen no heartbeat yet).
    pub leader_since_ms: i64,
    pub now_ms: i64,
}

/// One store command and what it does, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub command: pb::Command,
    pub summary: String,
}

/// What a pass decided.
#[derive(Debug, Default)]
pub struct Pass {
    /// In order: node states, networks, then one command per service.
    pub writes: Vec<Write>,
    /// When to run again if nothing changes before: a restart delay, an update delay
    /// or monitor window, or the moment a silent node would pass its limit.
    pub wake_at: Option<i64>,
    /// (service, reason) of services held back by `depends_on`.
    pub blocked: Vec<(String, String)>,
    /// What could not be decided (an internal inconsistency, a network that could not
    /// be allocated).
    pub problems: Vec<String>,
    /// The writes are only what the rest waits for (new networks' subnets): the services'
    /// commands were held back, and the next pass should run as soon as these apply
    /// rather than after the usual pause.
    pub run_again_now: bool,
}

/// Per-command tally for the summary line.
#[derive(Debug, Default)]
struct Tally {
    name: String,
    created: usize,
    stopped: BTreeMap<String, usize>,
    orphaned: usize,
    failed: usize,
    deleted: usize,
    update: Option<String>,
    rollback: bool,
    addressed: usize,
    vips: usize,
    placed: BTreeMap<String, usize>,
    pending: BTreeMap<String, usize>,
}

impl Tally {
    fn render(&self) -> String {
        let mut parts = Vec::new();
        if self.created > 0 {
            parts.push(format!("created {} task(s)", self.created));
        }
        for (why, n) in &self.stopped {
            parts.push(format!("{why}: {n} task(s)"));
        }
        if self.orphaned > 0 {
            parts.push(format!("orphaned {} task(s) of lost nodes", self.orphaned));
        }
        if self.failed > 0 {
            parts.push(format!("failed {} unhealthy task(s)", self.failed));
        }
        if self.rollback {
            parts.push("rolled back to the previous spec".to_owned());
        }
        if let Some(u) = &self.update {
            parts.push(format!("update {u}"));
        }
        if self.deleted > 0 {
            parts.push(format!("deleted {} old task(s)", self.deleted));
        }
        if self.vips > 0 {
            parts.push(format!("{} virtual IP(s)", self.vips));
        }
        if self.addressed > 0 {
            parts.push(format!("addresses for {} task(s)", self.addressed));
        }
        if !self.placed.is_empty() {
            let on: Vec<String> = self
                .placed
                .iter()
                .map(|(node, n)| format!("{n} on {node}"))
                .collect();
            parts.push(format!("placed {}", on.join(", ")));
        }
        for (why, n) in &self.pending {
            parts.push(format!("{n} pending: {why}"));
        }
        format!("service {}: {}", self.name, parts.join("; "))
    }
}

/// The commands under construction: one per service, and where each object's put is,
/// so later stages replace it instead of writing the object twice.
#[derive(Default)]
struct Builder {
    commands: Vec<pb::Command>,
    tallies: Vec<Tally>,
    by_service: HashMap<String, usize>,
    task_at: HashMap<String, (usize, usize)>,
    service_at: HashMap<String, (usize, usize)>,
}

impl Builder {
    fn command_for(&mut self, service_id: &str, name: &str) -> usize {
        if let Some(i) = self.by_service.get(service_id) {
            return *i;
        }
        self.commands.push(pb::Command::default());
        self.tallies.push(Tally {
            name: name.to_owned(),
            ..Default::default()
        });
        let i = self.commands.len() - 1;
        self.by_service.insert(service_id.to_owned(), i);
        i
    }

    fn index(&mut self, cmd: usize) {
        for (j, m) in self.commands[cmd].mutations.iter().enumerate() {
            match &m.op {
                Some(pb::mutation::Op::PutTask(t)) => {
                    self.task_at.insert(t.id.clone(), (cmd, j));
                }
                Some(pb::mutation::Op::PutService(s)) => {
                    self.service_at.insert(s.id.clone(), (cmd, j));
                }
                _ => {}
            }
        }
    }

    /// Puts `task` in its service's command: replacing the put already there (keeping
    /// its expected version), else as a new compare-and-swap on the version read.
    fn put_task(&mut self, task: pb::Task, name: &str) -> usize {
        if let Some((c, j)) = self.task_at.get(&task.id).copied() {
            self.commands[c].mutations[j].op = Some(pb::mutation::Op::PutTask(task));
            return c;
        }
        let c = self.command_for(&task.service_id, name);
        let id = task.id.clone();
        self.commands[c].mutations.push(pb::Mutation {
            expected_version: task.meta.as_ref().map_or(0, |m| m.version),
            op: Some(pb::mutation::Op::PutTask(task)),
            unconditional: false,
        });
        self.task_at
            .insert(id, (c, self.commands[c].mutations.len() - 1));
        c
    }

    fn put_service(&mut self, service: pb::Service, name: &str) -> usize {
        if let Some((c, j)) = self.service_at.get(&service.id).copied() {
            self.commands[c].mutations[j].op = Some(pb::mutation::Op::PutService(service));
            return c;
        }
        let c = self.command_for(&service.id, name);
        let id = service.id.clone();
        self.commands[c].mutations.push(pb::Mutation {
            expected_version: service.meta.as_ref().map_or(0, |m| m.version),
            op: Some(pb::mutation::Op::PutService(service)),
            unconditional: false,
        });
        self.service_at
            .insert(id, (c, self.commands[c].mutations.len() - 1));
        c
    }
}

/// The store as it will be once `commands` apply (versions not advanced: only the
/// contents matter to the later stages).
struct Projection {
    services: Vec<pb::Service>,
    tasks: Vec<pb::Task>,
    task_index: HashMap<String, usize>,
}

impl Projection {
    fn new(snap: &Snapshot, commands: &[pb::Command]) -> Projection {
        let mut services: BTreeMap<String, pb::Service> = snap
            .services
            .iter()
            .map(|s| (s.id.clone(), s.clone()))
            .collect();
        let mut tasks: BTreeMap<String, pb::Task> = snap
            .tasks
            .iter()
            .map(|t| (t.id.clone(), t.clone()))
            .collect();
        for m in commands.iter().flat_map(|c| &c.mutations) {
            match &m.op {
                Some(pb::mutation::Op::PutTask(t)) => {
                    tasks.insert(t.id.clone(), t.clone());
                }
                Some(pb::mutation::Op::DeleteTask(id)) => {
                    tasks.remove(id);
                }
                Some(pb::mutation::Op::PutService(s)) => {
                    services.insert(s.id.clone(), s.clone());
                }
                _ => {}
            }
        }
        let tasks: Vec<pb::Task> = tasks.into_values().collect();
        let task_index = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        Projection {
            services: services.into_values().collect(),
            tasks,
            task_index,
        }
    }

    fn set_task(&mut self, task: &pb::Task) {
        if let Some(i) = self.task_index.get(&task.id) {
            self.tasks[*i] = task.clone();
        }
    }

    fn set_service(&mut self, service: &pb::Service) {
        if let Some(s) = self.services.iter_mut().find(|s| s.id == service.id) {
            *s = service.clone();
        }
    }
}

fn service_id_of(m: &pb::Mutation, tasks: &HashMap<&str, &pb::Task>) -> Option<String> {
    match &m.op {
        Some(pb::mutation::Op::PutTask(t)) => Some(t.service_id.clone()),
        Some(pb::mutation::Op::PutService(s)) => Some(s.id.clone()),
        Some(pb::mutation::Op::DeleteTask(id)) => {
            tasks.get(id.as_str()).map(|t| t.service_id.clone())
        }
        _ => None,
    }
}

fn stop_label(state: pb::TaskState, reason: &StopReason) -> String {
    match state {
        pb::TaskState::Complete => format!("retired ({reason})"),
        pb::TaskState::Remove => format!("removing ({reason})"),
        _ => format!("stopping ({reason})"),
    }
}

/// One pass (see the module doc).
pub fn pass(input: &Input<'_>) -> Pass {
    let snap = input.snapshot;
    let now = input.now_ms;
    let settings = snap.cluster.as_ref().and_then(|c| c.settings.clone());
    let liveness = Liveness::from_settings(settings.as_ref(), input.leader_since_ms);
    let cidr = settings
        .as_ref()
        .map(|s| s.cluster_cidr.as_str())
        .filter(|c| !c.is_empty())
        .unwrap_or(DEFAULT_CLUSTER_CIDR);
    let history = settings.as_ref().map_or(0, |s| s.task_history_per_slot);
    let mut out = Pass::default();

    // 1. Node liveness, with the heartbeats only this leader's memory holds.
    let mut nodes = snap.nodes.clone();
    for n in &mut nodes {
        if let Some(at) = input.heartbeats.get(&n.id) {
            n.last_heartbeat_ms = n.last_heartbeat_ms.max(*at);
        }
    }
    for change in orch::node_health(&nodes, now, &liveness) {
        let Some(i) = nodes.iter().position(|n| n.id == change.node_id) else {
            continue;
        };
        let node = change.apply(&nodes[i]);
        out.writes.push(Write {
            command: pb::Command {
                mutations: vec![pb::Mutation {
                    expected_version: change.expected_version,
                    op: Some(pb::mutation::Op::PutNode(node.clone())),
                    unconditional: false,
                }],
                request_id: String::new(),
            },
            summary: format!(
                "node {} {} -> {}: {}",
                change.node_id,
                node_state(change.from),
                node_state(change.to),
                change.message
            ),
        });
        nodes[i] = node;
    }

    // 2. Orchestration, on the nodes as just decided.
    let actions = orch::reconcile_all(&ClusterView {
        services: &snap.services,
        tasks: &snap.tasks,
        nodes: &nodes,
        now_ms: now,
        history_per_slot: history,
    });
    let names: HashMap<&str, String> = snap
        .services
        .iter()
        .map(|s| {
            (
                s.id.as_str(),
                orch::service_name(&s.spec.clone().unwrap_or_default()),
            )
        })
        .collect();
    let name_of = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    let orchestrated = match orch::commands(&actions, &snap.services, &snap.tasks, now) {
        Ok(c) => c,
        Err(err) => {
            out.problems.push(format!("orchestrator: {err}"));
            Vec::new()
        }
    };
    let by_id: HashMap<&str, &pb::Task> = snap.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut b = Builder::default();
    for command in orchestrated {
        let Some(sid) = command
            .mutations
            .iter()
            .find_map(|m| service_id_of(m, &by_id))
        else {
            continue;
        };
        let c = b.command_for(&sid, &name_of(&sid));
        b.commands[c].mutations.extend(command.mutations);
        b.index(c);
    }
    for a in &actions {
        let Some(sid) = a.service_id() else { continue };
        if let Action::Blocked { reason, .. } = a {
            out.blocked.push((name_of(sid), reason.clone()));
            continue;
        }
        let Some(c) = b.by_service.get(sid).copied() else {
            continue;
        };
        let t = &mut b.tallies[c];
        match a {
            Action::CreateTask(_) => t.created += 1,
            Action::SetDesiredState { state, reason, .. } => {
                *t.stopped.entry(stop_label(*state, reason)).or_default() += 1;
            }
            Action::Orphan { .. } => t.orphaned += 1,
            Action::Fail { .. } => t.failed += 1,
            Action::SetUpdateStatus { status, .. } => {
                t.update = Some(format!(
                    "{}{}",
                    status
                        .state()
                        .as_str_name()
                        .trim_start_matches("STATE_")
                        .to_lowercase(),
                    if status.message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", status.message)
                    }
                ));
            }
            Action::Rollback { .. } => t.rollback = true,
            Action::DeleteTask { .. } => t.deleted += 1,
            Action::Blocked { .. } | Action::RequeueAt(_) => {}
        }
    }

    // 3. Networks, virtual IPs, task addresses, on the store as it will be.
    let mut projected = Projection::new(snap, &b.commands);
    let view = Snapshot {
        revision: snap.revision,
        nodes: Vec::new(),
        services: projected.services.clone(),
        tasks: projected.tasks.clone(),
        networks: snap.networks.clone(),
        cluster: None,
    };
    let alloc = network::allocate(&view, cidr);
    let new_networks: Vec<pb::Mutation> = alloc
        .mutations
        .iter()
        .filter(|m| matches!(m.op, Some(pb::mutation::Op::PutNetwork(_))))
        .cloned()
        .collect();
    if !new_networks.is_empty() {
        for m in new_networks {
            let Some(pb::mutation::Op::PutNetwork(n)) = &m.op else {
                continue;
            };
            let summary = format!(
                "network {}: subnet {}, gateway {}, vni {}",
                n.spec
                    .as_ref()
                    .map_or_else(|| n.id.clone(), |s| format!("{}_{}", s.project, s.name)),
                n.subnet,
                n.gateway,
                n.vni
            );
            out.writes.push(Write {
                command: pb::Command {
                    mutations: vec![m],
                    request_id: String::new(),
                },
                summary,
            });
        }
        // Tasks get their addresses and nodes in the pass right after, once the subnets
        // are committed: written now, they would be written twice (created here, then
        // addressed and placed), and the first deploy of a project would wait a pause.
        out.run_again_now = true;
        return out;
    }
    for m in alloc.mutations {
        match m.op {
            Some(pb::mutation::Op::PutService(s)) => {
                let before = projected
                    .services
                    .iter()
                    .find(|x| x.id == s.id)
                    .map_or(0, |x| x.virtual_ips.len());
                projected.set_service(&s);
                let added = s.virtual_ips.len().saturating_sub(before);
                let c = b.put_service(s.clone(), &name_of(&s.id));
                b.tallies[c].vips += added;
            }
            Some(pb::mutation::Op::PutTask(t)) => {
                projected.set_task(&t);
                let c = b.put_task(t.clone(), &name_of(&t.service_id));
                b.tallies[c].addressed += 1;
            }
            _ => {}
        }
    }
    let waiting_for_network = alloc.task_errors;

    // 4. Placement. A task that needs addresses waits for them: started without its
    // network it would be unreachable.
    let ready: Vec<pb::Task> = projected
        .tasks
        .iter()
        .filter(|t| !network::needs_attachments(t) || !t.networks.is_empty())
        .cloned()
        .collect();
    for t in skiff_scheduler::schedule(&nodes, &ready, now) {
        let state = t.status.as_ref().map(|s| s.state());
        let name = name_of(&t.service_id);
        let (node, message) = (
            t.node_id.clone(),
            t.status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default(),
        );
        let c = b.put_task(t, &name);
        let tally = &mut b.tallies[c];
        if state == Some(pb::TaskState::Assigned) {
            *tally.placed.entry(node).or_default() += 1;
        } else {
            *tally.pending.entry(message).or_default() += 1;
        }
    }
    // Tasks whose network is missing say so (once: not rewritten while the reason holds).
    for (task_id, reason) in waiting_for_network {
        let Some(i) = projected.task_index.get(&task_id).copied() else {
            continue;
        };
        let task = &projected.tasks[i];
        let message = format!("waiting for its network: {reason}");
        let status = task.status.clone().unwrap_or_default();
        if status.state() > pb::TaskState::Pending || status.message == message {
            continue;
        }
        let mut t = task.clone();
        t.status = Some(pb::TaskStatus {
            state: pb::TaskState::Pending as i32,
            timestamp_ms: now,
            message: message.clone(),
            ..Default::default()
        });
        let c = b.put_task(t, &name_of(&task.service_id));
        *b.tallies[c].pending.entry(message).or_default() += 1;
    }

    for (command, tally) in b.commands.into_iter().zip(b.tallies) {
        if command.mutations.is_empty() {
            continue;
        }
        out.writes.push(Write {
            command,
            summary: tally.render(),
        });
    }
    out.wake_at = [
        orch::next_wakeup(&actions),
        orch::next_check(&nodes, &liveness),
    ]
    .into_iter()
    .flatten()
    .min();
    out
}

fn node_state(s: pb::NodeState) -> &'static str {
    match s {
        pb::NodeState::Unknown => "unknown",
        pb::NodeState::Ready => "ready",
        pb::NodeState::Down => "down",
        pb::NodeState::Disconnected => "disconnected",
    }
}

#[cfg(test)]
mod tests;
