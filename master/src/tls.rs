//! The master's use of `skiff-pki`: where the CA, its own credentials and the admin
//! certificate live in the data directory, the TLS setup of the server and of peer
//! channels, per-RPC authorization fed by the store's revocation list, and the
//! `skiff.v1.Join` service (tokens checked against the store, CSRs signed here), and
//! the renewal of this master's own certificate ([`CertKeeper`]): every master holds
//! the CA, so it signs its successor itself, two thirds into the lifetime, and hands it
//! to the server (a new TLS round) and the dialers (new channels) without a restart.
//!
//! ```text
//! <data>/ca/ca.pem, ca-key.pem     the cluster CA (every master holds the key)
//! <data>/tls/ca.pem, node.pem, node-key.pem   this master's manager certificate
//! <data>/admin/ca.pem, admin.pem, admin-key.pem   skiffctl's (written at init)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff_pki::{
    Authorizer, CaDigest, CertInfo, ClusterCa, Credentials, JoinSecrets, JoinToken, NODE_FILE_STEM,
    NodeKey, RevocationSet, Role as PkiRole, Serial, SignRequest, TokenSecret,
};
use skiff_proto::v1 as pb;
use skiff_proto::v1::join_client::JoinClient;
use skiff_proto::v1::join_server::Join;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::api::auth::{Caller, Guard, Role};
use crate::handle::MasterHandle;
use crate::server::TlsSetup;

pub const CA_DIR: &str = "ca";
pub const TLS_DIR: &str = "tls";
pub const ADMIN_DIR: &str = "admin";
/// Lifetime of certificates the masters issue.
pub const CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of the admin certificate made at init.
pub const ADMIN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A PKI step that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cluster CA: {0}")]
    Ca(#[from] skiff_pki::CaError),
    #[error("credentials: {0}")]
    Node(#[from] skiff_pki::NodeError),
    #[error("TLS config: {0}")]
    Tls(#[from] skiff_pki::TlsError),
    #[error("join token: {0}")]
    Token(#[from] skiff_pki::TokenError),
    #[error("connecting to {addr} with the CA pinned by the token: {err}")]
    Pin {
        addr: String,
        err: skiff_pki::PinError,
    },
    #[error("{addr} refused the join: {message}")]
    Refused { addr: String, message: String },
    #[error("creating {path}: {err}")]
    Dir { path: PathBuf, err: std::io::Error },
    #[error("{addr} sent a CA whose digest {got} is not the token's {want}")]
    WrongCa {
        addr: String,
        got: String,
        want: String,
    },
    #[error("this master's certificate: {0}")]
    Cert(#[from] skiff_pki::CertError),
    #[error(
        "no cluster CA in {dir} (a master made with --insecure, or a data dir that is not a master's)"
    )]
    NoCa { dir: PathBuf },
}

fn role_of(r: PkiRole) -> Role {
    match r {
        PkiRole::Admin => Role::Admin,
        PkiRole::Manager => Role::Manager,
        PkiRole::Worker => Role::Worker,
    }
}

/// A node id for a master's certificate (one DNS label).
pub fn master_node_id() -> String {
    format!(
        "master-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Makes `dir` (0700) for credentials.
fn private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| TlsError::Dir {
            path: dir.to_owned(),
            err,
        })
}

fn host_of(addr: &str) -> Vec<String> {
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_owned())
        .filter(|h| !h.is_empty() && h != "0.0.0.0")
        .into_iter()
        .collect()
}

/// `init`: a new CA, this master's certificate and the admin certificate.
pub fn init_files(
    data_dir: &Path,
    cluster_id: &str,
    node_id: &str,
    advertise: &str,
) -> Result<(ClusterCa, Credentials), TlsError> {
    let ca = ClusterCa::generate(cluster_id)?;
    ca.save(&data_dir.join(CA_DIR))?;
    let (creds, _) = ca.issue_local(&SignRequest {
        node_id: node_id.to_owned(),
        role: PkiRole::Manager,
        ttl: CERT_TTL,
        extra_names: host_of(advertise),
    })?;
    private_dir(&data_dir.join(TLS_DIR))?;
    creds.save(&data_dir.join(TLS_DIR), NODE_FILE_STEM)?;
    ca.issue_admin(&data_dir.join(ADMIN_DIR), "admin", ADMIN_TTL)?;
    Ok((ca, creds))
}

/// A new admin certificate named `name` for skiffctl, signed with the CA in `data_dir`,
/// written to `out`.
pub fn issue_admin_cert(
    data_dir: &Path,
    out: &Path,
    name: &str,
    ttl: Duration,
) -> Result<CertInfo, TlsError> {
    let ca_dir = data_dir.join(CA_DIR);
    if !ca_dir.join(skiff_pki::CA_KEY_FILE).exists() {
        return Err(TlsError::NoCa { dir: ca_dir });
    }
    let ca = ClusterCa::load(&ca_dir)?;
    let (creds, _) = ca.issue_admin(out, name, ttl)?;
    Ok(creds.info()?)
}

/// `join`: a key here, a certificate from a master that checks the token, the CA
/// pinned by the token's digest.
pub async fn join_files(
    data_dir: &Path,
    token: &str,
    addr: &str,
    advertise: &str,
) -> Result<(Credentials, pb::JoinResponse), TlsError> {
    let token: JoinToken = token.parse()?;
    let key = NodeKey::generate()?;
    let ch = skiff_pki::connect_pinned(addr, token.ca_digest)
        .await
        .map_err(|err| TlsError::Pin {
            addr: addr.to_owned(),
            err,
        })?;
    let resp = JoinClient::new(ch)
        .join_cluster(pb::JoinRequest {
            token: token.to_string(),
            csr_pem: key.csr_pem()?,
            hostname: advertise.to_owned(),
            advertise_addr: advertise.to_owned(),
        })
        .await
        .map_err(|s| TlsError::Refused {
            addr: addr.to_owned(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    let got = CaDigest::of_pem(&resp.ca_pem)
        .map(|d| d.to_string())
        .unwrap_or_default();
    if got != token.ca_digest.to_string() {
        return Err(TlsError::WrongCa {
            addr: addr.to_owned(),
            got,
            want: token.ca_digest.to_string(),
        });
    }
    let creds = Credentials {
        ca_pem: resp.ca_pem.clone(),
        cert_pem: resp.cert_pem.clone(),
        key_pem: key.to_pem(),
    };
    private_dir(&data_dir.join(TLS_DIR))?;
    creds.save(&data_dir.join(TLS_DIR), NODE_FILE_STEM)?;
    Ok((creds, resp))
}

/// Saves the CA key handed over when this master joined.
pub fn save_ca(data_dir: &Path, ca_pem: &str, key_pem: &str) -> Result<(), TlsError> {
    ClusterCa::from_pem(ca_pem, key_pem)?.save(&data_dir.join(CA_DIR))?;
    Ok(())
}

/// This master's credentials, if it has any.
pub fn load_credentials(data_dir: &Path) -> Result<Option<Credentials>, TlsError> {
    let dir = data_dir.join(TLS_DIR);
    if !dir.join(format!("{NODE_FILE_STEM}.pem")).exists() {
        return Ok(None);
    }
    Ok(Some(Credentials::load(&dir, NODE_FILE_STEM)?))
}

/// Client TLS for talking to masters with this data dir's credentials (admin
/// certificate if present, else the master's own).
pub fn client_config(
    data_dir: &Path,
) -> Result<Option<tonic::transport::ClientTlsConfig>, TlsError> {
    let admin = data_dir.join(ADMIN_DIR);
    let creds = if admin.join("admin.pem").exists() {
        Credentials::load(&admin, skiff_pki::ADMIN_FILE_STEM)?
    } else {
        match load_credentials(data_dir)? {
            Some(c) => c,
            None => return Ok(None),
        }
    };
    Ok(Some(skiff_pki::client_tls_config(&creds)?))
}

/// The server/client TLS and the per-RPC guard for a master of `cluster_id`; the
/// certificate is kept renewed by the setup's [`CertKeeper`].
pub fn setup(data_dir: &Path, creds: &Credentials, cluster_id: &str) -> Result<TlsSetup, TlsError> {
    let revoked = RevocationSet::new();
    let authz = Authorizer::new(cluster_id, revoked.clone());
    let check = Arc::new(move |_: &http::Extensions, certs: Option<Vec<Vec<u8>>>| {
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(Status::unauthenticated(
                "this call needs a client certificate signed by the cluster CA; none was presented",
            ));
        };
        let id = authz.authenticate_der(leaf)?;
        Ok(Caller {
            node_id: id.node_id,
            role: role_of(id.role),
            serial: id.serial.as_str().to_owned(),
        })
    });
    Ok(TlsSetup {
        certs: Some(Arc::new(CertKeeper::new(data_dir, creds.clone())?)),
        guard: Some(Guard::with(check)),
        token: None,
        ca_dir: Some(data_dir.join(CA_DIR)),
        revoked: Some(revoked),
    })
}

/// This master's certificate and the TLS configurations made from it. `generation`
/// counts renewals in this process: a channel made with an older one is redialed.
pub struct MasterCert {
    pub creds: Credentials,
    pub info: CertInfo,
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
    pub generation: u64,
}

impl MasterCert {
    fn new(creds: Credentials, generation: u64) -> Result<Self, TlsError> {
        Ok(MasterCert {
            info: creds.check()?,
            server: skiff_pki::server_tls_config(&creds)?,
            client: skiff_pki::client_tls_config(&creds)?,
            creds,
            generation,
        })
    }
}

/// Owns this master's certificate: renews it when two thirds of its lifetime have
/// passed (signed here with the CA every master holds, same key, a fresh
/// [`CERT_TTL`]), writes it to `<data>/tls/node.pem` and publishes it to the server
/// and the dialers. Without renewal every link of the cluster would fail its TLS
/// handshake once the certificates expire.
pub struct CertKeeper {
    tls_dir: PathBuf,
    ca_dir: PathBuf,
    current: watch::Sender<Arc<MasterCert>>,
}

impl CertKeeper {
    pub fn new(data_dir: &Path, creds: Credentials) -> Result<Self, TlsError> {
        let (current, _) = watch::channel(Arc::new(MasterCert::new(creds, 0)?));
        Ok(CertKeeper {
            tls_dir: data_dir.join(TLS_DIR),
            ca_dir: data_dir.join(CA_DIR),
            current,
        })
    }

    /// The certificate now.
    pub fn current(&self) -> Arc<MasterCert> {
        self.current.borrow().clone()
    }

    /// Follows the certificate through renewals.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MasterCert>> {
        self.current.subscribe()
    }

    /// Renews if `now` is past the renewal point; returns what the new certificate
    /// says, or None when nothing was due.
    pub fn renew_if_due(&self, now: SystemTime) -> Result<Option<CertInfo>, TlsError> {
        let current = self.current();
        if !current.info.needs_renewal(now) {
            return Ok(None);
        }
        let ca = ClusterCa::load(&self.ca_dir)?;
        let key = NodeKey::from_pem(&current.creds.key_pem)?;
        let issued = ca.sign_csr_at(
            &key.csr_pem()?,
            &SignRequest::renewing(&current.info, CERT_TTL),
            now,
        )?;
        let creds = Credentials {
            ca_pem: current.creds.ca_pem.clone(),
            cert_pem: issued.cert_pem,
            key_pem: current.creds.key_pem.clone(),
        };
        let next = MasterCert::new(creds, current.generation + 1)?;
        // On disk first: a restart must not come back with the old certificate.
        next.creds.save_cert(&self.tls_dir, NODE_FILE_STEM)?;
        let info = next.info.clone();
        self.current.send_replace(Arc::new(next));
        Ok(Some(info))
    }

    /// Renews whenever due, until `stop`; a failed renewal is retried with backoff
    /// (30 s doubling to 10 min) and logged, while the old certificate still serves.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut retry = Duration::from_secs(30);
        loop {
            let due = self.current().info.renewal_due_at();
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tracing::debug!(
                in_s = wait.as_secs(),
                "next renewal of this master's certificate"
            );
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.renew_if_due(SystemTime::now()) {
                Ok(Some(info)) => {
                    retry = Duration::from_secs(30);
                    tracing::info!(serial = %info.identity.serial, not_after = ?info.not_after, "this master's certificate renewed");
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, retry_s = retry.as_secs(), "renewing this master's certificate failed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(600));
                }
            }
        }
    }
}

/// How this master dials other masters and agents: plainly (`--insecure`), with a
/// fixed configuration (one-shot commands), or with its current certificate.
#[derive(Clone, Default)]
pub enum DialTls {
    #[default]
    Plain,
    Fixed(ClientTlsConfig),
    Renewed(watch::Receiver<Arc<MasterCert>>),
}

impl DialTls {
    pub fn fixed(tls: Option<ClientTlsConfig>) -> Self {
        tls.map(DialTls::Fixed).unwrap_or_default()
    }

    /// The configuration for a new connection and its generation (a cached channel of
    /// another generation is stale); None: plain HTTP/2.
    pub fn current(&self) -> Option<(ClientTlsConfig, u64)> {
        match self {
            DialTls::Plain => None,
            DialTls::Fixed(tls) => Some((tls.clone(), 0)),
            DialTls::Renewed(rx) => {
                let cert = rx.borrow();
                Some((cert.client.clone(), cert.generation))
            }
        }
    }
}

/// Keeps the revocation set equal to the store's `Cluster.revoked_cert_serials`.
pub fn sync_revocations(master: MasterHandle, revoked: RevocationSet) {
    tokio::spawn(async move {
        let mut revs = master.revisions();
        loop {
            let serials: Vec<Serial> = master.read(|s| {
                s.cluster()
                    .map(|c| {
                        c.revoked_cert_serials
                            .iter()
                            .map(|x| Serial::from(x.as_str()))
                            .collect()
                    })
                    .unwrap_or_default()
            });
            revoked.replace(serials);
            if revs.changed().await.is_err() {
                return;
            }
        }
    });
}

/// `skiff.v1.Join`: machines get certificates with a join token.
#[derive(Clone)]
pub struct JoinService {
    master: MasterHandle,
    ca_dir: PathBuf,
    guard: Guard,
}

impl JoinService {
    pub fn new(master: MasterHandle, ca_dir: PathBuf, guard: Guard) -> Self {
        JoinService {
            master,
            ca_dir,
            guard,
        }
    }

    fn ca(&self) -> Result<ClusterCa, Status> {
        ClusterCa::load(&self.ca_dir).map_err(|e| {
            Status::unavailable(format!(
                "this master cannot sign certificates ({e}); join through another master"
            ))
        })
    }
}

fn secrets(c: &pb::Cluster) -> Result<JoinSecrets, Status> {
    let parse = |s: &str| -> Result<TokenSecret, Status> {
        s.parse().map_err(|e| {
            Status::internal(format!("the cluster's stored token secret is invalid: {e}"))
        })
    };
    Ok(JoinSecrets {
        worker: parse(&c.worker_token_secret)?,
        manager: parse(&c.manager_token_secret)?,
    })
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join_cluster(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.into_inner();
        let ca = self.ca()?;
        let cluster = self
            .master
            .read(|s| s.cluster().cloned())
            .ok_or_else(|| Status::unavailable("the cluster object is not replicated here yet"))?;
        let role = secrets(&cluster)?
            .check(&r.token, ca.digest())
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        if role == PkiRole::Admin {
            return Err(Status::permission_denied(
                "join tokens never make admin certificates",
            ));
        }
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        let issued = ca
            .sign_csr(
                &r.csr_pem,
                &SignRequest {
                    node_id: node_id.clone(),
                    role,
                    ttl: CERT_TTL,
                    extra_names: host_of(&r.advertise_addr),
                },
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if role == PkiRole::Worker {
            // The node exists from now on, with the serial a removal revokes.
            let node = pb::Node {
                id: node_id.clone(),
                spec: Some(pb::NodeSpec::default()),
                description: Some(pb::NodeDescription {
                    hostname: r.hostname.clone(),
                    addr: r.advertise_addr.clone(),
                    ..Default::default()
                }),
                cert_serial: issued.serial.as_str().to_owned(),
                ..Default::default()
            };
            self.master
                .propose(pb::Command {
                    mutations: vec![pb::Mutation {
                        op: Some(pb::mutation::Op::PutNode(node)),
                        expected_version: 0,
                        unconditional: false,
                    }],
                    request_id: String::new(),
                })
                .await
                .map_err(|e| crate::api::status::from_propose(&e))?;
        }
        Ok(Response::new(pb::JoinResponse {
            node_id,
            cert_pem: issued.cert_pem,
            ca_pem: ca.cert_pem().to_owned(),
            role: if role == PkiRole::Manager {
                pb::NodeRole::Manager
            } else {
                pb::NodeRole::Worker
            } as i32,
            masters: self
                .master
                .raft()
                .masters()
                .into_iter()
                .map(|(_, a, _)| a)
                .collect(),
            cluster_id: cluster.id,
        }))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        self.guard
            .check(&req, &[Role::Worker, Role::Manager, Role::Admin])?;
        let info = skiff_pki::peer_cert_info(&req).ok_or_else(|| {
            Status::unauthenticated("renewal needs the current client certificate")
        })?;
        let ca = self.ca()?;
        let issued = ca
            .sign_csr(
                &req.get_ref().csr_pem,
                &SignRequest::renewing(&info, CERT_TTL),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::RenewResponse {
            cert_pem: issued.cert_pem,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn a_master_renews_its_certificate_two_thirds_in_with_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, creds) =
            init_files(dir.path(), "c1", "master-a", "10.1.2.3:7700").expect("init files");
        let keeper = CertKeeper::new(dir.path(), creds.clone()).expect("keeper");
        let mut seen = keeper.subscribe();
        let first = keeper.current().info.clone();
        let now = SystemTime::now();
        assert_eq!(keeper.renew_if_due(now).expect("not due"), None);
        assert_eq!(keeper.current().generation, 0);

        let later = now + 61 * DAY;
        let info = keeper
            .renew_if_due(later)
            .expect("renewed")
            .expect("due at 60 of 90 days");
        assert_ne!(info.identity.serial, first.identity.serial);
        assert_eq!(info.identity.node_id, "master-a");
        assert_eq!(info.identity.role, PkiRole::Manager);
        assert!(
            info.names.contains(&"10.1.2.3".to_owned()),
            "{:?}",
            info.names
        );
        assert!(
            info.not_after >= later + CERT_TTL - DAY,
            "{:?}",
            info.not_after
        );
        assert!(seen.has_changed().expect("keeper alive"));
        let published = seen.borrow_and_update().clone();
        assert_eq!((published.generation, &published.info), (1, &info));
        // On disk, with the key it had: a restart serves the new certificate.
        let loaded = Credentials::load(&dir.path().join(TLS_DIR), NODE_FILE_STEM)
            .expect("the saved certificate matches the kept key");
        assert_eq!(loaded.key_pem, creds.key_pem);
        assert_eq!(loaded.info().expect("info"), info);
        assert_eq!(keeper.renew_if_due(later).expect("not due again"), None);
    }

    #[test]
    fn renewal_without_the_ca_fails_and_keeps_the_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, creds) = init_files(dir.path(), "c1", "master-a", "10.1.2.3:7700").expect("init");
        std::fs::remove_dir_all(dir.path().join(CA_DIR)).expect("drop the CA");
        let keeper = CertKeeper::new(dir.path(), creds.clone()).expect("keeper");
        let err = keeper
            .renew_if_due(SystemTime::now() + 61 * DAY)
            .expect_err("no CA to sign with");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert_eq!(keeper.current().creds, creds);
        assert_eq!(keeper.current().generation, 0);
    }
}
