//! The raft log and vote in redb, with the recent tail of the log kept in memory.
//!
//! One writer thread owns every change to the database. `append` puts the entries in
//! the in-memory tail (readable at once: replication and the state machine read them
//! from there, decoded, without touching redb) and hands them to the writer; the writer
//! takes everything queued (appends, truncations, purges, the vote, the committed index),
//! applies it in order in one write transaction, commits it with one fsync, and only
//! then acknowledges (the `IOFlushed` callbacks, or the waiting call). An entry leaves
//! the tail only once it is durable, so a read that misses the tail finds it in redb.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::OptionalSend;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::TypeConfig;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

/// The committed index is written with a batch at most this often (it may lag).
const COMMITTED_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Entries kept in memory once durable (a lagging follower reads older ones from redb).
const TAIL_KEEP: usize = 4096;

/// The log store; clones share the database, the tail and the writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    writer: std_mpsc::Sender<Op>,
    shared: Arc<Mutex<Shared>>,
}

type Committed = Option<LogIdOf<TypeConfig>>;

/// What the writer's callers and readers share.
#[derive(Default)]
struct Shared {
    /// Recent entries by index, each with the number of the append that wrote it.
    tail: BTreeMap<u64, (u64, EntryOf<TypeConfig>)>,
    /// Appends are numbered; every append up to this one is durable.
    durable: u64,
    next_append: u64,
    /// The committed index saved since the writer last wrote it.
    committed: Option<Committed>,
}

impl Shared {
    /// Drops durable entries beyond what the tail keeps.
    fn trim(&mut self) {
        while self.tail.len() > TAIL_KEEP {
            match self.tail.first_key_value() {
                Some((_, (n, _))) if *n <= self.durable => {
                    self.tail.pop_first();
                }
                _ => break,
            }
        }
    }
}

/// One change for the writer thread.
enum Op {
    Append(u64, Vec<EntryOf<TypeConfig>>, IOFlushed<TypeConfig>),
    /// Removes entries in `[from, to)`.
    Remove(u64, u64, Done),
    /// Writes a meta value.
    Meta(&'static str, Vec<u8>, Done),
}

type Done = oneshot::Sender<io::Result<()>>;

fn io_err(what: &str, err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("raft log: {what}: {err}"))
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let db = Database::create(path)
            .map_err(|e| io_err(&format!("opening {}", path.display()), e))?;
        Self::with_db(db)
    }

    /// A log in memory (tests).
    pub fn in_memory() -> io::Result<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| io_err("creating in-memory database", e))?;
        Self::with_db(db)
    }

    fn with_db(db: Database) -> io::Result<Self> {
        let txn = db.begin_write().map_err(|e| io_err("begin", e))?;
        txn.open_table(LOGS)
            .map_err(|e| io_err("creating table logs", e))?;
        txn.open_table(META)
            .map_err(|e| io_err("creating table meta", e))?;
        txn.commit().map_err(|e| io_err("commit", e))?;
        let db = Arc::new(db);
        let (tx, rx) = std_mpsc::channel::<Op>();
        // Weak: the database closes when the last LogStore is dropped, not when the
        // writer thread gets around to noticing.
        let writer_db = Arc::downgrade(&db);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("raft-log-write".into())
            .spawn(move || writer(&writer_db, &writer_shared, &rx))
            .map_err(|e| io_err("starting the writer thread", e))?;
        Ok(LogStore {
            db,
            writer: tx,
            shared,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| io_err("begin read", e))?;
        let table = txn.open_table(META).map_err(|e| io_err("open meta", e))?;
        match table
            .get(key)
            .map_err(|e| io_err(&format!("read {key}"), e))?
        {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| io_err(&format!("decode {key}"), e)),
        }
    }

    /// Queues `op` (made with its completion sender) and waits until it is durable.
    async fn write(&self, op: impl FnOnce(Done) -> Op) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.writer
            .send(op(done))
            .map_err(|_| io_err("write", "the writer thread is gone"))?;
        wait.await
            .map_err(|_| io_err("write", "the writer thread is gone"))?
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(|e| io_err(&format!("encode {key}"), e))?;
        self.write(|done| Op::Meta(key, bytes, done)).await
    }

    /// Prepares an empty log to continue after `last` (force-new-cluster, restore):
    /// everything up to `last` is in the snapshot, committed, and purged from the log.
    pub async fn seed(
        &self,
        last: LogIdOf<TypeConfig>,
        vote: VoteOf<TypeConfig>,
    ) -> io::Result<()> {
        lock(&self.shared).committed = None;
        self.put_meta(LAST_PURGED, &last).await?;
        self.put_meta(COMMITTED, &Some(last)).await?;
        self.put_meta(VOTE, &vote).await
    }

    /// The last log id in redb, if any (ignores purged entries).
    fn last_stored_id(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        let txn = self.db.begin_read().map_err(|e| io_err("begin read", e))?;
        let table = txn.open_table(LOGS).map_err(|e| io_err("open logs", e))?;
        match table.last().map_err(|e| io_err("read last entry", e))? {
            None => Ok(None),
            Some((_, v)) => {
                let e: EntryOf<TypeConfig> =
                    postcard::from_bytes(v.value()).map_err(|e| io_err("decode last entry", e))?;
                Ok(Some(e.log_id()))
            }
        }
    }

    /// Entries in `[start, end)` from redb.
    fn read_stored(&self, start: u64, end: u64) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let txn = self.db.begin_read().map_err(|e| io_err("begin read", e))?;
        let table = txn.open_table(LOGS).map_err(|e| io_err("open logs", e))?;
        for item in table.range(start..end).map_err(|e| io_err("range", e))? {
            let (k, v) = item.map_err(|e| io_err("read entry", e))?;
            let entry: EntryOf<TypeConfig> = postcard::from_bytes(v.value())
                .map_err(|e| io_err(&format!("decode entry {}", k.value()), e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

/// Applies every queued op in one transaction and commits it with one fsync, then
/// acknowledges them all (the database handle is let go first, so a caller that reopens
/// the file after its write returned finds it closed).
fn writer(db: &std::sync::Weak<Database>, shared: &Mutex<Shared>, rx: &std_mpsc::Receiver<Op>) {
    let mut committed_written = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        // The committed index is taken before the queue is drained: openraft saves an
        // index only after the appends of the entries it covers have returned, so
        // their ops are in the queue by now and land in this batch or an earlier one.
        // Taken after draining, it could name entries still queued: written, then a
        // crash, and a restart would apply entries its log does not have.
        let committed = if committed_written.elapsed() >= COMMITTED_EVERY {
            committed_written = std::time::Instant::now();
            lock(shared).committed.take()
        } else {
            None
        };
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let last_append = batch
            .iter()
            .filter_map(|op| match op {
                Op::Append(n, ..) => Some(*n),
                _ => None,
            })
            .max();
        let result = match db.upgrade() {
            None => Err("the log database was closed".to_string()),
            Some(db) => write_batch(&db, &batch, committed),
        };
        if result.is_ok()
            && let Some(n) = last_append
        {
            let mut s = lock(shared);
            s.durable = s.durable.max(n);
            s.trim();
        }
        for op in batch {
            let r = result.clone().map_err(|e| io_err("write", e));
            match op {
                Op::Append(_, _, cb) => cb.io_completed(r),
                Op::Remove(_, _, done) | Op::Meta(_, _, done) => {
                    let _ = done.send(r);
                }
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[Op], committed: Option<Committed>) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut logs = txn.open_table(LOGS).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        for op in batch {
            match op {
                Op::Append(_, entries, _) => {
                    for e in entries {
                        let bytes = postcard::to_stdvec(e)
                            .map_err(|err| format!("encode entry {}: {err}", e.index()))?;
                        logs.insert(e.index(), bytes.as_slice())
                            .map_err(|err| format!("write entry {}: {err}", e.index()))?;
                    }
                }
                Op::Remove(from, to, _) => {
                    logs.retain_in(*from..*to, |_, _| false)
                        .map_err(|e| format!("remove entries {from}..{to}: {e}"))?;
                }
                Op::Meta(key, bytes, _) => {
                    meta.insert(*key, bytes.as_slice())
                        .map_err(|e| format!("write {key}: {e}"))?;
                }
            }
        }
        if let Some(c) = committed {
            let bytes = postcard::to_stdvec(&c).map_err(|e| e.to_string())?;
            meta.insert(COMMITTED, bytes.as_slice())
                .map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())
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
        // The tail first: what it no longer holds below its first entry is durable.
        let (tail_start, from_tail) = {
            let s = lock(&self.shared);
            let tail_start = s.tail.first_key_value().map_or(u64::MAX, |(i, _)| *i);
            let from = start.max(tail_start);
            let from_tail: Vec<_> = if from < end {
                s.tail
                    .range(from..end)
                    .map(|(_, (_, e))| e.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (tail_start, from_tail)
        };
        let mut out = self.read_stored(start, end.min(tail_start))?;
        out.extend(from_tail);
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.get_meta(LAST_PURGED)?;
        let in_tail = lock(&self.shared)
            .tail
            .last_key_value()
            .map(|(_, (_, e))| e.log_id());
        let last_log_id = match in_tail {
            Some(id) => Some(id),
            None => self.last_stored_id()?,
        }
        .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.put_meta(VOTE, vote).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Written by the next batch (openraft may lose the latest committed index: a
        // restart then applies a little less at once and learns the rest).
        lock(&self.shared).committed = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        let pending = lock(&self.shared).committed;
        match pending {
            Some(c) => Ok(c),
            None => Ok(self
                .get_meta::<Option<LogIdOf<TypeConfig>>>(COMMITTED)?
                .flatten()),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let n = {
            let mut s = lock(&self.shared);
            s.next_append += 1;
            let n = s.next_append;
            for e in &entries {
                s.tail.insert(e.index(), (n, e.clone()));
            }
            s.trim();
            n
        };
        // Readable now (from the tail); acknowledged once the writer's commit returns.
        self.writer
            .send(Op::Append(n, entries, callback))
            .map_err(|_| io_err("append", "the writer thread is gone"))
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        lock(&self.shared).tail.split_off(&from);
        self.write(|done| Op::Remove(from, u64::MAX, done)).await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let upto = log_id.index() + 1;
        {
            let mut s = lock(&self.shared);
            let kept = s.tail.split_off(&upto);
            s.tail = kept;
        }
        // Recorded first, in the same batch: entries at or before it are ignored from
        // then on. (The removal's answer covers both.)
        let bytes = postcard::to_stdvec(&log_id).map_err(|e| io_err("encode last_purged", e))?;
        let (done, _answered_by_the_removal) = oneshot::channel();
        self.writer
            .send(Op::Meta(LAST_PURGED, bytes, done))
            .map_err(|_| io_err("purge", "the writer thread is gone"))?;
        self.write(|done| Op::Remove(0, upto, done)).await
    }
}
