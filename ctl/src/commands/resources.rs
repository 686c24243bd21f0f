//! `skiffctl network ls|inspect` and `skiffctl volume ls|inspect|rm`.

use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tonic::transport::Channel;

use crate::cli::{NetworkCommand, Output, VolumeCommand};
use crate::commands::CtlError;
use crate::commands::services::short;
use crate::output::{print_json, print_rows};

type Client = ClusterApiClient<Channel>;

#[derive(serde::Serialize)]
struct NetworkRow {
    id: String,
    project: String,
    name: String,
    driver: String,
    subnet: String,
    vni: u32,
}

pub async fn network(
    client: &mut Client,
    cmd: NetworkCommand,
    format: Output,
) -> Result<(), CtlError> {
    match cmd {
        NetworkCommand::Ls { project } => {
            let nets = client
                .list_networks(pb::ListNetworksRequest {
                    project: project.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .networks;
            let rows: Vec<NetworkRow> = nets
                .into_iter()
                .map(|n| {
                    let spec = n.spec.unwrap_or_default();
                    NetworkRow {
                        id: short(&n.id),
                        project: spec.project,
                        name: spec.name,
                        driver: if spec.driver.is_empty() {
                            "overlay".into()
                        } else {
                            spec.driver
                        },
                        subnet: n.subnet,
                        vni: n.vni,
                    }
                })
                .collect();
            print_rows(
                format,
                &["id", "project", "name", "driver", "subnet", "vni"],
                &rows,
                |r| {
                    vec![
                        r.id.clone(),
                        r.project.clone(),
                        r.name.clone(),
                        r.driver.clone(),
                        r.subnet.clone(),
                        r.vni.to_string(),
                    ]
                },
            );
            Ok(())
        }
        NetworkCommand::Inspect { network } => {
            let nets = client
                .list_networks(pb::ListNetworksRequest::default())
                .await?
                .into_inner()
                .networks;
            let found = find(nets, &network, |n| {
                let spec = n.spec.as_ref();
                (
                    n.id.clone(),
                    spec.map(|s| s.name.clone()).unwrap_or_default(),
                    spec.map(|s| s.project.clone()).unwrap_or_default(),
                )
            })
            .ok_or_else(|| CtlError::Input(format!("no network named {network:?}")))?;
            print_json(&found);
            Ok(())
        }
    }
}

#[derive(serde::Serialize)]
struct VolumeRow {
    id: String,
    project: String,
    name: String,
    driver: String,
}

pub async fn volume(
    client: &mut Client,
    cmd: VolumeCommand,
    format: Output,
) -> Result<(), CtlError> {
    match cmd {
        VolumeCommand::Ls { project } => {
            let vols = client
                .list_volumes(pb::ListVolumesRequest {
                    project: project.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .volumes;
            let rows: Vec<VolumeRow> = vols
                .into_iter()
                .map(|v| {
                    let spec = v.spec.unwrap_or_default();
                    VolumeRow {
                        id: short(&v.id),
                        project: spec.project,
                        name: spec.name,
                        driver: if spec.driver.is_empty() {
                            "local".into()
                        } else {
                            spec.driver
                        },
                    }
                })
                .collect();
            print_rows(format, &["id", "project", "name", "driver"], &rows, |r| {
                vec![
                    r.id.clone(),
                    r.project.clone(),
                    r.name.clone(),
                    r.driver.clone(),
                ]
            });
            Ok(())
        }
        VolumeCommand::Inspect { volume } => {
            let vols = client
                .list_volumes(pb::ListVolumesRequest::default())
                .await?
                .into_inner()
                .volumes;
            let found = find(vols, &volume, |v| {
                let spec = v.spec.as_ref();
                (
                    v.id.clone(),
                    spec.map(|s| s.name.clone()).unwrap_or_default(),
                    spec.map(|s| s.project.clone()).unwrap_or_default(),
                )
            })
            .ok_or_else(|| CtlError::Input(format!("no volume named {volume:?}")))?;
            print_json(&found);
            Ok(())
        }
        VolumeCommand::Rm { volume, project } => {
            client
                .remove_volume(pb::RemoveVolumeRequest {
                    name: volume.clone(),
                    project: project.unwrap_or_default(),
                })
                .await?;
            println!("volume {volume} removed");
            Ok(())
        }
    }
}

/// Finds an object by id, id prefix, "<project>_<name>" or bare name.
fn find<T>(items: Vec<T>, wanted: &str, key: impl Fn(&T) -> (String, String, String)) -> Option<T> {
    items.into_iter().find(|item| {
        let (id, name, project) = key(item);
        id == wanted
            || (wanted.len() >= 6 && id.starts_with(wanted))
            || name == wanted
            || format!("{project}_{name}") == wanted
    })
}
