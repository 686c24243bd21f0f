//! The per-container shim: a small single-threaded supervisor (the `skiff-shim`
//! binary) that creates the container with `clone3(CLONE_PIDFD)`, holds its stdio and
//! writes its log, waits for its exit through the pidfd, records exit code, signal and
//! OOM in `state.json`, and serves typed requests on a unix socket. It detaches from
//! the agent (double fork + setsid), so containers outlive an agent restart.
//!
//! ```text
//!  agent ──spawn──► skiff-shim run <dir> ──fork──► shim (setsid)      [intermediate exits]
//!                                                   │ cgroup create/apply
//!                                                   │ clone3(ns flags | PIDFD [| INTO_CGROUP])
//!                                                   ├──────────────► container init (child.rs)
//!  agent ◄── CreateReply on stdout ─────────────────┤ state.json = created
//!  agent ── Start/Kill/Wait on shim.sock ─────────► │ poll: socket, pidfd, stdout, stderr, oom eventfd
//!                                                   │ exit → state.json = stopped, reply waiters, exit
//! ```
//!
//! Signals are blocked in the shim before `clone3`, so the child starts with every
//! signal blocked and unblocks them only right before `execve`; the exit is observed
//! through the pidfd, so no SIGCHLD can be lost and no pid can be reused under us.

pub mod exec;
pub mod log;
pub mod protocol;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use oci_spec::runtime::LinuxNamespaceType;

use crate::cgroup::Cgroup;
use crate::child::{self, ChildSetup, ERROR, READY, START, SetupError};
use crate::state::{self, ContainerState, ExitStatus, Status};
use crate::sys;
use log::{LineSplitter, LogWriter};
use protocol::{CreateReply, Request, Response, ShimConfig, files};

/// Entry point of the `skiff-shim` binary; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("run"), Some(dir), None) => run(Path::new(dir)),
        (Some("exec"), Some(dir), Some(req)) => exec::run(Path::new(dir), Path::new(req)),
        _ => {
            eprintln!(
                "usage: skiff-shim run <container dir> | exec <container dir> <request.json>"
            );
            2
        }
    }
}

fn reply(r: &CreateReply) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, r);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn run(dir: &Path) -> i32 {
    let cfg: ShimConfig = match std::fs::read(dir.join(files::SHIM_CONFIG))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            reply(&CreateReply::Failed {
                step: "read shim config".into(),
                message: format!("{}: {e}", dir.join(files::SHIM_CONFIG).display()),
            });
            return 1;
        }
    };
    // Detach: the agent reaps the intermediate at once; the shim is adopted by init
    // (or the agent's subreaper) and lives in its own session.
    match sys::fork() {
        Ok(Some(_)) => return 0,
        Ok(None) => {}
        Err(e) => {
            reply(&CreateReply::Failed {
                step: "fork shim".into(),
                message: e.to_string(),
            });
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    let _ = nix::unistd::chdir("/");
    match Supervisor::create(cfg) {
        Ok(mut sup) => {
            reply(&CreateReply::Created {
                pid: sup.state.pid,
                shim_pid: sup.state.shim_pid,
            });
            detach_stdout();
            sup.serve();
            0
        }
        Err(e) => {
            reply(&CreateReply::Failed {
                step: e.step,
                message: e.message,
            });
            1
        }
    }
}

fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = sys::dup2(null.as_raw_fd(), 1);
    }
}

fn ns_flag(t: LinuxNamespaceType) -> Option<CloneFlags> {
    Some(match t {
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        _ => return None,
    })
}

/// The running shim.
struct Supervisor {
    cfg: ShimConfig,
    pidfd: OwnedFd,
    cgroup: Box<dyn Cgroup>,
    sync: UnixStream,
    listener: UnixListener,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    oom: Option<nix::sys::eventfd::EventFd>,
    oom_seen: bool,
    log: LogWriter,
    split_out: LineSplitter,
    split_err: LineSplitter,
    tty: bool,
    state: ContainerState,
    waiters: Vec<UnixStream>,
}

/// Undoes a half-made container when create fails.
struct CreateGuard<'a> {
    cgroup: &'a dyn Cgroup,
    pidfd: Option<OwnedFd>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(fd) = &self.pidfd {
            let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            let _ = waitid(Id::PIDFd(fd.as_fd()), WaitPidFlag::WEXITED);
        }
        let _ = self.cgroup.kill_all();
        let _ = self.cgroup.delete();
    }
}

fn serr(step: &str, e: impl std::fmt::Display) -> SetupError {
    SetupError::new(step, e.to_string())
}

impl Supervisor {
    fn create(cfg: ShimConfig) -> Result<Supervisor, SetupError> {
        let dir = cfg.dir.clone();
        let resources = cfg
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref());
        let cgroup = cfg
            .layout
            .cgroup_for_new(&cfg.cgroup, resources)
            .map_err(|e| serr("cgroup", e))?;
        cgroup.create().map_err(|e| serr("create cgroup", e))?;
        let mut guard = CreateGuard {
            cgroup: cgroup.as_ref(),
            pidfd: None,
            armed: true,
        };
        let linux = cfg.spec.linux().clone().unwrap_or_default();
        if let Some(res) = linux.resources() {
            cgroup
                .apply(res)
                .map_err(|e| serr("apply cgroup limits", e))?;
        }

        let mut flags = CloneFlags::empty();
        let mut join = Vec::new();
        let mut new_cgroup_ns = false;
        for ns in linux.namespaces().iter().flatten() {
            let Some(flag) = ns_flag(ns.typ()) else {
                return Err(SetupError::new(
                    "namespaces",
                    format!("{:?} namespaces are not supported", ns.typ()),
                ));
            };
            match ns.path() {
                Some(path) => {
                    let fd: OwnedFd = std::fs::File::open(path)
                        .map_err(|e| SetupError::io("open namespace", path, e))?
                        .into();
                    if flag == CloneFlags::CLONE_NEWPID {
                        // Only affects children: the container's process is born in it.
                        nix::sched::setns(&fd, flag)
                            .map_err(|e| SetupError::io("setns pid", path, e.into()))?;
                    } else {
                        join.push((flag, fd));
                    }
                }
                None if flag == CloneFlags::CLONE_NEWCGROUP => new_cgroup_ns = true,
                None => flags |= flag,
            }
        }

        let mount_point = dir.parent().unwrap_or(&dir).join(files::ROOTFS);
        match std::fs::create_dir(&mount_point) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(SetupError::io("mkdir", &mount_point, e)),
        }

        let process = cfg
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| SetupError::new("spec", "no process".into()))?;
        let tty = process.terminal() == Some(true);
        let (child_in, child_out, child_err, out, err) = if tty {
            let pty = nix::pty::openpty(None, None).map_err(|e| serr("openpty", e))?;
            if let Some(size) = process.console_size() {
                let _ = sys::set_winsize(
                    pty.slave.as_raw_fd(),
                    size.height() as u16,
                    size.width() as u16,
                );
            }
            let s2 = pty.slave.try_clone().map_err(|e| serr("dup pty", e))?;
            let s3 = pty.slave.try_clone().map_err(|e| serr("dup pty", e))?;
            (pty.slave, s2, s3, Some(pty.master), None)
        } else {
            let null: OwnedFd = std::fs::File::open("/dev/null")
                .map_err(|e| SetupError::io("open", Path::new("/dev/null"), e))?
                .into();
            let (or, ow) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| serr("pipe", e))?;
            let (er, ew) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| serr("pipe", e))?;
            (null, ow, ew, Some(or), Some(er))
        };
        let (sync, child_sync) = UnixStream::pair().map_err(|e| serr("socketpair", e))?;

        let sock_path = dir.join(files::SOCKET);
        let _ = std::fs::remove_file(&sock_path);
        let listener =
            UnixListener::bind(&sock_path).map_err(|e| SetupError::io("bind", &sock_path, e))?;
        let log_path = dir.join(files::LOG);
        let log = LogWriter::open(&log_path, cfg.log_max_bytes, cfg.log_max_files)
            .map_err(|e| SetupError::io("open log", &log_path, e))?;

        let cgroup_dir = match cgroup.clone_into_dir() {
            Some(d) => {
                Some(std::fs::File::open(&d).map_err(|e| SetupError::io("open cgroup", &d, e))?)
            }
            None => None,
        };
        let setup = ChildSetup {
            stdin: child_in,
            stdout: child_out,
            stderr: child_err,
            tty,
            sync: child_sync,
            join,
            new_cgroup_ns,
            new_net_ns: flags.contains(CloneFlags::CLONE_NEWNET),
            new_mount_ns: flags.contains(CloneFlags::CLONE_NEWNS),
            new_uts_ns: flags.contains(CloneFlags::CLONE_NEWUTS),
            procs_files: if cgroup_dir.is_some() {
                Vec::new()
            } else {
                cgroup.procs_files()
            },
            mount_point,
        };
        let forked = sys::clone3(
            flags.bits() as u64,
            cgroup_dir.as_ref().map(|f| f.as_raw_fd()),
        )
        .map_err(|e| serr("clone3", e))?;
        let (pid, pidfd) = match forked {
            sys::Forked::Child => child::run(&cfg, setup),
            sys::Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        drop(setup);
        drop(cgroup_dir);
        guard.pidfd = Some(pidfd);

        let mut sync = sync;
        let mut b = [0u8; 1];
        match sync.read(&mut b) {
            Ok(1) if b[0] == READY => {}
            Ok(1) if b[0] == ERROR => {
                let mut rest = Vec::new();
                let _ = sync.read_to_end(&mut rest);
                return Err(SetupError::decode(&rest));
            }
            other => {
                return Err(SetupError::new(
                    "container setup",
                    format!("the container process exited before it was ready ({other:?})"),
                ));
            }
        }

        let oom = match cgroup.oom_event_files() {
            Some((control, event)) => register_oom_eventfd(&control, &event).ok(),
            None => None,
        };
        let pid_start = state::start_time(pid).unwrap_or(0);
        let shim_pid = std::process::id() as i32;
        let st = ContainerState {
            id: cfg.id.clone(),
            status: Status::Created,
            pid,
            pid_start,
            shim_pid,
            shim_start: state::start_time(shim_pid).unwrap_or(0),
            created_at: state::now_ms(),
            started_at: None,
            finished_at: None,
            exit: None,
            cgroup: cfg.cgroup.clone(),
            log_path,
        };
        state::write(&dir, &st).map_err(|e| SetupError::io("write state", &dir, e))?;
        guard.armed = false;
        let pidfd = guard
            .pidfd
            .take()
            .ok_or_else(|| SetupError::new("clone3", "lost pidfd".into()))?;
        drop(guard);
        let _ = listener.set_nonblocking(true);
        Ok(Supervisor {
            cfg,
            pidfd,
            cgroup,
            sync,
            listener,
            out,
            err,
            oom,
            oom_seen: false,
            log,
            split_out: LineSplitter::default(),
            split_err: LineSplitter::default(),
            tty,
            state: st,
            waiters: Vec::new(),
        })
    }

    fn save(&self) {
        if let Err(e) = state::write(&self.cfg.dir, &self.state) {
            eprintln!("skiff-shim {}: writing state: {e}", self.cfg.id);
        }
    }

    fn serve(&mut self) {
        loop {
            let (exited, conn, out_ready, err_ready, oom_ready) = {
                let mut fds = vec![
                    PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                let out_i = self.out.as_ref().map(|fd| {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let err_i = self.err.as_ref().map(|fd| {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let oom_i = self.oom.as_ref().map(|fd| {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("skiff-shim {}: poll: {e}", self.cfg.id);
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (
                    ready(Some(0)),
                    ready(Some(1)),
                    ready(out_i),
                    ready(err_i),
                    ready(oom_i),
                )
            };
            if out_ready {
                self.pump(true);
            }
            if err_ready {
                self.pump(false);
            }
            if oom_ready && let Some(fd) = &self.oom {
                let _ = fd.read();
                self.oom_seen = true;
            }
            if conn {
                while let Ok((stream, _)) = self.listener.accept() {
                    self.handle(stream);
                }
            }
            if exited {
                self.finish();
                return;
            }
        }
    }

    /// Reads what is available on stdout (or stderr) into the log; closes it on EOF.
    fn pump(&mut self, stdout: bool) -> bool {
        let fd = if stdout { &self.out } else { &self.err };
        let Some(fd) = fd else { return false };
        let mut buf = [0u8; 32 * 1024];
        let n = nix::unistd::read(fd, &mut buf);
        let (stream, splitter) = if stdout {
            ("stdout", &mut self.split_out)
        } else {
            ("stderr", &mut self.split_err)
        };
        let log = &mut self.log;
        let mut write = |l: &[u8]| {
            if let Err(e) = log.write(stream, l) {
                eprintln!("skiff-shim: writing log: {e}");
            }
        };
        match n {
            Ok(0) | Err(nix::errno::Errno::EIO) => {
                // EIO: the pty's last slave closed.
                splitter.finish(&mut write);
                if stdout {
                    self.out = None;
                } else {
                    self.err = None;
                }
                false
            }
            Ok(n) => {
                splitter.push(&buf[..n], &mut write);
                true
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => true,
            Err(e) => {
                eprintln!("skiff-shim {}: reading {stream}: {e}", self.cfg.id);
                false
            }
        }
    }

    fn handle(&mut self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            return;
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                respond(
                    &stream,
                    &Response::Failed {
                        step: "decode request".into(),
                        message: e.to_string(),
                    },
                );
                return;
            }
        };
        let resp = match req {
            Request::Wait => {
                self.waiters.push(stream);
                return;
            }
            Request::Kill { signal } => self.kill(signal),
            Request::Start => self.start(),
        };
        respond(&stream, &resp);
    }

    fn kill(&mut self, signal: i32) -> Response {
        if let Err(e) = sys::pidfd_send_signal(self.pidfd.as_fd(), signal) {
            return Response::Failed {
                step: "pidfd_send_signal".into(),
                message: format!("signal {signal} to pid {}: {e}", self.state.pid),
            };
        }
        // A frozen v1 task dies only once thawed; thaw after the signal (runc #3134).
        if signal == libc::SIGKILL && self.cgroup.is_frozen().unwrap_or(false) {
            let _ = self.cgroup.thaw();
        }
        Response::Done
    }

    fn start(&mut self) -> Response {
        if self.state.status != Status::Created {
            return Response::Failed {
                step: "start".into(),
                message: format!("container is {}, not created", self.state.status),
            };
        }
        if let Err(e) = self.sync.write_all(&[START]) {
            return Response::Failed {
                step: "start".into(),
                message: format!("signalling the container process: {e}"),
            };
        }
        let mut rest = Vec::new();
        let _ = self.sync.read_to_end(&mut rest);
        if rest.first() == Some(&ERROR) {
            let e = SetupError::decode(&rest[1..]);
            return Response::Failed {
                step: e.step,
                message: e.message,
            };
        }
        self.state.status = Status::Running;
        self.state.started_at = Some(state::now_ms());
        self.save();
        Response::Started {
            pid: self.state.pid,
        }
    }

    fn finish(&mut self) {
        let status = waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED);
        let mut exit = match status {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus {
                code,
                ..Default::default()
            },
            Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus {
                code: 128 + sig as i32,
                signal: sig as i32,
                oom_killed: false,
            },
            other => {
                eprintln!("skiff-shim {}: waitid: {other:?}", self.cfg.id);
                ExitStatus {
                    code: 255,
                    ..Default::default()
                }
            }
        };
        // Drain what the container wrote before it died.
        let deadline = Instant::now() + Duration::from_millis(200);
        while (self.out.is_some() || self.err.is_some()) && Instant::now() < deadline {
            let mut any = false;
            for stdout in [true, false] {
                let fd = if stdout { &self.out } else { &self.err };
                let Some(fd) = fd else { continue };
                let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                if poll(&mut p, PollTimeout::from(20u16)).unwrap_or(0) > 0 {
                    any |= self.pump(stdout);
                }
            }
            if !any && self.tty {
                break;
            }
        }
        for stdout in [true, false] {
            let s = if stdout {
                &mut self.split_out
            } else {
                &mut self.split_err
            };
            let log = &mut self.log;
            s.finish(|l| {
                let _ = log.write(if stdout { "stdout" } else { "stderr" }, l);
            });
        }
        if let Some(fd) = &self.oom
            && fd.read().is_ok()
        {
            self.oom_seen = true;
        }
        exit.oom_killed = self.oom_seen || self.cgroup.oom_kills().unwrap_or(0) > 0;
        self.state.status = Status::Stopped;
        self.state.exit = Some(exit);
        self.state.finished_at = Some(state::now_ms());
        self.save();
        for w in self.waiters.drain(..) {
            respond(&w, &Response::Exited(exit));
        }
        let _ = std::fs::remove_file(self.cfg.dir.join(files::SOCKET));
    }
}

fn respond(mut stream: &UnixStream, resp: &Response) {
    let _ = stream.set_nonblocking(false);
    if let Ok(mut bytes) = serde_json::to_vec(resp) {
        bytes.push(b'\n');
        let _ = stream.write_all(&bytes);
    }
}

/// v1 OOM notification: an eventfd registered through `cgroup.event_control`.
fn register_oom_eventfd(
    control: &Path,
    event_control: &Path,
) -> std::io::Result<nix::sys::eventfd::EventFd> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let ctl = std::fs::File::open(control)?;
    std::fs::write(
        event_control,
        format!("{} {}", efd.as_fd().as_raw_fd(), ctl.as_raw_fd()),
    )?;
    Ok(efd)
}
