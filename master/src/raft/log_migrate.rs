//! Opening a master's raft log, and moving the redb log of earlier builds into it.
//!
//! Builds before the change to raft-log kept the log in `<raft>/raft.redb` (tables
//! `logs`: index → postcard entry, and `meta`: vote, last purged, committed). When a
//! master finds that file and no `<raft>/log/`, it copies everything into a new log in
//! `<raft>/log.importing/`, syncs it, renames it to `log/`, and only then renames the old
//! file to `raft.redb.migrated` (kept, never deleted). A crash at any step leaves either
//! the old file untouched (the import starts again) or the finished new log.

use std::io;
use std::path::Path;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::TypeConfig;
use super::log_store::LogStore;

/// The log's directory inside the raft directory.
pub const LOG_DIR: &str = "log";
/// The redb log of earlier builds.
pub const REDB_FILE: &str = "raft.redb";
const IMPORTING: &str = "log.importing";
const MIGRATED: &str = "raft.redb.migrated";

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {what}: {e}", path.display()))
}

/// Opens the log in `raft_dir`, first importing an earlier build's redb log.
pub async fn open_migrating(raft_dir: &Path) -> io::Result<LogStore> {
    let log_dir = raft_dir.join(LOG_DIR);
    let old = raft_dir.join(REDB_FILE);
    if old.exists() {
        if !log_dir.exists() {
            import(&old, raft_dir).await?;
        }
        let done = raft_dir.join(MIGRATED);
        std::fs::rename(&old, &done).map_err(|e| err(&old, "renaming after the import", e))?;
        tracing::info!(from = %old.display(), to = %log_dir.display(), kept = %done.display(),
            "raft log moved from redb to raft-log");
    }
    LogStore::open(&log_dir)
}

/// What an earlier build's redb log holds.
struct Legacy {
    vote: Option<VoteOf<TypeConfig>>,
    purged: Option<LogIdOf<TypeConfig>>,
    committed: Option<LogIdOf<TypeConfig>>,
    entries: Vec<EntryOf<TypeConfig>>,
}

fn decode<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
    bytes: Option<Vec<u8>>,
) -> io::Result<Option<T>> {
    bytes
        .map(|b| postcard::from_bytes(&b).map_err(|e| err(path, key, e)))
        .transpose()
}

fn read_legacy(path: &Path) -> io::Result<Legacy> {
    let db = Database::open(path).map_err(|e| err(path, "opening", e))?;
    let txn = db.begin_read().map_err(|e| err(path, "reading", e))?;
    let meta = txn
        .open_table(META)
        .map_err(|e| err(path, "table meta", e))?;
    let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
        Ok(meta
            .get(key)
            .map_err(|e| err(path, key, e))?
            .map(|v| v.value().to_vec()))
    };
    let vote: Option<VoteOf<TypeConfig>> = decode(path, "vote", get("vote")?)?;
    let purged: Option<LogIdOf<TypeConfig>> = decode(path, "last_purged", get("last_purged")?)?;
    let committed: Option<Option<LogIdOf<TypeConfig>>> =
        decode(path, "committed", get("committed")?)?;
    let logs = txn
        .open_table(LOGS)
        .map_err(|e| err(path, "table logs", e))?;
    let from = purged.map_or(0, |p| p.index + 1);
    let mut entries = Vec::new();
    for item in logs.range(from..).map_err(|e| err(path, "entries", e))? {
        let (k, v) = item.map_err(|e| err(path, "entries", e))?;
        let entry: EntryOf<TypeConfig> = postcard::from_bytes(v.value())
            .map_err(|e| err(path, &format!("entry {}", k.value()), e))?;
        entries.push(entry);
    }
    Ok(Legacy {
        vote,
        purged,
        committed: committed.flatten(),
        entries,
    })
}

async fn import(old: &Path, raft_dir: &Path) -> io::Result<()> {
    let legacy = read_legacy(old)?;
    let staging = raft_dir.join(IMPORTING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| err(&staging, "clearing", e))?;
    }
    let count = legacy.entries.len();
    {
        let log = LogStore::open(&staging)?;
        log.import(legacy.vote, legacy.purged, legacy.entries, legacy.committed)
            .await
            .map_err(|e| err(&staging, "importing", e))?;
        // Dropped here: the flush thread writes, syncs and lets the directory go.
    }
    let log_dir = raft_dir.join(LOG_DIR);
    std::fs::rename(&staging, &log_dir).map_err(|e| err(&staging, "renaming", e))?;
    std::fs::File::open(raft_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(raft_dir, "syncing", e))?;
    tracing::info!(entries = count, "imported the redb raft log");
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::storage::{RaftLogReader, RaftLogStorage};

    use super::*;

    fn entry(index: u64) -> EntryOf<TypeConfig> {
        let command = skiff_proto::v1::Command {
            mutations: Vec::new(),
            request_id: format!("r{index}"),
        };
        EntryOf::<TypeConfig>::new_normal(
            openraft::testing::log_id::<TypeConfig>(2, 1, index),
            super::super::Proposal::new(command, 7),
        )
    }

    /// Writes a log the way builds before raft-log did.
    fn write_legacy(path: &Path) {
        let db = Database::create(path).expect("create");
        let txn = db.begin_write().expect("begin");
        {
            let mut logs = txn.open_table(LOGS).expect("logs");
            for i in 5..=40u64 {
                let bytes = postcard::to_stdvec(&entry(i)).expect("encode");
                logs.insert(i, bytes.as_slice()).expect("insert");
            }
            let mut meta = txn.open_table(META).expect("meta");
            let put = |meta: &mut redb::Table<&str, &[u8]>, k: &str, v: Vec<u8>| {
                meta.insert(k, v.as_slice()).expect("meta insert");
            };
            let vote: VoteOf<TypeConfig> = openraft::impls::Vote::new(2u64, 1u64);
            put(&mut meta, "vote", postcard::to_stdvec(&vote).expect("v"));
            let purged = openraft::testing::log_id::<TypeConfig>(2, 1, 9);
            put(
                &mut meta,
                "last_purged",
                postcard::to_stdvec(&purged).expect("p"),
            );
            let committed = Some(openraft::testing::log_id::<TypeConfig>(2, 1, 30));
            put(
                &mut meta,
                "committed",
                postcard::to_stdvec(&committed).expect("c"),
            );
        }
        txn.commit().expect("commit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redb_log_of_an_earlier_build_is_imported_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_legacy(&dir.path().join(REDB_FILE));
        for _ in 0..2 {
            let mut log = open_migrating(dir.path()).await.expect("open");
            let state = log.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(9));
            assert_eq!(state.last_log_id.map(|l| l.index), Some(40));
            assert_eq!(
                log.read_vote().await.expect("vote"),
                Some(openraft::impls::Vote::new(2u64, 1u64))
            );
            assert_eq!(
                log.read_committed()
                    .await
                    .expect("committed")
                    .map(|l| l.index),
                Some(30)
            );
            let entries = log.try_get_log_entries(0..100).await.expect("read");
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(indexes, (10..=40).collect::<Vec<_>>());
        }
        assert!(!dir.path().join(REDB_FILE).exists());
        assert!(dir.path().join(MIGRATED).exists());
        assert!(!dir.path().join(IMPORTING).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_import_cut_short_starts_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_legacy(&dir.path().join(REDB_FILE));
        // A half-made staging directory from a crash.
        std::fs::create_dir_all(dir.path().join(IMPORTING)).expect("staging");
        std::fs::write(dir.path().join(IMPORTING).join("junk"), b"x").expect("junk");
        let mut log = open_migrating(dir.path()).await.expect("open");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(40));
    }
}
