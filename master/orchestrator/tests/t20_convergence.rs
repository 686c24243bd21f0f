//! Property tests over the simulated cluster: whatever happens (scaling, updates to
//! good, crashing or unhealthy images, rollbacks, nodes cut off and healed, drained,
//! paused, added), the orchestrator never wants more tasks running than a service asks
//! for (plus the surge a start-first order allows), and once the operator asks for a
//! healthy spec and the nodes are back it converges: one running task per slot, exactly
//! as many containers as replicas, and a leader pass that writes nothing.

mod sim;

use proptest::prelude::*;
use skiff_proto::v1::{self as pb, update_config::FailureAction, update_config::Order};

use sim::{Sim, global, replicated, state, with_healthcheck};

#[derive(Debug, Clone)]
struct ServiceCfg {
    replicas: u64,
    global: bool,
    condition: i32,
    max_attempts: u64,
    delay_ms: u64,
    healthcheck: bool,
    start_first: bool,
    parallelism: u64,
    failure_action: i32,
}

#[derive(Debug, Clone)]
enum Event {
    Steps(u8),
    Scale(usize, u64),
    Image(usize, u8),
    Rollback(usize),
    Cut(usize),
    Heal(usize),
    Drain(usize),
    Pause(usize),
    Activate(usize),
    AddNode,
}

fn service_cfg() -> impl Strategy<Value = ServiceCfg> {
    (
        0u64..6,
        prop::bool::weighted(0.2),
        0i32..3,
        0u64..3,
        prop::sample::select(vec![0u64, 2_000]),
        any::<bool>(),
        any::<bool>(),
        0u64..3,
        0i32..3,
    )
        .prop_map(
            |(
                replicas,
                global,
                condition,
                max_attempts,
                delay_ms,
                healthcheck,
                start_first,
                parallelism,
                failure_action,
            )| ServiceCfg {
                replicas,
                global,
                condition,
                max_attempts,
                delay_ms,
                healthcheck,
                start_first,
                parallelism,
                failure_action,
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (1u8..6).prop_map(Event::Steps),
        2 => (0usize..3, 0u64..7).prop_map(|(s, n)| Event::Scale(s, n)),
        2 => (0usize..3, 0u8..4).prop_map(|(s, i)| Event::Image(s, i)),
        1 => (0usize..3).prop_map(Event::Rollback),
        1 => (0usize..4).prop_map(Event::Cut),
        1 => (0usize..4).prop_map(Event::Heal),
        1 => (0usize..4).prop_map(Event::Drain),
        1 => (0usize..4).prop_map(Event::Pause),
        1 => (0usize..4).prop_map(Event::Activate),
        1 => Just(Event::AddNode),
    ]
}

fn spec_of(i: usize, c: &ServiceCfg) -> pb::ServiceSpec {
    let name = format!("s{i}");
    let mut s = if c.global {
        global(&name)
    } else {
        replicated(&name, c.replicas)
    };
    if c.healthcheck {
        s = with_healthcheck(s);
    }
    s.restart_policy = Some(pb::RestartPolicy {
        condition: c.condition,
        delay_ms: c.delay_ms,
        max_attempts: c.max_attempts,
        window_ms: 0,
    });
    let uc = pb::UpdateConfig {
        parallelism: c.parallelism,
        delay_ms: 0,
        failure_action: c.failure_action,
        monitor_ms: 2_000,
        max_failure_ratio: 0.0,
        order: if c.start_first {
            Order::StartFirst
        } else {
            Order::StopFirst
        } as i32,
    };
    s.update_config = Some(uc);
    s.rollback_config = Some(pb::UpdateConfig {
        failure_action: FailureAction::Pause as i32,
        ..uc
    });
    s
}

fn replicas(sim: &Sim, id: &str) -> usize {
    match sim.service(id).spec.as_ref().and_then(|s| s.mode) {
        Some(pb::service_spec::Mode::Replicated(r)) => r.replicas as usize,
        _ => sim.nodes.len(),
    }
}

/// Tasks a service may want running at once: its count, plus one surge per slot being
/// replaced start-first.
fn bound(sim: &Sim, id: &str, before: usize, c: &ServiceCfg) -> usize {
    let now = replicas(sim, id);
    let base = now.max(before);
    let surge = if c.start_first {
        if c.parallelism == 0 {
            base
        } else {
            c.parallelism as usize
        }
    } else {
        0
    };
    base + surge
}

fn node_id(sim: &Sim, i: usize) -> String {
    sim.nodes[i % sim.nodes.len()].id.clone()
}

proptest! {
    // 64 cases in the normal suite; PROPTEST_CASES=5000 for a long hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn converges_and_never_exceeds_the_desired_replicas(
        nodes in 1usize..5,
        cfgs in prop::collection::vec(service_cfg(), 1..4),
        events in prop::collection::vec(event(), 0..30),
    ) {
        let mut sim = Sim::new(nodes);
        for (i, c) in cfgs.iter().enumerate() {
            sim.add_service(&format!("s{i}"), spec_of(i, c));
        }
        let ids: Vec<String> = (0..cfgs.len()).map(|i| format!("s{i}")).collect();
        let mut added = 0;
        let check = |sim: &Sim, before: &[usize]| -> Result<(), TestCaseError> {
            for (i, id) in ids.iter().enumerate() {
                let n = sim.desired_running(id);
                let b = bound(sim, id, before[i], &cfgs[i]);
                prop_assert!(n <= b, "{id}: {n} tasks wanted running, bound {b}\n{}", sim.dump());
            }
            Ok(())
        };
        for e in &events {
            let before: Vec<usize> = ids.iter().map(|id| replicas(&sim, id)).collect();
            match e {
                Event::Steps(n) => {
                    for _ in 0..*n {
                        sim.step();
                        check(&sim, &before)?;
                    }
                    continue;
                }
                Event::Scale(s, n) if *s < ids.len() && !cfgs[*s].global => sim.scale(&ids[*s], *n),
                Event::Image(s, i) if *s < ids.len() => {
                    let image = ["busybox:2", "busybox:3", "crash", "unhealthy"][*i as usize];
                    sim.update(&ids[*s], |spec| spec.container.as_mut().expect("c").image = image.into());
                }
                Event::Rollback(s) if *s < ids.len() && sim.service(&ids[*s]).previous_spec.is_some() => sim.rollback(&ids[*s]),
                Event::Cut(n) => { let id = node_id(&sim, *n); sim.set_connected(&id, false) }
                Event::Heal(n) => { let id = node_id(&sim, *n); sim.set_connected(&id, true) }
                Event::Drain(n) => { let id = node_id(&sim, *n); sim.set_availability(&id, pb::NodeAvailability::Drain) }
                Event::Pause(n) => { let id = node_id(&sim, *n); sim.set_availability(&id, pb::NodeAvailability::Pause) }
                Event::Activate(n) => { let id = node_id(&sim, *n); sim.set_availability(&id, pb::NodeAvailability::Active) }
                Event::AddNode if added < 2 => { added += 1; sim.add_node(&format!("x{added}"), &[]) }
                _ => continue,
            }
            sim.step();
            check(&sim, &before)?;
        }

        // The operator heals everything and asks for a healthy image.
        let node_ids: Vec<String> = sim.nodes.iter().map(|n| n.id.clone()).collect();
        for id in &node_ids {
            sim.set_connected(id, true);
            sim.set_availability(id, pb::NodeAvailability::Active);
        }
        for id in &ids {
            sim.update(id, |spec| spec.container.as_mut().expect("c").image = "busybox:final".into());
        }
        sim.until(200, "nodes ready", |s| s.nodes.iter().all(|n| n.state() == pb::NodeState::Ready));
        let before: Vec<usize> = ids.iter().map(|id| replicas(&sim, id)).collect();
        for _ in 0..300 {
            sim.step();
            check(&sim, &before)?;
        }
        sim.settle(300);

        for id in &ids {
            let want = replicas(&sim, id);
            let running = sim.running(id);
            prop_assert_eq!(running.len(), want, "{}: running\n{}", id, sim.dump());
            let mut keys: Vec<String> = running.iter().map(|t| if t.slot == 0 { t.node_id.clone() } else { t.slot.to_string() }).collect();
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), want, "{}: one task per slot\n{}", id, sim.dump());
            prop_assert!(running.iter().all(|t| t.spec.as_ref().and_then(|s| s.container.as_ref()).is_some_and(|c| c.image == "busybox:final")));
            prop_assert_eq!(sim.containers_of(id), want, "{}: containers\n{}", id, sim.dump());
            prop_assert!(sim.tasks.iter().filter(|t| t.service_id == *id).all(|t| state(t) != pb::TaskState::Pending));
            // Completed, or never started when no task had to be replaced.
            let st = sim.update_state(id);
            prop_assert!(
                matches!(st, pb::update_status::State::Completed | pb::update_status::State::None),
                "{}: {:?}\n{}", id, st, sim.dump()
            );
        }
        // Converged: another pass decides nothing.
        let quiet = skiff_orchestrator::reconcile_all(&skiff_orchestrator::ClusterView {
            services: &sim.services,
            tasks: &sim.tasks,
            nodes: &sim.nodes,
            now_ms: sim.now,
            history_per_slot: sim.history,
        });
        prop_assert!(quiet.is_empty(), "{quiet:?}");
    }
}
