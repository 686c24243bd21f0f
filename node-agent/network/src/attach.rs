//! A task's network namespace: made by skiff before the container (the runtime joins
//! it by path), with lo up and one veth per attachment whose host end `skh-*` sits on
//! the network's bridge and whose container end is `eth<i>` with the task's address,
//! a MAC derived from it, and (on the first network) the default route via the gateway.
//! The host end's alias records `skiff task=<id> network=<id>` so `detach` finds it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use skiff_proto::v1 as pb;

use crate::link::{Link, LinkError, Links, VethHost, VethPeer};
use crate::names;
use crate::netns::{self, NetnsError, NetnsPath};
use crate::overlay::NetworkPlan;

/// How a task is networked (compose `network_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Its own namespace on its networks (the default).
    Networks,
    /// The node's namespace: no namespace of its own, nothing to set up.
    Host,
    /// Its own namespace with only `lo`.
    None,
}

impl NetworkMode {
    /// `""`, `"bridge"`, `"overlay"` and `"default"` mean [`NetworkMode::Networks`].
    pub fn parse(s: &str) -> Result<Self, AttachError> {
        match s {
            "" | "bridge" | "overlay" | "default" => Ok(Self::Networks),
            "host" => Ok(Self::Host),
            "none" => Ok(Self::None),
            other => Err(AttachError::UnsupportedMode {
                mode: other.to_owned(),
            }),
        }
    }
}

/// Why a task could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("network_mode {mode:?} is not supported (use host, none or a network)")]
    UnsupportedMode { mode: String },
    #[error("task {task}: network {network} is not assigned to this node")]
    UnknownNetwork { task: String, network: String },
    #[error("task {task}: invalid address {addr:?} on network {network}")]
    InvalidAddress {
        task: String,
        network: String,
        addr: String,
    },
    #[error("task {task}: invalid task id for a path")]
    InvalidTaskId { task: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("opening namespace {path}: {err}")]
    Open { path: PathBuf, err: std::io::Error },
}

/// One attachment, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub network_id: String,
    pub addr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
}

/// Checks a task's attachments against the networks this node has. Pure.
pub fn endpoints(
    task_id: &str,
    attachments: &[pb::NetworkAttachment],
    networks: &BTreeMap<String, NetworkPlan>,
) -> Result<Vec<Endpoint>, AttachError> {
    let mut out = Vec::new();
    for a in attachments {
        let net = networks
            .get(&a.network_id)
            .ok_or_else(|| AttachError::UnknownNetwork {
                task: task_id.to_owned(),
                network: a.network_id.clone(),
            })?;
        let bad = |addr: &str| AttachError::InvalidAddress {
            task: task_id.to_owned(),
            network: a.network_id.clone(),
            addr: addr.to_owned(),
        };
        let raw = a.addresses.first().ok_or_else(|| bad(""))?;
        let addr: Ipv4Net = if raw.contains('/') {
            raw.parse().map_err(|_| bad(raw))?
        } else {
            let ip: Ipv4Addr = raw.parse().map_err(|_| bad(raw))?;
            Ipv4Net::new(ip, net.subnet.prefix_len()).map_err(|_| bad(raw))?
        };
        if !net.subnet.contains(&addr.addr()) || addr.addr() == net.gateway {
            return Err(bad(raw));
        }
        out.push(Endpoint {
            network_id: a.network_id.clone(),
            addr,
            gateway: net.gateway,
            bridge: net.bridge.clone(),
        });
    }
    Ok(out)
}

/// Where the namespace of `task_id` lives under `run_dir`.
pub fn netns_path(run_dir: &Path, task_id: &str) -> Result<PathBuf, AttachError> {
    let ok = !task_id.is_empty()
        && task_id != "."
        && task_id != ".."
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(AttachError::InvalidTaskId {
            task: task_id.to_owned(),
        });
    }
    Ok(run_dir.join("netns").join(task_id))
}

fn alias(task_id: &str, network_id: &str) -> String {
    format!("skiff task={task_id} network={network_id}")
}

/// The task a host veth belongs to, read back from its alias.
pub fn task_of_alias(alias: &str) -> Option<&str> {
    alias.strip_prefix("skiff task=")?.split_whitespace().next()
}

/// Written in a task's namespace as it is made, while `lo` is its only interface: the
/// overlay is IPv4 only, so the task's `eth*` get no IPv6 (no link-local address, no
/// duplicate address detection, no MLD reports: kernel work for every new interface
/// that was ~3.6 % of a 100-replica deploy's CPU). `lo`, made with the namespace, keeps
/// `::1`, as in Docker's IPv4-only networks.
const TASK_SYSCTLS: &[(&str, &str)] = &[("net.ipv6.conf.default.disable_ipv6", "1")];

/// Makes (or completes, when it already exists) the namespace of a task and its
/// veths. `host` is the netlink handle of the node's namespace.
pub async fn attach(
    host: &Links,
    run_dir: &Path,
    task_id: &str,
    eps: &[Endpoint],
    mtu: u32,
) -> Result<Attached, AttachError> {
    let path = netns_path(run_dir, task_id)?;
    let ns = if netns::is_netns(&path) {
        NetnsPath(path.clone())
    } else {
        let p = path.clone();
        tokio::task::spawn_blocking(move || netns::create_with(&p, TASK_SYSCTLS))
            .await
            .map_err(|_| NetnsError::ThreadPanicked {
                ns: path.display().to_string(),
            })??
    };
    let inner = Links::new(netns::netlink(Some(ns.as_path())).await?);
    let lo = inner.require("lo").await?;
    inner.set_up(&lo).await?;
    let mut host_ends = Vec::with_capacity(eps.len());
    for (i, ep) in eps.iter().enumerate() {
        let ifname = format!("eth{i}");
        let host_name = names::host_veth(task_id, &ep.network_id);
        let bridge = host.require(&ep.bridge).await?;
        let link_alias = alias(task_id, &ep.network_id);
        if inner.by_name(&ifname).await?.is_none() {
            if let Some(stale) = host.by_name(&host_name).await? {
                host.delete(&stale).await?;
            }
            let file = std::fs::File::open(ns.as_path()).map_err(|err| AttachError::Open {
                path: ns.0.clone(),
                err,
            })?;
            host.add_veth_into(
                VethHost {
                    name: &host_name,
                    bridge: bridge.index,
                    mtu,
                },
                VethPeer {
                    name: &ifname,
                    mac: names::mac_for(ep.addr.addr()),
                    ns_fd: file.as_raw_fd(),
                },
            )
            .await?;
        }
        // The kernel ignores an alias given at creation; also finishes a set-up cut
        // short (agent restart).
        let hv = host.require(&host_name).await?;
        if hv.alias.as_deref() != Some(link_alias.as_str()) {
            host.set_alias(&hv, &link_alias).await?;
        }
        if hv.controller != Some(bridge.index) {
            host.set_controller(&hv, bridge.index).await?;
        }
        if !hv.up {
            host.set_up(&hv).await?;
        }
        let cv = inner.require(&ifname).await?;
        inner
            .ensure_address(&cv, ep.addr.addr(), ep.addr.prefix_len())
            .await?;
        if !cv.up {
            inner.set_up(&cv).await?;
        }
        if i == 0 {
            inner.add_default_route(ep.gateway).await?;
        }
        host_ends.push(hv);
    }
    Ok(Attached { ns, host_ends })
}

/// A task's namespace as attached.
#[derive(Debug)]
pub struct Attached {
    pub ns: NetnsPath,
    /// The host end of each endpoint's veth, in the endpoints' order.
    pub host_ends: Vec<Link>,
}

/// Removes a task's veths and namespace. Idempotent.
pub async fn detach(host: &Links, run_dir: &Path, task_id: &str) -> Result<(), AttachError> {
    for link in host.list().await? {
        let mine = link.name.starts_with(names::HOST_VETH_PREFIX)
            && link.alias.as_deref().and_then(task_of_alias) == Some(task_id);
        if mine {
            host.delete(&link).await?;
        }
    }
    let path = netns_path(run_dir, task_id)?;
    tokio::task::spawn_blocking(move || netns::remove(&path))
        .await
        .map_err(|_| NetnsError::ThreadPanicked {
            ns: task_id.to_owned(),
        })??;
    Ok(())
}

/// Tasks that have a namespace under `run_dir` (for re-adoption after a restart).
pub fn attached_tasks(run_dir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(run_dir.join("netns")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> BTreeMap<String, NetworkPlan> {
        let n = pb::Network {
            id: "n1".into(),
            subnet: "10.213.1.0/24".into(),
            gateway: "10.213.1.1".into(),
            vni: 4096,
            ..Default::default()
        };
        BTreeMap::from([("n1".to_owned(), NetworkPlan::from_pb(&n).expect("plan"))])
    }

    fn att(net: &str, addr: &str) -> pb::NetworkAttachment {
        pb::NetworkAttachment {
            network_id: net.into(),
            addresses: vec![addr.into()],
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_are_checked_against_the_networks() {
        let eps = endpoints("t", &[att("n1", "10.213.1.5/24")], &nets()).expect("ok");
        assert_eq!(eps[0].addr.to_string(), "10.213.1.5/24");
        assert_eq!(eps[0].gateway, Ipv4Addr::new(10, 213, 1, 1));
        let bare = endpoints("t", &[att("n1", "10.213.1.6")], &nets()).expect("ok");
        assert_eq!(bare[0].addr.prefix_len(), 24);
        assert!(matches!(
            endpoints("t", &[att("n2", "10.213.1.5/24")], &nets()),
            Err(AttachError::UnknownNetwork { .. })
        ));
        for bad in ["10.213.2.5/24", "10.213.1.1/24", "x", ""] {
            assert!(
                matches!(
                    endpoints("t", &[att("n1", bad)], &nets()),
                    Err(AttachError::InvalidAddress { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn modes_and_paths() {
        assert_eq!(NetworkMode::parse("").expect("ok"), NetworkMode::Networks);
        assert_eq!(NetworkMode::parse("host").expect("ok"), NetworkMode::Host);
        assert_eq!(NetworkMode::parse("none").expect("ok"), NetworkMode::None);
        assert!(NetworkMode::parse("container:x").is_err());
        assert!(netns_path(Path::new("/r"), "../x").is_err());
        assert_eq!(
            netns_path(Path::new("/r"), "t-1").expect("ok"),
            Path::new("/r/netns/t-1")
        );
        assert_eq!(task_of_alias(&alias("t-1", "n")), Some("t-1"));
        assert_eq!(task_of_alias("something else"), None);
    }
}
