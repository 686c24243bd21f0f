//! Recovery: `force-new-cluster` (lost quorum), backup and restore.
//!
//! Force-new-cluster works on a stopped master's data directory: it rebuilds the store
//! from the last snapshot plus every entry in the local log, refuses if a quorum of
//! the old voters still answers, moves the old raft directory aside, and seeds a new
//! one whose snapshot (at the same last index and term) names this master as the only
//! voter. Revisions and object versions continue from where they were.
//!
//! ## Limitations
//! - Entries at the end of the local log that never committed are kept (as etcd's
//!   `--force-new-cluster` does): they were accepted by a leader but perhaps never
//!   acknowledged to their client.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, Membership, StoredMembership};
use skiff_proto::v1 as pb;
use skiff_proto::v1::raft_transport_client::RaftTransportClient;
use tonic::transport::ClientTlsConfig;

use crate::raft::log_migrate::{LOG_DIR, open_migrating};
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachine;
use crate::raft::{BasicNode, TypeConfig};
use crate::server::Identity;
use crate::store::StoreState;
use crate::store::apply::execute;
use crate::tls::DialTls;

type LogId = openraft::alias::LogIdOf<TypeConfig>;

/// Why recovery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{dir} holds no master (no master.toml)")]
    NoMaster { dir: PathBuf },
    #[error(transparent)]
    Identity(#[from] crate::server::MasterError),
    #[error("cannot open the raft log {path}: {err} (is this master still running? stop it first)")]
    OpenLog { path: PathBuf, err: std::io::Error },
    #[error("reading the raft state in {dir}: {err}")]
    Read { dir: PathBuf, err: std::io::Error },
    #[error("the snapshot in {dir} is not a valid store: {err}")]
    Snapshot {
        dir: PathBuf,
        err: crate::store::state::RestoreError,
    },
    #[error("this master has no log and no snapshot: there is nothing to keep")]
    Empty,
    #[error(
        "refusing: {answering} of {voters} voters still answer ({list}), which is a quorum; the cluster is healthy. Remove the dead masters with `skiffctl master rm` instead"
    )]
    QuorumAlive {
        answering: usize,
        voters: usize,
        list: String,
    },
    #[error("moving {from} aside to {to}: {err}")]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        err: std::io::Error,
    },
    #[error("writing the new raft state in {dir}: {err}")]
    Write { dir: PathBuf, err: std::io::Error },
    #[error("backup from {addr}: {reason}")]
    Backup { addr: String, reason: String },
    #[error("reading backup {path}: {reason}")]
    BackupFile { path: PathBuf, reason: String },
    #[error("{dir} already holds a master; restore into an empty --data-dir")]
    NotEmpty { dir: PathBuf },
}

/// What force-new-cluster kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceReport {
    pub index: u64,
    pub term: u64,
    pub raft_id: u64,
    pub moved_aside: PathBuf,
    pub old_voters: usize,
}

impl std::fmt::Display for ForceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "new cluster of one: master {} keeps everything up to index {} (term {}); the old raft state of {} voter(s) is in {}. Start it with `skiff-master run`, then join new masters.",
            self.raft_id,
            self.index,
            self.term,
            self.old_voters,
            self.moved_aside.display()
        )
    }
}

/// The store, voters and last log id a stopped master has on disk.
struct OnDisk {
    state: StoreState,
    last: LogId,
    voters: Vec<(u64, String)>,
}

async fn read_on_disk(raft_dir: &Path) -> Result<OnDisk, RecoveryError> {
    let read = |err| RecoveryError::Read {
        dir: raft_dir.to_owned(),
        err,
    };
    let mut log = open_migrating(raft_dir)
        .await
        .map_err(|err| RecoveryError::OpenLog {
            path: raft_dir.join(LOG_DIR),
            err,
        })?;
    let snap_dir = raft_dir.join("snapshots");
    let snapshot = StateMachine::read_snapshot(&snap_dir).map_err(read)?;
    let (mut state, mut membership, mut last) = match snapshot {
        Some((meta, data)) => (
            StoreState::decode(&data).map_err(|err| RecoveryError::Snapshot {
                dir: snap_dir.clone(),
                err,
            })?,
            Some(meta.last_membership.membership().clone()),
            meta.last_log_id,
        ),
        None => (StoreState::default(), None, None),
    };
    let log_state = log.get_log_state().await.map_err(read)?;
    let from = last.map_or(0, |l| l.index() + 1);
    if let Some(end) = log_state.last_log_id {
        let entries = log
            .try_get_log_entries(from..=end.index())
            .await
            .map_err(read)?;
        for e in entries {
            let index = e.log_id.index();
            match &e.payload {
                EntryPayload::Normal(p) => {
                    execute(&mut state, p.command(), index, p.proposed_at_ms);
                }
                EntryPayload::Membership(m) => {
                    membership = Some(m.clone());
                    state.set_revision(index);
                }
                EntryPayload::Blank => state.set_revision(index),
            }
            last = Some(e.log_id);
        }
    }
    let last = last.ok_or(RecoveryError::Empty)?;
    let voters = membership
        .map(|m| {
            let ids: BTreeSet<u64> = m.voter_ids().collect();
            ids.into_iter()
                .map(|id| {
                    (
                        id,
                        m.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(OnDisk {
        state,
        last,
        voters,
    })
}

/// Moves `raft_dir` aside and writes a fresh raft state that continues at `last`
/// with `me` as the only voter.
async fn seed(
    raft_dir: &Path,
    me: u64,
    addr: &str,
    state: &StoreState,
    last: LogId,
) -> Result<PathBuf, RecoveryError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = raft_dir.with_file_name(format!("raft.before-force-{stamp}"));
    if raft_dir.exists() {
        std::fs::rename(raft_dir, &aside).map_err(|err| RecoveryError::MoveAside {
            from: raft_dir.to_owned(),
            to: aside.clone(),
            err,
        })?;
    }
    let write = |err| RecoveryError::Write {
        dir: raft_dir.to_owned(),
        err,
    };
    std::fs::create_dir_all(raft_dir.join("snapshots")).map_err(write)?;
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(
        me,
        BasicNode {
            addr: addr.to_owned(),
        },
    );
    let voters: BTreeSet<u64> = [me].into();
    let membership = Membership::new(vec![voters], nodes)
        .map_err(|e| write(std::io::Error::other(e.to_string())))?;
    let meta = openraft::alias::SnapshotMetaOf::<TypeConfig> {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
    };
    StateMachine::write_snapshot(&raft_dir.join("snapshots"), &meta, &state.encode())
        .map_err(write)?;
    let log = LogStore::open(&raft_dir.join(LOG_DIR)).map_err(write)?;
    log.seed(
        last,
        openraft::impls::Vote::new(last.leader_id.term + 1, me),
    )
    .await
    .map_err(write)?;
    Ok(aside)
}

/// Recovers a cluster that lost quorum from this (stopped) master's data.
pub async fn force_new_cluster(
    data_dir: &Path,
    tls: Option<ClientTlsConfig>,
) -> Result<ForceReport, RecoveryError> {
    let identity = Identity::load(data_dir)?.ok_or_else(|| RecoveryError::NoMaster {
        dir: data_dir.to_owned(),
    })?;
    let raft_dir = data_dir.join("raft");
    let disk = read_on_disk(&raft_dir).await?;
    // Who still answers? This master is stopped; count it as one that answers.
    let net = Network::new(DialTls::fixed(tls));
    let mut answering = vec![format!("{} (this master)", identity.raft_id)];
    for (id, addr) in &disk.voters {
        if *id == identity.raft_id || addr.is_empty() {
            continue;
        }
        let Ok(ch) = net.channel(addr) else { continue };
        let mut client = RaftTransportClient::new(ch);
        let mut req = tonic::Request::new(pb::MasterStatusRequest { read_index: false });
        req.set_timeout(Duration::from_secs(2));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), client.status(req)).await {
            answering.push(format!("{id} at {addr}"));
        }
    }
    let voters = disk.voters.len().max(1);
    if answering.len() > voters / 2 && voters > 1 {
        return Err(RecoveryError::QuorumAlive {
            answering: answering.len(),
            voters,
            list: answering.join(", "),
        });
    }
    let moved_aside = seed(
        &raft_dir,
        identity.raft_id,
        &identity.advertise,
        &disk.state,
        disk.last,
    )
    .await?;
    tracing::warn!(
        index = disk.last.index(),
        term = disk.last.leader_id.term,
        "forced a new cluster"
    );
    Ok(ForceReport {
        index: disk.last.index(),
        term: disk.last.leader_id.term,
        raft_id: identity.raft_id,
        moved_aside,
        old_voters: disk.voters.len(),
    })
}

/// Streams a backup from the master at `addr` into `out`; returns its revision.
pub async fn backup(
    addr: &str,
    out: &Path,
    tls: Option<ClientTlsConfig>,
) -> Result<u64, RecoveryError> {
    use futures::StreamExt;
    let err = |reason: String| RecoveryError::Backup {
        addr: addr.to_owned(),
        reason,
    };
    let ch = Network::new(DialTls::fixed(tls))
        .channel(addr)
        .map_err(|e| err(e.to_string()))?;
    let mut client = skiff_proto::v1::cluster_api_client::ClusterApiClient::new(ch)
        .max_decoding_message_size(64 << 20);
    let mut stream = client
        .backup(pb::BackupRequest {})
        .await
        .map_err(|s| err(s.message().to_owned()))?
        .into_inner();
    let mut data = Vec::new();
    let mut revision = 0;
    while let Some(chunk) = stream.next().await {
        let c = chunk.map_err(|s| err(s.message().to_owned()))?;
        revision = c.revision;
        data.extend_from_slice(&c.data);
    }
    // Check before writing: a backup that does not decode is no backup.
    StoreState::decode(&data).map_err(|e| err(format!("the master sent an invalid store: {e}")))?;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &data)
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| err(format!("writing {}: {e}", out.display())))?;
    Ok(revision)
}

/// Makes a new single-master cluster in an empty `data_dir` from a backup file.
pub async fn restore(
    data_dir: &Path,
    file: &Path,
    advertise: &str,
) -> Result<ForceReport, RecoveryError> {
    if Identity::load(data_dir)?.is_some() {
        return Err(RecoveryError::NotEmpty {
            dir: data_dir.to_owned(),
        });
    }
    let bad = |reason: String| RecoveryError::BackupFile {
        path: file.to_owned(),
        reason,
    };
    let data = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let state = StoreState::decode(&data).map_err(|e| bad(e.to_string()))?;
    let raft_id = loop {
        let id = rand::random::<u64>() >> 12;
        if id != 0 {
            break id;
        }
    };
    let identity = Identity {
        raft_id,
        cluster_id: state.cluster().map(|c| c.id.clone()).unwrap_or_default(),
        advertise: advertise.to_owned(),
    };
    let revision = state.revision().max(1);
    let last = openraft::LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: raft_id,
        },
        revision,
    );
    let moved_aside = seed(&data_dir.join("raft"), raft_id, advertise, &state, last).await?;
    identity.save(data_dir)?;
    Ok(ForceReport {
        index: revision,
        term: 1,
        raft_id,
        moved_aside,
        old_voters: 0,
    })
}
