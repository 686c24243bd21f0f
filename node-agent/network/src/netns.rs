//! Network namespaces skiff makes and works inside: a namespace is created by
//! `unshare(CLONE_NEWNET)` on a dedicated OS thread and kept alive by a bind mount of
//! that thread's `/proc/thread-self/ns/net`, so nothing forks and no tokio worker ever
//! changes namespace. Work inside a namespace (netlink sockets, `nft`, listening
//! sockets, sysctls) also runs on a fresh thread that `setns`es first and then dies.

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

/// Like [`run_in`], awaited without blocking the runtime.
pub async fn run_in_async<T, F>(ns: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns_owned = ns.map(Path::to_owned);
    let label = ns_label(ns);
    tokio::task::spawn_blocking(move || run_in(ns_owned.as_deref(), f))
        .await
        .map_err(|_| NetnsError::ThreadPanicked { ns: label })?
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
