//! A container's state as the shim records it in `<state_dir>/<id>/state.json`
//! (written atomically by rename), and the process start times that make pids safe to
//! reuse after a restart.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Namespaces and root are set up; the process waits for `start`.
    Created,
    Running,
    /// Frozen by `pause`.
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// How the container's process ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code; 128+signal when killed by a signal (as a shell reports it).
    pub code: i32,
    /// The signal that killed it, 0 if it exited.
    pub signal: i32,
    /// The OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// What the shim records (and `state`/`list` return).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: Status,
    /// The container's PID 1 as the host sees it.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub pid_start: u64,
    pub shim_pid: i32,
    pub shim_start: u64,
    /// Unix milliseconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub exit: Option<ExitStatus>,
    /// Relative to each hierarchy, e.g. `skiff/web.1`.
    pub cgroup: PathBuf,
    pub log_path: PathBuf,
}

pub(crate) const STATE_FILE: &str = "state.json";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `state.json` in `dir` atomically.
pub(crate) fn write(dir: &Path, state: &ContainerState) -> std::io::Result<()> {
    let tmp = dir.join("state.json.tmp");
    let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))
}

/// Reads `state.json` from `dir`.
pub(crate) fn read(dir: &Path) -> std::io::Result<ContainerState> {
    let bytes = std::fs::read(dir.join(STATE_FILE))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Start time of `pid` in clock ticks since boot, None when it does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start`.
pub fn is_same_process(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid) == Some(start)
}

/// Whether the process is a zombie (`/proc/<pid>/stat` state Z).
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|c| c == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own stat");
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
    }
}
