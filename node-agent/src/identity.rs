//! Who this agent is, kept in the data directory: `agent.toml` (node id, cluster id,
//! masters, whether it joined an insecure cluster) and, for a TLS cluster, the node
//! certificate, its key (0600) and the CA under `tls/`. Written once at `join`, read on
//! every `run`; the key never leaves the machine.
//!
//! ```text
//! <data>/agent.toml            node_id, cluster_id, masters, insecure
//! <data>/tls/ca.pem            the cluster CA (pinned by the join token's digest)
//! <data>/tls/node.pem          this node's certificate (CN = node id, OU = worker)
//! <data>/tls/node-key.pem      its key, 0600
//! ```

use std::path::{Path, PathBuf};

use skiff_pki::{Credentials, NODE_FILE_STEM};

/// File name of the identity in the data directory.
pub const IDENTITY_FILE: &str = "agent.toml";
/// Directory of the node's credentials in the data directory.
pub const TLS_DIR: &str = "tls";

/// The agent's identity file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub node_id: String,
    /// Empty for an insecure cluster (no certificate says it).
    pub cluster_id: String,
    /// Masters known at join (the session learns more from the masters themselves).
    pub masters: Vec<String>,
    /// Joined a master started with `--insecure`: no certificates.
    pub insecure: bool,
}

/// The identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{dir} holds no agent: run `skiff-agent join --token TOKEN MASTER...` first (or pass the --data-dir it joined with)"
    )]
    NotJoined { dir: PathBuf },
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path} is not a valid identity file: {err}")]
    Parse { path: PathBuf, err: toml::de::Error },
    #[error("writing {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("encoding the identity: {0}")]
    Encode(#[from] toml::ser::Error),
    #[error("node credentials in {dir}: {err}")]
    Credentials {
        dir: PathBuf,
        err: skiff_pki::NodeError,
    },
    #[error(
        "{dir} joined a TLS cluster but holds no certificate in {tls}; join again with a fresh --data-dir"
    )]
    NoCredentials { dir: PathBuf, tls: PathBuf },
}

impl Identity {
    /// The identity in `data_dir`, or `None` if this directory never joined.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(IdentityError::Read { path, err }),
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|err| IdentityError::Parse { path, err })
    }

    /// The identity in `data_dir`; an error naming the directory if it never joined.
    pub fn require(data_dir: &Path) -> Result<Identity, IdentityError> {
        Self::load(data_dir)?.ok_or_else(|| IdentityError::NotJoined {
            dir: data_dir.to_owned(),
        })
    }

    /// Writes `agent.toml` atomically (temp file, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        let path = data_dir.join(IDENTITY_FILE);
        let write = |err| IdentityError::Write {
            path: path.clone(),
            err,
        };
        std::fs::create_dir_all(data_dir).map_err(write)?;
        let text = toml::to_string(self)?;
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(write)?;
        f.write_all(text.as_bytes()).map_err(write)?;
        f.sync_all().map_err(write)?;
        std::fs::rename(&tmp, &path).map_err(write)
    }

    /// The node's credentials, `None` for an insecure cluster.
    pub fn credentials(&self, data_dir: &Path) -> Result<Option<Credentials>, IdentityError> {
        if self.insecure {
            return Ok(None);
        }
        let dir = data_dir.join(TLS_DIR);
        if !dir.join(format!("{NODE_FILE_STEM}.pem")).exists() {
            return Err(IdentityError::NoCredentials {
                dir: data_dir.to_owned(),
                tls: dir,
            });
        }
        Credentials::load(&dir, NODE_FILE_STEM)
            .map(Some)
            .map_err(|err| IdentityError::Credentials { dir, err })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_fresh_dir_says_how_to_join() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Identity::load(dir.path()).expect("load"), None);
        let err = Identity::require(dir.path()).expect_err("not joined");
        let text = err.to_string();
        assert!(
            text.contains(&dir.path().display().to_string()) && text.contains("skiff-agent join"),
            "{text}"
        );
        let id = Identity {
            node_id: "n1".into(),
            cluster_id: "c1".into(),
            masters: vec!["127.0.0.1:7700".into()],
            insecure: false,
        };
        id.save(dir.path()).expect("save");
        assert_eq!(Identity::require(dir.path()).expect("load"), id);
        let err = id.credentials(dir.path()).expect_err("no certificate");
        assert!(err.to_string().contains("holds no certificate"), "{err}");
    }

    #[test]
    fn an_insecure_identity_has_no_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Identity {
            node_id: "n1".into(),
            cluster_id: String::new(),
            masters: vec![],
            insecure: true,
        };
        assert!(id.credentials(dir.path()).expect("none").is_none());
    }

    #[test]
    fn a_corrupt_identity_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(IDENTITY_FILE), "node_id = 3").expect("write");
        let err = Identity::load(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains(IDENTITY_FILE), "{err}");
    }
}
