//! Docker's security defaults on real containers: capabilities, seccomp, user, masked
//! and read-only paths, and skiff's init reaping orphans.

mod common;

use common::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capeff_is_dockers_default_set() {
    let fx = Fixture::new();
    let (exit, out) = fx
        .run(
            "caps",
            &Fixture::opts(&["grep", "^Cap", "/proc/self/status"]),
        )
        .await;
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb\n"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb\n"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000\n"), "{out}");

    let mut o = Fixture::opts(&["grep", "^CapEff", "/proc/self/status"]);
    o.cap_add = vec!["NET_ADMIN".into()];
    o.cap_drop = vec!["CHOWN".into()];
    let (_, out) = fx.run("caps2", &o).await;
    assert!(out.contains("CapEff:\t00000000a80435fa\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_refuses_unshare_with_eperm_and_leaves_no_new_privs_off() {
    let fx = Fixture::new();
    let o = Fixture::opts(&[
        "sh",
        "-c",
        "unshare -n true; echo rc=$?; unshare -m true; echo rc=$?",
    ]);
    let (_, out) = fx.run("seccomp", &o).await;
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(
        out.contains("rc=1\nrc=1") || out.matches("rc=").count() == 2 && !out.contains("rc=0"),
        "{out}"
    );

    // The filter is on, and no_new_privs was not asked for: it stays off (setuid
    // binaries in the image keep working, as under Docker).
    let o = Fixture::opts(&["grep", "-E", "^(Seccomp|NoNewPrivs):", "/proc/self/status"]);
    let (_, out) = fx.run("seccomp-nnp", &o).await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");

    let mut o = Fixture::opts(&["sh", "-c", "unshare -u true; echo rc=$?"]);
    o.cap_add = vec!["SYS_ADMIN".into()];
    let (_, out) = fx.run("seccomp-admin", &o).await;
    assert!(
        out.contains("rc=0"),
        "with CAP_SYS_ADMIN the profile allows unshare: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_by_name_with_no_new_privileges() {
    let fx = Fixture::new();
    let mut o = Fixture::opts(&[
        "sh",
        "-c",
        "id; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; echo $HOME",
    ]);
    o.user = Some("app".into());
    o.no_new_privileges = true;
    let (exit, out) = fx.run("user", &o).await;
    assert_eq!(exit.code, 0, "{out}");
    assert!(
        out.contains("uid=1000(app) gid=1000(app) groups=50(staff)"),
        "{out}"
    );
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("/home/app\n"), "{out}");

    let mut o = Fixture::opts(&["id", "-u"]);
    o.user = Some("4242:4343".into());
    let (_, out) = fx.run("uidgid", &o).await;
    assert_eq!(out, "4242\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_and_read_only_paths_follow_docker() {
    let fx = Fixture::new();
    let o = Fixture::opts(&[
        "sh",
        "-c",
        "wc -c < /proc/keys; wc -c < /proc/interrupts; ls -A /proc/acpi /sys/firmware | grep -vc ':$'; \
         echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || echo ro-proc-sys; \
         ls -l /dev/null /dev/zero /dev/urandom | cut -c1-10; touch /sys/x 2>/dev/null || echo ro-sys",
    ]);
    let (exit, out) = fx.run("masks", &o).await;
    assert_eq!(exit.code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    // /proc/keys and /proc/interrupts read as /dev/null; the directories are empty
    // tmpfs (grep -c prints the blank separator line only).
    assert_eq!(
        (lines[0].trim(), lines[1].trim(), lines[2].trim()),
        ("0", "0", "1"),
        "{out}"
    );
    assert!(
        out.contains("ro-proc-sys") && out.contains("ro-sys"),
        "{out}"
    );
    assert!(out.contains("crw-rw-rw-"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiffs_init_is_pid1_and_reaps_an_orphaned_zombie() {
    let fx = Fixture::new();
    // The inner sh exits at once, orphaning its sleep to PID 1; once the sleep exits it
    // stays a zombie unless PID 1 reaps it.
    let script = "sh -c 'sleep 0.2 &'; sleep 1; echo pid=$$; \
                  cat /proc/1/cmdline | tr '\\0' ' '; echo; \
                  for f in /proc/[0-9]*/stat; do cut -d' ' -f3 $f; done | grep -c Z; exit 5";
    let mut o = Fixture::opts(&["sh", "-c", script]);
    o.init = true;
    let (exit, out) = fx.run("init", &o).await;
    assert_eq!(exit.code, 5, "init passes the exit code on: {out}");
    assert!(
        !out.contains("pid=1\n"),
        "the entrypoint is not PID 1: {out}"
    );
    assert!(out.contains("skiff-shim"), "PID 1 is skiff's init: {out}");
    assert!(out.ends_with("0\n"), "no zombie left: {out}");
}
