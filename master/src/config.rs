//! The master's settings: flags, `SKIFF_MASTER_*` environment variables and an optional
//! TOML file (`--config`), in that order of precedence.

use std::path::PathBuf;
use std::time::Duration;

use skiff_daemon::LogFormat;

use crate::raft::RaftSettings;

/// Settings shared by every `skiff-master` command.
#[derive(Clone, Debug, clap::Args)]
pub struct GlobalArgs {
    /// TOML file with the same keys as the long flags (`data_dir = "..."`,
    /// `listen = "..."`).
    #[arg(long, global = true, env = "SKIFF_MASTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the raft log, snapshots, the identity file and the CA live
    /// [default: /var/lib/skiff/master].
    #[arg(long, global = true, env = "SKIFF_MASTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log line format on stderr [default: text].
    #[arg(long, global = true, env = "SKIFF_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address the gRPC server (cluster API, raft, dispatcher) listens on
    /// [default: 0.0.0.0:7700].
    #[arg(long, global = true, env = "SKIFF_MASTER_LISTEN")]
    pub listen: Option<String>,
    /// Address other masters, agents and skiffctl reach this master at; required
    /// when --listen is a wildcard address [default: the --listen address].
    #[arg(long, global = true, env = "SKIFF_MASTER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Raft heartbeat interval in milliseconds [default: 100].
    #[arg(long, global = true, env = "SKIFF_MASTER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Shortest election timeout in milliseconds; the longest is twice this
    /// [default: 300].
    #[arg(long, global = true, env = "SKIFF_MASTER_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Take a store snapshot and compact the raft log every this many entries
    /// [default: 5000].
    #[arg(long, global = true, env = "SKIFF_MASTER_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Serve plain HTTP/2 without TLS or client certificates. For tests on loopback
    /// only: anyone who reaches the port controls the cluster [default: false].
    #[arg(long, global = true, env = "SKIFF_MASTER_INSECURE")]
    pub insecure: bool,
}

/// The config file's keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub snapshot_every: Option<u64>,
    pub insecure: Option<bool>,
}

/// Where master data lives when neither flag, environment nor file says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff/master";
/// The listen address when none is given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7700";

/// Settings after merging flags, environment and file.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub listen: String,
    pub advertise: String,
    pub raft: RaftSettings,
    pub insecure: bool,
}

impl GlobalArgs {
    /// Merges flags and environment (already in `self`) over the config file.
    pub fn resolve(&self) -> Result<Settings, skiff_daemon::ConfigError> {
        let file: FileConfig = match &self.config {
            Some(path) => skiff_daemon::load_toml(path)?,
            None => FileConfig::default(),
        };
        let listen = self
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let advertise = self
            .advertise
            .clone()
            .or(file.advertise)
            .unwrap_or_else(|| listen.clone());
        let mut raft = RaftSettings::default();
        if let Some(ms) = self.heartbeat_ms.or(file.heartbeat_ms) {
            raft.heartbeat = Duration::from_millis(ms);
        }
        if let Some(ms) = self.election_timeout_ms.or(file.election_timeout_ms) {
            raft.election_timeout_min = Duration::from_millis(ms);
            raft.election_timeout_max = Duration::from_millis(ms * 2);
        }
        if let Some(n) = self.snapshot_every.or(file.snapshot_every) {
            raft.snapshot_every = n;
            raft.keep_logs = raft.keep_logs.min(n);
        }
        Ok(Settings {
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            listen,
            advertise,
            raft,
            insecure: self.insecure || file.insecure.unwrap_or(false),
        })
    }
}
