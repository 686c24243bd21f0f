//! How the orchestrator reads one task: where it is in its life (desired state against
//! observed state), whether it is up (running, and healthy if it has a health check),
//! and whether it is outdated against the service's current spec.

use skiff_proto::TaskStateExt;
use skiff_proto::v1::{self as pb, TaskState};
use skiff_scheduler::Requirements;

use crate::ids::generation;
use crate::nodes::Nodes;

/// A task's place in its life, as far as orchestration goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Wanted running and not ended: new, pending, assigned ... running.
    Live,
    /// Wanted running but ended: the restart policy has not decided yet.
    Ended,
    /// Ended and the restart policy said no (desired state COMPLETE): the slot is done.
    Retired,
    /// Asked to stop and still holding its node.
    Stopping,
    /// Asked to stop and stopped (or never placed): history.
    Gone,
}

/// One task with what the pass knows of it; actions update `phase` and `state` so
/// later steps of the same pass see their effect.
#[derive(Debug, Clone)]
pub(crate) struct View<'a> {
    pub t: &'a pb::Task,
    pub phase: Phase,
    pub state: TaskState,
    pub generation: u64,
    /// Its spec is not the service's current one (see [`is_outdated`]).
    pub dirty: bool,
    pub up: bool,
    /// When it ended (status time), for restart delays and windows.
    pub ended_at: i64,
    /// Ended because its node was lost, not by its own fault.
    pub orphaned: bool,
    /// Stopped because its node is drained: its replacement does not wait for it.
    pub drain_stop: bool,
}

impl<'a> View<'a> {
    /// `spec_version` is the service's: a task made from that very spec is current
    /// without comparing specs (a spec change always bumps the version).
    pub fn new(
        t: &'a pb::Task,
        spec: &pb::ServiceSpec,
        spec_version: u64,
        req: Option<&Requirements>,
        nodes: &Nodes<'_>,
        now_ms: i64,
    ) -> View<'a> {
        let state = state(t);
        let ts = t.status.as_ref().map_or(0, |s| s.timestamp_ms);
        View {
            t,
            phase: phase(t.desired_state(), state),
            state,
            generation: generation(&t.id),
            dirty: t.spec_version != spec_version && is_outdated(t, spec, req, nodes),
            up: is_up(t),
            ended_at: if ts > 0 { ts } else { now_ms },
            orphaned: state == TaskState::Orphaned,
            drain_stop: false,
        }
    }

    pub fn created_at(&self) -> i64 {
        self.t.meta.as_ref().map_or(0, |m| m.created_at_ms)
    }

    /// When it became what it is now (the status time): for a task that is up, when it
    /// came up.
    pub fn since(&self) -> i64 {
        self.t.status.as_ref().map_or(0, |s| s.timestamp_ms)
    }
}

pub(crate) fn state(t: &pb::Task) -> TaskState {
    t.status.as_ref().map_or(TaskState::New, |s| s.state())
}

pub(crate) fn phase(desired: TaskState, state: TaskState) -> Phase {
    let ended = state.is_terminal();
    if desired <= TaskState::Running {
        if ended { Phase::Ended } else { Phase::Live }
    } else if ended || state < TaskState::Assigned {
        if desired == TaskState::Complete && ended {
            Phase::Retired
        } else {
            Phase::Gone
        }
    } else {
        Phase::Stopping
    }
}

/// The spec asks for a health check (`["NONE"]` or an empty test asks for none).
pub fn has_healthcheck(spec: Option<&pb::ServiceSpec>) -> bool {
    spec.and_then(|s| s.container.as_ref())
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.first())
        .is_some_and(|kind| kind == "CMD" || kind == "CMD-SHELL")
}

/// Running, and healthy when the spec has a health check: the task serves.
pub fn is_up(t: &pb::Task) -> bool {
    let Some(s) = t.status.as_ref() else {
        return false;
    };
    s.state() == TaskState::Running
        && t.desired_state() <= TaskState::Running
        && (!has_healthcheck(t.spec.as_ref()) || s.health() == pb::HealthState::Healthy)
}

/// Whether the task must be replaced to run the service's current spec. Only what a
/// running task is made of counts (container, resources, restart policy, networks, host
/// ports, platforms): scaling, labels of the service or update settings restart
/// nothing. A change of constraints replaces a task only if its node no longer
/// satisfies them (Swarm does the same); a task not placed yet is replaced on any
/// placement change, so a fixed constraint frees a pending task.
pub fn is_outdated(
    t: &pb::Task,
    spec: &pb::ServiceSpec,
    req: Option<&Requirements>,
    nodes: &Nodes<'_>,
) -> bool {
    let Some(ts) = t.spec.as_ref() else {
        return true;
    };
    if ts.container != spec.container
        || ts.resources != spec.resources
        || ts.restart_policy != spec.restart_policy
        || ts.networks != spec.networks
        || skiff_scheduler::host_ports(ts) != skiff_scheduler::host_ports(spec)
    {
        return true;
    }
    if ts.placement == spec.placement {
        return false;
    }
    let platforms = |s: &pb::ServiceSpec| {
        s.placement
            .as_ref()
            .map(|p| p.platforms.clone())
            .unwrap_or_default()
    };
    if platforms(ts) != platforms(spec) {
        return true;
    }
    match (nodes.get(&t.node_id), req) {
        (Some(node), Some(req)) if state(t) >= TaskState::Assigned => {
            req.placement_check(node).is_err()
        }
        (_, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_desired_and_observed_state() {
        use TaskState::*;
        assert_eq!(phase(Running, New), Phase::Live);
        assert_eq!(phase(Running, Running), Phase::Live);
        assert_eq!(phase(Running, Failed), Phase::Ended);
        assert_eq!(phase(Running, Orphaned), Phase::Ended);
        assert_eq!(phase(Complete, Complete), Phase::Retired);
        assert_eq!(phase(Complete, Running), Phase::Stopping);
        assert_eq!(phase(Shutdown, Running), Phase::Stopping);
        assert_eq!(phase(Shutdown, Assigned), Phase::Stopping);
        assert_eq!(phase(Shutdown, Pending), Phase::Gone);
        assert_eq!(phase(Shutdown, Shutdown), Phase::Gone);
        assert_eq!(phase(Remove, Failed), Phase::Gone);
    }

    #[test]
    fn up_needs_health_when_there_is_a_check() {
        let mut spec = pb::ServiceSpec::default();
        let mut t = pb::Task {
            desired_state: TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: TaskState::Running as i32,
                ..Default::default()
            }),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        assert!(is_up(&t));
        spec.container = Some(pb::ContainerSpec {
            healthcheck: Some(pb::HealthCheck {
                test: vec!["CMD".into(), "true".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        t.spec = Some(spec.clone());
        assert!(!is_up(&t));
        t.status.as_mut().expect("status").health = pb::HealthState::Healthy as i32;
        assert!(is_up(&t));
        spec.container
            .as_mut()
            .expect("c")
            .healthcheck
            .as_mut()
            .expect("hc")
            .test = vec!["NONE".into()];
        t.spec = Some(spec);
        t.status.as_mut().expect("status").health = pb::HealthState::None as i32;
        assert!(is_up(&t));
    }
}
