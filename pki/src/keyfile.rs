//! Private key files: written atomically with mode 0600, and read only when the file is
//! owned by the current user (root for the daemons) and nobody else may read or write it.
//! Public files (certificates) are written atomically with mode 0644.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a key or certificate file could not be written or was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error(
        "refusing key file {path}: mode {mode:04o} lets group or others access it (run chmod 600 {path})"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("refusing key file {path}: owned by uid {owner}, this process runs as uid {euid}")]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("refusing key file {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is not UTF-8 PEM text")]
    NotText { path: PathBuf },
}

/// Writes `data` to `path` with mode 0600 (temp file, fsync, rename, fsync of the dir).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), KeyFileError> {
    write_atomic(path, data, 0o600)
}

/// Writes `data` to `path` with mode 0644, atomically.
pub fn write_public(path: &Path, data: &[u8]) -> Result<(), KeyFileError> {
    write_atomic(path, data, 0o644)
}

/// Reads a private key file after checking its owner and mode; the checks run on the
/// opened file (no race with a swap of the path), and symlinks are not followed.
pub fn read_private(path: &Path) -> Result<String, KeyFileError> {
    let read_err = |err| KeyFileError::Read {
        path: path.to_owned(),
        err,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(KeyFileError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(read_err)?;
    String::from_utf8(text).map_err(|_| KeyFileError::NotText {
        path: path.to_owned(),
    })
}

/// Reads a public file (a certificate) as text.
pub fn read_public(path: &Path) -> Result<String, KeyFileError> {
    let bytes = std::fs::read(path).map_err(|err| KeyFileError::Read {
        path: path.to_owned(),
        err,
    })?;
    String::from_utf8(bytes).map_err(|_| KeyFileError::NotText {
        path: path.to_owned(),
    })
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let write_err = |err| KeyFileError::Write {
        path: path.to_owned(),
        err,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have removed bits from `mode`; a key must end up exactly 0600.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").mode() & 0o7777
    }

    #[test]
    fn private_files_are_written_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        write_private(&path, b"secret").expect("write");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(read_private(&path).expect("read"), "secret");
        // Overwriting keeps the mode and leaves no temp file behind.
        write_private(&path, b"secret2").expect("rewrite");
        assert_eq!(read_private(&path).expect("read"), "secret2");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        write_private(&path, b"secret").expect("write");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = read_private(&path).expect_err("too open");
            assert!(
                matches!(err, KeyFileError::TooOpen { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        read_private(&path).expect("0400 is fine");
    }

    #[test]
    fn a_key_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        write_private(&path, b"secret").expect("write");
        let other = nix::unistd::geteuid().as_raw().wrapping_add(4242);
        match std::os::unix::fs::chown(&path, Some(other), None) {
            Ok(()) => {
                let err = read_private(&path).expect_err("foreign owner");
                assert!(
                    matches!(err, KeyFileError::WrongOwner { owner, .. } if owner == other),
                    "{err}"
                );
            }
            // Not root: chown to another uid is impossible, which is the property itself.
            Err(err) => assert_eq!(err.raw_os_error(), Some(libc_eperm())),
        }
    }

    #[test]
    fn a_symlinked_key_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.pem");
        write_private(&real, b"secret").expect("write");
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(matches!(
            read_private(&link),
            Err(KeyFileError::Read { .. })
        ));
    }

    fn libc_eperm() -> i32 {
        nix::errno::Errno::EPERM as i32
    }
}
