//! The lab's wires: one bridge on the host, and per machine a network namespace joined
//! to it by a veth pair, with its own address. Cutting a machine's link (a partition)
//! sets the host end of its veth down; healing sets it up again.
//!
//! ```text
//!   host: skiff-lab-<id> bridge 172.31.N.1/24 ── registry, skiffctl
//!           ├── sk<id>m1 ══ eth0 in netns skiff-<id>-m1  172.31.N.11
//!           ├── sk<id>m2 ══ eth0 in netns skiff-<id>-m2  172.31.N.12
//!           └── sk<id>a1 ══ eth0 in netns skiff-<id>-a1  172.31.N.21
//! ```
//!
//! Everything is named with a `skiff` prefix and the lab id, so teardown removes exactly
//! what this lab made. Lab subnets come from 172.31.200.0–172.31.254.0, clear of the
//! host's 192.0.2.0/24 link and its 10.255.255.0/24 resolver.

use std::net::Ipv4Addr;

use crate::host::{self, HostError};

/// The first and last third octet a lab subnet may use.
const SUBNET_OCTETS: std::ops::RangeInclusive<u8> = 200..=254;

/// A lab's bridge and subnet.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LabNet {
    pub id: String,
    pub bridge: String,
    /// Third octet of 172.31.X.0/24.
    pub octet: u8,
    /// Whether the lab added an iptables FORWARD accept rule (br_netfilter hosts).
    pub forward_rule: bool,
}

/// One machine's place on the lab net.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MachineNet {
    pub name: String,
    pub netns: String,
    pub host_veth: String,
    pub addr: Ipv4Addr,
}

impl LabNet {
    /// Creates the bridge on a free /24 and lets bridged traffic through on hosts where
    /// br_netfilter sends it to an iptables FORWARD chain that may drop it (Docker's
    /// FORWARD policy DROP).
    pub fn create(id: &str) -> Result<Self, HostError> {
        // Labs made at the same time (parallel tests) must not pick the same subnet:
        // picking and claiming happen under one host-wide lock, released on return.
        let _claim = SubnetLock::take()?;
        let octet = free_octet()?;
        let bridge = format!("skiff-lab-{id}");
        host::ip(&["link", "add", &bridge, "type", "bridge"])?;
        let net = LabNet {
            id: id.to_owned(),
            bridge: bridge.clone(),
            octet,
            forward_rule: false,
        };
        let mut net = scopeguard(net);
        host::ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &bridge,
        ])?;
        host::ip(&["link", "set", &bridge, "up"])?;
        if br_netfilter_active() {
            host::run("iptables", &forward_accept_rule("-I", &bridge))?;
            net.forward_rule = true;
        }
        Ok(net.defuse())
    }

    /// 172.31.X.1: the host's address on the lab net (registry, skiffctl).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, self.octet, 1)
    }

    /// Adds a machine: its netns, veth and address.
    pub fn add_machine(&self, name: &str, host_octet: u8) -> Result<MachineNet, HostError> {
        let netns = format!("skiff-{}-{name}", self.id);
        let host_veth = format!("sk{}{name}", self.id);
        let addr = Ipv4Addr::new(172, 31, self.octet, host_octet);
        host::ip(&["netns", "add", &netns])?;
        let machine = MachineNet {
            name: name.to_owned(),
            netns: netns.clone(),
            host_veth: host_veth.clone(),
            addr,
        };
        let setup = || -> Result<(), HostError> {
            host::ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            host::ip(&["link", "set", &host_veth, "master", &self.bridge])?;
            host::ip(&["link", "set", &host_veth, "up"])?;
            let inside = |args: &[&str]| {
                let mut full = vec!["netns", "exec", &netns, "ip"];
                full.extend_from_slice(args);
                host::ip(&full)
            };
            inside(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            inside(&["link", "set", "eth0", "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            inside(&[
                "route",
                "add",
                "default",
                "via",
                &self.gateway().to_string(),
            ])?;
            Ok(())
        };
        if let Err(err) = setup() {
            machine.remove();
            return Err(err);
        }
        Ok(machine)
    }

    /// Removes the bridge and the FORWARD rule. Machines are removed by their owners.
    pub fn remove(&self) {
        if self.forward_rule {
            host::run_quiet("iptables", &forward_accept_rule("-D", &self.bridge));
        }
        host::run_quiet("ip", &["link", "del", &self.bridge]);
    }
}

impl MachineNet {
    /// Partitions the machine: its link goes down, nothing reaches it or leaves it.
    pub fn cut(&self) -> Result<(), HostError> {
        host::ip(&["link", "set", &self.host_veth, "down"]).map(drop)
    }

    /// Ends a partition made by [`MachineNet::cut`].
    pub fn heal(&self) -> Result<(), HostError> {
        host::ip(&["link", "set", &self.host_veth, "up"]).map(drop)
    }

    /// Deletes the netns (which deletes its end of the veth, and so both ends).
    pub fn remove(&self) {
        host::run_quiet("ip", &["link", "del", &self.host_veth]);
        host::run_quiet("ip", &["netns", "del", &self.netns]);
    }
}

fn forward_accept_rule<'a>(op: &'a str, bridge: &'a str) -> Vec<&'a str> {
    vec![
        op,
        "FORWARD",
        "-i",
        bridge,
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        "skiff-lab",
        "-j",
        "ACCEPT",
    ]
}

/// br_netfilter hands bridged frames to iptables when this reads 1.
fn br_netfilter_active() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

/// A host-wide lock held while a lab picks and claims its subnet.
struct SubnetLock(std::fs::File);

impl SubnetLock {
    const PATH: &str = "/run/skiff-lab-subnet.lock";

    fn take() -> Result<Self, HostError> {
        let failed = |err: std::io::Error| HostError::Failed {
            command: format!("lock {}", Self::PATH),
            status: std::process::ExitStatus::default(),
            stderr: err.to_string(),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::PATH)
            .map_err(failed)?;
        file.lock().map_err(failed)?;
        Ok(SubnetLock(file))
    }
}

impl Drop for SubnetLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The first 172.31.X.0/24 no interface on the host uses.
fn free_octet() -> Result<u8, HostError> {
    let used = host::ip(&["-4", "-o", "addr", "show"])?;
    SUBNET_OCTETS
        .clone()
        .find(|octet| !used.contains(&format!("inet 172.31.{octet}.")))
        .ok_or_else(|| HostError::Failed {
            command: "pick a lab subnet".into(),
            status: std::process::ExitStatus::default(),
            stderr: "every 172.31.200-254.0/24 subnet is in use on this host".into(),
        })
}

/// Removes the bridge again if set-up fails half way.
struct Guard(Option<LabNet>);

fn scopeguard(net: LabNet) -> Guard {
    Guard(Some(net))
}

impl Guard {
    fn defuse(mut self) -> LabNet {
        self.0.take().expect("guard holds the net until defused")
    }
}

impl std::ops::Deref for Guard {
    type Target = LabNet;
    fn deref(&self) -> &LabNet {
        self.0.as_ref().expect("guard holds the net until defused")
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut LabNet {
        self.0.as_mut().expect("guard holds the net until defused")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(net) = self.0.take() {
            net.remove();
        }
    }
}
