//! The orchestrator and the scheduler driving a simulated cluster (tests/sim): scaling,
//! restarts, drain and pause, lost nodes and partitions, rolling updates and rollbacks,
//! depends_on, rebalancing, global services, pending reasons, history.

mod sim;

use skiff_orchestrator::Action;
use skiff_proto::v1::restart_policy::Condition;
use skiff_proto::v1::update_config::{FailureAction, Order};
use skiff_proto::v1::update_status::State;
use skiff_proto::v1::{self as pb, TaskState};

use sim::{Sim, global, replicated, state, update_config, with_healthcheck, with_image};

fn image_of(t: &pb::Task) -> &str {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

#[test]
fn scale_up_and_down_keeps_exactly_the_replicas() {
    let mut sim = Sim::new(3);
    sim.add_service("web", replicated("web", 5));
    sim.settle(30);
    assert_eq!(sim.running("web").len(), 5);
    assert!(
        sim.spread("web").values().all(|&n| n <= 2),
        "{:?}",
        sim.spread("web")
    );
    let mut slots: Vec<u64> = sim.running("web").iter().map(|t| t.slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![1, 2, 3, 4, 5]);

    sim.scale("web", 2);
    sim.settle(30);
    let mut slots: Vec<u64> = sim.running("web").iter().map(|t| t.slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![1, 2], "the highest slots go");
    assert_eq!(sim.containers_of("web"), 2);

    sim.scale("web", 4);
    sim.settle(30);
    assert_eq!(sim.running("web").len(), 4);
    assert_eq!(sim.containers_of("web"), 4);
    // Scaling is not an update: the tasks that ran kept running.
    assert_eq!(sim.update_state("web"), State::None);
    assert!(sim.peak_desired["web"] <= 5);
}

#[test]
fn on_failure_restarts_stop_after_max_attempts() {
    let mut sim = Sim::new(2);
    let mut spec = with_image(replicated("job", 1), "crash");
    spec.restart_policy = Some(pb::RestartPolicy {
        condition: Condition::OnFailure as i32,
        delay_ms: 0,
        max_attempts: 3,
        window_ms: 0,
    });
    sim.add_service("job", spec);
    sim.settle(60);
    let tasks: Vec<&pb::Task> = sim.tasks.iter().filter(|t| t.service_id == "job").collect();
    // The first run and three restarts, then the slot is left ended.
    assert_eq!(tasks.len(), 4, "{}", sim.dump());
    let mut attempts: Vec<u64> = tasks.iter().map(|t| t.attempt).collect();
    attempts.sort_unstable();
    assert_eq!(attempts, vec![0, 1, 2, 3]);
    let last = tasks.iter().find(|t| t.attempt == 3).expect("last");
    assert_eq!(last.desired_state(), TaskState::Complete);
    assert_eq!(
        last.status.as_ref().expect("status").message,
        "not restarted: restarted 3 times, max_attempts is 3"
    );
    // Nothing more happens, however long we wait.
    for _ in 0..20 {
        sim.step();
    }
    assert_eq!(
        sim.tasks.iter().filter(|t| t.service_id == "job").count(),
        4
    );
}

#[test]
fn restart_delay_is_waited_for() {
    let mut sim = Sim::new(1);
    let mut spec = with_image(replicated("job", 1), "crash");
    spec.restart_policy = Some(pb::RestartPolicy {
        condition: Condition::Any as i32,
        delay_ms: 5_000,
        max_attempts: 1,
        window_ms: 0,
    });
    sim.add_service("job", spec);
    sim.until(20, "first failure", |s| {
        s.tasks.iter().any(|t| state(t) == TaskState::Failed)
    });
    let failed_at = sim.now;
    let requeue = sim.step().into_iter().find_map(|a| match a {
        Action::RequeueAt(t) => Some(t),
        _ => None,
    });
    assert!(
        requeue.is_some_and(|t| t > failed_at),
        "a wake-up for the end of the delay"
    );
    sim.until(20, "a restart", |s| {
        s.tasks.iter().filter(|t| t.service_id == "job").count() == 2
    });
    let second = sim.tasks.iter().find(|t| t.attempt == 1).expect("restart");
    let created = second.meta.as_ref().expect("meta").created_at_ms;
    assert!(
        created - failed_at >= 4_000,
        "restarted {} ms after the failure",
        created - failed_at
    );
}

#[test]
fn restart_condition_none_and_any_on_a_task_that_completes() {
    let mut sim = Sim::new(1);
    let mut once = with_image(replicated("once", 1), "exit0");
    once.restart_policy = Some(pb::RestartPolicy {
        condition: Condition::None as i32,
        ..Default::default()
    });
    let mut again = with_image(replicated("again", 1), "exit0");
    again.restart_policy = Some(pb::RestartPolicy {
        condition: Condition::Any as i32,
        max_attempts: 2,
        ..Default::default()
    });
    sim.add_service("once", once);
    sim.add_service("again", again);
    sim.settle(60);
    let once: Vec<&pb::Task> = sim
        .tasks
        .iter()
        .filter(|t| t.service_id == "once")
        .collect();
    assert_eq!(once.len(), 1);
    assert_eq!(state(once[0]), TaskState::Complete);
    assert_eq!(once[0].desired_state(), TaskState::Complete);
    assert_eq!(
        sim.tasks.iter().filter(|t| t.service_id == "again").count(),
        3
    );
}

#[test]
fn drain_empties_a_node_and_pause_keeps_what_runs() {
    let mut sim = Sim::new(3);
    sim.add_service("web", replicated("web", 6));
    sim.settle(30);
    assert_eq!(sim.spread("web").get("n1"), Some(&2));

    sim.set_availability("n2", pb::NodeAvailability::Pause);
    sim.set_availability("n1", pb::NodeAvailability::Drain);
    sim.settle(30);
    let spread = sim.spread("web");
    assert_eq!(spread.get("n1"), None, "drained: {spread:?}");
    assert_eq!(
        spread.get("n2"),
        Some(&2),
        "paused keeps its tasks: {spread:?}"
    );
    assert_eq!(spread.get("n3"), Some(&4));
    assert_eq!(sim.containers["n1"].len(), 0);
    assert!(sim.peak_desired["web"] <= 6);

    // Paused gets nothing new either.
    sim.scale("web", 8);
    sim.settle(30);
    assert_eq!(sim.spread("web").get("n2"), Some(&2));
    assert_eq!(sim.running("web").len(), 8);
}

#[test]
fn a_lost_node_has_its_tasks_replaced_within_the_timeout() {
    let mut sim = Sim::new(3);
    sim.add_service("web", replicated("web", 6));
    sim.settle(30);
    let cut = sim.now;
    sim.set_connected("n1", false);
    sim.until(40, "n1 down", |s| {
        s.node("n1").state() == pb::NodeState::Down
    });
    let down_after = sim.now - cut;
    assert!(
        (17_000..=19_000).contains(&down_after),
        "down after {down_after} ms"
    );
    sim.until(10, "6 running elsewhere", |s| {
        s.running("web")
            .iter()
            .filter(|t| t.node_id != "n1")
            .count()
            == 6
    });
    let back_after = sim.now - cut;
    assert!(
        back_after <= 17_500 + 5_000,
        "replaced {back_after} ms after the cut"
    );
    // The tasks of n1 are orphaned in the store; n1 still runs their containers.
    let orphaned = sim
        .tasks
        .iter()
        .filter(|t| state(t) == TaskState::Orphaned)
        .count();
    assert_eq!(orphaned, 2);
    assert_eq!(sim.containers["n1"].len(), 2);
    assert!(sim.peak_desired["web"] <= 6);
}

#[test]
fn a_healed_partition_leaves_exactly_the_desired_replicas() {
    let mut sim = Sim::new(3);
    sim.add_service("web", replicated("web", 6));
    sim.settle(30);
    sim.set_connected("n1", false);
    sim.until(40, "replaced", |s| {
        s.running("web")
            .iter()
            .filter(|t| t.node_id != "n1")
            .count()
            == 6
    });
    assert_eq!(
        sim.containers_of("web"),
        8,
        "two stale containers run on the cut-off node"
    );
    sim.set_connected("n1", true);
    sim.until(10, "n1 back", |s| {
        s.node("n1").state() == pb::NodeState::Ready
    });
    sim.step();
    assert_eq!(
        sim.containers_of("web"),
        6,
        "the returning agent stopped what is no longer its"
    );
    sim.settle(60);
    assert_eq!(sim.running("web").len(), 6);
    assert_eq!(sim.containers_of("web"), 6);
    assert!(sim.peak_desired["web"] <= 6);
    // And the returning node got its share back, gradually.
    let spread = sim.spread("web");
    assert!(spread.values().all(|&n| n == 2), "{spread:?}");
}

#[test]
fn rolling_update_replaces_tasks_in_batches() {
    let mut sim = Sim::new(3);
    let mut spec = replicated("web", 4);
    spec.update_config = Some(update_config(2, 0, Order::StopFirst, FailureAction::Pause));
    sim.add_service("web", spec);
    sim.settle(30);
    sim.update("web", |s| {
        s.container.as_mut().expect("c").image = "busybox:2".into()
    });
    let mut min_running = usize::MAX;
    sim.until(60, "update completed", |s| {
        min_running = min_running.min(s.running("web").len());
        s.update_state("web") == State::Completed
    });
    assert!(
        min_running >= 2,
        "never more than 2 down at once (saw {min_running} running)"
    );
    let running = sim.running("web");
    assert_eq!(running.len(), 4);
    assert!(running.iter().all(|t| image_of(t) == "busybox:2"));
    assert!(sim.peak_desired["web"] <= 4);
    let status = sim.service("web").update_status.clone().expect("status");
    assert_eq!(status.message, "update completed");
    assert!(status.completed_at_ms >= status.started_at_ms);
}

#[test]
fn start_first_never_drops_below_the_desired_replicas() {
    let mut sim = Sim::new(3);
    let mut spec = with_healthcheck(replicated("web", 3));
    spec.update_config = Some(update_config(
        1,
        1_000,
        Order::StartFirst,
        FailureAction::Pause,
    ));
    sim.add_service("web", spec);
    sim.settle(30);
    sim.update("web", |s| {
        s.container.as_mut().expect("c").image = "busybox:2".into()
    });
    sim.until(80, "update completed", |s| {
        assert!(
            s.running("web")
                .iter()
                .filter(|t| skiff_orchestrator::is_up(t))
                .count()
                >= 3,
            "{}",
            s.dump()
        );
        s.update_state("web") == State::Completed
    });
    assert!(sim.peak_desired["web"] <= 4, "one extra at a time");
    assert!(
        sim.running("web")
            .iter()
            .all(|t| image_of(t) == "busybox:2")
    );
    assert_eq!(sim.containers_of("web"), 3);
}

#[test]
fn a_failing_update_rolls_back_by_itself() {
    let mut sim = Sim::new(3);
    let mut spec = with_healthcheck(replicated("web", 4));
    spec.update_config = Some(update_config(
        1,
        0,
        Order::StopFirst,
        FailureAction::Rollback,
    ));
    sim.add_service("web", spec);
    sim.settle(30);
    sim.update("web", |s| {
        s.container.as_mut().expect("c").image = "unhealthy".into()
    });
    sim.until(30, "rollback started", |s| {
        s.update_state("web") == State::RollbackStarted
    });
    let status = sim.service("web").update_status.clone().expect("status");
    assert!(
        status
            .message
            .starts_with("update rolled back: 1 of 4 new tasks failed"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("health check failed"),
        "{}",
        status.message
    );
    sim.until(60, "rollback completed", |s| {
        s.update_state("web") == State::RollbackCompleted
    });
    sim.settle(60);
    let running = sim.running("web");
    assert_eq!(running.len(), 4);
    assert!(
        running.iter().all(|t| image_of(t) == "busybox:1"),
        "{}",
        sim.dump()
    );
    assert_eq!(sim.containers_of("web"), 4);
    // Only one slot was tried with the bad image (parallelism 1).
    let bad = sim
        .tasks
        .iter()
        .filter(|t| image_of(t) == "unhealthy")
        .count();
    assert_eq!(bad, 1, "{}", sim.dump());
}

#[test]
fn a_failing_update_pauses_and_resumes_on_a_new_spec() {
    let mut sim = Sim::new(2);
    let mut spec = replicated("web", 4);
    spec.update_config = Some(update_config(2, 0, Order::StopFirst, FailureAction::Pause));
    sim.add_service("web", spec);
    sim.settle(30);
    sim.update("web", |s| {
        s.container.as_mut().expect("c").image = "crash".into()
    });
    sim.until(30, "paused", |s| s.update_state("web") == State::Paused);
    for _ in 0..10 {
        sim.step();
    }
    // Two slots were tried; the other two still run the old image.
    let old = sim
        .running("web")
        .iter()
        .filter(|t| image_of(t) == "busybox:1")
        .count();
    assert_eq!(old, 2, "{}", sim.dump());
    assert_eq!(sim.update_state("web"), State::Paused);
    // A fixed spec resumes: everything converges to it.
    sim.update("web", |s| {
        s.container.as_mut().expect("c").image = "busybox:3".into()
    });
    sim.until(60, "completed", |s| {
        s.update_state("web") == State::Completed
    });
    sim.settle(60);
    assert!(
        sim.running("web")
            .iter()
            .all(|t| image_of(t) == "busybox:3")
    );
    assert_eq!(sim.running("web").len(), 4);
}

#[test]
fn rollback_on_demand_restores_the_previous_spec() {
    let mut sim = Sim::new(2);
    let mut spec = replicated("web", 2);
    spec.update_config = Some(update_config(1, 0, Order::StopFirst, FailureAction::Pause));
    sim.add_service("web", spec);
    sim.settle(30);
    sim.update("web", |s| {
        s.container.as_mut().expect("c").image = "busybox:2".into()
    });
    sim.until(60, "completed", |s| {
        s.update_state("web") == State::Completed
    });
    sim.rollback("web");
    sim.until(60, "rolled back", |s| {
        s.update_state("web") == State::RollbackCompleted
    });
    sim.settle(30);
    assert!(
        sim.running("web")
            .iter()
            .all(|t| image_of(t) == "busybox:1")
    );
    assert_eq!(
        sim.service("web")
            .update_status
            .as_ref()
            .expect("status")
            .message,
        "rollback completed"
    );
}

#[test]
fn depends_on_holds_a_service_until_its_dependency_is_healthy() {
    let mut sim = Sim::new(2);
    let db = with_healthcheck(replicated("db", 2));
    let mut web = replicated("web", 2);
    web.depends_on = vec![pb::Dependency {
        service: "db".into(),
        condition: pb::dependency::Condition::ServiceHealthy as i32,
    }];
    sim.add_service("web", web);
    let actions = sim.step();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Blocked { service_id, reason }
        if service_id == "web" && reason == "waiting for db: no such service in project app"))
    );
    sim.add_service("db", db);
    let mut web_created_while_db_not_healthy = false;
    sim.until(30, "web running", |s| {
        let db_up = s
            .running("db")
            .iter()
            .filter(|t| skiff_orchestrator::is_up(t))
            .count();
        if db_up < 2 && s.tasks.iter().any(|t| t.service_id == "web") {
            web_created_while_db_not_healthy = true;
        }
        s.running("web").len() == 2
    });
    assert!(!web_created_while_db_not_healthy, "{}", sim.dump());
}

#[test]
fn completed_successfully_waits_for_a_job_to_exit_zero() {
    let mut sim = Sim::new(1);
    let mut migrate = with_image(replicated("migrate", 1), "exit0");
    migrate.restart_policy = Some(pb::RestartPolicy {
        condition: Condition::OnFailure as i32,
        ..Default::default()
    });
    let mut web = replicated("web", 1);
    web.depends_on = vec![pb::Dependency {
        service: "migrate".into(),
        condition: pb::dependency::Condition::ServiceCompletedSuccessfully as i32,
    }];
    sim.add_service("migrate", migrate);
    sim.add_service("web", web);
    sim.until(20, "web running", |s| s.running("web").len() == 1);
    let job = sim
        .tasks
        .iter()
        .find(|t| t.service_id == "migrate")
        .expect("job");
    assert_eq!(state(job), TaskState::Complete);
    let web = sim
        .tasks
        .iter()
        .find(|t| t.service_id == "web")
        .expect("web");
    assert!(
        web.meta.as_ref().expect("meta").created_at_ms
            >= job.status.as_ref().expect("status").timestamp_ms,
        "web was created after the job completed"
    );
}

#[test]
fn a_joining_node_gets_its_share_gradually() {
    let mut sim = Sim::new(2);
    let mut spec = replicated("web", 6);
    spec.update_config = Some(update_config(
        1,
        2_000,
        Order::StopFirst,
        FailureAction::Pause,
    ));
    sim.add_service("web", spec);
    sim.settle(30);
    assert_eq!(
        sim.spread("web").values().copied().collect::<Vec<_>>(),
        vec![3, 3]
    );
    sim.add_node("n3", &[]);
    let mut min_running = usize::MAX;
    sim.until(80, "even spread", |s| {
        min_running = min_running.min(s.running("web").len());
        let spread = s.spread("web");
        spread.len() == 3 && spread.values().all(|&n| n == 2)
    });
    assert!(
        min_running >= 5,
        "one move at a time (saw {min_running} running)"
    );
    assert!(sim.peak_desired["web"] <= 6);
    sim.settle(30);
    assert!(sim.spread("web").values().all(|&n| n == 2));
}

#[test]
fn global_services_follow_the_eligible_nodes() {
    let mut sim = Sim::new(0);
    sim.add_node("e1", &[("role", "edge")]);
    sim.add_node("e2", &[("role", "edge")]);
    sim.add_node("c1", &[("role", "core")]);
    let mut spec = global("agent");
    spec.placement = Some(pb::Placement {
        constraints: vec!["node.labels.role==edge".into()],
        ..Default::default()
    });
    sim.add_service("agent", spec);
    sim.settle(30);
    assert_eq!(
        sim.spread("agent").keys().cloned().collect::<Vec<_>>(),
        vec!["e1", "e2"]
    );
    sim.add_node("e3", &[("role", "edge")]);
    sim.settle(30);
    assert_eq!(sim.running("agent").len(), 3);
    sim.set_availability("e1", pb::NodeAvailability::Drain);
    sim.settle(30);
    assert_eq!(
        sim.spread("agent").keys().cloned().collect::<Vec<_>>(),
        vec!["e2", "e3"]
    );
    sim.set_connected("e2", false);
    sim.until(40, "e2 down", |s| {
        s.node("e2").state() == pb::NodeState::Down
    });
    sim.settle(30);
    // No replacement elsewhere: a global task belongs to its node.
    assert_eq!(
        sim.spread("agent").keys().cloned().collect::<Vec<_>>(),
        vec!["e3"]
    );
    sim.set_connected("e2", true);
    sim.set_availability("e1", pb::NodeAvailability::Active);
    sim.settle(40);
    assert_eq!(sim.running("agent").len(), 3);
    assert_eq!(sim.containers_of("agent"), 3);
}

#[test]
fn an_unplaceable_task_stays_pending_with_its_reason_until_the_spec_is_fixed() {
    let mut sim = Sim::new(3);
    let mut spec = replicated("web", 1);
    spec.placement = Some(pb::Placement {
        constraints: vec!["node.labels.zone==b".into()],
        ..Default::default()
    });
    sim.add_service("web", spec);
    sim.settle(10);
    let t = sim
        .tasks
        .iter()
        .find(|t| t.service_id == "web")
        .expect("task");
    assert_eq!(state(t), TaskState::Pending);
    assert_eq!(
        t.status.as_ref().expect("status").message,
        "no suitable node: constraint node.labels.zone==b matched none (3 nodes)"
    );
    sim.update("web", |s| s.placement = None);
    sim.settle(30);
    assert_eq!(sim.running("web").len(), 1);
}

#[test]
fn a_removed_service_leaves_nothing_behind() {
    let mut sim = Sim::new(2);
    sim.add_service("web", replicated("web", 3));
    sim.settle(30);
    sim.services.retain(|s| s.id != "web");
    sim.settle(30);
    assert!(
        sim.tasks.iter().all(|t| t.service_id != "web"),
        "{}",
        sim.dump()
    );
    assert_eq!(sim.containers_of("web"), 0);
}

#[test]
fn history_beyond_the_limit_is_pruned() {
    let mut sim = Sim::new(1);
    sim.history = 3;
    let mut spec = with_image(replicated("job", 1), "crash");
    spec.restart_policy = Some(pb::RestartPolicy {
        condition: Condition::Any as i32,
        max_attempts: 8,
        ..Default::default()
    });
    sim.add_service("job", spec);
    sim.settle(80);
    let tasks: Vec<&pb::Task> = sim.tasks.iter().filter(|t| t.service_id == "job").collect();
    assert_eq!(tasks.len(), 3, "{}", sim.dump());
    // The newest is kept: it numbers the next.
    assert!(tasks.iter().any(|t| t.attempt == 8));
}
