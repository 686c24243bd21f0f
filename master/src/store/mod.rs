//! The cluster store: the raft state machine's contents, in memory.
//!
//! ```text
//!  raft log entry (index, Proposal{Command}) ──► apply::execute (pure: dedupe, CAS, all-or-none)
//!        │                                            │ Answer → the proposer
//!        ▼                                            ▼
//!   StoreState (objects + indexes)          watch::Hub (ring + broadcast, revision = index)
//! ```
//!
//! Readers take a short read lock (`Store::read`); the state machine takes the write
//! lock once per entry. Lock order: state, then hub.
//!
//! ## Limitations
//! - Everything is in memory; the store is rebuilt from the last snapshot plus the log
//!   on start. Fine for the thousands of objects a skiff cluster holds.
//! - Watch history is bounded (`watch::DEFAULT_HISTORY` events) and starts afresh when a
//!   snapshot is installed; older resumes are refused with a re-list hint.

pub mod apply;
pub mod object;
pub mod state;
pub mod watch;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use futures::Stream;
use skiff_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;

pub use apply::{ApplyError, Executed};
pub use object::{Kind, Object};
pub use state::{Answer, StoreState};
pub use watch::{WatchError, WatchItem};

/// The store shared by the state machine (writer) and everyone else (readers).
#[derive(Debug)]
pub struct Store {
    state: RwLock<StoreState>,
    hub: Mutex<watch::Hub>,
    revision: tokio::sync::watch::Sender<u64>,
}

impl Store {
    pub fn new(history: usize) -> Arc<Self> {
        let (revision, _) = tokio::sync::watch::channel(0);
        Arc::new(Store {
            state: RwLock::new(StoreState::default()),
            hub: Mutex::new(watch::Hub::new(history, 0)),
            revision,
        })
    }

    /// Runs `f` on the current state under a read lock (keep it short).
    pub fn read<R>(&self, f: impl FnOnce(&StoreState) -> R) -> R {
        f(&self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The revision of the last applied entry.
    pub fn revision(&self) -> u64 {
        self.read(StoreState::revision)
    }

    /// Ticks with the revision after every applied entry.
    pub fn revisions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Applies one command at raft index `index` (the state machine calls this).
    pub fn apply(&self, command: &pb::Command, index: u64, now_ms: i64) -> Answer {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let executed = apply::execute(&mut state, command, index, now_ms);
        self.lock_hub().publish(index, executed.events);
        drop(state);
        self.revision.send_replace(index);
        executed.answer
    }

    /// Moves the revision for a log entry without a command (blank, membership).
    pub fn advance(&self, index: u64) {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.set_revision(index);
        drop(state);
        self.revision.send_replace(index);
    }

    /// Replaces the whole store (snapshot install, restore); watchers are told to re-list.
    pub fn replace(&self, new: StoreState) {
        let revision = new.revision();
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = new;
        self.lock_hub().reset(revision);
        drop(state);
        self.revision.send_replace(revision);
    }

    /// The prost-encoded snapshot of the whole store.
    pub fn encode(&self) -> Vec<u8> {
        self.read(StoreState::encode)
    }

    fn lock_hub(&self) -> std::sync::MutexGuard<'_, watch::Hub> {
        self.hub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Change events after revision `after` (0: from now) of the given kinds (empty:
    /// all), as a stream that ends with an error when the subscriber can't be served.
    pub fn watch(
        self: &Arc<Self>,
        after: u64,
        kinds: Vec<pb::ObjectKind>,
    ) -> Result<
        impl Stream<Item = Result<Arc<pb::WatchEvent>, WatchError>> + Send + 'static,
        WatchError,
    > {
        let (backlog, rx) = self.lock_hub().subscribe(after)?;
        let st = WatchState {
            // Everything of revision `after` was seen already.
            last: (after, usize::MAX),
            pending: backlog.into(),
            rx,
            store: Arc::clone(self),
            kinds,
            done: false,
        };
        Ok(futures::stream::unfold(st, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                if let Some(e) = st.pending.pop_front() {
                    st.last = if e.revision == st.last.0 {
                        (e.revision, st.last.1.saturating_add(1))
                    } else {
                        (e.revision, 1)
                    };
                    if st.kinds.is_empty() || st.kinds.contains(&event_kind(&e)) {
                        return Some((Ok(e), st));
                    }
                    continue;
                }
                match st.rx.recv().await {
                    Ok(WatchItem::Event(e)) => st.pending.push_back(e),
                    Ok(WatchItem::Reset(rev)) => {
                        st.done = true;
                        return Some((Err(WatchError::Reset(rev)), st));
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Catch up from the ring, then keep listening: the events of the
                        // last revision already delivered are skipped by count.
                        let hub = st.store.lock_hub();
                        let (rev, seen) = st.last;
                        match hub.backlog(rev.saturating_sub(1)) {
                            Ok(b) => {
                                let mut skip = seen;
                                st.pending = b
                                    .into_iter()
                                    .filter(|e| {
                                        if e.revision < rev {
                                            false
                                        } else if e.revision == rev && skip > 0 {
                                            skip -= 1;
                                            false
                                        } else {
                                            true
                                        }
                                    })
                                    .collect();
                                st.rx = st.rx.resubscribe();
                            }
                            Err(err) => {
                                st.done = true;
                                drop(hub);
                                return Some((Err(err), st));
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }))
    }
}

struct WatchState {
    /// (revision, events of that revision delivered so far).
    last: (u64, usize),
    pending: VecDeque<Arc<pb::WatchEvent>>,
    rx: tokio::sync::broadcast::Receiver<WatchItem>,
    store: Arc<Store>,
    kinds: Vec<pb::ObjectKind>,
    done: bool,
}

/// The kind of object an event carries.
pub fn event_kind(e: &pb::WatchEvent) -> pb::ObjectKind {
    use pb::watch_event::Object as W;
    match &e.object {
        Some(W::Node(_)) => pb::ObjectKind::Node,
        Some(W::Service(_)) => pb::ObjectKind::Service,
        Some(W::Task(_)) => pb::ObjectKind::Task,
        Some(W::Network(_)) => pb::ObjectKind::Network,
        Some(W::Volume(_)) => pb::ObjectKind::Volume,
        Some(W::Cluster(_)) => pb::ObjectKind::Cluster,
        None => pb::ObjectKind::Unspecified,
    }
}
