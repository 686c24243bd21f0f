//! Projects, services and tasks: `ls`, `services`, `ps`, `inspect`, `scale`, `update`,
//! `rollback`, `rm`.

use skiff_proto::TaskStateExt;
use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tonic::transport::Channel;

use crate::cli::Output;
use crate::commands::CtlError;
use crate::output::{age, now_ms, print_json, print_rows};

type Client = ClusterApiClient<Channel>;

#[derive(serde::Serialize)]
struct ProjectRow {
    name: String,
    services: u32,
    running: u64,
    desired: u64,
}

pub async fn projects(client: &mut Client, format: Output) -> Result<(), CtlError> {
    let resp = client
        .list_projects(pb::ListProjectsRequest::default())
        .await?
        .into_inner();
    let rows: Vec<ProjectRow> = resp
        .projects
        .into_iter()
        .map(|p| ProjectRow {
            name: p.name,
            services: p.services,
            running: p.running_tasks,
            desired: p.desired_tasks,
        })
        .collect();
    print_rows(format, &["project", "services", "tasks"], &rows, |r| {
        vec![
            r.name.clone(),
            r.services.to_string(),
            format!("{}/{}", r.running, r.desired),
        ]
    });
    Ok(())
}

#[derive(serde::Serialize)]
struct ServiceRow {
    id: String,
    name: String,
    project: String,
    mode: String,
    running: u64,
    desired: u64,
    image: String,
    ports: Vec<String>,
    update: String,
}

pub async fn list(
    client: &mut Client,
    project: Option<String>,
    format: Output,
) -> Result<(), CtlError> {
    let resp = client
        .list_services(pb::ListServicesRequest {
            project: project.unwrap_or_default(),
            read: None,
        })
        .await?
        .into_inner();
    let rows: Vec<ServiceRow> = resp
        .services
        .into_iter()
        .map(|s| {
            let svc = s.service.unwrap_or_default();
            let spec = svc.spec.unwrap_or_default();
            ServiceRow {
                id: short(&svc.id),
                name: spec.name.clone(),
                project: spec.project.clone(),
                mode: match spec.mode {
                    Some(pb::service_spec::Mode::Global(_)) => "global".into(),
                    _ => "replicated".into(),
                },
                running: s.running,
                desired: s.desired,
                image: spec.container.map(|c| c.image).unwrap_or_default(),
                ports: spec
                    .endpoint
                    .map(|e| e.ports.iter().map(port).collect())
                    .unwrap_or_default(),
                update: svc
                    .update_status
                    .map(|u| update_state(u.state()))
                    .unwrap_or_default(),
            }
        })
        .collect();
    print_rows(
        format,
        &[
            "id", "project", "name", "mode", "replicas", "image", "ports", "update",
        ],
        &rows,
        |r| {
            vec![
                r.id.clone(),
                r.project.clone(),
                r.name.clone(),
                r.mode.clone(),
                format!("{}/{}", r.running, r.desired),
                r.image.clone(),
                r.ports.join(","),
                r.update.clone(),
            ]
        },
    );
    Ok(())
}

#[derive(serde::Serialize)]
struct TaskRow {
    id: String,
    name: String,
    node: String,
    desired: String,
    state: String,
    since_ms: i64,
    error: String,
    image: String,
    /// The container's main process as its node sees it (JSON only; 0 if not running).
    pid: i32,
}

pub async fn ps(
    client: &mut Client,
    service: Option<String>,
    project: Option<String>,
    node: Option<String>,
    all: bool,
    format: Output,
) -> Result<(), CtlError> {
    let nodes = client
        .list_nodes(pb::ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes;
    let hostname = |id: &str| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.description.as_ref().map(|d| d.hostname.clone()))
            .unwrap_or_else(|| short(id))
    };
    let tasks = client
        .list_tasks(pb::ListTasksRequest {
            service: service.unwrap_or_default(),
            project: project.unwrap_or_default(),
            node: node.unwrap_or_default(),
            include_history: all,
            read: None,
        })
        .await?
        .into_inner()
        .tasks;
    let now = now_ms();
    let rows: Vec<TaskRow> = tasks
        .into_iter()
        .map(|t| {
            let status = t.status.clone().unwrap_or_default();
            let state = status.state();
            let mut state_text = state.label().to_string();
            if status.oom_killed {
                state_text.push_str(" (oom)");
            } else if state == pb::TaskState::Failed && status.exit_code != 0 {
                state_text.push_str(&format!(" ({})", status.exit_code));
            }
            if status.health() == pb::HealthState::Unhealthy {
                state_text.push_str(" unhealthy");
            } else if status.health() == pb::HealthState::Healthy {
                state_text.push_str(" healthy");
            }
            TaskRow {
                id: short(&t.id),
                name: format!("{}.{}", t.service_name, t.slot),
                node: if t.node_id.is_empty() {
                    String::new()
                } else {
                    hostname(&t.node_id)
                },
                desired: t.desired_state().label().into(),
                state: state_text,
                since_ms: status.timestamp_ms,
                error: if status.err.is_empty() {
                    if state == pb::TaskState::Pending {
                        status.message.clone()
                    } else {
                        String::new()
                    }
                } else {
                    status.err.clone()
                },
                pid: status.pid,
                image: t
                    .spec
                    .and_then(|s| s.container)
                    .map(|c| c.image)
                    .unwrap_or_default(),
            }
        })
        .collect();
    print_rows(
        format,
        &["id", "name", "image", "node", "desired", "state", "error"],
        &rows,
        |r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.image.clone(),
                r.node.clone(),
                r.desired.clone(),
                format!("{} {}", r.state, age(r.since_ms, now)),
                r.error.clone(),
            ]
        },
    );
    Ok(())
}

pub async fn inspect(
    client: &mut Client,
    service: String,
    project: Option<String>,
) -> Result<(), CtlError> {
    let svc = client
        .get_service(pb::GetServiceRequest {
            name: service,
            project: project.unwrap_or_default(),
            read: None,
        })
        .await?
        .into_inner();
    print_json(&svc);
    Ok(())
}

pub async fn scale(
    client: &mut Client,
    targets: Vec<String>,
    project: Option<String>,
) -> Result<(), CtlError> {
    let mut parsed = Vec::new();
    for t in &targets {
        let (name, n) = t
            .split_once('=')
            .ok_or_else(|| CtlError::Input(format!("{t:?}: expected SERVICE=REPLICAS")))?;
        let n: u64 = n.parse().map_err(|_| {
            CtlError::Input(format!("{t:?}: replicas must be a whole number, got {n:?}"))
        })?;
        parsed.push((name.to_owned(), n));
    }
    for (name, replicas) in parsed {
        client
            .scale_service(pb::ScaleServiceRequest {
                name: name.clone(),
                project: project.clone().unwrap_or_default(),
                replicas,
            })
            .await?;
        println!("{name} scaled to {replicas}");
    }
    Ok(())
}

pub async fn update_image(
    client: &mut Client,
    service: String,
    project: Option<String>,
    image: String,
) -> Result<(), CtlError> {
    let project = project.unwrap_or_default();
    let svc = client
        .get_service(pb::GetServiceRequest {
            name: service.clone(),
            project: project.clone(),
            read: Some(pb::ReadOptions { linearizable: true }),
        })
        .await?
        .into_inner();
    let mut spec = svc.spec.clone().unwrap_or_default();
    let container = spec.container.get_or_insert_with(Default::default);
    if container.image == image {
        println!("{service} already runs {image}: nothing to do");
        return Ok(());
    }
    container.image = image.clone();
    client
        .update_service(pb::UpdateServiceRequest {
            name: svc.id.clone(),
            project,
            spec: Some(spec),
            expected_version: svc.meta.map(|m| m.version).unwrap_or(0),
        })
        .await?;
    println!("{service}: updating to {image}");
    Ok(())
}

pub async fn rollback(
    client: &mut Client,
    service: String,
    project: Option<String>,
) -> Result<(), CtlError> {
    client
        .rollback_service(pb::RollbackServiceRequest {
            name: service.clone(),
            project: project.unwrap_or_default(),
        })
        .await?;
    println!("{service}: rolling back to its previous spec");
    Ok(())
}

pub async fn remove(
    client: &mut Client,
    project: String,
    service: Option<String>,
) -> Result<(), CtlError> {
    match service {
        Some(name) => {
            client
                .remove_service(pb::RemoveServiceRequest {
                    name: name.clone(),
                    project: project.clone(),
                })
                .await?;
            println!("removed service {name} of {project}");
        }
        None => {
            let resp = client
                .remove_project(pb::RemoveProjectRequest {
                    project: project.clone(),
                })
                .await?
                .into_inner();
            if resp.changes.is_empty() {
                return Err(CtlError::Input(format!("no project named {project:?}")));
            }
            for c in resp.changes {
                println!("removed {} {}", kind(c.kind()), c.name);
            }
        }
    }
    Ok(())
}

/// The first 12 characters of an id, as docker shows them.
pub fn short(id: &str) -> String {
    skiff_proto::short_id(id)
}

fn port(p: &pb::PortConfig) -> String {
    let proto = match p.protocol() {
        pb::port_config::Protocol::Tcp => "tcp",
        pb::port_config::Protocol::Udp => "udp",
    };
    let mode = match p.publish_mode() {
        pb::port_config::PublishMode::Ingress => "",
        pb::port_config::PublishMode::Host => " (host)",
    };
    if p.published_port == 0 {
        format!("{}/{proto}", p.target_port)
    } else {
        format!("*:{}->{}/{proto}{mode}", p.published_port, p.target_port)
    }
}

fn update_state(s: pb::update_status::State) -> String {
    use pb::update_status::State;
    match s {
        State::None => "",
        State::Updating => "updating",
        State::Paused => "paused",
        State::Completed => "completed",
        State::RollbackStarted => "rolling back",
        State::RollbackPaused => "rollback paused",
        State::RollbackCompleted => "rolled back",
    }
    .into()
}

pub fn kind(k: pb::ObjectKind) -> &'static str {
    match k {
        pb::ObjectKind::Unspecified => "object",
        pb::ObjectKind::Node => "node",
        pb::ObjectKind::Service => "service",
        pb::ObjectKind::Task => "task",
        pb::ObjectKind::Network => "network",
        pb::ObjectKind::Volume => "volume",
        pb::ObjectKind::Cluster => "cluster",
    }
}
