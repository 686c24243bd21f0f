//! The cgroup v2 driver: one directory in the unified tree (`<root>/skiff/<id>`), the
//! controllers enabled in every ancestor's `cgroup.subtree_control` on the way down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::{
    CgroupError, Result, Stats, keyed, kill_pids, pids_limit_hits, read, read_pids, read_u64,
    remove_dir_retry, shares_to_weight, write,
};

/// The controllers skiff enables for its containers.
const CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids"];

/// A container's cgroup on a v2 host.
#[derive(Debug)]
pub struct V2Cgroup {
    root: PathBuf,
    rel: PathBuf,
    dir: PathBuf,
}

impl V2Cgroup {
    pub fn new(root: PathBuf, rel: &Path) -> Self {
        let dir = root.join(rel);
        V2Cgroup {
            root,
            rel: rel.into(),
            dir,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Enables in `dir`'s subtree what `dir` itself offers of [`CONTROLLERS`].
    fn enable_controllers(dir: &Path) -> Result<()> {
        let available = read(&dir.join("cgroup.controllers"))?;
        let enabled = read(&dir.join("cgroup.subtree_control")).unwrap_or_default();
        let wanted: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
    }

    fn wait_frozen(&self, want: bool) -> Result<()> {
        let events = self.file("cgroup.events");
        let wait = Duration::from_secs(5);
        let start = Instant::now();
        let want_v = u64::from(want);
        loop {
            if keyed(&events, "frozen")? == Some(want_v) {
                return Ok(());
            }
            if start.elapsed() > wait {
                return Err(CgroupError::Timeout {
                    path: events,
                    state: if want { "frozen 1" } else { "frozen 0" },
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// `max` for negative (unlimited) values, the number otherwise.
fn limit_str(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

impl super::Cgroup for V2Cgroup {
    fn create(&self) -> Result<()> {
        let mut dir = self.root.clone();
        for comp in self.rel.components() {
            Self::enable_controllers(&dir)?;
            dir.push(comp);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(CgroupError::Create { path: dir, err }),
            }
        }
        Ok(())
    }

    fn apply(&self, res: &LinuxResources) -> Result<()> {
        if let Some(mem) = res.memory() {
            if let Some(limit) = mem.limit() {
                write(&self.file("memory.max"), &limit_str(limit))?;
            }
            // OCI's swap is memory+swap (v1 semantics); v2 limits swap alone.
            if let Some(swap) = mem.swap() {
                let v = match (swap, mem.limit()) {
                    (s, _) if s < 0 => "max".to_string(),
                    (s, Some(l)) if l >= 0 => s.saturating_sub(l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                write(&self.file("memory.swap.max"), &v)?;
            }
            if let Some(r) = mem.reservation() {
                write(&self.file("memory.low"), &limit_str(r))?;
            }
            if mem.disable_oom_killer() == Some(true) {
                write(&self.file("memory.oom.group"), "0")?;
            }
        }
        if let Some(cpu) = res.cpu() {
            if let Some(shares) = cpu.shares() {
                write(
                    &self.file("cpu.weight"),
                    &shares_to_weight(shares).to_string(),
                )?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                let quota = cpu.quota().map_or("max".to_string(), limit_str);
                let period = cpu.period().unwrap_or(100_000);
                write(&self.file("cpu.max"), &format!("{quota} {period}"))?;
            }
            if let Some(cpus) = cpu.cpus() {
                write(&self.file("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = cpu.mems() {
                write(&self.file("cpuset.mems"), mems)?;
            }
        }
        if let Some(pids) = res.pids() {
            let limit = pids.limit();
            write(
                &self.file("pids.max"),
                &if limit <= 0 {
                    "max".into()
                } else {
                    limit.to_string()
                },
            )?;
        }
        // Device rules on v2 need an eBPF program (BPF_CGROUP_DEVICE); not implemented,
        // see the module's Limitations. /dev is a tmpfs holding only the allowed nodes.
        Ok(())
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.file("cgroup.procs")]
    }

    fn clone_into_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn freeze(&self) -> Result<()> {
        write(&self.file("cgroup.freeze"), "1")?;
        self.wait_frozen(true)
    }

    fn thaw(&self) -> Result<()> {
        write(&self.file("cgroup.freeze"), "0")?;
        self.wait_frozen(false)
    }

    fn is_frozen(&self) -> Result<bool> {
        Ok(keyed(&self.file("cgroup.events"), "frozen")? == Some(1))
    }

    fn oom_kills(&self) -> Result<u64> {
        Ok(keyed(&self.file("memory.events"), "oom_kill")?.unwrap_or(0))
    }

    fn oom_event_files(&self) -> Option<(PathBuf, PathBuf)> {
        None
    }

    fn stats(&self) -> Result<Stats> {
        let mut stats = Stats {
            memory_usage_bytes: read_u64(&self.file("memory.current"))?,
            ..Stats::default()
        };
        let peak = self.file("memory.peak");
        if peak.exists() {
            stats.memory_max_usage_bytes = read_u64(&peak)?;
        }
        stats.memory_limit_bytes = read(&self.file("memory.max"))?.trim().parse().ok();
        stats.cpu_usage_ns = keyed(&self.file("cpu.stat"), "usage_usec")?.unwrap_or(0) * 1000;
        stats.pids_current = read_u64(&self.file("pids.current"))?;
        stats.pids_limit = read(&self.file("pids.max"))?.trim().parse().ok();
        stats.pids_limit_hits = pids_limit_hits(&self.file("pids.events"))?;
        stats.oom_kills = self.oom_kills()?;
        Ok(stats)
    }

    fn pids(&self) -> Result<Vec<i32>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        read_pids(&self.file("cgroup.procs"))
    }

    fn kill_all(&self) -> Result<()> {
        let kill = self.file("cgroup.kill");
        if kill.exists() {
            // cgroup.kill also kills frozen tasks (kernel 5.14+).
            return write(&kill, "1");
        }
        let pids = self.pids()?;
        kill_pids(&pids);
        if self.is_frozen().unwrap_or(false) {
            self.thaw()?;
        }
        Ok(())
    }

    fn delete(&self) -> Result<()> {
        remove_dir_retry(&self.dir)
    }

    fn exists(&self) -> bool {
        self.dir.exists()
    }
}
