//! Talking to a master before having the CA: the join token's CA digest is pinned. The
//! server must present a chain that contains a certificate whose sha256 is the pinned
//! digest, and its leaf must verify against that certificate (as a trust anchor) for the
//! name `skiff-master`; anything else fails the handshake.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::cert::MASTER_TLS_NAME;
use crate::digest::CaDigest;
use crate::tls::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};

/// Why a pinned connection failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("invalid address {addr:?}: {err}")]
    Address {
        addr: String,
        err: tonic::transport::Error,
    },
    #[error("cannot connect to {addr} with the CA pinned to {pinned}: {chain}")]
    Connect {
        addr: String,
        pinned: CaDigest,
        /// The transport error and its causes on one line (tonic hides the useful part,
        /// such as the certificate error, in its sources).
        chain: String,
    },
}

/// The server's chain lacks the pinned CA. Its `Debug` is its message, because rustls
/// shows the cause of a certificate error with `{:?}`.
#[derive(thiserror::Error)]
#[error(
    "the server's certificate chain has no CA with the pinned digest {pinned} (it presented {}): wrong cluster, or a wrong token",
    presented_list(presented)
)]
pub struct PinMismatch {
    pub pinned: CaDigest,
    pub presented: Vec<CaDigest>,
}

impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn presented_list(presented: &[CaDigest]) -> String {
    if presented.is_empty() {
        "no CA certificate".into()
    } else {
        presented
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A rustls server verifier that trusts exactly one CA, identified by its digest, taken
/// from the chain the server presents.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pinned: CaDigest,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier pinned to `pinned`, verifying signatures with rustls' ring provider.
    pub fn new(pinned: CaDigest) -> Self {
        PinnedCaVerifier {
            pinned,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaDigest::of_der(c.as_ref()) == self.pinned)
        else {
            let presented = intermediates
                .iter()
                .map(|c| CaDigest::of_der(c.as_ref()))
                .collect();
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    pinned: self.pinned,
                    presented,
                })),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|err| rustls::Error::General(err.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An endpoint for `addr` (`host:port`) that trusts only the CA with digest `pinned`, and
/// presents no client certificate. For `Join.JoinCluster`.
pub fn pinned_endpoint(addr: &str, pinned: CaDigest) -> Result<Endpoint, PinError> {
    let address = |err| PinError::Address {
        addr: addr.to_owned(),
        err,
    };
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(address)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tls_config_with_verifier(
            ClientTlsConfig::new()
                .domain_name(MASTER_TLS_NAME)
                .timeout(HANDSHAKE_TIMEOUT),
            Arc::new(PinnedCaVerifier::new(pinned)),
        )
        .map_err(address)
}

/// Connects to the master at `addr` trusting only the CA with digest `pinned`.
pub async fn connect_pinned(addr: &str, pinned: CaDigest) -> Result<Channel, PinError> {
    pinned_endpoint(addr, pinned)?
        .connect()
        .await
        .map_err(|err| PinError::Connect {
            addr: addr.to_owned(),
            pinned,
            chain: error_chain(&err),
        })
}

/// An error and its causes on one line, each distinct text once.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}
