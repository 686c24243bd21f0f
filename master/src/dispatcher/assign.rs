//! What each node must know, computed from the store: its tasks (everything assigned to
//! it that it has not yet forgotten), the networks those tasks use, the other nodes on
//! those networks (VXLAN peers), and the endpoints of every service on those networks.
//! Pure: the dispatcher calls it on every store change and sends the result when it
//! differs from what the node last got.

use std::collections::{BTreeMap, BTreeSet};

use skiff_proto::TaskStateExt;
use skiff_proto::v1 as pb;

/// Read access to the objects the computation needs.
pub struct View<'a> {
    pub nodes: &'a [pb::Node],
    pub services: &'a [pb::Service],
    pub tasks: &'a [pb::Task],
    pub networks: &'a [pb::Network],
}

/// The node's full assignment set at `revision`.
pub fn assignments(view: &View<'_>, node_id: &str, revision: u64) -> pb::Assignments {
    let mut tasks: Vec<pb::Task> = view
        .tasks
        .iter()
        .filter(|t| t.node_id == node_id)
        .filter(|t| keep_on_node(t))
        .cloned()
        .collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let network_ids: BTreeSet<&str> = tasks
        .iter()
        .flat_map(|t| t.networks.iter().map(|n| n.network_id.as_str()))
        .collect();
    let mut networks: Vec<pb::Network> = view
        .networks
        .iter()
        .filter(|n| network_ids.contains(n.id.as_str()))
        .cloned()
        .collect();
    networks.sort_by(|a, b| a.id.cmp(&b.id));
    // Peers: every other node that runs a live task on one of these networks.
    let peer_ids: BTreeSet<&str> = view
        .tasks
        .iter()
        .filter(|t| t.node_id != node_id && !t.node_id.is_empty())
        .filter(|t| is_live(t))
        .filter(|t| {
            t.networks
                .iter()
                .any(|n| network_ids.contains(n.network_id.as_str()))
        })
        .map(|t| t.node_id.as_str())
        .collect();
    let peers = view
        .nodes
        .iter()
        .filter(|n| peer_ids.contains(n.id.as_str()))
        .filter_map(|n| {
            let addr = n.description.as_ref()?.addr.clone();
            (!addr.is_empty()).then(|| pb::OverlayPeer {
                node_id: n.id.clone(),
                addr,
                subnet: n.subnet.clone(),
            })
        })
        .collect();
    pb::Assignments {
        revision,
        tasks,
        networks,
        peers,
    }
}

/// A task leaves its node's assignment once it has ended and the orchestrator no longer
/// wants it running: the agent then deletes its container. Its record stays in the
/// store as history (`skiffctl ps -a`).
fn keep_on_node(t: &pb::Task) -> bool {
    let ended = t.status.as_ref().is_some_and(|s| s.state().is_terminal());
    !(ended && t.desired_state() >= pb::TaskState::Shutdown)
}

fn is_live(t: &pb::Task) -> bool {
    t.desired_state() <= pb::TaskState::Running
        && !t.status.as_ref().is_some_and(|s| s.state().is_terminal())
}

/// Endpoints of every service on the networks `node_id`'s tasks use: virtual IP,
/// healthy backends (running, and healthy if the service has a health check), ports.
pub fn endpoints(view: &View<'_>, node_id: &str, revision: u64) -> pb::EndpointTable {
    let on_node: BTreeSet<&str> = view
        .tasks
        .iter()
        .filter(|t| t.node_id == node_id && is_live(t))
        .flat_map(|t| t.networks.iter().map(|n| n.network_id.as_str()))
        .collect();
    let mut by_service: BTreeMap<(&str, &str), Vec<&pb::Task>> = BTreeMap::new();
    for t in view.tasks {
        if !serving(t) {
            continue;
        }
        for n in &t.networks {
            if on_node.contains(n.network_id.as_str()) {
                by_service
                    .entry((t.service_id.as_str(), n.network_id.as_str()))
                    .or_default()
                    .push(t);
            }
        }
    }
    let mut services = Vec::new();
    for svc in view.services {
        let spec = svc.spec.clone().unwrap_or_default();
        for net_id in &on_node {
            let attached = svc.virtual_ips.iter().any(|v| v.network_id == *net_id)
                || by_service.contains_key(&(svc.id.as_str(), *net_id));
            if !attached {
                continue;
            }
            let tasks = by_service
                .get(&(svc.id.as_str(), *net_id))
                .cloned()
                .unwrap_or_default();
            let task_eps: Vec<pb::TaskEndpoint> = tasks
                .iter()
                .filter_map(|t| {
                    let addr = t
                        .networks
                        .iter()
                        .find(|n| n.network_id == *net_id)?
                        .addresses
                        .first()?;
                    Some(pb::TaskEndpoint {
                        task_id: t.id.clone(),
                        addr: addr.split('/').next().unwrap_or(addr).to_owned(),
                        node_id: t.node_id.clone(),
                    })
                })
                .collect();
            let aliases = spec
                .networks
                .iter()
                .flat_map(|n| n.aliases.iter().cloned())
                .collect();
            let vip = match spec.endpoint.as_ref().map(|e| e.mode()) {
                Some(pb::endpoint_spec::Mode::Dnsrr) => String::new(),
                _ => svc
                    .virtual_ips
                    .iter()
                    .find(|v| v.network_id == *net_id)
                    .map(|v| v.addr.split('/').next().unwrap_or(&v.addr).to_owned())
                    .unwrap_or_default(),
            };
            services.push(pb::ServiceEndpoint {
                service_id: svc.id.clone(),
                name: spec.name.clone(),
                project: spec.project.clone(),
                network_id: (*net_id).to_owned(),
                vip,
                backends: task_eps.iter().map(|t| t.addr.clone()).collect(),
                ports: spec
                    .endpoint
                    .as_ref()
                    .map(|e| e.ports.clone())
                    .unwrap_or_default(),
                aliases,
                tasks: task_eps,
            });
        }
    }
    pb::EndpointTable { revision, services }
}

/// A task receives traffic when it runs and, if it has a health check, is healthy.
fn serving(t: &pb::Task) -> bool {
    let Some(status) = &t.status else {
        return false;
    };
    if status.state() != pb::TaskState::Running || t.desired_state() > pb::TaskState::Running {
        return false;
    }
    let has_check = t
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.healthcheck.as_ref())
        .is_some_and(|h| h.test.first().is_some_and(|k| k != "NONE"));
    !has_check || status.health() == pb::HealthState::Healthy
}
