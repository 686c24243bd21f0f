//! `cargo bench --bench orchestrator`: the cost of one leader pass over a large steady
//! cluster (5,000 nodes, 200 replicated services × 500 replicas, all running, plus 20
//! global services), and of the pass right after every service's image changed (the
//! first step of 200 rolling updates). No peer runs in process.

use std::time::{Duration, Instant};

use skiff_orchestrator::{self as orch, ClusterView};
use skiff_proto::v1 as pb;

const NODES: usize = 5_000;
const SERVICES: usize = 200;
const REPLICAS: u64 = 500;
const GLOBALS: usize = 20;
const ROUNDS: usize = 5;

fn spec(i: usize, global: bool) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: format!("s{i}"),
        project: "bench".into(),
        container: Some(pb::ContainerSpec {
            image: "busybox:1".into(),
            ..Default::default()
        }),
        mode: Some(if global {
            pb::service_spec::Mode::Global(pb::GlobalMode {})
        } else {
            pb::service_spec::Mode::Replicated(pb::ReplicatedMode { replicas: REPLICAS })
        }),
        ..Default::default()
    }
}

fn running(service: &pb::Service, key: &orch::SlotKey, slot: u64, node: &str) -> pb::Task {
    pb::Task {
        id: orch::task_id(&service.id, key, 1).as_str().to_owned(),
        meta: Some(pb::Meta {
            version: 1,
            created_at_ms: 1,
            updated_at_ms: 1,
        }),
        service_id: service.id.clone(),
        slot,
        node_id: node.into(),
        spec: service.spec.clone(),
        spec_version: 1,
        desired_state: pb::TaskState::Running as i32,
        status: Some(pb::TaskStatus {
            state: pb::TaskState::Running as i32,
            timestamp_ms: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

fn main() {
    let nodes: Vec<pb::Node> = (0..NODES)
        .map(|i| pb::Node {
            id: format!("node-{i:05}"),
            state: pb::NodeState::Ready as i32,
            spec: Some(pb::NodeSpec::default()),
            last_heartbeat_ms: 2_000_000,
            ..Default::default()
        })
        .collect();
    let mut services: Vec<pb::Service> = Vec::new();
    let mut tasks: Vec<pb::Task> = Vec::new();
    for i in 0..SERVICES + GLOBALS {
        let global = i >= SERVICES;
        let svc = pb::Service {
            id: format!("svc{i:03}"),
            meta: Some(pb::Meta {
                version: 1,
                ..Default::default()
            }),
            spec: Some(spec(i, global)),
            spec_version: 1,
            ..Default::default()
        };
        if global {
            for n in &nodes {
                tasks.push(running(&svc, &orch::SlotKey::Node(n.id.clone()), 0, &n.id));
            }
        } else {
            for slot in 1..=REPLICAS {
                let node = &nodes[(i * 7919 + slot as usize * 31) % NODES].id;
                tasks.push(running(&svc, &orch::SlotKey::Slot(slot), slot, node));
            }
        }
        services.push(svc);
    }
    let now = 2_000_000;
    let pass = |services: &[pb::Service]| {
        let t = Instant::now();
        let actions = orch::reconcile_all(&ClusterView {
            services,
            tasks: &tasks,
            nodes: &nodes,
            now_ms: now,
            history_per_slot: 5,
        });
        (t.elapsed(), actions)
    };
    let (_, steady_actions) = pass(&services);
    let steady = median((0..ROUNDS).map(|_| pass(&services).0).collect());
    let updated: Vec<pb::Service> = services
        .iter()
        .map(|s| {
            let mut spec = s.spec.clone().expect("spec");
            spec.container.as_mut().expect("container").image = "busybox:2".into();
            orch::new_spec(s, spec)
        })
        .collect();
    let (_, update_actions) = pass(&updated);
    let update = median((0..ROUNDS).map(|_| pass(&updated).0).collect());
    let health = {
        let l = orch::Liveness::from_settings(None, 0);
        let t = Instant::now();
        for _ in 0..200 {
            std::hint::black_box(orch::node_health(std::hint::black_box(&nodes), now, &l));
        }
        t.elapsed() / 200
    };

    println!(
        "orchestrator: one leader pass over {NODES} nodes, {} tasks ({SERVICES} services x {REPLICAS} + {GLOBALS} global), median of {ROUNDS}",
        tasks.len()
    );
    println!();
    println!("| pass                                   | time (ms) | actions |");
    println!("|----------------------------------------|-----------|---------|");
    println!(
        "| steady (nothing to do)                 | {:>9.1} | {:>7} |",
        steady.as_secs_f64() * 1e3,
        steady_actions.len()
    );
    println!(
        "| every image changed (updates start)    | {:>9.1} | {:>7} |",
        update.as_secs_f64() * 1e3,
        update_actions.len()
    );
    println!(
        "| node_health over all nodes             | {:>9.2} |         |",
        health.as_secs_f64() * 1e3
    );
    println!();
    println!(
        "No peer in process: Swarm's orchestrators are event-driven goroutines inside dockerd."
    );
    println!(
        "RESULT orchestrator ours={:.1}ms/pass peer=none",
        steady.as_secs_f64() * 1e3
    );
}
