//! Who may call what: every RPC checks the caller's certificate role (admin for the
//! cluster API, manager for the raft transport) and that its serial is not revoked.
//! A master started without TLS (`--insecure`, tests of the store only) lets all in.

use std::sync::Arc;

use tonic::{Request, Status};

/// What a certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `skiffctl`: the cluster API.
    Admin,
    /// Another master: the raft transport.
    Manager,
    /// An agent: the dispatcher.
    Worker,
}

/// The caller, as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub node_id: String,
    pub role: Role,
    pub serial: String,
}

/// Checks one request's caller; how depends on whether TLS is on.
pub type Check =
    Arc<dyn Fn(&http::Extensions, Option<Vec<Vec<u8>>>) -> Result<Caller, Status> + Send + Sync>;

/// The access check every service runs first.
#[derive(Clone)]
pub struct Guard {
    check: Option<Check>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.check.is_some() {
            "Guard(mtls)"
        } else {
            "Guard(open)"
        })
    }
}

impl Guard {
    /// Lets every caller in (no TLS).
    pub fn open() -> Self {
        Guard { check: None }
    }

    /// Checks callers with `check` (given the peer's certificate chain, DER).
    pub fn with(check: Check) -> Self {
        Guard { check: Some(check) }
    }

    /// Refuses the request unless its caller has one of `roles`.
    pub fn check<T>(&self, req: &Request<T>, roles: &[Role]) -> Result<Option<Caller>, Status> {
        let Some(check) = &self.check else {
            return Ok(None);
        };
        let certs = req
            .peer_certs()
            .map(|c| c.iter().map(|c| c.as_ref().to_vec()).collect::<Vec<_>>());
        let caller = check(req.extensions(), certs)?;
        if !roles.contains(&caller.role) {
            return Err(Status::permission_denied(format!(
                "certificate of {} has role {:?}; this call needs {}",
                caller.node_id,
                caller.role,
                roles
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        Ok(Some(caller))
    }
}
