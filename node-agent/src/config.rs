//! The agent's settings: flags, `SKIFF_AGENT_*` environment variables and an optional
//! TOML file (`--config`), in that order of precedence. Defaults that depend on other
//! settings (the runtime root under the data dir, the shim next to the executable) are
//! filled in by `resolve`; the advertise address needs the network and is found at start.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use skiff_daemon::LogFormat;

/// Where agent data lives when neither flag, environment nor file says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff/agent";
/// Where the agent API listens when nothing says.
pub const DEFAULT_API_LISTEN: &str = "0.0.0.0:7701";
/// The cgroup subtree containers go under.
pub const DEFAULT_CGROUP_PARENT: &str = "skiff";
/// The shim binary's file name, looked up next to `skiff-agent`.
pub const SHIM_NAME: &str = "skiff-shim";

/// Settings shared by every `skiff-agent` command.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GlobalArgs {
    /// TOML file with the same keys as the long flags, `_` for `-` (`data_dir = "..."`,
    /// `masters = ["10.0.0.1:7700"]`, `labels = { zone = "a" }`).
    #[arg(long, global = true, env = "SKIFF_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where images, containers, assignments and the node certificate live
    /// [default: /var/lib/skiff/agent].
    #[arg(long, global = true, env = "SKIFF_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log line format on stderr [default: text].
    #[arg(long, global = true, env = "SKIFF_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// gRPC address of a master, repeatable or comma-separated; overrides the masters
    /// remembered at join [default: those given to `join`].
    #[arg(
        long = "master",
        global = true,
        env = "SKIFF_AGENT_MASTERS",
        value_delimiter = ','
    )]
    pub masters: Vec<String>,
    /// This node's underlay address: the VXLAN endpoint and the address the agent API
    /// is advertised at [default: the source address of the route to the first master].
    #[arg(long, global = true, env = "SKIFF_AGENT_ADVERTISE_ADDR")]
    pub advertise_addr: Option<IpAddr>,
    /// A node label `key=value`, repeatable or comma-separated; reported with the node
    /// (`node.description.labels`) [default: none].
    #[arg(
        long = "label",
        global = true,
        env = "SKIFF_AGENT_LABELS",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// Container state directory of skiff's runtime (state, logs, shim sockets)
    /// [default: <data-dir>/containers].
    #[arg(
        long,
        global = true,
        env = "SKIFF_AGENT_RUNTIME_ROOT",
        visible_alias = "runtime-dir"
    )]
    pub runtime_root: Option<PathBuf>,
    /// The `skiff-shim` binary [default: skiff-shim next to this executable].
    #[arg(long, global = true, env = "SKIFF_AGENT_SHIM")]
    pub shim: Option<PathBuf>,
    /// Address the agent API (task logs and exec, for masters only) listens on
    /// [default: 0.0.0.0:7701].
    #[arg(long, global = true, env = "SKIFF_AGENT_API_LISTEN")]
    pub api_listen: Option<String>,
    /// cgroup subtree for containers, `<hierarchy>/<parent>/<task id>` [default: skiff].
    #[arg(long, global = true, env = "SKIFF_AGENT_CGROUP_PARENT")]
    pub cgroup_parent: Option<String>,
    /// A registry (`host:port`) to pull from over plain HTTP, repeatable
    /// [default: none].
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "SKIFF_AGENT_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Build the node's overlay (bridges, VXLAN, nftables, DNS) inside this network
    /// namespace instead of the agent's own; for labs and tests [default: the agent's].
    #[arg(long, global = true, env = "SKIFF_AGENT_NETWORK_NAMESPACE")]
    pub network_namespace: Option<PathBuf>,
    /// Resolver the containers' DNS forwards names outside the cluster to (`ip` or
    /// `ip:port`), repeatable; `none` answers only cluster names
    /// [default: the nameservers of the host's /etc/resolv.conf].
    #[arg(
        long = "dns-upstream",
        global = true,
        env = "SKIFF_AGENT_DNS_UPSTREAMS",
        value_delimiter = ','
    )]
    pub dns_upstreams: Vec<String>,
    /// Talk to masters started with `skiff-master --insecure`: plain HTTP/2, no
    /// certificates, the node id chosen here. For tests on loopback only
    /// [default: false].
    #[arg(long, global = true, env = "SKIFF_AGENT_INSECURE")]
    pub insecure: bool,
}

/// The config file's keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub masters: Option<Vec<String>>,
    pub advertise_addr: Option<IpAddr>,
    pub labels: Option<BTreeMap<String, String>>,
    pub runtime_root: Option<PathBuf>,
    pub shim: Option<PathBuf>,
    pub api_listen: Option<String>,
    pub cgroup_parent: Option<String>,
    pub insecure_registries: Option<Vec<String>>,
    pub network_namespace: Option<PathBuf>,
    pub dns_upstreams: Option<Vec<String>>,
    pub insecure: Option<bool>,
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    File(#[from] skiff_daemon::ConfigError),
    #[error("label {value:?} is not key=value")]
    Label { value: String },
    #[error("DNS upstream {value:?} is not an IP address, ip:port or \"none\"")]
    DnsUpstream { value: String },
    #[error("cannot find this executable to look for {SHIM_NAME} beside it: {err}")]
    CurrentExe { err: std::io::Error },
}

/// Settings after merging flags, environment and file.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// Empty: the masters remembered at join.
    pub masters: Vec<String>,
    pub advertise_addr: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub runtime_root: PathBuf,
    pub shim: PathBuf,
    pub api_listen: String,
    pub cgroup_parent: String,
    pub insecure_registries: Vec<String>,
    pub network_namespace: Option<PathBuf>,
    /// None: the host's resolvers; empty: no forwarding.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    pub insecure: bool,
}

impl GlobalArgs {
    /// Merges flags and environment (already in `self`) over the config file.
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        let file: FileConfig = match &self.config {
            Some(path) => skiff_daemon::load_toml(path)?,
            None => FileConfig::default(),
        };
        let shim = match self.shim.clone().or(file.shim.clone()) {
            Some(p) => p,
            None => default_shim()?,
        };
        self.merge(file, shim)
    }

    fn merge(&self, file: FileConfig, shim: PathBuf) -> Result<Settings, SettingsError> {
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut labels = file.labels.unwrap_or_default();
        for kv in &self.labels {
            let (k, v) = parse_label(kv)?;
            labels.insert(k, v);
        }
        let pick_list = |flag: &Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        Ok(Settings {
            runtime_root: self
                .runtime_root
                .clone()
                .or(file.runtime_root)
                .unwrap_or_else(|| data_dir.join("containers")),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            masters: pick_list(&self.masters, file.masters),
            advertise_addr: self.advertise_addr.or(file.advertise_addr),
            labels,
            shim,
            api_listen: self
                .api_listen
                .clone()
                .or(file.api_listen)
                .unwrap_or_else(|| DEFAULT_API_LISTEN.to_owned()),
            cgroup_parent: self
                .cgroup_parent
                .clone()
                .or(file.cgroup_parent)
                .unwrap_or_else(|| DEFAULT_CGROUP_PARENT.to_owned()),
            insecure_registries: pick_list(&self.insecure_registries, file.insecure_registries),
            network_namespace: self.network_namespace.clone().or(file.network_namespace),
            dns_upstreams: parse_upstreams(&pick_list(&self.dns_upstreams, file.dns_upstreams))?,
            insecure: self.insecure || file.insecure.unwrap_or(false),
            data_dir,
        })
    }
}

/// `key=value` (the value may be empty, the key may not).
pub fn parse_label(kv: &str) -> Result<(String, String), SettingsError> {
    match kv.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(SettingsError::Label {
            value: kv.to_owned(),
        }),
    }
}

/// `--dns-upstream` values: none given → the host's; `none` → no forwarding.
fn parse_upstreams(values: &[String]) -> Result<Option<Vec<SocketAddr>>, SettingsError> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for v in values {
        if v == "none" {
            continue;
        }
        let addr = v
            .parse::<SocketAddr>()
            .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| SettingsError::DnsUpstream { value: v.clone() })?;
        out.push(addr);
    }
    Ok(Some(out))
}

/// `skiff-shim` in the directory of the running executable.
fn default_shim() -> Result<PathBuf, SettingsError> {
    let exe = std::env::current_exe().map_err(|err| SettingsError::CurrentExe { err })?;
    Ok(exe
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join(SHIM_NAME))
}

impl Settings {
    /// Where the node certificate, its key and the CA live.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid file config")
    }

    #[test]
    fn defaults_hang_off_the_data_dir() {
        let args = GlobalArgs {
            data_dir: Some("/srv/agent".into()),
            ..Default::default()
        };
        let s = args
            .merge(FileConfig::default(), "/x/skiff-shim".into())
            .expect("settings");
        assert_eq!(s.runtime_root, Path::new("/srv/agent/containers"));
        assert_eq!(s.api_listen, DEFAULT_API_LISTEN);
        assert_eq!(s.cgroup_parent, "skiff");
        assert!(s.masters.is_empty() && s.labels.is_empty() && !s.insecure);
        assert_eq!(s.tls_dir(), Path::new("/srv/agent/tls"));
    }

    #[test]
    fn flags_win_over_the_file_and_labels_merge() {
        let args = GlobalArgs {
            masters: vec!["10.0.0.9:7700".into()],
            labels: vec!["zone=b".into(), "disk=ssd".into()],
            ..Default::default()
        };
        let f = file(
            r#"
            data_dir = "/d"
            masters = ["10.0.0.1:7700", "10.0.0.2:7700"]
            labels = { zone = "a", rack = "r1" }
            api_listen = "127.0.0.1:9"
            insecure = true
            "#,
        );
        let s = args.merge(f, "/s".into()).expect("settings");
        assert_eq!(s.masters, vec!["10.0.0.9:7700"]);
        assert_eq!(s.data_dir, Path::new("/d"));
        assert_eq!(s.api_listen, "127.0.0.1:9");
        assert!(s.insecure);
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, vec![("disk", "ssd"), ("rack", "r1"), ("zone", "b")]);
    }

    #[test]
    fn a_label_without_equals_is_refused_by_name() {
        let args = GlobalArgs {
            labels: vec!["zone".into()],
            ..Default::default()
        };
        let err = args
            .merge(FileConfig::default(), "/s".into())
            .expect_err("bad label");
        assert!(err.to_string().contains("\"zone\""), "{err}");
        assert_eq!(
            parse_label("a=b=c").expect("ok"),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_label("=v").is_err());
    }

    #[test]
    fn dns_upstreams_default_to_the_host_and_none_turns_forwarding_off() {
        assert_eq!(parse_upstreams(&[]).expect("ok"), None);
        assert_eq!(parse_upstreams(&["none".into()]).expect("ok"), Some(vec![]));
        assert_eq!(
            parse_upstreams(&["10.0.0.1".into(), "10.0.0.2:5353".into()]).expect("ok"),
            Some(vec![
                "10.0.0.1:53".parse().expect("addr"),
                "10.0.0.2:5353".parse().expect("addr")
            ])
        );
        assert!(parse_upstreams(&["dns.example".into()]).is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<FileConfig>("data_dir = \"/d\"\nlisten = \"x\"\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("listen"), "{err}");
    }
}
