//! The raft state machine: the in-memory `Store`, plus snapshots on disk.
//!
//! The store is transient and snapshots are persistent (openraft's third pattern): on
//! start openraft installs the last snapshot and re-applies the log up to the persisted
//! committed index. A snapshot file is `[u32 BE meta length][postcard SnapshotMeta]
//! [prost StoreSnapshot]`, written to a temporary file, fsync'd and renamed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use super::{Outcome, TypeConfig};
use crate::store::{Store, StoreState};

const SNAPSHOT_FILE: &str = "snapshot.bin";

fn io_err(what: &str, err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("state machine: {what}: {err}"))
}

/// The state machine openraft drives.
pub struct StateMachine {
    store: Arc<Store>,
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    dir: PathBuf,
}

impl StateMachine {
    /// A state machine over `store`, keeping snapshots in `dir` (created if missing).
    pub fn new(store: Arc<Store>, dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(&format!("creating {}", dir.display()), e))?;
        Ok(StateMachine {
            store,
            applied: None,
            membership: StoredMembershipOf::<TypeConfig>::default(),
            dir: dir.to_owned(),
        })
    }

    /// Reads the snapshot kept in `dir`, if there is one.
    pub fn read_snapshot(dir: &Path) -> io::Result<Option<(SnapshotMetaOf<TypeConfig>, Vec<u8>)>> {
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&format!("reading {}", path.display()), e)),
        };
        let bad = |what: &str| {
            io_err(
                &format!("{}: {what}", path.display()),
                "corrupt snapshot file",
            )
        };
        let len_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("no header"))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let meta_bytes = bytes.get(4..4 + len).ok_or_else(|| bad("short metadata"))?;
        let meta = postcard::from_bytes(meta_bytes)
            .map_err(|e| io_err(&format!("decoding the metadata of {}", path.display()), e))?;
        Ok(Some((meta, bytes[4 + len..].to_vec())))
    }

    /// Writes a snapshot file atomically (tmp, fsync, rename, fsync dir).
    pub fn write_snapshot(
        dir: &Path,
        meta: &SnapshotMetaOf<TypeConfig>,
        data: &[u8],
    ) -> io::Result<()> {
        let meta_bytes =
            postcard::to_stdvec(meta).map_err(|e| io_err("encoding snapshot metadata", e))?;
        let len =
            u32::try_from(meta_bytes.len()).map_err(|e| io_err("snapshot metadata size", e))?;
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let path = dir.join(SNAPSHOT_FILE);
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&len.to_be_bytes())?;
            f.write_all(&meta_bytes)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| io_err(&format!("writing {}", path.display()), e))
    }
}

/// A consistent copy taken on the state machine task; written out later.
pub struct SnapshotBuilder {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let (dir, meta, data) = (
            self.dir.clone(),
            self.meta.clone(),
            std::mem::take(&mut self.data),
        );
        let (meta, data) = tokio::task::spawn_blocking(move || {
            StateMachine::write_snapshot(&dir, &meta, &data).map(|()| (meta, data))
        })
        .await
        .map_err(|e| io_err("snapshot writer task", e))??;
        tracing::info!(last = ?meta.last_log_id, bytes = data.len(), "snapshot written");
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let index = entry.log_id.index();
            let outcome = match &entry.payload {
                EntryPayload::Normal(p) => {
                    let answer = self.store.apply(p.command(), index, p.proposed_at_ms);
                    Outcome {
                        revision: answer.revision,
                        result: answer.result,
                    }
                }
                EntryPayload::Membership(m) => {
                    self.membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                    self.store.advance(index);
                    Outcome::blank(index)
                }
                EntryPayload::Blank => {
                    self.store.advance(index);
                    Outcome::blank(index)
                }
            };
            self.applied = Some(entry.log_id);
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: self.applied,
                last_membership: self.membership.clone(),
            },
            data: self.store.encode(),
            dir: self.dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = StoreState::decode(&snapshot).map_err(|e| io_err("installing snapshot", e))?;
        let (dir, m) = (self.dir.clone(), meta.clone());
        let snapshot = tokio::task::spawn_blocking(move || {
            StateMachine::write_snapshot(&dir, &m, &snapshot).map(|()| snapshot)
        })
        .await
        .map_err(|e| io_err("snapshot writer task", e))??;
        drop(snapshot);
        self.store.replace(state);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(last = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let dir = self.dir.clone();
        let found = tokio::task::spawn_blocking(move || StateMachine::read_snapshot(&dir))
            .await
            .map_err(|e| io_err("snapshot reader task", e))??;
        Ok(found.map(|(meta, snapshot)| SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot }))
    }
}
