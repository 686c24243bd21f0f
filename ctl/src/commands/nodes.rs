//! `skiffctl node ls|inspect|update|rm`.

use std::collections::HashMap;

use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tonic::transport::Channel;

use crate::cli::{Availability, NodeCommand, Output};
use crate::commands::CtlError;
use crate::commands::services::short;
use crate::output::{bytes, cpus, print_json, print_rows};

#[derive(serde::Serialize)]
struct Row {
    id: String,
    hostname: String,
    addr: String,
    role: String,
    state: String,
    availability: String,
    cpus: String,
    memory: String,
    labels: Vec<String>,
}

pub async fn run(
    client: &mut ClusterApiClient<Channel>,
    cmd: NodeCommand,
    format: Output,
) -> Result<(), CtlError> {
    match cmd {
        NodeCommand::Ls => {
            let nodes = client
                .list_nodes(pb::ListNodesRequest::default())
                .await?
                .into_inner()
                .nodes;
            let rows: Vec<Row> = nodes
                .into_iter()
                .map(|n| {
                    let spec = n.spec.clone().unwrap_or_default();
                    let desc = n.description.clone().unwrap_or_default();
                    let res = desc.resources.unwrap_or_default();
                    Row {
                        id: short(&n.id),
                        hostname: desc.hostname,
                        addr: desc.addr,
                        role: match spec.role() {
                            pb::NodeRole::Worker => "worker".into(),
                            pb::NodeRole::Manager => "manager".into(),
                        },
                        state: match n.state() {
                            pb::NodeState::Unknown => "unknown".into(),
                            pb::NodeState::Ready => "ready".into(),
                            pb::NodeState::Down => "down".into(),
                            pb::NodeState::Disconnected => "disconnected".into(),
                        },
                        availability: match spec.availability() {
                            pb::NodeAvailability::Active => "active".into(),
                            pb::NodeAvailability::Pause => "pause".into(),
                            pb::NodeAvailability::Drain => "drain".into(),
                        },
                        cpus: cpus(res.nano_cpus),
                        memory: bytes(res.memory_bytes),
                        labels: spec
                            .labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect(),
                    }
                })
                .collect();
            print_rows(
                format,
                &[
                    "id",
                    "hostname",
                    "addr",
                    "role",
                    "state",
                    "availability",
                    "cpus",
                    "memory",
                    "labels",
                ],
                &rows,
                |r| {
                    vec![
                        r.id.clone(),
                        r.hostname.clone(),
                        r.addr.clone(),
                        r.role.clone(),
                        r.state.clone(),
                        r.availability.clone(),
                        r.cpus.clone(),
                        r.memory.clone(),
                        r.labels.join(","),
                    ]
                },
            );
            Ok(())
        }
        NodeCommand::Inspect { node } => {
            let n = client
                .get_node(pb::GetNodeRequest { node, read: None })
                .await?
                .into_inner();
            print_json(&n);
            Ok(())
        }
        NodeCommand::Update {
            node,
            availability,
            label_add,
            label_rm,
        } => {
            let mut labels_add = HashMap::new();
            for l in &label_add {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    CtlError::Input(format!("--label-add {l:?}: expected KEY=VALUE"))
                })?;
                labels_add.insert(k.to_owned(), v.to_owned());
            }
            let availability = availability.map(|a| match a {
                Availability::Active => pb::NodeAvailability::Active as i32,
                Availability::Pause => pb::NodeAvailability::Pause as i32,
                Availability::Drain => pb::NodeAvailability::Drain as i32,
            });
            client
                .update_node(pb::UpdateNodeRequest {
                    node: node.clone(),
                    availability,
                    labels_add,
                    labels_remove: label_rm,
                })
                .await?;
            println!("node {node} updated");
            Ok(())
        }
        NodeCommand::Rm { node, force } => {
            client
                .remove_node(pb::RemoveNodeRequest {
                    node: node.clone(),
                    force,
                })
                .await?;
            println!("node {node} removed");
            Ok(())
        }
    }
}
