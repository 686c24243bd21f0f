//! Placement behaviour: filters, scores, reasons, batch accounting.

use std::collections::BTreeMap;

use proptest::prelude::*;
use skiff_proto::v1 as pb;

use super::*;
use crate::{schedule, validate};

const MB: i64 = 1 << 20;
const CPU: i64 = 1_000_000_000;

fn node(id: &str, cpus: i64, mem_mb: i64, labels: &[(&str, &str)]) -> pb::Node {
    pb::Node {
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
            hostname: format!("host-{id}"),
            platform: Some(pb::Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: String::new(),
            }),
            resources: Some(pb::Resources {
                nano_cpus: cpus * CPU,
                memory_bytes: mem_mb * MB,
                pids: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn spec() -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: "web".into(),
        ..Default::default()
    }
}

fn with_reservation(mut s: pb::ServiceSpec, cpus_milli: i64, mem_mb: i64) -> pb::ServiceSpec {
    s.resources = Some(pb::ResourceRequirements {
        limits: None,
        reservations: Some(pb::Resources {
            nano_cpus: cpus_milli * 1_000_000,
            memory_bytes: mem_mb * MB,
            pids: 0,
        }),
    });
    s
}

fn with_placement(mut s: pb::ServiceSpec, p: pb::Placement) -> pb::ServiceSpec {
    s.placement = Some(p);
    s
}

fn task(service: &str, id: &str, spec: &pb::ServiceSpec) -> pb::Task {
    pb::Task {
        id: id.into(),
        service_id: service.into(),
        spec: Some(spec.clone()),
        desired_state: pb::TaskState::Running as i32,
        status: Some(pb::TaskStatus {
            state: pb::TaskState::New as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn running_on(mut t: pb::Task, node: &str, state: pb::TaskState) -> pb::Task {
    t.node_id = node.into();
    t.status = Some(pb::TaskStatus {
        state: state as i32,
        ..Default::default()
    });
    t
}

fn place_n(s: &mut Scheduler<'_>, service: &str, spec: &pb::ServiceSpec, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            s.place(&task(service, &format!("{service}-{i}"), spec))
                .expect("placed")
                .into_string()
        })
        .collect()
}

fn counts(placed: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in placed {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn spreads_a_service_evenly_then_by_total_load() {
    let nodes = vec![
        node("a", 4, 1024, &[]),
        node("b", 4, 1024, &[]),
        node("c", 4, 1024, &[]),
    ];
    // c already runs two tasks of another service: on ties, it comes last.
    let other = spec();
    let existing = vec![
        running_on(task("other", "o1", &other), "c", pb::TaskState::Running),
        running_on(task("other", "o2", &other), "c", pb::TaskState::Starting),
    ];
    let mut s = Scheduler::new(&nodes, &existing);
    let placed = place_n(&mut s, "web", &spec(), 7);
    assert_eq!(&placed[..3], &["a", "b", "c"]);
    let c = counts(&placed);
    assert_eq!(c["a"], 3);
    assert_eq!(c["b"], 2);
    assert_eq!(c["c"], 2);
}

#[test]
fn ended_tasks_free_their_resources_and_live_ones_hold_them() {
    let nodes = vec![node("a", 1, 1000, &[])];
    let big = with_reservation(spec(), 0, 600);
    let ended = running_on(task("web", "old", &big), "a", pb::TaskState::Failed);
    let mut s = Scheduler::new(&nodes, std::slice::from_ref(&ended));
    assert!(s.place(&task("web", "t1", &big)).is_ok());

    // A task asked to shut down still holds its memory until it has stopped.
    let mut stopping = running_on(task("web", "old", &big), "a", pb::TaskState::Running);
    stopping.desired_state = pb::TaskState::Shutdown as i32;
    let mut s = Scheduler::new(&nodes, std::slice::from_ref(&stopping));
    let err = s.place(&task("web", "t1", &big)).expect_err("no room");
    assert_eq!(
        err.to_string(),
        "no suitable node: insufficient memory on 1 node"
    );
}

#[test]
fn a_batch_never_overcommits_memory_or_cpu() {
    let nodes = vec![node("a", 2, 1000, &[]), node("b", 1, 1000, &[])];
    let sp = with_reservation(spec(), 500, 300);
    let mut s = Scheduler::new(&nodes, &[]);
    let mut placed = Vec::new();
    let mut failures = Vec::new();
    for i in 0..10 {
        match s.place(&task("web", &format!("t{i}"), &sp)) {
            Ok(n) => placed.push(n.into_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let c = counts(&placed);
    // a: 1000 MB / 300 → 3 (cpu 2/0.5 = 4); b: cpu 1/0.5 = 2 (memory would allow 3).
    assert_eq!(c["a"], 3);
    assert_eq!(c["b"], 2);
    assert_eq!(failures.len(), 5);
    assert_eq!(
        failures[0],
        "no suitable node: insufficient memory on 1 node, insufficient cpu on 1 node"
    );
}

#[test]
fn reason_aggregates_over_nodes_and_names_the_constraint() {
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(node(&format!("a{i}"), 4, 4096, &[("zone", "a")]));
    }
    for i in 0..3 {
        nodes.push(node(&format!("b{i}"), 4, 128, &[("zone", "b")]));
    }
    let mut down = node("c0", 4, 4096, &[("zone", "b")]);
    down.state = pb::NodeState::Down as i32;
    nodes.push(down);
    let sp = with_placement(
        with_reservation(spec(), 0, 512),
        pb::Placement {
            constraints: vec!["node.labels.zone==b".into()],
            ..Default::default()
        },
    );
    let mut s = Scheduler::new(&nodes, &[]);
    let err = s.place(&task("web", "t", &sp)).expect_err("unplaceable");
    assert_eq!(
        err.to_string(),
        "no suitable node: 1 node not ready, constraint node.labels.zone==b not satisfied on 5 nodes, insufficient memory on 3 nodes"
    );

    let sp = with_placement(
        spec(),
        pb::Placement {
            constraints: vec!["node.role==worker".into(), "node.labels.zone==c".into()],
            ..Default::default()
        },
    );
    let err = s.place(&task("api", "t", &sp)).expect_err("unplaceable");
    assert_eq!(
        err.to_string(),
        "no suitable node: 1 node not ready, constraint node.labels.zone==c matched none (8 nodes)"
    );
}

#[test]
fn paused_drained_and_down_nodes_get_nothing_new() {
    let mut paused = node("a", 4, 1024, &[]);
    paused.spec.as_mut().expect("spec").availability = pb::NodeAvailability::Pause as i32;
    let mut drained = node("b", 4, 1024, &[]);
    drained.spec.as_mut().expect("spec").availability = pb::NodeAvailability::Drain as i32;
    let mut down = node("c", 4, 1024, &[]);
    down.state = pb::NodeState::Down as i32;
    let nodes = vec![paused, drained, down, node("d", 4, 1024, &[])];
    let mut s = Scheduler::new(&nodes, &[]);
    let placed = place_n(&mut s, "web", &spec(), 5);
    assert!(placed.iter().all(|n| n == "d"), "{placed:?}");
    let nodes = nodes[..3].to_vec();
    let mut s = Scheduler::new(&nodes, &[]);
    let err = s.place(&task("web", "t", &spec())).expect_err("none");
    assert_eq!(
        err.to_string(),
        "no suitable node: 1 node not ready, 2 nodes paused or drained"
    );
}

#[test]
fn host_ports_conflict_per_node() {
    let nodes = vec![node("a", 4, 1024, &[]), node("b", 4, 1024, &[])];
    let mut sp = spec();
    sp.endpoint = Some(pb::EndpointSpec {
        mode: 0,
        ports: vec![pb::PortConfig {
            target_port: 80,
            published_port: 8080,
            publish_mode: pb::port_config::PublishMode::Host as i32,
            ..Default::default()
        }],
    });
    // Another service already holds 8080 on a.
    let holder = running_on(task("other", "o", &sp), "a", pb::TaskState::Running);
    let mut s = Scheduler::new(&nodes, &[holder]);
    assert_eq!(s.place(&task("web", "t1", &sp)).expect("b").as_str(), "b");
    let err = s.place(&task("web", "t2", &sp)).expect_err("both taken");
    assert_eq!(
        err.to_string(),
        "no suitable node: host port 8080/tcp in use on 2 nodes"
    );
}

#[test]
fn max_replicas_per_node_is_a_hard_limit() {
    let nodes = vec![node("a", 4, 1024, &[]), node("b", 4, 1024, &[])];
    let sp = with_placement(
        spec(),
        pb::Placement {
            max_replicas_per_node: 2,
            ..Default::default()
        },
    );
    let existing = vec![running_on(
        task("web", "x", &sp),
        "a",
        pb::TaskState::Running,
    )];
    let mut s = Scheduler::new(&nodes, &existing);
    let placed = place_n(&mut s, "web", &sp, 3);
    let c = counts(&placed);
    assert_eq!(c["a"], 1);
    assert_eq!(c["b"], 2);
    let err = s.place(&task("web", "t", &sp)).expect_err("full");
    assert_eq!(
        err.to_string(),
        "no suitable node: max replicas per node (2) reached on 2 nodes"
    );
}

#[test]
fn spread_preferences_split_evenly_over_label_values_then_nodes() {
    // Zone a has one node, b two, c three: Swarm's tree gives each zone a third.
    let nodes = vec![
        node("a1", 8, 8192, &[("zone", "a")]),
        node("b1", 8, 8192, &[("zone", "b")]),
        node("b2", 8, 8192, &[("zone", "b")]),
        node("c1", 8, 8192, &[("zone", "c")]),
        node("c2", 8, 8192, &[("zone", "c")]),
        node("c3", 8, 8192, &[("zone", "c")]),
    ];
    let sp = with_placement(
        spec(),
        pb::Placement {
            preferences: vec![pb::SpreadOver {
                label: "node.labels.zone".into(),
            }],
            ..Default::default()
        },
    );
    let mut s = Scheduler::new(&nodes, &[]);
    let placed = place_n(&mut s, "web", &sp, 9);
    let c = counts(&placed);
    assert_eq!(c["a1"], 3);
    assert_eq!(c["b1"] + c["b2"], 3);
    assert_eq!(c["c1"] + c["c2"] + c["c3"], 3);
    assert!(c["b1"].abs_diff(c["b2"]) <= 1);
    assert!(c["c1"] <= 1 && c["c2"] <= 1 && c["c3"] <= 1);
}

#[test]
fn spread_preferences_count_existing_tasks_and_skip_full_branches() {
    let nodes = vec![
        node("a1", 8, 600, &[("zone", "a")]),
        node("b1", 8, 8192, &[("zone", "b")]),
        node("x", 8, 8192, &[]),
    ];
    let sp = with_placement(
        with_reservation(spec(), 0, 256),
        pb::Placement {
            preferences: vec![pb::SpreadOver {
                label: "node.labels.zone".into(),
            }],
            ..Default::default()
        },
    );
    // b already has two: the first placements go to a and to the unlabelled branch.
    let existing = vec![
        running_on(task("web", "e1", &sp), "b1", pb::TaskState::Running),
        running_on(task("web", "e2", &sp), "b1", pb::TaskState::Running),
    ];
    let mut s = Scheduler::new(&nodes, &existing);
    let placed = place_n(&mut s, "web", &sp, 6);
    let c = counts(&placed);
    // a fits only two (600 MB / 256): its branch is then out, and the rest evens the
    // unlabelled branch and b: 8 tasks over the branches end as x 3, b 3, a 2.
    assert_eq!(c["a1"], 2);
    assert_eq!(c["x"], 3);
    assert_eq!(c["b1"] + 2, 3);
}

#[test]
fn binpack_fills_the_fullest_node_that_fits() {
    let nodes = vec![
        node("a", 4, 4096, &[]),
        node("b", 4, 2048, &[]),
        node("c", 4, 1024, &[]),
    ];
    let sp = with_placement(
        with_reservation(spec(), 0, 400),
        pb::Placement {
            binpack: true,
            ..Default::default()
        },
    );
    let mut s = Scheduler::new(&nodes, &[]);
    let placed = place_n(&mut s, "web", &sp, 8);
    // c takes 2 (1024/400), then b 5 (2048/400), then a.
    assert_eq!(placed, vec!["c", "c", "b", "b", "b", "b", "b", "a"]);
}

#[test]
fn a_task_that_names_its_node_is_checked_there_only() {
    let nodes = vec![node("a", 1, 512, &[]), node("b", 8, 8192, &[])];
    let sp = with_reservation(spec(), 0, 400);
    let mut s = Scheduler::new(&nodes, &[]);
    let mut t = task("web", "g1", &sp);
    t.node_id = "a".into();
    assert_eq!(s.place(&t).expect("fits").as_str(), "a");
    t.id = "g2".into();
    let err = s.place(&t).expect_err("a is full");
    assert_eq!(
        err.to_string(),
        "no suitable node: insufficient memory on 1 node"
    );
    t.node_id = "zz".into();
    assert_eq!(
        s.place(&t).expect_err("unknown").to_string(),
        "no suitable node: node zz is not in the cluster"
    );
}

#[test]
fn fits_answers_without_placing() {
    let nodes = vec![node("a", 1, 512, &[])];
    let sp = with_reservation(spec(), 0, 400);
    let s = Scheduler::new(&nodes, &[]);
    let t = task("web", "t", &sp);
    assert!(s.fits(&t, "a").is_ok());
    assert!(s.fits(&t, "a").is_ok());
    assert!(matches!(
        s.fits(&t, "nope"),
        Err(Unplaceable::UnknownNode { .. })
    ));
}

#[test]
fn interleaved_groups_share_one_accounting() {
    let nodes = vec![node("a", 2, 1000, &[]), node("b", 2, 1000, &[])];
    let web = with_reservation(spec(), 0, 300);
    let api = with_reservation(spec(), 0, 500);
    let mut s = Scheduler::new(&nodes, &[]);
    let mut used: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..6 {
        for (svc, sp, mem) in [("web", &web, 300), ("api", &api, 500)] {
            if let Ok(n) = s.place(&task(svc, &format!("{svc}{i}"), sp)) {
                *used.entry(n.into_string()).or_insert(0) += mem;
            }
        }
    }
    assert!(used.values().all(|&m| m <= 1000), "{used:?}");
}

#[test]
fn invalid_placement_is_reported_not_panicked() {
    let nodes = vec![node("a", 1, 512, &[])];
    let sp = with_placement(
        spec(),
        pb::Placement {
            constraints: vec!["zone=a".into()],
            ..Default::default()
        },
    );
    assert!(validate(sp.placement.as_ref().expect("placement")).is_err());
    let mut s = Scheduler::new(&nodes, &[]);
    let err = s.place(&task("web", "t", &sp)).expect_err("invalid");
    assert!(
        err.message()
            .starts_with("invalid placement: constraint \"zone=a\"")
    );
    let mut no_spec = task("web", "t", &sp);
    no_spec.spec = None;
    assert!(matches!(s.place(&no_spec), Err(Unplaceable::NoSpec { .. })));
}

#[test]
fn place_all_keeps_input_order_and_places_named_tasks_first() {
    let nodes = vec![node("a", 1, 1000, &[]), node("b", 1, 1000, &[])];
    let sp = with_reservation(spec(), 0, 600);
    let free = task("web", "free", &sp);
    let mut pinned = task("web", "pinned", &sp);
    pinned.node_id = "a".into();
    let mut s = Scheduler::new(&nodes, &[]);
    let results = s.place_all(&[&free, &pinned]);
    assert_eq!(results[0].as_ref().expect("free").as_str(), "b");
    assert_eq!(results[1].as_ref().expect("pinned").as_str(), "a");
}

#[test]
fn schedule_writes_assignments_and_new_reasons_only() {
    let nodes = vec![node("a", 1, 1000, &[])];
    let sp = with_reservation(spec(), 0, 600);
    let tasks = vec![task("web", "t1", &sp), task("web", "t2", &sp)];
    let out = schedule(&nodes, &tasks, 42);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].node_id, "a");
    let st = out[0].status.as_ref().expect("status");
    assert_eq!(st.state(), pb::TaskState::Assigned);
    assert_eq!(st.timestamp_ms, 42);
    let st = out[1].status.as_ref().expect("status");
    assert_eq!(st.state(), pb::TaskState::Pending);
    assert_eq!(
        st.message,
        "no suitable node: insufficient memory on 1 node"
    );
    assert!(out[1].node_id.is_empty());

    // Next pass: t1 holds the node, t2 is pending for the same reason: nothing to write.
    let next = vec![out[0].clone(), out[1].clone()];
    assert!(schedule(&nodes, &next, 43).is_empty());
    // Tasks not wanted running are left alone.
    let mut stopped = task("web", "t3", &sp);
    stopped.desired_state = pb::TaskState::Shutdown as i32;
    assert!(schedule(&[], &[stopped], 44).is_empty());
}

proptest! {
    /// Whatever the mix of nodes, reservations, limits and ports, a batch never puts
    /// more on a node than it has, never breaks max_replicas_per_node or a host port,
    /// and only fails a task when no node could take it.
    #[test]
    fn batches_respect_every_filter(
        node_specs in prop::collection::vec((1i64..4, 100i64..2000, 0u8..3, any::<bool>()), 1..12),
        groups in prop::collection::vec((0i64..1500, 0i64..600, 0u64..3, prop::option::of(8000u32..8003), 0u8..4, 1usize..20), 1..6),
    ) {
        let zones = ["a", "b", "c"];
        let nodes: Vec<pb::Node> = node_specs
            .iter()
            .enumerate()
            .map(|(i, (cpus, mem, zone, ready))| {
                let mut n = node(&format!("n{i:02}"), *cpus, *mem, &[("zone", zones[*zone as usize])]);
                if !ready {
                    n.state = pb::NodeState::Down as i32;
                }
                n
            })
            .collect();
        let mut tasks = Vec::new();
        for (g, (cpu_milli, mem_mb, max, port, zone_rule, n)) in groups.iter().enumerate() {
            let mut sp = with_reservation(spec(), *cpu_milli, *mem_mb);
            let mut placement = pb::Placement { max_replicas_per_node: *max, ..Default::default() };
            match zone_rule {
                0 => {}
                1 => placement.constraints.push("node.labels.zone==a".into()),
                2 => placement.constraints.push("node.labels.zone!=b".into()),
                _ => placement.preferences.push(pb::SpreadOver { label: "node.labels.zone".into() }),
            }
            sp.placement = Some(placement);
            if let Some(p) = port {
                sp.endpoint = Some(pb::EndpointSpec {
                    mode: 0,
                    ports: vec![pb::PortConfig {
                        published_port: *p,
                        target_port: 80,
                        publish_mode: pb::port_config::PublishMode::Host as i32,
                        ..Default::default()
                    }],
                });
            }
            for i in 0..*n {
                tasks.push(task(&format!("s{g}"), &format!("s{g}-{i}"), &sp));
            }
        }
        let refs: Vec<&pb::Task> = tasks.iter().collect();
        let mut s = Scheduler::new(&nodes, &[]);
        let results = s.place_all(&refs);
        let mut placed: Vec<pb::Task> = Vec::new();
        for (t, r) in tasks.iter().zip(&results) {
            if let Ok(n) = r {
                placed.push(running_on(t.clone(), n.as_str(), pb::TaskState::Assigned));
            }
        }
        for n in &nodes {
            let on: Vec<&pb::Task> = placed.iter().filter(|t| t.node_id == n.id).collect();
            if !on.is_empty() {
                prop_assert_eq!(n.state(), pb::NodeState::Ready);
            }
            let res = n.description.as_ref().and_then(|d| d.resources.as_ref()).expect("res");
            let r = |t: &pb::Task| t.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.reservations).unwrap_or_default();
            prop_assert!(on.iter().map(|t| r(t).memory_bytes).sum::<i64>() <= res.memory_bytes);
            prop_assert!(on.iter().map(|t| r(t).nano_cpus).sum::<i64>() <= res.nano_cpus);
            let mut ports = Vec::new();
            let mut per_service: BTreeMap<&str, u64> = BTreeMap::new();
            for t in &on {
                let sp = t.spec.as_ref().expect("spec");
                ports.extend(host_ports(sp));
                *per_service.entry(t.service_id.as_str()).or_insert(0) += 1;
                let req = Requirements::from_spec(sp).expect("valid");
                prop_assert!(req.static_check(n).is_ok());
                if req.max_replicas_per_node > 0 {
                    prop_assert!(per_service[t.service_id.as_str()] <= req.max_replicas_per_node);
                }
            }
            let before = ports.len();
            ports.sort_unstable();
            ports.dedup();
            prop_assert_eq!(before, ports.len(), "host port used twice on {}", n.id);
        }
        // A failed task really had no node left: re-check it against the final state.
        let mut check = Scheduler::new(&nodes, &placed);
        for (t, r) in tasks.iter().zip(&results) {
            if r.is_err() {
                prop_assert!(nodes.iter().all(|n| check.fits(t, &n.id).is_err()));
            }
        }
        // And the accounting matches a fresh view of the placed tasks.
        prop_assert_eq!(check.node_count(), nodes.len());
        let _ = &mut check;
    }
}
