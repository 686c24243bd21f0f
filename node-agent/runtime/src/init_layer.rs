//! Init layers: the mount points every container needs (`/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`, `/proc`, `/sys`, `/dev` and the like), made once in a small
//! read-only directory that is stacked as the topmost lower layer of each overlay
//! root, instead of being created in every container's writable layer.
//!
//! Without it, mounting `/etc/hosts` made overlayfs copy `/etc` up and create three
//! files (plus any missing `/proc`, `/sys`, `/dev`) in the container's upper directory
//! at every start: about six inode creations per container on the host's disk, which
//! on a journal-less ext4 cost up to hundreds of microseconds each (see docs/agent.md).
//! Docker keeps a per-container "-init" layer for the same points; skiff's are shared
//! by every container whose points and image directories match, so a node has a few.
//!
//! Only well-known points qualify, and only when the spec mounts something there: a
//! point in the init layer shadows whatever the image has at that path, which is right
//! for a mount point and wrong for anything else. Parent directories (`etc`, `dev`)
//! take the mode and owner of the image's own directory, so the merged view shows the
//! image's `/etc` as before; when the image has no real directory there (a symlink, a
//! whiteout) the points below it are left to the mount code, which creates them in the
//! writable layer as it always did.
//!
//! Layers live in `<state dir>/.init/<key>`, where the key is a hash of the points and
//! parent attributes; each is built under a temporary name and renamed into place, so
//! concurrent creates agree on one directory and never see a half-built layer.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::runtime::Spec;

/// Files a spec may bind-mount that get a point in the init layer.
const FILE_POINTS: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// Directories a spec may mount on that get a point in the init layer.
const DIR_POINTS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
];

/// One entry of an init layer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    /// A parent directory, with the image's mode, uid and gid.
    Parent { mode: u32, uid: u32, gid: u32 },
    /// An empty directory to mount on.
    Dir,
    /// An empty file to mount on.
    File,
}

/// What an init layer holds: relative path → entry (parents sort before children).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Points(BTreeMap<PathBuf, Entry>);

impl Points {
    /// The points of `spec`'s mounts that belong in an init layer over `lowers`
    /// (image layers, lowest first).
    pub(crate) fn of(spec: &Spec, lowers: &[PathBuf]) -> Points {
        let mut points = Points::default();
        for m in spec.mounts().as_deref().unwrap_or_default() {
            let dest = m.destination();
            let Some(dest_str) = dest.to_str() else {
                continue;
            };
            let entry = if FILE_POINTS.contains(&dest_str) && is_file_bind(m) {
                Entry::File
            } else if DIR_POINTS.contains(&dest_str) && !is_file_bind(m) {
                Entry::Dir
            } else {
                continue;
            };
            let rel = dest.strip_prefix("/").unwrap_or(dest).to_path_buf();
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty())
                && !points.0.contains_key(parent)
            {
                let Some(attrs) = image_parent(lowers, parent) else {
                    continue;
                };
                points.0.insert(parent.to_path_buf(), attrs);
            }
            // A point that is also a parent (`/dev` with `/dev/pts`) stays a point: it
            // is mounted over, so its own attributes never show.
            points.0.insert(rel, entry);
        }
        points
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A stable name for these points (FNV-1a over their description).
    fn key(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (path, entry) in &self.0 {
            let text = format!("{}={entry:?};", path.display());
            for b in text.bytes() {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }
}

fn is_file_bind(m: &oci_spec::runtime::Mount) -> bool {
    let bind = m.typ().as_deref() == Some("bind")
        || m.options()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o == "bind" || o == "rbind");
    bind && m
        .source()
        .as_deref()
        .and_then(|s| std::fs::metadata(s).ok())
        .is_some_and(|meta| meta.is_file())
}

/// The parent entry for `rel` as the image has it: its own directory's attributes
/// (the topmost layer holding the path decides), root's 0755 where no layer has it,
/// None where the image has something else there (a symlink, a whiteout).
fn image_parent(lowers: &[PathBuf], rel: &Path) -> Option<Entry> {
    for lower in lowers.iter().rev() {
        match std::fs::symlink_metadata(lower.join(rel)) {
            Ok(meta) if meta.is_dir() => {
                return Some(Entry::Parent {
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                });
            }
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    Some(Entry::Parent {
        mode: 0o755,
        uid: 0,
        gid: 0,
    })
}

/// The init layers of one runtime, under `<state dir>/.init`.
#[derive(Debug)]
pub(crate) struct InitLayers {
    root: PathBuf,
    seq: AtomicU64,
}

impl InitLayers {
    pub(crate) fn new(state_dir: &Path) -> InitLayers {
        let root = state_dir.join(".init");
        // Leftovers of builds interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(".tmp") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        InitLayers {
            root,
            seq: AtomicU64::new(0),
        }
    }

    /// The directory holding `points`, built if it does not exist yet.
    pub(crate) fn get(&self, points: &Points) -> std::io::Result<PathBuf> {
        let key = points.key();
        let dir = self.root.join(&key);
        if dir.is_dir() {
            return Ok(dir);
        }
        std::fs::create_dir_all(&self.root)?;
        let tmp = self.root.join(format!(
            "{key}.tmp{}.{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let built = build(&tmp, points).and_then(|()| std::fs::rename(&tmp, &dir));
        match built {
            Ok(()) => Ok(dir),
            // Another create renamed its copy first: use that one.
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }
}

fn build(dir: &Path, points: &Points) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    // Parents sort before their children, so each entry's parent exists.
    for (rel, entry) in &points.0 {
        let path = dir.join(rel);
        match entry {
            Entry::Parent { mode, uid, gid } => {
                std::fs::DirBuilder::new().create(&path)?;
                std::os::unix::fs::chown(&path, Some(*uid), Some(*gid))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
            }
            Entry::Dir => {
                if !path.is_dir() {
                    std::fs::DirBuilder::new().mode(0o755).create(&path)?;
                }
            }
            Entry::File => {
                std::fs::File::create(&path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Mount, MountBuilder, SpecBuilder};

    fn bind(dest: &str, source: &Path) -> Mount {
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string()])
            .build()
            .expect("mount")
    }

    fn fs(dest: &str, typ: &str) -> Mount {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(typ)
            .build()
            .expect("mount")
    }

    /// An image layer at `dir` whose `etc` has `mode`.
    fn layer_with_etc(dir: &Path, mode: u32) -> PathBuf {
        std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
        std::fs::set_permissions(dir.join("etc"), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        dir.to_path_buf()
    }

    fn spec(mounts: Vec<Mount>) -> Spec {
        SpecBuilder::default().mounts(mounts).build().expect("spec")
    }

    #[test]
    fn well_known_points_get_in_and_others_stay_out() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("hosts");
        std::fs::write(&src, "127.0.0.1 localhost\n").expect("write");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let lower = layer_with_etc(&tmp.path().join("lower"), 0o750);
        let s = spec(vec![
            fs("/proc", "proc"),
            fs("/dev", "tmpfs"),
            fs("/dev/pts", "devpts"),
            bind("/etc/hosts", &src),
            bind("/srv/data", &data),
            fs("/tmp", "tmpfs"),
        ]);
        let points = Points::of(&s, std::slice::from_ref(&lower));
        let got: Vec<_> = points
            .0
            .iter()
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (PathBuf::from("dev"), Entry::Dir),
                (PathBuf::from("dev/pts"), Entry::Dir),
                (
                    PathBuf::from("etc"),
                    Entry::Parent {
                        mode: 0o750,
                        uid: 0,
                        gid: 0
                    }
                ),
                (PathBuf::from("etc/hosts"), Entry::File),
                (PathBuf::from("proc"), Entry::Dir),
            ]
        );
    }

    #[test]
    fn an_image_whose_etc_is_not_a_directory_keeps_its_points_out() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("hosts");
        std::fs::write(&src, "x").expect("write");
        let (low, high) = (tmp.path().join("low"), tmp.path().join("high"));
        std::fs::create_dir_all(low.join("etc")).expect("mkdir");
        std::fs::create_dir_all(high.join("usr/etc")).expect("mkdir");
        // The upper image layer turns /etc into a symlink: the topmost layer decides.
        std::os::unix::fs::symlink("usr/etc", high.join("etc")).expect("symlink");
        let s = spec(vec![bind("/etc/hosts", &src), fs("/proc", "proc")]);
        let points = Points::of(&s, &[low, high]);
        assert_eq!(
            points.0.keys().cloned().collect::<Vec<_>>(),
            vec![PathBuf::from("proc")]
        );
    }

    #[test]
    fn a_layer_is_built_once_with_the_image_attributes_and_shared() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("resolv");
        std::fs::write(&src, "nameserver 10.0.0.1\n").expect("write");
        let lower = layer_with_etc(&tmp.path().join("lower"), 0o711);
        let s = spec(vec![bind("/etc/resolv.conf", &src), fs("/sys", "sysfs")]);
        let points = Points::of(&s, std::slice::from_ref(&lower));
        let layers = InitLayers::new(&tmp.path().join("state"));
        let dir = layers.get(&points).expect("layer");
        let again = layers.get(&points).expect("layer");
        assert_eq!(dir, again);
        let etc = std::fs::metadata(dir.join("etc")).expect("etc");
        assert!(etc.is_dir());
        assert_eq!(etc.mode() & 0o7777, 0o711);
        let file = std::fs::symlink_metadata(dir.join("etc/resolv.conf")).expect("file");
        assert!(file.is_file());
        assert_eq!(file.len(), 0);
        assert!(dir.join("sys").is_dir());
        // Only the finished layer is left: no temporary directories.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("state/.init"))
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn different_parent_attributes_make_different_layers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("hosts");
        std::fs::write(&src, "x").expect("write");
        let a = layer_with_etc(&tmp.path().join("a"), 0o755);
        let b = layer_with_etc(&tmp.path().join("b"), 0o700);
        let s = spec(vec![bind("/etc/hosts", &src)]);
        let pa = Points::of(&s, std::slice::from_ref(&a));
        let pb = Points::of(&s, std::slice::from_ref(&b));
        assert_ne!(pa.key(), pb.key());
        assert!(Points::of(&spec(vec![fs("/tmp", "tmpfs")]), &[a]).is_empty());
    }
}
