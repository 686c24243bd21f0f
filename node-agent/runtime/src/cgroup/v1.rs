//! The cgroup v1 driver: one directory per mounted controller hierarchy
//! (`/sys/fs/cgroup/memory/skiff/<id>`, `/sys/fs/cgroup/cpu/skiff/<id>`, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use super::{
    CgroupError, Result, Stats, keyed, kill_pids, pids_limit_hits, read, read_pids, read_u64,
    remove_dir_retry, write,
};

/// A container's cgroup on a v1 host.
#[derive(Debug)]
pub struct V1Cgroup {
    /// controller → `<mount>/<rel>`.
    dirs: BTreeMap<String, PathBuf>,
    mounts: BTreeMap<String, PathBuf>,
    rel: PathBuf,
}

/// The kernel's "unlimited" for v1 memory files (PAGE_COUNTER_MAX * 4096, rounded).
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

impl V1Cgroup {
    pub fn new(mounts: BTreeMap<String, PathBuf>, rel: &Path) -> Self {
        let dirs = mounts
            .iter()
            .map(|(c, m)| (c.clone(), m.join(rel)))
            .collect();
        V1Cgroup {
            dirs,
            mounts,
            rel: rel.into(),
        }
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.get(controller).map(PathBuf::as_path)
    }

    fn distinct_dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = self.dirs.values().map(PathBuf::as_path).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// A new cpuset cgroup starts with empty `cpus` and `mems` and refuses tasks until
    /// they are set: copy them down from the parent at every level skiff creates.
    fn init_cpuset(&self) -> Result<()> {
        let Some(mount) = self.mounts.get("cpuset") else {
            return Ok(());
        };
        let mut parent = mount.clone();
        for comp in self.rel.components() {
            let dir = parent.join(comp);
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = read(&dir.join(file))?;
                if own.trim().is_empty() {
                    let inherited = read(&parent.join(file))?;
                    write(&dir.join(file), inherited.trim())?;
                }
            }
            parent = dir;
        }
        Ok(())
    }

    fn write_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<()> {
        let Some(dir) = self.dir("devices") else {
            return Ok(());
        };
        for rule in rules {
            let file = if rule.allow() {
                "devices.allow"
            } else {
                "devices.deny"
            };
            write(&dir.join(file), &device_rule(rule))?;
        }
        Ok(())
    }

    fn freezer_state(&self) -> Result<Option<String>> {
        let Some(dir) = self.dir("freezer") else {
            return Ok(None);
        };
        Ok(Some(read(&dir.join("freezer.state"))?.trim().to_string()))
    }

    fn set_freezer(&self, state: &'static str) -> Result<()> {
        let Some(dir) = self.dir("freezer") else {
            return Ok(());
        };
        let file = dir.join("freezer.state");
        let start = Instant::now();
        let wait = Duration::from_secs(5);
        loop {
            // FREEZING is transitional; writing again nudges tasks that were in a
            // non-freezable section the first time (runc does the same).
            write(&file, state)?;
            if read(&file)?.trim() == state {
                return Ok(());
            }
            if start.elapsed() > wait {
                return Err(CgroupError::Timeout {
                    path: file,
                    state,
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// `c 1:3 rwm`, with `a` and `*` for what the rule leaves open.
pub(crate) fn device_rule(rule: &LinuxDeviceCgroup) -> String {
    let typ = rule
        .typ()
        .map(|t| t.as_str().to_string())
        .unwrap_or("a".into());
    let major = rule.major().map(|m| m.to_string()).unwrap_or("*".into());
    let minor = rule.minor().map(|m| m.to_string()).unwrap_or("*".into());
    let access = rule.access().clone().unwrap_or("rwm".into());
    format!("{typ} {major}:{minor} {access}")
}

impl super::Cgroup for V1Cgroup {
    fn create(&self) -> Result<()> {
        for dir in self.distinct_dirs() {
            std::fs::create_dir_all(dir).map_err(|err| CgroupError::Create {
                path: dir.into(),
                err,
            })?;
        }
        self.init_cpuset()
    }

    fn apply(&self, res: &LinuxResources) -> Result<()> {
        if let (Some(mem), Some(dir)) = (res.memory(), self.dir("memory")) {
            if let Some(limit) = mem.limit() {
                let v = if limit < 0 { -1 } else { limit };
                write(&dir.join("memory.limit_in_bytes"), &v.to_string())?;
            }
            // OCI's swap is memory+swap, exactly v1's memsw; absent when the kernel
            // runs without swap accounting.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if let Some(swap) = mem.swap()
                && memsw.exists()
            {
                let v = if swap < 0 { -1 } else { swap };
                write(&memsw, &v.to_string())?;
            }
            if let Some(r) = mem.reservation() {
                write(&dir.join("memory.soft_limit_in_bytes"), &r.to_string())?;
            }
            if let Some(s) = mem.swappiness() {
                write(&dir.join("memory.swappiness"), &s.to_string())?;
            }
            if mem.disable_oom_killer() == Some(true) {
                write(&dir.join("memory.oom_control"), "1")?;
            }
        }
        if let Some(cpu) = res.cpu() {
            if let Some(dir) = self.dir("cpu") {
                if let Some(shares) = cpu.shares() {
                    write(&dir.join("cpu.shares"), &shares.to_string())?;
                }
                if let Some(period) = cpu.period() {
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                }
                if let Some(quota) = cpu.quota() {
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            if let Some(dir) = self.dir("cpuset") {
                if let Some(cpus) = cpu.cpus() {
                    write(&dir.join("cpuset.cpus"), cpus)?;
                }
                if let Some(mems) = cpu.mems() {
                    write(&dir.join("cpuset.mems"), mems)?;
                }
            }
        }
        if let (Some(pids), Some(dir)) = (res.pids(), self.dir("pids")) {
            let limit = pids.limit();
            let v = if limit <= 0 {
                "max".to_string()
            } else {
                limit.to_string()
            };
            write(&dir.join("pids.max"), &v)?;
        }
        if let Some(devices) = res.devices() {
            self.write_devices(devices)?;
        }
        Ok(())
    }

    /// The hierarchies the container was created in (`Layout::cgroup_for_new` may have
    /// left some out), so an exec'd process joins exactly its container's groups.
    fn procs_files(&self) -> Vec<PathBuf> {
        self.distinct_dirs()
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn clone_into_dir(&self) -> Option<PathBuf> {
        None
    }

    fn freeze(&self) -> Result<()> {
        self.set_freezer("FROZEN")
    }

    fn thaw(&self) -> Result<()> {
        self.set_freezer("THAWED")
    }

    fn is_frozen(&self) -> Result<bool> {
        Ok(matches!(
            self.freezer_state()?.as_deref(),
            Some("FROZEN" | "FREEZING")
        ))
    }

    fn oom_kills(&self) -> Result<u64> {
        let Some(dir) = self.dir("memory") else {
            return Ok(0);
        };
        Ok(keyed(&dir.join("memory.oom_control"), "oom_kill")?.unwrap_or(0))
    }

    fn oom_event_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.dir("memory")
            .map(|d| (d.join("memory.oom_control"), d.join("cgroup.event_control")))
    }

    fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        if let Some(dir) = self.dir("memory") {
            stats.memory_usage_bytes = read_u64(&dir.join("memory.usage_in_bytes"))?;
            stats.memory_max_usage_bytes = read_u64(&dir.join("memory.max_usage_in_bytes"))?;
            let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
            stats.memory_limit_bytes = (limit < V1_UNLIMITED).then_some(limit);
            stats.oom_kills = self.oom_kills()?;
        }
        if let Some(dir) = self.dir("cpuacct") {
            stats.cpu_usage_ns = read_u64(&dir.join("cpuacct.usage"))?;
        }
        if let Some(dir) = self.dir("pids") {
            stats.pids_current = read_u64(&dir.join("pids.current"))?;
            let max = read(&dir.join("pids.max"))?;
            stats.pids_limit = max.trim().parse().ok();
            stats.pids_limit_hits = pids_limit_hits(&dir.join("pids.events"))?;
        }
        Ok(stats)
    }

    fn pids(&self) -> Result<Vec<i32>> {
        let Some(dir) = self
            .dir("freezer")
            .or_else(|| self.dir("pids"))
            .or_else(|| self.dir("memory"))
        else {
            return Ok(Vec::new());
        };
        if !dir.exists() {
            return Ok(Vec::new());
        }
        read_pids(&dir.join("cgroup.procs"))
    }

    fn kill_all(&self) -> Result<()> {
        // A frozen task only dies once thawed: signal first, then thaw, so nothing runs
        // in between (runc #3134).
        for _ in 0..100 {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            kill_pids(&pids);
            if self.is_frozen()? {
                self.thaw()?;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn delete(&self) -> Result<()> {
        for dir in self.distinct_dirs() {
            remove_dir_retry(dir)?;
        }
        Ok(())
    }

    fn exists(&self) -> bool {
        self.distinct_dirs().iter().any(|d| d.exists())
    }
}
