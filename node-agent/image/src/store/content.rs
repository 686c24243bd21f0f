//! The content store: blobs by sha256 under `blobs/sha256/<hex>`, written through
//! `ingest/` and renamed into place only after their digest and size check out, so a
//! blob in `blobs/` is always verified. Partial downloads die with their `Ingest`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob digest mismatch: expected {expected}, got {actual} ({size} bytes)")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is not in the content store")]
    Missing { digest: Digest },
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContentError {
    let path = path.to_owned();
    move |source| ContentError::Io { op, path, source }
}

/// Blobs on disk plus the in-process locks that make concurrent fetches of one digest
/// happen once.
pub(crate) struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    locks: Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>,
}

impl ContentStore {
    /// Opens (creating) the store under `root` and deletes leftovers of interrupted
    /// downloads.
    pub(crate) fn open(root: &Path) -> Result<Self, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        if ingest.exists() {
            fs::remove_dir_all(&ingest).map_err(io_err("clean", &ingest))?;
        }
        fs::create_dir_all(&ingest).map_err(io_err("create", &ingest))?;
        Ok(Self {
            blobs,
            ingest,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    pub(crate) fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    pub(crate) fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub(crate) fn read(&self, d: &Digest) -> Result<Vec<u8>, ContentError> {
        let p = self.path(d);
        fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ContentError::Missing { digest: d.clone() }
            } else {
                io_err("read", &p)(e)
            }
        })
    }

    /// Serialises work on one digest inside this process: the second caller waits, then
    /// finds the blob (or snapshot) already there.
    pub(crate) async fn lock(&self, d: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = super::lock(&self.locks);
            locks.retain(|_, w| w.strong_count() > 0);
            match locks.get(d).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(d.clone(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }

    /// Stores a small blob held in memory after checking its digest.
    pub(crate) fn write(&self, expected: &Digest, data: &[u8]) -> Result<(), ContentError> {
        if self.has(expected) {
            return Ok(());
        }
        let mut ingest = self.ingest(expected, data.len() as u64)?;
        ingest.write(data)?;
        ingest.commit()
    }

    /// Starts receiving a blob of `size` bytes that must hash to `expected`.
    pub(crate) fn ingest(&self, expected: &Digest, size: u64) -> Result<Ingest, ContentError> {
        let tmp = tempfile::Builder::new()
            .prefix(expected.short())
            .tempfile_in(&self.ingest)
            .map_err(io_err("create", &self.ingest))?;
        Ok(Ingest {
            file: Some(tmp),
            hasher: Sha256::new(),
            written: 0,
            expected: expected.clone(),
            size,
            dest: self.path(expected),
        })
    }
}

/// A blob being received. Dropping it without `commit` deletes the partial file.
pub(crate) struct Ingest {
    file: Option<tempfile::NamedTempFile>,
    hasher: Sha256,
    written: u64,
    expected: Digest,
    size: u64,
    dest: PathBuf,
}

impl Ingest {
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        if let Some(f) = self.file.as_mut() {
            f.write_all(chunk).map_err(io_err("write", &self.dest))?;
        }
        Ok(())
    }

    /// Verifies size (a short blob is an interrupted transfer) and digest, then moves
    /// the blob into place.
    pub(crate) fn commit(mut self) -> Result<(), ContentError> {
        if self.written != self.size {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
                size: self.written,
            });
        }
        if let Some(f) = self.file.take() {
            f.persist(&self.dest)
                .map_err(|e| io_err("rename into", &self.dest)(e.error))?;
        }
        Ok(())
    }
}

/// Size of a file or a directory tree (what gc reports as freed).
pub(crate) fn disk_usage(path: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    let Ok(rd) = fs::read_dir(path) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| disk_usage(&e.path()))
        .sum::<u64>()
        + md.len()
}

/// Opens a stored blob for reading.
pub(crate) fn open_blob(store: &ContentStore, d: &Digest) -> Result<File, ContentError> {
    let p = store.path(d);
    File::open(&p).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ContentError::Missing { digest: d.clone() }
        } else {
            io_err("open", &p)(e)
        }
    })
}

impl ContentStore {
    /// Stores whatever `r` yields under its computed digest (archives being loaded carry
    /// files whose digests are only known once read). Returns digest and size.
    pub(crate) fn import(&self, r: &mut impl std::io::Read) -> Result<(Digest, u64), ContentError> {
        let mut tmp = tempfile::Builder::new()
            .prefix("import")
            .tempfile_in(&self.ingest)
            .map_err(io_err("create", &self.ingest))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read", tmp.path())(e)),
            };
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(io_err("write", tmp.path()))?;
            size += n as u64;
        }
        let digest = Digest::from_hasher(hasher);
        let dest = self.path(&digest);
        if !dest.exists() {
            tmp.persist(&dest)
                .map_err(|e| io_err("rename into", &dest)(e.error))?;
        }
        Ok((digest, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_land_and_wrong_digests_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let good = Digest::of(b"hello");
        store.write(&good, b"hello").expect("good blob");
        assert_eq!(store.read(&good).expect("read"), b"hello");

        let claimed = Digest::of(b"something else");
        let err = store.write(&claimed, b"hello").expect_err("wrong digest");
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(claimed.as_str()));
        assert!(!store.has(&claimed));
        // the partial file is gone too
        assert_eq!(
            fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
    }

    #[test]
    fn oversize_blob_is_refused_while_streaming() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let d = Digest::of(b"abc");
        let mut ing = store.ingest(&d, 2).expect("ingest");
        assert!(matches!(
            ing.write(b"abc"),
            Err(ContentError::SizeMismatch { .. })
        ));
        drop(ing);
        assert_eq!(
            fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
    }

    #[test]
    fn open_cleans_interrupted_downloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(ContentStore::open(dir.path()).expect("open"));
        fs::write(dir.path().join("ingest/partial"), b"x").expect("write");
        drop(ContentStore::open(dir.path()).expect("reopen"));
        assert_eq!(
            fs::read_dir(dir.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn lock_serialises_one_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ContentStore::open(dir.path()).expect("open"));
        let d = Digest::of(b"x");
        let g = store.lock(&d).await;
        let s2 = store.clone();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            let _g = s2.lock(&d2).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second locker must wait");
        drop(g);
        waiter.await.expect("join");
        // another digest never waits
        let _a = store.lock(&d).await;
        let _b = store.lock(&Digest::of(b"y")).await;
    }
}
