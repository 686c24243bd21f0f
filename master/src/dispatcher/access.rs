//! Who may open a dispatcher session, and as which node. With mTLS the caller must hold
//! a worker certificate of this cluster (not revoked) and the session belongs to the
//! node its certificate names: an agent cannot speak for another node. That node must
//! still be a member (the session checks the store). On a master
//! started with `--insecure` (tests) nothing proves identity: the node is the one named
//! in the `skiff-node-id` metadata, else the hostname in its `Register`.

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Status, Streaming};

use super::service::{Authenticate, SessionIdentity};
use crate::api::auth::{Guard, Role};

/// Metadata key naming the node to an insecure master (the agent sets it only when it
/// has no certificate).
pub const NODE_ID_METADATA: &str = "skiff-node-id";

/// The session check for a master with `guard` (open when `--insecure`).
pub fn authenticate(guard: Guard) -> Authenticate {
    Arc::new(move |req: &Request<Streaming<pb::AgentMessage>>| identify(&guard, req))
}

fn identify<T>(guard: &Guard, req: &Request<T>) -> Result<SessionIdentity, Status> {
    let claimed = req
        .metadata()
        .get(NODE_ID_METADATA)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Status::invalid_argument("skiff-node-id metadata is not ASCII"))
        })
        .transpose()?
        .filter(|id| !id.is_empty());
    match guard.check(req, &[Role::Worker])? {
        Some(caller) => match claimed {
            Some(id) if id != caller.node_id => Err(Status::permission_denied(format!(
                "the certificate belongs to node {}; a session for node {id} is refused",
                caller.node_id
            ))),
            _ => Ok(SessionIdentity::Certified {
                node_id: caller.node_id,
                serial: caller.serial,
            }),
        },
        None => Ok(claimed.map_or(SessionIdentity::FromRegister, SessionIdentity::Node)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Caller;

    fn guard_with(role: Role, node: &str) -> Guard {
        let node = node.to_owned();
        Guard::with(Arc::new(move |_: &http::Extensions, _| {
            Ok(Caller {
                node_id: node.clone(),
                role,
                serial: "01".into(),
            })
        }))
    }

    fn request(claim: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(c) = claim {
            r.metadata_mut()
                .insert(NODE_ID_METADATA, c.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn a_worker_certificate_names_the_node() {
        let g = guard_with(Role::Worker, "node-a");
        let certified = SessionIdentity::Certified {
            node_id: "node-a".into(),
            serial: "01".into(),
        };
        assert_eq!(identify(&g, &request(None)).expect("admitted"), certified);
        assert_eq!(
            identify(&g, &request(Some("node-a"))).expect("same node"),
            certified
        );
    }

    #[test]
    fn a_worker_cannot_speak_for_another_node() {
        let g = guard_with(Role::Worker, "node-a");
        let err = identify(&g, &request(Some("node-b"))).expect_err("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("node-a"), "{}", err.message());
    }

    #[test]
    fn admin_and_manager_certificates_are_refused() {
        for role in [Role::Admin, Role::Manager] {
            let err = identify(&guard_with(role, "x"), &request(None)).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{role:?}");
        }
    }

    #[test]
    fn an_insecure_master_takes_the_metadata_or_the_register() {
        let g = Guard::open();
        assert_eq!(
            identify(&g, &request(Some("n7"))).expect("admitted"),
            SessionIdentity::Node("n7".into())
        );
        assert_eq!(
            identify(&g, &request(None)).expect("admitted"),
            SessionIdentity::FromRegister
        );
    }
}
