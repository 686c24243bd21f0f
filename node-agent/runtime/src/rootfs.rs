//! The container's root filesystem, set up inside its new mount namespace: the root
//! (a bind of a directory or an overlay of layers), the spec's mounts in order, /dev
//! nodes, pivot_root, then Docker's masked and read-only paths and the optional
//! read-only root.
//!
//! Every destination is resolved beneath the root with `openat2(RESOLVE_IN_ROOT)` and
//! mounted through its `/proc/self/fd/N` link, so a symlink in an image cannot send a
//! mount to the host. `/proc` goes only on a real directory, and `/dev/null` is checked
//! to be the 1:3 character device before it masks anything (CVE-2025-31133).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, fstat, makedev, mknodat};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::child::SetupError;
use crate::config::Rootfs;
use crate::sys;

const NONE: Option<&str> = None;

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn rel(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

/// Opens `path` beneath `root` (an O_PATH handle), symlinks resolved inside the root.
fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let r = rel(path);
    let r = if r.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        r
    };
    sys::openat2(
        root,
        &r,
        flags | libc::O_PATH,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
    )
}

/// `mkdir -p` beneath the root; returns an O_PATH handle on the directory.
fn mkdir_in_root(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, SetupError> {
    let mut cur = PathBuf::new();
    let mut fd = open_in_root(root, &cur, libc::O_DIRECTORY)
        .map_err(|e| SetupError::io("open root", path, e))?;
    for comp in rel(path).components() {
        cur.push(comp);
        fd = match open_in_root(root, &cur, libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                nix::sys::stat::mkdirat(
                    fd.as_fd(),
                    comp.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                )
                .map_err(|e| SetupError::io("mkdir", &cur, e.into()))?;
                open_in_root(root, &cur, libc::O_DIRECTORY)
                    .map_err(|e| SetupError::io("open", &cur, e))?
            }
            Err(e) => return Err(SetupError::io("open", &cur, e)),
        };
    }
    Ok(fd)
}

/// Creates an empty file beneath the root (for a file bind mount) and opens it.
fn mkfile_in_root(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, SetupError> {
    match open_in_root(root, path, 0) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(SetupError::io("open", path, e)),
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| {
        SetupError::new(
            "mount destination",
            format!("{} has no file name", path.display()),
        )
    })?;
    let pfd = mkdir_in_root(root, parent)?;
    // mknodat with S_IFREG creates a regular file without following anything.
    mknodat(
        pfd.as_fd(),
        name,
        SFlag::S_IFREG,
        Mode::from_bits_truncate(0o644),
        0,
    )
    .map_err(|e| SetupError::io("create file", path, e.into()))?;
    open_in_root(root, path, 0).map_err(|e| SetupError::io("open", path, e))
}

/// Parsed fstab-style options.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MountOptions {
    pub flags: MsFlags,
    pub clear: MsFlags,
    pub propagation: MsFlags,
    pub bind: bool,
    pub data: Vec<String>,
}

pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        bind: false,
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" => {
                o.propagation |= MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                o.propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                o.propagation |= MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                o.propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "shared" | "rshared" | "unbindable" | "runbindable" | "defaults" => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
        o.clear |= clear;
    }
    o
}

fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &Path,
) -> Result<(), SetupError> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        SetupError::new(
            "mount",
            format!(
                "{} on {} (type {}, flags {flags:?}): {e}",
                source.map_or("none".into(), |s| s.display().to_string()),
                what.display(),
                fstype.unwrap_or("none")
            ),
        )
    })
}

fn mount_one(root: BorrowedFd<'_>, m: &Mount) -> Result<(), SetupError> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(SetupError::new(
            "mount",
            format!("destination {} is not absolute", dest.display()),
        ));
    }
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "none" });
    let bind = opts.bind || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        // Not mounted: see Limitations in lib.rs.
        return Ok(());
    }
    let source = m.source().as_deref();
    let target_fd = if bind {
        let src = source.ok_or_else(|| {
            SetupError::new(
                "mount",
                format!("bind to {} without source", dest.display()),
            )
        })?;
        let meta =
            std::fs::metadata(src).map_err(|e| SetupError::io("stat bind source", src, e))?;
        if meta.is_dir() {
            mkdir_in_root(root, dest)?
        } else {
            mkfile_in_root(root, dest)?
        }
    } else {
        mkdir_in_root(root, dest)?
    };
    if typ == "proc" {
        // CVE-2019-19921 class: /proc must be a real directory, not a symlink.
        sys::openat2(
            root,
            &rel(dest),
            libc::O_PATH | libc::O_DIRECTORY,
            sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS,
        )
        .map_err(|e| SetupError::io("proc destination is not a real directory", dest, e))?;
    }
    let target = fd_path(&target_fd);
    if bind {
        let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        do_mount(source, &target, NONE, flags, NONE, dest)?;
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            // The old fd points below the new mount: reopen to reach the bind itself.
            let top = open_in_root(root, dest, 0).map_err(|e| SetupError::io("reopen", dest, e))?;
            do_mount(
                None,
                &fd_path(&top),
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                NONE,
                dest,
            )?;
        }
    } else {
        let data = opts.data.join(",");
        do_mount(
            source.or(Some(Path::new(typ))),
            &target,
            Some(typ),
            opts.flags,
            (!data.is_empty()).then_some(data.as_str()),
            dest,
        )?;
    }
    if !opts.propagation.is_empty() {
        let top = open_in_root(root, dest, 0).map_err(|e| SetupError::io("reopen", dest, e))?;
        do_mount(
            NONE.map(Path::new),
            &fd_path(&top),
            NONE,
            opts.propagation,
            NONE,
            dest,
        )?;
    }
    Ok(())
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn create_devices(root: BorrowedFd<'_>, extra: &[LinuxDevice]) -> Result<(), SetupError> {
    let dev = mkdir_in_root(root, Path::new("/dev"))?;
    // Without a umask of 0 the nodes would not get their 0666.
    let old = nix::sys::stat::umask(Mode::empty());
    let mut result = Ok(());
    for (name, major, minor) in DEFAULT_DEVICES {
        if let Err(e) = mknodat(
            dev.as_fd(),
            *name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        ) {
            result = Err(SetupError::io(
                "mknod",
                &Path::new("/dev").join(name),
                e.into(),
            ));
            break;
        }
    }
    if result.is_ok() {
        for d in extra {
            let kind = match d.typ() {
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                _ => SFlag::S_IFCHR,
            };
            let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
            let path = d.path();
            let parent = path.parent().unwrap_or(Path::new("/dev"));
            let Some(name) = path.file_name() else {
                continue;
            };
            let pfd = mkdir_in_root(root, parent)?;
            if let Err(e) = mknodat(
                pfd.as_fd(),
                name,
                kind,
                mode,
                makedev(d.major() as u64, d.minor() as u64),
            ) {
                result = Err(SetupError::io("mknod", path, e.into()));
                break;
            }
        }
    }
    nix::sys::stat::umask(old);
    result?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        match nix::unistd::symlinkat(target, dev.as_fd(), link) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                return Err(SetupError::io(
                    "symlink",
                    &Path::new("/dev").join(link),
                    e.into(),
                ));
            }
        }
    }
    Ok(())
}

/// Mounts the root at `mount_point` (bind of a dir, or overlay). Lowers are given
/// lowest first; overlayfs wants the topmost first.
fn mount_root(rootfs: &Rootfs, mount_point: &Path) -> Result<(), SetupError> {
    match rootfs {
        Rootfs::Dir(dir) => do_mount(
            Some(dir),
            mount_point,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
            mount_point,
        ),
        Rootfs::Overlay {
            lowers,
            upper,
            work,
        } => {
            if lowers.is_empty() {
                return Err(SetupError::new("overlay", "no lower directories".into()));
            }
            let lower: Vec<String> = lowers
                .iter()
                .rev()
                .map(|p| p.display().to_string())
                .collect();
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            );
            // mount(2) copies at most one page of options.
            if data.len() >= 4096 {
                return Err(SetupError::new(
                    "overlay",
                    format!(
                        "mount options are {} bytes, over the 4095 limit: shorten layer paths",
                        data.len()
                    ),
                ));
            }
            do_mount(
                Some(Path::new("overlay")),
                mount_point,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
                mount_point,
            )
        }
    }
}

/// `pivot_root(".", ".")` then detach the old root (runc's way: no put_old directory).
fn pivot(new_root: &Path) -> Result<(), SetupError> {
    nix::unistd::chdir(new_root).map_err(|e| SetupError::io("chdir", new_root, e.into()))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| SetupError::io("pivot_root", new_root, e.into()))?;
    // The old root is stacked on top now; make it private so its unmount does not
    // propagate, then detach it.
    mount(NONE, ".", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
        .map_err(|e| SetupError::io("make old root private", Path::new("/"), e.into()))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| SetupError::io("unmount old root", Path::new("/"), e.into()))?;
    nix::unistd::chdir("/").map_err(|e| SetupError::io("chdir", Path::new("/"), e.into()))?;
    Ok(())
}

/// Opens `/dev/null` and checks it is the real 1:3 character device.
fn verified_dev_null() -> Result<OwnedFd, SetupError> {
    let p = Path::new("/dev/null");
    let fd = open(
        p,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::io("open", p, e.into()))?;
    let st = fstat(&fd).map_err(|e| SetupError::io("fstat", p, e.into()))?;
    let is_chr = (st.st_mode & libc::S_IFMT) == libc::S_IFCHR;
    if !is_chr || st.st_rdev != makedev(1, 3) {
        return Err(SetupError::new(
            "verify /dev/null",
            format!(
                "not the 1:3 character device (mode {:o}, rdev {:#x}); refusing to mask with it",
                st.st_mode, st.st_rdev
            ),
        ));
    }
    Ok(fd)
}

fn mask_paths(paths: &[String]) -> Result<(), SetupError> {
    if paths.is_empty() {
        return Ok(());
    }
    let root = open(
        Path::new("/"),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::io("open", Path::new("/"), e.into()))?;
    let null = verified_dev_null()?;
    for p in paths {
        let path = Path::new(p);
        let fd = match open_in_root(root.as_fd(), path, libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(SetupError::io("open masked path", path, e)),
        };
        let st = fstat(&fd).map_err(|e| SetupError::io("fstat", path, e.into()))?;
        if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR {
            do_mount(
                Some(Path::new("tmpfs")),
                &fd_path(&fd),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                NONE,
                path,
            )?;
        } else {
            do_mount(
                Some(&fd_path(&null)),
                &fd_path(&fd),
                NONE,
                MsFlags::MS_BIND,
                NONE,
                path,
            )?;
        }
    }
    Ok(())
}

fn readonly_paths(paths: &[String]) -> Result<(), SetupError> {
    if paths.is_empty() {
        return Ok(());
    }
    let root = open(
        Path::new("/"),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::io("open", Path::new("/"), e.into()))?;
    for p in paths {
        let path = Path::new(p);
        let fd = match open_in_root(root.as_fd(), path, libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(SetupError::io("open read-only path", path, e)),
        };
        let fdp = fd_path(&fd);
        do_mount(
            Some(&fdp),
            &fdp,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
            path,
        )?;
        let top = open_in_root(root.as_fd(), path, libc::O_NOFOLLOW)
            .map_err(|e| SetupError::io("reopen", path, e))?;
        do_mount(
            NONE.map(Path::new),
            &fd_path(&top),
            NONE,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_REC
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            NONE,
            path,
        )?;
    }
    Ok(())
}

/// The whole mount-namespace setup. Runs in the container's first process, before
/// any code of the image runs.
pub(crate) fn prepare(spec: &Spec, rootfs: &Rootfs, mount_point: &Path) -> Result<(), SetupError> {
    // Nothing done below may propagate back to the host.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(|e| SetupError::io("make / private", Path::new("/"), e.into()))?;
    mount_root(rootfs, mount_point)?;
    let root = open(
        mount_point,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::io("open root", mount_point, e.into()))?;
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    let mut dev_tmpfs = false;
    for m in mounts {
        mount_one(root.as_fd(), m)?;
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_tmpfs = true;
        }
    }
    let linux = spec.linux().as_ref();
    if dev_tmpfs {
        let extra = linux.and_then(|l| l.devices().clone()).unwrap_or_default();
        create_devices(root.as_fd(), &extra)?;
    }
    drop(root);
    pivot(mount_point)?;
    if let Some(linux) = linux {
        mask_paths(linux.masked_paths().as_deref().unwrap_or_default())?;
        readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default())?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        do_mount(
            NONE.map(Path::new),
            Path::new("/"),
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            NONE,
            Path::new("/"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "rbind".into(),
            "rprivate".into(),
            "mode=755".into(),
            "size=64k".into(),
        ]);
        assert!(o.bind);
        assert!(o.flags.contains(
            MsFlags::MS_NOSUID | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC
        ));
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755".to_string(), "size=64k".to_string()]);
        let o = parse_options(&["ro".into(), "rw".into()]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn rel_strips_root_and_current_dir() {
        assert_eq!(rel(Path::new("/etc/../x/./y")), PathBuf::from("etc/../x/y"));
    }
}
