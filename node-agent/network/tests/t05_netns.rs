//! Work inside a network namespace (root): it runs on the namespace workers, which are
//! reused and come back to their own namespace after each job, also after a panic or a
//! namespace that cannot be entered. The namespace lives under a temp dir named
//! skiff-*, removed at the end (also when an assertion fails).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use skiff_network::netns;

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
    let here = || (this_threads_netns(), tid());
    rt.block_on(async {
        let p = ns.path.clone();
        // One job at a time: each finds the worker the first one made idle.
        let (inside, first) = netns::run_in_async(Some(&p), here).await.expect("in ns");
        assert_eq!(inside, ino(&ns.path), "the job ran inside the namespace");
        assert_ne!(inside, home);
        let (again, second) = netns::run_in_async(Some(&p), here).await.expect("in ns");
        assert_eq!(again, inside);
        assert_eq!(second, first, "the worker was reused, not made anew");
        let (after, third) = netns::run_in_async(None, here).await.expect("at home");
        assert_eq!(third, first);
        assert_eq!(after, home, "the worker came back to its own namespace");

        // A panic reaches the caller, and the worker still comes home.
        let panicked = tokio::spawn(async move {
            netns::run_in_async(Some(&p), || -> () { panic!("boom inside") }).await
        })
        .await;
        assert!(panicked.is_err_and(|e| e.is_panic()), "the panic went on");
        let (after, fourth) = netns::run_in_async(None, here).await.expect("at home");
        assert_eq!(fourth, first, "the same worker goes on after a panic");
        assert_eq!(after, home, "home again after the panic");

        // A namespace that is not there is an error naming it, and nothing moved.
        let missing = ns.path.with_file_name("gone");
        let err = netns::run_in_async(Some(&missing), || ())
            .await
            .expect_err("no such namespace");
        assert!(err.to_string().contains("gone"), "{err}");
        let (after, _) = netns::run_in_async(None, here).await.expect("at home");
        assert_eq!(after, home);

        // Many at once are all answered, each inside the namespace.
        let jobs: Vec<_> = (0..40)
            .map(|_| {
                let p = ns.path.clone();
                tokio::spawn(async move { netns::run_in_async(Some(&p), here).await })
            })
            .collect();
        let mut tids = std::collections::BTreeSet::new();
        for j in jobs {
            let (inside_too, t) = j.await.expect("task").expect("in ns");
            assert_eq!(inside_too, inside);
            tids.insert(t);
        }
        assert!(tids.len() <= 8, "at most eight workers: {}", tids.len());
    });
}
