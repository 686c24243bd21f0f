//! The leader's controllers: level-triggered passes over the store, woken by every
//! applied change, by the orchestrator's timers and by heartbeat deadlines, that write
//! what the cluster should look like next. They may run on a stale snapshot or be
//! killed at any moment: every write is compare-and-swap, and the next pass redoes
//! whatever did not land.
//!
//! ```text
//!  leader watch ── becomes leader ──► linearize (see every earlier write)
//!                                     leader_since = now
//!                                     loop {
//!                                       snapshot + heartbeats ─► pass() (pure) ─► writes
//!                                       wait: store revision │ wake_at │ safety tick
//!                                       (none after a pass that wrote only new subnets)
//!                                     }
//!               ── loses leadership or shutdown ──► the loop is dropped mid-pass (CAS)
//! ```
//!
//! ## Limitations
//! - Every pass reads and clones the whole store (services, tasks, nodes); passes are
//!   at most one per [`MIN_INTERVAL`], which bounds the cost on large clusters.
//! - Heartbeats live in the leader's memory: a new leader gives every node a full
//!   timeout (`Liveness::watching_since_ms`), so a node lost during a leader change is
//!   noticed one timeout after the election.

pub mod network;
pub mod pass;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::dispatcher::service::{DispatchStore, Heartbeats, WriteError, heartbeat_period_ms};
use crate::handle::MasterHandle;

/// At most one pass per this interval (store changes come in bursts: a deploy, a batch
/// of statuses).
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after a write failed for another reason than a conflict (raft unavailable).
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Writes of one pass in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// The controllers of one master; they act only while it leads.
#[derive(Clone, Debug)]
pub struct Controllers {
    handle: MasterHandle,
    heartbeats: Heartbeats,
}

/// How a term of leadership ended.
enum TermEnd {
    /// A write said this master no longer leads.
    NotLeader,
}

impl Controllers {
    /// Controllers over `handle`, judging node liveness from `heartbeats` (the ones the
    /// dispatcher records).
    pub fn new(handle: MasterHandle, heartbeats: Heartbeats) -> Self {
        Controllers { handle, heartbeats }
    }

    /// Runs until `shutdown`: leads while this master is leader, idles otherwise.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut leader = self.handle.leader();
        loop {
            let term = tokio::select! {
                () = shutdown.cancelled() => return,
                got = leader.wait_for(|l| l.is_self) => match got {
                    Ok(l) => l.term,
                    Err(_) => return,
                },
            };
            tracing::info!(term, "leading: controllers started");
            let lost = tokio::select! {
                () = shutdown.cancelled() => return,
                TermEnd::NotLeader = self.lead() => "a write was refused: not the leader",
                _ = leader.wait_for(|l| !l.is_self || l.term != term) => "leadership moved",
            };
            tracing::info!(term, why = lost, "controllers stopped");
            // The leader watch may still say "self" for a moment after a refused write.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(MIN_INTERVAL) => {}
            }
        }
    }

    /// One term of leadership: passes until a write says this master is not the leader
    /// (or the caller drops the future).
    async fn lead(&self) -> TermEnd {
        // Decide nothing before every write of earlier terms is applied here.
        while let Err(err) = self.handle.linearize().await {
            tracing::warn!(%err, "controllers waiting for the store to catch up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let leader_since_ms = now_ms();
        let mut revisions = self.handle.revisions();
        let mut blocked: HashMap<String, String> = HashMap::new();
        // Whether the previous pass ran without the pause (at most one in a row, so a
        // pass that kept asking for new subnets could not spin).
        let mut rushed = false;
        loop {
            let started = Instant::now();
            revisions.borrow_and_update();
            let snapshot = DispatchStore::snapshot(&self.handle);
            let now = now_ms();
            let heartbeats = self.heartbeats.last_seen_ms(now);
            let decided = pass::pass(&pass::Input {
                snapshot: &snapshot,
                heartbeats: &heartbeats,
                leader_since_ms,
                now_ms: now,
            });
            for p in &decided.problems {
                tracing::warn!(revision = snapshot.revision, problem = %p, "controllers");
            }
            let now_blocked: HashMap<String, String> = decided.blocked.iter().cloned().collect();
            for (service, reason) in &now_blocked {
                if blocked.get(service) != Some(reason) {
                    tracing::info!(%service, %reason, "service waits for its dependencies");
                }
            }
            blocked = now_blocked;

            let written = decided.writes.len();
            let results: Vec<Result<(), WriteError>> = futures::stream::iter(decided.writes)
                .map(|w| async move {
                    match self.handle.write(w.command).await {
                        Ok(revision) => {
                            tracing::info!(revision, "{}", w.summary);
                            Ok(())
                        }
                        Err(err) => {
                            tracing::debug!(%err, what = %w.summary, "controller write not applied");
                            Err(err)
                        }
                    }
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
            let all_applied = results.iter().all(Result::is_ok);
            let mut again = false;
            for r in results {
                match r {
                    Ok(()) | Err(WriteError::Conflict(_)) => {}
                    Err(WriteError::NotLeader) => return TermEnd::NotLeader,
                    Err(err @ WriteError::Failed(_)) => {
                        tracing::warn!(%err, "controller write failed; retrying");
                        again = true;
                    }
                }
            }
            if written > 0 {
                tracing::debug!(
                    revision = snapshot.revision,
                    writes = written,
                    took_ms = started.elapsed().as_millis() as u64,
                    "controller pass"
                );
            }
            // Conflicts and successful writes move the revision: the next pass re-reads.
            if decided.run_again_now && all_applied && !rushed {
                // What was written (new subnets) is what the held-back writes wait for.
                // Only when it all applied: a conflict waits the pause like any pass.
                rushed = true;
                continue;
            }
            rushed = false;
            if again {
                tokio::time::sleep(RETRY_AFTER).await;
            } else {
                let safety = Duration::from_millis(heartbeat_period_ms(
                    snapshot.cluster.as_ref().and_then(|c| c.settings.as_ref()),
                ));
                let wake = decided.wake_at.map_or(safety, |at| {
                    Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(safety)
                });
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() {
                        // The store is gone: the master is stopping.
                        std::future::pending::<()>().await;
                    },
                    () = tokio::time::sleep(wake) => {}
                }
            }
            tokio::time::sleep_until((started + MIN_INTERVAL).into()).await;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
