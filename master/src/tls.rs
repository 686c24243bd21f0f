//! The master's use of `skiff-pki`: where the CA, its own credentials and the admin
//! certificate live in the data directory, the TLS setup of the server and of peer
//! channels, per-RPC authorization fed by the store's revocation list, and the
//! `skiff.v1.Join` service (tokens checked against the store, CSRs signed here).
//!
//! ```text
//! <data>/ca/ca.pem, ca-key.pem     the cluster CA (every master holds the key)
//! <data>/tls/ca.pem, node.pem, node-key.pem   this master's manager certificate
//! <data>/admin/ca.pem, admin.pem, admin-key.pem   skiffctl's (written at init)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_pki::{
    Authorizer, CaDigest, ClusterCa, Credentials, JoinSecrets, JoinToken, NODE_FILE_STEM, NodeKey,
    RevocationSet, Role as PkiRole, Serial, SignRequest, TokenSecret,
};
use skiff_proto::v1 as pb;
use skiff_proto::v1::join_client::JoinClient;
use skiff_proto::v1::join_server::Join;
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

/// The server/client TLS and the per-RPC guard for a master of `cluster_id`.
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
        server: Some(skiff_pki::server_tls_config(creds)?),
        client: Some(skiff_pki::client_tls_config(creds)?),
        guard: Some(Guard::with(check)),
        token: None,
        ca_dir: Some(data_dir.join(CA_DIR)),
        revoked: Some(revoked),
    })
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
