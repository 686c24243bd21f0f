//! Applying one raft log entry's command to the store, as a pure function.
//!
//! `plan` checks every mutation against the state before the command (compare-and-swap
//! on `Meta.version`) and returns the changes or the first refusal: all of a command
//! applies or none of it. `execute` adds request-id dedupe, commits the plan and
//! returns the watch events, each with revision = the entry's raft index.

use std::collections::HashMap;

use skiff_proto::v1 as pb;

use super::object::{Kind, Object, Op};
use super::state::{Answer, StoreState};

/// Why a command was refused. Part of the replicated state (request-id answers), so it
/// is serializable and the same on every master.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    /// The object's version is not the one the writer read (0 = absent).
    #[error(
        "{kind} {id:?} changed: the write expected version {expected}, the store has {found} (0 = absent); read it again and retry"
    )]
    Conflict {
        kind: Kind,
        id: String,
        expected: u64,
        found: u64,
    },
    #[error("mutation {index} of the command has no operation")]
    EmptyMutation { index: usize },
    #[error("mutation {index} puts a {kind} without an id")]
    MissingId { index: usize, kind: Kind },
    #[error("the command has no mutations")]
    EmptyCommand,
}

/// One change a command makes.
#[allow(clippy::large_enum_variant)] // short-lived, moved once into the store
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The object as it will be stored (meta already set).
    Put(Object),
    Delete(Kind, String),
}

/// Checks `command` against `state` and returns what it changes, or why it can't.
/// `index` is the raft index of the entry; `now_ms` the proposer's clock.
pub fn plan(
    state: &StoreState,
    command: &pb::Command,
    index: u64,
    now_ms: i64,
) -> Result<Vec<Change>, ApplyError> {
    if command.mutations.is_empty() {
        return Err(ApplyError::EmptyCommand);
    }
    // Objects already touched by this command: (created_at of the version before the
    // command, whether it exists after the mutations so far).
    let mut touched: HashMap<(Kind, String), (i64, bool)> = HashMap::new();
    let mut changes = Vec::with_capacity(command.mutations.len());
    for (i, m) in command.mutations.iter().enumerate() {
        let Some(op) = &m.op else {
            return Err(ApplyError::EmptyMutation { index: i });
        };
        let op = Op::from_pb(op);
        let (kind, id) = match &op {
            Op::Put(o) => (o.kind(), o.id().to_owned()),
            Op::Delete(k, id) => (*k, id.clone()),
        };
        if id.is_empty() && kind != Kind::Cluster {
            return Err(ApplyError::MissingId { index: i, kind });
        }
        let slot = (
            kind,
            if kind == Kind::Cluster {
                String::new()
            } else {
                id.clone()
            },
        );
        let stored = state.meta_of(kind, &id);
        let found = stored.flatten().map_or(0, |m| m.version);
        // Every mutation is checked against the state before the command.
        if !m.unconditional && m.expected_version != found {
            return Err(ApplyError::Conflict {
                kind,
                id,
                expected: m.expected_version,
                found,
            });
        }
        let created = touched
            .get(&slot)
            .map(|(c, _)| *c)
            .unwrap_or_else(|| stored.flatten().map_or(now_ms, |m| m.created_at_ms));
        match op {
            Op::Put(mut object) => {
                object.set_meta(pb::Meta {
                    version: index,
                    created_at_ms: created,
                    updated_at_ms: now_ms,
                });
                touched.insert(slot, (created, true));
                changes.push(Change::Put(object));
            }
            Op::Delete(kind, id) => {
                let exists = touched
                    .get(&slot)
                    .map_or(stored.is_some(), |(_, exists)| *exists);
                touched.insert(slot, (created, false));
                // Deleting what is absent (unconditionally) changes nothing.
                if exists {
                    changes.push(Change::Delete(kind, id));
                }
            }
        }
    }
    Ok(changes)
}

/// Commits planned changes and returns their watch events.
pub fn commit(state: &mut StoreState, changes: Vec<Change>, index: u64) -> Vec<pb::WatchEvent> {
    let mut events = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            Change::Put(object) => {
                state.put(object.clone());
                events.push(object.into_event(index, pb::watch_event::Action::Put));
            }
            Change::Delete(kind, id) => {
                if let Some(old) = state.delete(kind, &id) {
                    events.push(old.into_event(index, pb::watch_event::Action::Delete));
                }
            }
        }
    }
    state.set_revision(index);
    events
}

/// What applying one command returned: the answer and the watch events it made.
#[derive(Clone, Debug, PartialEq)]
pub struct Executed {
    pub answer: Answer,
    pub events: Vec<pb::WatchEvent>,
    /// True when the request id had been answered before and nothing was applied.
    pub duplicate: bool,
}

/// Applies a command at raft index `index`: answers a remembered request id with its
/// first answer, else plans and commits (all or nothing) and remembers the answer.
pub fn execute(state: &mut StoreState, command: &pb::Command, index: u64, now_ms: i64) -> Executed {
    if !command.request_id.is_empty()
        && let Some(answer) = state.answer(&command.request_id)
    {
        let answer = answer.clone();
        state.set_revision(index);
        return Executed {
            answer,
            events: Vec::new(),
            duplicate: true,
        };
    }
    let (result, events) = match plan(state, command, index, now_ms) {
        Ok(changes) => (Ok(()), commit(state, changes, index)),
        Err(err) => {
            state.set_revision(index);
            (Err(err), Vec::new())
        }
    };
    let answer = Answer {
        revision: index,
        result,
    };
    // Only what applied is remembered: a refused command changed nothing, so running
    // its retry again (a writer re-reading after a conflict) is safe.
    if answer.result.is_ok() {
        state.remember(&command.request_id, answer.clone());
    }
    Executed {
        answer,
        events,
        duplicate: false,
    }
}
