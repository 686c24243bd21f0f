//! `skiff-shim exec <dir> <request.json>`: runs one more process in a running
//! container. It joins the container's cgroup, then all its namespaces at once through
//! a pidfd (`setns(pidfd, ...)`, checked against the recorded start time so a reused
//! pid cannot be joined), forks so the child lands in the pid namespace, applies the
//! same identity, capabilities and seccomp as the container's process, and execs. The
//! helper itself stays outside and exits with the process's exit code (128+signal).

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use crate::child::SetupError;
use crate::process;
use crate::shim::protocol::{ShimConfig, files};
use crate::spec::ANNOTATION_USER;
use crate::state;
use crate::sys;

/// What to run; the library writes it next to the container's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The container's process with args, env, cwd, user and terminal replaced.
    pub process: Process,
    /// Docker's `user` string, resolved in the container's /etc/passwd.
    pub user: Option<String>,
}

/// Exit code of the helper when it fails before the process runs.
pub const SETUP_FAILED: i32 = 125;

fn fail(e: &SetupError) -> i32 {
    eprintln!("skiff exec: {e}");
    SETUP_FAILED
}

pub(crate) fn run(dir: &Path, req_path: &Path) -> i32 {
    match prepare(dir, req_path) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn prepare(dir: &Path, req_path: &Path) -> Result<i32, SetupError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| SetupError::io("read", p, e));
    let req: ExecRequest = serde_json::from_slice(&read(req_path)?).map_err(|e| {
        SetupError::new(
            "decode exec request",
            format!("{}: {e}", req_path.display()),
        )
    })?;
    let cfg_path = dir.join(files::SHIM_CONFIG);
    let mut cfg: ShimConfig = serde_json::from_slice(&read(&cfg_path)?).map_err(|e| {
        SetupError::new("decode shim config", format!("{}: {e}", cfg_path.display()))
    })?;
    if let Some(u) = &req.user {
        let mut ann = cfg.spec.annotations().clone().unwrap_or_default();
        ann.insert(ANNOTATION_USER.to_string(), u.clone());
        cfg.spec.set_annotations(Some(ann));
    }
    let st = state::read(dir).map_err(|e| SetupError::io("read state", dir, e))?;
    let pidfd = sys::pidfd_open(st.pid)
        .map_err(|e| SetupError::new("pidfd_open", format!("pid {}: {e}", st.pid)))?;
    // Opened first, checked second: if the start time still matches, the pidfd is the
    // container's init and not a process that reused its pid.
    if !state::is_same_process(st.pid, st.pid_start) {
        return Err(SetupError::new(
            "exec",
            format!("container {} is not running", cfg.id),
        ));
    }
    let cgroup = cfg
        .layout
        .cgroup(&cfg.cgroup)
        .map_err(|e| SetupError::new("cgroup", e.to_string()))?;
    for f in cgroup.procs_files() {
        std::fs::write(&f, "0").map_err(|e| SetupError::io("join cgroup", &f, e))?;
    }
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP;
    nix::sched::setns(&pidfd, flags)
        .map_err(|e| SetupError::new("setns", format!("pidfd of pid {}: {e}", st.pid)))?;
    drop(pidfd);
    let tty = req.process.terminal() == Some(true);
    match sys::fork().map_err(|e| SetupError::new("fork", e.to_string()))? {
        None => {
            if tty {
                let _ = nix::unistd::setsid();
                let _ = sys::set_controlling_tty(std::io::stdin().as_raw_fd());
            }
            let code = match process::prepare(&cfg.spec, &req.process, cfg.seccomp.as_ref()) {
                Ok(p) => fail(&process::exec(&p)),
                Err(e) => fail(&e),
            };
            sys::exit_now(code)
        }
        Some(child) => loop {
            match waitpid(nix::unistd::Pid::from_raw(child), None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SetupError::new("waitpid", e.to_string())),
            }
        },
    }
}
