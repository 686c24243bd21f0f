//! Actions into store commands: one `pb::Command` per service (a transaction), each
//! mutation a compare-and-swap on the version the orchestrator read. Several actions on
//! one object merge into one put. If the store refuses a command (someone wrote in
//! between), the loop re-reads and reconciles again: nothing is lost, since the
//! orchestrator is level-triggered.

use std::collections::{BTreeMap, HashMap};

use skiff_proto::v1 as pb;

use crate::action::Action;

/// An action that names an object the caller did not pass in: the actions and the
/// objects must come from the same read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("action names task {task} which is not among the tasks read")]
    UnknownTask { task: String },
    #[error("action names service {service} which is not among the services read")]
    UnknownService { service: String },
}

#[derive(Default)]
struct Writes {
    service: Option<pb::Service>,
    tasks: BTreeMap<String, pb::Task>,
    created: Vec<pb::Task>,
    deleted: Vec<(String, u64)>,
}

fn version(meta: Option<&pb::Meta>) -> u64 {
    meta.map_or(0, |m| m.version)
}

/// The store commands for `actions`, given the `services` and `tasks` they were computed
/// from (the same read). `now_ms` stamps status changes made here (orphaned, failed).
pub fn commands(
    actions: &[Action],
    services: &[pb::Service],
    tasks: &[pb::Task],
    now_ms: i64,
) -> Result<Vec<pb::Command>, CommandError> {
    let task_by_id: HashMap<&str, &pb::Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let service_by_id: HashMap<&str, &pb::Service> =
        services.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut by_service: BTreeMap<String, Writes> = BTreeMap::new();

    let task_mut = |w: &mut Writes, id: &str| -> Result<(), CommandError> {
        if !w.tasks.contains_key(id) {
            let t = task_by_id
                .get(id)
                .ok_or_else(|| CommandError::UnknownTask { task: id.into() })?;
            w.tasks.insert(id.to_owned(), (*t).clone());
        }
        Ok(())
    };
    let service_mut = |w: &mut Writes, id: &str| -> Result<(), CommandError> {
        if w.service.is_none() {
            let s = service_by_id
                .get(id)
                .ok_or_else(|| CommandError::UnknownService { service: id.into() })?;
            w.service = Some((*s).clone());
        }
        Ok(())
    };

    for action in actions {
        let Some(sid) = action.service_id() else {
            continue;
        };
        if !action.is_write() {
            continue;
        }
        let w = by_service.entry(sid.to_owned()).or_default();
        match action {
            Action::CreateTask(t) => w.created.push((**t).clone()),
            Action::SetDesiredState {
                task_id,
                state,
                reason,
                ..
            } => {
                task_mut(w, task_id.as_str())?;
                let t = w.tasks.get_mut(task_id.as_str()).expect("inserted above");
                t.desired_state = *state as i32;
                let placed = t
                    .status
                    .as_ref()
                    .is_some_and(|s| s.state() >= pb::TaskState::Assigned);
                if !placed && *state >= pb::TaskState::Shutdown {
                    // Never reached a node: no agent will report its end, so record it.
                    t.status = Some(pb::TaskStatus {
                        state: pb::TaskState::Shutdown as i32,
                        timestamp_ms: now_ms,
                        message: format!("stopped before it was placed: {reason}"),
                        ..Default::default()
                    });
                } else if *state == pb::TaskState::Complete {
                    // The task has ended for good: say why on its status (the agent no
                    // longer reports on it).
                    if let Some(s) = t.status.as_mut() {
                        s.message = reason.to_string();
                    }
                }
            }
            Action::Orphan {
                task_id, node_id, ..
            } => {
                task_mut(w, task_id.as_str())?;
                let t = w.tasks.get_mut(task_id.as_str()).expect("inserted above");
                t.desired_state = pb::TaskState::Shutdown as i32;
                let old = t.status.take().unwrap_or_default();
                t.status = Some(pb::TaskStatus {
                    state: pb::TaskState::Orphaned as i32,
                    timestamp_ms: now_ms,
                    message: format!("node {node_id} is down"),
                    container_id: old.container_id,
                    ..Default::default()
                });
            }
            Action::Fail {
                task_id, reason, ..
            } => {
                task_mut(w, task_id.as_str())?;
                let t = w.tasks.get_mut(task_id.as_str()).expect("inserted above");
                let s = t.status.get_or_insert_with(Default::default);
                s.state = pb::TaskState::Failed as i32;
                s.timestamp_ms = now_ms;
                s.err = reason.clone();
                s.message = reason.clone();
            }
            Action::SetUpdateStatus { service_id, status } => {
                service_mut(w, service_id)?;
                let s = w.service.as_mut().expect("inserted above");
                s.update_status = Some(status.clone());
            }
            Action::Rollback { service_id, status } => {
                service_mut(w, service_id)?;
                let s = w.service.as_mut().expect("inserted above");
                std::mem::swap(&mut s.spec, &mut s.previous_spec);
                s.spec_version += 1;
                s.update_status = Some(status.clone());
            }
            Action::DeleteTask { task_id, .. } => {
                let t =
                    task_by_id
                        .get(task_id.as_str())
                        .ok_or_else(|| CommandError::UnknownTask {
                            task: task_id.to_string(),
                        })?;
                w.deleted
                    .push((task_id.to_string(), version(t.meta.as_ref())));
            }
            Action::Blocked { .. } | Action::RequeueAt(_) => {}
        }
    }

    let mut out = Vec::new();
    for (_, w) in by_service {
        let mut mutations = Vec::new();
        if let Some(s) = w.service {
            mutations.push(pb::Mutation {
                expected_version: version(s.meta.as_ref()),
                op: Some(pb::mutation::Op::PutService(s)),
                unconditional: false,
            });
        }
        for (_, t) in w.tasks {
            mutations.push(pb::Mutation {
                expected_version: version(t.meta.as_ref()),
                op: Some(pb::mutation::Op::PutTask(t)),
                unconditional: false,
            });
        }
        for t in w.created {
            mutations.push(pb::Mutation {
                expected_version: 0,
                op: Some(pb::mutation::Op::PutTask(t)),
                unconditional: false,
            });
        }
        for (id, v) in w.deleted {
            mutations.push(pb::Mutation {
                expected_version: v,
                op: Some(pb::mutation::Op::DeleteTask(id)),
                unconditional: false,
            });
        }
        if !mutations.is_empty() {
            out.push(pb::Command {
                mutations,
                request_id: String::new(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::StopReason;
    use crate::ids::TaskId;

    fn task(id: &str, service: &str, version: u64, state: pb::TaskState) -> pb::Task {
        pb::Task {
            id: id.into(),
            service_id: service.into(),
            meta: Some(pb::Meta {
                version,
                ..Default::default()
            }),
            desired_state: pb::TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: state as i32,
                container_id: "c1".into(),
                err: "exit status 1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn service(id: &str) -> pb::Service {
        pb::Service {
            id: id.into(),
            meta: Some(pb::Meta {
                version: 9,
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                name: "new".into(),
                ..Default::default()
            }),
            previous_spec: Some(pb::ServiceSpec {
                name: "old".into(),
                ..Default::default()
            }),
            spec_version: 4,
            ..Default::default()
        }
    }

    fn op(m: &pb::Mutation) -> &pb::mutation::Op {
        m.op.as_ref().expect("op")
    }

    #[test]
    fn one_transaction_per_service_with_compare_and_swap() {
        let services = vec![service("a"), service("b")];
        let tasks = vec![
            task("a.1.1", "a", 11, pb::TaskState::Running),
            task("b.1.1", "b", 12, pb::TaskState::Failed),
            task("b.2.1", "b", 13, pb::TaskState::Shutdown),
        ];
        let status = pb::UpdateStatus {
            state: pb::update_status::State::RollbackStarted as i32,
            ..Default::default()
        };
        let actions = vec![
            Action::Orphan {
                service_id: "a".into(),
                task_id: TaskId::new("a.1.1"),
                node_id: "n1".into(),
            },
            Action::SetDesiredState {
                service_id: "b".into(),
                task_id: TaskId::new("b.1.1"),
                state: pb::TaskState::Complete,
                reason: StopReason::RestartPolicy("restart condition is none".into()),
            },
            Action::Rollback {
                service_id: "b".into(),
                status: status.clone(),
            },
            Action::DeleteTask {
                service_id: "b".into(),
                task_id: TaskId::new("b.2.1"),
            },
            Action::Blocked {
                service_id: "c".into(),
                reason: "waiting".into(),
            },
            Action::RequeueAt(5),
        ];
        let cmds = commands(&actions, &services, &tasks, 77).expect("commands");
        assert_eq!(cmds.len(), 2, "no command for what writes nothing");

        let a = &cmds[0].mutations;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].expected_version, 11);
        let pb::mutation::Op::PutTask(t) = op(&a[0]) else {
            panic!("a task put")
        };
        let st = t.status.as_ref().expect("status");
        assert_eq!(st.state(), pb::TaskState::Orphaned);
        assert_eq!(st.message, "node n1 is down");
        assert_eq!(st.timestamp_ms, 77);
        assert_eq!(st.container_id, "c1");
        assert_eq!(t.desired_state(), pb::TaskState::Shutdown);

        let b = &cmds[1].mutations;
        assert_eq!(b.len(), 3);
        let pb::mutation::Op::PutService(s) = op(&b[0]) else {
            panic!("the service first")
        };
        assert_eq!(b[0].expected_version, 9);
        assert_eq!(s.spec.as_ref().expect("spec").name, "old");
        assert_eq!(s.previous_spec.as_ref().expect("prev").name, "new");
        assert_eq!(s.spec_version, 5);
        assert_eq!(s.update_status.as_ref(), Some(&status));
        let pb::mutation::Op::PutTask(t) = op(&b[1]) else {
            panic!("then the task")
        };
        assert_eq!(t.desired_state(), pb::TaskState::Complete);
        let st = t.status.as_ref().expect("status");
        assert_eq!(st.message, "not restarted: restart condition is none");
        assert_eq!(st.err, "exit status 1", "the failure stays visible");
        assert_eq!(
            op(&b[2]),
            &pb::mutation::Op::DeleteTask("b.2.1".into()),
            "then deletes"
        );
        assert_eq!(b[2].expected_version, 13);
    }

    #[test]
    fn a_task_stopped_before_placement_is_recorded_as_shut_down() {
        let tasks = vec![task("a.1.1", "a", 3, pb::TaskState::Pending)];
        let actions = vec![Action::SetDesiredState {
            service_id: "a".into(),
            task_id: TaskId::new("a.1.1"),
            state: pb::TaskState::Shutdown,
            reason: StopReason::Updated,
        }];
        let cmds = commands(&actions, &[], &tasks, 5).expect("commands");
        let pb::mutation::Op::PutTask(t) = op(&cmds[0].mutations[0]) else {
            panic!("task put")
        };
        let st = t.status.as_ref().expect("status");
        assert_eq!(st.state(), pb::TaskState::Shutdown);
        assert_eq!(
            st.message,
            "stopped before it was placed: replaced by the rolling update"
        );
    }

    #[test]
    fn actions_must_name_what_was_read() {
        let actions = vec![Action::Fail {
            service_id: "a".into(),
            task_id: TaskId::new("ghost"),
            reason: "x".into(),
        }];
        assert_eq!(
            commands(&actions, &[], &[], 0),
            Err(CommandError::UnknownTask {
                task: "ghost".into()
            })
        );
        let actions = vec![Action::SetUpdateStatus {
            service_id: "gone".into(),
            status: pb::UpdateStatus::default(),
        }];
        assert_eq!(
            commands(&actions, &[], &[], 0),
            Err(CommandError::UnknownService {
                service: "gone".into()
            })
        );
    }
}
