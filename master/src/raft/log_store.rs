//! The raft log and vote in redb. An append is visible when `append` returns and is
//! acknowledged (the `IOFlushed` callback) only after an fsync'd commit: appends commit
//! without fsync, and one flusher thread makes every pending append durable with a
//! single fsync'd commit, then completes their callbacks in order (group commit). The
//! committed index rides along in that commit (openraft allows it to lag): saving it
//! costs no write transaction of its own, which would queue behind redb's one writer.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use openraft::OptionalSend;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::TypeConfig;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

/// The log store; clones share the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    flusher: std_mpsc::Sender<IOFlushed<TypeConfig>>,
    /// The committed index saved since the flusher last wrote it.
    committed: Arc<std::sync::Mutex<Option<Committed>>>,
}

type Committed = Option<LogIdOf<TypeConfig>>;

fn io_err(what: &str, err: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("raft log: {what}: {err}"))
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
        let (tx, rx) = std_mpsc::channel::<IOFlushed<TypeConfig>>();
        // Weak: the database closes when the last LogStore is dropped, not when the
        // flusher thread gets around to noticing.
        let flush_db = Arc::downgrade(&db);
        let committed = Arc::new(std::sync::Mutex::new(None));
        let flush_committed = Arc::clone(&committed);
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(&flush_db, &flush_committed, &rx))
            .map_err(|e| io_err("starting the flusher thread", e))?;
        Ok(LogStore {
            db,
            flusher: tx,
            committed,
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

    /// Writes one meta value; `durable` waits for the fsync.
    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T, durable: bool) -> io::Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(|e| io_err(&format!("encode {key}"), e))?;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| io_err("begin write", e))?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| io_err("set durability", e))?;
        }
        {
            let mut table = txn.open_table(META).map_err(|e| io_err("open meta", e))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| io_err(&format!("write {key}"), e))?;
        }
        txn.commit()
            .map_err(|e| io_err(&format!("commit {key}"), e))
    }

    /// Prepares an empty log to continue after `last` (force-new-cluster, restore):
    /// everything up to `last` is in the snapshot, committed, and purged from the log.
    pub fn seed(&self, last: LogIdOf<TypeConfig>, vote: VoteOf<TypeConfig>) -> io::Result<()> {
        take_pending(&self.committed);
        self.put_meta(LAST_PURGED, &last, true)?;
        self.put_meta(COMMITTED, &Some(last), true)?;
        self.put_meta(VOTE, &vote, true)
    }

    /// The last log id in the log, if any (ignores purged entries).
    fn last_entry_id(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
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

    /// Removes entries in `[from, to)` without fsync (the next append's flush persists it).
    fn remove_range(&self, from: u64, to: u64) -> io::Result<()> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| io_err("begin write", e))?;
        txn.set_durability(Durability::None)
            .map_err(|e| io_err("set durability", e))?;
        {
            let mut table = txn.open_table(LOGS).map_err(|e| io_err("open logs", e))?;
            table
                .retain_in(from..to, |_, _| false)
                .map_err(|e| io_err(&format!("remove entries {from}..{to}"), e))?;
        }
        txn.commit().map_err(|e| io_err("commit removal", e))
    }
}

fn take_pending(committed: &std::sync::Mutex<Option<Committed>>) -> Option<Committed> {
    committed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Makes all earlier commits durable with one fsync'd commit (writing the committed
/// index saved meanwhile), then acknowledges.
fn flusher(
    db: &std::sync::Weak<Database>,
    committed: &std::sync::Mutex<Option<Committed>>,
    rx: &std_mpsc::Receiver<IOFlushed<TypeConfig>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = (|| -> Result<(), String> {
            let db = db.upgrade().ok_or("the log database was closed")?;
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            if let Some(c) = take_pending(committed) {
                let bytes = postcard::to_stdvec(&c).map_err(|e| e.to_string())?;
                let mut table = txn.open_table(META).map_err(|e| e.to_string())?;
                table
                    .insert(COMMITTED, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        for cb in batch {
            cb.io_completed(result.clone().map_err(|e| io_err("fsync", e)));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let txn = self.db.begin_read().map_err(|e| io_err("begin read", e))?;
        let table = txn.open_table(LOGS).map_err(|e| io_err("open logs", e))?;
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in table.range(start..).map_err(|e| io_err("range", e))? {
            let (k, v) = item.map_err(|e| io_err("read entry", e))?;
            if !range.contains(&k.value()) {
                break;
            }
            let entry: EntryOf<TypeConfig> = postcard::from_bytes(v.value())
                .map_err(|e| io_err(&format!("decode entry {}", k.value()), e))?;
            out.push(entry);
        }
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
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let this = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || this.put_meta(VOTE, &vote, true))
            .await
            .map_err(|e| io_err("save vote task", e))?
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Written by the next flush (openraft may lose the latest committed index: a
        // restart then applies a little less at once and learns the rest).
        *self
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        let pending = *self
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let mut encoded = Vec::new();
        for e in entries {
            let bytes = postcard::to_stdvec(&e).map_err(|err| io_err("encode entry", err))?;
            encoded.push((e.index(), bytes));
        }
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut txn = db.begin_write().map_err(|e| io_err("begin write", e))?;
            txn.set_durability(Durability::None)
                .map_err(|e| io_err("set durability", e))?;
            {
                let mut table = txn.open_table(LOGS).map_err(|e| io_err("open logs", e))?;
                for (index, bytes) in &encoded {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(|e| io_err(&format!("write entry {index}"), e))?;
                }
            }
            txn.commit().map_err(|e| io_err("commit entries", e))
        })
        .await
        .map_err(|e| io_err("append task", e))??;
        // Readable now; acknowledged once the flusher's fsync'd commit returns.
        self.flusher
            .send(callback)
            .map_err(|_| io_err("flush", "the flusher thread is gone"))
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.remove_range(from, u64::MAX))
            .await
            .map_err(|e| io_err("truncate task", e))?
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // Record first: entries at or before it are ignored from then on.
            this.put_meta(LAST_PURGED, &log_id, false)?;
            this.remove_range(0, log_id.index() + 1)
        })
        .await
        .map_err(|e| io_err("purge task", e))?
    }
}
