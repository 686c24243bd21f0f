//! One controller pass over a real store state (`store::apply::execute`): what it writes,
//! that its writes apply, and that a pass over its own result writes nothing.

use std::collections::{BTreeMap, HashMap};

use skiff_proto::v1 as pb;

use super::{Input, Pass, pass};
use crate::dispatcher::service::Snapshot;
use crate::store::StoreState;
use crate::store::apply::execute;

const GIB: i64 = 1 << 30;
const T0: i64 = 1_700_000_000_000;

struct World {
    state: StoreState,
    index: u64,
    now: i64,
    since: i64,
    heartbeats: HashMap<String, i64>,
}

impl World {
    fn new() -> World {
        let mut w = World {
            state: StoreState::default(),
            index: 0,
            now: T0,
            since: T0,
            heartbeats: HashMap::new(),
        };
        w.put(pb::mutation::Op::PutCluster(pb::Cluster {
            id: "c1".into(),
            settings: Some(crate::server::default_settings()),
            ..Default::default()
        }));
        w
    }

    fn apply(&mut self, command: &pb::Command) -> Result<(), crate::store::ApplyError> {
        self.index += 1;
        execute(&mut self.state, command, self.index, self.now)
            .answer
            .result
    }

    fn put(&mut self, op: pb::mutation::Op) {
        let cmd = pb::Command {
            mutations: vec![pb::Mutation {
                op: Some(op),
                expected_version: 0,
                unconditional: true,
            }],
            request_id: String::new(),
        };
        self.apply(&cmd).expect("seed write applies");
    }

    fn node(&mut self, id: &str, memory: i64) {
        self.put(pb::mutation::Op::PutNode(pb::Node {
            id: id.into(),
            spec: Some(pb::NodeSpec::default()),
            description: Some(pb::NodeDescription {
                hostname: id.into(),
                addr: format!("127.0.0.{}", self.index + 10),
                resources: Some(pb::Resources {
                    nano_cpus: 2_000_000_000,
                    memory_bytes: memory,
                    pids: 0,
                }),
                ..Default::default()
            }),
            state: pb::NodeState::Ready as i32,
            last_heartbeat_ms: self.now,
            ..Default::default()
        }));
        self.heartbeats.insert(id.into(), self.now);
    }

    fn service(&mut self, id: &str, spec: pb::ServiceSpec) {
        self.put(pb::mutation::Op::PutService(pb::Service {
            id: id.into(),
            spec: Some(spec),
            spec_version: 1,
            ..Default::default()
        }));
    }

    fn snapshot(&self) -> Snapshot {
        let s = &self.state;
        Snapshot {
            revision: s.revision(),
            nodes: s.nodes().cloned().collect(),
            services: s.services().cloned().collect(),
            tasks: s.tasks().cloned().collect(),
            networks: s.networks().cloned().collect(),
            cluster: s.cluster().cloned(),
        }
    }

    fn pass(&self) -> Pass {
        let snap = self.snapshot();
        pass(&Input {
            snapshot: &snap,
            heartbeats: &self.heartbeats,
            leader_since_ms: self.since,
            now_ms: self.now,
        })
    }

    /// A pass whose writes all apply.
    fn step(&mut self) -> Pass {
        let p = self.pass();
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        for w in &p.writes {
            self.apply(&w.command)
                .unwrap_or_else(|e| panic!("{} did not apply: {e}", w.summary));
        }
        p
    }

    fn tasks(&self) -> Vec<pb::Task> {
        self.state.tasks().cloned().collect()
    }

    /// Live tasks per node (desired running, not ended).
    fn spread(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in self.state.tasks() {
            if t.desired_state() == pb::TaskState::Running && state(t) <= pb::TaskState::Running {
                *out.entry(t.node_id.clone()).or_default() += 1;
            }
        }
        out
    }

    /// What an agent does: every task assigned to `node` and wanted running now runs;
    /// every task asked to stop has stopped.
    fn agent_runs(&mut self, node: &str) {
        let mut mutations = Vec::new();
        for t in self.state.tasks().filter(|t| t.node_id == node) {
            let want = if t.desired_state() <= pb::TaskState::Running {
                pb::TaskState::Running
            } else {
                pb::TaskState::Shutdown
            };
            if state(t) >= want || state(t) < pb::TaskState::Assigned {
                continue;
            }
            let mut t = t.clone();
            t.status = Some(pb::TaskStatus {
                state: want as i32,
                timestamp_ms: self.now,
                ..Default::default()
            });
            mutations.push(pb::Mutation {
                expected_version: t.meta.as_ref().map_or(0, |m| m.version),
                op: Some(pb::mutation::Op::PutTask(t)),
                unconditional: false,
            });
        }
        if !mutations.is_empty() {
            self.apply(&pb::Command {
                mutations,
                request_id: String::new(),
            })
            .expect("agent statuses apply");
        }
    }
}

fn state(t: &pb::Task) -> pb::TaskState {
    t.status.as_ref().map_or(pb::TaskState::New, |s| s.state())
}

fn replicated(name: &str, replicas: u64) -> pb::ServiceSpec {
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
        ..Default::default()
    }
}

fn put_tasks(w: &super::Write) -> Vec<&pb::Task> {
    w.command
        .mutations
        .iter()
        .filter_map(|m| match &m.op {
            Some(pb::mutation::Op::PutTask(t)) => Some(t),
            _ => None,
        })
        .collect()
}

#[test]
fn new_tasks_are_created_and_placed_in_one_write_spread_over_the_nodes() {
    let mut w = World::new();
    w.node("n1", 4 * GIB);
    w.node("n2", 4 * GIB);
    w.service("s1", replicated("web", 3));
    let p = w.step();
    assert_eq!(p.writes.len(), 1, "one transaction for the service: {p:?}");
    let tasks = put_tasks(&p.writes[0]);
    assert_eq!(tasks.len(), 3);
    for (m, t) in p.writes[0].command.mutations.iter().zip(&tasks) {
        assert_eq!(m.expected_version, 0, "a creation");
        assert_eq!(state(t), pb::TaskState::Assigned);
    }
    assert!(
        p.writes[0].summary.contains("created 3 task(s)"),
        "{}",
        p.writes[0].summary
    );
    let counts: Vec<usize> = w.spread().into_values().collect();
    assert_eq!(counts, vec![2, 1], "{:?}", w.spread());
}

#[test]
fn a_pass_over_its_own_result_writes_nothing() {
    let mut w = World::new();
    w.node("n1", 4 * GIB);
    w.node("n2", 4 * GIB);
    w.service("s1", replicated("web", 3));
    w.step();
    w.agent_runs("n1");
    w.agent_runs("n2");
    let p = w.step();
    assert!(p.writes.is_empty(), "{:?}", p.writes);
    // Nothing to do until a node could pass its heartbeat limit.
    assert_eq!(p.wake_at, Some(T0 + 17_501));
}

#[test]
fn a_silent_node_goes_down_and_its_tasks_are_replaced_in_the_same_pass() {
    let mut w = World::new();
    w.node("n1", 4 * GIB);
    w.node("n2", 4 * GIB);
    w.service("s1", replicated("web", 3));
    w.step();
    w.agent_runs("n1");
    w.agent_runs("n2");
    let on_n2 = w.spread().get("n2").copied().unwrap_or(0);
    assert!(on_n2 > 0);
    // n1 keeps beating, n2 falls silent.
    w.now = T0 + 17_000;
    w.heartbeats.insert("n1".into(), w.now);
    assert!(w.step().writes.is_empty(), "17 s of silence is tolerated");
    w.now = T0 + 17_501;
    w.heartbeats.insert("n1".into(), w.now);
    let p = w.step();
    assert!(
        p.writes[0].summary.starts_with("node n2 ready -> down"),
        "{}",
        p.writes[0].summary
    );
    let service = &p.writes[1];
    assert!(
        service
            .summary
            .contains(&format!("orphaned {on_n2} task(s)")),
        "{}",
        service.summary
    );
    assert_eq!(w.spread(), BTreeMap::from([("n1".to_owned(), 3)]));
    let orphaned = w
        .tasks()
        .iter()
        .filter(|t| state(t) == pb::TaskState::Orphaned)
        .count();
    assert_eq!(orphaned, on_n2);
}

#[test]
fn a_new_leader_gives_nodes_it_never_heard_a_full_timeout() {
    let mut w = World::new();
    w.node("n1", 4 * GIB);
    w.service("s1", replicated("web", 1));
    w.step();
    w.agent_runs("n1");
    // A minute later a new leader takes over; it has no heartbeats in memory.
    w.now = T0 + 60_000;
    w.since = w.now;
    w.heartbeats.clear();
    let p = w.step();
    assert!(p.writes.is_empty(), "{:?}", p.writes);
    assert_eq!(p.wake_at, Some(w.since + 17_501));
    // The agent reconnects and beats: still nothing to do at the old deadline.
    w.now = w.since + 17_501;
    w.heartbeats.insert("n1".into(), w.since + 3_000);
    assert!(w.step().writes.is_empty());
}

#[test]
fn an_unplaceable_task_stays_pending_with_its_reason_and_costs_no_further_writes() {
    let mut w = World::new();
    w.node("n1", GIB);
    w.node("n2", GIB);
    let mut spec = replicated("big", 1);
    spec.resources = Some(pb::ResourceRequirements {
        reservations: Some(pb::Resources {
            memory_bytes: 64 * GIB,
            ..Default::default()
        }),
        limits: None,
    });
    w.service("s1", spec);
    let p = w.step();
    assert_eq!(p.writes.len(), 1);
    let t = &w.tasks()[0];
    assert_eq!(state(t), pb::TaskState::Pending);
    let message = &t.status.as_ref().expect("status").message;
    assert!(
        message.starts_with("no suitable node")
            && message.contains("insufficient memory on 2 nodes"),
        "{message}"
    );
    assert!(p.writes[0].summary.contains("1 pending: no suitable node"));
    assert!(w.step().writes.is_empty(), "same reason: no write");
    // A node that fits joins: the task is placed.
    w.node("n3", 128 * GIB);
    w.step();
    assert_eq!(w.tasks()[0].node_id, "n3");
}

fn on_network(mut spec: pb::ServiceSpec, net: &str) -> pb::ServiceSpec {
    spec.networks = vec![pb::NetworkAttachmentConfig {
        network: net.into(),
        aliases: vec![],
    }];
    spec
}

#[test]
fn a_new_network_gets_its_subnet_then_its_tasks_come_in_one_write() {
    let mut w = World::new();
    w.node("n1", 4 * GIB);
    w.put(pb::mutation::Op::PutNetwork(pb::Network {
        id: "net1".into(),
        spec: Some(pb::NetworkSpec {
            name: "front".into(),
            project: "app".into(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    w.service("s1", on_network(replicated("web", 2), "front"));
    let first = w.step();
    assert_eq!(first.writes.len(), 1, "{:?}", first.writes);
    assert!(
        first.writes[0]
            .summary
            .starts_with("network app_front: subnet 10.213."),
        "{:?}",
        first.writes
    );
    assert!(
        first.run_again_now,
        "the held-back service waits for no pause"
    );
    assert!(
        w.tasks().is_empty(),
        "no task is written before its network's subnet"
    );
    let second = w.step();
    assert!(!second.run_again_now);
    assert_eq!(second.writes.len(), 1, "{:?}", second.writes);
    assert!(
        second.writes[0].summary.contains("created 2 task(s)")
            && second.writes[0].summary.contains("1 virtual IP(s)")
            && second.writes[0].summary.contains("addresses for 2 task(s)")
            && second.writes[0].summary.contains("placed 2 on n1"),
        "{}",
        second.writes[0].summary
    );
    for t in w.tasks() {
        assert_eq!(t.networks.len(), 1);
        assert!(t.networks[0].addresses[0].starts_with("10.213."));
        assert_eq!(state(&t), pb::TaskState::Assigned);
    }
    assert!(w.step().writes.is_empty());
}

#[test]
fn a_task_on_a_missing_network_waits_and_says_why() {
    let mut w = World::new();
    w.node("n1", 4 * GIB);
    w.service("s1", on_network(replicated("web", 1), "nowhere"));
    w.step();
    let t = &w.tasks()[0];
    assert_eq!(state(t), pb::TaskState::Pending);
    assert!(t.node_id.is_empty());
    let message = &t.status.as_ref().expect("status").message;
    assert!(
        message.contains("waiting for its network") && message.contains("\"nowhere\""),
        "{message}"
    );
    assert!(w.step().writes.is_empty());
}

#[test]
fn a_pass_from_a_stale_snapshot_fails_its_compare_and_swap() {
    let mut w = World::new();
    w.node("n1", 4 * GIB);
    w.service("s1", replicated("web", 1));
    w.step();
    w.agent_runs("n1");
    // Scale to 0 computed on a snapshot, while the agent reports the task failed.
    let mut svc = w.state.service("s1").cloned().expect("service");
    if let Some(pb::service_spec::Mode::Replicated(r)) =
        svc.spec.as_mut().and_then(|s| s.mode.as_mut())
    {
        r.replicas = 0;
    }
    svc.spec_version += 1;
    w.put(pb::mutation::Op::PutService(svc));
    let stale = w.pass();
    let mut task = w.tasks()[0].clone();
    let version = task.meta.as_ref().map_or(0, |m| m.version);
    task.status = Some(pb::TaskStatus {
        state: pb::TaskState::Failed as i32,
        ..Default::default()
    });
    w.apply(&pb::Command {
        mutations: vec![pb::Mutation {
            expected_version: version,
            op: Some(pb::mutation::Op::PutTask(task)),
            unconditional: false,
        }],
        request_id: String::new(),
    })
    .expect("agent status");
    let err = w
        .apply(&stale.writes[0].command)
        .expect_err("the task changed since the pass read it");
    assert!(
        matches!(err, crate::store::ApplyError::Conflict { .. }),
        "{err}"
    );
}
