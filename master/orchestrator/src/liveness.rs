//! Node liveness from heartbeats, as a pure function of the nodes' last heartbeat times
//! and the clock. A node is DOWN after `misses` heartbeat periods of silence plus a
//! margin of half a period; it is READY again as soon as a heartbeat is seen.
//!
//! Why the margin: an agent under load (CPU starved, a slow disk stalling its runtime,
//! GC in a container next to it) sends late, and the leader's own loop runs on a tick;
//! without slack a node right at the limit would go DOWN, have its tasks rescheduled,
//! and come back a moment later. With Swarm's numbers (5 s period, 3 misses) a node goes
//! DOWN after 17.5 s of silence: a heartbeat may be 2.5 s late on top of two lost ones
//! without effect. Swarm adds up to 0.5 s of jitter per agent for the same reason.
//! Coming back needs a heartbeat within the last period plus margin (7.5 s), so the
//! two thresholds never overlap and a node can't flap on one late heartbeat.
//!
//! The silence of a node is counted from the later of its last heartbeat and the moment
//! this leader started watching: heartbeats live in the leader's memory, so a new
//! leader gives every node a full timeout before declaring it down.

use skiff_proto::v1::{self as pb, NodeState};

/// Heartbeat settings (`ClusterSettings.heartbeat_period_ms`, `heartbeat_misses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub heartbeat_period_ms: u64,
    pub misses: u32,
    /// When this leader began receiving heartbeats (its term started).
    pub watching_since_ms: i64,
}

/// Swarm's heartbeat period.
pub const DEFAULT_HEARTBEAT_PERIOD_MS: u64 = 5_000;
/// Swarm's number of missed heartbeats before a node is down.
pub const DEFAULT_HEARTBEAT_MISSES: u32 = 3;

impl Liveness {
    /// The settings, with Swarm's defaults where the cluster leaves them at 0.
    pub fn from_settings(
        settings: Option<&pb::ClusterSettings>,
        watching_since_ms: i64,
    ) -> Liveness {
        let period = settings.map_or(0, |s| s.heartbeat_period_ms);
        let misses = settings.map_or(0, |s| s.heartbeat_misses);
        Liveness {
            heartbeat_period_ms: if period == 0 {
                DEFAULT_HEARTBEAT_PERIOD_MS
            } else {
                period
            },
            misses: if misses == 0 {
                DEFAULT_HEARTBEAT_MISSES
            } else {
                misses
            },
            watching_since_ms,
        }
    }

    /// Slack on top of the missed periods: half a period.
    pub fn margin_ms(&self) -> i64 {
        (self.heartbeat_period_ms / 2) as i64
    }

    /// Silence after which a node is DOWN.
    pub fn down_after_ms(&self) -> i64 {
        (self.heartbeat_period_ms as i64).saturating_mul(i64::from(self.misses)) + self.margin_ms()
    }

    /// A heartbeat at most this old brings a DOWN node back.
    pub fn fresh_within_ms(&self) -> i64 {
        self.heartbeat_period_ms as i64 + self.margin_ms()
    }

    fn silence(&self, node: &pb::Node, now_ms: i64) -> i64 {
        now_ms - node.last_heartbeat_ms.max(self.watching_since_ms)
    }
}

/// A node whose state must change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStateChange {
    pub node_id: String,
    /// The version read (compare-and-swap).
    pub expected_version: u64,
    pub from: NodeState,
    pub to: NodeState,
    /// For `Node.state_message`.
    pub message: String,
}

impl NodeStateChange {
    /// The node as it must be written.
    pub fn apply(&self, node: &pb::Node) -> pb::Node {
        let mut n = node.clone();
        n.state = self.to as i32;
        n.state_message = self.message.clone();
        n
    }
}

/// The state changes due at `now_ms`. `nodes` carry `last_heartbeat_ms` as the leader
/// last saw it (the dispatcher keeps heartbeats in memory: copy them in).
pub fn node_health(nodes: &[pb::Node], now_ms: i64, liveness: &Liveness) -> Vec<NodeStateChange> {
    let mut out = Vec::new();
    for n in nodes {
        let state = n.state();
        let silence = liveness.silence(n, now_ms);
        let to = match state {
            NodeState::Ready | NodeState::Unknown | NodeState::Disconnected
                if silence > liveness.down_after_ms() =>
            {
                NodeState::Down
            }
            NodeState::Down
                if n.last_heartbeat_ms >= liveness.watching_since_ms
                    && now_ms - n.last_heartbeat_ms <= liveness.fresh_within_ms() =>
            {
                NodeState::Ready
            }
            _ => continue,
        };
        let message = match to {
            NodeState::Down => format!(
                "no heartbeat for {:.1} s (limit {} missed heartbeats of {:.1} s + {:.1} s margin)",
                silence as f64 / 1000.0,
                liveness.misses,
                liveness.heartbeat_period_ms as f64 / 1000.0,
                liveness.margin_ms() as f64 / 1000.0
            ),
            _ => "heartbeats resumed".to_owned(),
        };
        out.push(NodeStateChange {
            node_id: n.id.clone(),
            expected_version: n.meta.as_ref().map_or(0, |m| m.version),
            from: state,
            to,
            message,
        });
    }
    out
}

/// When [`node_health`] should run next: the moment the first live node would pass its
/// limit if it stays silent.
pub fn next_check(nodes: &[pb::Node], liveness: &Liveness) -> Option<i64> {
    nodes
        .iter()
        .filter(|n| n.state() != NodeState::Down)
        .map(|n| n.last_heartbeat_ms.max(liveness.watching_since_ms) + liveness.down_after_ms() + 1)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: NodeState, last: i64) -> pb::Node {
        pb::Node {
            id: id.into(),
            state: state as i32,
            last_heartbeat_ms: last,
            meta: Some(pb::Meta {
                version: 7,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn swarm(since: i64) -> Liveness {
        Liveness::from_settings(None, since)
    }

    #[test]
    fn down_after_three_missed_periods_plus_half_a_period() {
        let l = swarm(0);
        assert_eq!(l.down_after_ms(), 17_500);
        let nodes = vec![node("a", NodeState::Ready, 100_000)];
        assert!(node_health(&nodes, 117_500, &l).is_empty());
        let changes = node_health(&nodes, 117_501, &l);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to, NodeState::Down);
        assert_eq!(changes[0].expected_version, 7);
        assert_eq!(
            changes[0].message,
            "no heartbeat for 17.5 s (limit 3 missed heartbeats of 5.0 s + 2.5 s margin)"
        );
        assert_eq!(next_check(&nodes, &l), Some(117_501));
    }

    #[test]
    fn late_heartbeats_under_load_never_flap() {
        // Heartbeats arriving up to 17 s apart (three lost, one very late): never down.
        let l = swarm(0);
        let mut last = 0;
        let mut state = NodeState::Ready;
        for step in 0..1_000i64 {
            let now = step * 500;
            if now - last >= 17_000 {
                last = now;
            }
            let n = node("a", state, last);
            for c in node_health(&[n], now, &l) {
                state = c.to;
            }
            assert_eq!(state, NodeState::Ready, "at {now} ms");
        }
    }

    #[test]
    fn a_down_node_returns_on_a_fresh_heartbeat() {
        let l = swarm(0);
        let stale = node("a", NodeState::Down, 10_000);
        assert!(node_health(&[stale], 40_000, &l).is_empty());
        let fresh = node("a", NodeState::Down, 39_000);
        let changes = node_health(&[fresh], 40_000, &l);
        assert_eq!(changes[0].to, NodeState::Ready);
        assert_eq!(changes[0].from, NodeState::Down);
    }

    #[test]
    fn a_new_leader_gives_every_node_a_full_timeout() {
        // The old leader saw nothing for a minute; this one started at 100 s.
        let l = swarm(100_000);
        let nodes = vec![
            node("a", NodeState::Ready, 40_000),
            node("b", NodeState::Disconnected, 0),
        ];
        assert!(node_health(&nodes, 110_000, &l).is_empty());
        let changes = node_health(&nodes, 117_501, &l);
        assert_eq!(changes.len(), 2);
        // A heartbeat from before this leader's time does not bring a node back.
        let old = node("c", NodeState::Down, 99_999);
        assert!(node_health(&[old], 100_001, &l).is_empty());
    }

    #[test]
    fn settings_override_the_defaults() {
        let settings = pb::ClusterSettings {
            heartbeat_period_ms: 1_000,
            heartbeat_misses: 2,
            ..Default::default()
        };
        let l = Liveness::from_settings(Some(&settings), 0);
        assert_eq!(l.down_after_ms(), 2_500);
        let n = node("a", NodeState::Ready, 0);
        assert_eq!(
            node_health(std::slice::from_ref(&n), 2_501, &l)[0]
                .apply(&n)
                .state(),
            NodeState::Down
        );
    }
}
