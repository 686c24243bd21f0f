//! The lab itself: machines reach each other over the lab bridge, a cut machine is
//! unreachable until healed, daemons run in their machine's namespace, and teardown
//! leaves no namespace, link, cgroup, mount or process behind.

use std::path::Path;
use std::time::Duration;

use skiff_lab::eventually::eventually;
use skiff_lab::host;
use skiff_lab::{Lab, Role};

fn ping(netns: &str, addr: &str) -> Result<String, host::HostError> {
    host::ip(&[
        "netns",
        "exec",
        netns,
        "/bin/busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        addr,
    ])
}

fn lab_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("skiff-lab-test")
        .tempdir_in("/var/tmp")
        .expect("lab root")
}

#[test]
fn machines_talk_over_the_bridge_and_a_cut_machine_is_unreachable() {
    let root = lab_root();
    let lab = Lab::create(root.path(), 2, 1).expect("create lab");
    let m1 = lab.machine("m1").expect("m1").clone();
    let a1 = lab.machine("a1").expect("a1").clone();
    assert_eq!(lab.machines(Role::Master).count(), 2);
    assert_eq!(lab.machines(Role::Agent).count(), 1);

    ping(&m1.net.netns, &a1.net.addr.to_string()).expect("m1 reaches a1");
    ping(&a1.net.netns, &lab.gateway().to_string()).expect("a1 reaches the host");

    lab.cut("a1").expect("cut a1");
    assert!(
        ping(&m1.net.netns, &a1.net.addr.to_string()).is_err(),
        "a cut machine must not answer"
    );
    lab.heal("a1").expect("heal a1");
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        ping(&m1.net.netns, &a1.net.addr.to_string())
    })
    .expect("a healed machine answers again");
}

#[test]
fn teardown_removes_namespaces_links_cgroups_and_processes() {
    let root = lab_root();
    let mut lab = Lab::create(root.path(), 1, 1).expect("create lab");
    let id = lab.id().to_owned();
    let netns = lab.machine("a1").expect("a1").net.netns.clone();
    let daemon = lab
        .spawn_on(
            "a1",
            Path::new("/bin/busybox"),
            &["sleep".into(), "300".into()],
            &[],
            "sleep.log",
        )
        .expect("spawn");
    // A grandchild, as a shim or container would be: it must not escape teardown.
    let grandchild = lab
        .spawn_on(
            "a1",
            Path::new("/bin/busybox"),
            &[
                "sh".into(),
                "-c".into(),
                "/bin/busybox sleep 301 & wait".into(),
            ],
            &[],
            "sh.log",
        )
        .expect("spawn");
    eventually(Duration::from_secs(5), Duration::from_millis(20), || {
        if daemon.alive() && grandchild.alive() {
            Ok(())
        } else {
            Err("daemons not up")
        }
    })
    .expect("daemons run");
    // The daemon runs inside the machine's namespace (once `nsenter`, which the pid
    // starts as, has entered it and exec'd the program).
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let host_ns = ns_of(std::process::id());
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || match ns_of(daemon.pid) {
            Some(ns) if Some(&ns) != host_ns.as_ref() => Ok(()),
            other => Err(format!("daemon in {other:?}, the host's is {host_ns:?}")),
        },
    )
    .expect("the daemon enters the machine's namespace");

    lab.teardown();
    assert!(!daemon.alive());
    let netns_list = host::ip(&["netns", "list"]).expect("ip netns");
    assert!(!netns_list.contains(&netns), "{netns_list}");
    let links = host::ip(&["-br", "link"]).expect("ip link");
    assert!(!links.contains(&id), "{links}");
    assert!(
        !Path::new(&format!("/sys/fs/cgroup/pids/skiff-lab-{id}")).exists(),
        "lab cgroup left behind"
    );
    let procs = std::fs::read_dir("/proc").expect("proc");
    for entry in procs.flatten() {
        if let Ok(cmd) = std::fs::read_to_string(entry.path().join("cmdline")) {
            assert!(
                !cmd.contains("sleep\u{0}301"),
                "grandchild survived teardown"
            );
        }
    }
}
