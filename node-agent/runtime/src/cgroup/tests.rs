//! Layout probing from mountinfo text, the v2 driver against a temporary directory tree
//! standing in for cgroup2, and the v1 driver against this host's real hierarchies.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const V2: &str = "\
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

#[test]
fn hybrid_host_uses_v1_for_its_controllers() {
    let Some(Layout::V1 { mounts }) = Layout::from_mountinfo(HYBRID) else {
        panic!("expected v1");
    };
    assert_eq!(
        mounts.get("memory"),
        Some(&PathBuf::from("/sys/fs/cgroup/memory"))
    );
    assert_eq!(
        mounts.get("cpuacct"),
        Some(&PathBuf::from("/sys/fs/cgroup/cpuacct"))
    );
    assert!(!mounts.contains_key("name=systemd"));
}

#[test]
fn unified_only_host_is_v2() {
    assert_eq!(
        Layout::from_mountinfo(V2),
        Some(Layout::V2 {
            root: "/sys/fs/cgroup".into()
        })
    );
    assert_eq!(
        Layout::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
        None
    );
}

#[test]
fn relative_paths_only() {
    let l = Layout::V2 { root: "/x".into() };
    assert!(l.cgroup(Path::new("../etc")).is_err());
    assert!(l.cgroup(Path::new("/abs")).is_err());
    assert!(l.cgroup(Path::new("skiff/a")).is_ok());
}

fn resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * 1024 * 1024i64)
                .swap(96 * 1024 * 1024i64)
                .build()
                .expect("memory"),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(50_000i64)
                .period(100_000u64)
                .shares(512u64)
                .cpus("0")
                .build()
                .expect("cpu"),
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(64i64)
                .build()
                .expect("pids"),
        )
        .build()
        .expect("resources")
}

/// A directory tree shaped like a cgroup2 mount.
fn fake_v2() -> (tempfile::TempDir, Layout) {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma\n",
    )
    .expect("w");
    std::fs::write(tmp.path().join("cgroup.subtree_control"), "").expect("w");
    // The kernel fills a new cgroup's cgroup.controllers from its parent's subtree_control.
    std::fs::create_dir(tmp.path().join("skiff")).expect("mkdir");
    std::fs::write(
        tmp.path().join("skiff/cgroup.controllers"),
        "cpuset cpu memory pids\n",
    )
    .expect("w");
    let layout = Layout::V2 {
        root: tmp.path().into(),
    };
    (tmp, layout)
}

#[test]
fn v2_enables_controllers_on_the_way_down_and_writes_limits() {
    let (tmp, layout) = fake_v2();
    let cg = layout.cgroup(Path::new("skiff/c1")).expect("cgroup");
    cg.create().expect("create");
    cg.apply(&resources()).expect("apply");
    let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).expect(p);
    assert_eq!(read("cgroup.subtree_control"), "+cpu +cpuset +memory +pids");
    assert_eq!(
        read("skiff/cgroup.subtree_control"),
        "+cpu +cpuset +memory +pids"
    );
    assert_eq!(read("skiff/c1/memory.max"), "67108864");
    assert_eq!(
        read("skiff/c1/memory.swap.max"),
        "33554432",
        "v2 swap excludes memory"
    );
    assert_eq!(read("skiff/c1/cpu.max"), "50000 100000");
    assert_eq!(read("skiff/c1/cpu.weight"), "20");
    assert_eq!(read("skiff/c1/cpuset.cpus"), "0");
    assert_eq!(read("skiff/c1/pids.max"), "64");
    assert_eq!(cg.clone_into_dir(), Some(tmp.path().join("skiff/c1")));
    assert_eq!(
        cg.procs_files(),
        vec![tmp.path().join("skiff/c1/cgroup.procs")]
    );
}

#[test]
fn v2_freeze_waits_for_events_and_reads_oom_and_stats() {
    let (tmp, layout) = fake_v2();
    let cg = layout.cgroup(Path::new("skiff/c2")).expect("cgroup");
    cg.create().expect("create");
    let dir = tmp.path().join("skiff/c2");
    // The kernel flips cgroup.events after a freeze; the fake already shows it frozen.
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").expect("w");
    cg.freeze().expect("freeze");
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze")).expect("r"),
        "1"
    );
    assert!(cg.is_frozen().expect("frozen"));
    // Thawing times out if the kernel never reports frozen 0.
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").expect("w");
    cg.thaw().expect("thaw");
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 9\noom 1\noom_kill 2\n",
    )
    .expect("w");
    assert_eq!(cg.oom_kills().expect("oom"), 2);
    std::fs::write(dir.join("memory.current"), "4096\n").expect("w");
    std::fs::write(dir.join("memory.max"), "max\n").expect("w");
    std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").expect("w");
    std::fs::write(dir.join("pids.current"), "3\n").expect("w");
    std::fs::write(dir.join("pids.max"), "64\n").expect("w");
    assert_eq!(
        cg.stats().expect("stats").pids_limit_hits,
        0,
        "no pids.events"
    );
    std::fs::write(dir.join("pids.events"), "max 5\n").expect("w");
    let s = cg.stats().expect("stats");
    assert_eq!(
        (
            s.memory_usage_bytes,
            s.memory_limit_bytes,
            s.cpu_usage_ns,
            s.pids_current,
            s.pids_limit,
            s.pids_limit_hits,
            s.oom_kills
        ),
        (4096, None, 1_500_000, 3, Some(64), 5, 2)
    );
}

#[test]
fn shares_map_to_weight_as_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
}

/// Removes the test's v1 cgroups even when an assertion fails.
struct V1Guard(Box<dyn Cgroup>, Layout, String);

impl Drop for V1Guard {
    fn drop(&mut self) {
        let _ = self.0.kill_all();
        let _ = self.0.delete();
        let _ = self.1.remove_parent(Path::new(&self.2));
    }
}

#[test]
fn v1_real_cgroup_limits_stats_freeze_and_delete() {
    let layout = Layout::probe().expect("probe");
    let Layout::V1 { mounts } = &layout else {
        eprintln!("host is not v1; the v1 driver test needs one");
        return;
    };
    let parent = format!("skiff-test-cg-{}", std::process::id());
    let rel = PathBuf::from(&parent).join("v1");
    let cg = layout.cgroup(&rel).expect("cgroup");
    cg.create().expect("create");
    let guard = V1Guard(cg, layout.clone(), parent);
    let cg = &guard.0;
    cg.apply(&resources()).expect("apply");
    let read = |c: &str, f: &str| std::fs::read_to_string(mounts[c].join(&rel).join(f)).expect(f);
    assert_eq!(read("memory", "memory.limit_in_bytes").trim(), "67108864");
    assert_eq!(read("cpu", "cpu.cfs_quota_us").trim(), "50000");
    assert_eq!(read("cpu", "cpu.shares").trim(), "512");
    assert_eq!(read("cpuset", "cpuset.cpus").trim(), "0");
    assert_eq!(read("pids", "pids.max").trim(), "64");

    let mut child = std::process::Command::new("/bin/busybox")
        .args(["sleep", "30"])
        .spawn()
        .expect("spawn");
    for f in cg.procs_files() {
        std::fs::write(&f, child.id().to_string()).expect("join");
    }
    assert_eq!(cg.pids().expect("pids"), vec![child.id() as i32]);
    cg.freeze().expect("freeze");
    assert!(cg.is_frozen().expect("frozen"));
    let stats = cg.stats().expect("stats");
    assert_eq!(stats.pids_current, 1);
    assert_eq!(stats.memory_limit_bytes, Some(64 * 1024 * 1024));
    // SIGKILL reaches a frozen v1 task only after a thaw: kill_all does both.
    cg.kill_all().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success());
    assert!(!cg.is_frozen().expect("thawed"));
    cg.delete().expect("delete");
    assert!(!cg.exists());
}

#[test]
fn v1_new_containers_skip_hierarchies_they_do_not_use() {
    let layout = Layout::probe().expect("probe");
    let Layout::V1 { mounts } = &layout else {
        eprintln!("host is not v1; the v1 driver test needs one");
        return;
    };
    let parent = format!("skiff-test-cgnew-{}", std::process::id());
    let plain = PathBuf::from(&parent).join("plain");
    let pinned = PathBuf::from(&parent).join("pinned");
    let cg = layout.cgroup_for_new(&plain, None).expect("cgroup");
    cg.create().expect("create");
    let _plain = V1Guard(cg, layout.clone(), parent.clone());
    let cg = layout
        .cgroup_for_new(&pinned, Some(&resources()))
        .expect("cgroup");
    cg.create().expect("create");
    let _pinned = V1Guard(cg, layout.clone(), parent.clone());
    let has = |c: &str, rel: &Path| mounts.get(c).map(|m| m.join(rel).is_dir());
    for c in ["memory", "pids", "freezer", "devices"] {
        if mounts.contains_key(c) {
            assert_eq!(has(c, &plain), Some(true), "{c}");
        }
    }
    if mounts.contains_key("cpuset") {
        assert_eq!(has("cpuset", &plain), Some(false));
        assert_eq!(has("cpuset", &pinned), Some(true));
    }
    if mounts.contains_key("blkio") {
        assert_eq!(has("blkio", &plain), Some(false));
        assert_eq!(has("blkio", &pinned), Some(false));
    }
    // The full view (what the agent uses for stats, pause and delete) still works, and
    // a process joining the container's groups joins only those that exist.
    let full = layout.cgroup(&plain).expect("cgroup");
    assert!(full.exists());
    let files = full.procs_files();
    assert!(files.iter().all(|f| f.exists()), "{files:?}");
    if let Some(cpuset) = mounts.get("cpuset") {
        assert!(!files.contains(&cpuset.join(&plain).join("cgroup.procs")));
    }
}
