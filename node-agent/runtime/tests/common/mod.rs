//! Test fixture: a busybox root built from Debian's busybox-static, a runtime with its
//! own state dir and `skiff-test-<unique>` cgroup parent, and a Drop guard that kills
//! every process and removes every cgroup the test made, also when it panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_runtime::{
    ContainerId, CreateOptions, EtcFiles, ExitStatus, Layout, Rootfs, Runtime, RuntimeConfig,
    SpecOptions, docker_spec,
};

pub struct Fixture {
    pub rt: Runtime,
    pub tmp: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub parent: String,
    pub layout: Layout,
}

/// Builds `<dir>/rootfs` with /bin/busybox and a symlink per applet.
pub fn busybox_root(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app", "usr/bin", "sbin",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .expect("group");
    root
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let rootfs = busybox_root(tmp.path());
        let parent = unique("skiff-test");
        let mut cfg =
            RuntimeConfig::new(tmp.path().join("state"), env!("CARGO_BIN_EXE_skiff-shim"));
        cfg.cgroup_parent = parent.clone();
        let rt = Runtime::new(cfg).expect("runtime");
        let layout = rt.layout().clone();
        Fixture {
            rt,
            tmp,
            rootfs,
            parent,
            layout,
        }
    }

    /// Another `Runtime` on the same state: what the agent builds after a restart.
    pub fn restarted_runtime(&self) -> Runtime {
        let mut cfg = RuntimeConfig::new(
            self.tmp.path().join("state"),
            env!("CARGO_BIN_EXE_skiff-shim"),
        );
        cfg.cgroup_parent = self.parent.clone();
        Runtime::new(cfg).expect("runtime")
    }

    pub fn opts(args: &[&str]) -> SpecOptions {
        SpecOptions {
            args: args.iter().map(|s| s.to_string()).collect(),
            hostname: Some("c1".into()),
            ..Default::default()
        }
    }

    pub async fn create(&self, id: &str, o: &SpecOptions) -> ContainerId {
        let id = ContainerId::new(id).expect("id");
        self.rt
            .create(
                &id,
                CreateOptions {
                    spec: docker_spec(o),
                    rootfs: Rootfs::Dir(self.rootfs.clone()),
                    etc: EtcFiles {
                        hostname: Some("c1\n".into()),
                        hosts: Some("127.0.0.1 localhost c1\n".into()),
                        resolv_conf: Some("nameserver 127.0.0.1\n".into()),
                    },
                },
            )
            .await
            .expect("create");
        id
    }

    pub async fn run(&self, id: &str, o: &SpecOptions) -> (ExitStatus, String) {
        let id = self.create(id, o).await;
        self.rt.start(&id).await.expect("start");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.rt.wait(&id))
            .await
            .expect("exits within 30s")
            .expect("wait");
        let out = self.log_text(&id).await;
        self.rt.delete(&id, false).await.expect("delete");
        (exit, out)
    }

    pub async fn log_text(&self, id: &ContainerId) -> String {
        let mut rx = self.rt.logs(id, Default::default()).await.expect("logs");
        let mut s = String::new();
        while let Some(e) = rx.recv().await {
            s.push_str(&e.log);
        }
        s
    }

    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 { mounts } => mounts
                .values()
                .map(|m| m.join(&self.parent).join(id))
                .collect(),
            Layout::V2 { root } => vec![root.join(&self.parent).join(id)],
        }
    }
}

/// Retries `f` until it returns true or `secs` pass.
pub async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let state = self.tmp.path().join("state");
        if let Ok(entries) = std::fs::read_dir(&state) {
            for e in entries.flatten() {
                let Ok(bytes) = std::fs::read(e.path().join("state.json")) else {
                    continue;
                };
                let Ok(st) = serde_json::from_slice::<skiff_runtime::ContainerState>(&bytes) else {
                    continue;
                };
                for (pid, start) in [(st.pid, st.pid_start), (st.shim_pid, st.shim_start)] {
                    if skiff_runtime::state::is_same_process(pid, start) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                if let Ok(cg) = self.layout.cgroup(&Path::new(&self.parent).join(&st.id)) {
                    let _ = cg.kill_all();
                    let _ = cg.delete();
                }
            }
        }
        let _ = self.layout.remove_parent(Path::new(&self.parent));
    }
}
