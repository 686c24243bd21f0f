//! Receive packet steering (RPS) on skiff's VXLAN devices.
//!
//! A VXLAN device receives in the softirq of the CPU that took the underlay packet, and
//! that softirq carries every decapsulated frame on through the bridge, the container's
//! veth and the receiving container's TCP/IP stack. Behind a NIC with one receive queue
//! (most VMs) or on a lab of namespaces on one host, that is one CPU for all overlay
//! traffic into the node, often the CPU the sender itself runs on. Setting the device's
//! `rps_cpus` to every CPU the agent may run on hands each decapsulated flow (by its
//! inner flow hash) to one CPU's backlog, so the rest of the receive path runs beside
//! the sender instead of after it. Measured in the overlay bench (docs/network.md).
//!
//! `rps_cpus` lives in sysfs, and sysfs shows the network devices of the namespace that
//! mounted it, not of the reader: the agent's own `/sys` may belong to another namespace
//! (the lab's agents, the tests' nodes). So each access runs on a throwaway thread that
//! unshares its mount namespace (private, so nothing propagates to the host), joins the
//! node's network namespace and mounts a fresh sysfs over `/sys` there; the mount goes
//! away with the thread.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::netns::{self, NetnsError};

/// Steering could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op} for the receive queues of {device}: {err}")]
    Sys {
        op: &'static str,
        device: String,
        err: nix::Error,
    },
    #[error("{op} {path}: {err}")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

/// The CPU mask sysfs takes for `cpus`: comma-separated 32-bit hex words, the highest
/// first ("3" for CPUs 0 and 1; "1,00000000" for CPU 32 alone).
pub fn mask(cpus: impl IntoIterator<Item = usize>) -> String {
    let mut words: Vec<u32> = Vec::new();
    for cpu in cpus {
        let word = cpu / 32;
        if words.len() <= word {
            words.resize(word + 1, 0);
        }
        words[word] |= 1 << (cpu % 32);
    }
    if words.is_empty() {
        return "0".into();
    }
    let mut out = String::new();
    for (i, w) in words.iter().rev().enumerate() {
        if i == 0 {
            out.push_str(&format!("{w:x}"));
        } else {
            out.push_str(&format!(",{w:08x}"));
        }
    }
    out
}

/// The CPUs this process may run on (its affinity), lowest first.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

/// Spreads `device`'s receive processing over every CPU this process may use; returns
/// the mask written, or `None` when there is one CPU only (nothing to spread). Blocking.
pub fn spread(ns: Option<&Path>, device: &str) -> Result<Option<String>, SteeringError> {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        return Ok(None);
    }
    let value = mask(cpus);
    let written = value.clone();
    with_node_sysfs(ns, device, move |queues| {
        for queue in rx_queues(queues)? {
            let path = queue.join("rps_cpus");
            std::fs::write(&path, &value).map_err(|err| SteeringError::Io {
                op: "writing",
                path,
                err,
            })?;
        }
        Ok(())
    })?;
    Ok(Some(written))
}

/// The `rps_cpus` of each of `device`'s receive queues, as sysfs prints them. Blocking.
pub fn current(ns: Option<&Path>, device: &str) -> Result<Vec<String>, SteeringError> {
    with_node_sysfs(ns, device, |queues| {
        rx_queues(queues)?
            .into_iter()
            .map(|q| {
                let path = q.join("rps_cpus");
                std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_owned())
                    .map_err(|err| SteeringError::Io {
                        op: "reading",
                        path,
                        err,
                    })
            })
            .collect()
    })
}

fn rx_queues(queues: &Path) -> Result<Vec<PathBuf>, SteeringError> {
    let io = |err| SteeringError::Io {
        op: "listing",
        path: queues.to_owned(),
        err,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(queues).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with("rx-") {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Runs `f` with the path of `device`'s `queues` directory in a sysfs of `ns`, on a
/// throwaway thread ([`netns::run_in`]) that also leaves the agent's mounts (see the
/// module doc).
fn with_node_sysfs<T, F>(ns: Option<&Path>, device: &str, f: F) -> Result<T, SteeringError>
where
    T: Send + 'static,
    F: FnOnce(&Path) -> Result<T, SteeringError> + Send + 'static,
{
    let device = device.to_owned();
    netns::run_in(ns, move || -> Result<T, SteeringError> {
        let sys = |op, err| SteeringError::Sys {
            op,
            device: device.clone(),
            err,
        };
        // CLONE_NEWNS implies CLONE_FS: only this thread leaves the agent's mounts.
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| sys("unshare(CLONE_NEWNS)", e))?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| sys("making the thread's mounts private", e))?;
        // sysfs takes the network namespace of the task that mounts it (run_in has
        // joined `ns` already).
        nix::mount::mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| sys("mounting sysfs", e))?;
        f(&Path::new("/sys/class/net").join(&device).join("queues"))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_hex_words_highest_first() {
        assert_eq!(mask([0, 1]), "3");
        assert_eq!(mask([0]), "1");
        assert_eq!(mask([1, 3]), "a");
        assert_eq!(mask(0..32), "ffffffff");
        assert_eq!(mask([32]), "1,00000000");
        assert_eq!(mask([0, 33, 70]), "40,00000002,00000001");
        assert_eq!(mask([]), "0");
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}
