//! A small lab for the root tests: a "hub" namespace holding the underlay bridge (and
//! playing the outside world), and "nodes" as namespaces with a veth on it, each with
//! its own `NodeNetwork`. Everything lives in namespaces bind-mounted under a temp dir
//! named skiff-*, removed on drop (which destroys every link inside them).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use skiff_network::link::Links;
use skiff_network::netns;
use skiff_network::{NodeConfig, NodeNetwork};
use skiff_proto::v1 as pb;

pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 254);

pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 250, i + 1)
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub hub: PathBuf,
    pub nodes: Vec<Node>,
}

pub struct Node {
    pub id: String,
    pub ns: PathBuf,
    pub ip: Ipv4Addr,
    pub net: NodeNetwork,
}

impl Lab {
    pub async fn new(n: u8) -> Lab {
        Self::with_upstreams(n, Vec::new()).await
    }

    pub async fn with_upstreams(n: u8, upstreams: Vec<SocketAddr>) -> Lab {
        Self::build(n, upstreams, &[]).await
    }

    /// `docker_like`: nodes whose iptables FORWARD policy is set to DROP before skiff
    /// starts, as dockerd leaves it.
    pub async fn build(n: u8, upstreams: Vec<SocketAddr>, docker_like: &[u8]) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("skiff-nt-")
            .tempdir()
            .expect("tempdir");
        let hub = dir.path().join("ns").join("hub");
        netns::create(&hub).expect("hub netns");
        let mut lab = Lab {
            dir,
            hub: hub.clone(),
            nodes: Vec::new(),
        };
        let hl = Links::new(netns::netlink(Some(&hub)).await.expect("netlink hub"));
        hl.add_bridge("skiff-ul", [2, 0, 0, 0, 0, 0xfe], 1500, "lab underlay")
            .await
            .expect("bridge");
        let br = hl.require("skiff-ul").await.expect("bridge");
        hl.ensure_address(&br, HUB_IP, 24).await.expect("addr");
        hl.set_up(&br).await.expect("up");
        hl.set_up(&hl.require("lo").await.expect("lo"))
            .await
            .expect("lo up");
        for i in 0..n {
            let ns = lab.dir.path().join("ns").join(format!("node{i}"));
            netns::create(&ns).expect("node netns");
            let (h, p) = (format!("skiff-n{i}"), format!("skiff-n{i}p"));
            hl.add_veth(&h, &p, 1500).await.expect("veth");
            let hv = hl.require(&h).await.expect("veth");
            hl.set_controller(&hv, br.index).await.expect("controller");
            hl.set_up(&hv).await.expect("up");
            let pv = hl.require(&p).await.expect("peer");
            let f = std::fs::File::open(&ns).expect("open ns");
            hl.move_to_netns(&pv, std::os::fd::AsRawFd::as_raw_fd(&f))
                .await
                .expect("move");
            let nl = Links::new(netns::netlink(Some(&ns)).await.expect("netlink node"));
            let l = nl.require(&p).await.expect("moved");
            nl.rename_and_set(&l, "eth0", [2, 0, 0, 0, 0, i + 1])
                .await
                .expect("rename");
            let l = nl.require("eth0").await.expect("eth0");
            nl.ensure_address(&l, node_ip(i), 24).await.expect("addr");
            nl.set_up(&l).await.expect("up");
            nl.set_up(&nl.require("lo").await.expect("lo"))
                .await
                .expect("lo up");
            if docker_like.contains(&i) {
                cmd_in(&ns, "iptables", &["-w", "-P", "FORWARD", "DROP"])
                    .expect("iptables -P FORWARD DROP");
            }
            let id = format!("node{i}");
            let mut cfg = NodeConfig::new(&id, node_ip(i), lab.dir.path().join(format!("run{i}")));
            cfg.netns = Some(ns.clone());
            cfg.dns_upstreams = Some(upstreams.clone());
            let net = NodeNetwork::new(cfg).await.expect("node network");
            lab.nodes.push(Node {
                id,
                ns,
                ip: node_ip(i),
                net,
            });
        }
        lab
    }

    pub fn peers(&self) -> Vec<pb::OverlayPeer> {
        self.nodes
            .iter()
            .map(|n| pb::OverlayPeer {
                node_id: n.id.clone(),
                addr: n.ip.to_string(),
                subnet: String::new(),
            })
            .collect()
    }

    pub async fn teardown(&self) {
        for n in &self.nodes {
            n.net.teardown().await.expect("teardown");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.nodes {
            let run = n.net.config().run_dir.join("netns");
            if let Ok(d) = std::fs::read_dir(&run) {
                for e in d.flatten() {
                    let _ = netns::remove(&e.path());
                }
            }
            let _ = netns::remove(&n.ns);
        }
        let _ = netns::remove(&self.hub);
    }
}

pub fn network(id: &str, third: u8, vni: u32) -> pb::Network {
    pb::Network {
        id: id.into(),
        spec: Some(pb::NetworkSpec {
            name: id.into(),
            project: "p".into(),
            ..Default::default()
        }),
        subnet: format!("10.213.{third}.0/24"),
        gateway: format!("10.213.{third}.1"),
        vni,
        ..Default::default()
    }
}

/// An endpoint table entry: service `name` on network `net` with one task.
pub fn service(net: &str, name: &str, task: &str, addr: &str, node: &str) -> pb::ServiceEndpoint {
    pb::ServiceEndpoint {
        network_id: net.into(),
        name: name.into(),
        tasks: vec![pb::TaskEndpoint {
            task_id: task.into(),
            addr: addr.into(),
            node_id: node.into(),
        }],
        ..Default::default()
    }
}

pub fn attachment(net: &str, addr: &str) -> pb::NetworkAttachment {
    pb::NetworkAttachment {
        network_id: net.into(),
        addresses: vec![addr.into()],
        ..Default::default()
    }
}

/// A TCP server in `ns` that writes `tag` to every connection and closes it; it stops
/// when the returned guard is dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn serve_tag(ns: Option<&Path>, addr: SocketAddr, tag: &str) -> Server {
    let listener = netns::run_in(ns, move || TcpListener::bind(addr))
        .expect("thread")
        .expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let (s, tag) = (stop.clone(), tag.to_owned());
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut c, peer)) => {
                    let _ = c.write_all(format!("{tag} {}", peer.ip()).as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Server { stop }
}

/// Connects from `ns` and reads what the server says ("<tag> <client ip>").
pub fn fetch(ns: Option<&Path>, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    netns::run_in(ns, move || -> Result<String, String> {
        let mut c = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        c.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s)
            .map_err(|e| format!("read {addr}: {e}"))?;
        Ok(s)
    })
    .map_err(|e| e.to_string())?
}

/// Retries `f` until it returns Ok or `deadline` passes.
pub fn eventually<T>(deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + deadline;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > end => panic!("not within {deadline:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Names of the links in `ns` that skiff owns.
pub async fn owned_links(ns: &Path) -> Vec<String> {
    let l = Links::new(netns::netlink(Some(ns)).await.expect("netlink"));
    l.list()
        .await
        .expect("links")
        .into_iter()
        .map(|l| l.name)
        .filter(|n| skiff_network::names::is_owned(n))
        .collect()
}

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// Asks the DNS at `server` from inside `ns` for the A records of `name`; returns the
/// response code and addresses.
pub fn dns_query(
    ns: &Path,
    server: SocketAddr,
    name: &str,
    tcp: bool,
) -> Result<(String, Vec<Ipv4Addr>), String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).map_err(|e| e.to_string())?,
        RecordType::A,
    ));
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let answer = netns::run_in(Some(ns), move || -> Result<Vec<u8>, String> {
        let t = Some(Duration::from_secs(2));
        if tcp {
            let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            c.set_read_timeout(t).map_err(|e| e.to_string())?;
            c.write_all(&(bytes.len() as u16).to_be_bytes())
                .map_err(|e| e.to_string())?;
            c.write_all(&bytes).map_err(|e| e.to_string())?;
            let mut len = [0u8; 2];
            c.read_exact(&mut len).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut buf).map_err(|e| e.to_string())?;
            Ok(buf)
        } else {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            s.set_read_timeout(t).map_err(|e| e.to_string())?;
            s.send_to(&bytes, server).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 4096];
            let n = s
                .recv(&mut buf)
                .map_err(|e| format!("recv from {server}: {e}"))?;
            buf.truncate(n);
            Ok(buf)
        }
    })
    .map_err(|e| e.to_string())??;
    let m = Message::from_vec(&answer).map_err(|e| e.to_string())?;
    let ips = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Ok((m.metadata.response_code.to_string(), ips))
}

/// Runs a command inside `ns` and returns its stdout.
pub fn cmd_in(ns: &Path, cmd: &str, args: &[&str]) -> Result<String, String> {
    let (cmd, args) = (
        cmd.to_owned(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    netns::run_in(Some(ns), move || {
        let out = std::process::Command::new(&cmd)
            .args(&args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .map_err(|e| e.to_string())?
}
