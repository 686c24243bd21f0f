//! Where on disk the filesystem puts containers' files: skiff marks the directories
//! that hold one subdirectory per container (the runtime's state directory, the
//! agent's writable layers) as tops of directory hierarchies (`chattr +T`,
//! `FS_TOPDIR_FL`), so ext4's Orlov allocator spreads their subdirectories over block
//! groups as it does home directories, instead of packing every container's files
//! into the group of the parent.
//!
//! Why it matters: on ext4 without a journal, allocating an inode skips every inode of
//! the group freed in the last ~30 s (`recently_deleted`), looking each up in the
//! buffer cache. Containers are made and removed in bursts (a deploy, an update, a
//! test run), and overlayfs itself creates and deletes four inodes in the work
//! directory at every mount, so with all containers in one group each new file paid
//! for every file the burst (or the previous one) had just deleted: measured here, a
//! 100-replica deploy spent a quarter of its CPU in that scan, and a deploy right after
//! another took up to twice as long. Spread, each container's files meet only the
//! holes of the few containers sharing their group. Other filesystems ignore or refuse
//! the flag, which is then left alone.

use std::os::fd::AsFd;
use std::path::Path;

use crate::sys;

/// `FS_TOPDIR_FL` of `linux/fs.h`.
const FS_TOPDIR_FL: i32 = 0x0002_0000;

/// Marks `dir` (which must exist) so the filesystem spreads its subdirectories. Returns
/// whether the mark is set; a filesystem without such flags gives `Ok(false)`.
pub fn spread_subdirectories(dir: &Path) -> std::io::Result<bool> {
    let file = std::fs::File::open(dir)?;
    let flags = match sys::inode_flags(file.as_fd()) {
        Ok(flags) => flags,
        Err(e) if unsupported(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(true);
    }
    match sys::set_inode_flags(file.as_fd(), flags | FS_TOPDIR_FL) {
        Ok(()) => Ok(true),
        Err(e) if unsupported(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Filesystems without inode flags (tmpfs, overlayfs...) or without this one.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTTY | libc::ENOTSUP | libc::EINVAL | libc::ENOSYS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `dir` carries the mark, read back from the kernel.
    fn spreads_subdirectories(dir: &Path) -> bool {
        std::fs::File::open(dir)
            .and_then(|f| sys::inode_flags(f.as_fd()))
            .is_ok_and(|flags| flags & FS_TOPDIR_FL != 0)
    }

    /// Runs where the test's directory can be: on this project's machines /var/tmp is
    /// ext4, which has the flag; elsewhere the call must still succeed.
    #[test]
    fn marks_a_directory_or_reports_that_the_filesystem_has_no_such_flag() {
        let tmp = tempfile::Builder::new()
            .prefix("skiff-placement-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let dir = tmp.path().join("rw");
        std::fs::create_dir(&dir).expect("mkdir");
        let set = spread_subdirectories(&dir).expect("spread");
        assert_eq!(set, spreads_subdirectories(&dir));
        // Idempotent.
        assert_eq!(spread_subdirectories(&dir).expect("again"), set);
        let on_ext4 = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&dir)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "ext2/ext3")
            .unwrap_or(false);
        if on_ext4 {
            assert!(set, "ext4 has FS_TOPDIR_FL");
        }
        assert!(spread_subdirectories(&tmp.path().join("missing")).is_err());
    }
}
