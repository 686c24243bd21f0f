//! The overlay on one node: what should exist (a pure plan from the assignments and the
//! endpoint table) and a reconcile that converges the kernel to it. Per network: a
//! bridge `skb-*` holding the gateway address, a VXLAN device `skv-*` on that bridge
//! (learning off, no multicast group), one all-zero FDB entry per peer node (head-end
//! replication of broadcast/unknown frames) and, for every remote task skiff knows of,
//! a neighbour entry on the bridge plus an FDB entry pointing its MAC at its node.
//! Reconcile only ever removes links and entries on devices named by `names`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::InfoKind;
use skiff_proto::v1 as pb;

use crate::link::{FdbEntry, Link, LinkError, Links, Neighbour, is_kind};
use crate::names;

/// The standard VXLAN UDP port (IANA 4789).
pub const VXLAN_PORT: u16 = 4789;
/// Outer Ethernet + IPv4 + UDP + VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Why the assignments cannot be turned into a plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("network {network}: invalid {field} {value:?}")]
    InvalidNetwork {
        network: String,
        field: &'static str,
        value: String,
    },
    #[error("overlay peer {node}: invalid underlay address {value:?}")]
    InvalidPeer { node: String, value: String },
}

/// One network as this node sets it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    pub id: String,
    pub name: String,
    pub project: String,
    pub bridge: String,
    pub vxlan: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// No egress (compose `internal: true`).
    pub internal: bool,
}

impl NetworkPlan {
    pub fn from_pb(n: &pb::Network) -> Result<Self, PlanError> {
        let bad = |field, value: &str| PlanError::InvalidNetwork {
            network: n.id.clone(),
            field,
            value: value.to_owned(),
        };
        let subnet: Ipv4Net = n.subnet.parse().map_err(|_| bad("subnet", &n.subnet))?;
        let gateway: Ipv4Addr = n
            .gateway
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad("gateway", &n.gateway))?;
        if !subnet.contains(&gateway) || n.vni == 0 || n.vni >= 1 << 24 {
            return Err(bad(
                "gateway or vni",
                &format!("{} vni {}", n.gateway, n.vni),
            ));
        }
        let spec = n.spec.clone().unwrap_or_default();
        Ok(Self {
            id: n.id.clone(),
            name: spec.name,
            project: spec.project,
            bridge: names::bridge(&n.id),
            vxlan: names::vxlan(&n.id),
            vni: n.vni,
            subnet: subnet.trunc(),
            gateway,
            internal: spec.internal,
        })
    }
}

/// Everything the overlay of this node should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayPlan {
    pub networks: BTreeMap<String, NetworkPlan>,
    /// Underlay addresses of the other nodes.
    pub peers: BTreeSet<Ipv4Addr>,
    /// The same, by node id.
    pub peer_nodes: BTreeMap<String, Ipv4Addr>,
    /// Per network id: tasks on other nodes, as (task address, their node's underlay).
    pub remote_tasks: BTreeMap<String, BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
}

/// Parses "10.213.1.5" or "10.213.1.5/24".
pub fn parse_host(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.parse().ok()
}

/// Builds the plan. `local` is this node's underlay address, `node_id` its id; both are
/// left out of the peers.
pub fn plan(
    assignments: &pb::Assignments,
    endpoints: Option<&pb::EndpointTable>,
    node_id: &str,
    local: Ipv4Addr,
) -> Result<OverlayPlan, PlanError> {
    let mut out = OverlayPlan::default();
    for n in &assignments.networks {
        let p = NetworkPlan::from_pb(n)?;
        out.networks.insert(p.id.clone(), p);
    }
    let mut vtep_of = BTreeMap::new();
    for peer in &assignments.peers {
        let addr: Ipv4Addr = peer.addr.parse().map_err(|_| PlanError::InvalidPeer {
            node: peer.node_id.clone(),
            value: peer.addr.clone(),
        })?;
        if peer.node_id == node_id || addr == local {
            continue;
        }
        out.peers.insert(addr);
        vtep_of.insert(peer.node_id.as_str(), addr);
        out.peer_nodes.insert(peer.node_id.clone(), addr);
    }
    for svc in endpoints.map(|t| t.services.as_slice()).unwrap_or_default() {
        let Some(net) = out.networks.get(&svc.network_id) else {
            continue;
        };
        for t in &svc.tasks {
            let (Some(ip), Some(vtep)) = (parse_host(&t.addr), vtep_of.get(t.node_id.as_str()))
            else {
                continue;
            };
            if net.subnet.contains(&ip) {
                out.remote_tasks
                    .entry(svc.network_id.clone())
                    .or_default()
                    .insert((ip, *vtep));
            }
        }
    }
    Ok(out)
}

/// A step of the reconcile that failed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Converges the kernel of this namespace to `plan`; `mtu` is the overlay MTU (underlay
/// MTU minus [`VXLAN_OVERHEAD`]). Returns the VXLAN devices of the plan's networks.
pub async fn reconcile(
    links: &Links,
    plan: &OverlayPlan,
    local: Ipv4Addr,
    port: u16,
    mtu: u32,
) -> Result<Vec<Link>, OverlayError> {
    let mut vxlans = Vec::with_capacity(plan.networks.len());
    for net in plan.networks.values() {
        let bridge = ensure_bridge(links, net, mtu).await?;
        let vxlan = ensure_vxlan(links, net, &bridge, local, port, mtu).await?;
        let remote = plan.remote_tasks.get(&net.id);
        reconcile_fdb(links, &vxlan, &plan.peers, remote).await?;
        reconcile_neighbours(links, &bridge, remote).await?;
        vxlans.push(vxlan);
    }
    remove_stale(links, plan).await?;
    Ok(vxlans)
}

/// Deletes every bridge and VXLAN device skiff made that `plan` does not name.
pub async fn remove_stale(links: &Links, plan: &OverlayPlan) -> Result<(), OverlayError> {
    let wanted: BTreeSet<&str> = plan
        .networks
        .values()
        .flat_map(|n| [n.bridge.as_str(), n.vxlan.as_str()])
        .collect();
    for link in links.list().await? {
        let ours = link.name.starts_with(names::BRIDGE_PREFIX)
            || link.name.starts_with(names::VXLAN_PREFIX);
        if ours && !wanted.contains(link.name.as_str()) {
            tracing::info!(link = %link.name, "removing overlay link no longer assigned");
            links.delete(&link).await?;
        }
    }
    Ok(())
}

async fn ensure_bridge(links: &Links, net: &NetworkPlan, mtu: u32) -> Result<Link, LinkError> {
    let mac = names::gateway_mac(&net.id);
    let alias = format!("skiff network={}", net.id);
    let mut link = links.by_name(&net.bridge).await?;
    if let Some(l) = &link
        && !is_kind(l, InfoKind::Bridge)
    {
        links.delete(l).await?;
        link = None;
    }
    let link = match link {
        Some(l) => l,
        None => {
            links.add_bridge(&net.bridge, mac, mtu, &alias).await?;
            links.require(&net.bridge).await?
        }
    };
    if link.mtu != mtu {
        links.set_mtu(&link, mtu).await?;
    }
    links
        .ensure_address(&link, net.gateway, net.subnet.prefix_len())
        .await?;
    if !link.up {
        links.set_up(&link).await?;
    }
    Ok(link)
}

async fn ensure_vxlan(
    links: &Links,
    net: &NetworkPlan,
    bridge: &Link,
    local: Ipv4Addr,
    port: u16,
    mtu: u32,
) -> Result<Link, LinkError> {
    let alias = format!("skiff network={}", net.id);
    let mut link = links.by_name(&net.vxlan).await?;
    if let Some(l) = &link
        && l.vxlan != Some((net.vni, Some(local), port))
    {
        tracing::info!(link = %l.name, have = ?l.vxlan, "recreating VXLAN device with new parameters");
        links.delete(l).await?;
        link = None;
    }
    let link = match link {
        Some(l) => l,
        None => {
            links
                .add_vxlan(&net.vxlan, net.vni, local, port, mtu, &alias)
                .await?;
            links.require(&net.vxlan).await?
        }
    };
    if link.controller != Some(bridge.index) {
        links.set_controller(&link, bridge.index).await?;
    }
    if link.mtu != mtu {
        links.set_mtu(&link, mtu).await?;
    }
    links.set_vxlan_port_options(&link).await?;
    if !link.up {
        links.set_up(&link).await?;
    }
    Ok(link)
}

/// The FDB a VXLAN device should hold.
pub fn desired_fdb(
    peers: &BTreeSet<Ipv4Addr>,
    remote: Option<&BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
) -> BTreeSet<FdbEntry> {
    let mut out: BTreeSet<FdbEntry> = peers
        .iter()
        .map(|&dst| FdbEntry { mac: [0; 6], dst })
        .collect();
    for &(ip, vtep) in remote.into_iter().flatten() {
        if peers.contains(&vtep) {
            out.insert(FdbEntry {
                mac: names::mac_for(ip),
                dst: vtep,
            });
        }
    }
    out
}

async fn reconcile_fdb(
    links: &Links,
    vxlan: &Link,
    peers: &BTreeSet<Ipv4Addr>,
    remote: Option<&BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
) -> Result<(), LinkError> {
    let want = desired_fdb(peers, remote);
    let have: BTreeSet<FdbEntry> = links.fdb(vxlan).await?.into_iter().collect();
    for e in have.difference(&want) {
        links.fdb_delete(vxlan, *e).await?;
    }
    for e in want.difference(&have) {
        links.fdb_append(vxlan, *e).await?;
    }
    Ok(())
}

async fn reconcile_neighbours(
    links: &Links,
    bridge: &Link,
    remote: Option<&BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
) -> Result<(), LinkError> {
    let want: BTreeSet<Neighbour> = remote
        .into_iter()
        .flatten()
        .map(|&(ip, _)| Neighbour {
            ip,
            mac: names::mac_for(ip),
        })
        .collect();
    let have: BTreeSet<Neighbour> = links
        .permanent_neighbours(bridge)
        .await?
        .into_iter()
        .collect();
    for n in have.difference(&want) {
        links.neighbour_delete(bridge, *n).await?;
    }
    for n in want.difference(&have) {
        links.neighbour_replace(bridge, *n).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, subnet: &str, vni: u32) -> pb::Network {
        let s: Ipv4Net = subnet.parse().expect("subnet");
        let gw = Ipv4Addr::from(u32::from(s.network()) + 1);
        pb::Network {
            id: id.into(),
            subnet: subnet.into(),
            gateway: gw.to_string(),
            vni,
            ..Default::default()
        }
    }

    fn peer(node: &str, addr: &str) -> pb::OverlayPeer {
        pb::OverlayPeer {
            node_id: node.into(),
            addr: addr.into(),
            subnet: String::new(),
        }
    }

    #[test]
    fn plan_leaves_out_this_node_and_keeps_known_remote_tasks() {
        let a = pb::Assignments {
            networks: vec![net("n1", "10.213.1.0/24", 4096)],
            peers: vec![
                peer("me", "172.31.0.1"),
                peer("b", "172.31.0.2"),
                peer("c", "172.31.0.3"),
            ],
            ..Default::default()
        };
        let t = pb::EndpointTable {
            revision: 1,
            services: vec![pb::ServiceEndpoint {
                network_id: "n1".into(),
                tasks: vec![
                    pb::TaskEndpoint {
                        task_id: "t1".into(),
                        addr: "10.213.1.5/24".into(),
                        node_id: "b".into(),
                    },
                    pb::TaskEndpoint {
                        task_id: "t2".into(),
                        addr: "10.213.1.6".into(),
                        node_id: "me".into(),
                    },
                    pb::TaskEndpoint {
                        task_id: "t3".into(),
                        addr: "10.99.1.6".into(),
                        node_id: "c".into(),
                    },
                ],
                ..Default::default()
            }],
        };
        let p = plan(&a, Some(&t), "me", "172.31.0.1".parse().expect("ip")).expect("plan");
        assert_eq!(p.peers.len(), 2);
        let remote = &p.remote_tasks["n1"];
        assert_eq!(
            remote.len(),
            1,
            "local task and out-of-subnet task are left out"
        );
        let fdb = desired_fdb(&p.peers, Some(remote));
        assert_eq!(fdb.len(), 3);
        assert!(fdb.contains(&FdbEntry {
            mac: names::mac_for("10.213.1.5".parse().expect("ip")),
            dst: "172.31.0.2".parse().expect("ip")
        }));
        assert_eq!(p.networks["n1"].gateway, Ipv4Addr::new(10, 213, 1, 1));
    }

    #[test]
    fn plan_rejects_bad_input() {
        let mut a = pb::Assignments {
            networks: vec![net("n1", "10.213.1.0/24", 0)],
            ..Default::default()
        };
        assert!(matches!(
            plan(&a, None, "me", Ipv4Addr::LOCALHOST),
            Err(PlanError::InvalidNetwork { .. })
        ));
        let mut bad = net("n1", "10.213.1.0/24", 5);
        bad.subnet = "nonsense".into();
        a.networks = vec![bad];
        assert!(plan(&a, None, "me", Ipv4Addr::LOCALHOST).is_err());
        a.networks.clear();
        a.peers = vec![peer("b", "not-an-ip")];
        assert!(matches!(
            plan(&a, None, "me", Ipv4Addr::LOCALHOST),
            Err(PlanError::InvalidPeer { .. })
        ));
    }
}
