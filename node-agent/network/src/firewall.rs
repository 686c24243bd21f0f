//! nftables: skiff's own tables, rendered as `nft -f` scripts (pure) and replaced
//! atomically (create-if-missing, delete, re-create in one transaction).
//!
//! Node table `inet skiff`: forwarding between skiff bridges only within a network
//! (isolation), no way out of `internal` networks, egress masquerade per network,
//! hairpin masquerade, and published ports. An ingress port DNATs to a healthy local
//! replica when this node has one (no SNAT: the reply goes back through this node's
//! conntrack, so the replica sees the client's real address); otherwise it DNATs to a
//! node that has one, on the same port, with masquerade (the client address is lost on
//! that hop, as in Swarm's mesh). Traffic that already came from a peer is only ever
//! sent to local replicas, so it cannot loop. Host-mode ports DNAT to local tasks only.
//!
//! Task table `ip skiff`, inside each task's namespace: service VIPs, DNAT (address
//! only, so every port works) in the output hook to a random healthy backend, the way
//! Swarm balances inside the container's sandbox, but with conntrack instead of IPVS:
//! idle connections live for nf_conntrack_tcp_timeout_established (5 days by default)
//! rather than IPVS's 900 s (moby#31208).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use skiff_proto::v1 as pb;

use crate::attach::Endpoint;
use crate::netns::{self, NetnsError};
use crate::nft::Nft;
use crate::overlay::{OverlayPlan, parse_host};

/// Conntrack mark of flows sent on to another node by the routing mesh.
pub const MESH_MARK: u32 = 0x534b;
pub const NODE_TABLE: &str = "inet skiff";
pub const TASK_TABLE: &str = "ip skiff";

/// Why nft failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running {cmd}: {err}")]
    Spawn { cmd: String, err: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn proto(p: i32) -> &'static str {
    if p == pb::port_config::Protocol::Udp as i32 {
        "udp"
    } else {
        "tcp"
    }
}

/// `dnat ip to <one of addrs>[:port]`, random among several.
fn dnat(addrs: &[Ipv4Addr], port: Option<u32>) -> String {
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    match addrs {
        [one] => format!("dnat ip to {one}{port}"),
        many => {
            let map: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{i} : {a}"))
                .collect();
            format!(
                "dnat ip to numgen random mod {} map {{ {} }}{port}",
                many.len(),
                map.join(", ")
            )
        }
    }
}

fn healthy(s: &pb::ServiceEndpoint) -> BTreeSet<Ipv4Addr> {
    s.backends.iter().filter_map(|b| parse_host(b)).collect()
}

/// Rules of the published ports, deduplicated by (protocol, port): a service on two
/// networks has two endpoints with the same ports.
fn published(node_id: &str, plan: &OverlayPlan, endpoints: &pb::EndpointTable) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut rules = Vec::new();
    let peers: Vec<String> = plan.peers.iter().map(ToString::to_string).collect();
    for s in &endpoints.services {
        if !plan.networks.contains_key(&s.network_id) {
            continue;
        }
        let ok = healthy(s);
        let mut local = Vec::new();
        let mut remote = BTreeSet::new();
        for t in &s.tasks {
            let Some(ip) = parse_host(&t.addr) else {
                continue;
            };
            if !ok.contains(&ip) {
                continue;
            }
            if t.node_id == node_id {
                local.push(ip);
            } else if let Some(vtep) = plan.peer_nodes.get(&t.node_id) {
                remote.insert(*vtep);
            }
        }
        local.sort();
        local.dedup();
        for p in s
            .ports
            .iter()
            .filter(|p| p.published_port > 0 && p.target_port > 0)
        {
            let (pr, port) = (proto(p.protocol), p.published_port);
            if !seen.insert((pr, port)) {
                continue;
            }
            let host_mode = p.publish_mode == pb::port_config::PublishMode::Host as i32;
            if !local.is_empty() {
                rules.push(format!(
                    "{pr} dport {port} {}",
                    dnat(&local, Some(p.target_port))
                ));
            } else if !host_mode && !remote.is_empty() {
                let remote: Vec<Ipv4Addr> = remote.iter().copied().collect();
                let not_from_peers = if peers.is_empty() {
                    String::new()
                } else {
                    format!("ip saddr != {{ {} }} ", peers.join(", "))
                };
                rules.push(format!(
                    "{not_from_peers}{pr} dport {port} ct mark set {MESH_MARK:#x} {}",
                    dnat(&remote, None)
                ));
            }
        }
    }
    rules
}

fn replace_script(table: &str, body: &str) -> String {
    format!("table {table} {{}}\ndelete table {table}\ntable {table} {{\n{body}}}\n")
}

/// The node's table. `vxlan_port`: the overlay's UDP port, whose packets skip conntrack
/// (nothing NATs them, and every VXLAN flow would otherwise cost two conntrack lookups
/// and an entry per peer and source port).
pub fn render_node(
    node_id: &str,
    plan: &OverlayPlan,
    endpoints: Option<&pb::EndpointTable>,
    vxlan_port: u16,
) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "  chain raw_prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n    udp dport {vxlan_port} notrack\n  }}"
    );
    let _ = writeln!(
        b,
        "  chain raw_output {{\n    type filter hook output priority raw; policy accept;\n    udp dport {vxlan_port} notrack\n  }}"
    );
    let _ = writeln!(
        b,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;"
    );
    for n in plan.networks.values() {
        let _ = writeln!(b, "    iifname \"{0}\" oifname \"{0}\" accept", n.bridge);
    }
    let _ = writeln!(b, "    iifname \"skb-*\" oifname \"skb-*\" drop");
    for n in plan.networks.values().filter(|n| n.internal) {
        let _ = writeln!(
            b,
            "    iifname \"{0}\" drop\n    oifname \"{0}\" drop",
            n.bridge
        );
    }
    let _ = writeln!(
        b,
        "    iifname \"skb-*\" accept\n    oifname \"skb-*\" accept\n    ct mark {MESH_MARK:#x} accept\n  }}"
    );
    let _ = writeln!(
        b,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump published\n  }}"
    );
    let _ = writeln!(
        b,
        "  chain output {{\n    type nat hook output priority -100; policy accept;\n    ip daddr != 127.0.0.0/8 fib daddr type local jump published\n  }}"
    );
    let _ = writeln!(b, "  chain published {{");
    for r in endpoints
        .map(|e| published(node_id, plan, e))
        .unwrap_or_default()
    {
        let _ = writeln!(b, "    {r}");
    }
    let _ = writeln!(b, "  }}");
    let _ = writeln!(
        b,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ct mark {MESH_MARK:#x} masquerade"
    );
    for n in plan.networks.values() {
        let _ = writeln!(
            b,
            "    oifname \"{}\" ip saddr {} ct status dnat masquerade",
            n.bridge, n.subnet
        );
        if !n.internal {
            let _ = writeln!(
                b,
                "    ip saddr {} oifname != \"{}\" masquerade",
                n.subnet, n.bridge
            );
        }
    }
    let _ = writeln!(b, "  }}");
    replace_script(NODE_TABLE, &b)
}

/// The table inside a task's namespace: the VIPs of the services on its networks.
pub fn render_task(eps: &[Endpoint], endpoints: Option<&pb::EndpointTable>) -> String {
    let nets: BTreeSet<&str> = eps.iter().map(|e| e.network_id.as_str()).collect();
    let mut nat = Vec::new();
    let mut unreachable = Vec::new();
    let mut seen = BTreeSet::new();
    for s in endpoints.map(|e| e.services.as_slice()).unwrap_or_default() {
        let Some(vip) = parse_host(&s.vip) else {
            continue;
        };
        if !nets.contains(s.network_id.as_str()) || !seen.insert(vip) {
            continue;
        }
        let backends: Vec<Ipv4Addr> = healthy(s).into_iter().collect();
        if backends.is_empty() {
            unreachable.push(vip);
        } else {
            nat.push(format!("    ip daddr {vip} {}", dnat(&backends, None)));
        }
    }
    let mut b =
        String::from("  chain output {\n    type nat hook output priority -100; policy accept;\n");
    for r in nat {
        let _ = writeln!(b, "{r}");
    }
    b.push_str(
        "  }\n  chain filter {\n    type filter hook output priority filter; policy accept;\n",
    );
    for vip in unreachable {
        let _ = writeln!(
            b,
            "    ip daddr {vip} reject with icmp type host-unreachable"
        );
    }
    b.push_str("  }\n");
    b
}

/// Loads a task's table (`body` from [`render_task`]) with `nft`, a loader for the
/// task's namespace.
///
/// The table is made if missing, emptied of rules and filled, in one transaction that
/// deletes no chain and no table: deleting a base chain makes the closing of an
/// nftables socket wait for an RCU grace period (10-30 ms measured here, per task), and
/// in a new namespace there is nothing to empty, so the first load, the one a starting
/// task waits for, takes about a millisecond in the kernel. Should the chains themselves
/// differ (a table left by another skiff version), the table is replaced whole instead.
pub async fn load_task_table(nft: &Nft, body: &str) -> Result<(), FirewallError> {
    let refill = format!(
        "table {TASK_TABLE} {{}}\nflush table {TASK_TABLE}\ntable {TASK_TABLE} {{\n{body}}}\n"
    );
    match nft.load(refill).await {
        Ok(()) => Ok(()),
        Err(FirewallError::Failed { .. }) => nft.load(replace_script(TASK_TABLE, body)).await,
        Err(e) => Err(e),
    }
}

/// Removes a table if it exists.
pub fn delete_script(table: &str) -> String {
    format!("table {table} {{}}\ndelete table {table}\n")
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    let line = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| FirewallError::Spawn {
            cmd: line.clone(),
            err,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|err| FirewallError::Spawn {
                cmd: line.clone(),
                err,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|err| FirewallError::Spawn {
            cmd: line.clone(),
            err,
        })?;
    if !out.status.success() {
        return Err(FirewallError::Failed {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside `ns` (the child inherits the namespace of the thread that
/// spawned it).
pub async fn run_in(
    ns: Option<&Path>,
    cmd: &'static str,
    args: Vec<String>,
    stdin: Option<String>,
) -> Result<String, FirewallError> {
    netns::run_in_async(ns, move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(cmd, &args, stdin.as_deref())
    })
    .await?
}

/// Loads an `nft -f` script in `ns`, as one transaction.
pub async fn apply(ns: Option<&Path>, script: String) -> Result<(), FirewallError> {
    run_in(ns, "nft", vec!["-f".into(), "-".into()], Some(script))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay;

    fn setup() -> (OverlayPlan, pb::EndpointTable) {
        let net = |id: &str, third: u8, internal: bool| pb::Network {
            id: id.into(),
            spec: Some(pb::NetworkSpec {
                internal,
                ..Default::default()
            }),
            subnet: format!("10.213.{third}.0/24"),
            gateway: format!("10.213.{third}.1"),
            vni: 4096 + u32::from(third),
            ..Default::default()
        };
        let peer = |n: &str, a: &str| pb::OverlayPeer {
            node_id: n.into(),
            addr: a.into(),
            subnet: String::new(),
        };
        let a = pb::Assignments {
            networks: vec![net("n1", 1, false), net("n2", 2, true)],
            peers: vec![peer("me", "172.31.0.1"), peer("b", "172.31.0.2")],
            ..Default::default()
        };
        let te = |addr: &str, node: &str| pb::TaskEndpoint {
            task_id: addr.into(),
            addr: addr.into(),
            node_id: node.into(),
        };
        let port = |published, mode: pb::port_config::PublishMode| pb::PortConfig {
            target_port: 80,
            published_port: published,
            publish_mode: mode as i32,
            ..Default::default()
        };
        let t = pb::EndpointTable {
            revision: 1,
            services: vec![
                pb::ServiceEndpoint {
                    network_id: "n1".into(),
                    name: "web".into(),
                    vip: "10.213.1.100".into(),
                    backends: vec!["10.213.1.5".into(), "10.213.1.6".into()],
                    tasks: vec![
                        te("10.213.1.5", "b"),
                        te("10.213.1.6", "b"),
                        te("10.213.1.7", "me"),
                    ],
                    ports: vec![
                        port(8080, pb::port_config::PublishMode::Ingress),
                        port(8081, pb::port_config::PublishMode::Host),
                    ],
                    ..Default::default()
                },
                pb::ServiceEndpoint {
                    network_id: "n1".into(),
                    name: "api".into(),
                    vip: "10.213.1.101".into(),
                    backends: vec!["10.213.1.9".into()],
                    tasks: vec![te("10.213.1.9", "me")],
                    ports: vec![port(9090, pb::port_config::PublishMode::Ingress)],
                    ..Default::default()
                },
            ],
        };
        (
            overlay::plan(&a, Some(&t), "me", "172.31.0.1".parse().expect("ip")).expect("plan"),
            t,
        )
    }

    #[test]
    fn node_table_isolates_masquerades_and_publishes() {
        let (plan, t) = setup();
        let s = render_node("me", &plan, Some(&t), 4789);
        assert!(s.contains("udp dport 4789 notrack"), "{s}");
        let b1 = crate::names::bridge("n1");
        let b2 = crate::names::bridge("n2");
        assert!(s.starts_with("table inet skiff {}\ndelete table inet skiff\n"));
        assert!(s.contains(&format!("iifname \"{b1}\" oifname \"{b1}\" accept")));
        assert!(s.contains("iifname \"skb-*\" oifname \"skb-*\" drop"));
        assert!(
            s.contains(&format!("iifname \"{b2}\" drop")),
            "internal network has no way out"
        );
        assert!(s.contains(&format!(
            "ip saddr 10.213.1.0/24 oifname != \"{b1}\" masquerade"
        )));
        assert!(
            !s.contains("ip saddr 10.213.2.0/24 oifname"),
            "no egress masquerade for internal"
        );
        // web has no healthy local replica (10.213.1.7 is not a backend): mesh to node b.
        assert!(s.contains("ip saddr != { 172.31.0.2 } tcp dport 8080 ct mark set 0x534b dnat ip to 172.31.0.2\n"), "{s}");
        // host mode never leaves the node.
        assert!(!s.contains("dport 8081"));
        // api has a local replica: DNAT straight to it, keeping the client's address.
        assert!(s.contains("tcp dport 9090 dnat ip to 10.213.1.9:80\n"));
    }

    #[test]
    fn task_table_balances_vips_and_rejects_empty_ones() {
        let (plan, mut t) = setup();
        let ep = Endpoint {
            network_id: "n1".into(),
            addr: "10.213.1.20/24".parse().expect("net"),
            gateway: plan.networks["n1"].gateway,
            bridge: plan.networks["n1"].bridge.clone(),
        };
        t.services[1].backends.clear();
        let s = render_task(&[ep], Some(&t));
        assert!(s.contains("ip daddr 10.213.1.100 dnat ip to numgen random mod 2 map { 0 : 10.213.1.5, 1 : 10.213.1.6 }\n"), "{s}");
        assert!(s.contains("ip daddr 10.213.1.101 reject"));
        assert!(
            !render_task(&[], Some(&t)).contains("10.213.1.100"),
            "no networks, no VIPs"
        );
    }
}
