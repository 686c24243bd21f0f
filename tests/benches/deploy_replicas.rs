//! `cargo bench --bench deploy_replicas` (as root): 100 replicas of a busybox `sleep`
//! service on a lab of 1 master and 1 agent, timed as `skiffctl deploy` itself (it
//! returns once every replica runs; `ps` then checks, untimed); the
//! agent's resident memory idle and with the 100 tasks (its shims counted apart). The
//! peer, where Debian's `docker.io` is installed: a Docker Swarm of one node on the same
//! machine (dockerd started by hand with its own data and exec roots), the same image
//! pulled from the same registry, `docker service create --replicas 100`, until
//! `docker service ls` shows 100/100; dockerd + containerd memory beside skiff's.
//!
//! The bench first brings the skiff binaries up to date in `<target>/bench-bins`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_lab::{Binaries, Cluster, Lab, REGISTRY_BIN};

const REPLICAS: usize = 100;

fn main() {
    let bins = release_binaries();
    let root = Path::new("/var/tmp/skiff-bench");
    let lab = Lab::create(root, 1, 1).expect("lab");
    let cluster = Cluster::start_on(lab, bins).expect("cluster up");
    let image = cluster
        .push_busybox("busybox:latest")
        .expect("push busybox");
    let agent_pid = cluster.lab.machine("a1").expect("a1").daemons[0].pid;
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(agent_pid);

    let file = cluster.lab.state().dir.join("bench.yaml");
    std::fs::write(
        &file,
        format!(
            "name: bench\nservices:\n  sleeper:\n    image: {image}\n    command: [\"sleep\", \"100000\"]\n    deploy:\n      replicas: {REPLICAS}\n"
        ),
    )
    .expect("write compose file");
    let file = file.display().to_string();
    // Timed: `skiffctl deploy` itself, which returns once every replica runs (it
    // follows the cluster's watch stream). Then, untimed, `ps` must agree.
    let started = Instant::now();
    let args = ["deploy", "-f", file.as_str(), "--timeout", "600"];
    cluster.ctl(&args).ok(&args).expect("deploy");
    let ours = started.elapsed();
    cluster
        .wait(
            "a1",
            "all replicas running",
            Duration::from_secs(60),
            || {
                let rows = cluster.ctl_json(&["ps", "bench_sleeper"])?;
                let up = rows
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| {
                        t["state"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("running"))
                    })
                    .count();
                if up == REPLICAS {
                    Ok(())
                } else {
                    Err(format!("{up}/{REPLICAS} running"))
                }
            },
        )
        .expect("converged");
    std::thread::sleep(Duration::from_secs(1));
    let busy = rss_kib(agent_pid);
    let shims: u64 = pids_named(&["skiff-shim"]).into_iter().map(rss_kib).sum();
    let registry = cluster.registry.clone();
    let rm = ["rm", "bench"];
    let _ = cluster.ctl(&rm);
    // The peer pulls from the same registry, which lives as long as the lab.
    let peer = swarm(&registry);
    drop(cluster);

    println!("{:<34} {:>12} {:>12}", "", "skiff", "swarm");
    let peer_time = peer
        .as_ref()
        .map(|p| format!("{:.2}s", p.time.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    println!(
        "{:<34} {:>12} {:>12}",
        format!("deploy {REPLICAS} replicas until running"),
        format!("{:.2}s", ours.as_secs_f64()),
        peer_time
    );
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let peer_mem = |f: fn(&Peer) -> u64| peer.as_ref().map(|p| mib(f(p))).unwrap_or("-".into());
    println!(
        "{:<34} {:>12} {:>12}",
        "agent RSS idle (dockerd+containerd)",
        mib(idle),
        peer_mem(|p| p.idle_kib)
    );
    println!(
        "{:<34} {:>12} {:>12}",
        format!("agent RSS with {REPLICAS} tasks"),
        mib(busy),
        peer_mem(|p| p.busy_kib)
    );
    println!(
        "{:<34} {:>12} {:>12}",
        "shims, all together",
        mib(shims),
        peer_mem(|p| p.shims_kib)
    );
    match peer {
        Some(p) => println!(
            "RESULT deploy_replicas ours={:.3}s peer={:.3}s ratio={:.2}",
            ours.as_secs_f64(),
            p.time.as_secs_f64(),
            p.time.as_secs_f64() / ours.as_secs_f64()
        ),
        None => println!(
            "RESULT deploy_replicas ours={:.3}s peer=none",
            ours.as_secs_f64()
        ),
    }
}

/// The skiff binaries, brought up to date first in a target directory of their own
/// (`<target>/bench-bins`; cargo does nothing when they are fresh). Not `target/release`:
/// a workspace build there resolves features differently from `cargo bench`'s own build
/// of this package, so each rebuilt the other's dependencies on every run; and reusing
/// whatever binaries were lying there measured stale code.
fn release_binaries() -> Binaries {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("bench-bins")))
        .expect("the bench's target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--workspace",
            "--bins",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --release --workspace --bins --target-dir {} failed",
        target.display()
    );
    let dir = target.join("release");
    Binaries {
        master: dir.join("skiff-master"),
        agent: dir.join("skiff-agent"),
        ctl: dir.join("skiffctl"),
        registry: PathBuf::from(REGISTRY_BIN),
    }
}

/// VmRSS of `pid` in KiB (0 if gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

struct Peer {
    time: Duration,
    idle_kib: u64,
    busy_kib: u64,
    shims_kib: u64,
}

/// A one-node Swarm on this machine, or None without dockerd.
fn swarm(registry: &str) -> Option<Peer> {
    let dockerd = which("dockerd")?;
    let docker = which("docker")?;
    let dir = PathBuf::from("/var/tmp/skiff-bench-docker");
    let _ = std::fs::create_dir_all(&dir);
    let sock = "unix:///run/skiff-bench-docker.sock";
    let log = std::fs::File::create(dir.join("dockerd.log")).ok()?;
    let mut child = Command::new(dockerd)
        .args([
            "-H",
            sock,
            "--data-root",
            &dir.join("data").display().to_string(),
            "--exec-root",
            "/run/skiff-bench-docker",
            "--pidfile",
            "/run/skiff-bench-docker.pid",
            "--insecure-registry",
            registry,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ok()?;
    let _stop = Stop(&mut child, &dir);
    let docker_cmd = |args: &[&str]| {
        Command::new(&docker)
            .arg("-H")
            .arg(sock)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker_cmd(&["info"]).is_none() {
        if Instant::now() > deadline {
            eprintln!(
                "dockerd did not come up; see {}",
                dir.join("dockerd.log").display()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    docker_cmd(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
    let image = format!("{registry}/busybox:latest");
    docker_cmd(&["pull", &image])?;
    let daemons = || -> u64 {
        let pids = pids_named(&["dockerd", "containerd"]);
        pids.into_iter().map(rss_kib).sum()
    };
    std::thread::sleep(Duration::from_secs(2));
    let idle_kib = daemons();
    let started = Instant::now();
    docker_cmd(&[
        "service",
        "create",
        "--detach",
        "--name",
        "bench",
        "--replicas",
        &REPLICAS.to_string(),
        &image,
        "sleep",
        "100000",
    ])?;
    let want = format!("{REPLICAS}/{REPLICAS}");
    loop {
        let ls = docker_cmd(&["service", "ls", "--format", "{{.Replicas}}"]).unwrap_or_default();
        if ls.trim() == want {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            eprintln!("swarm did not converge: {ls}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let time = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let busy_kib = daemons();
    let shims_kib = pids_named(&["containerd-shim", "containerd-shim-runc-v2"])
        .into_iter()
        .map(rss_kib)
        .sum();
    docker_cmd(&["service", "rm", "bench"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while docker_cmd(&["ps", "-q"]).is_some_and(|o| !o.trim().is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    docker_cmd(&["swarm", "leave", "--force"]);
    Some(Peer {
        time,
        idle_kib,
        busy_kib,
        shims_kib,
    })
}

/// Stops dockerd and removes what it made for this bench.
struct Stop<'a>(&'a mut std::process::Child, &'a Path);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        for link in ["docker_gwbridge", "docker0"] {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("umount")
            .args(["-R", "-l", "/run/skiff-bench-docker"])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(self.1);
    }
}

fn pids_named(names: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|p| names.contains(&comm(*p).as_str()))
        .collect()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
