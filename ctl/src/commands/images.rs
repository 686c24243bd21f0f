//! `skiffctl image ls|pull|rm`: the masters ask every ready node's agent (or one) and
//! merge the answers. Nodes that could not do it are listed after the results, and
//! make the command exit 1, so a script notices a node that did not pull.

use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tonic::transport::Channel;

use crate::cli::{ImageCommand, Output};
use crate::commands::CtlError;
use crate::output::{bytes, print_json, print_rows};

type Client = ClusterApiClient<Channel>;

#[derive(serde::Serialize)]
struct ImageRow {
    node: String,
    reference: String,
    id: String,
    size: u64,
    used_by: Vec<String>,
}

#[derive(serde::Serialize)]
struct RemovedRow {
    node: String,
    reference: String,
    freed_bytes: u64,
}

#[derive(serde::Serialize)]
struct NodeError {
    node: String,
    error: String,
}

#[derive(serde::Serialize)]
struct Answer<'a, T> {
    images: &'a [T],
    errors: &'a [NodeError],
}

pub async fn run(client: &mut Client, cmd: ImageCommand, format: Output) -> Result<(), CtlError> {
    match cmd {
        ImageCommand::Ls { node } => {
            let r = client
                .list_images(pb::ListImagesRequest {
                    node: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_images(r, format)
        }
        ImageCommand::Pull { reference, node } => {
            let r = client
                .pull_image(pb::PullImageRequest {
                    reference,
                    node: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_images(r, format)
        }
        ImageCommand::Rm { reference, node } => {
            let r = client
                .remove_image(pb::RemoveImageRequest {
                    reference,
                    node: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let rows: Vec<RemovedRow> = r
                .images
                .iter()
                .map(|i| RemovedRow {
                    node: node_name(&i.node_hostname, &i.node_id),
                    reference: i.reference.clone(),
                    freed_bytes: i.freed_bytes,
                })
                .collect();
            finish(
                format,
                rows,
                errors(&r),
                &["node", "removed", "freed"],
                |r| {
                    vec![
                        r.node.clone(),
                        r.reference.clone(),
                        bytes(i64::try_from(r.freed_bytes).unwrap_or(i64::MAX)),
                    ]
                },
            )
        }
    }
}

fn print_images(r: pb::NodeImagesResponse, format: Output) -> Result<(), CtlError> {
    let rows: Vec<ImageRow> = r
        .images
        .iter()
        .map(|i| ImageRow {
            node: node_name(&i.node_hostname, &i.node_id),
            reference: i.reference.clone(),
            id: i.id.clone(),
            size: i.size,
            used_by: i.used_by.clone(),
        })
        .collect();
    finish(
        format,
        rows,
        errors(&r),
        &["node", "reference", "id", "size", "used by"],
        |r| {
            vec![
                r.node.clone(),
                r.reference.clone(),
                short_digest(&r.id),
                bytes(i64::try_from(r.size).unwrap_or(i64::MAX)),
                if r.used_by.is_empty() {
                    "-".into()
                } else {
                    r.used_by.join(",")
                },
            ]
        },
    )
}

/// Prints the rows (table or JSON), then the nodes' errors; any error makes it exit 1.
fn finish<T: serde::Serialize>(
    format: Output,
    rows: Vec<T>,
    errors: Vec<NodeError>,
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<(), CtlError> {
    match format {
        Output::Json => print_json(&Answer {
            images: &rows,
            errors: &errors,
        }),
        Output::Table => print_rows(format, headers, &rows, cells),
    }
    if errors.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("node {}: {}", e.node, e.error))
        .collect();
    Err(CtlError::Cluster(lines.join("\n")))
}

fn errors(r: &pb::NodeImagesResponse) -> Vec<NodeError> {
    r.errors
        .iter()
        .map(|e| NodeError {
            node: node_name(&e.node_hostname, &e.node_id),
            error: e.error.clone(),
        })
        .collect()
}

fn node_name(hostname: &str, id: &str) -> String {
    if hostname.is_empty() {
        id.to_owned()
    } else {
        hostname.to_owned()
    }
}

/// `sha256:0123456789ab…` → `0123456789ab`, as `docker image ls` shows ids.
fn short_digest(id: &str) -> String {
    let hex = id.split_once(':').map_or(id, |(_, h)| h);
    hex.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_shown_as_docker_shows_them() {
        assert_eq!(short_digest("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
        assert_eq!(node_name("", "n1"), "n1");
        assert_eq!(node_name("m1", "n1"), "m1");
    }
}
