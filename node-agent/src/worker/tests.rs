//! The worker loop against a recording executor: what it starts, stops and removes, and
//! what it reports, for assignments as the session delivers them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::executor::{ExecError, Executor, Existing, Exit};
use super::*;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    exits: Mutex<HashMap<String, Exit>>,
    exited: Notify,
    existing: Mutex<Vec<Existing>>,
    fail_prepare: Mutex<Option<String>>,
    health_code: Mutex<i32>,
}

impl Fake {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
    fn exit(&self, id: &str, exit: Exit) {
        self.exits.lock().expect("lock").insert(id.into(), exit);
        self.exited.notify_waiters();
    }
}

impl Executor for Fake {
    async fn prepare(&self, task: &pb::Task) -> Result<(), ExecError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("prepare {}", task.id));
        match self.fail_prepare.lock().expect("lock").clone() {
            Some(msg) => Err(ExecError::rejected("pull image", msg)),
            None => Ok(()),
        }
    }
    async fn start(&self, id: &str) -> Result<u32, ExecError> {
        self.calls.lock().expect("lock").push(format!("start {id}"));
        Ok(4242)
    }
    async fn wait(&self, id: &str) -> Result<Exit, ExecError> {
        loop {
            let notified = self.exited.notified();
            if let Some(exit) = self.exits.lock().expect("lock").get(id).cloned() {
                return Ok(exit);
            }
            notified.await;
        }
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), ExecError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("stop {id} {}ms", grace.as_millis()));
        self.exit(
            id,
            Exit {
                code: 0,
                signal: 15,
                oom_killed: false,
            },
        );
        Ok(())
    }
    async fn release_network(&self, id: &str) -> Result<(), ExecError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("release {id}"));
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), ExecError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("remove {id}"));
        Ok(())
    }
    async fn exec(&self, id: &str, argv: &[String], _timeout: Duration) -> Result<i32, ExecError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("exec {id} {}", argv.join(" ")));
        Ok(*self.health_code.lock().expect("lock"))
    }
    async fn list(&self) -> Result<Vec<Existing>, ExecError> {
        Ok(self.existing.lock().expect("lock").clone())
    }
}

fn task(id: &str, desired: TaskState) -> pb::Task {
    pb::Task {
        id: id.into(),
        desired_state: desired as i32,
        spec: Some(pb::ServiceSpec {
            container: Some(pb::ContainerSpec {
                image: "busybox".into(),
                stop_grace_period_ms: 1500,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn assign(tasks: Vec<pb::Task>) -> SessionEvent {
    SessionEvent::Assignments(pb::Assignments {
        tasks,
        ..Default::default()
    })
}

/// Reads statuses until one for `id` reaches `state`.
async fn until(
    rx: &mut mpsc::Receiver<pb::TaskStatusUpdate>,
    id: &str,
    state: TaskState,
) -> pb::TaskStatus {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {state:?} status for {id}"))
            .expect("status channel open");
        let status = update.status.expect("status");
        if update.task_id == id && status.state() == state {
            return status;
        }
    }
}

struct Harness {
    fake: Arc<Fake>,
    events: mpsc::Sender<SessionEvent>,
    statuses: mpsc::Receiver<pb::TaskStatusUpdate>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    state_file: PathBuf,
}

async fn harness(fake: Arc<Fake>, dir: tempfile::TempDir) -> Harness {
    let state_file = dir.path().join("assignments.pb");
    let (st_tx, st_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let worker = Worker::start(fake.clone(), st_tx, state_file.clone(), shutdown.clone())
        .await
        .expect("worker starts");
    let handle = tokio::spawn(worker.run(ev_rx));
    Harness {
        fake,
        events: ev_tx,
        statuses: st_rx,
        shutdown,
        handle,
        _dir: dir,
        state_file,
    }
}

#[tokio::test]
async fn an_assigned_task_runs_stops_on_request_and_is_removed_when_unassigned() {
    let mut h = harness(Arc::default(), tempfile::tempdir().expect("dir")).await;
    h.events
        .send(assign(vec![task("t1", TaskState::Running)]))
        .await
        .expect("send");
    until(&mut h.statuses, "t1", TaskState::Preparing).await;
    let running = until(&mut h.statuses, "t1", TaskState::Running).await;
    assert_eq!(running.pid, 4242);
    assert!(h.state_file.exists(), "assignments are kept on disk");

    h.events
        .send(assign(vec![task("t1", TaskState::Shutdown)]))
        .await
        .expect("send");
    let stopped = until(&mut h.statuses, "t1", TaskState::Shutdown).await;
    assert_eq!(stopped.signal, 15);

    h.events.send(assign(vec![])).await.expect("send");
    for _ in 0..100 {
        if h.fake.calls().iter().any(|c| c == "remove t1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.fake.calls(),
        vec![
            "prepare t1",
            "start t1",
            "stop t1 1500ms",
            "release t1",
            "remove t1"
        ],
        "the network goes when the task ends, the container when it is unassigned"
    );
    h.shutdown.cancel();
    h.handle.await.expect("worker ends");
}

#[tokio::test]
async fn a_failing_container_and_a_rejected_image_are_reported_with_their_cause() {
    let fake: Arc<Fake> = Arc::default();
    let mut h = harness(fake.clone(), tempfile::tempdir().expect("dir")).await;
    h.events
        .send(assign(vec![task("t1", TaskState::Running)]))
        .await
        .expect("send");
    until(&mut h.statuses, "t1", TaskState::Running).await;
    fake.exit(
        "t1",
        Exit {
            code: 3,
            signal: 0,
            oom_killed: false,
        },
    );
    let failed = until(&mut h.statuses, "t1", TaskState::Failed).await;
    assert_eq!(failed.exit_code, 3);
    assert!(failed.err.contains("exited with code 3"), "{}", failed.err);

    *fake.fail_prepare.lock().expect("lock") = Some("unknown image registry.invalid/nope".into());
    h.events
        .send(assign(vec![
            task("t1", TaskState::Running),
            task("t2", TaskState::Running),
        ]))
        .await
        .expect("send");
    let rejected = until(&mut h.statuses, "t2", TaskState::Rejected).await;
    assert!(rejected.err.contains("pull image"), "{}", rejected.err);
    assert!(
        rejected.err.contains("registry.invalid/nope"),
        "{}",
        rejected.err
    );
    h.shutdown.cancel();
    h.handle.await.expect("worker ends");
}

#[tokio::test]
async fn after_a_restart_running_containers_are_adopted_and_left_running_on_shutdown() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("assignments.pb"),
        prost::Message::encode_to_vec(&pb::Assignments {
            tasks: vec![task("kept", TaskState::Running)],
            ..Default::default()
        }),
    )
    .expect("write state");
    let fake: Arc<Fake> = Arc::default();
    fake.existing.lock().expect("lock").push(Existing {
        task_id: "kept".into(),
        exit: None,
        pid: 777,
    });
    let h = harness(fake.clone(), dir).await;
    // No master has spoken yet: the worker knows from disk that `kept` should run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.shutdown.cancel();
    h.handle.await.expect("worker ends");
    assert!(
        fake.calls().is_empty(),
        "an adopted container is neither re-created nor stopped: {:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn a_corrupt_assignments_file_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("assignments.pb");
    std::fs::write(&path, b"\xff\xff\xff garbage").expect("write");
    let (st_tx, _st_rx) = mpsc::channel(1);
    let err = Worker::start(
        Arc::new(Fake::default()),
        st_tx,
        path.clone(),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("corrupt file is refused");
    assert!(err.to_string().contains("assignments.pb"), "{err}");
}

#[tokio::test]
async fn a_health_check_marks_the_task_healthy_then_unhealthy() {
    let fake: Arc<Fake> = Arc::default();
    let mut h = harness(fake.clone(), tempfile::tempdir().expect("dir")).await;
    let mut t = task("t1", TaskState::Running);
    if let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) {
        c.healthcheck = Some(pb::HealthCheck {
            test: vec!["CMD-SHELL".into(), "test -f /ready".into()],
            interval_ms: 30,
            timeout_ms: 20,
            retries: 2,
            start_period_ms: 0,
        });
    }
    h.events.send(assign(vec![t])).await.expect("send");
    let mut saw_healthy = false;
    let mut saw_unhealthy = false;
    for _ in 0..200 {
        let update = tokio::time::timeout(Duration::from_secs(5), h.statuses.recv())
            .await
            .expect("status in time")
            .expect("open");
        let health = update.status.expect("status").health();
        if health == pb::HealthState::Healthy && !saw_healthy {
            saw_healthy = true;
            *fake.health_code.lock().expect("lock") = 1;
        }
        if health == pb::HealthState::Unhealthy {
            saw_unhealthy = saw_healthy;
            break;
        }
    }
    assert!(
        saw_healthy && saw_unhealthy,
        "healthy first, then unhealthy after 2 failures"
    );
    assert!(
        fake.calls()
            .iter()
            .any(|c| c == "exec t1 /bin/sh -c test -f /ready"),
        "{:?}",
        fake.calls()
    );
    h.shutdown.cancel();
    h.handle.await.expect("worker ends");
}
