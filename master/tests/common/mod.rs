//! Test harness: real `skiff-master` processes on 127.0.0.1 with free ports and data
//! dirs in a temp dir, killed on drop; a cluster API client with request ids.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_proto::v1 as pb;
use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_skiff-master");

pub use skiff_daemon::test_ports::free_port;

/// One master process.
pub struct Proc {
    pub addr: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    starts: u32,
}

impl Proc {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--data-dir".into(),
            self.dir.display().to_string(),
            "--listen".into(),
            self.addr.clone(),
            "--insecure".into(),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    pub fn spawn(&mut self, sub: &[&str]) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.with_extension(format!("log{}", self.starts)))
            .expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(self.args())
            .args(sub)
            .env("RUST_LOG", "warn,skiff_master=info")
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(Stdio::null());
        self.child = Some(cmd.spawn().expect("spawn skiff-master"));
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Everything the process logged, all starts.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            out += &std::fs::read_to_string(self.dir.with_extension(format!("log{i}")))
                .unwrap_or_default();
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Masters of one cluster.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub masters: Vec<Proc>,
}

impl Cluster {
    /// `n` masters: the first inits, the others join it.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster {
            masters: Vec::new(),
            dir,
        };
        for i in 0..n {
            c.add(extra);
            if i == 0 {
                c.masters[0].spawn(&["init"]);
                wait_ready(&c.masters[0].addr).await;
            } else {
                let first = c.masters[0].addr.clone();
                c.masters[i].spawn(&["join", "--token", "unused", &first]);
                wait_voters(&first, i + 1).await;
            }
        }
        c
    }

    pub fn add(&mut self, extra: &[&str]) -> usize {
        let i = self.masters.len();
        self.masters.push(Proc {
            addr: format!("127.0.0.1:{}", free_port()),
            dir: self.dir.path().join(format!("m{}", i + 1)),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        });
        i
    }

    pub fn addrs(&self) -> Vec<String> {
        self.masters
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.addr.clone())
            .collect()
    }

    /// Index of the master that leads, as the running masters report it.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            for m in self.masters.iter().filter(|m| m.is_running()) {
                if let Ok(mut c) = client(&m.addr).await
                    && let Ok(info) = c.cluster_info(pb::ClusterInfoRequest {}).await
                {
                    let addr = info.into_inner().leader_addr;
                    if let Some(i) = self
                        .masters
                        .iter()
                        .position(|m| m.addr == addr && m.is_running())
                    {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 15 s; logs:\n{}", self.dump());
    }

    pub fn dump(&self) -> String {
        self.masters
            .iter()
            .map(|m| {
                format!(
                    "--- {} ({})\n{}",
                    m.dir.display(),
                    m.addr,
                    tail(&m.logs(), 60)
                )
            })
            .collect()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn client(addr: &str) -> Result<ClusterApiClient<Channel>, tonic::transport::Error> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(ClusterApiClient::new(ch))
}

/// Waits until the master at `addr` answers ClusterInfo with a cluster id.
pub async fn wait_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut c) = client(addr).await
            && let Ok(i) = c.cluster_info(pb::ClusterInfoRequest {}).await
            && !i.into_inner().cluster_id.is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("master {addr} not ready within 20 s");
}

/// Waits until the cluster has `n` voters.
pub async fn wait_voters(addr: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut c) = client(addr).await
            && let Ok(m) = c.list_masters(pb::ListMastersRequest {}).await
            && m.into_inner().masters.iter().filter(|m| m.voter).count() >= n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cluster at {addr} did not reach {n} voters within 30 s");
}

pub fn with_request_id<T>(msg: T, id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("skiff-request-id", id.parse().expect("ascii id"));
    r
}

/// A project with one service.
pub fn deploy_request(image: &str) -> pb::DeployRequest {
    pb::DeployRequest {
        project: "app".into(),
        services: vec![pb::ServiceSpec {
            name: "web".into(),
            container: Some(pb::ContainerSpec {
                image: image.into(),
                ..Default::default()
            }),
            mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
                replicas: 1,
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// UpdateService setting label `seq` (a spec change every time), retried on any
/// master until one acknowledges it, with the same request id each time.
pub async fn update_until_acked(addrs: &[String], seq: u64, run: &str) -> Duration {
    let started = Instant::now();
    let rid = format!("{run}-{seq}");
    let mut attempt = 0usize;
    loop {
        let addr = &addrs[attempt % addrs.len().max(1)];
        attempt += 1;
        if let Ok(mut c) = client(addr).await {
            let spec = spec_with_seq(seq);
            let req = pb::UpdateServiceRequest {
                name: "app_web".into(),
                project: String::new(),
                spec: Some(spec),
                expected_version: 0,
            };
            if c.update_service(with_request_id(req, &rid)).await.is_ok() {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "write {seq} not acknowledged within 60 s"
        );
    }
}

pub fn spec_with_seq(seq: u64) -> pb::ServiceSpec {
    let mut spec = deploy_request("busybox:1").services.remove(0);
    spec.project = "app".into();
    spec.labels.insert("seq".into(), seq.to_string());
    spec
}

pub fn data_dir(p: &Path) -> PathBuf {
    p.to_owned()
}
