//! The container's first process, between `clone3` in the shim and `execve` of the
//! entrypoint: stdio, cgroup, joined namespaces, root filesystem, hostname, identity;
//! then it tells the shim it is ready and waits for `start`.
//!
//! ```text
//!  shim                         child (new pid/mnt/uts/ipc/net ns)
//!  clone3 ──────────────────►  stdio, join cgroup (v1), setns(paths), unshare(cgroup)
//!                              rootfs::prepare, hostname, process::prepare
//!  read sync  ◄──── 'R' ─────  ready
//!  (start)    ───── 'S' ────►  [init: fork; PID 1 = init_loop]
//!  read sync  ◄──── EOF ─────  execve (sync fd is close-on-exec)
//!             ◄── 'E'+msg ───  any failure, then _exit(127)
//! ```

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use crate::process;
use crate::rootfs;
use crate::shim::protocol::ShimConfig;
use crate::spec::ANNOTATION_INIT;
use crate::sys;

/// A failed setup step, carried to the shim as text over the sync socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError {
    pub step: String,
    pub message: String,
}

impl SetupError {
    pub fn new(step: &str, message: String) -> Self {
        SetupError {
            step: step.into(),
            message,
        }
    }

    pub fn io(step: &str, path: &Path, err: std::io::Error) -> Self {
        SetupError::new(step, format!("{}: {err}", path.display()))
    }

    /// `step\0message`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.step.as_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(self.message.as_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let s = String::from_utf8_lossy(bytes);
        match s.split_once('\0') {
            Some((step, msg)) => SetupError::new(step, msg.into()),
            None => SetupError::new("setup", s.into_owned()),
        }
    }
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

/// Sync bytes.
pub const READY: u8 = b'R';
pub const START: u8 = b'S';
pub const ERROR: u8 = b'E';

/// What the shim hands the child.
#[derive(Debug)]
pub(crate) struct ChildSetup {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// stdin/stdout/stderr are one pty slave: become its session leader.
    pub tty: bool,
    pub sync: UnixStream,
    /// Namespaces to join by `setns` (except pid, joined by the shim before clone).
    pub join: Vec<(CloneFlags, OwnedFd)>,
    pub new_cgroup_ns: bool,
    pub new_net_ns: bool,
    pub new_mount_ns: bool,
    pub new_uts_ns: bool,
    /// v1: cgroup.procs files to write "0" into.
    pub procs_files: Vec<PathBuf>,
    pub mount_point: PathBuf,
}

fn report(sync: &mut UnixStream, err: &SetupError) -> ! {
    let mut msg = vec![ERROR];
    msg.extend(err.encode());
    let _ = sync.write_all(&msg);
    sys::exit_now(127)
}

/// Runs in the cloned child; never returns.
pub(crate) fn run(cfg: &ShimConfig, mut setup: ChildSetup) -> ! {
    let mut sync = match setup.sync.try_clone() {
        Ok(s) => s,
        Err(_) => sys::exit_now(126),
    };
    let prepared = match prepare(cfg, &mut setup) {
        Ok(p) => p,
        Err(e) => report(&mut sync, &e),
    };
    if sync.write_all(&[READY]).is_err() {
        sys::exit_now(126);
    }
    let mut b = [0u8; 1];
    match sync.read(&mut b) {
        Ok(1) if b[0] == START => {}
        // The shim went away or the container is deleted before start.
        _ => sys::exit_now(126),
    }
    let init = cfg
        .spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_INIT))
        .is_some_and(|v| v == "true");
    if init {
        match sys::fork() {
            Ok(Some(child)) => {
                // PID 1 keeps nothing of the shim: its descriptors go now.
                let _ = nix::unistd::close(sync.as_raw_fd());
                let _ = sys::cloexec_from(3);
                close_from(3);
                process::init_loop(nix::unistd::Pid::from_raw(child))
            }
            Ok(None) => {}
            Err(e) => report(&mut sync, &SetupError::new("fork init", e.to_string())),
        }
    }
    let err = process::exec(&prepared);
    report(&mut sync, &err)
}

fn close_from(first: i32) {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= first)
            .collect();
        for fd in fds {
            let _ = nix::unistd::close(fd);
        }
    }
}

fn prepare(cfg: &ShimConfig, s: &mut ChildSetup) -> Result<process::Prepared, SetupError> {
    if s.tty {
        nix::unistd::setsid().map_err(|e| SetupError::new("setsid", e.to_string()))?;
        sys::set_controlling_tty(s.stdin.as_raw_fd())
            .map_err(|e| SetupError::new("TIOCSCTTY", e.to_string()))?;
    }
    for (fd, target) in [(&s.stdin, 0), (&s.stdout, 1), (&s.stderr, 2)] {
        // Replaces the shim's standard descriptors (its reply pipe among them).
        sys::dup2(fd.as_raw_fd(), target)
            .map_err(|e| SetupError::new("dup2", format!("{target}: {e}")))?;
    }
    for f in &s.procs_files {
        std::fs::write(f, "0").map_err(|e| SetupError::io("join cgroup", f, e))?;
    }
    for (flag, fd) in &s.join {
        nix::sched::setns(fd, *flag)
            .map_err(|e| SetupError::new("setns", format!("{flag:?}: {e}")))?;
    }
    if s.new_cgroup_ns {
        // After joining the cgroup, so the namespace is rooted at the container's cgroup.
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| SetupError::new("unshare", format!("CLONE_NEWCGROUP: {e}")))?;
    }
    if s.new_net_ns {
        sys::loopback_up().map_err(|e| SetupError::new("set lo up", e.to_string()))?;
    }
    let spec = &cfg.spec;
    if s.new_mount_ns {
        rootfs::prepare(spec, &cfg.rootfs, &s.mount_point)?;
    }
    if s.new_uts_ns {
        if let Some(h) = spec.hostname() {
            nix::unistd::sethostname(h)
                .map_err(|e| SetupError::new("sethostname", format!("{h}: {e}")))?;
        }
        if let Some(d) = spec.domainname() {
            sys::setdomainname(d)
                .map_err(|e| SetupError::new("setdomainname", format!("{d}: {e}")))?;
        }
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SetupError::new("process", "the spec has no process".into()))?;
    process::prepare(spec, process, cfg.seccomp.as_ref())
}
