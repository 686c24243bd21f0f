//! Config files: TOML whose keys are the long flag names with `_` for `-`. A value given
//! as a flag or environment variable wins over the file; the file wins over defaults.

use std::path::{Path, PathBuf};

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("config file {path}: {err}")]
    Parse { path: PathBuf, err: toml::de::Error },
}

/// Reads `path` as TOML into `T`. Unknown keys are refused when `T` says
/// `#[serde(deny_unknown_fields)]`, with the line and column of the key.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        err,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::Parse {
        path: path.to_owned(),
        err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        data_dir: Option<PathBuf>,
        listen: Option<String>,
    }

    #[test]
    fn reads_known_keys_and_names_unknown_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "data_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:1\"\n").expect("write");
        let sample: Sample = load_toml(&good).expect("parse good config");
        assert_eq!(sample.data_dir.as_deref(), Some(Path::new("/tmp/x")));

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "data_dir = \"/tmp/x\"\nlisten_addr = 1\n").expect("write");
        let err = load_toml::<Sample>(&bad).expect_err("unknown key must fail");
        let text = err.to_string();
        assert!(text.contains("bad.toml"), "{text}");
        assert!(text.contains("listen_addr"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = load_toml::<Sample>(Path::new("/nonexistent/skiff.toml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/skiff.toml"));
    }
}
