//! `MasterHandle`: what the rest of the master (dispatcher, controllers, the cluster
//! API) uses of the replicated store and of raft. Cheap to clone.

use std::sync::{Arc, Mutex};

use futures::Stream;
use skiff_proto::v1 as pb;
use tokio::sync::watch;

use crate::dispatcher::service::{DispatchStore, Snapshot, WriteError};
use crate::raft::{LeaderInfo, ProposeError, RaftNode};
use crate::store::{ApplyError, StoreState, WatchError};

/// The master, as its components see it.
#[derive(Clone)]
pub struct MasterHandle {
    node: RaftNode,
    addr: Arc<str>,
    cache: Arc<Mutex<Option<Arc<Snapshot>>>>,
}

impl std::fmt::Debug for MasterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterHandle")
            .field("raft_id", &self.node.id)
            .field("addr", &self.addr)
            .finish()
    }
}

impl MasterHandle {
    pub fn new(node: RaftNode, addr: &str) -> Self {
        MasterHandle {
            node,
            addr: addr.into(),
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `f` on the store as this master has applied it (may trail the leader; call
    /// `linearize` first for a read that sees every committed write).
    pub fn read<R>(&self, f: impl FnOnce(&StoreState) -> R) -> R {
        self.node.store.read(f)
    }

    /// The revision of the last applied entry.
    pub fn revision(&self) -> u64 {
        self.node.store.revision()
    }

    /// Change events after `after` (0: from now), of `kinds` (empty: all).
    pub fn watch(
        &self,
        after: u64,
        kinds: Vec<pb::ObjectKind>,
    ) -> Result<
        impl Stream<Item = Result<Arc<pb::WatchEvent>, WatchError>> + Send + 'static,
        WatchError,
    > {
        self.node.store.watch(after, kinds)
    }

    /// Ticks with the store revision after every applied entry.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.node.store.revisions()
    }

    /// Commits a command (forwarded to the leader from a follower); returns the
    /// revision it applied at.
    pub async fn propose(&self, command: pb::Command) -> Result<u64, ProposeError> {
        self.node.propose(command).await
    }

    /// Waits until this master's store has every write committed before the call.
    pub async fn linearize(&self) -> Result<(), ProposeError> {
        self.node.linearize().await
    }

    pub fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    /// Who leads; changes as elections happen.
    pub fn leader(&self) -> watch::Receiver<LeaderInfo> {
        self.node.leader()
    }

    /// This master's raft id.
    pub fn raft_id(&self) -> u64 {
        self.node.id
    }

    /// This master's advertised gRPC address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The cluster id (empty until the cluster object is replicated here).
    pub fn cluster_id(&self) -> String {
        self.read(|s| s.cluster().map(|c| c.id.clone()).unwrap_or_default())
    }

    /// The raft node (membership operations for the cluster API).
    pub fn raft(&self) -> &RaftNode {
        &self.node
    }
}

impl DispatchStore for MasterHandle {
    fn snapshot(&self) -> Arc<Snapshot> {
        let revision = self.revision();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = cache.as_ref()
            && s.revision == revision
        {
            return Arc::clone(s);
        }
        let snap = Arc::new(self.read(|s| Snapshot {
            revision: s.revision(),
            nodes: s.nodes().cloned().collect(),
            services: s.services().cloned().collect(),
            tasks: s.tasks().cloned().collect(),
            networks: s.networks().cloned().collect(),
            cluster: s.cluster().cloned(),
        }));
        *cache = Some(Arc::clone(&snap));
        snap
    }

    fn revisions(&self) -> watch::Receiver<u64> {
        MasterHandle::revisions(self)
    }

    async fn write(&self, command: pb::Command) -> Result<u64, WriteError> {
        match self.node.propose_local(command).await {
            Ok(rev) => Ok(rev),
            Err(ProposeError::Rejected(e @ ApplyError::Conflict { .. })) => {
                Err(WriteError::Conflict(e.to_string()))
            }
            Err(ProposeError::NotLeader { .. }) => Err(WriteError::NotLeader),
            Err(e) => Err(WriteError::Failed(e.to_string())),
        }
    }

    fn leader_elsewhere(&self) -> Option<String> {
        let l = self.node.leader().borrow().clone();
        if l.is_self {
            None
        } else {
            Some(l.addr.unwrap_or_default())
        }
    }
}
