//! The raft log, vote and committed index, kept in `raft-log`: an append-only,
//! chunked write-ahead log made for openraft (by openraft's author; Databend's meta
//! service runs on it).
//!
//! Every change (appended entries, truncation, purge, vote, committed index) is a
//! record appended to the open chunk file; the library's flush thread writes what
//! queued and syncs it with one `fdatasync` per batch (group commit), then calls the
//! callbacks in order. Entries are readable at once after `append`, from the library's
//! in-memory cache of recent payloads (older ones are read back from their chunk). A
//! purge removes whole chunks once every entry in them is purged.
//!
//! It replaced a redb table (one B-tree commit per batch: ~100 µs of CPU against
//! ~30 µs for an append and an `fdatasync`, and the commit was a quarter of each
//! follower's CPU under load). A master that still has the redb log of an earlier
//! build has it copied over when it starts (`log_migrate`).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::alias::{EntryOf, EntryPayloadOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::{RaftLog, codeq};
use tokio::sync::oneshot;

use super::TypeConfig;

/// Entries a chunk file holds before the next one starts: a purge frees whole chunks.
const CHUNK_RECORDS: usize = 16 * 1024;
/// And the most bytes a chunk file grows to.
const CHUNK_BYTES: usize = 64 << 20;
/// Recent payloads kept in memory (replication and the state machine read them there).
const CACHE_ITEMS: usize = 16 * 1024;
const CACHE_BYTES: usize = 64 << 20;
/// How long the flush thread waits for more requests before it syncs a batch: long
/// enough to take everything already queued, short against an fsync.
const FLUSH_GATHER: Duration = Duration::from_micros(50);
/// Largest value the log decodes (a record is checksummed; this only guards against
/// a length that would allocate without bound).
const MAX_VALUE: usize = 256 << 20;

/// A value stored in the log as postcard bytes behind a 4-byte length.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Stored<T>(T);

impl<T: serde::Serialize> codeq::Encode for Stored<T> {
    fn encode<W: io::Write>(&self, mut w: W) -> Result<usize, io::Error> {
        let bytes = postcard::to_stdvec(&self.0).map_err(|e| io_err("encode", e))?;
        let len = u32::try_from(bytes.len())
            .map_err(|_| io_err("encode", format!("a value of {} bytes", bytes.len())))?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(&bytes)?;
        Ok(4 + bytes.len())
    }
}

impl<T: serde::de::DeserializeOwned> codeq::Decode for Stored<T> {
    fn decode<R: io::Read>(mut r: R) -> Result<Self, io::Error> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_VALUE {
            return Err(io_err("decode", format!("a value claims {len} bytes")));
        }
        let mut bytes = vec![0u8; len];
        r.read_exact(&mut bytes)?;
        postcard::from_bytes(&bytes)
            .map(Stored)
            .map_err(|e| io_err("decode", e))
    }
}

/// skiff's types for raft-log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct LogTypes;

impl raft_log::Types for LogTypes {
    type LogId = Stored<LogIdOf<TypeConfig>>;
    type LogPayload = Stored<EntryPayloadOf<TypeConfig>>;
    type Vote = Stored<VoteOf<TypeConfig>>;
    type Callback = Flushed;
    type UserData = Stored<()>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        match &payload.0 {
            EntryPayload::Normal(p) => p.encoded_len() as u64 + 16,
            _ => 64,
        }
    }
}

/// Who is told when a flush is durable.
enum Flushed {
    /// openraft's callback for an append.
    Raft(IOFlushed<TypeConfig>),
    /// A caller of this module waiting for its write.
    Wait(oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for Flushed {
    fn send(self, res: Result<(), io::Error>) {
        match self {
            Flushed::Raft(cb) => cb.io_completed(res),
            Flushed::Wait(tx) => {
                let _ = tx.send(res);
            }
        }
    }
}

/// The log store; clones share the log (and its flush thread, which stops when the
/// last clone is dropped, after writing and syncing what was queued).
#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<RaftLog<LogTypes>>>,
}

fn io_err(what: &str, err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("raft log: {what}: {err}"))
}

impl LogStore {
    /// Opens (or creates) the log in directory `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(&format!("creating {}", dir.display()), e))?;
        let mut config = raft_log::Config::new(dir.to_string_lossy());
        config.wal.chunk_max_records = Some(CHUNK_RECORDS);
        config.wal.chunk_max_size = Some(CHUNK_BYTES);
        config.wal.flush_batch_wait = Some(FLUSH_GATHER);
        config.log_cache_max_items = Some(CACHE_ITEMS);
        config.log_cache_capacity = Some(CACHE_BYTES);
        let log = RaftLog::open(Arc::new(config))
            .map_err(|e| io_err(&format!("opening {}", dir.display()), e))?;
        Ok(LogStore {
            log: Arc::new(Mutex::new(log)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RaftLog<LogTypes>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to the log, then waits until it and everything before it is
    /// durable.
    async fn durably(
        &self,
        what: &str,
        change: impl FnOnce(&mut RaftLog<LogTypes>) -> io::Result<()>,
    ) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut log = self.lock();
            change(&mut log).map_err(|e| io_err(what, e))?;
            log.flush(true, Some(Flushed::Wait(tx)))
                .map_err(|e| io_err(what, e))?;
        }
        rx.await
            .map_err(|_| io_err(what, "the log's flush thread is gone"))?
    }

    /// Prepares an empty log to continue after `last` (force-new-cluster, restore):
    /// everything up to `last` is in the snapshot, committed, and purged from the log.
    pub async fn seed(
        &self,
        last: LogIdOf<TypeConfig>,
        vote: VoteOf<TypeConfig>,
    ) -> io::Result<()> {
        self.durably("seeding", |log| {
            log.save_vote(Stored(vote))?;
            log.purge(Stored(last))?;
            log.commit(Stored(last))?;
            Ok(())
        })
        .await
    }

    /// Copies entries and state in from another log (the redb migration).
    pub(crate) async fn import(
        &self,
        vote: Option<VoteOf<TypeConfig>>,
        purged: Option<LogIdOf<TypeConfig>>,
        entries: Vec<EntryOf<TypeConfig>>,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> io::Result<()> {
        self.durably("importing", |log| {
            if let Some(v) = vote {
                log.save_vote(Stored(v))?;
            }
            if let Some(p) = purged {
                log.purge(Stored(p))?;
            }
            log.append(
                entries
                    .into_iter()
                    .map(|e| (Stored(e.log_id), Stored(e.payload))),
            )?;
            if let Some(c) = committed
                && log.log_state().last().is_some_and(|l| l.0 >= c)
            {
                log.commit(Stored(c))?;
            }
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let log = self.lock();
        log.read(start, end)
            .map(|item| {
                let (id, payload) = item.map_err(|e| io_err("reading entries", e))?;
                Ok(EntryOf::<TypeConfig>::new(id.0, payload.0))
            })
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.lock().log_state().vote().map(|v| v.0))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.lock();
        let state = log.log_state();
        Ok(LogState {
            last_purged_log_id: state.purged().map(|l| l.0),
            last_log_id: state.last().map(|l| l.0),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let vote = *vote;
        self.durably("saving the vote", |log| {
            log.save_vote(Stored(vote)).map(|_| ())
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Queued behind the appends it covers (openraft saves a committed index only
        // after their appends returned), so it is never durable before them; written
        // with the next flush (openraft may lose the latest one: a restart then applies
        // a little less at once and learns the rest).
        let Some(c) = committed else { return Ok(()) };
        let mut log = self.lock();
        let state = log.log_state();
        let newer = state.committed().is_none_or(|old| old.0 < c);
        let held = state.last().is_some_and(|last| last.0 >= c);
        if newer && held {
            log.commit(Stored(c))
                .map_err(|e| io_err("saving the committed index", e))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.lock().log_state().committed().map(|l| l.0))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
    {
        // Readable at once; acknowledged when the flush thread has synced them.
        let mut log = self.lock();
        log.append(
            entries
                .into_iter()
                .map(|e| (Stored(e.log_id), Stored(e.payload))),
        )
        .map_err(|e| io_err("appending entries", e))?;
        log.flush(true, Some(Flushed::Raft(callback)))
            .map_err(|e| io_err("appending entries", e))
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let holds_more = self
            .lock()
            .log_state()
            .last()
            .is_some_and(|last| last.0.index >= from);
        if !holds_more {
            return Ok(());
        }
        self.durably(&format!("removing entries from {from}"), |log| {
            log.truncate(from).map(|_| ())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.durably(&format!("purging up to {}", log_id.index), |log| {
            log.purge(Stored(log_id)).map(|_| ())
        })
        .await
    }
}
