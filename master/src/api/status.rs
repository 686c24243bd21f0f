//! The one mapping from the master's domain errors to gRPC statuses. Not-leader is
//! `UNAVAILABLE` with the leader's address in the `skiff-leader` metadata, which
//! clients and agents follow; a compare-and-swap conflict is `ABORTED` (read again,
//! retry); an outcome lost in a leader change is `UNAVAILABLE` marked
//! `skiff-outcome: unknown` (retry with the same request id).

use tonic::Status;

use crate::raft::{ProposeError, RaftNodeError};
use crate::store::{ApplyError, WatchError};

/// Metadata key naming the leader's address on a not-leader status.
pub const LEADER_METADATA: &str = "skiff-leader";
/// Metadata key marking a write whose outcome is unknown.
pub const OUTCOME_METADATA: &str = "skiff-outcome";

/// "Not the leader; go there."
pub fn not_leader(leader: Option<String>) -> Status {
    let mut status = Status::unavailable(format!(
        "this master is not the leader; the leader is {}",
        leader
            .as_deref()
            .unwrap_or("not known yet (an election is running): retry shortly")
    ));
    if let Some(v) = leader.and_then(|l| l.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    status
}

/// The leader address a not-leader status carries.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// True when the status says a write may or may not have committed.
pub fn outcome_unknown(status: &Status) -> bool {
    status
        .metadata()
        .get(OUTCOME_METADATA)
        .is_some_and(|v| v.as_bytes() == b"unknown")
}

pub fn from_apply(err: &ApplyError) -> Status {
    match err {
        ApplyError::Conflict { .. } => Status::aborted(err.to_string()),
        ApplyError::EmptyMutation { .. }
        | ApplyError::MissingId { .. }
        | ApplyError::EmptyCommand => Status::invalid_argument(err.to_string()),
    }
}

pub fn from_propose(err: &ProposeError) -> Status {
    match err {
        ProposeError::Rejected(e) => from_apply(e),
        ProposeError::NotLeader { leader } => not_leader(leader.clone()),
        ProposeError::Unknown => {
            let mut s = Status::unavailable(err.to_string());
            s.metadata_mut().insert(
                OUTCOME_METADATA,
                tonic::metadata::MetadataValue::from_static("unknown"),
            );
            s
        }
        ProposeError::Unavailable(_) => Status::unavailable(err.to_string()),
    }
}

pub fn from_raft(err: RaftNodeError) -> Status {
    match err {
        RaftNodeError::NotLeader { leader } => not_leader(leader),
        RaftNodeError::Membership(_) => Status::failed_precondition(err.to_string()),
        RaftNodeError::Config(_) | RaftNodeError::Initialize(_) => {
            Status::invalid_argument(err.to_string())
        }
        RaftNodeError::Storage { .. } | RaftNodeError::Start(_) => {
            Status::internal(err.to_string())
        }
    }
}

pub fn from_watch(err: &WatchError) -> Status {
    Status::out_of_range(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    #[test]
    fn not_leader_carries_the_address_and_round_trips() {
        let s = from_propose(&ProposeError::NotLeader {
            leader: Some("127.0.0.1:7700".into()),
        });
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7700"));
        assert!(s.message().contains("127.0.0.1:7700"));
        assert!(!outcome_unknown(&s));
    }

    #[test]
    fn conflicts_abort_and_unknown_outcomes_are_marked() {
        let c = from_propose(&ProposeError::Rejected(ApplyError::Conflict {
            kind: Kind::Service,
            id: "s1".into(),
            expected: 3,
            found: 5,
        }));
        assert_eq!(c.code(), tonic::Code::Aborted);
        assert!(c.message().contains("s1"));
        let u = from_propose(&ProposeError::Unknown);
        assert!(outcome_unknown(&u));
    }
}
