//! The restart policy: whether, and when, a task that ended gets a successor in its
//! slot. Swarm's rules (`condition` any | on-failure | none, `delay`, `max_attempts`
//! within `window`), counted from the store rather than from the leader's memory, so a
//! leader change forgets nothing:
//! - `Task.attempt` counts restarts of the slot under the current spec; with no window,
//!   a restart is allowed while `attempt < max_attempts`.
//! - With a window, restarts are the slot's tasks (current spec) with `attempt >= 1`
//!   created within `window` before the end of the failed task.
//! - A task lost with its node is replaced at once and costs no attempt: the task did
//!   not fail, its machine did. A task on a drained node is restarted without delay.

use skiff_proto::v1::{self as pb, TaskState, restart_policy::Condition};

use crate::view::View;

/// Swarm's default restart delay when a service sets no restart policy.
pub const DEFAULT_DELAY_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Create the successor at `at` (now or later) with this attempt number.
    Restart { at: i64, attempt: u64 },
    /// Leave the slot ended; the text says why, for people.
    Retire(String),
}

struct Policy {
    condition: Condition,
    delay_ms: u64,
    max_attempts: u64,
    window_ms: u64,
}

fn policy(spec: &pb::ServiceSpec) -> Policy {
    match &spec.restart_policy {
        Some(p) => Policy {
            condition: p.condition(),
            delay_ms: p.delay_ms,
            max_attempts: p.max_attempts,
            window_ms: p.window_ms,
        },
        None => Policy {
            condition: Condition::Any,
            delay_ms: DEFAULT_DELAY_MS,
            max_attempts: 0,
            window_ms: 0,
        },
    }
}

/// Decides for `ended` (the newest task of its slot, ended while wanted running);
/// `slot` is every task of the slot (for the window count); `now_ms` is used for lost
/// and drained tasks.
pub(crate) fn decide(
    ended: &View<'_>,
    slot: &[&View<'_>],
    spec: &pb::ServiceSpec,
    node_drained: bool,
    now_ms: i64,
) -> Decision {
    let p = policy(spec);
    let same_spec = !ended.dirty;
    let attempt = ended.t.attempt;
    if ended.orphaned {
        return Decision::Restart {
            at: now_ms,
            attempt: if same_spec { attempt } else { 0 },
        };
    }
    match p.condition {
        Condition::None => return Decision::Retire("restart condition is none".into()),
        Condition::OnFailure if ended.state == TaskState::Complete => {
            return Decision::Retire(
                "exited successfully and the restart condition is on-failure".into(),
            );
        }
        _ => {}
    }
    if p.max_attempts > 0 {
        let restarts = if !same_spec {
            0
        } else if p.window_ms == 0 {
            attempt
        } else {
            let from = ended.ended_at.saturating_sub(p.window_ms as i64);
            slot.iter()
                .filter(|v| !v.dirty && v.t.attempt >= 1)
                .filter(|v| v.created_at() > from && v.created_at() <= ended.ended_at)
                .count() as u64
        };
        if restarts >= p.max_attempts {
            let within = if p.window_ms > 0 {
                format!(" within {} s", p.window_ms / 1000)
            } else {
                String::new()
            };
            return Decision::Retire(format!(
                "restarted {restarts} times{within}, max_attempts is {}",
                p.max_attempts
            ));
        }
    }
    let at = if node_drained {
        now_ms
    } else {
        ended.ended_at.saturating_add(p.delay_ms as i64)
    };
    Decision::Restart {
        at,
        attempt: if same_spec { attempt + 1 } else { 1 },
    }
}
