//! Test harness: the real binaries (`skiff-master` and `skiff-shim` built by cargo on
//! first use, `skiff-agent` from this package), masters and agents as child processes on
//! 127.0.0.1 with free ports, and a `Sandbox` whose Drop kills every process, container
//! and cgroup a test made and removes its namespaces, also when the test panics. Names
//! are prefixed `skiff` and unique per run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use skiff_pki::Credentials;
use skiff_proto::v1 as pb;
use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use tonic::transport::{Channel, Endpoint};

pub const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");

/// Builds the workspace's binaries into this test's target dir, as `deploy/test.sh`
/// does before the suites (the same feature set, so cargo finds them fresh instead of
/// rebuilding half the tree with another one), and returns `bin`'s path.
fn build(bin: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let agent = PathBuf::from(AGENT);
    let profile_dir = agent.parent().expect("bin dir").to_path_buf();
    let target = profile_dir.parent().expect("target dir").to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // What `cargo test` sets for this test binary would look like changed inputs to
    // build scripts (ring's reads CARGO_MANIFEST_DIR) and rebuild half the tree.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(&workspace)
        .args(["build", "--workspace", "--bins"])
        .arg("--target-dir")
        .arg(&target);
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    BUILT.get_or_init(|| {
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build --workspace --bins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    profile_dir.join(bin)
}

/// `skiff-master`, built on first use.
pub fn master_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("skiff-master"))
}

/// `skiff-shim`, built on first use.
pub fn shim_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("skiff-shim"))
}

pub use skiff_daemon::test_ports::free_port;

/// A name unique to this run: `<prefix>-<pid>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// A child process with its log file; SIGKILLed on drop unless stopped.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits up to `within`; returns the exit status (SIGKILL after).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log ({}):", self.name, self.log.display());
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Everything one test owns: a temp dir named skiff-*, the cgroup parent
/// `skiff-test-<unique>`, a network namespace playing the agent's node, and the
/// processes it started. Drop undoes all of it.
pub struct Sandbox {
    // Dropped first: the logs are still there when a failed test prints them.
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
    pub node_ns: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("skiff-agent-test-")
            .tempdir()
            .expect("tempdir");
        let node_ns = dir.path().join("node-netns");
        skiff_network::netns::create(&node_ns).expect("node network namespace");
        Sandbox {
            dir,
            cgroup_parent: unique("skiff-test"),
            node_ns,
            procs: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Flags every agent of this sandbox runs with.
    pub fn agent_flags(&self, data_dir: &Path) -> Vec<String> {
        vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--api-listen".into(),
            "127.0.0.1:0".into(),
            "--cgroup-parent".into(),
            self.cgroup_parent.clone(),
            "--network-namespace".into(),
            self.node_ns.display().to_string(),
            "--dns-upstream".into(),
            "none".into(),
            "--shim".into(),
            shim_bin().display().to_string(),
        ]
    }

    /// Kills the containers and removes the cgroups and namespaces under `data_dir`,
    /// and stops the agent's DNS socket keeper.
    fn clean_data_dir(&self, data_dir: &Path) {
        let keeper = skiff_network::dns::keeper::Keeper::new(
            data_dir.join(skiff_agent::agent::DNS_KEEPER_SOCKET),
        );
        let _ = keeper.quit();
        let layout = skiff_runtime::Layout::probe().ok();
        let state = data_dir.join("containers");
        if let Ok(entries) = std::fs::read_dir(&state) {
            for e in entries.flatten() {
                let Ok(bytes) = std::fs::read(e.path().join("state.json")) else {
                    continue;
                };
                let Ok(st) = serde_json::from_slice::<skiff_runtime::ContainerState>(&bytes) else {
                    continue;
                };
                for (pid, start) in [(st.pid, st.pid_start), (st.shim_pid, st.shim_start)] {
                    if pid > 0 && skiff_runtime::state::is_same_process(pid, start) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                if let Some(l) = &layout
                    && let Ok(cg) = l.cgroup(&Path::new(&self.cgroup_parent).join(&st.id))
                {
                    let _ = cg.kill_all();
                    let _ = cg.delete();
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(data_dir.join("netns")) {
            for e in entries.flatten() {
                let _ = skiff_network::netns::remove(&e.path());
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.join("containers").is_dir()
                    || p.join("netns").is_dir()
                    || p.join(skiff_agent::agent::DNS_KEEPER_SOCKET).exists()
            })
            .collect();
        for d in dirs {
            self.clean_data_dir(&d);
        }
        if let Ok(layout) = skiff_runtime::Layout::probe() {
            let _ = layout.remove_parent(Path::new(&self.cgroup_parent));
        }
        let _ = skiff_network::netns::remove(&self.node_ns);
    }
}

/// A `skiff-master init` on 127.0.0.1, with TLS unless `insecure`.
pub struct Master {
    pub addr: String,
    pub dir: PathBuf,
    pub insecure: bool,
}

impl Master {
    pub fn init(sb: &mut Sandbox, name: &str, insecure: bool) -> Master {
        let addr = format!("127.0.0.1:{}", free_port());
        let dir = sb.path(name);
        let mut args = vec![
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            addr.clone(),
        ];
        if insecure {
            args.push("--insecure".into());
        }
        args.push("init".into());
        let log = sb.path(&format!("{name}.log"));
        sb.procs.push(Proc::spawn(name, master_bin(), &args, log));
        Master {
            addr,
            dir,
            insecure,
        }
    }

    /// `skiff-master run` on the same data dir and address (after it was stopped).
    pub fn restart(&self, sb: &mut Sandbox) {
        let mut args = vec![
            "--data-dir".into(),
            self.dir.display().to_string(),
            "--listen".into(),
            self.addr.clone(),
        ];
        if self.insecure {
            args.push("--insecure".into());
        }
        args.push("run".into());
        let name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("master")
            .to_owned();
        let log = sb.path(&format!("{name}.log{}", sb.procs.len()));
        sb.procs.push(Proc::spawn(&name, master_bin(), &args, log));
    }

    /// The admin client, once the master answers.
    pub async fn client(&self) -> ClusterApiClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = self.connect().await
                && let Ok(i) = c.cluster_info(pb::ClusterInfoRequest {}).await
                && !i.into_inner().cluster_id.is_empty()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "master {} never answered",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn connect(&self) -> Result<ClusterApiClient<Channel>, String> {
        let ep = if self.insecure {
            Endpoint::from_shared(format!("http://{}", self.addr)).map_err(|e| e.to_string())?
        } else {
            let admin = self.dir.join("admin");
            if !admin.join("admin.pem").exists() {
                return Err("no admin certificate yet".into());
            }
            let creds = Credentials::load(&admin, skiff_pki::ADMIN_FILE_STEM)
                .map_err(|e| format!("admin credentials not complete yet: {e:?}"))?;
            skiff_pki::endpoint(
                &self.addr,
                skiff_pki::client_tls_config(&creds).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?
        };
        let ch = ep
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(ClusterApiClient::new(ch))
    }

    /// skiffctl's credentials, written at init.
    pub fn admin(&self) -> Credentials {
        Credentials::load(&self.dir.join("admin"), skiff_pki::ADMIN_FILE_STEM).expect("admin creds")
    }

    /// This master's own manager credentials (what it dials agents with).
    pub fn manager(&self) -> Credentials {
        Credentials::load(&self.dir.join("tls"), skiff_pki::NODE_FILE_STEM).expect("manager creds")
    }

    pub async fn worker_token(&self) -> String {
        let mut c = self.client().await;
        c.list_tokens(pb::ListTokensRequest {})
            .await
            .expect("tokens")
            .into_inner()
            .worker
    }
}

/// The nodes as the master lists them.
pub async fn nodes(c: &mut ClusterApiClient<Channel>) -> Vec<pb::Node> {
    c.list_nodes(pb::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner()
        .nodes
}

/// Retries `check` until it returns Some or `within` passes; the panic message carries
/// what the check saw last.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    let mut last = String::from("never checked");
    while Instant::now() < deadline {
        match check().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {within:?}; last: {last}");
}

/// Builds `<dir>` as a busybox root (Debian's busybox-static, a symlink per applet).
pub fn busybox_root(dir: &Path) -> PathBuf {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").expect("group");
    dir.to_path_buf()
}
