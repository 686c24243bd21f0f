//! One service's pass on hand-made store states: which tasks it keeps, stops, orphans,
//! fails and creates, and that the same input always gives the same actions.

use skiff_proto::v1::{self as pb, TaskState};

use super::*;
use crate::command::commands;

fn node(id: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        state: pb::NodeState::Ready as i32,
        spec: Some(pb::NodeSpec {
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            availability: pb::NodeAvailability::Active as i32,
            role: pb::NodeRole::Worker as i32,
        }),
        ..Default::default()
    }
}

fn spec(replicas: u64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: "web".into(),
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
            delay_ms: 1_000,
            max_attempts: 0,
            window_ms: 0,
        }),
        ..Default::default()
    }
}

fn service(spec: pb::ServiceSpec) -> pb::Service {
    pb::Service {
        id: "svc".into(),
        meta: Some(pb::Meta {
            version: 3,
            ..Default::default()
        }),
        spec: Some(spec),
        spec_version: 1,
        ..Default::default()
    }
}

/// The service after its spec changed (the version always goes up with it).
fn changed(spec: pb::ServiceSpec) -> pb::Service {
    let mut s = service(spec);
    s.spec_version = 2;
    s
}

fn task(
    slot: u64,
    generation: u64,
    node: &str,
    desired: TaskState,
    state: TaskState,
    spec: &pb::ServiceSpec,
) -> pb::Task {
    pb::Task {
        id: format!("svc.{slot}.{generation}"),
        meta: Some(pb::Meta {
            version: 10 + generation,
            created_at_ms: 1_000 * generation as i64,
            updated_at_ms: 0,
        }),
        service_id: "svc".into(),
        slot,
        node_id: node.into(),
        spec: Some(spec.clone()),
        spec_version: 1,
        desired_state: desired as i32,
        status: Some(pb::TaskStatus {
            state: state as i32,
            timestamp_ms: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run(svc: &pb::Service, tasks: &[pb::Task], nodes: &[pb::Node], now: i64) -> Vec<Action> {
    let refs: Vec<&pb::Task> = tasks.iter().collect();
    let nodes = Nodes::new(nodes);
    reconcile(&ServiceInput {
        service: svc,
        tasks: &refs,
        nodes: &nodes,
        now_ms: now,
        gate: Gate::Open,
        fits: None,
        history_per_slot: 0,
    })
}

fn stops(actions: &[Action]) -> Vec<(String, TaskState, StopReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetDesiredState {
                task_id,
                state,
                reason,
                ..
            } => Some((task_id.to_string(), *state, reason.clone())),
            _ => None,
        })
        .collect()
}

fn created(actions: &[Action]) -> Vec<&pb::Task> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateTask(t) => Some(&**t),
            _ => None,
        })
        .collect()
}

#[test]
fn missing_slots_are_created_with_derived_ids_and_the_current_spec() {
    let s = spec(3);
    let svc = service(s.clone());
    let tasks = vec![task(2, 4, "a", TaskState::Running, TaskState::Running, &s)];
    let actions = run(&svc, &tasks, &[node("a")], 60_000);
    let new = created(&actions);
    let ids: Vec<&str> = new.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec!["svc.1.1", "svc.3.1"]);
    let t = new[0];
    assert_eq!(t.slot, 1);
    assert!(t.node_id.is_empty(), "left to the scheduler");
    assert_eq!(t.desired_state(), TaskState::Running);
    assert_eq!(t.status.as_ref().expect("status").state(), TaskState::New);
    assert_eq!(t.service_name, "app_web");
    assert_eq!(t.spec.as_ref(), Some(&s));
    assert_eq!(t.meta.as_ref().expect("meta").created_at_ms, 60_000);
    // The same read gives the same decisions, to the byte: a retried pass conflicts on
    // "must not exist" instead of making a second task.
    assert_eq!(actions, run(&svc, &tasks, &[node("a")], 60_000));
}

#[test]
fn scale_down_stops_the_highest_slots_first() {
    let s = spec(1);
    let svc = service(s.clone());
    let tasks: Vec<pb::Task> = (1..=3)
        .map(|slot| task(slot, 1, "a", TaskState::Running, TaskState::Running, &s))
        .collect();
    let actions = run(&svc, &tasks, &[node("a")], 60_000);
    assert_eq!(
        stops(&actions),
        vec![
            (
                "svc.3.1".into(),
                TaskState::Shutdown,
                StopReason::ScaledDown
            ),
            (
                "svc.2.1".into(),
                TaskState::Shutdown,
                StopReason::ScaledDown
            ),
        ]
    );
    assert!(created(&actions).is_empty());
}

#[test]
fn duplicates_keep_the_newest_up_task_whatever_the_order() {
    let s = spec(1);
    let svc = service(s.clone());
    let old = task(1, 1, "a", TaskState::Running, TaskState::Running, &s);
    let new = task(1, 2, "b", TaskState::Running, TaskState::Running, &s);
    let starting = task(1, 3, "b", TaskState::Running, TaskState::Starting, &s);
    let nodes = [node("a"), node("b")];
    for tasks in [
        vec![old.clone(), new.clone()],
        vec![new.clone(), old.clone()],
    ] {
        let actions = run(&svc, &tasks, &nodes, 60_000);
        assert_eq!(
            stops(&actions),
            vec![(
                "svc.1.1".into(),
                TaskState::Shutdown,
                StopReason::Superseded
            )]
        );
        assert!(created(&actions).is_empty());
    }
    // A newer task still starting is kept beside the running one (a start-first move):
    // nothing is stopped until it is up.
    let actions = run(&svc, &[old.clone(), starting.clone()], &nodes, 60_000);
    assert!(stops(&actions).is_empty(), "{actions:?}");
    // An older task still starting next to a running one is stale.
    let stale = task(1, 1, "a", TaskState::Running, TaskState::Starting, &s);
    let actions = run(&svc, &[stale, new], &nodes, 60_000);
    assert_eq!(
        stops(&actions),
        vec![(
            "svc.1.1".into(),
            TaskState::Shutdown,
            StopReason::Superseded
        )]
    );
    // Two tasks of one slot, neither up (e.g. both pending): the newest stays.
    let a = task(1, 1, "", TaskState::Running, TaskState::Pending, &s);
    let b = task(1, 2, "", TaskState::Running, TaskState::New, &s);
    let actions = run(&svc, &[b, a], &nodes, 60_000);
    assert_eq!(
        stops(&actions),
        vec![("svc.1.1".into(), TaskState::Shutdown, StopReason::Duplicate)]
    );
}

#[test]
fn tasks_of_a_lost_node_are_orphaned_and_replaced_at_once() {
    let s = spec(2);
    let svc = service(s.clone());
    let mut t1 = task(1, 1, "gone", TaskState::Running, TaskState::Running, &s);
    t1.attempt = 2;
    let t2 = task(2, 1, "down", TaskState::Running, TaskState::Running, &s);
    let mut down = node("down");
    down.state = pb::NodeState::Down as i32;
    let actions = run(&svc, &[t1, t2], &[down, node("a")], 60_000);
    let orphaned: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Orphan { task_id, .. } => Some(task_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(orphaned, vec!["svc.1.1", "svc.2.1"]);
    let new = created(&actions);
    assert_eq!(new.len(), 2);
    assert_eq!(new[0].id, "svc.1.2");
    assert_eq!(new[0].attempt, 2, "a lost node costs no restart attempt");
    assert!(
        !actions.iter().any(|a| matches!(a, Action::RequeueAt(_))),
        "no restart delay"
    );
}

#[test]
fn a_disconnected_node_keeps_its_tasks_until_it_is_declared_down() {
    let s = spec(1);
    let svc = service(s.clone());
    let t = task(1, 1, "x", TaskState::Running, TaskState::Running, &s);
    let mut n = node("x");
    n.state = pb::NodeState::Disconnected as i32;
    assert!(run(&svc, &[t], &[n, node("a")], 60_000).is_empty());
}

#[test]
fn an_ended_task_is_restarted_after_the_delay_with_the_next_attempt() {
    let s = spec(1);
    let svc = service(s.clone());
    let mut failed = task(1, 1, "a", TaskState::Running, TaskState::Failed, &s);
    failed.attempt = 1;
    let actions = run(&svc, std::slice::from_ref(&failed), &[node("a")], 50_500);
    assert_eq!(actions, vec![Action::RequeueAt(51_000)]);
    let actions = run(&svc, &[failed], &[node("a")], 51_000);
    assert_eq!(
        stops(&actions),
        vec![("svc.1.1".into(), TaskState::Shutdown, StopReason::Restarted)]
    );
    let new = created(&actions);
    assert_eq!(new[0].id, "svc.1.2");
    assert_eq!(new[0].attempt, 2);
}

#[test]
fn restarts_are_counted_within_the_window() {
    let mut s = spec(1);
    s.restart_policy = Some(pb::RestartPolicy {
        condition: pb::restart_policy::Condition::OnFailure as i32,
        delay_ms: 0,
        max_attempts: 2,
        window_ms: 10_000,
    });
    let svc = service(s.clone());
    // Restarts created at 1 s, 2 s (gone), then one at 45 s that failed at 50 s: only the
    // last falls in the 10 s window, so one more restart is allowed.
    let mut tasks = Vec::new();
    for (generation, attempt) in [(1u64, 1u64), (2, 2)] {
        let mut t = task(
            1,
            generation,
            "a",
            TaskState::Shutdown,
            TaskState::Failed,
            &s,
        );
        t.attempt = attempt;
        tasks.push(t);
    }
    let mut last = task(1, 45, "a", TaskState::Running, TaskState::Failed, &s);
    last.attempt = 3;
    tasks.push(last);
    let actions = run(&svc, &tasks, &[node("a")], 60_000);
    assert_eq!(created(&actions).len(), 1, "{actions:?}");
    // Two restarts in the window: no more.
    let mut recent = task(1, 44, "a", TaskState::Shutdown, TaskState::Failed, &s);
    recent.attempt = 2;
    tasks[1] = recent;
    let actions = run(&svc, &tasks, &[node("a")], 60_000);
    assert!(created(&actions).is_empty());
    assert_eq!(
        stops(&actions),
        vec![(
            "svc.1.45".into(),
            TaskState::Complete,
            StopReason::RestartPolicy("restarted 2 times within 10 s, max_attempts is 2".into())
        )]
    );
}

#[test]
fn an_unhealthy_task_is_failed_and_replaced_by_the_restart_policy() {
    let mut s = spec(1);
    s.restart_policy.as_mut().expect("policy").delay_ms = 0;
    let svc = service(s.clone());
    let mut t = task(1, 1, "a", TaskState::Running, TaskState::Running, &s);
    t.status.as_mut().expect("status").health = pb::HealthState::Unhealthy as i32;
    let actions = run(&svc, std::slice::from_ref(&t), &[node("a")], 60_000);
    assert!(matches!(&actions[0], Action::Fail { task_id, reason, .. }
        if task_id.as_str() == "svc.1.1" && reason == "health check failed: unhealthy"));
    assert_eq!(created(&actions)[0].attempt, 1);
    let cmds = commands(&actions, std::slice::from_ref(&svc), &[t], 60_000).expect("commands");
    assert_eq!(cmds.len(), 1);
    let put = cmds[0]
        .mutations
        .iter()
        .find_map(|m| match &m.op {
            Some(pb::mutation::Op::PutTask(t)) if t.id == "svc.1.1" => {
                Some((t.clone(), m.expected_version))
            }
            _ => None,
        })
        .expect("old task written once");
    assert_eq!(put.1, 11, "compare-and-swap on the version read");
    assert_eq!(
        put.0.status.as_ref().expect("status").state(),
        TaskState::Failed
    );
    assert_eq!(put.0.desired_state(), TaskState::Shutdown);
}

#[test]
fn a_stop_first_slot_waits_for_its_old_task_to_stop() {
    let s = spec(1);
    let svc = service(s.clone());
    let stopping = task(1, 1, "a", TaskState::Shutdown, TaskState::Running, &s);
    assert!(run(&svc, std::slice::from_ref(&stopping), &[node("a")], 60_000).is_empty());
    let stopped = task(1, 1, "a", TaskState::Shutdown, TaskState::Shutdown, &s);
    let actions = run(&svc, &[stopped], &[node("a")], 60_000);
    assert_eq!(created(&actions)[0].id, "svc.1.2");
    // On a drained node the replacement does not wait.
    let mut drained = node("a");
    drained.spec.as_mut().expect("spec").availability = pb::NodeAvailability::Drain as i32;
    let live = task(1, 1, "a", TaskState::Running, TaskState::Running, &s);
    let actions = run(&svc, &[live], &[drained, node("b")], 60_000);
    assert_eq!(
        stops(&actions),
        vec![(
            "svc.1.1".into(),
            TaskState::Shutdown,
            StopReason::NodeDrained
        )]
    );
    assert_eq!(created(&actions).len(), 1);
}

#[test]
fn only_runtime_changes_start_an_update() {
    let s = spec(2);
    let running: Vec<pb::Task> = (1..=2)
        .map(|slot| task(slot, 1, "a", TaskState::Running, TaskState::Running, &s))
        .collect();
    // More replicas, a label, update settings: no update.
    let mut scaled = s.clone();
    scaled.mode = Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
        replicas: 3,
    }));
    scaled.labels.insert("team".into(), "x".into());
    scaled.update_config = Some(crate::update::default_update_config());
    let actions = run(&changed(scaled), &running, &[node("a")], 60_000);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SetUpdateStatus { .. })),
        "{actions:?}"
    );
    assert_eq!(created(&actions).len(), 1);
    // A constraint the node still satisfies: no update either.
    let mut constrained = s.clone();
    constrained.placement = Some(pb::Placement {
        constraints: vec!["node.labels.zone==a".into()],
        ..Default::default()
    });
    assert!(
        run(
            &changed(constrained.clone()),
            &running,
            &[node("a")],
            60_000
        )
        .is_empty()
    );
    // One it no longer satisfies: update.
    constrained.placement.as_mut().expect("p").constraints = vec!["node.labels.zone==b".into()];
    let actions = run(&changed(constrained), &running, &[node("a")], 60_000);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::SetUpdateStatus { status, .. }
        if status.state() == pb::update_status::State::Updating))
    );
    // A new image: update, one slot at a time by default (stop-first).
    let mut image = s.clone();
    image.container.as_mut().expect("c").image = "busybox:2".into();
    let actions = run(&changed(image), &running, &[node("a")], 60_000);
    assert_eq!(
        stops(&actions),
        vec![("svc.1.1".into(), TaskState::Shutdown, StopReason::Updated)]
    );
    assert!(
        created(&actions).is_empty(),
        "stop-first waits for the old task to stop"
    );
}

#[test]
fn a_closed_gate_creates_nothing_and_says_why() {
    let s = spec(2);
    let svc = service(s);
    let nodes = Nodes::new(&[]);
    let actions = reconcile(&ServiceInput {
        service: &svc,
        tasks: &[],
        nodes: &nodes,
        now_ms: 0,
        gate: Gate::Waiting("waiting for db to be healthy (0/1)".into()),
        fits: None,
        history_per_slot: 0,
    });
    assert_eq!(
        actions,
        vec![Action::Blocked {
            service_id: "svc".into(),
            reason: "waiting for db to be healthy (0/1)".into()
        }],
        "said once, however many slots wait"
    );
}

#[test]
fn a_rebalance_move_goes_to_the_emptiest_node_that_fits() {
    let s = spec(4);
    let svc = service(s.clone());
    let tasks: Vec<pb::Task> = (1..=4)
        .map(|slot| {
            task(
                slot,
                1,
                if slot <= 3 { "a" } else { "b" },
                TaskState::Running,
                TaskState::Running,
                &s,
            )
        })
        .collect();
    let nodes = [node("a"), node("b"), node("c"), node("d")];
    let refs: Vec<&pb::Task> = tasks.iter().collect();
    let index = Nodes::new(&nodes);
    let not_c = |_: &pb::Task, n: &str| n != "c";
    let actions = reconcile(&ServiceInput {
        service: &svc,
        tasks: &refs,
        nodes: &index,
        now_ms: 60_000,
        gate: Gate::Open,
        fits: Some(&not_c),
        history_per_slot: 0,
    });
    // Default order is stop-first: the highest slot on a leaves for d (c does not fit).
    assert_eq!(
        stops(&actions),
        vec![(
            "svc.3.1".into(),
            TaskState::Shutdown,
            StopReason::Rebalanced
        )]
    );
    let new = created(&actions);
    assert_eq!(
        (new[0].id.as_str(), new[0].node_id.as_str(), new[0].slot),
        ("svc.3.2", "d", 3)
    );

    // The scheduler could not place the move after all: it is dropped.
    let mut pending = task(3, 2, "d", TaskState::Running, TaskState::Pending, &s);
    pending.status.as_mut().expect("status").message =
        "no suitable node: insufficient memory on 1 node".into();
    let mut tasks = tasks;
    tasks[2] = task(3, 1, "a", TaskState::Shutdown, TaskState::Shutdown, &s);
    tasks.push(pending);
    let actions = run(&svc, &tasks, &nodes, 60_000);
    assert_eq!(
        stops(&actions),
        vec![(
            "svc.3.2".into(),
            TaskState::Shutdown,
            StopReason::PlacementFailed
        )]
    );
    let new = created(&actions);
    assert_eq!(
        (new[0].id.as_str(), new[0].node_id.as_str()),
        ("svc.3.3", "")
    );
}

#[test]
fn global_services_get_one_task_per_eligible_node() {
    let mut s = spec(0);
    s.mode = Some(pb::service_spec::Mode::Global(pb::GlobalMode {}));
    s.placement = Some(pb::Placement {
        constraints: vec!["node.labels.zone==a".into()],
        ..Default::default()
    });
    let svc = service(s.clone());
    let mut other_zone = node("z");
    other_zone
        .spec
        .as_mut()
        .expect("spec")
        .labels
        .insert("zone".into(), "b".into());
    let mut paused = node("p");
    paused.spec.as_mut().expect("spec").availability = pb::NodeAvailability::Pause as i32;
    let mut g = task(0, 1, "z", TaskState::Running, TaskState::Running, &s);
    g.id = "svc.z.1".into();
    let actions = run(&svc, &[g], &[node("a"), other_zone, paused], 60_000);
    let new = created(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(
        (new[0].id.as_str(), new[0].node_id.as_str(), new[0].slot),
        ("svc.a.1", "a", 0)
    );
    assert_eq!(
        stops(&actions),
        vec![(
            "svc.z.1".into(),
            TaskState::Shutdown,
            StopReason::NodeIneligible
        )]
    );
}
