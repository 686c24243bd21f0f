//! The store's index: which images exist (by reference) and which snapshots (by chain
//! ID, with their short numeric directory). Persisted as one JSON file, replaced
//! atomically on every change.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::content::{ContentError, io_err};
use crate::digest::Digest;
use crate::manifest::{Descriptor, ImageConfig};
use crate::reference::Reference;

/// One layer of a stored image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub blob: Descriptor,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

/// A stored image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub reference: Reference,
    /// What the reference resolved to (an index digest for multi-platform images).
    pub digest: Digest,
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    /// Directory name under `snap/`: a small number keeps overlay's lowerdir option
    /// (one page) short.
    pub id: u64,
    pub diff_id: Digest,
    pub size: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub next_snapshot: u64,
    pub images: BTreeMap<String, ImageRecord>,
    pub snapshots: BTreeMap<Digest, SnapshotRecord>,
}

impl Meta {
    pub(crate) fn load(path: &Path) -> Result<Self, ContentError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io_err("parse", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(io_err("read", path)(e)),
        }
    }

    pub(crate) fn save(&self, path: &Path) -> Result<(), ContentError> {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err("create", &dir))?;
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| io_err("encode", path)(std::io::Error::other(e)))?;
        tmp.write_all(&bytes).map_err(io_err("write", path))?;
        tmp.as_file().sync_all().map_err(io_err("fsync", path))?;
        tmp.persist(path)
            .map_err(|e| io_err("rename into", path)(e.error))?;
        Ok(())
    }
}
