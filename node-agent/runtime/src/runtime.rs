//! The API the agent drives: `Runtime` creates containers by spawning their shims,
//! talks to them over their sockets, reads their state from disk (so a restarted agent
//! re-adopts what runs), and does cgroup work (pause, stats, delete) itself.
//!
//! Every method is `async` and never blocks a tokio worker for long: socket I/O is
//! tokio's, file and cgroup work (microseconds to a few milliseconds) runs inline or in
//! `spawn_blocking` where it can wait (freezing, removing cgroups).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::runtime::{Mount, Spec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cgroup::{Cgroup, Layout, Stats};
use crate::config::{ContainerId, CreateOptions, Rootfs, RuntimeConfig};
use crate::error::RuntimeError;
use crate::init_layer::{InitLayers, Points};
use crate::seccomp::FilterCache;
use crate::shim::exec::ExecRequest;
use crate::shim::log::{self, LogEntry};
use crate::shim::protocol::{CreateReply, Request, Response, ShimConfig, files};
use crate::state::{self, ContainerState, ExitStatus, Status};

/// Annotation naming the stop signal (`SIGTERM` by default, as Docker).
pub const ANNOTATION_STOP_SIGNAL: &str = "io.skiff.stop-signal";

type Result<T> = std::result::Result<T, RuntimeError>;

/// skiff's container runtime on this machine.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RuntimeConfig,
    layout: Layout,
    filters: FilterCache,
    init_layers: InitLayers,
    exec_seq: AtomicU64,
}

/// What to run with `exec`.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// None: the container's environment.
    pub env: Option<Vec<String>>,
    pub cwd: Option<PathBuf>,
    /// Docker's `user` string; None: the container's user.
    pub user: Option<String>,
    /// A pty instead of pipes.
    pub tty: bool,
}

/// A process started by `exec`.
#[derive(Debug)]
pub struct ExecProcess {
    pub child: tokio::process::Child,
    /// With `tty`: the pty master (read output, write input).
    pub pty: Option<std::fs::File>,
    request: PathBuf,
}

impl ExecProcess {
    /// Waits for the process; its exit code, 128+signal if killed, 125 if skiff could
    /// not start it (the reason is on its stderr).
    pub async fn wait(mut self) -> Result<i32> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| RuntimeError::io("wait for exec helper", &self.request, e))?;
        let _ = std::fs::remove_file(&self.request);
        Ok(status.code().unwrap_or(255))
    }

    /// Collects stdout and stderr (pipes) and the exit code.
    pub async fn output(mut self) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (mut so, mut se) = (self.child.stdout.take(), self.child.stderr.take());
        let read_out = async {
            if let Some(s) = so.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = se.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let code = self.wait().await?;
        Ok((code, out, err))
    }
}

/// Which log entries `logs` returns.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub since: Option<SystemTime>,
    /// Only the last N entries (of those since `since`).
    pub tail: Option<usize>,
}

impl Runtime {
    /// Probes the cgroup layout (unless configured) and makes the state directory.
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime> {
        let layout = match &cfg.cgroup_layout {
            Some(l) => l.clone(),
            None => Layout::probe()?,
        };
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| RuntimeError::io("create state dir", &cfg.state_dir, e))?;
        // One subdirectory per container: spread them over the disk (placement.rs). Only
        // where they are put depends on it, so a refusal is not an error.
        let _ = crate::placement::spread_subdirectories(&cfg.state_dir);
        Ok(Runtime {
            inner: Arc::new(Inner {
                layout,
                filters: FilterCache::default(),
                init_layers: InitLayers::new(&cfg.state_dir),
                exec_seq: AtomicU64::new(0),
                cfg,
            }),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn dir(&self, id: &ContainerId) -> PathBuf {
        self.inner.cfg.state_dir.join(id.as_str())
    }

    fn cgroup_rel(&self, id: &ContainerId) -> PathBuf {
        Path::new(&self.inner.cfg.cgroup_parent).join(id.as_str())
    }

    fn cgroup(&self, id: &ContainerId) -> Result<Box<dyn Cgroup>> {
        Ok(self.inner.layout.cgroup(&self.cgroup_rel(id))?)
    }

    /// Sets up the container (namespaces, root, cgroup) with its process waiting for
    /// `start`. The spec's `linux.seccomp` is compiled here, once per distinct profile.
    pub async fn create(&self, id: &ContainerId, opts: CreateOptions) -> Result<ContainerState> {
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id: id.to_string() });
            }
            Err(e) => return Err(RuntimeError::io("create container dir", &dir, e)),
        }
        let result = self.create_in(id, &dir, opts).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// `rootfs` with the init layer of `spec`'s mount points on top of its image
    /// layers (init_layer.rs). An init layer that cannot be made is left out: the
    /// container then creates its mount points in its writable layer, as without one.
    fn with_init_layer(&self, spec: &Spec, rootfs: Rootfs) -> Rootfs {
        let Rootfs::Overlay {
            mut lowers,
            upper,
            work,
        } = rootfs
        else {
            return rootfs;
        };
        let points = Points::of(spec, &lowers);
        if !points.is_empty()
            && let Ok(dir) = self.inner.init_layers.get(&points)
        {
            lowers.push(dir);
        }
        Rootfs::Overlay {
            lowers,
            upper,
            work,
        }
    }

    async fn create_in(
        &self,
        id: &ContainerId,
        dir: &Path,
        opts: CreateOptions,
    ) -> Result<ContainerState> {
        let mut spec = opts.spec;
        if spec.process().is_none() {
            return Err(RuntimeError::InvalidSpec {
                id: id.to_string(),
                reason: "no process".into(),
            });
        }
        add_etc_mounts(&mut spec, dir, &opts.etc)?;
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(profile) => Some((*self.inner.filters.get(profile)?).clone()),
            None => None,
        };
        let rootfs = self.with_init_layer(&spec, opts.rootfs);
        let cfg = ShimConfig {
            id: id.to_string(),
            dir: dir.into(),
            spec,
            rootfs,
            layout: self.inner.layout.clone(),
            cgroup: self.cgroup_rel(id),
            log_max_bytes: self.inner.cfg.log_max_bytes,
            log_max_files: self.inner.cfg.log_max_files,
            seccomp,
        };
        let cfg_path = dir.join(files::SHIM_CONFIG);
        let bytes = serde_json::to_vec(&cfg).map_err(|err| RuntimeError::Protocol {
            id: id.to_string(),
            path: cfg_path.clone(),
            err,
        })?;
        std::fs::write(&cfg_path, bytes)
            .map_err(|e| RuntimeError::io("write shim config", &cfg_path, e))?;
        let shim_log_path = dir.join(files::SHIM_LOG);
        let shim_log = std::fs::File::create(&shim_log_path)
            .map_err(|e| RuntimeError::io("create shim log", &shim_log_path, e))?;
        let shim = &self.inner.cfg.shim_path;
        let mut child = tokio::process::Command::new(shim)
            .arg("run")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(|e| RuntimeError::io("spawn shim", shim, e))?;
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .await
                .map_err(|e| RuntimeError::io("read shim reply", shim, e))?;
        }
        // The intermediate exits as soon as it has forked the shim.
        let _ = child.wait().await;
        let reply: CreateReply =
            serde_json::from_str(out.trim()).map_err(|err| RuntimeError::Protocol {
                id: id.to_string(),
                path: shim.clone(),
                err,
            })?;
        match reply {
            CreateReply::Created { .. } => self.state(id),
            CreateReply::Failed { step, message } => Err(RuntimeError::Shim {
                id: id.to_string(),
                step,
                message,
            }),
        }
    }

    async fn request(&self, id: &ContainerId, req: &Request) -> Result<Response> {
        let sock = self.dir(id).join(files::SOCKET);
        let io = |step, e| RuntimeError::io(step, &sock, e);
        let mut stream = UnixStream::connect(&sock)
            .await
            .map_err(|e| io("connect to shim", e))?;
        let mut line = serde_json::to_vec(req).map_err(|err| RuntimeError::Protocol {
            id: id.to_string(),
            path: sock.clone(),
            err,
        })?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| io("send to shim", e))?;
        let mut resp = String::new();
        BufReader::new(stream)
            .read_line(&mut resp)
            .await
            .map_err(|e| io("read from shim", e))?;
        if resp.is_empty() {
            return Err(io(
                "read from shim",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "shim closed the connection",
                ),
            ));
        }
        serde_json::from_str(&resp).map_err(|err| RuntimeError::Protocol {
            id: id.to_string(),
            path: sock,
            err,
        })
    }

    fn failed(id: &ContainerId, r: Response) -> RuntimeError {
        match r {
            Response::Failed { step, message } => RuntimeError::Shim {
                id: id.to_string(),
                step,
                message,
            },
            other => RuntimeError::Shim {
                id: id.to_string(),
                step: "shim reply".into(),
                message: format!("unexpected {other:?}"),
            },
        }
    }

    /// Lets the created process exec its entrypoint; returns its host pid.
    pub async fn start(&self, id: &ContainerId) -> Result<i32> {
        match self.request(id, &Request::Start).await? {
            Response::Started { pid } => Ok(pid),
            other => Err(Self::failed(id, other)),
        }
    }

    /// The container's state as recorded by its shim, corrected by what the host shows:
    /// a frozen cgroup is `Paused`; a dead shim that recorded no exit is `Stopped`.
    pub fn state(&self, id: &ContainerId) -> Result<ContainerState> {
        let dir = self.dir(id);
        let mut st = match state::read(&dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound { id: id.to_string() });
            }
            Err(e) => {
                return Err(RuntimeError::io(
                    "read state",
                    dir.join(state::STATE_FILE),
                    e,
                ));
            }
        };
        if st.status != Status::Stopped && !state::is_same_process(st.shim_pid, st.shim_start) {
            // The shim may have just written its final state and exited.
            st = state::read(&dir).map_err(|e| RuntimeError::io("read state", &dir, e))?;
            if st.status != Status::Stopped {
                st.status = Status::Stopped;
            }
        }
        if st.status == Status::Running && self.cgroup(id)?.is_frozen().unwrap_or(false) {
            st.status = Status::Paused;
        }
        Ok(st)
    }

    /// Sends `signal` to the container's PID 1 (through the shim's pidfd).
    pub async fn kill(&self, id: &ContainerId, signal: i32) -> Result<()> {
        let st = self.state(id)?;
        if st.status == Status::Stopped {
            return Err(RuntimeError::WrongState {
                id: id.to_string(),
                status: st.status,
                wanted: "cannot be signalled",
            });
        }
        match self.request(id, &Request::Kill { signal }).await? {
            Response::Done => Ok(()),
            other => Err(Self::failed(id, other)),
        }
    }

    /// Waits until the container has exited and returns how.
    pub async fn wait(&self, id: &ContainerId) -> Result<ExitStatus> {
        loop {
            let st = self.state(id)?;
            if st.status == Status::Stopped {
                return st.exit.ok_or(RuntimeError::ShimGone {
                    id: id.to_string(),
                    pid: st.shim_pid,
                });
            }
            match self.request(id, &Request::Wait).await {
                Ok(Response::Exited(e)) => return Ok(e),
                Ok(other) => return Err(Self::failed(id, other)),
                // The shim exited between our state read and connect: read again.
                Err(RuntimeError::Io { .. }) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the stop signal (annotation `io.skiff.stop-signal`, else SIGTERM), then
    /// SIGKILL once `grace` has passed; returns the exit.
    pub async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<ExitStatus> {
        let st = self.state(id)?;
        if st.status == Status::Stopped {
            return self.wait(id).await;
        }
        let signal = self.stop_signal(id).unwrap_or(libc::SIGTERM);
        let first = if st.status == Status::Created {
            libc::SIGKILL
        } else {
            signal
        };
        let _ = self.kill(id, first).await;
        match tokio::time::timeout(grace, self.wait(id)).await {
            Ok(r) => r,
            Err(_) => {
                let _ = self.kill(id, libc::SIGKILL).await;
                self.wait(id).await
            }
        }
    }

    fn stop_signal(&self, id: &ContainerId) -> Option<i32> {
        let bytes = std::fs::read(self.dir(id).join(files::SHIM_CONFIG)).ok()?;
        let cfg: ShimConfig = serde_json::from_slice(&bytes).ok()?;
        let name = cfg
            .spec
            .annotations()
            .as_ref()?
            .get(ANNOTATION_STOP_SIGNAL)?
            .clone();
        parse_signal(&name)
    }

    /// Freezes every process of the container.
    pub async fn pause(&self, id: &ContainerId) -> Result<()> {
        let st = self.state(id)?;
        if st.status != Status::Running {
            return Err(RuntimeError::WrongState {
                id: id.to_string(),
                status: st.status,
                wanted: "must be running to pause",
            });
        }
        let cg = self.cgroup(id)?;
        blocking(move || cg.freeze()).await?;
        Ok(())
    }

    /// Thaws a paused container.
    pub async fn resume(&self, id: &ContainerId) -> Result<()> {
        let st = self.state(id)?;
        if st.status != Status::Paused {
            return Err(RuntimeError::WrongState {
                id: id.to_string(),
                status: st.status,
                wanted: "must be paused to resume",
            });
        }
        let cg = self.cgroup(id)?;
        blocking(move || cg.thaw()).await?;
        Ok(())
    }

    /// Memory, cpu and pids usage from the container's cgroup.
    pub async fn stats(&self, id: &ContainerId) -> Result<Stats> {
        self.state(id)?;
        let cg = self.cgroup(id)?;
        Ok(blocking(move || cg.stats()).await?)
    }

    /// Removes the container: kills it first with `force`, then its cgroup and state
    /// directory. Verifies nothing of it is left.
    pub async fn delete(&self, id: &ContainerId, force: bool) -> Result<()> {
        let st = match self.state(id) {
            Ok(s) => Some(s),
            Err(RuntimeError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(st) = &st {
            if st.status != Status::Stopped {
                if !force {
                    return Err(RuntimeError::WrongState {
                        id: id.to_string(),
                        status: st.status,
                        wanted: "must be stopped to delete (or use force)",
                    });
                }
                let _ = self.kill(id, libc::SIGKILL).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
            }
            // The shim exits right after recording the exit. An exited shim that its
            // parent (init, or whatever adopted it) has not reaped yet is done too.
            let deadline = Instant::now() + Duration::from_secs(2);
            while state::is_same_process(st.shim_pid, st.shim_start)
                && !state::is_zombie(st.shim_pid)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let cg = self.cgroup(id)?;
        let leftover = blocking(
            move || -> std::result::Result<bool, crate::cgroup::CgroupError> {
                if cg.exists() {
                    cg.kill_all()?;
                    cg.delete()?;
                }
                Ok(cg.exists())
            },
        )
        .await?;
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io("remove container dir", &dir, e)),
        }
        if leftover {
            return Err(RuntimeError::Leftover {
                id: id.to_string(),
                what: "its cgroup".into(),
            });
        }
        Ok(())
    }

    /// Every container with state on disk (running or not): what a restarted agent
    /// re-adopts.
    pub async fn list(&self) -> Result<Vec<ContainerState>> {
        let dir = &self.inner.cfg.state_dir;
        let entries =
            std::fs::read_dir(dir).map_err(|e| RuntimeError::io("list containers", dir, e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(id) = ContainerId::new(name) else {
                continue;
            };
            match self.state(&id) {
                Ok(s) => out.push(s),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The OCI spec the container was created with (process args, env, mounts...).
    pub fn spec(&self, id: &ContainerId) -> Result<Spec> {
        let cfg_path = self.dir(id).join(files::SHIM_CONFIG);
        let bytes = match std::fs::read(&cfg_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound { id: id.to_string() });
            }
            Err(e) => return Err(RuntimeError::io("read shim config", &cfg_path, e)),
        };
        let cfg: ShimConfig =
            serde_json::from_slice(&bytes).map_err(|err| RuntimeError::Protocol {
                id: id.to_string(),
                path: cfg_path.clone(),
                err,
            })?;
        Ok(cfg.spec)
    }

    /// Runs a process in the running container (its namespaces and cgroup) with the
    /// container's capabilities and seccomp profile. Pipes unless `tty`.
    pub async fn exec(&self, id: &ContainerId, opts: ExecOptions) -> Result<ExecProcess> {
        let st = self.state(id)?;
        if !matches!(st.status, Status::Running) {
            return Err(RuntimeError::WrongState {
                id: id.to_string(),
                status: st.status,
                wanted: "must be running to exec",
            });
        }
        let dir = self.dir(id);
        let spec = self.spec(id)?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(opts.args));
        if let Some(env) = opts.env {
            process.set_env(Some(env));
        }
        if let Some(cwd) = opts.cwd {
            process.set_cwd(cwd);
        }
        process.set_terminal(Some(opts.tty));
        let mut spec_user = process.user().clone();
        if let Some(u) = &opts.user {
            let (a, b) = u
                .split_once(':')
                .map_or((u.as_str(), None), |(a, b)| (a, Some(b)));
            if let (Ok(uid), Some(Ok(gid))) = (a.parse::<u32>(), b.map(str::parse::<u32>)) {
                spec_user.set_uid(uid);
                spec_user.set_gid(gid);
            }
        }
        process.set_user(spec_user);
        let seq = self.inner.exec_seq.fetch_add(1, Ordering::Relaxed);
        let req_path = dir.join(format!("exec-{}-{seq}.json", std::process::id()));
        let req = ExecRequest {
            process,
            user: opts.user.clone(),
        };
        let bytes = serde_json::to_vec(&req).map_err(|err| RuntimeError::Protocol {
            id: id.to_string(),
            path: req_path.clone(),
            err,
        })?;
        std::fs::write(&req_path, bytes)
            .map_err(|e| RuntimeError::io("write exec request", &req_path, e))?;
        let mut cmd = tokio::process::Command::new(&self.inner.cfg.shim_path);
        cmd.arg("exec").arg(&dir).arg(&req_path).kill_on_drop(true);
        let mut pty = None;
        if opts.tty {
            let p = nix::pty::openpty(None, None)
                .map_err(|e| RuntimeError::io("openpty", &req_path, e.into()))?;
            let s1 = p
                .slave
                .try_clone()
                .map_err(|e| RuntimeError::io("dup pty", &req_path, e))?;
            let s2 = p
                .slave
                .try_clone()
                .map_err(|e| RuntimeError::io("dup pty", &req_path, e))?;
            cmd.stdin(Stdio::from(p.slave))
                .stdout(Stdio::from(s1))
                .stderr(Stdio::from(s2));
            pty = Some(std::fs::File::from(p.master));
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let child = cmd
            .spawn()
            .map_err(|e| RuntimeError::io("spawn exec helper", &self.inner.cfg.shim_path, e))?;
        Ok(ExecProcess {
            child,
            pty,
            request: req_path,
        })
    }

    /// The container's log entries (json-file), optionally following new ones until
    /// the container stops. Entries arrive on the returned channel.
    pub async fn logs(
        &self,
        id: &ContainerId,
        opts: LogOptions,
    ) -> Result<tokio::sync::mpsc::Receiver<LogEntry>> {
        let st = self.state(id)?;
        let path = st.log_path.clone();
        let max_files = self.inner.cfg.log_max_files;
        let since = opts.since.map(log::rfc3339);
        let p = path.clone();
        let mut entries = blocking(move || log::read_all(&p, max_files))
            .await
            .map_err(|e| RuntimeError::io("read log", &path, e))?;
        if let Some(s) = &since {
            entries.retain(|e| e.time >= *s);
        }
        if let Some(n) = opts.tail {
            let skip = entries.len().saturating_sub(n);
            entries.drain(..skip);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let rt = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let last_time = entries.last().map(|e| e.time.clone());
            for e in entries {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            if opts.follow {
                follow(rt, id, path, last_time, tx).await;
            }
        });
        Ok(rx)
    }
}

/// Polls the live log file for entries newer than `last`, until the container stops
/// (then one last read) or the receiver goes away.
async fn follow(
    rt: Runtime,
    id: ContainerId,
    path: PathBuf,
    mut last: Option<String>,
    tx: tokio::sync::mpsc::Sender<LogEntry>,
) {
    loop {
        let stopped = !matches!(
            rt.state(&id).map(|s| s.status),
            Ok(Status::Running | Status::Paused | Status::Created)
        );
        let p = path.clone();
        let entries = blocking(move || log::read_all(&p, 0))
            .await
            .unwrap_or_default();
        for e in entries {
            if last.as_ref().is_some_and(|l| e.time <= *l) {
                continue;
            }
            last = Some(e.time.clone());
            if tx.send(e).await.is_err() {
                return;
            }
        }
        if stopped {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tx.closed() => return,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// Writes the /etc files and bind-mounts them, unless the spec already mounts that path.
fn add_etc_mounts(spec: &mut Spec, dir: &Path, etc: &crate::config::EtcFiles) -> Result<()> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (content, name, dest) in [
        (&etc.hosts, "hosts", "/etc/hosts"),
        (&etc.hostname, "hostname", "/etc/hostname"),
        (&etc.resolv_conf, "resolv.conf", "/etc/resolv.conf"),
    ] {
        let Some(content) = content else { continue };
        if mounts.iter().any(|m| m.destination() == Path::new(dest)) {
            continue;
        }
        let file = dir.join(name);
        std::fs::write(&file, content).map_err(|e| RuntimeError::io("write", &file, e))?;
        let mut m = Mount::default();
        m.set_destination(dest.into());
        m.set_typ(Some("bind".into()));
        m.set_source(Some(file));
        m.set_options(Some(vec!["rbind".into(), "rprivate".into()]));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}
