//! `skiffctl image ls|pull|rm` through the masters: pick the nodes (every ready node,
//! or the one named), ask each one's agent API at once, and merge what they answer.
//! A node that fails does not fail the call: its reason comes back beside the others'
//! results, so one unreachable machine never hides the rest of the cluster.
//!
//! ```text
//!  skiffctl ─PullImage{ref}─► master ─ PullImage ─► agent of node 1 ─┐
//!                                    ─ PullImage ─► agent of node 2 ─┼─► images + errors
//! ```
//!
//! Like logs and exec, any master answers (the node list is read locally).

use std::time::Duration;

use skiff_proto::v1 as pb;
use skiff_proto::v1::agent_client::AgentClient;
use tonic::Status;
use tonic::transport::Channel;

use super::proxy::AgentDialer;
use crate::handle::MasterHandle;

/// How long listing or removing may take on one node.
const QUICK: Duration = Duration::from_secs(20);
/// How long one node may take to pull an image.
const PULL: Duration = Duration::from_secs(15 * 60);

/// The image operation asked of each node.
#[derive(Clone, Debug)]
pub enum Op {
    List,
    Pull(String),
    Remove(String),
}

impl Op {
    fn timeout(&self) -> Duration {
        match self {
            Op::Pull(_) => PULL,
            Op::List | Op::Remove(_) => QUICK,
        }
    }

    fn check(&self) -> Result<(), Status> {
        match self {
            Op::Pull(r) | Op::Remove(r) if r.trim().is_empty() => {
                Err(Status::invalid_argument("an image reference is required"))
            }
            _ => Ok(()),
        }
    }
}

/// Runs `op` on the nodes `node` names (id or hostname; every ready node if empty).
pub async fn run(
    master: &MasterHandle,
    agents: &AgentDialer,
    node: &str,
    op: Op,
) -> Result<pb::NodeImagesResponse, Status> {
    op.check()?;
    let nodes = master.read(|s| targets(s, node))?;
    let calls = nodes.into_iter().map(|n| {
        let op = op.clone();
        async move {
            let result = match agents.client(&n) {
                Ok(client) => call(client, op).await,
                Err(status) => Err(status),
            };
            (n, result)
        }
    });
    let mut out = pb::NodeImagesResponse::default();
    for (n, result) in futures::future::join_all(calls).await {
        let hostname = crate::store::state::hostname(&n).to_owned();
        match result {
            Ok(images) => out.images.extend(images.into_iter().map(|i| pb::ImageInfo {
                node_id: n.id.clone(),
                node_hostname: hostname.clone(),
                ..i
            })),
            Err(status) => out.errors.push(pb::NodeImageError {
                node_id: n.id.clone(),
                node_hostname: hostname,
                error: status.message().to_owned(),
            }),
        }
    }
    out.images.sort_by(|a, b| {
        (&a.reference, &a.node_hostname, &a.node_id).cmp(&(
            &b.reference,
            &b.node_hostname,
            &b.node_id,
        ))
    });
    out.errors
        .sort_by(|a, b| (&a.node_hostname, &a.node_id).cmp(&(&b.node_hostname, &b.node_id)));
    Ok(out)
}

/// The nodes to ask: the one named (whatever its state: asking a down node gives its
/// error), or every ready node.
fn targets(s: &crate::store::StoreState, node: &str) -> Result<Vec<pb::Node>, Status> {
    if !node.is_empty() {
        let n = super::cluster::find_node(s, node).ok_or_else(|| {
            Status::not_found(format!("no node {node:?} (give an id or hostname)"))
        })?;
        return Ok(vec![n.clone()]);
    }
    let ready: Vec<pb::Node> = s
        .nodes()
        .filter(|n| n.state == pb::NodeState::Ready as i32)
        .cloned()
        .collect();
    if ready.is_empty() {
        return Err(Status::failed_precondition(
            "no node of the cluster is ready",
        ));
    }
    Ok(ready)
}

async fn call(mut client: AgentClient<Channel>, op: Op) -> Result<Vec<pb::ImageInfo>, Status> {
    let timeout = op.timeout();
    match op {
        Op::List => Ok(client
            .list_images(with_timeout(pb::AgentListImagesRequest {}, timeout))
            .await?
            .into_inner()
            .images),
        Op::Pull(reference) => Ok(client
            .pull_image(with_timeout(
                pb::AgentPullImageRequest { reference },
                timeout,
            ))
            .await?
            .into_inner()
            .images),
        Op::Remove(reference) => {
            let freed = client
                .remove_image(with_timeout(
                    pb::AgentRemoveImageRequest {
                        reference: reference.clone(),
                    },
                    timeout,
                ))
                .await?
                .into_inner()
                .freed_bytes;
            Ok(vec![pb::ImageInfo {
                reference,
                freed_bytes: freed,
                ..Default::default()
            }])
        }
    }
}

fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}
