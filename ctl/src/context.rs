//! Contexts: which cluster `skiffctl` talks to and with which certificate. Kept in a TOML
//! file (`~/.config/skiff/contexts.toml`, or `$SKIFF_CONFIG`):
//!
//! ```toml
//! current = "lab"
//! [contexts.lab]
//! masters = ["172.31.200.11:7700", "172.31.200.12:7700"]
//! ca = "/var/tmp/skiff-lab/ab12/m1/data/admin/ca.pem"
//! cert = "/var/tmp/skiff-lab/ab12/m1/data/admin/admin.pem"
//! key = "/var/tmp/skiff-lab/ab12/m1/data/admin/admin-key.pem"
//! ```
//!
//! `--context` / `SKIFF_CONTEXT` pick another context for one command; `--master` /
//! `SKIFF_MASTER` override the addresses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One cluster and the identity used with it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// gRPC addresses of the masters, tried in order.
    pub masters: Vec<String>,
    /// The cluster CA certificate (PEM). Without it the connection is plain HTTP/2,
    /// which only a master started with TLS off accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The admin client certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The admin client key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// The whole contexts file.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// A contexts file that could not be used, or a context that does not exist.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}: {err}")]
    Parse { path: PathBuf, err: toml::de::Error },
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("no context named {name:?} in {path} (known: {known})")]
    Unknown {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error(
        "no cluster chosen: add one with `skiffctl context add NAME --master ADDR ...`, or pass --master"
    )]
    NoneChosen,
}

/// Where the contexts file lives.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/root/.config"));
    base.join("skiff").join("contexts.toml")
}

impl Contexts {
    /// Reads the file; a missing file is an empty set of contexts.
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|err| ContextError::Parse {
                path: path.to_owned(),
                err,
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(err) => Err(ContextError::Read {
                path: path.to_owned(),
                err,
            }),
        }
    }

    /// Writes the file (0600: it names key files), making its directory.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let write_err = |err| ContextError::Write {
            path: path.to_owned(),
            err,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let text = toml::to_string_pretty(self).map_err(|e| ContextError::Write {
            path: path.to_owned(),
            err: std::io::Error::other(e),
        })?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::set_permissions(
            &tmp,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    /// The context a command uses: `name` if given, else the current one.
    pub fn resolve(&self, name: Option<&str>, path: &Path) -> Result<Context, ContextError> {
        let Some(name) = name.or(self.current.as_deref()) else {
            return Err(ContextError::NoneChosen);
        };
        self.contexts
            .get(name)
            .cloned()
            .ok_or_else(|| ContextError::Unknown {
                name: name.to_owned(),
                path: path.to_owned(),
                known: if self.contexts.is_empty() {
                    "none".into()
                } else {
                    self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_and_resolve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("contexts.toml");
        let mut all = Contexts::load(&path).expect("missing file is empty");
        assert!(all.contexts.is_empty());
        all.contexts.insert(
            "lab".into(),
            Context {
                masters: vec!["127.0.0.1:7700".into()],
                ca: Some("/x/ca.pem".into()),
                cert: None,
                key: None,
            },
        );
        all.current = Some("lab".into());
        all.save(&path).expect("save");
        let back = Contexts::load(&path).expect("load");
        assert_eq!(back, all);
        assert_eq!(
            back.resolve(None, &path).expect("current").masters,
            vec!["127.0.0.1:7700".to_string()]
        );
        let err = back.resolve(Some("prod"), &path).expect_err("unknown");
        assert!(err.to_string().contains("prod"));
        assert!(err.to_string().contains("lab"));
    }

    #[test]
    fn a_broken_file_is_named_with_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("contexts.toml");
        std::fs::write(&path, "current = \"lab\"\n[contexts.lab]\nmasterz = []\n").expect("write");
        let err = Contexts::load(&path).expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("contexts.toml"), "{text}");
        assert!(text.contains("masterz"), "{text}");
    }
}
