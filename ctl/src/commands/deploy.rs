//! `skiffctl deploy`: say what will change (a dry run against the cluster's current
//! state), apply it, then follow the project until every service runs as many healthy
//! replicas as asked, or something fails. Progress lines are printed when they change,
//! so the output reads the same on a terminal and in a CI log. The follow is driven by
//! the cluster's watch stream (tasks and services changed after the deploy's revision):
//! a change is looked at within `SETTLE` of happening instead of at the next fixed poll;
//! without a stream (or after it breaks) it polls every `POLL`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skiff_proto::TaskStateExt;
use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;

use crate::commands::CtlError;
use crate::commands::services::kind;

type Client = ClusterApiClient<Channel>;

/// The check's period when no change wakes it (also the fallback poll).
const POLL: Duration = Duration::from_millis(500);
/// After a change, further changes arriving within this are taken in the same check.
const SETTLE: Duration = Duration::from_millis(10);
/// The longest a burst of changes delays the next check.
const SETTLE_MAX: Duration = Duration::from_millis(100);

type Events = tonic::Streaming<pb::WatchEvent>;

/// Watches tasks and services changed after `revision`; `None` if the cluster will not.
async fn watch_changes(client: &Client, revision: u64) -> Option<Events> {
    let kinds = vec![pb::ObjectKind::Task as i32, pb::ObjectKind::Service as i32];
    let request = pb::WatchRequest {
        after_revision: revision,
        kinds,
    };
    match client.clone().watch(request).await {
        Ok(stream) => Some(stream.into_inner()),
        // An older master, or history already gone: the follow polls instead.
        Err(_) => None,
    }
}

/// Waits until something changed (and the burst it belongs to settled) or `POLL`
/// passed. A broken stream is dropped: the follow goes on by polling.
async fn next_change<S>(events: &mut Option<S>)
where
    S: Stream<Item = Result<pb::WatchEvent, tonic::Status>> + Unpin,
{
    let Some(stream) = events.as_mut() else {
        tokio::time::sleep(POLL).await;
        return;
    };
    let (mut wait, mut settle_until) = (POLL, None);
    loop {
        match tokio::time::timeout(wait, stream.next()).await {
            // Quiet for `wait`: look now.
            Err(_) => return,
            Ok(Some(Ok(_))) => {
                let now = tokio::time::Instant::now();
                let until = *settle_until.get_or_insert(now + SETTLE_MAX);
                if now >= until {
                    return;
                }
                wait = SETTLE.min(until - now);
            }
            Ok(None | Some(Err(_))) => {
                *events = None;
                return;
            }
        }
    }
}

/// How `deploy` behaves after the changes are committed.
#[derive(Clone, Copy, Debug)]
pub struct Follow {
    /// Return as soon as the cluster accepted the deployment.
    pub detach: bool,
    /// Give up (exit 1) if not converged by then.
    pub timeout: Duration,
}

/// Applies `request` and, unless detached, follows it to convergence.
pub async fn deploy(
    client: &mut Client,
    request: pb::DeployRequest,
    follow: Follow,
) -> Result<(), CtlError> {
    let project = request.project.clone();
    let plan = client
        .deploy(pb::DeployRequest {
            dry_run: true,
            ..request.clone()
        })
        .await?
        .into_inner();
    let changing: Vec<&pb::Change> = plan
        .changes
        .iter()
        .filter(|c| c.action() != pb::change::Action::Unchanged)
        .collect();
    if changing.is_empty() {
        println!("project {project}: up to date, nothing to change");
        return Ok(());
    }
    println!("project {project}:");
    for change in &plan.changes {
        print_change(change);
    }
    let started = Instant::now();
    let applied = client.deploy(request).await?.into_inner();
    println!("committed at revision {}", applied.revision);
    if follow.detach {
        return Ok(());
    }
    let since_ms = crate::output::now_ms() - 1000;
    let mut events = watch_changes(client, applied.revision).await;
    let mut last_lines: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let progress = snapshot(client, &project, since_ms).await?;
        for (name, line) in &progress.lines {
            if last_lines.get(name) != Some(line) {
                println!("  {name}: {line}");
            }
        }
        last_lines = progress.lines.clone();
        if let Some(failure) = progress.failure {
            return Err(CtlError::Cluster(format!(
                "deploy of {project} failed: {failure}"
            )));
        }
        if progress.converged {
            println!(
                "project {project} converged in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > follow.timeout {
            return Err(CtlError::Cluster(format!(
                "project {project} did not converge within {}s (it keeps trying; `skiffctl ps -p {project}` shows where it stands)",
                follow.timeout.as_secs()
            )));
        }
        next_change(&mut events).await;
    }
}

fn print_change(change: &pb::Change) {
    use pb::change::Action;
    let sign = match change.action() {
        Action::Unchanged => "=",
        Action::Create => "+",
        Action::Update => "~",
        Action::Remove => "-",
    };
    println!("  {sign} {} {}", kind(change.kind()), change.name);
    for d in &change.details {
        println!("      {d}");
    }
}

/// Where a project stands: a line per service, and whether it is done or failed.
#[derive(Debug, Default, PartialEq)]
pub struct Progress {
    pub lines: BTreeMap<String, String>,
    pub converged: bool,
    pub failure: Option<String>,
}

async fn snapshot(client: &mut Client, project: &str, since_ms: i64) -> Result<Progress, CtlError> {
    let services = client
        .list_services(pb::ListServicesRequest {
            project: project.to_owned(),
            read: None,
        })
        .await?
        .into_inner()
        .services;
    let tasks = client
        .list_tasks(pb::ListTasksRequest {
            project: project.to_owned(),
            include_history: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks;
    Ok(progress(&services, &tasks, since_ms))
}

/// Pure: the progress of `services` given their `tasks`, counting failures that
/// happened after `since_ms`.
pub fn progress(services: &[pb::ServiceSummary], tasks: &[pb::Task], since_ms: i64) -> Progress {
    use pb::update_status::State as Update;
    let mut out = Progress {
        converged: true,
        ..Default::default()
    };
    for summary in services {
        let Some(svc) = &summary.service else {
            continue;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let mine: Vec<&pb::Task> = tasks.iter().filter(|t| t.service_id == svc.id).collect();
        let live: Vec<&pb::Task> = mine
            .iter()
            .copied()
            .filter(|t| t.desired_state() <= pb::TaskState::Running)
            .collect();
        let running = live
            .iter()
            .filter(|t| runs_current_spec(t, svc))
            .filter(|t| {
                let s = status_of(t);
                s.state() == pb::TaskState::Running
                    && !matches!(
                        s.health(),
                        pb::HealthState::Starting | pb::HealthState::Unhealthy
                    )
            })
            .count() as u64;
        let desired = summary.desired;
        let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut reasons: Vec<String> = Vec::new();
        for t in &live {
            let s = status_of(t);
            if s.state() != pb::TaskState::Running {
                *states.entry(s.state().label()).or_default() += 1;
                if s.state() == pb::TaskState::Pending && !s.message.is_empty() {
                    reasons.push(s.message.clone());
                }
            }
        }
        let recent_failures: Vec<String> = mine
            .iter()
            .filter(|t| {
                let s = status_of(t);
                matches!(s.state(), pb::TaskState::Failed | pb::TaskState::Rejected)
                    && s.timestamp_ms >= since_ms
            })
            .map(|t| {
                let s = status_of(t);
                format!(
                    "{}.{}: {}",
                    spec.name,
                    t.slot,
                    if s.err.is_empty() { &s.message } else { &s.err }
                )
            })
            .collect();
        // Only an update this deploy started counts: the status of an earlier one
        // (say, rolled back an hour ago) stays on the service until the next begins.
        let update_status = svc
            .update_status
            .as_ref()
            .filter(|u| u.started_at_ms >= since_ms);
        let update = update_status.map(|u| u.state()).unwrap_or(Update::None);
        let mut line = format!("{running}/{desired} running");
        for (state, n) in &states {
            line.push_str(&format!(", {n} {state}"));
        }
        if let Some(r) = reasons.first() {
            line.push_str(&format!(" ({r})"));
        }
        match update {
            Update::Updating => line.push_str(", updating"),
            Update::RollbackStarted => line.push_str(", rolling back"),
            _ => {}
        }
        if let Some(f) = recent_failures.last() {
            line.push_str(&format!("; last failure {f}"));
        }
        out.lines.insert(spec.name.clone(), line);

        let settled =
            running == desired && !matches!(update, Update::Updating | Update::RollbackStarted);
        if !settled {
            out.converged = false;
        }
        let failure = match update {
            Update::Paused | Update::RollbackPaused => Some(format!(
                "{}: update paused: {}",
                spec.name,
                update_status.map(|u| u.message.as_str()).unwrap_or("")
            )),
            Update::RollbackCompleted => Some(format!(
                "{}: update failed and was rolled back: {}",
                spec.name,
                update_status.map(|u| u.message.as_str()).unwrap_or("")
            )),
            _ => None,
        };
        // A service that can't get a single replica going and has failed at least as
        // often as it wants replicas is not going to converge on its own.
        let hopeless =
            running == 0 && desired > 0 && recent_failures.len() as u64 >= desired.max(3);
        if let Some(f) = failure {
            out.failure.get_or_insert(f);
        } else if hopeless {
            out.failure.get_or_insert(format!(
                "{}: {} failures, none running; last: {}",
                spec.name,
                recent_failures.len(),
                recent_failures.last().map(String::as_str).unwrap_or("")
            ));
        }
    }
    out
}

/// Whether `t` runs what `svc` asks for now. A scale bumps the spec version without
/// touching running tasks (nothing they run changed), so a task of an older version
/// counts when its container, resources, restart policy and networks are the same (the
/// orchestrator replaces a task only when one of those changed, or its node no longer
/// fits the placement).
fn runs_current_spec(t: &pb::Task, svc: &pb::Service) -> bool {
    if t.spec_version == svc.spec_version {
        return true;
    }
    match (&t.spec, &svc.spec) {
        (Some(ts), Some(ss)) => {
            ts.container == ss.container
                && ts.resources == ss.resources
                && ts.restart_policy == ss.restart_policy
                && ts.networks == ss.networks
        }
        _ => false,
    }
}

fn status_of(t: &pb::Task) -> pb::TaskStatus {
    t.status.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Item = Result<pb::WatchEvent, tonic::Status>;
    type Fed = tokio_stream::wrappers::ReceiverStream<Item>;

    /// A watch stream the test feeds by hand.
    fn feed() -> (tokio::sync::mpsc::Sender<Item>, Option<Fed>) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        (tx, Some(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_stream_or_changes_the_follow_looks_every_poll() {
        let mut none: Option<Fed> = None;
        let t = tokio::time::Instant::now();
        next_change(&mut none).await;
        assert_eq!(t.elapsed(), POLL);

        let (_tx, mut events) = feed();
        let t = tokio::time::Instant::now();
        next_change(&mut events).await;
        assert_eq!(t.elapsed(), POLL);
        assert!(events.is_some(), "a quiet stream is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_looked_at_once_its_burst_settles() {
        let (tx, mut events) = feed();
        let t = tokio::time::Instant::now();
        for _ in 0..3 {
            tx.send(Ok(pb::WatchEvent::default())).await.expect("send");
        }
        next_change(&mut events).await;
        assert_eq!(
            t.elapsed(),
            SETTLE,
            "three events at once, then quiet for SETTLE"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_of_changes_delays_the_look_by_settle_max_at_most() {
        let (tx, mut events) = feed();
        let producer = tokio::spawn(async move {
            while tx.send(Ok(pb::WatchEvent::default())).await.is_ok() {
                tokio::time::sleep(SETTLE / 2).await;
            }
        });
        let t = tokio::time::Instant::now();
        next_change(&mut events).await;
        assert!(t.elapsed() <= SETTLE_MAX, "{:?}", t.elapsed());
        assert!(t.elapsed() >= SETTLE_MAX - SETTLE, "{:?}", t.elapsed());
        producer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_stream_is_dropped_and_the_follow_polls() {
        let (tx, mut events) = feed();
        tx.send(Err(tonic::Status::unavailable("master went away")))
            .await
            .expect("send");
        next_change(&mut events).await;
        assert!(events.is_none());

        let (tx, mut events) = feed();
        drop(tx);
        let t = tokio::time::Instant::now();
        next_change(&mut events).await;
        assert!(events.is_none(), "an ended stream is dropped");
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    fn service(id: &str, name: &str, version: u64, desired: u64) -> pb::ServiceSummary {
        pb::ServiceSummary {
            service: Some(pb::Service {
                id: id.into(),
                spec: Some(pb::ServiceSpec {
                    name: name.into(),
                    ..Default::default()
                }),
                spec_version: version,
                ..Default::default()
            }),
            running: 0,
            desired,
        }
    }

    fn task(
        svc: &str,
        slot: u64,
        version: u64,
        state: pb::TaskState,
        ts: i64,
        err: &str,
    ) -> pb::Task {
        pb::Task {
            id: format!("{svc}-{slot}-{ts}"),
            service_id: svc.into(),
            slot,
            spec_version: version,
            desired_state: pb::TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: state as i32,
                timestamp_ms: ts,
                err: err.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn converged_when_every_service_runs_its_replicas_of_the_current_spec() {
        let services = [service("s1", "web", 2, 2)];
        let tasks = [
            task("s1", 1, 2, pb::TaskState::Running, 10, ""),
            task("s1", 2, 1, pb::TaskState::Running, 10, ""),
        ];
        let p = progress(&services, &tasks, 0);
        assert!(!p.converged, "an old-spec replica does not count");
        assert_eq!(p.lines["web"], "1/2 running");
        let tasks = [
            task("s1", 1, 2, pb::TaskState::Running, 10, ""),
            task("s1", 2, 2, pb::TaskState::Running, 10, ""),
        ];
        assert!(progress(&services, &tasks, 0).converged);
    }

    #[test]
    fn scaling_up_counts_the_replicas_that_kept_running() {
        let spec = pb::ServiceSpec {
            name: "web".into(),
            container: Some(pb::ContainerSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut s = service("s1", "web", 3, 2);
        if let Some(svc) = s.service.as_mut() {
            svc.spec = Some(spec.clone());
        }
        let mut kept = task("s1", 1, 2, pb::TaskState::Running, 10, "");
        kept.spec = Some(spec.clone());
        let mut added = task("s1", 2, 3, pb::TaskState::Running, 10, "");
        added.spec = Some(spec.clone());
        assert!(progress(std::slice::from_ref(&s), &[kept.clone(), added], 0).converged);
        // Another image is another spec: the old task does not count.
        if let Some(c) = kept.spec.as_mut().and_then(|sp| sp.container.as_mut()) {
            c.image = "busybox:old".into();
        }
        let p = progress(&[s], &[kept], 0);
        assert_eq!(p.lines["web"], "0/2 running");
    }

    #[test]
    fn pending_reasons_and_failures_show_and_repeated_failures_end_the_wait() {
        let services = [service("s1", "db", 1, 1)];
        let mut pending = task("s1", 1, 1, pb::TaskState::Pending, 10, "");
        if let Some(s) = pending.status.as_mut() {
            s.message = "no suitable node: insufficient memory on 3 nodes".into();
        }
        let p = progress(&services, &[pending], 0);
        assert!(
            p.lines["db"].contains("insufficient memory on 3 nodes"),
            "{}",
            p.lines["db"]
        );
        assert!(p.failure.is_none());

        let failed: Vec<pb::Task> = (0..3)
            .map(|i| {
                task(
                    "s1",
                    1,
                    1,
                    pb::TaskState::Failed,
                    100 + i,
                    "exited with code 1",
                )
            })
            .collect();
        let p = progress(&services, &failed, 50);
        let failure = p.failure.expect("three failures and nothing running");
        assert!(failure.contains("exited with code 1"), "{failure}");
        assert!(
            progress(&services, &failed, 1000).failure.is_none(),
            "old failures don't count"
        );
    }

    #[test]
    fn a_rolled_back_update_is_a_failed_deploy() {
        let mut s = service("s1", "web", 3, 1);
        if let Some(svc) = s.service.as_mut() {
            svc.update_status = Some(pb::UpdateStatus {
                state: pb::update_status::State::RollbackCompleted as i32,
                message: "health check failed on web.1".into(),
                started_at_ms: 500,
                ..Default::default()
            });
        }
        let p = progress(std::slice::from_ref(&s), &[], 100);
        assert!(p.failure.expect("failed").contains("rolled back"));
        // The same status seen by a later deploy is history, not this deploy's failure.
        let later = progress(&[s], &[], 1000);
        assert!(later.failure.is_none(), "{:?}", later.failure);
    }
}
