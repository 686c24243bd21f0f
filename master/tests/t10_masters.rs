//! Three real masters on loopback: leader loss, writes under leader kills, catch-up
//! through a snapshot, and recovery from lost quorum.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use skiff_proto::v1 as pb;

async fn deploy(addr: &str) {
    let mut c = client(addr).await.expect("connect");
    c.deploy(deploy_request("busybox:1")).await.expect("deploy");
}

/// The service, retried for up to 10 s (a linearizable read needs a leader).
async fn web(addr: &str, linearizable: bool) -> pb::Service {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut last = String::new();
        match client(addr).await {
            Ok(mut c) => match c
                .get_service(pb::GetServiceRequest {
                    name: "app_web".into(),
                    project: String::new(),
                    read: Some(pb::ReadOptions { linearizable }),
                })
                .await
            {
                Ok(s) => return s.into_inner(),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last.push_str(&e.to_string()),
        }
        assert!(
            Instant::now() < deadline,
            "reading app_web from {addr}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_serves_writes_within_two_seconds_of_a_leader_kill() {
    let mut cluster = Cluster::start(3, &[]).await;
    deploy(&cluster.masters[0].addr).await;
    for round in 0..3 {
        let leader = cluster.leader().await;
        tracing::info!("--- kill the leader");
        cluster.masters[leader].kill();
        let started = Instant::now();
        let addrs = cluster.addrs();
        let took = update_until_acked(&addrs, 1000 + round, "kill2s").await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: first write after the leader kill took {took:?}\n{}",
            cluster.dump()
        );
        cluster.masters[leader].spawn(&["run"]);
        wait_ready(&cluster.masters[leader].addr.clone()).await;
    }
}

/// The term the leader at `addr` reports (0 if it does not answer as leader).
async fn leader_term(addr: &str) -> u64 {
    match client(addr).await {
        Ok(mut c) => c
            .cluster_info(pb::ClusterInfoRequest {})
            .await
            .map(|i| i.into_inner())
            .ok()
            .filter(|i| i.leader_addr == addr)
            .map_or(0, |i| i.term),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_stands_for_election_instead_of_resuming() {
    let mut cluster = Cluster::start(3, &[]).await;
    deploy(&cluster.masters[0].addr).await;
    let leader = cluster.leader().await;
    let addr = cluster.masters[leader].addr.clone();
    let before = leader_term(&addr).await;
    assert!(before > 0, "the leader reports its term");
    // Back well inside the followers' election timeout: resuming its old term would
    // be possible, and is what loses writes (see docs/masters.md).
    cluster.masters[leader].kill();
    cluster.masters[leader].spawn(&["run"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (now, after) = loop {
        let now = cluster.leader().await;
        let term = leader_term(&cluster.masters[now].addr).await;
        if term > 0 || Instant::now() > deadline {
            break (now, term);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        after > before,
        "leader {now} in term {after}, was {before}: a restarted leader resumed its term\n{}",
        cluster.dump()
    );
    update_until_acked(&cluster.addrs(), 1, "restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_leader_kills_under_load_lose_no_write_and_apply_none_twice() {
    let cluster = Arc::new(Mutex::new(Cluster::start(3, &[]).await));
    let first = cluster.lock().expect("lock").masters[0].addr.clone();
    deploy(&first).await;
    let base = web(&first, true).await.spec_version;
    let all: Vec<String> = cluster
        .lock()
        .expect("lock")
        .masters
        .iter()
        .map(|m| m.addr.clone())
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let all = all.clone();
        tokio::spawn(async move {
            let mut acked = 0u64;
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                seq += 1;
                update_until_acked(&all, seq, "load").await;
                acked += 1;
            }
            acked
        })
    };
    for kill in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let leader = {
            // Find the leader without holding the lock across awaits.
            let addrs: Vec<(usize, String)> = cluster
                .lock()
                .expect("lock")
                .masters
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_running())
                .map(|(i, m)| (i, m.addr.clone()))
                .collect();
            let mut found = None;
            let deadline = Instant::now() + Duration::from_secs(15);
            while found.is_none() && Instant::now() < deadline {
                for (_, a) in &addrs {
                    if let Ok(mut cl) = client(a).await
                        && let Ok(i) = cl.cluster_info(pb::ClusterInfoRequest {}).await
                    {
                        let la = i.into_inner().leader_addr;
                        if let Some((idx, _)) = addrs.iter().find(|(_, x)| *x == la) {
                            found = Some(*idx);
                            break;
                        }
                    }
                }
                if found.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            found.unwrap_or_else(|| {
                panic!(
                    "kill {kill}: no leader\n{}",
                    cluster.lock().expect("lock").dump()
                )
            })
        };
        {
            let mut c = cluster.lock().expect("lock");
            c.masters[leader].kill();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        {
            let mut c = cluster.lock().expect("lock");
            c.masters[leader].spawn(&["run"]);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(acked > 20, "only {acked} writes in the whole run");
    // Every acknowledged write applied exactly once: each bumped spec_version by one.
    let addrs = cluster.lock().expect("lock").addrs();
    let mut svc = None;
    for a in &addrs {
        if let Ok(mut c) = client(a).await
            && let Ok(s) = c
                .get_service(pb::GetServiceRequest {
                    name: "app_web".into(),
                    project: String::new(),
                    read: Some(pb::ReadOptions { linearizable: true }),
                })
                .await
        {
            svc = Some(s.into_inner());
            break;
        }
    }
    let svc = svc.expect("a master answers");
    assert_eq!(
        svc.spec_version,
        base + acked,
        "acknowledged {acked} updates after version {base}, store has spec_version {}; logs:\n{}",
        svc.spec_version,
        cluster.lock().expect("lock").dump()
    );
    assert_eq!(
        svc.spec.and_then(|s| s.labels.get("seq").cloned()),
        Some(acked.to_string()),
        "the last acknowledged write is the one in the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_for_ten_thousand_writes_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "1000"]).await;
    deploy(&cluster.masters[0].addr).await;
    let leader = cluster.leader().await;
    let down = (leader + 1) % 3;
    tracing::info!("--- stop a follower");
    cluster.masters[down].stop();
    let leader_addr = cluster.masters[leader].addr.clone();
    // 10k writes, 16 at a time.
    let n = 10_000u64;
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let addr = leader_addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client(&addr).await.expect("connect");
            let mut i = w;
            while i < n {
                // One write = one project with one network, through the cluster API.
                let mut cmd_ok = false;
                for _ in 0..5 {
                    let r = c
                        .deploy(pb::DeployRequest {
                            project: format!("p{i}"),
                            networks: vec![pb::NetworkSpec {
                                name: format!("n{i}"),
                                ..Default::default()
                            }],
                            ..Default::default()
                        })
                        .await;
                    if r.is_ok() {
                        cmd_ok = true;
                        break;
                    }
                }
                assert!(cmd_ok, "write {i} failed");
                i += 16;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let target = {
        let mut c = client(&leader_addr).await.expect("connect");
        c.cluster_info(pb::ClusterInfoRequest {})
            .await
            .expect("info")
            .into_inner()
            .commit_index
    };
    tracing::info!("--- restart the follower");
    cluster.masters[down].spawn(&["run"]);
    let addr = cluster.masters[down].addr.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = client(&addr).await
            && let Ok(i) = c.cluster_info(pb::ClusterInfoRequest {}).await
            && i.into_inner().commit_index >= target
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower did not catch up to {target}\n{}",
            cluster.dump()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = client(&addr).await.expect("connect");
    let nets = c
        .list_networks(pb::ListNetworksRequest::default())
        .await
        .expect("networks")
        .into_inner()
        .networks;
    assert_eq!(
        nets.len() as u64,
        n,
        "the caught-up master has every network"
    );
    assert!(
        cluster.masters[down].logs().contains("snapshot installed"),
        "the follower caught up without a snapshot:\n{}",
        cluster.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_brings_back_the_data_after_two_of_three_masters_are_lost() {
    let mut cluster = Cluster::start(3, &[]).await;
    deploy(&cluster.masters[0].addr).await;
    let addrs = cluster.addrs();
    for seq in 1..=5 {
        update_until_acked(&addrs, seq, "force").await;
    }
    let before = web(&cluster.masters[0].addr, true).await;
    // A healthy cluster: refused, and nothing changes. (It needs a stopped master.)
    cluster.masters[2].stop();
    let out = std::process::Command::new(BIN)
        .args([
            "--data-dir",
            &cluster.masters[2].dir.display().to_string(),
            "force-new-cluster",
        ])
        .output()
        .expect("run force-new-cluster");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "refused while a quorum answers: {text}"
    );
    assert!(text.contains("quorum"), "{text}");
    tracing::info!("--- lose two masters");
    cluster.masters[0].kill();
    cluster.masters[1].kill();
    let out = std::process::Command::new(BIN)
        .args([
            "--data-dir",
            &cluster.masters[2].dir.display().to_string(),
            "force-new-cluster",
        ])
        .output()
        .expect("run force-new-cluster");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "force-new-cluster failed: {text}");
    assert!(
        text.contains("index") && text.contains("term"),
        "says what it keeps: {text}"
    );
    cluster.masters[2].spawn(&["run"]);
    let addr = cluster.masters[2].addr.clone();
    wait_ready(&addr).await;
    let after = web(&addr, true).await;
    assert_eq!(after.spec, before.spec);
    assert_eq!(after.spec_version, before.spec_version);
    // And it takes writes again as a cluster of one.
    update_until_acked(std::slice::from_ref(&addr), 6, "force").await;
    assert_eq!(web(&addr, true).await.spec_version, before.spec_version + 1);
}
