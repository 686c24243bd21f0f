//! Raft storage against openraft's own storage test suite, on disk (redb + snapshot
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
        let log = LogStore::open(&dir.path().join("raft.redb"))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let sm = StateMachine::new(Store::new(100), &dir.path().join("snapshots"))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_the_redb_log() {
    Suite::test_all(OnDisk)
        .await
        .expect("openraft storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_and_snapshot_survive_a_reopen() {
    let dir = TempDir::new().expect("tempdir");
    let vote = openraft::impls::Vote::new(3u64, 7u64);
    {
        let mut log = LogStore::open(&dir.path().join("raft.redb")).expect("open");
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
    let mut log = LogStore::open(&dir.path().join("raft.redb")).expect("reopen");
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
