//! The worker's pure core: what to do to bring the containers on this node in line with
//! the tasks the masters assigned. Level-triggered: it looks at the whole desired set
//! and the whole observed set every time, so a lost message or an agent restart can't
//! leave a stale container running.

use std::collections::{BTreeMap, BTreeSet};

use skiff_proto::TaskStateExt;
use skiff_proto::v1::{self as pb, TaskState};

/// What the agent knows of one task it ran or runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub task_id: String,
    /// Where the task got to on this node.
    pub state: TaskState,
    /// A container exists for it (running or exited, not yet deleted).
    pub has_container: bool,
}

/// One step toward the desired state.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Pull the image, set up the network, create and start the container.
    Start(Box<pb::Task>),
    /// Stop the running container (stop signal, then SIGKILL after the grace period).
    Stop { task_id: String, grace_ms: u64 },
    /// Delete the container and its network attachment: the task is no longer
    /// assigned, and has ended.
    Remove { task_id: String },
    /// Tell the masters a task that never started here is shut down: it was called off
    /// before this agent got to it, and would otherwise hold its place (and its
    /// resources in the scheduler) forever.
    ReportShutdown { task_id: String },
}

/// Compares `desired` (the node's full assignment) with `observed` (what this agent
/// runs or ran) and returns the actions that close the gap, in a stable order: stops
/// first (free resources), then starts, then removals, then reports.
pub fn reconcile(desired: &[pb::Task], observed: &BTreeMap<String, Observed>) -> Vec<Action> {
    let mut reports = Vec::new();
    let mut stops = Vec::new();
    let mut starts = Vec::new();
    let mut removes = Vec::new();
    let mut assigned = BTreeSet::new();

    for task in desired {
        assigned.insert(task.id.as_str());
        let want = task.desired_state();
        let seen = observed.get(&task.id);
        let wants_running = want <= TaskState::Running;
        match seen {
            None if wants_running => starts.push(Action::Start(Box::new(task.clone()))),
            // Called off before it started here, and the masters have not heard of an
            // end yet (once they have, the assignment carries it and this stops).
            None if task
                .status
                .as_ref()
                .is_none_or(|s| !s.state().is_terminal()) =>
            {
                reports.push(Action::ReportShutdown {
                    task_id: task.id.clone(),
                });
            }
            // Still wanted below running: stop it. A task that ended stays ended: the
            // orchestrator makes a new task to restart it.
            Some(obs) if !wants_running && obs.state <= TaskState::Running => {
                stops.push(Action::Stop {
                    task_id: task.id.clone(),
                    grace_ms: grace_ms(task),
                });
            }
            _ => {}
        }
    }

    for (id, obs) in observed {
        if assigned.contains(id.as_str()) {
            continue;
        }
        if !obs.state.is_terminal() {
            // Not ours any more (removed, or moved while we were cut off): stop it now,
            // remove it once stopped.
            stops.push(Action::Stop {
                task_id: id.clone(),
                grace_ms: DEFAULT_GRACE_MS,
            });
        } else if obs.has_container {
            removes.push(Action::Remove {
                task_id: id.clone(),
            });
        }
    }

    stops
        .into_iter()
        .chain(starts)
        .chain(removes)
        .chain(reports)
        .collect()
}

/// Docker's default stop timeout.
pub const DEFAULT_GRACE_MS: u64 = 10_000;

pub(crate) fn grace_ms(task: &pb::Task) -> u64 {
    task.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.stop_grace_period_ms)
        .filter(|g| *g > 0)
        .unwrap_or(DEFAULT_GRACE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, desired: TaskState) -> pb::Task {
        pb::Task {
            id: id.into(),
            desired_state: desired as i32,
            spec: Some(pb::ServiceSpec {
                container: Some(pb::ContainerSpec {
                    image: "busybox".into(),
                    stop_grace_period_ms: 3_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn seen(id: &str, state: TaskState) -> (String, Observed) {
        (
            id.into(),
            Observed {
                task_id: id.into(),
                state,
                has_container: true,
            },
        )
    }

    #[test]
    fn a_new_assignment_is_started() {
        let actions = reconcile(&[task("t1", TaskState::Running)], &BTreeMap::new());
        assert!(matches!(&actions[..], [Action::Start(t)] if t.id == "t1"));
    }

    #[test]
    fn a_running_task_that_stays_assigned_needs_nothing() {
        let observed = BTreeMap::from([seen("t1", TaskState::Running)]);
        assert!(reconcile(&[task("t1", TaskState::Running)], &observed).is_empty());
    }

    #[test]
    fn a_task_asked_to_shut_down_is_stopped_with_its_grace_period() {
        let observed = BTreeMap::from([seen("t1", TaskState::Running)]);
        let actions = reconcile(&[task("t1", TaskState::Shutdown)], &observed);
        assert_eq!(
            actions,
            vec![Action::Stop {
                task_id: "t1".into(),
                grace_ms: 3_000
            }]
        );
    }

    #[test]
    fn a_task_that_failed_is_not_restarted_by_the_agent() {
        let observed = BTreeMap::from([seen("t1", TaskState::Failed)]);
        assert!(reconcile(&[task("t1", TaskState::Running)], &observed).is_empty());
    }

    #[test]
    fn an_unassigned_running_container_is_stopped_then_removed() {
        let running = BTreeMap::from([seen("old", TaskState::Running)]);
        assert_eq!(
            reconcile(&[], &running),
            vec![Action::Stop {
                task_id: "old".into(),
                grace_ms: DEFAULT_GRACE_MS
            }]
        );
        let exited = BTreeMap::from([seen("old", TaskState::Shutdown)]);
        assert_eq!(
            reconcile(&[], &exited),
            vec![Action::Remove {
                task_id: "old".into()
            }]
        );
    }

    #[test]
    fn stops_come_before_starts() {
        let observed = BTreeMap::from([seen("old", TaskState::Running)]);
        let actions = reconcile(&[task("new", TaskState::Running)], &observed);
        assert!(matches!(actions[0], Action::Stop { .. }));
        assert!(matches!(actions[1], Action::Start(_)));
    }

    #[test]
    fn a_task_called_off_before_it_started_is_reported_shut_down_once_the_masters_know() {
        let mut called_off = task("t1", TaskState::Shutdown);
        assert_eq!(
            reconcile(std::slice::from_ref(&called_off), &BTreeMap::new()),
            vec![Action::ReportShutdown {
                task_id: "t1".into()
            }]
        );
        called_off.status = Some(pb::TaskStatus {
            state: TaskState::Shutdown as i32,
            ..Default::default()
        });
        assert!(reconcile(&[called_off], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_task_still_preparing_counts_as_started() {
        let observed = BTreeMap::from([(
            "t1".to_string(),
            Observed {
                task_id: "t1".into(),
                state: TaskState::Preparing,
                has_container: false,
            },
        )]);
        assert!(reconcile(&[task("t1", TaskState::Running)], &observed).is_empty());
    }
}
