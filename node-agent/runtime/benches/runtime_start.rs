//! `cargo bench --bench runtime_start` (as root): create+start+wait+delete of
//! `/bin/true` 200 times in sequence with skiff's runtime, `runc run` and `crun run` on
//! the same OCI bundle (same namespaces, cgroups and Docker's seccomp profile), median
//! of each; then 50 containers started in parallel (wall time until all have exited).
//!
//! crun refuses this hybrid host's empty cgroup2 mount, so it runs in a private mount
//! namespace with `/sys/fs/cgroup/unified` unmounted (this binary re-executes itself
//! there in `crun-loop` mode and reports its timings as JSON).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_runtime::{
    ContainerId, CreateOptions, EtcFiles, Rootfs, Runtime, RuntimeConfig, SpecOptions, docker_spec,
};

const SEQ: usize = 200;
const PAR: usize = 50;

fn busybox_root(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in ["true", "sh"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    root
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The OCI bundle: config.json (what skiff builds for a task) + rootfs, with the
/// peers' containers in cgroup `/<cgroup_parent>/peer`.
fn write_bundle(dir: &Path, cgroup_parent: &str) -> PathBuf {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    let root = busybox_root(&bundle);
    let mut spec = docker_spec(&SpecOptions {
        args: vec!["/bin/true".into()],
        hostname: Some("bench".into()),
        ..Default::default()
    });
    if let Some(r) = spec.root_mut() {
        r.set_path(root);
    }
    write_config(&bundle, spec, &format!("/{cgroup_parent}/peer"));
    bundle
}

/// Writes `spec` as `bundle`'s config.json with the given cgroup path (runc and crun
/// take it from the bundle; skiff derives it from the id).
fn write_config(bundle: &Path, mut spec: oci_spec::runtime::Spec, cgroup: &str) {
    if let Some(l) = spec.linux_mut() {
        l.set_cgroups_path(Some(PathBuf::from(cgroup)));
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).expect("json"),
    )
    .expect("config");
}

/// One bundle per container started in parallel, sharing `bundle`'s rootfs (its path
/// in the spec is absolute), each with a cgroup of its own: in one shared cgroup, a
/// peer removing it as its container exits races the others still joining it, and
/// `runc run` then fails now and then.
fn parallel_bundles(bundle: &Path, cgroup_parent: &str, n: usize) -> Vec<PathBuf> {
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("read"))
            .expect("spec");
    let dirs = parallel_bundle_dirs(bundle, n);
    for (i, dir) in dirs.iter().enumerate() {
        std::fs::create_dir_all(dir).expect("bundle dir");
        write_config(dir, spec.clone(), &format!("/{cgroup_parent}/peer-p{i}"));
    }
    dirs
}

/// Where [`parallel_bundles`] puts them (the crun child finds them from `bundle`).
fn parallel_bundle_dirs(bundle: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| bundle.with_file_name(format!("bundle-p{i}")))
        .collect()
}

/// Kills what is left in the bench's cgroup parent and removes it from every hierarchy
/// under /sys/fs/cgroup when dropped (also when the bench panics), with the lab's
/// fence: runc makes its cgroups in the named `systemd` and the `unified` hierarchies
/// too, which skiff's layout does not use.
struct CgroupSweep(String);

impl Drop for CgroupSweep {
    fn drop(&mut self) {
        skiff_lab::cgroup::kill_and_remove(&self.0);
    }
}

/// Runs `runc`/`crun` `run` n times in sequence, a fresh id each time; None (with
/// the reason printed) when the peer cannot run this bundle on this host.
fn peer_seq(bin: &str, state_root: &Path, bundle: &Path, n: usize) -> Option<Vec<Duration>> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let out = Command::new(bin)
                .arg("--root")
                .arg(state_root)
                .args(["run", "--bundle"])
                .arg(bundle)
                .arg(format!("b{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!(
                    "{bin} run failed, no {bin} figures: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Some(t.elapsed())
        })
        .collect()
}

fn peer_par(bin: &str, state_root: &Path, bundles: &[PathBuf]) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            Command::new(bin)
                .arg("--root")
                .arg(state_root)
                .args(["run", "--bundle"])
                .arg(bundle)
                .arg(format!("p{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn peer")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "{bin} run failed");
    }
    t.elapsed()
}

/// Child mode: inside the private mount namespace, time crun; print JSON.
fn crun_loop(state_root: &Path, bundle: &Path) {
    // A crun that cannot run here prints nothing: the parent shows "failed".
    let Some(seq) = peer_seq("crun", state_root, bundle, SEQ) else {
        return;
    };
    let seq: Vec<f64> = seq.into_iter().map(ms).collect();
    let par = ms(peer_par(
        "crun",
        state_root,
        &parallel_bundle_dirs(bundle, PAR),
    ));
    println!("{}", serde_json::json!({ "seq": seq, "par": par }));
}

fn crun_measure(state_root: &Path, bundle: &Path) -> Option<(Duration, Duration)> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "umount /sys/fs/cgroup/unified && exec \"$0\" crun-loop \"$1\" \"$2\"",
        ])
        .arg(exe)
        .arg(state_root)
        .arg(bundle)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let seq: Vec<Duration> = v["seq"]
        .as_array()?
        .iter()
        .filter_map(|x| x.as_f64())
        .map(|m| Duration::from_secs_f64(m / 1000.0))
        .collect();
    Some((
        median(seq),
        Duration::from_secs_f64(v["par"].as_f64()? / 1000.0),
    ))
}

async fn ours(rt: &Runtime, bundle: &Path, spec: &oci_spec::runtime::Spec, name: &str) -> Duration {
    let id = ContainerId::new(name).expect("id");
    let t = Instant::now();
    rt.create(
        &id,
        CreateOptions {
            spec: spec.clone(),
            rootfs: Rootfs::Dir(bundle.join("rootfs")),
            etc: EtcFiles::default(),
        },
    )
    .await
    .expect("create");
    rt.start(&id).await.expect("start");
    let exit = rt.wait(&id).await.expect("wait");
    assert_eq!(exit.code, 0, "/bin/true failed: {exit:?}");
    rt.delete(&id, false).await.expect("delete");
    t.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("crun-loop") {
        crun_loop(Path::new(&args[2]), Path::new(&args[3]));
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = format!("skiff-bench-{}", std::process::id());
    let _sweep = CgroupSweep(parent.clone());
    let bundle = write_bundle(tmp.path(), &parent);
    let bundles = parallel_bundles(&bundle, &parent, PAR);
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("read"))
            .expect("spec");
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_skiff-shim"));
    let mut cfg = RuntimeConfig::new(tmp.path().join("state"), &shim);
    cfg.cgroup_parent = parent.clone();
    let rt = Runtime::new(cfg).expect("runtime");

    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (seq, par) = tokio_rt.block_on(async {
        for i in 0..5 {
            ours(&rt, &bundle, &spec, &format!("warm{i}")).await;
        }
        let mut seq = Vec::new();
        for i in 0..SEQ {
            seq.push(ours(&rt, &bundle, &spec, &format!("s{i}")).await);
        }
        let t = Instant::now();
        let tasks: Vec<_> = (0..PAR)
            .map(|i| {
                let rt = rt.clone();
                let bundle = bundle.clone();
                let spec = spec.clone();
                tokio::spawn(async move { ours(&rt, &bundle, &spec, &format!("p{i}")).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        (median(seq), t.elapsed())
    });

    let runc_root = tmp.path().join("runc-root");
    let runc = peer_seq("runc", &runc_root, &bundle, SEQ)
        .map(|seq| (median(seq), peer_par("runc", &runc_root, &bundles)));
    let crun = crun_measure(&tmp.path().join("crun-root"), &bundle);

    println!(
        "runtime_start: /bin/true, new pid/mnt/uts/ipc/net/cgroup ns, cgroups, Docker seccomp profile"
    );
    println!(
        "{:<8} {:>22} {:>24}",
        "runtime", "median of 200 (ms)", "50 in parallel (ms)"
    );
    println!("{:<8} {:>22.2} {:>24.1}", "skiff", ms(seq), ms(par));
    match runc {
        Some((s, p)) => println!("{:<8} {:>22.2} {:>24.1}", "runc", ms(s), ms(p)),
        None => println!("{:<8} {:>22} {:>24}", "runc", "failed", "failed"),
    }
    match crun {
        Some((s, p)) => println!("{:<8} {:>22.2} {:>24.1}", "crun", ms(s), ms(p)),
        None => println!("{:<8} {:>22} {:>24}", "crun", "failed", "failed"),
    }
    match runc {
        Some((runc_seq, _)) => println!(
            "RESULT runtime_start ours={:.2}ms peer={:.2}ms ratio={:.2}",
            ms(seq),
            ms(runc_seq),
            ms(runc_seq) / ms(seq)
        ),
        None => println!("RESULT runtime_start ours={:.2}ms peer=none", ms(seq)),
    }
}
