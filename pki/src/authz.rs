//! Authorization per RPC: who the caller is comes from its verified client certificate
//! (tonic's `peer_certs`), never from the request body. A caller is refused when it has
//! no certificate, when its certificate is for another cluster, when its serial is in the
//! revocation set (removed nodes), or when its role is not one the call allows.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use tonic::{Request, Status};

use crate::cert::{CertInfo, PeerIdentity, Role, Serial};

/// Serials of certificates that must no longer work (the certificates of removed nodes,
/// `Cluster.revoked_cert_serials`). Cheap to clone; all clones share one set.
#[derive(Clone, Debug, Default)]
pub struct RevocationSet(Arc<RwLock<HashSet<Serial>>>);

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one serial.
    pub fn revoke(&self, serial: Serial) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(serial);
    }

    /// Replaces the whole set (after the store's cluster object changed).
    pub fn replace<I: IntoIterator<Item = Serial>>(&self, serials: I) {
        let new: HashSet<Serial> = serials.into_iter().collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = new;
    }

    /// Whether `serial` is revoked.
    pub fn contains(&self, serial: &Serial) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(serial)
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The identity in the client certificate the TLS layer verified for this request, or
/// `None` when the caller presented none (or it is not a skiff certificate).
pub fn peer_identity<T>(request: &Request<T>) -> Option<PeerIdentity> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    CertInfo::from_der(leaf.as_ref()).ok().map(|i| i.identity)
}

/// Everything in the verified client certificate of this request (for renewal, which
/// keeps the certificate's names: `SignRequest::renewing`). Check the caller with
/// [`Authorizer`] first; this does not consult the revocation set.
pub fn peer_cert_info<T>(request: &Request<T>) -> Option<CertInfo> {
    let certs = request.peer_certs()?;
    CertInfo::from_der(certs.first()?.as_ref()).ok()
}

/// Decides whether a request may proceed. One per server, cloned into each service.
#[derive(Clone, Debug)]
pub struct Authorizer {
    cluster_id: String,
    revoked: RevocationSet,
}

impl Authorizer {
    /// Accepts certificates of `cluster_id` whose serial is not in `revoked`.
    pub fn new(cluster_id: impl Into<String>, revoked: RevocationSet) -> Self {
        Authorizer {
            cluster_id: cluster_id.into(),
            revoked,
        }
    }

    /// The revocation set this authorizer consults.
    pub fn revocations(&self) -> &RevocationSet {
        &self.revoked
    }

    /// Who the caller of `request` is, checked against cluster and revocations.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<PeerIdentity, Status> {
        if let Some(id) = request.extensions().get::<PeerIdentity>() {
            // Already checked by `RequireRole` in front of this service; checking the
            // revocation set again costs a lookup and closes the gap between the two.
            return self.admit(id.clone());
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "this call needs a client certificate signed by the cluster CA; none was presented",
            )
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("the client presented an empty certificate chain")
        })?;
        self.authenticate_der(leaf.as_ref())
    }

    /// Who the holder of the (already TLS-verified) leaf certificate `der` is.
    pub fn authenticate_der(&self, der: &[u8]) -> Result<PeerIdentity, Status> {
        let info = CertInfo::from_der(der).map_err(|err| {
            Status::unauthenticated(format!(
                "the client certificate is not a skiff certificate: {err}"
            ))
        })?;
        self.admit(info.identity)
    }

    fn admit(&self, id: PeerIdentity) -> Result<PeerIdentity, Status> {
        if id.cluster_id != self.cluster_id {
            return Err(Status::permission_denied(format!(
                "certificate of {} belongs to cluster {:?}, this is cluster {:?}",
                id.node_id, id.cluster_id, self.cluster_id
            )));
        }
        if self.revoked.contains(&id.serial) {
            return Err(Status::unauthenticated(format!(
                "certificate {} of {} {} was revoked (the node was removed from the cluster)",
                id.serial, id.role, id.node_id
            )));
        }
        Ok(id)
    }

    /// The caller, if its role is one of `roles`.
    pub fn require_role<T>(
        &self,
        request: &Request<T>,
        roles: &[Role],
    ) -> Result<PeerIdentity, Status> {
        let id = self.authenticate(request)?;
        check_role(&id, roles)?;
        Ok(id)
    }

    /// A tonic interceptor that admits callers with one of `roles` and puts their
    /// [`PeerIdentity`] into the request extensions for the handler:
    /// `FooServer::with_interceptor(svc, authorizer.interceptor(&[Role::Admin]))`.
    pub fn interceptor(&self, roles: &[Role]) -> RequireRole {
        RequireRole {
            authorizer: self.clone(),
            roles: roles.into(),
        }
    }
}

/// Refuses `id` unless its role is one of `roles`.
pub fn check_role(id: &PeerIdentity, roles: &[Role]) -> Result<(), Status> {
    if roles.contains(&id.role) {
        return Ok(());
    }
    let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(Status::permission_denied(format!(
        "{} {} may not make this call; it needs role {}",
        id.role,
        id.node_id,
        wanted.join(" or ")
    )))
}

/// Refuses `id` unless it is node `node_id`: an agent acts only as the node its
/// certificate names.
pub fn check_node(id: &PeerIdentity, node_id: &str) -> Result<(), Status> {
    if id.node_id == node_id {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "certificate names node {}, the request is about node {node_id}",
            id.node_id
        )))
    }
}

/// The interceptor made by [`Authorizer::interceptor`].
#[derive(Clone, Debug)]
pub struct RequireRole {
    authorizer: Authorizer,
    roles: Arc<[Role]>,
}

impl tonic::service::Interceptor for RequireRole {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let id = self.authorizer.require_role(&request, &self.roles)?;
        request.extensions_mut().insert(id);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, serial: &str) -> PeerIdentity {
        PeerIdentity {
            node_id: "n1".into(),
            role,
            cluster_id: "c1".into(),
            serial: Serial::from(serial),
        }
    }

    #[test]
    fn a_request_without_tls_is_unauthenticated() {
        let authz = Authorizer::new("c1", RevocationSet::new());
        let err = authz
            .require_role(&Request::new(()), &[Role::Admin])
            .expect_err("no cert");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("client certificate"), "{err}");
    }

    #[test]
    fn cluster_revocation_and_role_are_checked() {
        let revoked = RevocationSet::new();
        let authz = Authorizer::new("c1", revoked.clone());
        assert!(authz.admit(id(Role::Worker, "0a")).is_ok());

        let mut other = id(Role::Worker, "0a");
        other.cluster_id = "c2".into();
        let err = authz.admit(other).expect_err("other cluster");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        revoked.revoke(Serial::from("0A"));
        let err = authz.admit(id(Role::Worker, "0a")).expect_err("revoked");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("revoked"), "{err}");
        revoked.replace([]);
        assert!(revoked.is_empty());
        assert!(authz.admit(id(Role::Worker, "0a")).is_ok());

        let err =
            check_role(&id(Role::Worker, "01"), &[Role::Admin, Role::Manager]).expect_err("worker");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("admin or manager"), "{err}");
        assert!(check_node(&id(Role::Worker, "01"), "n1").is_ok());
        assert!(check_node(&id(Role::Worker, "01"), "n2").is_err());
    }

    #[test]
    fn the_interceptor_checks_extensions_again_for_revocation() {
        let revoked = RevocationSet::new();
        let authz = Authorizer::new("c1", revoked.clone());
        let mut req = Request::new(());
        req.extensions_mut().insert(id(Role::Admin, "05"));
        assert!(authz.require_role(&req, &[Role::Admin]).is_ok());
        revoked.revoke(Serial::from("05"));
        assert!(authz.require_role(&req, &[Role::Admin]).is_err());
    }
}
