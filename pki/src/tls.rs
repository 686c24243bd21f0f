//! TLS configurations for tonic, all on rustls with the ring provider. Servers present
//! their certificate chain (leaf + CA) and verify client certificates against the cluster
//! CA; clients verify masters by the fixed name `skiff-master` and the cluster CA.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::cert::MASTER_TLS_NAME;
use crate::node::Credentials;

/// How long a server waits for a TLS handshake before dropping the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a TLS configuration or endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("invalid address {addr:?}: {err}")]
    Address {
        addr: String,
        err: tonic::transport::Error,
    },
}

/// Installs rustls' ring provider as the process default. Every skiff binary calls this
/// first: `rustls::ServerConfig::builder()` (used by tonic's server) panics when no
/// default is installed and the provider cannot be inferred. Calling it twice is fine.
pub fn install_crypto_provider() {
    // Err means a provider is already installed: by an earlier call, or by a test harness.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether a server demands a client certificate during the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Joining machines have none yet: the TLS layer lets them in, and each RPC decides
    /// with [`crate::Authorizer`]. A certificate that is presented must still verify
    /// against the cluster CA (and be unexpired), or the handshake fails.
    Optional,
    /// No certificate, no connection (agents' servers: only masters call them).
    Required,
}

/// The server TLS configuration of a master: the chain leaf + CA, client certificates
/// optional at the TLS layer.
pub fn server_tls_config(creds: &Credentials) -> Result<ServerTlsConfig, TlsError> {
    server_tls_config_with(creds, ClientCerts::Optional)
}

/// The server TLS configuration with an explicit client certificate policy.
pub fn server_tls_config_with(
    creds: &Credentials,
    client_certs: ClientCerts,
) -> Result<ServerTlsConfig, TlsError> {
    check_pem(creds)?;
    // Serve the whole chain, so a joiner that only knows the CA's digest can find the CA.
    let chain = format!("{}\n{}", creds.cert_pem.trim_end(), creds.ca_pem.trim_end());
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, &creds.key_pem))
        .client_ca_root(Certificate::from_pem(&creds.ca_pem))
        .client_auth_optional(client_certs == ClientCerts::Optional)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// The client TLS configuration for calling masters: trusts only the cluster CA, expects
/// the server name `skiff-master`, presents `creds`.
pub fn client_tls_config(creds: &Credentials) -> Result<ClientTlsConfig, TlsError> {
    client_tls_config_for(creds, MASTER_TLS_NAME)
}

/// The client TLS configuration for a server with another name (a master calling an agent
/// uses [`crate::node_server_name`] of the agent's node id).
pub fn client_tls_config_for(
    creds: &Credentials,
    server_name: &str,
) -> Result<ClientTlsConfig, TlsError> {
    check_pem(creds)?;
    Ok(ClientTlsConfig::new()
        .domain_name(server_name)
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(&creds.cert_pem, &creds.key_pem))
        .timeout(HANDSHAKE_TIMEOUT))
}

/// An endpoint for `addr` (`host:port`) over TLS, with skiff's connect timeout and
/// `TCP_NODELAY`. Build one per peer and keep its `Channel`.
pub fn endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, TlsError> {
    let address = |err| TlsError::Address {
        addr: addr.to_owned(),
        err,
    };
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(address)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tls_config(tls)
        .map_err(address)
}

/// tonic reports bad PEM only as "Error parsing TLS certificate" when the first
/// connection comes; check up front and say which part is wrong.
fn check_pem(creds: &Credentials) -> Result<(), TlsError> {
    let cert = |what, pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .map(drop)
            .map_err(|err| TlsError::Pem {
                what,
                reason: err.to_string(),
            })
    };
    cert("the CA certificate", &creds.ca_pem)?;
    cert("the certificate", &creds.cert_pem)?;
    PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map(drop)
        .map_err(|err| TlsError::Pem {
            what: "the private key",
            reason: err.to_string(),
        })
}
