//! TCP throughput and latency between two containers on two nodes across skiff's
//! VXLAN overlay, side by side with the same two node namespaces talking over the plain
//! underlay link, in one run. Root only (namespaces, links). A tiny sender/receiver
//! pair: the sender writes 128 KiB buffers for a fixed time, the receiver counts bytes;
//! latency is the median round trip of 1-byte ping-pongs with TCP_NODELAY.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use skiff_network::{NetworkMode, netns};
use skiff_proto::v1 as pb;

const DURATION: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const PINGS: usize = 2000;
/// How long a connect, read or write may stall before the bench gives up (a broken
/// path fails the run instead of hanging it).
const STALL: Duration = Duration::from_secs(20);

/// Bytes per second from `from` to a receiver in `to` at `addr`.
fn throughput(from: &Path, to: &Path, addr: SocketAddr) -> f64 {
    let listener = netns::run_in(Some(to), move || TcpListener::bind(addr))
        .expect("thread")
        .expect("bind");
    let receiver = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        c.set_read_timeout(Some(STALL)).expect("read timeout");
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    });
    let from: PathBuf = from.to_owned();
    let elapsed = netns::run_in(Some(&from), move || {
        let mut c = TcpStream::connect_timeout(&addr, STALL).expect("connect");
        c.set_write_timeout(Some(STALL)).expect("write timeout");
        let buf = vec![0x5au8; 128 * 1024];
        let start = Instant::now();
        while start.elapsed() < DURATION {
            c.write_all(&buf).expect("write");
        }
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        drop(c);
        start.elapsed()
    })
    .expect("sender");
    let total = receiver.join().expect("receiver");
    total as f64 / elapsed.as_secs_f64()
}

/// Median round trip of 1-byte messages, in microseconds.
fn latency(from: &Path, to: &Path, addr: SocketAddr) -> f64 {
    let listener = netns::run_in(Some(to), move || TcpListener::bind(addr))
        .expect("thread")
        .expect("bind");
    let echo = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        c.set_nodelay(true).expect("nodelay");
        c.set_read_timeout(Some(STALL)).expect("read timeout");
        let mut b = [0u8; 1];
        while let Ok(1) = c.read(&mut b) {
            if c.write_all(&b).is_err() {
                break;
            }
        }
    });
    let from: PathBuf = from.to_owned();
    let mut rtts = netns::run_in(Some(&from), move || {
        let mut c = TcpStream::connect_timeout(&addr, STALL).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c.set_read_timeout(Some(STALL)).expect("read timeout");
        c.set_write_timeout(Some(STALL)).expect("write timeout");
        let mut b = [1u8; 1];
        let mut rtts = Vec::with_capacity(PINGS);
        for _ in 0..PINGS {
            let t = Instant::now();
            c.write_all(&b).expect("write");
            c.read_exact(&mut b).expect("read");
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        rtts
    })
    .expect("pinger");
    echo.join().expect("echo");
    rtts.sort_by(f64::total_cmp);
    rtts[rtts.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let lab = rt.block_on(Lab::new(2));
    // The lab is torn down also when a measurement panics (a stalled path).
    let measured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(&rt, &lab)));
    rt.block_on(lab.teardown());
    let (ours_mbit, peer_mbit) = measured.unwrap_or_else(|p| std::panic::resume_unwind(p));
    println!(
        "RESULT overlay_throughput ours={:.0}Mbit/s peer={:.0}Mbit/s ratio={:.2}",
        ours_mbit,
        peer_mbit,
        ours_mbit / peer_mbit
    );
}

/// Sets up one container per node, prints the table, returns the median throughputs
/// (overlay, plain) in Mbit/s.
fn measure(rt: &tokio::runtime::Runtime, lab: &Lab) -> (f64, f64) {
    let (n0, n1) = (&lab.nodes[0], &lab.nodes[1]);
    let (ca, cb) = rt.block_on(async {
        let assign = pb::Assignments {
            networks: vec![network("bench", 1, 4999)],
            peers: lab.peers(),
            ..Default::default()
        };
        for n in &lab.nodes {
            n.net.apply_assignments(&assign).await.expect("assignments");
        }
        let ca = n0
            .net
            .attach(
                "ca",
                NetworkMode::Networks,
                &[attachment("bench", "10.213.1.2/24")],
            )
            .await
            .expect("attach")
            .expect("ns");
        let cb = n1
            .net
            .attach(
                "cb",
                NetworkMode::Networks,
                &[attachment("bench", "10.213.1.3/24")],
            )
            .await
            .expect("attach")
            .expect("ns");
        // The endpoint table names each container's node, as the masters' would.
        let table = pb::EndpointTable {
            revision: 1,
            services: vec![
                service("bench", "ca", "ca", "10.213.1.2", &n0.id),
                service("bench", "cb", "cb", "10.213.1.3", &n1.id),
            ],
        };
        for n in &lab.nodes {
            n.net.apply_endpoints(&table).await.expect("endpoints");
        }
        (ca, cb)
    });
    let overlay_addr = |p| sa("10.213.1.3", p);
    let plain_addr = |p| SocketAddr::new(n1.ip.into(), p);
    // Warm up ARP, FDB and conntrack on both paths.
    let _ = latency(ca.as_path(), cb.as_path(), overlay_addr(5000));
    let _ = latency(&n0.ns, &n1.ns, plain_addr(5000));

    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let port = 5100 + round as u16 * 2;
        ours.push(throughput(ca.as_path(), cb.as_path(), overlay_addr(port)));
        peer.push(throughput(&n0.ns, &n1.ns, plain_addr(port + 1)));
    }
    let lat_ours = latency(ca.as_path(), cb.as_path(), overlay_addr(5200));
    let lat_peer = latency(&n0.ns, &n1.ns, plain_addr(5201));
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 8.0 / 1e6
    };
    let gbit = |v: &[f64]| {
        v.iter()
            .map(|b| format!("{:.1}", b * 8.0 / 1e9))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rounds = format!(
        "rounds in Gbit/s: overlay {}, plain {}",
        gbit(&ours),
        gbit(&peer)
    );
    let (ours_mbit, peer_mbit) = (med(&mut ours), med(&mut peer));
    println!(
        "{:<34} {:>14} {:>16}",
        "path", "Mbit/s (median)", "RTT us (median)"
    );
    println!(
        "{:<34} {:>14.0} {:>16.1}",
        "overlay: container -> container", ours_mbit, lat_ours
    );
    println!(
        "{:<34} {:>14.0} {:>16.1}",
        "plain underlay: node -> node", peer_mbit, lat_peer
    );
    println!(
        "rounds: {ROUNDS} x {DURATION:?} each; overlay MTU {}; {rounds}",
        n0.net.mtu()
    );
    (ours_mbit, peer_mbit)
}
