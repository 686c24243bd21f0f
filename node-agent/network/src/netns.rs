//! Network namespaces skiff makes and works inside: a namespace is created by
//! `unshare(CLONE_NEWNET)` on a dedicated OS thread and kept alive by a bind mount of
//! that thread's `/proc/thread-self/ns/net`, so nothing forks and no tokio worker ever
//! changes namespace.
//!
//! Work inside a namespace (netlink sockets, `nft`, listening sockets, sysctls) runs
//! through [`run_in_async`] on a namespace worker: one of at most eight threads, made
//! on demand and kept, which `setns`es into the namespace, runs the job and `setns`es
//! back to its own namespace before it takes the next; a worker that cannot get back is
//! retired (parked for good, never given work again) and another made in its place.
//! Until 2026-12-07 every job ran on a fresh thread of its own, started from one of
//! tokio's blocking threads: a deploy of 100 tasks made a few hundred threads, two per
//! job, and the blocking pool grew to about a hundred. Measured on a 100-replica deploy
//! (the agent's CPU from /proc, builds alternated): running the jobs on tokio's
//! blocking threads themselves cut the agent's CPU by ~15 % but raised its memory with
//! 100 tasks from ~27 to 32–39 MiB (a hundred threads each keeping the deep stack
//! libnftables' parser touched, and a malloc cache); these workers keep the memory where
//! it was (26.9–28.0 MiB) and cut the CPU a little (36–40 ticks against 40–41), the
//! deploy's wall time the same within its noise. [`run_in`] still makes a fresh thread,
//! for work that changes more than the network namespace (its own mount namespace, as
//! steering does).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::Handle;

/// Where a task's network namespace is bind-mounted; the container runtime joins it by
/// this path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsPath(pub PathBuf);

impl NetnsPath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl std::fmt::Display for NetnsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

/// A failure to make, enter or remove a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{op} for network namespace {path}: {err}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        err: nix::Error,
    },
    #[error("{op} {path}: {err}")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("opening a netlink socket in {ns}: {err}")]
    Netlink { ns: String, err: std::io::Error },
    #[error("the worker thread for namespace {ns} panicked")]
    ThreadPanicked { ns: String },
}

fn ns_label(ns: Option<&Path>) -> String {
    ns.map_or_else(
        || "the agent's namespace".to_owned(),
        |p| p.display().to_string(),
    )
}

/// Creates a new network namespace bind-mounted at `path` (the parent directory is
/// created). Blocking: call from `spawn_blocking` or a plain thread.
pub fn create(path: &Path) -> Result<NetnsPath, NetnsError> {
    create_with(path, &[])
}

/// The file of a sysctl given by its dotted key (`net.ipv4.ip_forward`). Read or
/// written, it shows the network namespace of the thread that opens it.
pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// [`create`], then writes `sysctls` (dotted key, value) inside the new
/// namespace before anything else happens in it. A setting the kernel does not have
/// (IPv6 compiled out) is skipped.
pub fn create_with(
    path: &Path,
    sysctls: &'static [(&'static str, &'static str)],
) -> Result<NetnsPath, NetnsError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|err| NetnsError::Io {
            op: "creating directory",
            path: parent.to_owned(),
            err,
        })?;
    }
    let target = path.to_owned();
    let label = target.display().to_string();
    std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || create_on_this_thread(&target, sysctls))
        .map_err(|err| NetnsError::Io {
            op: "spawning a thread to create",
            path: path.to_owned(),
            err,
        })?
        .join()
        .map_err(|_| NetnsError::ThreadPanicked { ns: label })??;
    Ok(NetnsPath(path.to_owned()))
}

/// Runs on a thread that is thrown away afterwards: the unshare only changes this thread.
fn create_on_this_thread(
    path: &Path,
    sysctls: &[(&'static str, &'static str)],
) -> Result<(), NetnsError> {
    let sys = |op, err| NetnsError::Sys {
        op,
        path: path.to_owned(),
        err,
    };
    File::create(path).map_err(|err| NetnsError::Io {
        op: "creating mount point",
        path: path.to_owned(),
        err,
    })?;
    let made = (|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| sys("unshare(CLONE_NEWNET)", e))?;
        for (key, value) in sysctls {
            let file = sysctl_path(key);
            match fs::write(&file, value) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(NetnsError::Io {
                        op: "writing sysctl",
                        path: file,
                        err,
                    });
                }
                _ => {}
            }
        }
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| sys("bind mount", e))
    })();
    if made.is_err() {
        let _ = fs::remove_file(path);
    }
    made
}

/// Unmounts and removes a namespace made by [`create`]. Missing is fine (idempotent).
/// The kernel frees the namespace, and the veth ends inside it, once no process and no
/// mount holds it any more.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(err) => {
            return Err(NetnsError::Sys {
                op: "umount",
                path: path.to_owned(),
                err,
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(NetnsError::Io {
            op: "removing",
            path: path.to_owned(),
            err,
        }),
    }
}

/// Whether `path` is a namespace bind mount (its inode is in the nsfs file system).
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

fn enter(ns: &Path) -> Result<(), NetnsError> {
    let file = File::open(ns).map_err(|err| NetnsError::Io {
        op: "opening",
        path: ns.to_owned(),
        err,
    })?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|err| NetnsError::Sys {
        op: "setns(CLONE_NEWNET)",
        path: ns.to_owned(),
        err,
    })
}

/// Runs `f` on a fresh OS thread inside `ns` (`None`: the agent's own namespace) and
/// returns its result. Blocking.
pub fn run_in<T, F>(ns: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns_owned = ns.map(Path::to_owned);
    let label = ns_label(ns);
    std::thread::Builder::new()
        .name("skiff-in-netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            if let Some(ns) = &ns_owned {
                enter(ns)?;
            }
            Ok(f())
        })
        .map_err(|err| NetnsError::Io {
            op: "spawning a thread for",
            path: PathBuf::from(&label),
            err,
        })?
        .join()
        .map_err(|_| NetnsError::ThreadPanicked { ns: label })?
}

/// Runs `f` inside `ns` (`None`: the agent's own namespace) on one of the namespace
/// workers (see the module doc) and awaits its result without blocking the runtime.
/// `f` may change nothing about its thread but the network namespace: use [`run_in`]
/// for anything more.
pub async fn run_in_async<T, F>(ns: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns_owned = ns.map(Path::to_owned);
    let label = ns_label(ns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    workers().submit(Box::new(move || {
        let (result, home) = match &ns_owned {
            None => (
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map(Ok),
                Ok(()),
            ),
            Some(ns) => visit(ns, f),
        };
        // A panic is passed on whole: the caller unwinds, the worker goes on.
        let _ = tx.send(result);
        if let (Err(err), Some(ns)) = (&home, &ns_owned) {
            tracing::error!(
                ns = %ns.display(),
                %err,
                "a namespace worker could not return from a task's network namespace; \
                 it is retired"
            );
        }
        home.is_ok()
    }));
    match rx.await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(err))) => Err(err),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(NetnsError::ThreadPanicked { ns: label }),
    }
}

type Outcome<T> = std::thread::Result<Result<T, NetnsError>>;

/// Work for a namespace worker; returns whether the worker is back in its own
/// namespace (and may take more work).
type Job = Box<dyn FnOnce() -> bool + Send>;

/// At most this many namespace workers: task tables load four at a time
/// (`node::RULE_WORKERS`), the rest is short (netlink sockets, sysctls, binds) or a
/// firewall command waited for; more threads than this only queue for two cores.
pub const MAX_WORKERS: usize = 8;

/// The namespace workers: threads made on demand up to [`MAX_WORKERS`] that live as
/// long as the process and take jobs in order.
struct Workers {
    state: std::sync::Mutex<WorkerState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct WorkerState {
    queue: std::collections::VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers alive and able to work (retired ones not counted).
    live: usize,
}

fn workers() -> &'static Workers {
    static WORKERS: std::sync::OnceLock<Workers> = std::sync::OnceLock::new();
    WORKERS.get_or_init(|| Workers {
        state: std::sync::Mutex::new(WorkerState::default()),
        wake: std::sync::Condvar::new(),
    })
}

impl Workers {
    fn submit(&'static self, job: Job) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.queue.push_back(job);
        if st.queue.len() > st.idle && st.live < MAX_WORKERS {
            let spawned = std::thread::Builder::new()
                .name("skiff-in-netns".into())
                .spawn(move || self.work());
            match spawned {
                Ok(_) => st.live += 1,
                // Without a new worker the job waits for a busy one (or, with none
                // alive, until a later submit can make one).
                Err(err) => tracing::warn!(%err, "could not start a namespace worker"),
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    fn work(&'static self) {
        loop {
            let job = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = st.queue.pop_front() {
                        break job;
                    }
                    st.idle += 1;
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.idle -= 1;
                }
            };
            if !job() {
                // Stuck in a task's namespace: never take work again. A later submit
                // makes a new worker in its place.
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.live -= 1;
                drop(st);
                loop {
                    std::thread::park();
                }
            }
        }
    }
}

thread_local! {
    /// The network namespace this thread started in, opened the first time it visits
    /// another (it is still at home then: a thread that could not return never runs
    /// anything again).
    static HOME: std::cell::OnceCell<std::io::Result<File>> = const { std::cell::OnceCell::new() };
}

/// Runs `f` on this thread inside `ns`, then brings the thread back to the namespace
/// it came from, also when `f` panics. Returns `f`'s outcome (a panic caught) and
/// whether the thread got home. Blocking.
fn visit<T, F: FnOnce() -> T>(ns: &Path, f: F) -> (Outcome<T>, nix::Result<()>) {
    HOME.with(|home| {
        let home = match home.get_or_init(|| File::open("/proc/thread-self/ns/net")) {
            Ok(file) => file,
            Err(err) => {
                let err = NetnsError::Io {
                    op: "opening the thread's own namespace before entering",
                    path: ns.to_owned(),
                    err: std::io::Error::new(err.kind(), err.to_string()),
                };
                return (Ok(Err(err)), Ok(()));
            }
        };
        if let Err(err) = enter(ns) {
            return (Ok(Err(err)), Ok(()));
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let back = nix::sched::setns(home, CloneFlags::CLONE_NEWNET);
        (outcome.map(Ok), back)
    })
}

/// Opens an rtnetlink connection whose socket lives in `ns` (a netlink socket acts in
/// the namespace it was opened in, whatever thread uses it later) and drives it on the
/// current tokio runtime. The connection ends when the last handle is dropped.
pub async fn netlink(ns: Option<&Path>) -> Result<Handle, NetnsError> {
    let rt = tokio::runtime::Handle::current();
    let label = ns_label(ns);
    let (conn, handle) = run_in_async(ns, move || {
        let _guard = rt.enter();
        rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
    })
    .await?
    .map_err(|err| NetnsError::Netlink { ns: label, err })?;
    tokio::spawn(conn);
    Ok(handle)
}
