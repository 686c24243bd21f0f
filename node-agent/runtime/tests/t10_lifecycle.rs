//! Container lifecycle on a real busybox root, as root: isolation, logs, stop, restart
//! re-adoption, delete leaving nothing behind, failures cleaned up.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fixture, eventually, unique};
use skiff_runtime::{
    ContainerId, CreateOptions, EtcFiles, Rootfs, RuntimeError, Status, docker_spec,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid1_is_the_entrypoint_and_the_host_is_invisible() {
    let fx = Fixture::new();
    std::fs::write(fx.tmp.path().join("host-secret"), "x").expect("write");
    let o = Fixture::opts(&[
        "sh",
        "-c",
        "echo pid=$$; echo procs=$(ls -d /proc/[0-9]* | wc -l); hostname; cat /etc/hostname /etc/resolv.conf; \
         cat /proc/1/cmdline | tr '\\0' ' '; echo; test -e /host-secret && echo LEAK; ls /state 2>&1; \
         grep -c . /proc/self/mountinfo",
    ]);
    let (exit, out) = fx.run("iso", &o).await;
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains("pid=1\n"), "{out}");
    // sh, the $(...) subshell, ls and wc: only the container's own processes.
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.trim().parse().ok())
        .expect("procs line");
    assert!(procs <= 5, "saw host processes: {out}");
    assert!(out.contains("\nc1\nc1\nnameserver 127.0.0.1\n"), "{out}");
    assert!(out.contains("sh -c echo pid=$$"), "{out}");
    assert!(!out.lines().any(|l| l == "LEAK"), "{out}");
    assert!(out.contains("No such file"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_land_in_the_json_log() {
    let fx = Fixture::new();
    let o = Fixture::opts(&["sh", "-c", "echo to-out; echo to-err >&2; printf partial"]);
    let id = fx.create("logs", &o).await;
    fx.rt.start(&id).await.expect("start");
    fx.rt.wait(&id).await.expect("wait");
    let mut rx = fx.rt.logs(&id, Default::default()).await.expect("logs");
    let mut entries = Vec::new();
    while let Some(e) = rx.recv().await {
        entries.push(e);
    }
    let find = |s: &str| {
        entries
            .iter()
            .find(|e| e.log == s)
            .map(|e| e.stream.clone())
    };
    assert_eq!(find("to-out\n").as_deref(), Some("stdout"), "{entries:?}");
    assert_eq!(find("to-err\n").as_deref(), Some("stderr"), "{entries:?}");
    assert_eq!(find("partial").as_deref(), Some("stdout"), "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e.time.ends_with('Z') && e.time.len() == 30)
    );
    let raw = std::fs::read_to_string(fx.rt.state(&id).expect("state").log_path).expect("log file");
    assert!(raw.lines().all(|l| l.starts_with("{\"log\":")), "{raw}");
    let mut tail = fx
        .rt
        .logs(
            &id,
            skiff_runtime::LogOptions {
                tail: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("tail");
    assert_eq!(tail.recv().await.map(|e| e.log).as_deref(), Some("partial"));
    assert!(tail.recv().await.is_none());
    fx.rt.delete(&id, false).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_lines_until_exit() {
    let fx = Fixture::new();
    let o = Fixture::opts(&[
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.2; done",
    ]);
    let id = fx.create("follow", &o).await;
    fx.rt.start(&id).await.expect("start");
    let mut rx = fx
        .rt
        .logs(
            &id,
            skiff_runtime::LogOptions {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .expect("logs");
    let mut got = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("follow ends")
    {
        got.push(e.log);
    }
    assert_eq!(got, vec!["line1\n", "line2\n", "line3\n"]);
    fx.rt.delete(&id, false).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_root_writes_go_to_the_upper_dir() {
    let fx = Fixture::new();
    let upper = fx.tmp.path().join("upper");
    let work = fx.tmp.path().join("work");
    let top = fx.tmp.path().join("layer2");
    std::fs::create_dir_all(&upper).expect("upper");
    std::fs::create_dir_all(&work).expect("work");
    std::fs::create_dir_all(top.join("etc")).expect("layer2");
    std::fs::write(top.join("etc/motd"), "from layer 2\n").expect("motd");
    let id = ContainerId::new("ovl").expect("id");
    let spec = docker_spec(&Fixture::opts(&[
        "sh",
        "-c",
        "cat /etc/motd; echo hi > /written; rm /bin/vi",
    ]));
    fx.rt
        .create(
            &id,
            CreateOptions {
                spec,
                rootfs: Rootfs::Overlay {
                    lowers: vec![fx.rootfs.clone(), top.clone()],
                    upper: upper.clone(),
                    work,
                },
                etc: EtcFiles::default(),
            },
        )
        .await
        .expect("create");
    fx.rt.start(&id).await.expect("start");
    let exit = fx.rt.wait(&id).await.expect("wait");
    let out = fx.log_text(&id).await;
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(out, "from layer 2\n");
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).expect("upper file"),
        "hi\n"
    );
    assert!(!fx.rootfs.join("written").exists(), "lower dir untouched");
    assert!(
        fx.rootfs.join("bin/vi").symlink_metadata().is_ok(),
        "whiteout only in upper"
    );
    fx.rt.delete(&id, false).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_points_come_from_a_shared_init_layer_not_the_upper_dir() {
    let fx = Fixture::new();
    // The image's top layer has its own /etc (mode 0750) and no /proc, /sys or /dev.
    let top = fx.tmp.path().join("layer2");
    std::fs::create_dir_all(top.join("etc")).expect("layer2");
    std::fs::write(top.join("etc/motd"), "from layer 2\n").expect("motd");
    std::fs::set_permissions(top.join("etc"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
    let bare = fx.tmp.path().join("bare");
    std::fs::create_dir_all(bare.join("bin")).expect("bare");
    std::fs::copy(fx.rootfs.join("bin/busybox"), bare.join("bin/busybox")).expect("copy");
    for applet in ["sh", "cat", "stat", "ls", "echo"] {
        std::os::unix::fs::symlink("busybox", bare.join("bin").join(applet)).expect("link");
    }
    let mut uppers = Vec::new();
    for name in ["init-a", "init-b"] {
        let upper = fx.tmp.path().join(name).join("upper");
        let work = fx.tmp.path().join(name).join("work");
        std::fs::create_dir_all(&upper).expect("upper");
        std::fs::create_dir_all(&work).expect("work");
        let id = ContainerId::new(name).expect("id");
        let spec = docker_spec(&Fixture::opts(&[
            "sh",
            "-c",
            "cat /etc/hostname /etc/motd; stat -c %a /etc; ls -d /proc/self /dev/null; echo x > /etc/new",
        ]));
        fx.rt
            .create(
                &id,
                CreateOptions {
                    spec,
                    rootfs: Rootfs::Overlay {
                        lowers: vec![bare.clone(), top.clone()],
                        upper: upper.clone(),
                        work,
                    },
                    etc: EtcFiles {
                        hosts: Some("127.0.0.1 localhost\n".into()),
                        hostname: Some(format!("{name}\n")),
                        resolv_conf: Some("nameserver 10.0.0.2\n".into()),
                    },
                },
            )
            .await
            .expect("create");
        fx.rt.start(&id).await.expect("start");
        let exit = fx.rt.wait(&id).await.expect("wait");
        let out = fx.log_text(&id).await;
        assert_eq!(exit.code, 0, "{out}");
        assert_eq!(
            out,
            format!("{name}\nfrom layer 2\n750\n/dev/null\n/proc/self\n")
        );
        fx.rt.delete(&id, false).await.expect("delete");
        uppers.push(upper);
    }
    for upper in &uppers {
        // Only what the container wrote is in its layer: no mount point files, no
        // /proc, /sys or /dev, and /etc was copied up for /etc/new alone.
        let mut names: Vec<String> = walk(upper);
        names.sort();
        assert_eq!(names, vec!["etc", "etc/new"], "{}", upper.display());
        let etc = std::fs::metadata(upper.join("etc")).expect("etc");
        assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
    }
    // Both containers used one init layer.
    let layers = std::fs::read_dir(fx.tmp.path().join("state/.init"))
        .expect("init layers")
        .count();
    assert_eq!(layers, 1);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read") {
            let e = e.expect("entry");
            let rel = e
                .path()
                .strip_prefix(dir)
                .expect("rel")
                .display()
                .to_string();
            if e.file_type().expect("type").is_dir() {
                todo.push(e.path());
            }
            out.push(rel);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_gives_sigterm_handlers_their_grace_then_sigkills() {
    let fx = Fixture::new();
    let o = Fixture::opts(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done",
    ]);
    let id = fx.create("graceful", &o).await;
    fx.rt.start(&id).await.expect("start");
    assert!(eventually(5, async || fx.log_text(&id).await.contains("ready")).await);
    let t = Instant::now();
    let exit = fx
        .rt
        .stop(&id, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!((exit.code, exit.signal), (3, 0));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(fx.log_text(&id).await.contains("got-term"));
    fx.rt.delete(&id, false).await.expect("delete");

    let o = Fixture::opts(&[
        "sh",
        "-c",
        "trap '' TERM; echo ready; while true; do sleep 0.05; done",
    ]);
    let id = fx.create("stubborn", &o).await;
    fx.rt.start(&id).await.expect("start");
    assert!(eventually(5, async || fx.log_text(&id).await.contains("ready")).await);
    let t = Instant::now();
    let exit = fx
        .rt
        .stop(&id, Duration::from_millis(300))
        .await
        .expect("stop");
    assert_eq!((exit.code, exit.signal), (137, 9));
    assert!(t.elapsed() >= Duration::from_millis(300));
    fx.rt.delete(&id, false).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_survives_an_agent_restart_and_is_readopted() {
    let fx = Fixture::new();
    let id = fx
        .create("survivor", &Fixture::opts(&["sleep", "1000"]))
        .await;
    let pid = fx.rt.start(&id).await.expect("start");
    let st = fx.rt.state(&id).expect("state");
    // The shim is not our child: it was double-forked away.
    let ppid = std::fs::read_to_string(format!("/proc/{}/stat", st.shim_pid)).expect("shim stat");
    let ppid: i32 = ppid[ppid.rfind(')').expect(")") + 2..]
        .split(' ')
        .nth(1)
        .expect("ppid")
        .parse()
        .expect("n");
    assert_ne!(ppid, std::process::id() as i32);

    let rt2 = fx.restarted_runtime();
    let list = rt2.list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].id.as_str(), list[0].status, list[0].pid),
        ("survivor", Status::Running, pid)
    );
    rt2.kill(&id, libc::SIGKILL)
        .await
        .expect("kill via new runtime");
    let exit = rt2.wait(&id).await.expect("wait via new runtime");
    assert_eq!(exit.signal, 9);
    rt2.delete(&id, false).await.expect("delete");
    assert!(rt2.list().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_no_process_cgroup_mount_or_file() {
    let fx = Fixture::new();
    let id = fx
        .create(
            "gone",
            &Fixture::opts(&["sh", "-c", "sleep 1000 & sleep 1000"]),
        )
        .await;
    fx.rt.start(&id).await.expect("start");
    let st = fx.rt.state(&id).expect("state");
    let dirs = fx.cgroup_dirs("gone");
    assert!(dirs.iter().any(|d| d.exists()));
    let err = fx.rt.delete(&id, false).await.expect_err("running");
    assert!(matches!(err, RuntimeError::WrongState { .. }), "{err}");
    fx.rt.delete(&id, true).await.expect("force delete");
    assert!(!skiff_runtime::state::is_same_process(st.pid, st.pid_start));
    // The shim has exited: gone, or a zombie its adopting parent (init) has yet to reap.
    assert!(
        !skiff_runtime::state::is_same_process(st.shim_pid, st.shim_start)
            || skiff_runtime::state::is_zombie(st.shim_pid),
        "the shim still runs"
    );
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    assert!(!fx.tmp.path().join("state/gone").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&fx.tmp.path().display().to_string()),
        "{mounts}"
    );
    assert!(matches!(
        fx.rt.state(&id),
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_names_the_step_and_leaves_nothing() {
    let fx = Fixture::new();
    let id = ContainerId::new("broken").expect("id");
    let err = fx
        .rt
        .create(
            &id,
            CreateOptions {
                spec: docker_spec(&Fixture::opts(&["/no/such/binary"])),
                rootfs: Rootfs::Dir(fx.rootfs.clone()),
                etc: EtcFiles::default(),
            },
        )
        .await
        .expect_err("no binary");
    let msg = err.to_string();
    assert!(
        msg.contains("exec") && msg.contains("/no/such/binary"),
        "{msg}"
    );
    assert!(!fx.tmp.path().join("state/broken").exists());
    assert!(fx.cgroup_dirs("broken").iter().all(|d| !d.exists()));

    let err = fx
        .rt
        .create(
            &id,
            CreateOptions {
                spec: docker_spec(&Fixture::opts(&["true"])),
                rootfs: Rootfs::Dir(fx.tmp.path().join("missing-root")),
                etc: EtcFiles::default(),
            },
        )
        .await
        .expect_err("no root");
    assert!(err.to_string().contains("missing-root"), "{err}");
    assert!(fx.cgroup_dirs("broken").iter().all(|d| !d.exists()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_a_prepared_network_namespace() {
    let fx = Fixture::new();
    let ns = unique("skiffrt").chars().take(20).collect::<String>();
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    struct NsGuard(String);
    impl Drop for NsGuard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    ip(&["netns", "add", &ns]);
    let _g = NsGuard(ns.clone());
    ip(&[
        "-n", &ns, "link", "add", "skiffd0", "type", "veth", "peer", "name", "skiffd1",
    ]);
    ip(&["-n", &ns, "addr", "add", "10.213.99.1/24", "dev", "skiffd0"]);
    let mut o = Fixture::opts(&["ip", "-o", "addr"]);
    o.netns = Some(Path::new("/run/netns").join(&ns));
    let (exit, out) = fx.run("netjoin", &o).await;
    assert_eq!(exit.code, 0, "{out}");
    assert!(
        out.contains("skiffd0") && out.contains("10.213.99.1/24"),
        "{out}"
    );

    let (_, out) = fx
        .run("netnew", &Fixture::opts(&["ip", "-o", "link"]))
        .await;
    assert!(out.contains("lo:") && !out.contains("skiffd0"), "{out}");
    assert!(out.contains("UP"), "lo is up in a fresh namespace: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_root_and_bind_and_tmpfs_mounts() {
    let fx = Fixture::new();
    let data = fx.tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("in"), "bound\n").expect("in");
    let mut bind = oci_spec::runtime::Mount::default();
    bind.set_destination("/data".into());
    bind.set_typ(Some("bind".into()));
    bind.set_source(Some(data.clone()));
    bind.set_options(Some(vec!["rbind".into(), "rw".into()]));
    let mut tmpfs = oci_spec::runtime::Mount::default();
    tmpfs.set_destination("/scratch".into());
    tmpfs.set_typ(Some("tmpfs".into()));
    tmpfs.set_source(Some("tmpfs".into()));
    tmpfs.set_options(Some(vec!["size=1m".into()]));
    let mut o = Fixture::opts(&[
        "sh",
        "-c",
        "cat /data/in; echo out > /data/out; touch /rootfile 2>/dev/null || echo ro-root; \
         echo t > /scratch/t && cat /scratch/t",
    ]);
    o.read_only = true;
    o.mounts = vec![bind, tmpfs];
    let (exit, out) = fx.run("mounts", &o).await;
    assert_eq!(exit.code, 0, "{out}");
    assert_eq!(out, "bound\nro-root\nt\n");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).expect("out"),
        "out\n"
    );
}
