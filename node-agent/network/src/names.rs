//! Names and hardware addresses skiff gives the things it makes. Pure. Every link
//! skiff makes starts with one of [`OWNED_PREFIXES`] and is at most 15 bytes (IFNAMSIZ);
//! anything else on the host is never touched.
//!
//! ```text
//! skb-<11 hex>  bridge of a network            hash(network id)
//! skv-<11 hex>  VXLAN device of a network      hash(network id)
//! skh-<11 hex>  host end of a task's veth      hash(task id, network id)
//! skc-<11 hex>  the container end, only until it is moved into the task's
//!               namespace and renamed eth0, eth1, ...
//! ```
//! A hash instead of an id prefix keeps names unique whatever the ids look like
//! ("net-1" and "net-10" share a prefix); the full id is in the link's alias.

use std::net::Ipv4Addr;

/// Prefixes of every link skiff creates.
pub const OWNED_PREFIXES: [&str; 4] = [
    BRIDGE_PREFIX,
    VXLAN_PREFIX,
    HOST_VETH_PREFIX,
    PEER_VETH_PREFIX,
];
pub const BRIDGE_PREFIX: &str = "skb-";
pub const VXLAN_PREFIX: &str = "skv-";
pub const HOST_VETH_PREFIX: &str = "skh-";
/// The temporary host-side name of a task's veth peer in agents before 2026-12 (peers
/// are now made inside the task's namespace): still owned, so leftovers are cleaned.
pub const PEER_VETH_PREFIX: &str = "skc-";

/// FNV-1a, 64 bit: stable across releases and machines (std's hasher is not).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn short(parts: &[&str]) -> String {
    let hex = format!("{:016x}", fnv1a(parts));
    hex[..11].to_owned()
}

pub fn bridge(network_id: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", short(&[network_id]))
}

pub fn vxlan(network_id: &str) -> String {
    format!("{VXLAN_PREFIX}{}", short(&[network_id]))
}

pub fn host_veth(task_id: &str, network_id: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", short(&[task_id, network_id]))
}

/// Whether a link is one skiff made.
pub fn is_owned(link: &str) -> bool {
    OWNED_PREFIXES.iter().any(|p| link.starts_with(p))
}

/// The MAC of a container interface, derived from its address so that every node can
/// program neighbour and forwarding entries for remote tasks without asking anyone:
/// `02:53:<a>:<b>:<c>:<d>` (locally administered, unicast; 0x53 is 'S').
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x53, o[0], o[1], o[2], o[3]]
}

/// The bridge's MAC on every node: the same for a network everywhere, so a gateway
/// reply that crosses the overlay by accident still names a local address.
pub fn gateway_mac(network_id: &str) -> [u8; 6] {
    let h = fnv1a(&[network_id, "gateway"]).to_be_bytes();
    [0x02, 0x54, h[0], h[1], h[2], h[3]]
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_owned() {
        for id in ["", "n", "a-very-long-network-identifier-0123456789abcdef"] {
            for name in [bridge(id), vxlan(id), host_veth("task", id)] {
                assert!(name.len() <= 15, "{name}");
                assert!(is_owned(&name));
            }
        }
        assert!(!is_owned("eth0"));
        assert!(!is_owned("docker0"));
    }

    #[test]
    fn names_are_stable_and_distinct() {
        assert_eq!(bridge("net-1"), bridge("net-1"));
        assert_ne!(bridge("net-1"), bridge("net-10"));
        assert_ne!(host_veth("t1", "n1"), host_veth("t1", "n2"));
        assert_ne!(host_veth("t1", "n1"), host_veth("t1n", "1"));
        assert_eq!(bridge("net-1")[4..], vxlan("net-1")[4..]);
    }

    #[test]
    fn mac_embeds_the_address() {
        assert_eq!(
            format_mac(&mac_for(Ipv4Addr::new(10, 213, 1, 5))),
            "02:53:0a:d5:01:05"
        );
        assert_eq!(gateway_mac("n")[0] & 1, 0, "unicast");
    }
}
