//! cgroups behind one trait with two drivers, v1 (one hierarchy per controller) and v2
//! (the unified tree), chosen by probing `/proc/self/mountinfo`. Every cgroup skiff
//! makes lives under `<hierarchy>/<parent>/<container id>`; nothing else is touched.
//!
//! ```text
//!  probe(mountinfo) ──► Layout::V1 { controller → mount }   (also hybrid hosts: v1 wins
//!                   └─► Layout::V2 { root }                   for the controllers bound there)
//!  Layout + relative path ──► Box<dyn Cgroup> ──► create, apply, freeze, stats, delete
//! ```
//!
//! Both drivers are plain file I/O, so the v2 driver is tested against a temporary
//! directory tree that stands in for cgroup2, and the v1 driver against the real thing.

mod v1;
mod v2;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use v1::V1Cgroup;
pub use v2::V2Cgroup;

/// What failed in a cgroup operation, with the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {err}")]
    Read {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("writing {value:?} to {path}: {err}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        err: io::Error,
    },
    #[error("creating cgroup {path}: {err}")]
    Create {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("removing cgroup {path}: {err}")]
    Remove {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("unexpected content {content:?} in {path}")]
    Parse { path: PathBuf, content: String },
    #[error("no cgroup hierarchy found in /proc/self/mountinfo")]
    NoHierarchy,
    #[error("{path} did not reach {state:?} within {waited:?}")]
    Timeout {
        path: PathBuf,
        state: &'static str,
        waited: Duration,
    },
    #[error("invalid cgroup path {path:?}: must be relative without '..'")]
    InvalidPath { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// Where the host's cgroup hierarchies are mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// One hierarchy per controller (or per group of co-mounted controllers).
    V1 { mounts: BTreeMap<String, PathBuf> },
    /// The unified hierarchy.
    V2 { root: PathBuf },
}

/// The v1 controllers skiff creates a directory in (and moves containers into).
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
];

impl Layout {
    /// Probes the running host.
    pub fn probe() -> Result<Layout> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|err| CgroupError::Read {
            path: path.into(),
            err,
        })?;
        Layout::from_mountinfo(&text).ok_or(CgroupError::NoHierarchy)
    }

    /// Parses mountinfo. A v1 mount line looks like
    /// `35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory`;
    /// a hybrid host also has `41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw`
    /// with no controllers, so any v1 controller mount makes the layout V1.
    pub fn from_mountinfo(text: &str) -> Option<Layout> {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let rfields: Vec<&str> = right.split(' ').collect();
            if fields.len() < 5 || rfields.len() < 3 {
                continue;
            }
            // Only the root of a hierarchy is usable (a bind of a sub-cgroup is not).
            if fields[3] != "/" {
                continue;
            }
            let mount_point = PathBuf::from(unescape_mountinfo(fields[4]));
            match rfields[0] {
                "cgroup" => {
                    for opt in rfields[2].split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            v1.entry(opt.to_string())
                                .or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                "cgroup2" if v2.is_none() => v2 = Some(mount_point),
                _ => {}
            }
        }
        if !v1.is_empty() {
            Some(Layout::V1 { mounts: v1 })
        } else {
            v2.map(|root| Layout::V2 { root })
        }
    }

    /// The driver for the cgroup at `rel` (e.g. `skiff/web.1`) in this layout.
    pub fn cgroup(&self, rel: &Path) -> Result<Box<dyn Cgroup>> {
        check_relative(rel)?;
        Ok(match self {
            Layout::V1 { mounts } => Box::new(V1Cgroup::new(mounts.clone(), rel)),
            Layout::V2 { root } => Box::new(V2Cgroup::new(root.clone(), rel)),
        })
    }

    /// The cgroup a new container is created in: like [`Layout::cgroup`], except that on
    /// v1 it leaves out the hierarchies the container's `resources` do not use and
    /// nothing of skiff reads: `blkio` always (skiff sets no block I/O limits and reads
    /// no I/O statistics), `cpuset` unless CPUs or memory nodes are pinned. The
    /// container then stays in its shim's group there, as runc leaves it in hierarchies
    /// it does not know. Each v1 `mkdir` costs 20-60 µs of kernel work (memory
    /// controller the most) and a deploy makes one per hierarchy per container.
    pub fn cgroup_for_new(
        &self,
        rel: &Path,
        resources: Option<&LinuxResources>,
    ) -> Result<Box<dyn Cgroup>> {
        let Layout::V1 { mounts } = self else {
            return self.cgroup(rel);
        };
        check_relative(rel)?;
        let pinned = resources
            .and_then(|r| r.cpu().as_ref())
            .is_some_and(|c| c.cpus().is_some() || c.mems().is_some());
        let used = mounts
            .iter()
            .filter(|(c, _)| c.as_str() != "blkio" && (pinned || c.as_str() != "cpuset"))
            .map(|(c, m)| (c.clone(), m.clone()))
            .collect();
        Ok(Box::new(V1Cgroup::new(used, rel)))
    }

    /// Removes the (empty) parent directory skiff made, e.g. a test's `skiff-test-<n>`.
    /// A parent still holding other containers is left alone.
    pub fn remove_parent(&self, parent: &Path) -> Result<()> {
        check_relative(parent)?;
        let dirs: Vec<PathBuf> = match self {
            Layout::V1 { mounts } => {
                let mut d: Vec<PathBuf> = mounts.values().map(|m| m.join(parent)).collect();
                d.dedup();
                d
            }
            Layout::V2 { root } => vec![root.join(parent)],
        };
        for dir in dirs {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTEMPTY | libc::EBUSY)
                    ) => {}
                Err(err) => return Err(CgroupError::Remove { path: dir, err }),
            }
        }
        Ok(())
    }
}

fn check_relative(rel: &Path) -> Result<()> {
    use std::path::Component;
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(CgroupError::InvalidPath { path: rel.into() });
    }
    Ok(())
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Resource usage of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub memory_usage_bytes: u64,
    /// Peak usage where the kernel tracks it (v1 `max_usage_in_bytes`, v2 `memory.peak`).
    pub memory_max_usage_bytes: u64,
    /// None when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub cpu_usage_ns: u64,
    pub pids_current: u64,
    /// None when unlimited.
    pub pids_limit: Option<u64>,
    /// Forks refused because the pids limit was reached (`pids.events` `max`; 0 where
    /// the kernel does not count them).
    #[serde(default)]
    pub pids_limit_hits: u64,
    pub oom_kills: u64,
}

/// One container's cgroup, whichever the host's version.
pub trait Cgroup: Send + Sync + std::fmt::Debug {
    /// Creates the directories (and on v2 enables the controllers on the way down).
    fn create(&self) -> Result<()>;
    /// Writes memory, swap, cpu, cpuset, pids (and on v1 device) limits.
    fn apply(&self, resources: &LinuxResources) -> Result<()>;
    /// The files a process writes `0` into to move itself into this cgroup.
    fn procs_files(&self) -> Vec<PathBuf>;
    /// The directory to open for `CLONE_INTO_CGROUP` (v2 only).
    fn clone_into_dir(&self) -> Option<PathBuf>;
    fn freeze(&self) -> Result<()>;
    fn thaw(&self) -> Result<()>;
    fn is_frozen(&self) -> Result<bool>;
    /// Processes killed by the OOM killer in this cgroup so far.
    fn oom_kills(&self) -> Result<u64>;
    /// v1: `(memory.oom_control, cgroup.event_control)` for an eventfd registration.
    fn oom_event_files(&self) -> Option<(PathBuf, PathBuf)>;
    fn stats(&self) -> Result<Stats>;
    /// Pids (in the caller's pid namespace) of every process in the cgroup.
    fn pids(&self) -> Result<Vec<i32>>;
    /// SIGKILLs every process (thawing afterwards on v1 so they can die, runc #3134).
    fn kill_all(&self) -> Result<()>;
    /// Removes the directories; waits a little for dying processes to leave.
    fn delete(&self) -> Result<()>;
    /// Whether any of its directories still exists.
    fn exists(&self) -> bool;
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|err| CgroupError::Read {
        path: path.into(),
        err,
    })
}

pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|err| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        err,
    })
}

pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let s = read(path)?;
    s.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.into(),
        content: s,
    })
}

/// `key value` lines (memory.stat, memory.events, cpu.stat, memory.oom_control).
pub(crate) fn keyed(path: &Path, key: &str) -> Result<Option<u64>> {
    let s = read(path)?;
    for line in s.lines() {
        if let Some((k, v)) = line.split_once(' ')
            && k == key
        {
            return v.trim().parse().map(Some).map_err(|_| CgroupError::Parse {
                path: path.into(),
                content: line.into(),
            });
        }
    }
    Ok(None)
}

/// Forks refused at the pids limit, from a `pids.events` file (`max N`); 0 when the
/// kernel keeps no such file.
pub(crate) fn pids_limit_hits(events: &Path) -> Result<u64> {
    if !events.exists() {
        return Ok(0);
    }
    Ok(keyed(events, "max")?.unwrap_or(0))
}

pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>> {
    let s = read(path)?;
    Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// rmdir with retries: a killed process leaves its cgroup only once reaped.
pub(crate) fn remove_dir_retry(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => {
                return Err(CgroupError::Remove {
                    path: dir.into(),
                    err,
                });
            }
        }
    }
}

pub(crate) fn kill_pids(pids: &[i32]) {
    for &pid in pids {
        // The pid came from cgroup.procs a moment ago; a process that already exited is
        // fine (ESRCH). A recycled pid could only be reused inside the same cgroup.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// cpu shares (v1, 2..=262144) to cpu.weight (v2, 1..=10000), as runc converts them.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

#[cfg(test)]
mod tests;
