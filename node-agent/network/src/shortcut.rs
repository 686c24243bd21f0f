//! Shortcuts: overlay traffic for a container of this node goes from the network's
//! VXLAN device straight to the container's veth, not through the bridge.
//!
//! Through the bridge, every frame a VXLAN device decapsulates is switched and, on a
//! host with `br_netfilter` on (Docker's hosts, and most Kubernetes nodes), sent through
//! the node's whole IP netfilter path (conntrack, prerouting, forward, postrouting) as
//! if it were routed. A tc `u32` filter per local container on the VXLAN device's
//! ingress (`ip dst <its address>` → `mirred egress redirect` to its host-side veth)
//! skips both. What the bridge still does: ARP and broadcast, the containers' traffic
//! to the gateway and between containers of this node (their traffic to other nodes'
//! tasks takes the send shortcut, `sendpath.rs`).
//!
//! Nothing in skiff needs to see this traffic in the node's hooks: networks are
//! isolated by their own bridge and VNI (a filter only ever names a veth of its own
//! network), VIPs are translated in the sending container's namespace, published ports
//! and egress are routed through the gateway. A missing or failed filter only means the
//! packet takes the bridge, so filters are kept as a speed-up, never a condition.
//!
//! Each filter's handle is `800::<host part of the address>`: it is found again to be
//! replaced or deleted without listing the device's filters. Addresses whose host part
//! does not fit in the 12 bits of a u32 node id (networks wider than /20, high
//! addresses) get no shortcut.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::attach::Endpoint;
use crate::names;
use crate::overlay::NetworkPlan;

/// A shortcut as wanted: on VXLAN device `.0`, filter node `.1`.
pub type Key = (String, u32);

/// Where a shortcut leads: packets for `dst` go out of the host-side veth `veth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub dst: Ipv4Addr,
    pub veth: String,
}

/// The u32 node id of `addr`'s filter: its host part, when that fits in 12 bits.
pub fn filter_node(addr: &Ipv4Net) -> Option<u32> {
    let host = u32::from(addr.addr()) & !u32::from(addr.netmask());
    (1..=0xfff).contains(&host).then_some(host)
}

/// The shortcuts `tasks` should have: one per endpoint on a network this node has.
/// Pure.
pub fn desired<'a>(
    networks: &BTreeMap<String, NetworkPlan>,
    tasks: impl IntoIterator<Item = (&'a String, &'a Vec<Endpoint>)>,
) -> BTreeMap<Key, Target> {
    let mut out = BTreeMap::new();
    for (task, endpoints) in tasks {
        for ep in endpoints {
            let (Some(net), Some(node)) = (networks.get(&ep.network_id), filter_node(&ep.addr))
            else {
                continue;
            };
            out.insert(
                (net.vxlan.clone(), node),
                Target {
                    dst: ep.addr.addr(),
                    veth: names::host_veth(task, &ep.network_id),
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, subnet: &str) -> NetworkPlan {
        let subnet: Ipv4Net = subnet.parse().expect("subnet");
        NetworkPlan {
            id: id.into(),
            name: id.into(),
            project: String::new(),
            bridge: names::bridge(id),
            vxlan: names::vxlan(id),
            vni: 4100,
            subnet,
            gateway: subnet.hosts().next().expect("gateway"),
            internal: false,
        }
    }

    fn ep(net: &str, addr: &str) -> Endpoint {
        let addr: Ipv4Net = addr.parse().expect("addr");
        Endpoint {
            network_id: net.into(),
            addr,
            gateway: addr.network(),
            bridge: names::bridge(net),
        }
    }

    #[test]
    fn the_host_part_names_the_filter_when_it_fits() {
        let n = |s: &str| filter_node(&s.parse().expect("net"));
        assert_eq!(n("10.213.1.2/24"), Some(2));
        assert_eq!(n("10.213.1.254/24"), Some(254));
        assert_eq!(n("10.213.15.255/20"), Some(0xfff));
        assert_eq!(n("10.213.16.1/16"), None, "host part 0x1001");
        assert_eq!(n("10.213.1.0/24"), None);
    }

    #[test]
    fn one_shortcut_per_local_endpoint_on_a_known_network() {
        let networks: BTreeMap<String, NetworkPlan> = [
            ("n1".to_owned(), plan("n1", "10.213.1.0/24")),
            ("n2".to_owned(), plan("n2", "10.213.2.0/24")),
        ]
        .into();
        let tasks: BTreeMap<String, Vec<Endpoint>> = [
            (
                "t1".to_owned(),
                vec![ep("n1", "10.213.1.5/24"), ep("n2", "10.213.2.5/24")],
            ),
            ("t2".to_owned(), vec![ep("n1", "10.213.1.6/24")]),
            // A network this node does not have (yet): nothing to redirect from.
            ("t3".to_owned(), vec![ep("gone", "10.213.9.6/24")]),
            // network_mode none: no endpoints.
            ("t4".to_owned(), Vec::new()),
        ]
        .into();
        let want = desired(&networks, &tasks);
        assert_eq!(want.len(), 3, "{want:?}");
        assert_eq!(
            want[&(names::vxlan("n1"), 5)],
            Target {
                dst: "10.213.1.5".parse().expect("ip"),
                veth: names::host_veth("t1", "n1"),
            }
        );
        assert_eq!(
            want[&(names::vxlan("n2"), 5)].veth,
            names::host_veth("t1", "n2")
        );
        assert_eq!(
            want[&(names::vxlan("n1"), 6)].veth,
            names::host_veth("t2", "n1")
        );
    }
}
