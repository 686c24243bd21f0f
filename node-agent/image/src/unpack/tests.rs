//! Unpacker tests on real directories: overlay whiteouts, links, metadata, and every
//! way a tar could try to write outside its snapshot.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::testing::{Compression, LayerBuilder, compress};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

/// `<tmp>/a/b/snap` is the layer; `<tmp>/outside` must stay empty.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("a/b/snap");
    fs::create_dir_all(&root).expect("mkdir");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).expect("mkdir");
    Fixture {
        root,
        outside,
        _tmp: tmp,
    }
}

fn no_lowers() -> Option<Vec<PathBuf>> {
    None
}

fn unpack(root: &Path, tar: &[u8]) -> Result<Unpacked, UnpackError> {
    unpack_layer(tar, root, &no_lowers)
}

fn assert_untouched(f: &Fixture) {
    let entries: Vec<_> = fs::read_dir(&f.outside).expect("read").collect();
    assert!(
        entries.is_empty(),
        "something was written outside: {entries:?}"
    );
    let parent: Vec<String> = fs::read_dir(f.root.parent().expect("parent"))
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        parent,
        ["snap"],
        "something was written next to the snapshot"
    );
}

#[test]
fn files_dirs_links_and_metadata() {
    let f = fixture();
    let tar = LayerBuilder::new()
        .dir("etc", 0o755)
        .file_owned("etc/conf", b"hello", 0o4750, 1000, 1001)
        .hardlink("etc/conf-link", "etc/conf")
        .symlink("etc/sym", "/etc/conf")
        .dir("ro", 0o555)
        .file("ro/inside", b"x", 0o600)
        .file("deep/er/file", b"auto-created parents", 0o644)
        .tar();
    let u = unpack(&f.root, &tar).expect("unpack");
    assert_eq!(u.diff_id, Digest::of(&tar));
    assert_eq!(u.size, tar.len() as u64);

    let conf = fs::metadata(f.root.join("etc/conf")).expect("conf");
    assert_eq!(fs::read(f.root.join("etc/conf")).expect("read"), b"hello");
    assert_eq!(
        conf.permissions().mode() & 0o7777,
        0o4750,
        "setuid kept after chown"
    );
    assert_eq!((conf.uid(), conf.gid()), (1000, 1001));
    assert_eq!(conf.mtime(), 1_700_000_000);
    let link = fs::metadata(f.root.join("etc/conf-link")).expect("link");
    assert_eq!(link.ino(), conf.ino(), "hard link shares the inode");
    assert_eq!(
        fs::read_link(f.root.join("etc/sym")).expect("readlink"),
        Path::new("/etc/conf")
    );
    let ro = fs::metadata(f.root.join("ro")).expect("ro");
    assert_eq!(ro.permissions().mode() & 0o7777, 0o555);
    assert_eq!(
        ro.mtime(),
        1_700_000_000,
        "dir mtime applied after its children"
    );
    assert!(f.root.join("ro/inside").exists());
    assert!(f.root.join("deep/er/file").exists());
}

#[test]
fn whiteouts_become_overlay_devices_and_opaque_xattrs() {
    let f = fixture();
    let tar = LayerBuilder::new()
        .dir("etc", 0o755)
        .whiteout("etc/gone")
        .dir("var/cache", 0o755)
        .opaque("var/cache")
        .file("var/cache/new", b"n", 0o644)
        .file(".wh..wh.plnk", b"", 0o644)
        .tar();
    unpack(&f.root, &tar).expect("unpack");
    let wh = fs::symlink_metadata(f.root.join("etc/gone")).expect("whiteout");
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!f.root.join("etc/.wh.gone").exists());
    let mut buf = [0u8; 8];
    let n = rustix::fs::lgetxattr(f.root.join("var/cache"), "trusted.overlay.opaque", &mut buf)
        .expect("opaque xattr");
    assert_eq!(&buf[..n], b"y");
    assert!(f.root.join("var/cache/new").exists());
    assert!(!f.root.join(".wh..wh.plnk").exists());
}

#[test]
fn same_diff_id_for_every_compression() {
    let tar = LayerBuilder::new().file("a", &[7u8; 100_000], 0o644).tar();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let f = fixture();
        let blob = compress(&tar, c);
        let u = unpack(&f.root, &blob).expect("unpack");
        assert_eq!(u.diff_id, Digest::of(&tar), "{c:?}");
        assert_eq!(fs::read(f.root.join("a")).expect("read").len(), 100_000);
    }
}

#[test]
fn later_entries_replace_earlier_ones() {
    let f = fixture();
    let tar = LayerBuilder::new()
        .file("x", b"file", 0o644)
        .dir("x", 0o755)
        .file("x/child", b"c", 0o644)
        .file("x", b"file again", 0o644)
        .dir("d", 0o700)
        .dir("d", 0o755)
        .tar();
    unpack(&f.root, &tar).expect("unpack");
    assert_eq!(fs::read(f.root.join("x")).expect("read"), b"file again");
    assert_eq!(
        fs::metadata(f.root.join("d"))
            .expect("d")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

#[test]
fn relative_symlinks_inside_the_layer_are_followed() {
    let f = fixture();
    let tar = LayerBuilder::new()
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .file("lib/libc.so", b"elf", 0o644)
        .tar();
    unpack(&f.root, &tar).expect("unpack");
    assert_eq!(
        fs::read(f.root.join("usr/lib/libc.so")).expect("read"),
        b"elf"
    );
}

#[test]
fn parent_dir_entries_are_refused() {
    let f = fixture();
    let tar = LayerBuilder::new()
        .file("ok", b"fine", 0o644)
        .raw(
            b"../../../outside/pwned",
            tar::EntryType::Regular,
            None,
            b"evil",
        )
        .tar();
    let err = unpack(&f.root, &tar).expect_err("must refuse ..");
    let msg = err.to_string();
    assert!(matches!(err, UnpackError::Escape { .. }), "{msg}");
    assert!(
        msg.contains("../../../outside/pwned") && msg.contains(".."),
        "{msg}"
    );
    assert_untouched(&f);
}

#[test]
fn absolute_entries_are_refused() {
    let f = fixture();
    let target = f.outside.join("abs");
    let tar = LayerBuilder::new()
        .raw(
            target.to_string_lossy().as_bytes(),
            tar::EntryType::Regular,
            None,
            b"evil",
        )
        .tar();
    let err = unpack(&f.root, &tar).expect_err("must refuse absolute");
    assert!(err.to_string().contains("absolute"), "{err}");
    assert_untouched(&f);
}

#[test]
fn writing_through_an_escaping_symlink_is_refused() {
    let f = fixture();
    // snap -> b -> a -> tmp: three levels up is the temp dir holding `outside`
    let tar = LayerBuilder::new()
        .symlink("evil", "../../../outside")
        .file("evil/pwned", b"evil", 0o644)
        .tar();
    let err = unpack(&f.root, &tar).expect_err("must refuse symlink escape");
    let msg = err.to_string();
    assert!(matches!(err, UnpackError::SymlinkEscape { .. }), "{msg}");
    assert!(
        msg.contains("evil/pwned") && msg.contains("../../../outside"),
        "{msg}"
    );
    assert_untouched(&f);

    let f = fixture();
    let tar = LayerBuilder::new()
        .symlink("abs", &f.outside.to_string_lossy())
        .file("abs/pwned", b"evil", 0o644)
        .tar();
    let err = unpack(&f.root, &tar).expect_err("must refuse absolute symlink traversal");
    assert!(matches!(err, UnpackError::SymlinkEscape { .. }), "{err}");
    assert_untouched(&f);

    // a chain: a -> b/.. ok so far, b -> ../.. escapes
    let f = fixture();
    let tar = LayerBuilder::new()
        .dir("d", 0o755)
        .symlink("d/b", "../..")
        .file("d/b/pwned", b"evil", 0o644)
        .tar();
    assert!(matches!(
        unpack(&f.root, &tar),
        Err(UnpackError::SymlinkEscape { .. })
    ));
    assert_untouched(&f);
}

#[test]
fn hard_links_out_of_the_layer_are_refused() {
    let f = fixture();
    fs::write(f.outside.join("secret"), b"s").expect("write");
    let tar = LayerBuilder::new()
        .raw(
            b"stolen",
            tar::EntryType::Link,
            Some(b"../../../outside/secret"),
            b"",
        )
        .tar();
    let err = unpack(&f.root, &tar).expect_err("must refuse");
    assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
    assert!(!f.root.join("stolen").exists());

    let tar = LayerBuilder::new()
        .symlink("up", "../../..")
        .raw(
            b"stolen",
            tar::EntryType::Link,
            Some(b"up/outside/secret"),
            b"",
        )
        .tar();
    let err = unpack(&f.root, &tar).expect_err("must refuse");
    assert!(matches!(err, UnpackError::SymlinkEscape { .. }), "{err}");
    assert!(!f.root.join("stolen").exists());
    assert_eq!(fs::read_dir(&f.outside).expect("read").count(), 1);
}

#[test]
fn whiteouts_cannot_escape() {
    let f = fixture();
    fs::write(f.outside.join("victim"), b"v").expect("write");
    let tar = LayerBuilder::new()
        .symlink("up", "../../../outside")
        .raw(b"up/.wh.victim", tar::EntryType::Regular, None, b"")
        .tar();
    assert!(matches!(
        unpack(&f.root, &tar),
        Err(UnpackError::SymlinkEscape { .. })
    ));
    assert_eq!(fs::read(f.outside.join("victim")).expect("victim"), b"v");
}

#[test]
fn hard_link_to_a_lower_layer_copies_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lower = tmp.path().join("lower");
    let upper = tmp.path().join("upper");
    fs::create_dir_all(&lower).expect("mkdir");
    fs::create_dir_all(&upper).expect("mkdir");
    unpack(
        &lower,
        &LayerBuilder::new()
            .file_owned("bin/tool", b"binary", 0o755, 5, 6)
            .tar(),
    )
    .expect("lower");
    let tar = LayerBuilder::new().hardlink("bin/alias", "bin/tool").tar();
    let lowers = || Some(vec![lower.clone()]);
    unpack_layer(&tar[..], &upper, &lowers).expect("upper");
    let md = fs::metadata(upper.join("bin/alias")).expect("alias");
    assert_eq!(fs::read(upper.join("bin/alias")).expect("read"), b"binary");
    assert_eq!(
        (md.uid(), md.gid(), md.permissions().mode() & 0o777),
        (5, 6, 0o755)
    );

    let missing = LayerBuilder::new().hardlink("x", "nowhere").tar();
    let err = unpack_layer(&missing[..], &upper, &lowers).expect_err("missing target");
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn truncated_or_garbage_streams_fail_cleanly() {
    let f = fixture();
    let tar = compress(
        &LayerBuilder::new().file("a", &[1u8; 50_000], 0o644).tar(),
        Compression::Gzip,
    );
    let err = unpack(&f.root, &tar[..tar.len() / 2]).expect_err("truncated");
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");
}

#[test]
fn pax_xattrs_are_restored_but_overlay_ones_ignored() {
    let f = fixture();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.skiff", b"yes".as_slice()),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc".as_slice()),
    ])
    .expect("pax");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "tagged", &b"x"[..]).expect("file");
    let tar = b.into_inner().expect("tar");
    unpack(&f.root, &tar).expect("unpack");
    let mut buf = [0u8; 8];
    let n =
        rustix::fs::lgetxattr(f.root.join("tagged"), "user.skiff", &mut buf).expect("user xattr");
    assert_eq!(&buf[..n], b"yes");
    assert!(
        rustix::fs::lgetxattr(f.root.join("tagged"), "trusted.overlay.redirect", &mut buf).is_err()
    );
}
