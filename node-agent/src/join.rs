//! `skiff-agent join`: a key made here, a certificate from a master that checks the
//! worker token, over a connection that trusts only the CA whose digest the token
//! carries; then the identity and credentials go to the data directory.
//!
//! ```text
//! token.parse() ─► NodeKey::generate ─► connect_pinned(master, token.ca_digest)
//!   ─► Join.JoinCluster{token, csr, hostname, advertise}  (next master if unreachable)
//!   ─► CA digest of the answer == token's? role == worker?
//!   ─► <data>/tls/{ca,node,node-key}.pem + <data>/agent.toml
//! ```
//!
//! With `--insecure` (masters started with `--insecure`) there are no certificates: the
//! node id is made here and remembered.

use std::path::{Path, PathBuf};

use skiff_pki::{CaDigest, Credentials, JoinToken, NODE_FILE_STEM, NodeKey};
use skiff_proto::v1 as pb;
use skiff_proto::v1::join_client::JoinClient;

use crate::identity::{Identity, IdentityError, TLS_DIR};

/// What `join` needs.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    pub data_dir: PathBuf,
    /// Required unless `insecure`.
    pub token: Option<String>,
    pub masters: Vec<String>,
    pub insecure: bool,
    pub hostname: String,
    /// `ip:port` of this node's agent API; its address goes into the certificate.
    pub advertise: String,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "{dir} already holds node {node_id}{cluster}: start it with `skiff-agent run`, or pick another --data-dir"
    )]
    AlreadyJoined {
        dir: PathBuf,
        node_id: String,
        cluster: String,
    },
    #[error("no master address given: `skiff-agent join --token TOKEN MASTER...`")]
    NoMasters,
    #[error("a join token is needed (`skiffctl token ls` prints the worker token)")]
    NoToken,
    #[error("{0}")]
    Token(#[from] skiff_pki::TokenError),
    #[error("making the node key: {0}")]
    Key(skiff_pki::NodeError),
    #[error("no master could be reached: {}", .tried.join("; "))]
    Unreachable { tried: Vec<String> },
    #[error("master {addr} refused the join: {message}")]
    Refused { addr: String, message: String },
    #[error("master {addr} sent a CA whose digest {got} is not the token's {want}")]
    WrongCa {
        addr: String,
        got: String,
        want: String,
    },
    #[error(
        "the token is a manager token: master {addr} issued a manager certificate; agents join with the worker token (`skiffctl token ls`)"
    )]
    ManagerToken { addr: String },
    #[error("creating {path}: {err}")]
    Dir { path: PathBuf, err: std::io::Error },
    #[error("saving the node credentials in {dir}: {err}")]
    Save {
        dir: PathBuf,
        err: skiff_pki::NodeError,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Joins the cluster and writes the identity (and credentials) to `opts.data_dir`.
pub async fn join(opts: &JoinOptions) -> Result<Identity, JoinError> {
    if let Some(id) = Identity::load(&opts.data_dir)? {
        return Err(JoinError::AlreadyJoined {
            dir: opts.data_dir.clone(),
            node_id: id.node_id,
            cluster: if id.cluster_id.is_empty() {
                String::new()
            } else {
                format!(" of cluster {}", id.cluster_id)
            },
        });
    }
    if opts.masters.is_empty() {
        return Err(JoinError::NoMasters);
    }
    if opts.insecure {
        let id = Identity {
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            cluster_id: String::new(),
            masters: opts.masters.clone(),
            insecure: true,
        };
        id.save(&opts.data_dir)?;
        return Ok(id);
    }
    let text = opts.token.as_deref().ok_or(JoinError::NoToken)?;
    let token: JoinToken = text.trim().parse()?;
    let key = NodeKey::generate().map_err(JoinError::Key)?;
    let csr_pem = key.csr_pem().map_err(JoinError::Key)?;
    let mut tried = Vec::new();
    for addr in &opts.masters {
        let channel = match skiff_pki::connect_pinned(addr, token.ca_digest).await {
            Ok(ch) => ch,
            Err(err) => {
                tracing::warn!(master = %addr, %err, "cannot reach master to join");
                tried.push(err.to_string());
                continue;
            }
        };
        let request = pb::JoinRequest {
            token: token.to_string(),
            csr_pem: csr_pem.clone(),
            hostname: opts.hostname.clone(),
            advertise_addr: opts.advertise.clone(),
        };
        let resp = match JoinClient::new(channel).join_cluster(request).await {
            Ok(r) => r.into_inner(),
            // A master that cannot sign (no CA key yet) or lost leadership: another may.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tried.push(format!("{addr}: {}", status.message()));
                continue;
            }
            Err(status) => {
                return Err(JoinError::Refused {
                    addr: addr.clone(),
                    message: status.message().to_owned(),
                });
            }
        };
        return finish(opts, &token, addr, resp, key);
    }
    Err(JoinError::Unreachable { tried })
}

fn finish(
    opts: &JoinOptions,
    token: &JoinToken,
    addr: &str,
    resp: pb::JoinResponse,
    key: NodeKey,
) -> Result<Identity, JoinError> {
    let got = CaDigest::of_pem(&resp.ca_pem)
        .map(|d| d.to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    if got != token.ca_digest.to_string() {
        return Err(JoinError::WrongCa {
            addr: addr.to_owned(),
            got,
            want: token.ca_digest.to_string(),
        });
    }
    if resp.role() == pb::NodeRole::Manager {
        return Err(JoinError::ManagerToken {
            addr: addr.to_owned(),
        });
    }
    let creds = Credentials {
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_pem,
        key_pem: key.to_pem(),
    };
    let dir = opts.data_dir.join(TLS_DIR);
    private_dir(&dir)?;
    creds
        .save(&dir, NODE_FILE_STEM)
        .map_err(|err| JoinError::Save {
            dir: dir.clone(),
            err,
        })?;
    let mut masters = resp.masters;
    for m in &opts.masters {
        if !masters.contains(m) {
            masters.push(m.clone());
        }
    }
    let id = Identity {
        node_id: resp.node_id,
        cluster_id: resp.cluster_id,
        masters,
        insecure: false,
    };
    id.save(&opts.data_dir)?;
    Ok(id)
}

/// `dir` with mode 0700 (it holds the private key).
fn private_dir(dir: &Path) -> Result<(), JoinError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |err| JoinError::Dir {
        path: dir.to_owned(),
        err,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, token: Option<&str>, insecure: bool) -> JoinOptions {
        JoinOptions {
            data_dir: dir.to_owned(),
            token: token.map(str::to_owned),
            masters: vec!["127.0.0.1:1".into()],
            insecure,
            hostname: "h".into(),
            advertise: "127.0.0.1:7701".into(),
        }
    }

    #[tokio::test]
    async fn an_insecure_join_makes_and_keeps_a_node_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = join(&opts(dir.path(), None, true)).await.expect("join");
        assert!(id.insecure && id.node_id.len() == 32);
        assert_eq!(Identity::require(dir.path()).expect("saved"), id);
        let err = join(&opts(dir.path(), None, true))
            .await
            .expect_err("second join");
        assert!(err.to_string().contains(&id.node_id), "{err}");
    }

    #[tokio::test]
    async fn a_malformed_or_missing_token_is_refused_before_any_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = join(&opts(dir.path(), None, false))
            .await
            .expect_err("no token");
        assert!(matches!(err, JoinError::NoToken), "{err}");
        let err = join(&opts(dir.path(), Some("SKIFF-1-abc"), false))
            .await
            .expect_err("malformed");
        assert!(err.to_string().starts_with("malformed token"), "{err}");
        assert!(Identity::load(dir.path()).expect("load").is_none());
    }

    #[tokio::test]
    async fn unreachable_masters_are_each_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest = CaDigest::of_der(b"some ca");
        let token = format!("SKIFF-1-{digest}-{}", "a".repeat(32));
        let mut o = opts(dir.path(), Some(&token), false);
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        o.masters = vec![format!("127.0.0.1:{port}")];
        let err = join(&o).await.expect_err("unreachable");
        assert!(
            matches!(err, JoinError::Unreachable { .. }) && err.to_string().contains(&o.masters[0]),
            "{err}"
        );
    }
}
