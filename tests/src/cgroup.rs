//! The lab's process fence: every process a lab starts, and everything those start
//! (shims, containers), lives in the cgroup subtree `skiff-lab-<id>`, so teardown can
//! find and kill all of it, then remove the subtree. On cgroup v1 the `pids` hierarchy
//! is the one that counts (the runtime is told to put containers under the same
//! parent); on a pure v2 host the unified hierarchy.

use std::path::{Path, PathBuf};

const V1_ROOT: &str = "/sys/fs/cgroup";

/// The hierarchies the lab's subtree is made in: (mount point, is it v2).
fn hierarchies() -> Vec<PathBuf> {
    let v1_pids = Path::new(V1_ROOT).join("pids");
    if v1_pids.join("cgroup.procs").exists() {
        let mut out = vec![v1_pids];
        let freezer = Path::new(V1_ROOT).join("freezer");
        if freezer.join("cgroup.procs").exists() {
            out.push(freezer);
        }
        out
    } else {
        vec![PathBuf::from(V1_ROOT)]
    }
}

/// The lab's cgroup subtree name for lab `id`.
pub fn lab_cgroup(id: &str) -> String {
    format!("skiff-lab-{id}")
}

/// Creates `<hierarchy>/<rel>` in each hierarchy.
pub fn create(rel: &str) -> std::io::Result<()> {
    for h in hierarchies() {
        std::fs::create_dir_all(h.join(rel))?;
    }
    Ok(())
}

/// The `cgroup.procs` files a process writes its pid to in order to enter `rel`.
pub fn procs_files(rel: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(rel).join("cgroup.procs"))
        .collect()
}

/// Every pid in the subtree `rel` (all hierarchies, all depths).
pub fn pids(rel: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for h in hierarchies() {
        collect(&h.join(rel), &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn collect(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect(&entry.path(), out);
            }
        }
    }
}

/// Kills every process in the subtree (SIGKILL, repeated until none is left or 5 s
/// pass), then removes its directories deepest first.
pub fn kill_and_remove(rel: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let pids = pids(rel);
        if pids.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        for pid in pids {
            crate::process::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The runtime makes containers' cgroups in every controller under the lab's
    // subtree: remove the subtree wherever it exists.
    for h in all_hierarchies() {
        remove_tree(&h.join(rel));
    }
}

/// Every mounted hierarchy under /sys/fs/cgroup (v1 controllers, `unified`, or the v2
/// root itself).
fn all_hierarchies() -> Vec<PathBuf> {
    let root = Path::new(V1_ROOT);
    let mut out = vec![root.to_owned()];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join("cgroup.procs").exists() {
                out.push(path);
            }
        }
    }
    out
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path());
            }
        }
    }
    let _gone_or_busy = std::fs::remove_dir(dir);
}
