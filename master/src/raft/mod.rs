//! Raft: openraft wired to skiff's store, a raft-log log and a gRPC transport. Nothing
//! outside this module names an openraft type; callers use `RaftNode`.
//!
//! ```text
//!  propose(Command) ──► RaftNode ──(follower: RaftTransport.Propose to the leader)──┐
//!                         │ leader: client_write(Proposal)                          │
//!                         ▼                                                         │
//!        LogStore (raft-log, group commit)   ◄── replication ──► peers (network.rs) │
//!                         ▼ committed                                               │
//!        StateMachine ──► Store::apply ──► Outcome {revision, result} ◄─────────────┘
//! ```
//!
//! ## Limitations
//! - Snapshots are built in memory (the whole store, prost-encoded) and sent whole in
//!   1 MiB chunks: fine for the store sizes of a skiff cluster, not for gigabytes.
//! - A proposal forwarded by a follower whose answer is lost in a leader change has an
//!   unknown outcome; clients that retry set a request id (the store dedupes).

pub mod log_migrate;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, Config, SnapshotPolicy};
use prost::Message;
use skiff_proto::v1 as pb;
use tokio::sync::watch;

use crate::store::{ApplyError, Store};

pub use openraft::impls::BasicNode;

/// A raft log entry's application data: one store command and the proposer's clock.
///
/// The command is prost-encoded once, when the proposal is made (or as it arrives from
/// the leader), and kept beside the decoded form: the log, the replication stream and
/// the state machine all share one `Arc`, so an entry is neither re-encoded per follower
/// nor decoded again to be applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    command: Arc<pb::Command>,
    encoded: Arc<[u8]>,
    pub proposed_at_ms: i64,
}

impl Proposal {
    pub fn new(command: pb::Command, proposed_at_ms: i64) -> Self {
        let encoded = command.encode_to_vec().into();
        Proposal {
            command: Arc::new(command),
            encoded,
            proposed_at_ms,
        }
    }

    pub fn command(&self) -> &pb::Command {
        &self.command
    }

    /// Size of the encoded command.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    /// The command, cloned only if another holder still shares it.
    pub fn into_command(self) -> pb::Command {
        Arc::unwrap_or_clone(self.command)
    }
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command of {} mutation(s), request id {:?}",
            self.command.mutations.len(),
            self.command.request_id
        )
    }
}

/// The command's bytes on the wire and on disk: a length and the bytes (postcard writes
/// a `Vec<u8>` the same way, so logs written before this type still read).
struct CommandBytes<'a>(&'a [u8]);

impl serde::Serialize for CommandBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct OwnedCommandBytes(Vec<u8>);

impl<'de> serde::Deserialize<'de> for OwnedCommandBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OwnedCommandBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded command")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(OwnedCommandBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(OwnedCommandBytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(OwnedCommandBytes(v))
            }
        }
        d.deserialize_bytes(Visit)
    }
}

#[derive(serde::Serialize)]
struct ProposalWire<'a> {
    command: CommandBytes<'a>,
    proposed_at_ms: i64,
}

#[derive(serde::Deserialize)]
struct ProposalWireOwned {
    command: OwnedCommandBytes,
    proposed_at_ms: i64,
}

impl serde::Serialize for Proposal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ProposalWire {
            command: CommandBytes(&self.encoded),
            proposed_at_ms: self.proposed_at_ms,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Proposal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = ProposalWireOwned::deserialize(d)?;
        let command =
            pb::Command::decode(w.command.0.as_slice()).map_err(serde::de::Error::custom)?;
        Ok(Proposal {
            command: Arc::new(command),
            encoded: w.command.0.into(),
            proposed_at_ms: w.proposed_at_ms,
        })
    }
}

/// What applying an entry answered.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub revision: u64,
    pub result: Result<(), ApplyError>,
}

impl Outcome {
    fn blank(revision: u64) -> Self {
        Outcome {
            revision,
            result: Ok(()),
        }
    }
}

openraft::declare_raft_types!(
    /// skiff's raft types: store commands in, outcomes out, masters addressed by one
    /// gRPC address.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        Node = BasicNode,
);

/// The openraft handle over our storage.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;

/// Raft timing and compaction settings.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the snapshot, for followers that lag a little.
    pub keep_logs: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            snapshot_every: 5000,
            keep_logs: 1000,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RaftSettings {
    fn openraft_config(&self) -> Result<Config, RaftNodeError> {
        let config = Config {
            cluster_name: "skiff".into(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            // Without pre-vote a rejoining master's higher term would depose a healthy leader.
            enable_pre_vote: Some(true),
            // A restarted leader stands for election like any master. openraft's default
            // lets it resume in its old term at once, which loses acknowledged writes: it
            // may have sent followers entries it had not written itself when it was
            // killed, then reuse their (term, index) for new entries (followers keep
            // theirs as "the same"); and its state machine (in memory, rebuilt up to the
            // persisted commit index) may be behind what it acknowledged. Seen as
            // `twenty_leader_kills...` failing about once in 25 runs.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| RaftNodeError::Config(e.to_string()))
    }
}

/// Raft could not start or a membership operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    #[error("invalid raft settings: {0}")]
    Config(String),
    #[error("opening raft storage in {path}: {err}")]
    Storage {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error("starting raft: {0}")]
    Start(String),
    #[error("initializing the cluster: {0}")]
    Initialize(String),
    #[error("changing membership: {0}")]
    Membership(String),
    #[error("this master is not the leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
}

/// Why a proposal did not commit.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProposeError {
    /// The store refused the command (compare-and-swap, validation): act on it.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// This master does not lead; send it to `leader` (address), if known.
    #[error("this master is not the leader; the leader is {}", leader.as_deref().unwrap_or("not known yet"))]
    NotLeader { leader: Option<String> },
    /// The leader changed while the command was in flight: it may or may not have
    /// committed. Retry with the same request id.
    #[error(
        "leadership changed while the command was in flight; it may have committed: retry with the same request id"
    )]
    Unknown,
    /// Raft has stopped or the leader could not be reached.
    #[error("raft unavailable: {0}")]
    Unavailable(String),
}

/// Who leads, as this master knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderInfo {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub term: u64,
    /// True when this master is the leader.
    pub is_self: bool,
}

/// A started raft node: the openraft handle, the store it applies to, and the client
/// side of the transport (for forwarding proposals).
#[derive(Clone)]
pub struct RaftNode {
    pub raft: Raft,
    pub store: Arc<Store>,
    pub id: u64,
    network: network::Network,
    leader: watch::Receiver<LeaderInfo>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RaftNode {
    /// Opens storage in `dir` (`log/`, `snapshots/`) and starts raft.
    pub async fn start(
        id: u64,
        dir: &Path,
        settings: &RaftSettings,
        network: network::Network,
        history: usize,
    ) -> Result<Self, RaftNodeError> {
        let config = Arc::new(settings.openraft_config()?);
        let storage = |err| RaftNodeError::Storage {
            path: dir.to_owned(),
            err,
        };
        std::fs::create_dir_all(dir).map_err(storage)?;
        let log = log_migrate::open_migrating(dir).await.map_err(storage)?;
        let store = Store::new(history);
        let sm = state_machine::StateMachine::new(Arc::clone(&store), &dir.join("snapshots"))
            .map_err(storage)?;
        let raft = Raft::new(id, config, network.clone(), log, sm)
            .await
            .map_err(|e| RaftNodeError::Start(e.to_string()))?;
        let leader = leader_watch(&raft, id);
        Ok(RaftNode {
            raft,
            store,
            id,
            network,
            leader,
        })
    }

    /// Makes this node the single voter of a new cluster.
    pub async fn initialize(&self, addr: &str) -> Result<(), RaftNodeError> {
        let mut members = BTreeMap::new();
        members.insert(
            self.id,
            BasicNode {
                addr: addr.to_owned(),
            },
        );
        self.raft
            .initialize(members)
            .await
            .map_err(|e| RaftNodeError::Initialize(e.to_string()))
    }

    /// Leader changes.
    pub fn leader(&self) -> watch::Receiver<LeaderInfo> {
        self.leader.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.leader.borrow().is_self
    }

    /// Commits a command and returns the revision it applied at.
    pub async fn propose(&self, command: pb::Command) -> Result<u64, ProposeError> {
        let proposal = Proposal::new(command, now_ms());
        match self.raft.client_write(proposal.clone()).await {
            Ok(resp) => resp
                .data
                .result
                .map(|()| resp.data.revision)
                .map_err(ProposeError::from),
            Err(err) => {
                if let Some(openraft::errors::ClientWriteError::LogEntryDiscarded(_)) =
                    err.api_error()
                {
                    return Err(ProposeError::Unknown);
                }
                if let Some(fwd) = err.forward_to_leader() {
                    let leader = fwd.leader_node.as_ref().map(|n| n.addr.clone());
                    let Some(addr) = leader else {
                        return Err(ProposeError::NotLeader { leader: None });
                    };
                    return self
                        .network
                        .forward_proposal(&addr, proposal.into_command())
                        .await;
                }
                Err(ProposeError::Unavailable(err.to_string()))
            }
        }
    }

    /// Commits a command only if this master leads (no forwarding).
    pub async fn propose_local(&self, command: pb::Command) -> Result<u64, ProposeError> {
        let proposal = Proposal::new(command, now_ms());
        match self.raft.client_write(proposal).await {
            Ok(resp) => resp
                .data
                .result
                .map(|()| resp.data.revision)
                .map_err(ProposeError::from),
            Err(err) => {
                if let Some(openraft::errors::ClientWriteError::LogEntryDiscarded(_)) =
                    err.api_error()
                {
                    return Err(ProposeError::Unknown);
                }
                if let Some(fwd) = err.forward_to_leader() {
                    return Err(ProposeError::NotLeader {
                        leader: fwd.leader_node.as_ref().map(|n| n.addr.clone()),
                    });
                }
                Err(ProposeError::Unavailable(err.to_string()))
            }
        }
    }

    /// Waits until reads on this master see every write committed before the call
    /// (read index through the leader; a follower asks the leader and waits to apply).
    pub async fn linearize(&self) -> Result<(), ProposeError> {
        match self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match err.forward_to_leader() {
                Some(fwd) => {
                    let Some(addr) = fwd.leader_node.as_ref().map(|n| n.addr.clone()) else {
                        return Err(ProposeError::NotLeader { leader: None });
                    };
                    let index = self.network.leader_read_index(&addr).await?;
                    let mut revs = self.store.revisions();
                    let wait = revs.wait_for(|r| *r >= index);
                    tokio::time::timeout(Duration::from_secs(5), wait)
                        .await
                        .map_err(|_| {
                            ProposeError::Unavailable(format!(
                                "this master did not catch up to index {index} within 5 s"
                            ))
                        })?
                        .map_err(|_| ProposeError::Unavailable("store closed".into()))?;
                    Ok(())
                }
                None => Err(ProposeError::Unavailable(err.to_string())),
            },
        }
    }

    /// Adds a master: learner first (waits until it has caught up), then voter.
    /// Must run on the leader.
    pub async fn add_master(&self, id: u64, addr: &str) -> Result<(), RaftNodeError> {
        let not_leader = |leader: Option<String>| RaftNodeError::NotLeader { leader };
        let node = BasicNode {
            addr: addr.to_owned(),
        };
        if let Err(err) = self.raft.add_learner(id, node, true).await {
            if let Some(fwd) = err.forward_to_leader() {
                return Err(not_leader(fwd.leader_node.as_ref().map(|n| n.addr.clone())));
            }
            return Err(RaftNodeError::Membership(format!(
                "adding {id} ({addr}) as learner: {err}"
            )));
        }
        let ids: BTreeSet<u64> = [id].into();
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(|e| {
                RaftNodeError::Membership(format!("promoting {id} ({addr}) to voter: {e}"))
            })?;
        Ok(())
    }

    /// Removes a master from the membership (voter and node entry).
    pub async fn remove_master(&self, id: u64) -> Result<(), RaftNodeError> {
        let ids: BTreeSet<u64> = [id].into();
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(|e| RaftNodeError::Membership(format!("removing voter {id}: {e}")))?;
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await
            .map_err(|e| RaftNodeError::Membership(format!("removing node {id}: {e}")))?;
        Ok(())
    }

    /// The masters in the membership: (id, addr, voter).
    pub fn masters(&self) -> Vec<(u64, String, bool)> {
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let voters: BTreeSet<u64> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone(), voters.contains(id)))
            .collect()
    }

    /// A copy of the current raft metrics as plain numbers.
    pub fn status(&self) -> pb::MasterStatusResponse {
        let m = self.raft.metrics().borrow_watched().clone();
        pb::MasterStatusResponse {
            raft_id: self.id,
            cluster_id: self
                .store
                .read(|s| s.cluster().map(|c| c.id.clone()).unwrap_or_default()),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index()),
            leader_id: m.current_leader.unwrap_or(0),
            voters: m.membership_config.membership().voter_ids().collect(),
            read_index: 0,
        }
    }

    /// Replication progress per master, on the leader: id → matched index.
    pub fn matched(&self) -> BTreeMap<u64, u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        m.replication
            .map(|r| {
                r.into_iter()
                    .map(|(id, l)| (id, l.map_or(0, |l| l.index())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Hands leadership to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RaftNodeError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| RaftNodeError::Membership(format!("transferring leadership to {to}: {e}")))
    }

    /// Stops raft.
    pub async fn shutdown(&self) {
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(%err, "raft shutdown");
        }
    }

    /// The client side of the transport (shared channels).
    pub fn network(&self) -> &network::Network {
        &self.network
    }
}

/// Follows raft's server metrics (they change with the vote, state or membership, not
/// with every commit as the full metrics do) and publishes who leads.
fn leader_watch(raft: &Raft, me: u64) -> watch::Receiver<LeaderInfo> {
    let (tx, rx) = watch::channel(LeaderInfo::default());
    let mut metrics = raft.server_metrics();
    tokio::spawn(async move {
        loop {
            let info = {
                let m = metrics.borrow_and_update();
                let id = m.current_leader;
                let addr = id.and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                });
                LeaderInfo {
                    id,
                    addr,
                    term: m.vote.leader_id.term,
                    is_self: id == Some(me) && m.state == openraft::ServerState::Leader,
                }
            };
            tx.send_if_modified(|cur| {
                if *cur == info {
                    false
                } else {
                    *cur = info;
                    true
                }
            });
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}
