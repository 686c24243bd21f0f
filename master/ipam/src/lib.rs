//! Address management for overlay networks, as pure functions over what the store
//! holds: a subnet and a VXLAN id per network, carved from the cluster range; an address
//! per task attachment and a virtual IP per service, from its network's subnet.
//! Level-triggered: what is in use is derived from the live objects each time, so an
//! address is free again as soon as the task that held it has ended. Nothing is kept
//! apart from the store, so nothing can leak.
//!
//! Each overlay network is one L2 segment across all nodes (a bridge per node joined by
//! VXLAN), as Swarm's overlay driver does; so addresses are per network, not per node.
//! The default cluster range, 10.213.0.0/16, stays clear of Docker's pools
//! (172.17–31.x, 192.168.x), Swarm's ingress 10.0.0.0/24, Kubernetes' usual 10.244/16
//! and 10.96/12, and home routers' 192.168.x / 10.0.x / 10.1.x.
//!
//! Layout of a network's /24: `.1` the gateway (the bridge on each node), `.2`–`.254`
//! tasks and virtual IPs.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use skiff_proto::v1 as pb;

/// The cluster range used when the operator sets none.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.213.0.0/16";

/// Prefix length of an allocated network subnet.
pub const NETWORK_PREFIX: u8 = 24;

/// First VXLAN network identifier skiff hands out (low ids are left to other tools).
pub const FIRST_VNI: u32 = 4096;

/// Ranges overlay networks must never use: the host's link and resolver ranges of the
/// machines skiff is tested on, loopback, link-local and multicast.
const RESERVED: &[&str] = &[
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "192.0.2.0/24",
    "10.255.255.0/24",
];

/// An allocation that cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid subnet {subnet:?}: {reason}")]
    InvalidSubnet { subnet: String, reason: String },
    #[error("subnet {subnet} of network {network} overlaps {other}")]
    Overlap {
        network: String,
        subnet: String,
        other: String,
    },
    #[error("the cluster range {cidr} has no free /{NETWORK_PREFIX} left for network {network}")]
    RangeFull { cidr: String, network: String },
    #[error("network {network} ({subnet}) has no free address left")]
    NetworkFull { network: String, subnet: String },
    #[error("no free VXLAN id")]
    VniExhausted,
}

/// Where a new network lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAllocation {
    pub subnet: String,
    pub gateway: String,
    pub vni: u32,
}

fn parse_net(s: &str) -> Result<Ipv4Net, IpamError> {
    s.parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .map_err(|e| IpamError::InvalidSubnet {
            subnet: s.to_owned(),
            reason: e.to_string(),
        })
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Chooses a subnet (the requested one, checked, or the first free /24 of the cluster
/// range) and a VNI for `spec`, given the networks that exist.
pub fn allocate_network(
    cluster_cidr: &str,
    spec: &pb::NetworkSpec,
    existing: &[pb::Network],
) -> Result<NetworkAllocation, IpamError> {
    let name = format!("{}_{}", spec.project, spec.name);
    let taken: Vec<Ipv4Net> = existing
        .iter()
        .filter_map(|n| n.subnet.parse::<Ipv4Net>().ok())
        .collect();
    let reserved: Vec<Ipv4Net> = RESERVED.iter().filter_map(|r| r.parse().ok()).collect();
    let subnet = if spec.subnet.is_empty() {
        let range = parse_net(cluster_cidr)?;
        range
            .subnets(NETWORK_PREFIX)
            .map_err(|e| IpamError::InvalidSubnet {
                subnet: cluster_cidr.to_owned(),
                reason: e.to_string(),
            })?
            .find(|s| !taken.iter().chain(&reserved).any(|t| overlaps(s, t)))
            .ok_or_else(|| IpamError::RangeFull {
                cidr: cluster_cidr.to_owned(),
                network: name.clone(),
            })?
    } else {
        let wanted = parse_net(&spec.subnet)?;
        if wanted.prefix_len() > 30 {
            return Err(IpamError::InvalidSubnet {
                subnet: spec.subnet.clone(),
                reason: "too small: a network needs at least a /30".into(),
            });
        }
        if let Some(other) = taken.iter().chain(&reserved).find(|t| overlaps(&wanted, t)) {
            return Err(IpamError::Overlap {
                network: name,
                subnet: wanted.to_string(),
                other: other.to_string(),
            });
        }
        wanted
    };
    let used_vnis: BTreeSet<u32> = existing.iter().map(|n| n.vni).collect();
    let vni = (FIRST_VNI..(1 << 24))
        .find(|v| !used_vnis.contains(v))
        .ok_or(IpamError::VniExhausted)?;
    let gateway = first_host(&subnet);
    Ok(NetworkAllocation {
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        vni,
    })
}

fn first_host(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// Addresses of `network` held right now: the gateway, every virtual IP, and every
/// attachment of a task that has not ended.
pub fn used_addresses(
    network: &pb::Network,
    services: &[pb::Service],
    tasks: &[pb::Task],
) -> BTreeSet<Ipv4Addr> {
    use skiff_proto::TaskStateExt;
    let mut used = BTreeSet::new();
    if let Ok(gw) = network.gateway.parse() {
        used.insert(gw);
    }
    for s in services {
        for vip in &s.virtual_ips {
            if vip.network_id == network.id
                && let Some(ip) = host_part(&vip.addr)
            {
                used.insert(ip);
            }
        }
    }
    for t in tasks {
        let ended = t.status.as_ref().is_some_and(|s| s.state().is_terminal());
        if ended {
            continue;
        }
        for a in &t.networks {
            if a.network_id == network.id {
                used.extend(a.addresses.iter().filter_map(|addr| host_part(addr)));
            }
        }
    }
    used
}

/// "10.213.0.5/24" or "10.213.0.5" → 10.213.0.5.
pub fn host_part(addr: &str) -> Option<Ipv4Addr> {
    addr.split('/').next().and_then(|a| a.parse().ok())
}

/// The lowest free address of `network`, given what is `used`; returned in CIDR form
/// ("10.213.0.7/24") and added to `used` so a batch of allocations stays consistent.
pub fn allocate_address(
    network: &pb::Network,
    used: &mut BTreeSet<Ipv4Addr>,
) -> Result<String, IpamError> {
    let net = parse_net(&network.subnet)?;
    let full = || IpamError::NetworkFull {
        network: network
            .spec
            .as_ref()
            .map(|s| format!("{}_{}", s.project, s.name))
            .unwrap_or_else(|| network.id.clone()),
        subnet: network.subnet.clone(),
    };
    let free = net.hosts().find(|h| !used.contains(h)).ok_or_else(full)?;
    used.insert(free);
    Ok(format!("{free}/{}", net.prefix_len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, subnet: &str) -> pb::NetworkSpec {
        pb::NetworkSpec {
            name: name.into(),
            project: "p".into(),
            subnet: subnet.into(),
            ..Default::default()
        }
    }

    fn network(id: &str, subnet: &str, vni: u32) -> pb::Network {
        pb::Network {
            id: id.into(),
            subnet: subnet.into(),
            gateway: first_host(&subnet.parse().expect("subnet")).to_string(),
            vni,
            spec: Some(spec(id, "")),
            ..Default::default()
        }
    }

    #[test]
    fn networks_get_distinct_subnets_and_vnis_from_the_cluster_range() {
        let a = allocate_network(DEFAULT_CLUSTER_CIDR, &spec("a", ""), &[]).expect("a");
        assert_eq!(a.subnet, "10.213.0.0/24");
        assert_eq!(a.gateway, "10.213.0.1");
        assert_eq!(a.vni, FIRST_VNI);
        let existing = [network("a", &a.subnet, a.vni)];
        let b = allocate_network(DEFAULT_CLUSTER_CIDR, &spec("b", ""), &existing).expect("b");
        assert_eq!(b.subnet, "10.213.1.0/24");
        assert_eq!(b.vni, FIRST_VNI + 1);
    }

    #[test]
    fn a_requested_subnet_is_honoured_unless_it_overlaps() {
        let got =
            allocate_network(DEFAULT_CLUSTER_CIDR, &spec("x", "10.50.0.0/24"), &[]).expect("x");
        assert_eq!(got.subnet, "10.50.0.0/24");
        let existing = [network("x", "10.50.0.0/24", 4096)];
        let err = allocate_network(
            DEFAULT_CLUSTER_CIDR,
            &spec("y", "10.50.0.128/25"),
            &existing,
        )
        .expect_err("overlap");
        assert!(err.to_string().contains("overlaps 10.50.0.0/24"), "{err}");
        let err = allocate_network(DEFAULT_CLUSTER_CIDR, &spec("z", "192.0.2.0/24"), &[])
            .expect_err("host link range");
        assert!(matches!(err, IpamError::Overlap { .. }));
        let err = allocate_network(DEFAULT_CLUSTER_CIDR, &spec("w", "not-a-subnet"), &[])
            .expect_err("garbage");
        assert!(err.to_string().contains("not-a-subnet"));
    }

    #[test]
    fn a_full_cluster_range_says_so() {
        let existing = [network("a", "10.9.0.0/24", 4096)];
        let err = allocate_network("10.9.0.0/24", &spec("b", ""), &existing).expect_err("full");
        assert!(matches!(err, IpamError::RangeFull { .. }), "{err}");
    }

    #[test]
    fn addresses_skip_the_gateway_and_what_live_tasks_hold_and_come_back_when_tasks_end() {
        let net = network("n1", "10.213.0.0/24", 4096);
        let attached = |id: &str, addr: &str, state: pb::TaskState| pb::Task {
            id: id.into(),
            networks: vec![pb::NetworkAttachment {
                network_id: "n1".into(),
                addresses: vec![addr.into()],
                ..Default::default()
            }],
            status: Some(pb::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let tasks = vec![
            attached("t1", "10.213.0.2/24", pb::TaskState::Running),
            attached("t2", "10.213.0.3/24", pb::TaskState::Failed),
        ];
        let services = vec![pb::Service {
            virtual_ips: vec![pb::VirtualIp {
                network_id: "n1".into(),
                addr: "10.213.0.4/24".into(),
            }],
            ..Default::default()
        }];
        let mut used = used_addresses(&net, &services, &tasks);
        assert!(used.contains(&Ipv4Addr::new(10, 213, 0, 1)));
        assert!(used.contains(&Ipv4Addr::new(10, 213, 0, 2)));
        assert!(
            !used.contains(&Ipv4Addr::new(10, 213, 0, 3)),
            "a failed task's address is free"
        );
        assert_eq!(
            allocate_address(&net, &mut used).expect("addr"),
            "10.213.0.3/24"
        );
        assert_eq!(
            allocate_address(&net, &mut used).expect("addr"),
            "10.213.0.5/24"
        );
    }

    #[test]
    fn a_full_network_names_itself() {
        let net = network("tiny", "10.7.0.0/30", 4096);
        let mut used = used_addresses(&net, &[], &[]);
        allocate_address(&net, &mut used).expect(".2 is free");
        let err = allocate_address(&net, &mut used).expect_err("full");
        assert!(err.to_string().contains("10.7.0.0/30"), "{err}");
    }
}
