//! Watch: a bounded ring of recent change events plus a broadcast of new ones, so a
//! client can resume after any revision still in the ring (etcd-style), and is told to
//! re-list when it asks for one that fell out.

use std::collections::VecDeque;
use std::sync::Arc;

use skiff_proto::v1 as pb;
use tokio::sync::broadcast;

/// Events kept for resuming watches.
pub const DEFAULT_HISTORY: usize = 50_000;

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum WatchItem {
    Event(Arc<pb::WatchEvent>),
    /// The whole store was replaced (a snapshot was installed) at this revision: the
    /// subscriber must re-list.
    Reset(u64),
}

/// A watch that cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error(
        "revision {requested} is compacted: events are kept after revision {oldest} only; list the objects again and watch from the revision the list returns"
    )]
    Compacted { requested: u64, oldest: u64 },
    #[error(
        "the store was replaced by a snapshot at revision {0}; list the objects again and watch from there"
    )]
    Reset(u64),
}

/// The ring and the broadcast; callers hold the store's lock order (state, then hub).
#[derive(Debug)]
pub struct Hub {
    history: VecDeque<Arc<pb::WatchEvent>>,
    capacity: usize,
    /// Every event with a revision above this one is in `history`.
    complete_after: u64,
    latest: u64,
    tx: broadcast::Sender<WatchItem>,
}

impl Hub {
    pub fn new(capacity: usize, revision: u64) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Hub {
            history: VecDeque::new(),
            capacity: capacity.max(1),
            complete_after: revision,
            latest: revision,
            tx,
        }
    }

    /// Records and broadcasts the events of one applied command.
    pub fn publish(&mut self, revision: u64, events: Vec<pb::WatchEvent>) {
        self.latest = self.latest.max(revision);
        for e in events {
            let e = Arc::new(e);
            if self.history.len() == self.capacity
                && let Some(old) = self.history.pop_front()
            {
                self.complete_after = old.revision;
            }
            self.history.push_back(e.clone());
            // No receivers is fine.
            let _ = self.tx.send(WatchItem::Event(e));
        }
    }

    /// The store was replaced by a snapshot.
    pub fn reset(&mut self, revision: u64) {
        self.history.clear();
        self.complete_after = revision;
        self.latest = revision;
        let _ = self.tx.send(WatchItem::Reset(revision));
    }

    /// Events after `after` still in the ring, and a receiver for the ones to come.
    /// `after == 0` means "from now".
    pub fn subscribe(
        &self,
        after: u64,
    ) -> Result<(Vec<Arc<pb::WatchEvent>>, broadcast::Receiver<WatchItem>), WatchError> {
        let rx = self.tx.subscribe();
        if after == 0 || after >= self.latest {
            return Ok((Vec::new(), rx));
        }
        self.backlog(after).map(|b| (b, rx))
    }

    /// Events after `after` from the ring (for a subscriber that lagged).
    pub fn backlog(&self, after: u64) -> Result<Vec<Arc<pb::WatchEvent>>, WatchError> {
        if after < self.complete_after {
            return Err(WatchError::Compacted {
                requested: after,
                oldest: self.complete_after,
            });
        }
        let start = self.history.partition_point(|e| e.revision <= after);
        Ok(self.history.range(start..).cloned().collect())
    }
}
