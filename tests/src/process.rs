//! Daemons the lab starts inside a machine's network namespace: placed in the lab's
//! cgroup before they run (so nothing they start escapes teardown), their own process
//! group, stdout and stderr appended to a log file, no stdin. They outlive the command
//! that started them (the `skiff-lab` CLI exits while the lab runs); tests kill them
//! through the [`crate::Lab`] guard.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A started daemon.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Daemon {
    pub pid: u32,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub log: PathBuf,
}

/// A daemon that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot open log file {path}: {err}")]
    Log { path: PathBuf, err: std::io::Error },
    #[error("cannot start {program} in netns {netns}: {err}")]
    Spawn {
        program: PathBuf,
        netns: String,
        err: std::io::Error,
    },
}

/// Starts `program args` in `netns` and in a UTS namespace whose hostname is the
/// machine's name (the last part of the netns name), inside cgroup `cgroup` (relative
/// to each hierarchy), logging to `log`.
pub fn spawn(
    netns: &str,
    cgroup: &str,
    program: &Path,
    args: &[String],
    envs: &[(String, String)],
    log: &Path,
) -> Result<Daemon, SpawnError> {
    let procs: Vec<String> = crate::cgroup::procs_files(cgroup)
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    start(Some(netns), &procs, program, args, envs, log)
}

/// Starts `program args` in the host's network namespace, entering the cgroups whose
/// `cgroup.procs` files are `procs`.
pub fn spawn_in_host(
    procs: &[String],
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<Daemon, SpawnError> {
    start(None, procs, program, args, &[], log)
}

fn start(
    netns: Option<&str>,
    procs: &[String],
    program: &Path,
    args: &[String],
    envs: &[(String, String)],
    log: &Path,
) -> Result<Daemon, SpawnError> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|err| SpawnError::Log {
                path: log.to_owned(),
                err,
            })
    };
    // The shell writes its own pid into the cgroup, then becomes the daemon: nothing the
    // daemon forks can start outside the lab's subtree.
    let script = format!(
        "for f in {}; do echo $$ > \"$f\" || exit 97; done; exec \"$@\"",
        procs
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).arg("sh");
    if let Some(netns) = netns {
        // A machine has its own hostname: a UTS namespace named after the machine (the
        // netns name ends in it), entered without forking so the pid stays the daemon's.
        let hostname = netns.rsplit('-').next().unwrap_or(netns);
        cmd.args(["unshare", "--uts", "/bin/sh", "-c"])
            .arg("/bin/busybox hostname \"$0\" && exec \"$@\"")
            .arg(hostname);
        // nsenter, not `ip netns exec`: the latter remounts /sys, which hides the
        // cgroup hierarchies an agent needs. Only the network namespace changes.
        cmd.arg("nsenter").arg(format!("--net=/run/netns/{netns}"));
    }
    cmd.arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().map_err(|err| SpawnError::Spawn {
        program: program.to_owned(),
        netns: netns.unwrap_or("(host)").to_owned(),
        err,
    })?;
    Ok(Daemon {
        pid: child.id(),
        program: program.to_owned(),
        args: args.to_vec(),
        envs: envs.to_vec(),
        log: log.to_owned(),
    })
}

impl Daemon {
    /// Whether the process still runs (and is still ours: its command line names the
    /// program, so a reused pid is not mistaken for it).
    pub fn alive(&self) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return false;
        };
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        !zombie && String::from_utf8_lossy(&cmdline).contains(&name)
    }

    /// Sends `signal` if the process is still ours.
    pub fn signal(&self, signal: i32) {
        if self.alive() {
            kill(self.pid, signal);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, grace: std::time::Duration) {
        self.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while self.alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        reap(self.pid);
    }

    /// The last `lines` lines of the daemon's log, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Sends a signal to a pid; a process that is already gone is not an error.
pub fn kill(pid: u32, signal: i32) {
    let (Ok(pid), Ok(signal)) = (i32::try_from(pid), Signal::try_from(signal)) else {
        return;
    };
    let _gone = nix::sys::signal::kill(Pid::from_raw(pid), signal);
}

/// Collects the exit status of a child of this process, if it is one.
fn reap(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _not_our_child = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}
