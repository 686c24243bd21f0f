//! raft_writes: committed writes per second and p50/p99 latency of service updates
//! through gRPC on 3 skiff masters, side by side with a 3-member etcd cluster doing
//! puts of the same size through its gRPC KV API (etcdserverpb.KV/Put), all on
//! loopback, same client concurrency. Each client writes its own service (its own etcd
//! key): updates of one service are compare-and-swap on its version and so one at a
//! time, which is the point of CAS, not a measure of the log.
//!
//! Each system runs twice, in the order skiff, etcd, etcd, skiff, and the table adds
//! both runs up: on a shared machine whose speed drifts during the minute of the
//! bench, one run each in a fixed order favoured whichever went first.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_daemon::test_ports::free_port as port;
use skiff_proto::v1 as pb;
use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use tonic::transport::{Channel, Endpoint};

const DEFAULT_CLIENTS: usize = 32;

/// Concurrent clients: 32, or `SKIFF_BENCH_CLIENTS` (for looking at latency alone).
fn clients() -> usize {
    std::env::var("SKIFF_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_CLIENTS)
}
const RUN: Duration = Duration::from_secs(10);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn channel(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
        {
            return ch;
        }
        assert!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// etcd's PutRequest / PutResponse, only the fields used (etcd rpc.proto numbers).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

async fn etcd_put(
    grpc: &mut tonic::client::Grpc<Channel>,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<(), tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
    grpc.unary(tonic::Request::new(PutRequest { key, value }), path, codec)
        .await
        .map(|_| ())
}

struct Stats {
    writes: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// One timed run: every acknowledged write's latency, and how long the run took.
struct Run {
    lat: Vec<Duration>,
    took: Duration,
}

fn stats(runs: Vec<Run>) -> Stats {
    let took: Duration = runs.iter().map(|r| r.took).sum();
    let mut lat: Vec<Duration> = runs.into_iter().flat_map(|r| r.lat).collect();
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        writes: lat.len(),
        per_sec: lat.len() as f64 / took.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

/// `spec` as service `web<n>`.
fn named(mut spec: pb::ServiceSpec, n: usize) -> pb::ServiceSpec {
    spec.name = format!("web{n}");
    spec
}

fn spec(i: u64, pad: usize) -> pb::ServiceSpec {
    let mut labels = std::collections::HashMap::new();
    labels.insert("seq".to_string(), i.to_string());
    labels.insert("pad".to_string(), "x".repeat(pad));
    pb::ServiceSpec {
        name: "web".into(),
        project: "bench".into(),
        labels,
        container: Some(pb::ContainerSpec {
            image: "busybox:1".into(),
            ..Default::default()
        }),
        mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
            replicas: 3,
        })),
        ..Default::default()
    }
}

async fn bench_skiff(dir: &std::path::Path) -> (Run, usize, u64) {
    let bin = env!("CARGO_BIN_EXE_skiff-master");
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", port())).collect();
    let mut procs = Vec::new();
    let start = |i: usize, sub: &[&str]| {
        Kill(
            Command::new(bin)
                .args([
                    "--data-dir",
                    &dir.join(format!("m{i}")).display().to_string(),
                    "--listen",
                    &addrs[i],
                    "--insecure",
                ])
                .args(sub)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn skiff-master"),
        )
    };
    procs.push(start(0, &["init"]));
    let mut admin = ClusterApiClient::new(channel(&addrs[0]).await);
    // Wait for the cluster object, then join the others.
    loop {
        if let Ok(i) = admin.cluster_info(pb::ClusterInfoRequest {}).await
            && !i.into_inner().cluster_id.is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..3 {
        procs.push(start(i, &["join", "--token", "unused", &addrs[0]]));
    }
    loop {
        let m = admin
            .list_masters(pb::ListMastersRequest {})
            .await
            .map(|r| r.into_inner().masters);
        if m.is_ok_and(|m| m.iter().filter(|m| m.voter).count() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = admin
        .cluster_info(pb::ClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let leader = info.leader_addr;
    admin
        .deploy(pb::DeployRequest {
            project: "bench".into(),
            // One service per client: writers of one object serialize on its CAS
            // version (as they must); a cluster's writers touch different services.
            services: (0..clients()).map(|c| named(spec(0, 0), c)).collect(),
            ..Default::default()
        })
        .await
        .expect("deploy");
    // The size of what one update writes: the service object (spec + previous spec).
    let size = prost::Message::encoded_len(&pb::Service {
        spec: Some(spec(1, 0)),
        previous_spec: Some(spec(0, 0)),
        ..Default::default()
    });
    let ch = channel(&leader).await;
    let commit_index = |mut c: ClusterApiClient<Channel>| async move {
        c.cluster_info(pb::ClusterInfoRequest {})
            .await
            .map(|i| i.into_inner().commit_index)
            .unwrap_or_default()
    };
    let first_index = commit_index(ClusterApiClient::new(ch.clone())).await;
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients() {
        let mut c = ClusterApiClient::new(ch.clone());
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while began.elapsed() < RUN {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let t = Instant::now();
                let r = c
                    .update_service(pb::UpdateServiceRequest {
                        name: format!("bench_web{client}"),
                        project: String::new(),
                        spec: Some(named(spec(i, 0), client)),
                        expected_version: 0,
                    })
                    .await;
                if r.is_ok() {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client"));
    }
    let took = began.elapsed();
    let entries = commit_index(ClusterApiClient::new(ch.clone()))
        .await
        .saturating_sub(first_index);
    drop(procs);
    (Run { lat, took }, size, entries)
}

async fn bench_etcd(dir: &std::path::Path, size: usize) -> Option<Run> {
    if !std::path::Path::new("/usr/bin/etcd").exists() {
        return None;
    }
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        procs.push(Kill(
            Command::new("/usr/bin/etcd")
                .args([
                    "--name",
                    &format!("e{i}"),
                    "--data-dir",
                    &dir.join(format!("e{i}")).display().to_string(),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "skiff-bench",
                    "--log-level",
                    "error",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?,
        ));
    }
    // etcd members forward to their leader; any member works, as for skiff we
    // talk to one (the first that answers a put).
    let addr = format!("127.0.0.1:{}", ports[0].0);
    let ch = channel(&addr).await;
    let mut g = tonic::client::Grpc::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcd_put(&mut g, b"warm".to_vec(), vec![0; size])
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients() {
        let mut g = tonic::client::Grpc::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while began.elapsed() < RUN {
                i += 1;
                let t = Instant::now();
                if etcd_put(
                    &mut g,
                    format!("/skiff/services/bench_web{c}").into_bytes(),
                    format!("{c}-{i}")
                        .into_bytes()
                        .into_iter()
                        .chain(std::iter::repeat(b'x'))
                        .take(size)
                        .collect(),
                )
                .await
                .is_ok()
                {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.ok()?);
    }
    let took = began.elapsed();
    drop(procs);
    Some(Run { lat, took })
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, size, mut entries) = rt.block_on(bench_skiff(&dir.path().join("skiff1")));
    let peer: Option<Vec<Run>> = [1, 2]
        .iter()
        .map(|i| rt.block_on(bench_etcd(&dir.path().join(format!("etcd{i}")), size)))
        .collect();
    let (second, _, more) = rt.block_on(bench_skiff(&dir.path().join("skiff2")));
    entries += more;
    let ours = stats(vec![first, second]);
    let peer = peer.map(stats);
    println!(
        "raft_writes: 3 members on loopback, {} concurrent clients (one service / key each), 2 runs of {RUN:?} each (skiff, etcd, etcd, skiff), {size}-byte writes",
        clients()
    );
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>10}",
        "system", "writes", "writes/s", "p50", "p99"
    );
    println!(
        "{:<8} {:>10} {:>12.0} {:>10.2?} {:>10.2?}",
        "skiff", ours.writes, ours.per_sec, ours.p50, ours.p99
    );
    println!(
        "skiff's raft log grew by {entries} entries for {} acknowledged writes",
        ours.writes
    );
    match peer {
        Some(p) => {
            println!(
                "{:<8} {:>10} {:>12.0} {:>10.2?} {:>10.2?}",
                "etcd", p.writes, p.per_sec, p.p50, p.p99
            );
            println!(
                "RESULT raft_writes ours={:.0}writes/s peer={:.0}writes/s ratio={:.2}",
                ours.per_sec,
                p.per_sec,
                ours.per_sec / p.per_sec.max(1e-9)
            );
        }
        None => println!(
            "RESULT raft_writes ours={:.0}writes/s peer=none",
            ours.per_sec
        ),
    }
}
