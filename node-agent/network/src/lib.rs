//! Node networking: a bridge per network, a veth per container, VXLAN between nodes,
//! masquerade and published ports in skiff's own nftables table, and the embedded DNS.
//!
//! ```text
//!  master session ──Assignments──▶ NodeNetwork::apply_assignments ─┐
//!                 ──EndpointTable─▶ NodeNetwork::apply_endpoints ──┤
//!                                                                 ▼
//!        overlay::plan (pure) ─▶ overlay::reconcile ─▶ link (netlink: skb-/skv-, FDB, neigh)
//!                                  └─▶ steering (rps_cpus of each new skv- device, sysfs)
//!                                  └─▶ shortcut (tc: skv- ingress → a local task's veth)
//!                                  └─▶ sendpath (bpf map: remote task addresses → skv-)
//!        firewall::render_node/render_task (pure) ─▶ nft -f (inet skiff, ip skiff per task)
//!        dns::DnsTable::build (pure) ─▶ dns::Dns (hickory on each gateway :53)
//!  worker ──attach(task)──▶ attach ─▶ netns (unshare + bind mount) + veth skh-/eth<i>
//!                                  └─▶ sendpath program on skh- ingress (→ skv- for remote tasks)
//!  NodeNetwork::new ─▶ compat::cope (Docker's FORWARD DROP, br_netfilter) ─▶ diagnostics()
//! ```
//!
//! ## Limitations
//! - IPv4 only; the overlay is not encrypted.
//! - Broadcast and unknown unicast go to every peer (head-end replication); known
//!   remote tasks get exact FDB entries from the endpoint table.
//! - The routing-mesh hop to another node masquerades, so the replica sees that node's
//!   address; with a local replica the client's address is kept.

pub mod attach;
pub mod bpf;
pub mod compat;
pub mod dns;
pub mod firewall;
pub mod link;
pub mod names;
pub mod netns;
pub mod nft;
pub mod node;
pub mod overlay;
pub mod sendpath;
pub mod shortcut;
pub mod steering;

pub use attach::NetworkMode;
pub use netns::NetnsPath;
pub use node::{NetworkError, NodeConfig, NodeNetwork};
