//! exec into a running container: its filesystem, namespaces and cgroup, exit codes,
//! pipes and a TTY.

mod common;

use std::io::Read;
use std::time::Duration;

use common::Fixture;
use skiff_runtime::{ExecOptions, RuntimeError};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sees_the_containers_filesystem_namespaces_and_cgroup() {
    let fx = Fixture::new();
    let o = Fixture::opts(&[
        "sh",
        "-c",
        "echo made-inside > /tmp/marker; exec sleep 1000",
    ]);
    let id = fx.create("execd", &o).await;
    let pid = fx.rt.start(&id).await.expect("start");
    assert!(common::eventually(5, async || fx.rootfs.join("tmp/marker").exists()).await);
    let p = fx
        .rt
        .exec(
            &id,
            ExecOptions {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /tmp/marker; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; grep CapEff /proc/self/status; cat /proc/self/cgroup | grep memory; exit 7".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let (code, out, err) = p.output().await.expect("output");
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 7, "{out} {}", String::from_utf8_lossy(&err));
    assert!(out.starts_with("made-inside\nc1\nsleep 1000 \n"), "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    // Inside its cgroup namespace the container's cgroup is the root.
    assert!(out.contains(":memory:/\n"), "{out}");
    // The exec'd process counted in the container's cgroup while it ran: the container
    // is still there and unaffected.
    assert_eq!(fx.rt.state(&id).expect("state").pid, pid);

    let p = fx
        .rt
        .exec(
            &id,
            ExecOptions {
                args: vec!["cat".into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec cat");
    let mut p = p;
    let mut stdin = p.child.stdin.take().expect("stdin");
    stdin.write_all(b"piped through\n").await.expect("write");
    drop(stdin);
    let (code, out, _) = p.output().await.expect("output");
    assert_eq!((code, out.as_slice()), (0, b"piped through\n".as_slice()));

    let p = fx
        .rt
        .exec(
            &id,
            ExecOptions {
                args: vec!["/nope".into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let (code, _, err) = p.output().await.expect("output");
    assert_eq!(code, 125);
    assert!(String::from_utf8_lossy(&err).contains("/nope"));
    fx.rt.delete(&id, true).await.expect("delete");

    let err = fx
        .rt
        .exec(
            &id,
            ExecOptions {
                args: vec!["true".into()],
                ..Default::default()
            },
        )
        .await
        .expect_err("deleted");
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_tty() {
    let fx = Fixture::new();
    let id = fx.create("tty", &Fixture::opts(&["sleep", "1000"])).await;
    fx.rt.start(&id).await.expect("start");
    let p = fx
        .rt
        .exec(
            &id,
            ExecOptions {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "tty; test -t 0 && echo is-a-tty".into(),
                ],
                tty: true,
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let mut master = p.pty.as_ref().expect("pty").try_clone().expect("clone");
    let code = tokio::time::timeout(Duration::from_secs(10), p.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(code, 0);
    let out = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 4096];
        let n = master.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("read");
    // The pty comes from the host's devpts, so `tty` cannot name it inside; it is a
    // terminal all the same (see Limitations).
    assert!(out.contains("is-a-tty\r\n"), "{out:?}");
    fx.rt.delete(&id, true).await.expect("delete");
}
