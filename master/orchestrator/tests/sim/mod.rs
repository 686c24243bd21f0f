//! A simulated cluster around the real orchestrator and scheduler: a store with
//! compare-and-swap versions, agents that start and stop "containers" and report task
//! states the way the dispatcher accepts them (never backwards), heartbeats and
//! partitions. Each `step` is one turn of the leader's loop followed by one turn of every
//! reachable agent, then the clock moves on.
//!
//! Images choose how a task behaves: `crash` fails once started, `exit0` completes,
//! `reject` is refused by the agent, `unhealthy` runs but fails its health check, and
//! anything else runs (healthy if it has a check).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use skiff_orchestrator::{self as orch, Action, ClusterView, Liveness};
use skiff_proto::TaskStateExt;
use skiff_proto::v1::{self as pb, TaskState};

pub const MB: i64 = 1 << 20;

pub struct Sim {
    pub services: Vec<pb::Service>,
    pub tasks: Vec<pb::Task>,
    pub nodes: Vec<pb::Node>,
    pub now: i64,
    pub dt: i64,
    index: u64,
    /// Containers that really run, per node (partitioned nodes keep theirs).
    pub containers: BTreeMap<String, BTreeSet<String>>,
    /// Agents the leader can reach.
    pub connected: BTreeMap<String, bool>,
    pub history: u64,
    pub liveness: Liveness,
    /// Actions of the last step.
    pub last: Vec<Action>,
    /// Highest count, per service, of tasks wanted running and not ended, over all steps.
    pub peak_desired: BTreeMap<String, usize>,
    pub conflicts: usize,
}

pub fn replicated(name: &str, replicas: u64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        project: "app".into(),
        container: Some(pb::ContainerSpec {
            image: "busybox:1".into(),
            ..Default::default()
        }),
        mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
            replicas,
        })),
        restart_policy: Some(pb::RestartPolicy {
            condition: pb::restart_policy::Condition::Any as i32,
            delay_ms: 0,
            max_attempts: 0,
            window_ms: 0,
        }),
        ..Default::default()
    }
}

pub fn global(name: &str) -> pb::ServiceSpec {
    let mut s = replicated(name, 0);
    s.mode = Some(pb::service_spec::Mode::Global(pb::GlobalMode {}));
    s
}

pub fn with_image(mut s: pb::ServiceSpec, image: &str) -> pb::ServiceSpec {
    s.container.get_or_insert_with(Default::default).image = image.into();
    s
}

pub fn with_healthcheck(mut s: pb::ServiceSpec) -> pb::ServiceSpec {
    s.container.get_or_insert_with(Default::default).healthcheck = Some(pb::HealthCheck {
        test: vec!["CMD".into(), "true".into()],
        ..Default::default()
    });
    s
}

pub fn update_config(
    parallelism: u64,
    delay_ms: u64,
    order: pb::update_config::Order,
    action: pb::update_config::FailureAction,
) -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism,
        delay_ms,
        failure_action: action as i32,
        monitor_ms: 2_000,
        max_failure_ratio: 0.0,
        order: order as i32,
    }
}

impl Sim {
    /// Nodes `n1`..: every one ready, active, reachable, 4 CPUs and 4 GiB.
    pub fn new(nodes: usize) -> Sim {
        let mut sim = Sim {
            services: Vec::new(),
            tasks: Vec::new(),
            nodes: Vec::new(),
            now: 1_000_000,
            dt: 1_000,
            index: 0,
            containers: BTreeMap::new(),
            connected: BTreeMap::new(),
            history: 0,
            liveness: Liveness::from_settings(None, 0),
            last: Vec::new(),
            peak_desired: BTreeMap::new(),
            conflicts: 0,
        };
        for i in 1..=nodes {
            sim.add_node(&format!("n{i}"), &[]);
        }
        sim
    }

    pub fn add_node(&mut self, id: &str, labels: &[(&str, &str)]) {
        let node = pb::Node {
            id: id.into(),
            state: pb::NodeState::Ready as i32,
            spec: Some(pb::NodeSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                availability: pb::NodeAvailability::Active as i32,
                role: pb::NodeRole::Worker as i32,
            }),
            description: Some(pb::NodeDescription {
                hostname: id.into(),
                platform: Some(pb::Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: String::new(),
                }),
                resources: Some(pb::Resources {
                    nano_cpus: 4_000_000_000,
                    memory_bytes: 4096 * MB,
                    pids: 0,
                }),
                ..Default::default()
            }),
            last_heartbeat_ms: self.now,
            ..Default::default()
        };
        self.put(vec![pb::Mutation {
            op: Some(pb::mutation::Op::PutNode(node)),
            expected_version: 0,
            unconditional: false,
        }])
        .expect("new node");
        self.connected.insert(id.into(), true);
        self.containers.entry(id.into()).or_default();
    }

    pub fn add_service(&mut self, id: &str, spec: pb::ServiceSpec) {
        let svc = pb::Service {
            id: id.into(),
            spec: Some(spec),
            spec_version: 1,
            ..Default::default()
        };
        self.put(vec![pb::Mutation {
            op: Some(pb::mutation::Op::PutService(svc)),
            expected_version: 0,
            unconditional: false,
        }])
        .expect("new service");
    }

    pub fn service(&self, id: &str) -> &pb::Service {
        self.services
            .iter()
            .find(|s| s.id == id)
            .expect("service exists")
    }

    pub fn node(&self, id: &str) -> &pb::Node {
        self.nodes.iter().find(|n| n.id == id).expect("node exists")
    }

    /// An operator's spec change, through the same helper the API uses.
    pub fn update(&mut self, id: &str, change: impl FnOnce(&mut pb::ServiceSpec)) {
        let svc = self.service(id).clone();
        let mut spec = svc.spec.clone().expect("spec");
        change(&mut spec);
        let next = orch::new_spec(&svc, spec);
        self.put_service(svc.meta.as_ref().map_or(0, |m| m.version), next);
    }

    pub fn scale(&mut self, id: &str, replicas: u64) {
        self.update(id, |s| {
            s.mode = Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
                replicas,
            }))
        });
    }

    pub fn rollback(&mut self, id: &str) {
        let svc = self.service(id).clone();
        let next = orch::rollback(&svc, self.now).expect("has a previous spec");
        self.put_service(svc.meta.as_ref().map_or(0, |m| m.version), next);
    }

    fn put_service(&mut self, version: u64, svc: pb::Service) {
        self.put(vec![pb::Mutation {
            op: Some(pb::mutation::Op::PutService(svc)),
            expected_version: version,
            unconditional: false,
        }])
        .expect("service write");
    }

    pub fn set_availability(&mut self, id: &str, a: pb::NodeAvailability) {
        let mut n = self.node(id).clone();
        n.spec.get_or_insert_with(Default::default).availability = a as i32;
        self.put_node(n);
    }

    fn put_node(&mut self, n: pb::Node) {
        let v = n.meta.as_ref().map_or(0, |m| m.version);
        self.put(vec![pb::Mutation {
            op: Some(pb::mutation::Op::PutNode(n)),
            expected_version: v,
            unconditional: false,
        }])
        .expect("node write");
    }

    /// Cuts the agent off (or reconnects it): no heartbeats, no reports, no new
    /// assignments; its containers keep running.
    pub fn set_connected(&mut self, id: &str, up: bool) {
        self.connected.insert(id.into(), up);
    }

    /// Applies a command the way the store does: every mutation compare-and-swap
    /// against the state before the command; all or nothing.
    pub fn put(&mut self, mutations: Vec<pb::Mutation>) -> Result<(), String> {
        for m in &mutations {
            let (found, what) = match m.op.as_ref().expect("op") {
                pb::mutation::Op::PutNode(n) => (
                    self.nodes
                        .iter()
                        .find(|x| x.id == n.id)
                        .map(|x| ver(&x.meta)),
                    n.id.clone(),
                ),
                pb::mutation::Op::PutService(s) => (
                    self.services
                        .iter()
                        .find(|x| x.id == s.id)
                        .map(|x| ver(&x.meta)),
                    s.id.clone(),
                ),
                pb::mutation::Op::PutTask(t) => (
                    self.tasks
                        .iter()
                        .find(|x| x.id == t.id)
                        .map(|x| ver(&x.meta)),
                    t.id.clone(),
                ),
                pb::mutation::Op::DeleteTask(id) => (
                    self.tasks
                        .iter()
                        .find(|x| x.id == *id)
                        .map(|x| ver(&x.meta)),
                    id.clone(),
                ),
                other => panic!("the orchestrator does not write {other:?}"),
            };
            if !m.unconditional && m.expected_version != found.unwrap_or(0) {
                self.conflicts += 1;
                return Err(format!(
                    "conflict on {what}: expected {} found {found:?}",
                    m.expected_version
                ));
            }
        }
        self.index += 1;
        let index = self.index;
        let now = self.now;
        let meta = |old: Option<&pb::Meta>| {
            Some(pb::Meta {
                version: index,
                created_at_ms: old.map_or(now, |m| m.created_at_ms),
                updated_at_ms: now,
            })
        };
        for m in mutations {
            match m.op.expect("op") {
                pb::mutation::Op::PutNode(mut n) => {
                    let pos = self.nodes.iter().position(|x| x.id == n.id);
                    n.meta = meta(pos.and_then(|p| self.nodes[p].meta.as_ref()));
                    match pos {
                        Some(p) => self.nodes[p] = n,
                        None => self.nodes.push(n),
                    }
                }
                pb::mutation::Op::PutService(mut s) => {
                    let pos = self.services.iter().position(|x| x.id == s.id);
                    s.meta = meta(pos.and_then(|p| self.services[p].meta.as_ref()));
                    match pos {
                        Some(p) => self.services[p] = s,
                        None => self.services.push(s),
                    }
                }
                pb::mutation::Op::PutTask(mut t) => {
                    let pos = self.tasks.iter().position(|x| x.id == t.id);
                    t.meta = meta(pos.and_then(|p| self.tasks[p].meta.as_ref()));
                    match pos {
                        Some(p) => self.tasks[p] = t,
                        None => self.tasks.push(t),
                    }
                }
                pb::mutation::Op::DeleteTask(id) => self.tasks.retain(|t| t.id != id),
                _ => unreachable!("checked above"),
            }
        }
        Ok(())
    }

    /// One turn of the leader's loop, then of every reachable agent; then time passes.
    pub fn step(&mut self) -> Vec<Action> {
        self.leader();
        self.agents();
        self.record();
        self.now += self.dt;
        self.last.clone()
    }

    pub fn leader(&mut self) {
        for (id, up) in self.connected.clone() {
            if up && let Some(p) = self.nodes.iter().position(|n| n.id == id) {
                self.nodes[p].last_heartbeat_ms = self.now;
            }
        }
        for c in orch::node_health(&self.nodes, self.now, &self.liveness) {
            let n = self.node(&c.node_id).clone();
            self.put_node(c.apply(&n));
        }
        let actions = orch::reconcile_all(&ClusterView {
            services: &self.services,
            tasks: &self.tasks,
            nodes: &self.nodes,
            now_ms: self.now,
            history_per_slot: self.history,
        });
        let commands = orch::commands(&actions, &self.services, &self.tasks, self.now)
            .expect("actions name what was read");
        for c in commands {
            // A conflict is fine: the next turn re-reads and decides again.
            let _ = self.put(c.mutations);
        }
        for t in skiff_scheduler::schedule(&self.nodes, &self.tasks, self.now) {
            let v = self
                .tasks
                .iter()
                .find(|x| x.id == t.id)
                .map_or(0, |x| ver(&x.meta));
            let _ = self.put(vec![pb::Mutation {
                op: Some(pb::mutation::Op::PutTask(t)),
                expected_version: v,
                unconditional: false,
            }]);
        }
        self.last = actions;
    }

    fn agents(&mut self) {
        let nodes: Vec<String> = self
            .connected
            .iter()
            .filter(|(_, up)| **up)
            .map(|(id, _)| id.clone())
            .collect();
        for node in nodes {
            self.agent(&node);
        }
    }

    /// What a reachable agent does with its assignment (the dispatcher's rule: a task
    /// stays assigned until it has ended and is not wanted running).
    fn agent(&mut self, node: &str) {
        let assigned: Vec<pb::Task> = self
            .tasks
            .iter()
            .filter(|t| t.node_id == node)
            .filter(|t| {
                let ended = state(t).is_terminal();
                !(ended && t.desired_state() >= TaskState::Shutdown)
            })
            .cloned()
            .collect();
        let ids: BTreeSet<String> = assigned.iter().map(|t| t.id.clone()).collect();
        let running = self.containers.entry(node.into()).or_default();
        running.retain(|id| ids.contains(id));
        let mut reports = Vec::new();
        for t in &assigned {
            let st = state(t);
            let is_running = self.containers.get(node).is_some_and(|c| c.contains(&t.id));
            if t.desired_state() <= TaskState::Running {
                if st >= TaskState::Assigned && st < TaskState::Starting {
                    reports.push((
                        t.id.clone(),
                        status(TaskState::Starting, pb::HealthState::None, 0),
                    ));
                } else if st == TaskState::Starting && !is_running {
                    let image = t
                        .spec
                        .as_ref()
                        .and_then(|s| s.container.as_ref())
                        .map_or("", |c| c.image.as_str());
                    let hc = orch::has_healthcheck(t.spec.as_ref());
                    let healthy = if hc {
                        pb::HealthState::Healthy
                    } else {
                        pb::HealthState::None
                    };
                    let st = match image {
                        "crash" => status(TaskState::Failed, pb::HealthState::None, 1),
                        "exit0" => status(TaskState::Complete, pb::HealthState::None, 0),
                        "reject" => status(TaskState::Rejected, pb::HealthState::None, 0),
                        "unhealthy" => {
                            self.containers
                                .entry(node.into())
                                .or_default()
                                .insert(t.id.clone());
                            status(
                                TaskState::Running,
                                if hc {
                                    pb::HealthState::Unhealthy
                                } else {
                                    pb::HealthState::None
                                },
                                0,
                            )
                        }
                        _ => {
                            self.containers
                                .entry(node.into())
                                .or_default()
                                .insert(t.id.clone());
                            status(TaskState::Running, healthy, 0)
                        }
                    };
                    reports.push((t.id.clone(), st));
                }
            } else if is_running {
                self.containers
                    .entry(node.into())
                    .or_default()
                    .remove(&t.id);
                reports.push((
                    t.id.clone(),
                    status(TaskState::Shutdown, pb::HealthState::None, 0),
                ));
            } else if st < TaskState::Complete && st >= TaskState::Assigned {
                reports.push((
                    t.id.clone(),
                    status(TaskState::Shutdown, pb::HealthState::None, 0),
                ));
            }
        }
        for (id, mut st) in reports {
            st.timestamp_ms = self.now;
            self.report(&id, st);
        }
    }

    /// The dispatcher's status write: never backwards, nothing if unchanged.
    fn report(&mut self, id: &str, new: pb::TaskStatus) {
        let Some(t) = self.tasks.iter().find(|t| t.id == id).cloned() else {
            return;
        };
        let old = t.status.clone().unwrap_or_default();
        if new.state() < old.state() || (new.state == old.state && new.health == old.health) {
            return;
        }
        let mut t = t;
        let v = ver(&t.meta);
        t.status = Some(new);
        let _ = self.put(vec![pb::Mutation {
            op: Some(pb::mutation::Op::PutTask(t)),
            expected_version: v,
            unconditional: false,
        }]);
    }

    fn record(&mut self) {
        for svc in &self.services {
            let n = self.desired_running(&svc.id);
            let e = self.peak_desired.entry(svc.id.clone()).or_insert(0);
            *e = (*e).max(n);
        }
    }

    /// Tasks of the service wanted running and not ended.
    pub fn desired_running(&self, service: &str) -> usize {
        self.tasks
            .iter()
            .filter(|t| {
                t.service_id == service
                    && t.desired_state() <= TaskState::Running
                    && !state(t).is_terminal()
            })
            .count()
    }

    /// Tasks of the service running now, according to the store.
    pub fn running(&self, service: &str) -> Vec<&pb::Task> {
        self.tasks
            .iter()
            .filter(|t| {
                t.service_id == service
                    && state(t) == TaskState::Running
                    && t.desired_state() <= TaskState::Running
            })
            .collect()
    }

    /// Containers of the service that really run, reachable or not.
    pub fn containers_of(&self, service: &str) -> usize {
        self.containers
            .values()
            .flatten()
            .filter(|id| id.starts_with(&format!("{service}.")))
            .count()
    }

    /// Running tasks of the service per node.
    pub fn spread(&self, service: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.running(service) {
            *m.entry(t.node_id.clone()).or_insert(0) += 1;
        }
        m
    }

    pub fn update_state(&self, service: &str) -> pb::update_status::State {
        self.service(service)
            .update_status
            .as_ref()
            .map_or(pb::update_status::State::None, |s| s.state())
    }

    /// Steps until `cond` holds, or panics after `max` steps with the state.
    pub fn until(&mut self, max: usize, what: &str, mut cond: impl FnMut(&Sim) -> bool) {
        for _ in 0..max {
            if cond(self) {
                return;
            }
            self.step();
        }
        assert!(
            cond(self),
            "{what}: not reached after {max} steps\n{}",
            self.dump()
        );
    }

    /// Steps until a leader turn writes nothing and asks for no wake-up.
    pub fn settle(&mut self, max: usize) -> usize {
        for i in 0..max {
            let before = self.index;
            self.step();
            if self.index == before && !self.last.iter().any(|a| matches!(a, Action::RequeueAt(_)))
            {
                return i;
            }
        }
        panic!("did not settle after {max} steps\n{}", self.dump());
    }

    pub fn dump(&self) -> String {
        let mut s = format!("now {}\n", self.now);
        for n in &self.nodes {
            s += &format!(
                "node {} {:?} {:?}\n",
                n.id,
                n.state(),
                n.spec.as_ref().map(|s| s.availability())
            );
        }
        for svc in &self.services {
            s += &format!(
                "service {} v{} {:?}\n",
                svc.id, svc.spec_version, svc.update_status
            );
        }
        for t in &self.tasks {
            let st = t.status.clone().unwrap_or_default();
            s += &format!(
                "  {} slot {} node {} desired {:?} state {:?} health {:?} attempt {} image {} msg {:?}\n",
                t.id,
                t.slot,
                t.node_id,
                t.desired_state(),
                st.state(),
                st.health(),
                t.attempt,
                t.spec
                    .as_ref()
                    .and_then(|s| s.container.as_ref())
                    .map_or("", |c| c.image.as_str()),
                st.message
            );
        }
        s += &format!("last actions: {:#?}\n", self.last);
        s
    }
}

pub fn ver(meta: &Option<pb::Meta>) -> u64 {
    meta.as_ref().map_or(0, |m| m.version)
}

pub fn state(t: &pb::Task) -> TaskState {
    t.status.as_ref().map_or(TaskState::New, |s| s.state())
}

fn status(state: TaskState, health: pb::HealthState, exit: i32) -> pb::TaskStatus {
    pb::TaskStatus {
        state: state as i32,
        health: health as i32,
        exit_code: exit,
        err: if exit != 0 {
            format!("exit status {exit}")
        } else {
            String::new()
        },
        ..Default::default()
    }
}
