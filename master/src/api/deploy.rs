//! Deploy as a pure diff: a project's requested services, networks and volumes against
//! the store → the human-readable change list and one compare-and-swap command.
//! Deploying the same file twice changes nothing.

use skiff_proto::v1 as pb;

use crate::store::StoreState;

/// A deploy request that can't be planned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    #[error("the deployment names no project")]
    NoProject,
    #[error("a {kind} in project {project:?} has no name")]
    NoName { kind: &'static str, project: String },
    #[error("{kind} {name:?} appears twice in project {project:?}")]
    Duplicate {
        kind: &'static str,
        name: String,
        project: String,
    },
    #[error(
        "service {service:?} attaches to network {network:?}, which project {project:?} does not define"
    )]
    UnknownNetwork {
        service: String,
        network: String,
        project: String,
    },
}

/// What a deploy would do.
#[derive(Debug, Default, PartialEq)]
pub struct DeployPlan {
    pub changes: Vec<pb::Change>,
    pub mutations: Vec<pb::Mutation>,
}

fn change(
    action: pb::change::Action,
    kind: pb::ObjectKind,
    name: &str,
    details: Vec<String>,
) -> pb::Change {
    pb::Change {
        action: action as i32,
        kind: kind as i32,
        name: name.to_owned(),
        details,
    }
}

fn put(op: pb::mutation::Op, version: u64) -> pb::Mutation {
    pb::Mutation {
        op: Some(op),
        expected_version: version,
        unconditional: false,
    }
}

/// A new object id (12 hex characters).
pub fn new_id() -> String {
    let n: u64 = rand::random();
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

/// The diff. `ids` makes ids for new objects (tests pass a counter).
pub fn plan(
    state: &StoreState,
    req: &pb::DeployRequest,
    ids: &mut dyn FnMut() -> String,
) -> Result<DeployPlan, DeployError> {
    use pb::change::Action;
    let project = req.project.as_str();
    if project.is_empty() {
        return Err(DeployError::NoProject);
    }
    let mut out = DeployPlan::default();
    let mut seen = std::collections::BTreeSet::new();

    for spec in &req.networks {
        let mut spec = spec.clone();
        spec.project = project.to_owned();
        check_name("network", &spec.name, project, &mut seen)?;
        match state.network_by_name(project, &spec.name) {
            None => {
                out.changes.push(change(
                    Action::Create,
                    pb::ObjectKind::Network,
                    &spec.name,
                    vec![],
                ));
                let n = pb::Network {
                    id: ids(),
                    spec: Some(spec),
                    ..Default::default()
                };
                out.mutations.push(put(pb::mutation::Op::PutNetwork(n), 0));
            }
            Some(existing) if existing.spec.as_ref() != Some(&spec) => {
                let mut n = existing.clone();
                let details = vec![format!(
                    "network spec changed: {}",
                    short_diff(existing.spec.as_ref(), &spec)
                )];
                out.changes.push(change(
                    Action::Update,
                    pb::ObjectKind::Network,
                    &spec.name,
                    details,
                ));
                n.spec = Some(spec);
                out.mutations.push(put(
                    pb::mutation::Op::PutNetwork(n),
                    version(existing.meta.as_ref()),
                ));
            }
            Some(_) => out.changes.push(change(
                Action::Unchanged,
                pb::ObjectKind::Network,
                &spec.name,
                vec![],
            )),
        }
    }
    seen.clear();
    for spec in &req.volumes {
        let mut spec = spec.clone();
        spec.project = project.to_owned();
        check_name("volume", &spec.name, project, &mut seen)?;
        match state.volume_by_name(project, &spec.name) {
            None => {
                out.changes.push(change(
                    Action::Create,
                    pb::ObjectKind::Volume,
                    &spec.name,
                    vec![],
                ));
                let v = pb::Volume {
                    id: ids(),
                    spec: Some(spec),
                    ..Default::default()
                };
                out.mutations.push(put(pb::mutation::Op::PutVolume(v), 0));
            }
            Some(existing) if existing.spec.as_ref() != Some(&spec) => {
                let mut v = existing.clone();
                out.changes.push(change(
                    Action::Update,
                    pb::ObjectKind::Volume,
                    &spec.name,
                    vec!["volume spec changed".into()],
                ));
                v.spec = Some(spec);
                out.mutations.push(put(
                    pb::mutation::Op::PutVolume(v),
                    version(existing.meta.as_ref()),
                ));
            }
            Some(_) => out.changes.push(change(
                Action::Unchanged,
                pb::ObjectKind::Volume,
                &spec.name,
                vec![],
            )),
        }
    }
    let networks: std::collections::BTreeSet<&str> =
        req.networks.iter().map(|n| n.name.as_str()).collect();
    seen.clear();
    for spec in &req.services {
        let mut spec = spec.clone();
        spec.project = project.to_owned();
        check_name("service", &spec.name, project, &mut seen)?;
        for att in &spec.networks {
            if !networks.contains(att.network.as_str())
                && state.network_by_name(project, &att.network).is_none()
            {
                return Err(DeployError::UnknownNetwork {
                    service: spec.name.clone(),
                    network: att.network.clone(),
                    project: project.to_owned(),
                });
            }
        }
        match state.service_by_name(project, &spec.name) {
            None => {
                out.changes.push(change(
                    Action::Create,
                    pb::ObjectKind::Service,
                    &spec.name,
                    vec![],
                ));
                let s = pb::Service {
                    id: ids(),
                    spec: Some(spec),
                    spec_version: 1,
                    ..Default::default()
                };
                out.mutations.push(put(pb::mutation::Op::PutService(s), 0));
            }
            Some(existing) if existing.spec.as_ref() != Some(&spec) => {
                let details = service_diff(existing.spec.as_ref(), &spec);
                out.changes.push(change(
                    Action::Update,
                    pb::ObjectKind::Service,
                    &spec.name,
                    details,
                ));
                let s = updated_service(existing, spec);
                out.mutations.push(put(
                    pb::mutation::Op::PutService(s),
                    version(existing.meta.as_ref()),
                ));
            }
            Some(_) => out.changes.push(change(
                Action::Unchanged,
                pb::ObjectKind::Service,
                &spec.name,
                vec![],
            )),
        }
    }
    if req.prune {
        for s in state.services_of_project(project) {
            let name = s.spec.as_ref().map_or("", |s| s.name.as_str());
            if !seen.contains(name) {
                out.changes.push(change(
                    Action::Remove,
                    pb::ObjectKind::Service,
                    name,
                    vec![],
                ));
                out.mutations.push(put(
                    pb::mutation::Op::DeleteService(s.id.clone()),
                    version(s.meta.as_ref()),
                ));
            }
        }
    }
    Ok(out)
}

/// The service with a new spec: previous spec kept, spec version bumped.
pub fn updated_service(existing: &pb::Service, spec: pb::ServiceSpec) -> pb::Service {
    // Field by field: cloning the whole object would copy both specs only to drop them.
    let pb::Service {
        id,
        meta,
        spec: current,
        spec_version,
        previous_spec: _,
        update_status,
        virtual_ips,
    } = existing;
    pb::Service {
        id: id.clone(),
        meta: *meta,
        spec: Some(spec),
        spec_version: spec_version + 1,
        previous_spec: current.clone(),
        update_status: update_status.clone(),
        virtual_ips: virtual_ips.clone(),
    }
}

/// Everything of a project, for removal.
pub fn remove_project(state: &StoreState, project: &str) -> DeployPlan {
    use pb::change::Action;
    let mut out = DeployPlan::default();
    for s in state.services_of_project(project) {
        let name = s.spec.as_ref().map_or("", |s| s.name.as_str());
        out.changes.push(change(
            Action::Remove,
            pb::ObjectKind::Service,
            name,
            vec![],
        ));
        out.mutations.push(put(
            pb::mutation::Op::DeleteService(s.id.clone()),
            version(s.meta.as_ref()),
        ));
    }
    for n in state
        .networks()
        .filter(|n| n.spec.as_ref().is_some_and(|s| s.project == project))
    {
        let name = n.spec.as_ref().map_or("", |s| s.name.as_str());
        out.changes.push(change(
            Action::Remove,
            pb::ObjectKind::Network,
            name,
            vec![],
        ));
        out.mutations.push(put(
            pb::mutation::Op::DeleteNetwork(n.id.clone()),
            version(n.meta.as_ref()),
        ));
    }
    for v in state
        .volumes()
        .filter(|v| v.spec.as_ref().is_some_and(|s| s.project == project))
    {
        let name = v.spec.as_ref().map_or("", |s| s.name.as_str());
        out.changes
            .push(change(Action::Remove, pb::ObjectKind::Volume, name, vec![]));
        out.mutations.push(put(
            pb::mutation::Op::DeleteVolume(v.id.clone()),
            version(v.meta.as_ref()),
        ));
    }
    out
}

fn version(meta: Option<&pb::Meta>) -> u64 {
    meta.map_or(0, |m| m.version)
}

fn check_name(
    kind: &'static str,
    name: &str,
    project: &str,
    seen: &mut std::collections::BTreeSet<String>,
) -> Result<(), DeployError> {
    if name.is_empty() {
        return Err(DeployError::NoName {
            kind,
            project: project.to_owned(),
        });
    }
    if !seen.insert(name.to_owned()) {
        return Err(DeployError::Duplicate {
            kind,
            name: name.to_owned(),
            project: project.to_owned(),
        });
    }
    Ok(())
}

fn short_diff(old: Option<&pb::NetworkSpec>, new: &pb::NetworkSpec) -> String {
    let old = old.cloned().unwrap_or_default();
    let mut d = Vec::new();
    if old.driver != new.driver {
        d.push(format!("driver {:?} -> {:?}", old.driver, new.driver));
    }
    if old.subnet != new.subnet {
        d.push(format!("subnet {:?} -> {:?}", old.subnet, new.subnet));
    }
    if old.internal != new.internal {
        d.push(format!("internal {} -> {}", old.internal, new.internal));
    }
    if d.is_empty() {
        d.push("labels or options".into());
    }
    d.join(", ")
}

fn replicas(spec: &pb::ServiceSpec) -> String {
    match &spec.mode {
        Some(pb::service_spec::Mode::Replicated(r)) => format!("{} replicas", r.replicas),
        Some(pb::service_spec::Mode::Global(_)) => "global".into(),
        None => "1 replica (default)".into(),
    }
}

/// What differs between two service specs, for people: "image: a -> b".
pub fn service_diff(old: Option<&pb::ServiceSpec>, new: &pb::ServiceSpec) -> Vec<String> {
    let old = old.cloned().unwrap_or_default();
    let oc = old.container.clone().unwrap_or_default();
    let nc = new.container.clone().unwrap_or_default();
    let mut d = Vec::new();
    if oc.image != nc.image {
        d.push(format!("image: {} -> {}", oc.image, nc.image));
    }
    if replicas(&old) != replicas(new) {
        d.push(format!("mode: {} -> {}", replicas(&old), replicas(new)));
    }
    if oc.env != nc.env {
        d.push(format!("env: {:?} -> {:?}", oc.env, nc.env));
    }
    if oc.command != nc.command || oc.entrypoint != nc.entrypoint {
        d.push(format!("command: {:?} -> {:?}", oc.command, nc.command));
    }
    if old.endpoint != new.endpoint {
        d.push("ports or endpoint mode changed".into());
    }
    if old.networks != new.networks {
        d.push("networks changed".into());
    }
    if old.labels != new.labels {
        d.push("labels changed".into());
    }
    if old.resources != new.resources {
        d.push("resources changed".into());
    }
    if old.placement != new.placement {
        d.push("placement changed".into());
    }
    if d.is_empty() {
        d.push("other settings changed".into());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::execute;

    fn req(image: &str, replicas: u64, prune: bool) -> pb::DeployRequest {
        pb::DeployRequest {
            project: "shop".into(),
            services: vec![pb::ServiceSpec {
                name: "web".into(),
                container: Some(pb::ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
                    replicas,
                })),
                networks: vec![pb::NetworkAttachmentConfig {
                    network: "front".into(),
                    aliases: vec![],
                }],
                ..Default::default()
            }],
            networks: vec![pb::NetworkSpec {
                name: "front".into(),
                ..Default::default()
            }],
            volumes: vec![],
            prune,
            dry_run: false,
        }
    }

    fn apply(state: &mut StoreState, plan: &DeployPlan, index: u64) {
        let r = execute(
            state,
            &pb::Command {
                mutations: plan.mutations.clone(),
                request_id: String::new(),
            },
            index,
            0,
        );
        assert_eq!(r.answer.result, Ok(()));
    }

    fn actions(p: &DeployPlan) -> Vec<(i32, String)> {
        p.changes
            .iter()
            .map(|c| (c.action, c.name.clone()))
            .collect()
    }

    #[test]
    fn deploying_twice_changes_nothing_the_second_time() {
        let mut n = 0;
        let mut ids = || {
            n += 1;
            format!("id{n}")
        };
        let mut state = StoreState::default();
        let first = plan(&state, &req("busybox:1", 2, false), &mut ids).expect("plan");
        assert_eq!(
            actions(&first),
            vec![
                (pb::change::Action::Create as i32, "front".into()),
                (pb::change::Action::Create as i32, "web".into())
            ]
        );
        apply(&mut state, &first, 5);
        let second = plan(&state, &req("busybox:1", 2, false), &mut ids).expect("plan");
        assert!(second.mutations.is_empty());
        assert!(
            second
                .changes
                .iter()
                .all(|c| c.action == pb::change::Action::Unchanged as i32)
        );
    }

    #[test]
    fn a_changed_image_bumps_the_spec_version_and_keeps_the_previous_spec() {
        let mut ids = || new_id();
        let mut state = StoreState::default();
        let first = plan(&state, &req("busybox:1", 2, false), &mut ids).expect("plan");
        apply(&mut state, &first, 5);
        let update = plan(&state, &req("busybox:2", 2, false), &mut ids).expect("plan");
        let web = update
            .changes
            .iter()
            .find(|c| c.name == "web")
            .expect("web change");
        assert_eq!(web.action, pb::change::Action::Update as i32);
        assert_eq!(
            web.details,
            vec!["image: busybox:1 -> busybox:2".to_string()]
        );
        apply(&mut state, &update, 6);
        let s = state.service_by_name("shop", "web").expect("web");
        assert_eq!(s.spec_version, 2);
        assert_eq!(
            s.previous_spec
                .as_ref()
                .and_then(|p| p.container.as_ref())
                .map(|c| c.image.as_str()),
            Some("busybox:1")
        );
    }

    #[test]
    fn prune_removes_services_the_file_no_longer_names() {
        let mut ids = || new_id();
        let mut state = StoreState::default();
        let mut r = req("busybox:1", 1, false);
        r.services.push(pb::ServiceSpec {
            name: "worker".into(),
            ..Default::default()
        });
        let first = plan(&state, &r, &mut ids).expect("plan");
        apply(&mut state, &first, 3);
        let p = plan(&state, &req("busybox:1", 1, true), &mut ids).expect("plan");
        assert!(
            p.changes
                .iter()
                .any(|c| c.name == "worker" && c.action == pb::change::Action::Remove as i32)
        );
        apply(&mut state, &p, 4);
        assert!(state.service_by_name("shop", "worker").is_none());
    }

    #[test]
    fn bad_requests_are_named() {
        let mut ids = || new_id();
        let state = StoreState::default();
        let mut r = req("x", 1, false);
        r.networks.clear();
        assert!(matches!(
            plan(&state, &r, &mut ids),
            Err(DeployError::UnknownNetwork { .. })
        ));
        let mut r = req("x", 1, false);
        r.services.push(r.services[0].clone());
        assert!(matches!(
            plan(&state, &r, &mut ids),
            Err(DeployError::Duplicate { .. })
        ));
        let mut r = req("x", 1, false);
        r.project.clear();
        assert_eq!(plan(&state, &r, &mut ids), Err(DeployError::NoProject));
    }
}
