//! `depends_on` inside a project, honoured on the cluster (Swarm ignores it): a service
//! gets its first tasks only once every dependency meets its condition.
//! - `service_started`: every desired task of the dependency is running;
//! - `service_healthy`: ... running and healthy (running, if it has no health check);
//! - `service_completed_successfully`: every slot's newest task exited 0.
//!
//! The gate holds back only a service that has no task yet, as compose does at `up`:
//! once started, a service is not torn down or held back when a dependency later fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use skiff_proto::v1::{self as pb, TaskState, dependency::Condition};

use crate::ids::generation;
use crate::nodes::{Nodes, accepts_tasks};
use crate::view::{is_up, state};

/// Whether a service's first tasks may be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Held back; the text says by what, for people.
    Waiting(String),
}

/// The gate of every service in `services`, keyed by service id. `tasks` maps a service
/// id to its tasks.
pub fn gates(
    services: &[pb::Service],
    tasks: &HashMap<&str, Vec<&pb::Task>>,
    nodes: &Nodes<'_>,
) -> HashMap<String, Gate> {
    let by_name: HashMap<(&str, &str), &pb::Service> = services
        .iter()
        .filter_map(|s| {
            s.spec
                .as_ref()
                .map(|spec| ((spec.project.as_str(), spec.name.as_str()), s))
        })
        .collect();
    let mut out = HashMap::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let has_tasks = tasks.get(svc.id.as_str()).is_some_and(|t| !t.is_empty());
        let gate = if spec.depends_on.is_empty() || has_tasks {
            Gate::Open
        } else if let Some(cycle) = cycle_from(spec, &by_name) {
            Gate::Waiting(format!("dependency cycle: {}", cycle.join(" -> ")))
        } else {
            spec.depends_on
                .iter()
                .find_map(|dep| {
                    let Some(d) = by_name.get(&(spec.project.as_str(), dep.service.as_str()))
                    else {
                        return Some(format!(
                            "waiting for {}: no such service in project {}",
                            dep.service, spec.project
                        ));
                    };
                    let empty = Vec::new();
                    let dtasks = tasks.get(d.id.as_str()).unwrap_or(&empty);
                    unmet(d, dtasks, dep.condition(), nodes)
                        .map(|progress| format!("waiting for {} {progress}", dep.service))
                })
                .map_or(Gate::Open, Gate::Waiting)
        };
        out.insert(svc.id.clone(), gate);
    }
    out
}

/// `None` if `dep` meets `condition`, else how far it got ("to be healthy (1/3)").
fn unmet(
    dep: &pb::Service,
    tasks: &[&pb::Task],
    condition: Condition,
    nodes: &Nodes<'_>,
) -> Option<String> {
    let spec = dep.spec.as_ref()?;
    let desired = desired_count(spec, nodes);
    // The newest task of each slot (global: of each node).
    let global = matches!(spec.mode, Some(pb::service_spec::Mode::Global(_)));
    let mut newest: BTreeMap<(u64, &str), &pb::Task> = BTreeMap::new();
    for t in tasks {
        let key = if global {
            (0, t.node_id.as_str())
        } else {
            (t.slot, "")
        };
        let e = newest.entry(key).or_insert(t);
        if generation(&t.id) > generation(&e.id) {
            *e = t;
        }
    }
    let (done, what) = match condition {
        Condition::ServiceStarted => (
            newest
                .values()
                .filter(|t| {
                    state(t) == TaskState::Running && t.desired_state() <= TaskState::Running
                })
                .count(),
            "to start",
        ),
        Condition::ServiceHealthy => (
            newest.values().filter(|t| is_up(t)).count(),
            "to be healthy",
        ),
        Condition::ServiceCompletedSuccessfully => (
            newest
                .values()
                .filter(|t| {
                    state(t) == TaskState::Complete
                        && t.status.as_ref().is_some_and(|s| s.exit_code == 0)
                })
                .count(),
            "to complete successfully",
        ),
    };
    (done < desired).then(|| format!("{what} ({done}/{desired})"))
}

/// How many tasks the service wants: its replicas, or its eligible nodes.
pub fn desired_count(spec: &pb::ServiceSpec, nodes: &Nodes<'_>) -> usize {
    match &spec.mode {
        Some(pb::service_spec::Mode::Global(_)) => {
            let Ok(req) = skiff_scheduler::Requirements::from_spec(spec) else {
                return 0;
            };
            nodes
                .list()
                .iter()
                .filter(|n| accepts_tasks(n) && req.placement_check(n).is_ok())
                .count()
        }
        Some(pb::service_spec::Mode::Replicated(r)) => r.replicas as usize,
        None => 0,
    }
}

/// A path of `depends_on` edges from `spec` back to itself, if there is one.
fn cycle_from(
    spec: &pb::ServiceSpec,
    by_name: &HashMap<(&str, &str), &pb::Service>,
) -> Option<Vec<String>> {
    fn walk<'s>(
        name: &'s str,
        project: &str,
        start: &str,
        by_name: &HashMap<(&str, &str), &'s pb::Service>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let Some(svc) = by_name.get(&(project, name)) else {
            return false;
        };
        let Some(spec) = svc.spec.as_ref() else {
            return false;
        };
        for dep in &spec.depends_on {
            path.push(dep.service.clone());
            if dep.service == start {
                return true;
            }
            if seen.insert(dep.service.clone())
                && walk(&dep.service, project, start, by_name, path, seen)
            {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![spec.name.clone()];
    let mut seen = BTreeSet::new();
    walk(
        &spec.name,
        &spec.project,
        &spec.name,
        by_name,
        &mut path,
        &mut seen,
    )
    .then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(id: &str, name: &str, deps: &[(&str, Condition)], replicas: u64) -> pb::Service {
        pb::Service {
            id: id.into(),
            spec: Some(pb::ServiceSpec {
                name: name.into(),
                project: "app".into(),
                mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
                    replicas,
                })),
                depends_on: deps
                    .iter()
                    .map(|(s, c)| pb::Dependency {
                        service: (*s).into(),
                        condition: *c as i32,
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(
        service: &str,
        slot: u64,
        state: TaskState,
        health: pb::HealthState,
        exit: i32,
        hc: bool,
    ) -> pb::Task {
        let mut spec = pb::ServiceSpec::default();
        if hc {
            spec.container = Some(pb::ContainerSpec {
                healthcheck: Some(pb::HealthCheck {
                    test: vec!["CMD".into(), "true".into()],
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        pb::Task {
            id: format!("{service}.{slot}.1"),
            service_id: service.into(),
            slot,
            spec: Some(spec),
            desired_state: TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: state as i32,
                health: health as i32,
                exit_code: exit,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn gate_of(services: &[pb::Service], tasks: &[pb::Task], id: &str) -> Gate {
        let mut by: HashMap<&str, Vec<&pb::Task>> = HashMap::new();
        for t in tasks {
            by.entry(t.service_id.as_str()).or_default().push(t);
        }
        let nodes = Nodes::new(&[]);
        gates(services, &by, &nodes).remove(id).expect("gate")
    }

    #[test]
    fn service_started_waits_for_every_replica_running() {
        let services = vec![
            service("db", "db", &[], 2),
            service("web", "web", &[("db", Condition::ServiceStarted)], 1),
        ];
        let one = vec![
            task("db", 1, TaskState::Running, pb::HealthState::None, 0, false),
            task(
                "db",
                2,
                TaskState::Starting,
                pb::HealthState::None,
                0,
                false,
            ),
        ];
        assert_eq!(
            gate_of(&services, &one, "web"),
            Gate::Waiting("waiting for db to start (1/2)".into())
        );
        let both = vec![
            task("db", 1, TaskState::Running, pb::HealthState::None, 0, false),
            task("db", 2, TaskState::Running, pb::HealthState::None, 0, false),
        ];
        assert_eq!(gate_of(&services, &both, "web"), Gate::Open);
    }

    #[test]
    fn service_healthy_needs_the_health_check_to_pass() {
        let services = vec![
            service("db", "db", &[], 1),
            service("web", "web", &[("db", Condition::ServiceHealthy)], 1),
        ];
        let starting = vec![task(
            "db",
            1,
            TaskState::Running,
            pb::HealthState::Starting,
            0,
            true,
        )];
        assert_eq!(
            gate_of(&services, &starting, "web"),
            Gate::Waiting("waiting for db to be healthy (0/1)".into())
        );
        let healthy = vec![task(
            "db",
            1,
            TaskState::Running,
            pb::HealthState::Healthy,
            0,
            true,
        )];
        assert_eq!(gate_of(&services, &healthy, "web"), Gate::Open);
    }

    #[test]
    fn completed_successfully_needs_exit_zero() {
        let services = vec![
            service("mig", "migrate", &[], 1),
            service(
                "web",
                "web",
                &[("migrate", Condition::ServiceCompletedSuccessfully)],
                1,
            ),
        ];
        let failed = vec![task(
            "mig",
            1,
            TaskState::Failed,
            pb::HealthState::None,
            1,
            false,
        )];
        assert!(matches!(
            gate_of(&services, &failed, "web"),
            Gate::Waiting(_)
        ));
        let running = vec![task(
            "mig",
            1,
            TaskState::Running,
            pb::HealthState::None,
            0,
            false,
        )];
        assert!(matches!(
            gate_of(&services, &running, "web"),
            Gate::Waiting(_)
        ));
        let done = vec![task(
            "mig",
            1,
            TaskState::Complete,
            pb::HealthState::None,
            0,
            false,
        )];
        assert_eq!(gate_of(&services, &done, "web"), Gate::Open);
    }

    #[test]
    fn a_started_service_is_never_held_back_again() {
        let services = vec![
            service("db", "db", &[], 1),
            service("web", "web", &[("db", Condition::ServiceHealthy)], 1),
        ];
        let tasks = vec![task(
            "web",
            1,
            TaskState::Running,
            pb::HealthState::None,
            0,
            false,
        )];
        assert_eq!(gate_of(&services, &tasks, "web"), Gate::Open);
    }

    #[test]
    fn missing_dependencies_and_cycles_are_named() {
        let services = vec![service(
            "web",
            "web",
            &[("cache", Condition::ServiceStarted)],
            1,
        )];
        assert_eq!(
            gate_of(&services, &[], "web"),
            Gate::Waiting("waiting for cache: no such service in project app".into())
        );
        let services = vec![
            service("a", "a", &[("b", Condition::ServiceStarted)], 1),
            service("b", "b", &[("c", Condition::ServiceStarted)], 1),
            service("c", "c", &[("a", Condition::ServiceStarted)], 1),
        ];
        assert_eq!(
            gate_of(&services, &[], "a"),
            Gate::Waiting("dependency cycle: a -> b -> c -> a".into())
        );
    }
}
