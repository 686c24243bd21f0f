//! Raft storage against openraft's own storage test suite, on disk (raft-log + snapshot
//! files in a temp dir), plus a restart that must find log, vote and snapshot again.

use std::sync::Arc;

use openraft::StorageError;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

use super::TypeConfig;
use super::log_store::LogStore;
use super::state_machine::StateMachine;
use crate::store::Store;

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for OnDisk {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let log = LogStore::open(&dir.path().join("log"))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let sm = StateMachine::new(Store::new(100), &dir.path().join("snapshots"))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_the_raft_log() {
    Suite::test_all(OnDisk)
        .await
        .expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_and_snapshot_survive_a_reopen() {
    let dir = TempDir::new().expect("tempdir");
    let vote = openraft::impls::Vote::new(3u64, 7u64);
    {
        let mut log = LogStore::open(&dir.path().join("log")).expect("open");
        log.save_vote(&vote).await.expect("save vote");
    }
    let store = Store::new(100);
    store.apply(
        &skiff_proto::v1::Command {
            mutations: vec![skiff_proto::v1::Mutation {
                op: Some(skiff_proto::v1::mutation::Op::PutNode(
                    skiff_proto::v1::Node {
                        id: "n1".into(),
                        ..Default::default()
                    },
                )),
                expected_version: 0,
                unconditional: false,
            }],
            request_id: String::new(),
        },
        1,
        0,
    );
    {
        let mut sm =
            StateMachine::new(Arc::clone(&store), &dir.path().join("snapshots")).expect("sm");
        let mut b = sm.get_snapshot_builder().await;
        b.build_snapshot().await.expect("build");
    }
    let mut log = LogStore::open(&dir.path().join("log")).expect("reopen");
    assert_eq!(log.read_vote().await.expect("read vote"), Some(vote));
    let mut sm = StateMachine::new(Store::new(100), &dir.path().join("snapshots")).expect("sm");
    let snap = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    let state = crate::store::StoreState::decode(&snap.snapshot).expect("decode");
    assert!(state.node("n1").is_some());
}

fn normal_entry(index: u64) -> openraft::alias::EntryOf<TypeConfig> {
    use openraft::entry::RaftEntry;
    let command = skiff_proto::v1::Command {
        mutations: Vec::new(),
        request_id: format!("r{index}"),
    };
    openraft::alias::EntryOf::<TypeConfig>::new_normal(
        openraft::testing::log_id::<TypeConfig>(1, 1, index),
        super::Proposal::new(command, 7),
    )
}

async fn append_durably(log: &mut LogStore, from: u64, to: u64) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(
        (from..to).map(normal_entry),
        openraft::storage::IOFlushed::signal(tx),
    )
    .await
    .expect("append");
    rx.await.expect("callback").expect("flushed");
}

fn request_ids(entries: &[openraft::alias::EntryOf<TypeConfig>]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.payload {
            openraft::EntryPayload::Normal(p) => p.command().request_id.clone(),
            other => panic!("not a normal entry: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_span_the_cache_and_the_chunk_files_and_survive_truncation_and_reopen() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("log");
    let want = |from: u64, to: u64| (from..to).map(|i| format!("r{i}")).collect::<Vec<_>>();
    {
        let mut log = LogStore::open(&path).expect("open");
        // Far more than the tail keeps, in batches: the early ones leave memory.
        for start in (1..10_001).step_by(500) {
            append_durably(&mut log, start, start + 500).await;
        }
        let all = log.try_get_log_entries(1..10_001).await.expect("read");
        assert_eq!(request_ids(&all), want(1, 10_001));
        let across = log.try_get_log_entries(5_000..=5_100).await.expect("read");
        assert_eq!(request_ids(&across), want(5_000, 5_101));
        // A conflicting suffix goes, and is replaced.
        log.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 9_000)))
            .await
            .expect("truncate");
        assert!(
            log.try_get_log_entries(9_001..9_010)
                .await
                .expect("read")
                .is_empty()
        );
        append_durably(&mut log, 9_001, 9_004).await;
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(9_003));
        log.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 100))
            .await
            .expect("purge");
    }
    let mut log = LogStore::open(&path).expect("reopen");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id.map(|l| l.index), Some(9_003));
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(100));
    let all = log.try_get_log_entries(101..20_000).await.expect("read");
    assert_eq!(request_ids(&all), want(101, 9_004));
}

#[test]
fn a_proposal_reads_back_from_the_format_written_before_it_kept_its_bytes() {
    #[derive(serde::Serialize)]
    struct Before {
        command: Vec<u8>,
        proposed_at_ms: i64,
    }
    let command = skiff_proto::v1::Command {
        mutations: Vec::new(),
        request_id: "req-1".into(),
    };
    let old = postcard::to_stdvec(&Before {
        command: prost::Message::encode_to_vec(&command),
        proposed_at_ms: 42,
    })
    .expect("encode");
    let p: super::Proposal = postcard::from_bytes(&old).expect("decode");
    assert_eq!(p.command(), &command);
    assert_eq!(p.proposed_at_ms, 42);
    assert_eq!(postcard::to_stdvec(&p).expect("encode"), old);
}
