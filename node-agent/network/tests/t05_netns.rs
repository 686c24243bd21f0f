//! Work inside a network namespace (root): it runs on the namespace workers, which are
//! reused and come back to their own namespace after each job, also after a panic or a
//! namespace that cannot be entered. The namespace lives under a temp dir named
//! skiff-*, removed at the end (also when an assertion fails).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use skiff_network::netns::{self, MAX_WORKERS};

/// The inode of the network namespace the calling thread is in.
fn this_threads_netns() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("own netns")
        .ino()
}

fn tid() -> i32 {
    nix::unistd::gettid().as_raw()
}

struct Ns {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ns {
    fn new() -> Ns {
        let dir = tempfile::Builder::new()
            .prefix("skiff-t05-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("ns");
        netns::create(&path).expect("netns");
        Ns { path, _dir: dir }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::remove(&self.path);
    }
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").ino()
}

#[test]
fn namespace_work_reuses_threads_that_come_back_home() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let ns = Ns::new();
    let home = std::fs::metadata("/proc/self/ns/net").expect("netns").ino();
    let inside = ino(&ns.path);
    assert_ne!(inside, home);
    let here = || (this_threads_netns(), tid());
    let mut tids = std::collections::BTreeSet::new();
    rt.block_on(async {
        let p = ns.path.clone();
        // Jobs one after another, inside and at home, alternating: a fresh thread per
        // job would show 60 thread ids.
        for _ in 0..30 {
            let (seen, t) = netns::run_in_async(Some(&p), here).await.expect("in ns");
            assert_eq!(seen, inside, "the job ran inside the namespace");
            tids.insert(t);
            let (seen, t) = netns::run_in_async(None, here).await.expect("at home");
            assert_eq!(seen, home, "the worker came back to its own namespace");
            tids.insert(t);
        }
        assert!(
            tids.len() <= MAX_WORKERS,
            "workers reused: {} threads",
            tids.len()
        );

        // A panic reaches the caller, and every worker is home afterwards.
        let q = p.clone();
        let panicked = tokio::spawn(async move {
            netns::run_in_async(Some(&q), || -> () { panic!("boom inside") }).await
        })
        .await;
        assert!(panicked.is_err_and(|e| e.is_panic()), "the panic went on");
        for _ in 0..20 {
            let (seen, t) = netns::run_in_async(None, here).await.expect("at home");
            assert_eq!(seen, home, "home again after the panic");
            tids.insert(t);
        }

        // A namespace that is not there is an error naming it, and nothing moved.
        let missing = ns.path.with_file_name("gone");
        let err = netns::run_in_async(Some(&missing), || ())
            .await
            .expect_err("no such namespace");
        assert!(err.to_string().contains("gone"), "{err}");
        for _ in 0..20 {
            let (seen, t) = netns::run_in_async(None, here).await.expect("at home");
            assert_eq!(seen, home);
            tids.insert(t);
        }

        // Many at once are all answered, each inside the namespace.
        let jobs: Vec<_> = (0..40)
            .map(|_| {
                let p = ns.path.clone();
                tokio::spawn(async move { netns::run_in_async(Some(&p), here).await })
            })
            .collect();
        for j in jobs {
            let (seen, t) = j.await.expect("task").expect("in ns");
            assert_eq!(seen, inside);
            tids.insert(t);
        }
    });
    assert!(
        tids.len() <= MAX_WORKERS,
        "at most {MAX_WORKERS} workers in all: {}",
        tids.len()
    );
}
