//! Node certificate renewal: two thirds into the certificate's lifetime (plus jitter, so
//! a fleet joined together does not renew together) the agent sends a CSR of its
//! existing key to a master over mTLS (`Join.RenewCertificate`), checks the answer
//! (same node, same key), rewrites only the certificate file and publishes the new
//! credentials: new sessions use them, the agent API restarts its TLS with them.
//!
//! ```text
//!  sleep until renewal_due_at + jitter ─► for each master: RenewCertificate{csr(key)}
//!     ▲                                        │ ok: check, save_cert, publish
//!     └──── failed: retry in 30 s … 10 min ◄────┘
//! ```

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use skiff_pki::{CertInfo, Credentials, NODE_FILE_STEM, NodeKey};
use skiff_proto::v1 as pb;
use skiff_proto::v1::join_client::JoinClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A renewal that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("the current certificate: {0}")]
    Current(skiff_pki::NodeError),
    #[error("TLS for {addr}: {err}")]
    Tls {
        addr: String,
        err: skiff_pki::TlsError,
    },
    #[error("no master renewed the certificate: {}", .tried.join("; "))]
    NoMaster { tried: Vec<String> },
    #[error("master {addr} sent a certificate for {got}, this node is {want}")]
    WrongNode {
        addr: String,
        got: String,
        want: String,
    },
    #[error("master {addr} sent a certificate that does not fit this node: {err}")]
    Invalid {
        addr: String,
        err: skiff_pki::NodeError,
    },
    #[error("saving the renewed certificate in {dir}: {err}")]
    Save {
        dir: PathBuf,
        err: skiff_pki::NodeError,
    },
}

/// Renews the node certificate kept in `tls_dir` when it is due.
pub struct Renewer {
    pub tls_dir: PathBuf,
    pub masters: Vec<String>,
    pub credentials: watch::Sender<Credentials>,
}

/// Pure: how long to wait from `now` before renewing a certificate described by `info`:
/// until two thirds of its lifetime, plus `jitter` (0..1) of a twelfth of it.
pub fn renew_delay(info: &CertInfo, now: SystemTime, jitter: f64) -> Duration {
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or(Duration::ZERO);
    let spread = lifetime.div_f64(12.0).mul_f64(jitter.clamp(0.0, 1.0));
    (info.renewal_due_at() + spread)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

/// A number in 0..1 that differs between processes and runs.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from((nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 10_000) / 10_000.0
}

impl Renewer {
    /// Renews whenever due, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut retry = Duration::from_secs(30);
        loop {
            let current = self.credentials.borrow().clone();
            let wait = match current.info() {
                Ok(info) => renew_delay(&info, SystemTime::now(), jitter()),
                Err(err) => {
                    tracing::error!(%err, "cannot read the node certificate; not renewing");
                    return;
                }
            };
            tracing::debug!(in_s = wait.as_secs(), "next certificate renewal");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.renew_once().await {
                Ok(info) => {
                    retry = Duration::from_secs(30);
                    tracing::info!(serial = %info.identity.serial, "node certificate renewed");
                }
                Err(err) => {
                    tracing::warn!(%err, retry_s = retry.as_secs(), "certificate renewal failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(600));
                }
            }
        }
    }

    /// Renews now: the first master that answers signs a CSR of the existing key.
    pub async fn renew_once(&self) -> Result<CertInfo, RenewError> {
        let current = self.credentials.borrow().clone();
        let info = current.check().map_err(RenewError::Current)?;
        let key = NodeKey::from_pem(&current.key_pem).map_err(RenewError::Current)?;
        let csr_pem = key.csr_pem().map_err(RenewError::Current)?;
        let mut tried = Vec::new();
        for addr in &self.masters {
            let tls = skiff_pki::client_tls_config(&current).map_err(|err| RenewError::Tls {
                addr: addr.clone(),
                err,
            })?;
            let endpoint = skiff_pki::endpoint(addr, tls).map_err(|err| RenewError::Tls {
                addr: addr.clone(),
                err,
            })?;
            let channel = match endpoint.connect().await {
                Ok(ch) => ch,
                Err(err) => {
                    tried.push(format!("{addr}: {}", skiff_pki::error_chain(&err)));
                    continue;
                }
            };
            let resp = match JoinClient::new(channel)
                .renew_certificate(pb::RenewRequest {
                    csr_pem: csr_pem.clone(),
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    tried.push(format!("{addr}: {}", status.message()));
                    continue;
                }
            };
            let renewed = Credentials {
                cert_pem: resp.cert_pem,
                ..current.clone()
            };
            let new_info = renewed.check().map_err(|err| RenewError::Invalid {
                addr: addr.clone(),
                err,
            })?;
            if new_info.identity.node_id != info.identity.node_id {
                return Err(RenewError::WrongNode {
                    addr: addr.clone(),
                    got: new_info.identity.node_id,
                    want: info.identity.node_id,
                });
            }
            renewed
                .save_cert(&self.tls_dir, NODE_FILE_STEM)
                .map_err(|err| RenewError::Save {
                    dir: self.tls_dir.clone(),
                    err,
                })?;
            self.credentials.send_replace(renewed);
            return Ok(new_info);
        }
        Err(RenewError::NoMaster { tried })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_pki::{PeerIdentity, Role, Serial};

    fn info(not_before: u64, not_after: u64) -> CertInfo {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        CertInfo {
            identity: PeerIdentity {
                node_id: "n1".into(),
                role: Role::Worker,
                cluster_id: "c1".into(),
                serial: Serial::from("01"),
            },
            not_before: t(not_before),
            not_after: t(not_after),
            names: vec![],
        }
    }

    #[test]
    fn renewal_waits_for_two_thirds_of_the_lifetime_plus_jitter() {
        let i = info(0, 1200);
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(renew_delay(&i, at(0), 0.0), Duration::from_secs(800));
        assert_eq!(renew_delay(&i, at(0), 1.0), Duration::from_secs(900));
        assert_eq!(renew_delay(&i, at(500), 0.5), Duration::from_secs(350));
        assert_eq!(
            renew_delay(&i, at(1000), 0.0),
            Duration::ZERO,
            "overdue: now"
        );
        assert!((0.0..1.0).contains(&jitter()));
    }
}
