//! Send shortcuts: overlay traffic from a container to a container of another node goes
//! from the container's veth straight to the network's VXLAN device, not across the
//! bridge. The mirror image of `shortcut.rs` (which takes received traffic from the
//! VXLAN device straight to the container's veth).
//!
//! Across the bridge, on a host with `br_netfilter` on (Docker's hosts, most Kubernetes
//! nodes), every frame a container sends to another node goes through the node's whole
//! IP netfilter path (conntrack, prerouting, forward, postrouting) as if it were
//! routed. Skipping it, measured on the overlay bench: +7 % throughput by hand, +4–5 %
//! as built (docs/network.md, stop 22). Per network, a
//! kernel hash map (`bpf::AddrMap`) holds the addresses of the network's tasks on other
//! nodes, each mapped to the VXLAN device's index, and one eBPF program
//! (`bpf::send_program`) reading it sits on the ingress of every local task veth's host
//! end: a frame for an address in the map is redirected to the VXLAN device, whose FDB
//! sends it to the right node as the bridge would have. Everything else (ARP, traffic
//! to the gateway or to containers of this node, addresses not yet in the table) takes
//! the bridge as before, so a missing entry or program only costs speed.
//!
//! Nothing in skiff needs this traffic in the node's hooks (see `shortcut.rs`): VIPs are
//! translated in the sending container's namespace, and networks stay apart because a
//! program only ever redirects to its own network's VXLAN device.
//!
//! The map follows the endpoint table (converge) and this node's tasks (an address a
//! local task holds is never sent away, whatever a stale table says). The program is
//! set on a veth when its task is attached, also when a restarted agent re-registers a
//! running task, which replaces the previous agent's program (and with it that agent's
//! map, which no one updates any more).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};

use crate::bpf::{self, AddrMap, BpfError};
use crate::overlay::NetworkPlan;

/// Largest map: addresses of one network's remote tasks (a /12 network).
const MAX_ENTRIES: u32 = 1 << 20;

/// One network's send shortcut: its map, the program reading it, and what the map holds.
#[derive(Debug)]
pub struct SendPath {
    map: AddrMap,
    program: std::os::fd::OwnedFd,
    entries: BTreeMap<Ipv4Addr, u32>,
}

impl SendPath {
    /// An empty map sized for `net`'s subnet and the program reading it.
    pub fn new(net: &NetworkPlan) -> Result<Self, BpfError> {
        let hosts = 1u64 << (32 - u32::from(net.subnet.prefix_len()));
        let max = u32::try_from(hosts).unwrap_or(u32::MAX).min(MAX_ENTRIES);
        let map = AddrMap::new("skiff_remote", max)?;
        let program = bpf::send_program(&map)?;
        Ok(Self {
            map,
            program,
            entries: BTreeMap::new(),
        })
    }

    /// The program, for tc.
    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// What the map holds.
    pub fn entries(&self) -> &BTreeMap<Ipv4Addr, u32> {
        &self.entries
    }

    /// Converges the map to `want`. Every change is tried; the first error is returned
    /// (an entry that failed is tried again on the next call).
    pub fn sync(&mut self, want: &BTreeMap<Ipv4Addr, u32>) -> Result<(), BpfError> {
        let mut first = None;
        let stale: Vec<Ipv4Addr> = self
            .entries
            .keys()
            .filter(|a| !want.contains_key(*a))
            .copied()
            .collect();
        for addr in stale {
            match self.map.remove(addr) {
                Ok(()) => {
                    self.entries.remove(&addr);
                }
                Err(err) => {
                    first.get_or_insert(err);
                }
            }
        }
        for (&addr, &index) in want {
            if self.entries.get(&addr) == Some(&index) {
                continue;
            }
            match self.map.set(addr, index) {
                Ok(()) => {
                    self.entries.insert(addr, index);
                }
                Err(err) => {
                    first.get_or_insert(err);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// What a network's map should hold: its tasks on other nodes (`remote`, as (address,
/// node) pairs from the plan) except addresses a task of this node holds (`local`),
/// each mapped to the VXLAN device `vxlan`. Pure.
pub fn desired(
    remote: Option<&BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
    local: &BTreeSet<Ipv4Addr>,
    vxlan: u32,
) -> BTreeMap<Ipv4Addr, u32> {
    remote
        .into_iter()
        .flatten()
        .map(|(addr, _node)| *addr)
        .filter(|addr| !local.contains(addr))
        .map(|addr| (addr, vxlan))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn remote_tasks_map_to_the_vxlan_device_unless_a_local_task_holds_the_address() {
        let remote: BTreeSet<_> = [
            (ip("10.213.1.3"), ip("192.168.77.2")),
            (ip("10.213.1.4"), ip("192.168.77.3")),
            (ip("10.213.1.5"), ip("192.168.77.3")),
        ]
        .into();
        let local: BTreeSet<_> = [ip("10.213.1.5"), ip("10.213.1.9")].into();
        let want = desired(Some(&remote), &local, 7);
        assert_eq!(
            want,
            [(ip("10.213.1.3"), 7), (ip("10.213.1.4"), 7)].into(),
            "the address a local task holds (a stale table) stays on the bridge"
        );
        assert!(desired(None, &local, 7).is_empty());
    }

    /// Root (bpf), like the crate's other kernel tests.
    #[test]
    fn sync_converges_the_kernel_map() {
        let net = NetworkPlan {
            id: "n1".into(),
            name: "n1".into(),
            project: "p".into(),
            bridge: "skb-x".into(),
            vxlan: "skv-x".into(),
            vni: 4100,
            subnet: "10.213.1.0/24".parse().expect("subnet"),
            gateway: ip("10.213.1.1"),
            internal: false,
        };
        let mut path = SendPath::new(&net).expect("map and program");
        path.sync(&[(ip("10.213.1.3"), 7), (ip("10.213.1.4"), 7)].into())
            .expect("sync");
        // The VXLAN device came back with a new index; .3 left.
        let want: BTreeMap<_, _> = [(ip("10.213.1.4"), 9), (ip("10.213.1.5"), 9)].into();
        path.sync(&want).expect("sync");
        assert_eq!(path.entries(), &want);
        assert_eq!(path.map.get(ip("10.213.1.3")).expect("get"), None);
        assert_eq!(path.map.get(ip("10.213.1.4")).expect("get"), Some(9));
        assert_eq!(path.map.get(ip("10.213.1.5")).expect("get"), Some(9));
    }
}
