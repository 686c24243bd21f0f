//! The cluster's public key infrastructure: the CA made at `init`, join tokens that pin
//! it, node certificates signed from CSRs, and the rustls configs every link uses.
//!
//! ```text
//!  skiff-master init                     joining machine (agent or master)
//!  ClusterCa::generate ── ca.pem,        NodeKey::generate ── node-key.pem (0600, stays)
//!        │                ca-key.pem     token "SKIFF-1-<ca digest>-<secret>"
//!        │                (0600)                │
//!        ▼                                      ▼ connect_pinned(addr, digest)
//!  JoinSecrets ── worker / manager       TLS: server chain = leaf + CA; accepted only if
//!  tokens                                the CA's sha256 == digest and the leaf verifies
//!        │                                      │ Join.JoinCluster{token, csr}
//!        ▼                                      ▼
//!  master: JoinSecrets::check(token) ─► ClusterCa::sign_csr(csr, SignRequest{node, role})
//!        │                                      │ cert: CN=node O=cluster OU=role
//!        ▼                                      ▼
//!  every later call: mTLS (client_tls_config / server_tls_config); per RPC
//!  Authorizer::require_role: certificate → PeerIdentity, cluster, revoked serial, role
//!  renewal: CertInfo::needs_renewal (2/3 of the lifetime) → Join.RenewCertificate
//! ```
//!
//! ## Limitations
//! - Revocation is checked per RPC, not at the handshake (tonic's `ServerTlsConfig` takes
//!   no custom client verifier): a removed node can still complete a TLS handshake, and a
//!   stream opened before the revocation keeps running until the service closes it.
//!   Services holding long streams (the dispatcher) must drop sessions of removed nodes.
//!   Short certificate lifetimes bound the damage either way.
//! - No CRL or OCSP: the revocation set lives in the replicated store and every master
//!   consults its own copy.
//! - The CA key is a file on the masters that hold it; there is no HSM, no key
//!   encryption at rest, and no CA rotation yet (a new CA means a new cluster).

mod authz;
mod ca;
mod cert;
mod digest;
pub mod keyfile;
mod node;
mod pin;
mod tls;
mod token;

pub use authz::{
    Authorizer, RequireRole, RevocationSet, check_node, check_role, peer_cert_info, peer_identity,
};
pub use ca::{
    BACKDATE, CA_CERT_FILE, CA_KEY_FILE, CA_TTL, CaError, ClusterCa, IssuedCert, MAX_CERT_TTL,
    SignRequest,
};
pub use cert::{
    CertError, CertInfo, MASTER_TLS_NAME, PeerIdentity, Role, Serial, check_ca_pem, check_name,
    identity_uri, needs_renewal, node_server_name,
};
pub use digest::{CaDigest, DigestError};
pub use keyfile::KeyFileError;
pub use node::{ADMIN_FILE_STEM, CredentialPaths, Credentials, NODE_FILE_STEM, NodeError, NodeKey};
pub use pin::{
    PinError, PinMismatch, PinnedCaVerifier, connect_pinned, error_chain, pinned_endpoint,
};
pub use tls::{
    CONNECT_TIMEOUT, ClientCerts, HANDSHAKE_TIMEOUT, TlsError, client_tls_config,
    client_tls_config_for, endpoint, install_crypto_provider, server_tls_config,
    server_tls_config_with,
};
pub use token::{JoinSecrets, JoinToken, TOKEN_PREFIX, TokenError, TokenSecret};
