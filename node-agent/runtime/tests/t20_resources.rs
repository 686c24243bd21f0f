//! cgroup limits and control on real containers: OOM kill reported, fork bomb held at
//! the pids limit, pause/resume, stats.

mod common;

use std::time::Duration;

use common::{Fixture, eventually};
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};
use skiff_runtime::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_oom_killed_and_reported() {
    let fx = Fixture::new();
    let mut o = Fixture::opts(&["tail", "/dev/zero"]);
    o.resources = Some(
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(32 * 1024 * 1024i64)
                    .swap(32 * 1024 * 1024i64)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources"),
    );
    let (exit, out) = fx.run("hog", &o).await;
    assert!(exit.oom_killed, "{exit:?} {out}");
    assert_eq!(exit.signal, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    let fx = Fixture::new();
    let mut o = Fixture::opts(&["sh", "-c", "f() { f | f & }; f; sleep 1000"]);
    o.resources = Some(
        LinuxResourcesBuilder::default()
            .pids(
                LinuxPidsBuilder::default()
                    .limit(32i64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("resources"),
    );
    let id = fx.create("bomb", &o).await;
    fx.rt.start(&id).await.expect("start");
    // The kernel counts each fork it refused at the limit: a steadier sign than the
    // number of live processes, which rises and falls as the bomb's shells give up.
    assert!(
        eventually(10, async || fx
            .rt
            .stats(&id)
            .await
            .map(|s| s.pids_limit_hits)
            .unwrap_or(0)
            > 0)
        .await,
        "the bomb should run into the limit: {:?}",
        fx.rt.stats(&id).await
    );
    for _ in 0..10 {
        let s = fx.rt.stats(&id).await.expect("stats");
        assert!(s.pids_current <= 32, "{s:?}");
        assert_eq!(s.pids_limit, Some(32));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fx.rt.delete(&id, true).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_resume_thaws_and_a_paused_container_can_be_killed() {
    let fx = Fixture::new();
    let o = Fixture::opts(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done",
    ]);
    let id = fx.create("pausable", &o).await;
    fx.rt.start(&id).await.expect("start");
    assert!(eventually(5, async || fx.log_text(&id).await.lines().count() > 3).await);
    fx.rt.pause(&id).await.expect("pause");
    assert_eq!(fx.rt.state(&id).expect("state").status, Status::Paused);
    let frozen = fx.log_text(&id).await.lines().count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fx.log_text(&id).await.lines().count(),
        frozen,
        "no output while frozen"
    );
    fx.rt.resume(&id).await.expect("resume");
    assert_eq!(fx.rt.state(&id).expect("state").status, Status::Running);
    assert!(
        eventually(5, async || fx.log_text(&id).await.lines().count()
            > frozen + 3)
        .await
    );
    let stats = fx.rt.stats(&id).await.expect("stats");
    assert!(
        stats.memory_usage_bytes > 0 && stats.cpu_usage_ns > 0,
        "{stats:?}"
    );

    fx.rt.pause(&id).await.expect("pause again");
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        fx.rt.stop(&id, Duration::from_millis(200)),
    )
    .await
    .expect("a paused container stops")
    .expect("stop");
    assert_eq!(exit.signal, 9);
    fx.rt.delete(&id, false).await.expect("delete");
}
