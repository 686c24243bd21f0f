//! Decoding one service (everything but `deploy:`, which `deploy.rs` reads) from the
//! merged tree into the normalized model, with every check that needs only the service
//! and the project's declared networks and volumes. The keys skiff refuses are listed
//! here with the reason a user will read.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::decode::{
    self, Fields, Result, Schema, boolean, index, int, int_in, invalid, join, string, string_list,
    string_map, string_or_list, wrong,
};
use super::dotenv;
use super::error::{ComposeError, ErrorKind, Loc};
use super::model::{
    DependsCondition, DependsOn, Healthcheck, Mount, MountKind, NetworkMode, Port, Protocol,
    PublishMode, Service, ServiceNetwork, TmpfsOptions, Ulimit,
};
use super::mounts;
use super::tree::{Node, Value};

/// What decoding a service needs from outside the service itself.
pub struct ServiceContext<'a> {
    /// Variables for `environment` entries without a value and for env files.
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Relative `env_file`/`label_file` paths start here.
    pub project_dir: &'a Path,
    pub read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    pub networks: &'a BTreeSet<String>,
    pub volumes: &'a BTreeSet<String>,
}

const RESOURCES_REASON: &str =
    "skiff sets resources with deploy.resources (cpus, memory, pids) only";

pub const SERVICE: Schema = Schema {
    known: &[
        "image",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "ports",
        "volumes",
        "networks",
        "network_mode",
        "depends_on",
        "healthcheck",
        "restart",
        "deploy",
        "labels",
        "label_file",
        "user",
        "working_dir",
        "hostname",
        "cap_add",
        "cap_drop",
        "read_only",
        "tmpfs",
        "ulimits",
        "stop_grace_period",
        "stop_signal",
        "init",
        "platform",
        "expose",
        "profiles",
        "security_opt",
        "scale",
        "cpus",
        "mem_limit",
        "mem_reservation",
        "pids_limit",
    ],
    unsupported: &[
        (
            "build",
            "skiff runs images from a registry and does not build them: build and push the image, then name it with `image:`",
        ),
        (
            "container_name",
            "a service runs several containers on several nodes, so none can own a fixed name; other services reach it by its service name",
        ),
        (
            "privileged",
            "a privileged container can take over the node it runs on; grant single capabilities with `cap_add`",
        ),
        (
            "devices",
            "nodes differ in their hardware, and skiff's runtime creates only the default /dev nodes",
        ),
        (
            "device_cgroup_rules",
            "skiff's runtime creates only the default /dev nodes",
        ),
        ("gpus", "skiff does not schedule GPUs"),
        (
            "links",
            "links are legacy: services on a shared network reach each other by service name (add `aliases` for other names)",
        ),
        (
            "external_links",
            "links are legacy: attach to an external network and use the service name",
        ),
        (
            "volumes_from",
            "tasks of different services may run on different nodes: share a named volume instead",
        ),
        (
            "pid",
            "sharing the host's or another container's PID namespace would tie tasks to one node",
        ),
        (
            "ipc",
            "sharing the host's or another container's IPC namespace would tie tasks to one node",
        ),
        (
            "uts",
            "sharing the host's UTS namespace is not supported; set `hostname` instead",
        ),
        (
            "userns_mode",
            "skiff's runtime does not use user namespaces",
        ),
        ("cgroup", "every container gets its own cgroup namespace"),
        (
            "cgroup_parent",
            "skiff places every container in its own cgroup under the `skiff` subtree",
        ),
        ("sysctls", "skiff's runtime does not set sysctls yet"),
        (
            "dns",
            "containers use skiff's embedded DNS server, which answers service names",
        ),
        (
            "dns_search",
            "containers use skiff's embedded DNS server, which answers service names",
        ),
        (
            "dns_opt",
            "containers use skiff's embedded DNS server, which answers service names",
        ),
        (
            "extra_hosts",
            "skiff does not write /etc/hosts entries yet: give the other service an alias on a shared network",
        ),
        (
            "logging",
            "the agent keeps every container's output: read it with `skiffctl logs`",
        ),
        (
            "stdin_open",
            "services run detached: use `skiffctl exec -it` for an interactive shell",
        ),
        (
            "tty",
            "services run detached: use `skiffctl exec -it` for an interactive shell",
        ),
        (
            "shm_size",
            "skiff's runtime does not size /dev/shm yet: mount a tmpfs with a size instead",
        ),
        ("mem_swappiness", RESOURCES_REASON),
        ("memswap_limit", RESOURCES_REASON),
        ("oom_kill_disable", RESOURCES_REASON),
        ("oom_score_adj", RESOURCES_REASON),
        ("cpu_count", RESOURCES_REASON),
        ("cpu_percent", RESOURCES_REASON),
        ("cpu_shares", RESOURCES_REASON),
        ("cpu_quota", RESOURCES_REASON),
        ("cpu_period", RESOURCES_REASON),
        ("cpu_rt_period", RESOURCES_REASON),
        ("cpu_rt_runtime", RESOURCES_REASON),
        ("cpuset", RESOURCES_REASON),
        ("blkio_config", RESOURCES_REASON),
        (
            "secrets",
            "skiff has no secret store yet: use environment variables, env_file or a volume",
        ),
        (
            "configs",
            "skiff has no config store yet: bake the file into the image or use a volume",
        ),
        (
            "group_add",
            "skiff's runtime takes groups from `user` and the image only",
        ),
        ("domainname", "containers use skiff's embedded DNS server"),
        (
            "mac_address",
            "overlay networks assign MAC addresses themselves",
        ),
        ("runtime", "skiff runs every container with its own runtime"),
        ("isolation", "skiff runs Linux containers only"),
        ("credential_spec", "a Windows-only setting"),
        (
            "storage_opt",
            "skiff's root filesystems are overlayfs without options",
        ),
        (
            "annotations",
            "skiff's runtime does not pass OCI annotations",
        ),
        (
            "attach",
            "logs are always kept: read them with `skiffctl logs`",
        ),
        (
            "pull_policy",
            "agents always resolve the image reference when a task starts",
        ),
        (
            "develop",
            "a local development setting (`docker compose watch`)",
        ),
        ("post_start", "lifecycle hooks are not supported yet"),
        ("pre_stop", "lifecycle hooks are not supported yet"),
        (
            "provider",
            "service providers are a local Docker Compose feature",
        ),
        (
            "models",
            "AI model services are a local Docker Compose feature",
        ),
        ("use_api_socket", "there is no Docker API on skiff's nodes"),
    ],
};

/// Decodes `services.<name>`. `key_loc` is where the service's name is written.
pub fn service(
    node: &Node,
    name: &str,
    key_loc: &Loc,
    ctx: &ServiceContext<'_>,
) -> Result<Service> {
    let path = join("services", name);
    let f = Fields::of(node, &path, &SERVICE)?;
    let image = match f.get("image") {
        Some(n) => image(n, &f.path_of("image"))?,
        None => {
            return Err(ComposeError::at(
                key_loc,
                &path,
                ErrorKind::Missing {
                    key: "image",
                    why: "skiff runs images from a registry",
                },
            ));
        }
    };
    let network_mode = f.opt("network_mode", network_mode)?;
    let networks = match (network_mode, f.entry("networks")) {
        (Some(_), Some(e)) => {
            return Err(invalid(
                &e.key_loc,
                &f.path_of("networks"),
                "`networks` and `network_mode` cannot be combined",
            ));
        }
        (Some(_), None) => BTreeMap::new(),
        (None, Some(e)) => service_networks(&e.value, &f.path_of("networks"), ctx.networks)?,
        (None, None) => BTreeMap::from([("default".to_owned(), ServiceNetwork::default())]),
    };
    let mut environment = BTreeMap::new();
    if let Some(n) = f.get("env_file") {
        for (k, v) in env_files(n, &f.path_of("env_file"), ctx)? {
            environment.insert(k, v);
        }
    }
    if let Some(n) = f.get("environment") {
        environment.extend(environment_map(n, &f.path_of("environment"), ctx)?);
    }
    let mut labels = BTreeMap::new();
    if let Some(n) = f.get("label_file") {
        for (i, p) in string_list(n, &f.path_of("label_file"))?
            .into_iter()
            .enumerate()
        {
            let item_path = index(&f.path_of("label_file"), i);
            let item = seq_item(n, i);
            for (k, v) in read_env_file(&p, true, item, &item_path, ctx)? {
                labels.insert(k, v);
            }
        }
    }
    if let Some(n) = f.get("labels") {
        labels.extend(labels_map(n, &f.path_of("labels"))?);
    }
    let mut volumes = match f.get("volumes") {
        Some(n) => mounts_list(n, &f.path_of("volumes"), ctx.volumes)?,
        None => Vec::new(),
    };
    if let Some(n) = f.get("tmpfs") {
        for (i, spec) in string_list(n, &f.path_of("tmpfs"))?.into_iter().enumerate() {
            let item = seq_item(n, i);
            let t = mounts::parse_tmpfs(&spec)
                .map_err(|m| invalid(&item.loc, &index(&f.path_of("tmpfs"), i), m))?;
            check_target(&t.target, item, &index(&f.path_of("tmpfs"), i))?;
            volumes.push(Mount {
                kind: MountKind::Tmpfs,
                source: None,
                target: t.target,
                read_only: false,
                tmpfs: Some(TmpfsOptions {
                    size: t.size,
                    mode: t.mode,
                }),
            });
        }
    }
    let mut seen_targets: HashSet<&str> = HashSet::new();
    for m in &volumes {
        if !seen_targets.insert(&m.target) {
            let n = f.get("tmpfs").or(f.get("volumes")).unwrap_or(node);
            return Err(invalid(
                &n.loc,
                &path,
                format!("two mounts have the target {}", m.target),
            ));
        }
    }
    let ports = match f.get("ports") {
        Some(n) => ports_list(n, &f.path_of("ports"))?,
        None => Vec::new(),
    };
    if network_mode.is_some()
        && !ports.is_empty()
        && let Some(e) = f.entry("ports")
    {
        return Err(invalid(
            &e.key_loc,
            &f.path_of("ports"),
            "a service without networks (network_mode host or none) cannot publish ports",
        ));
    }
    Ok(Service {
        image,
        entrypoint: f.opt("entrypoint", command)?,
        command: f.opt("command", command)?,
        environment,
        ports,
        volumes,
        networks,
        network_mode,
        depends_on: f.opt("depends_on", depends_on)?.unwrap_or_default(),
        healthcheck: f.opt("healthcheck", healthcheck)?,
        deploy: super::deploy::deploy(&f)?,
        labels,
        user: f.opt("user", string)?,
        working_dir: f.opt("working_dir", absolute_path)?,
        hostname: f.opt("hostname", hostname)?,
        cap_add: f.opt("cap_add", capabilities)?.unwrap_or_default(),
        cap_drop: f.opt("cap_drop", capabilities)?.unwrap_or_default(),
        read_only: f.opt("read_only", boolean)?.unwrap_or(false),
        init: f.opt("init", boolean)?.unwrap_or(false),
        security_opt: f.opt("security_opt", security_opt)?.unwrap_or_default(),
        ulimits: f.opt("ulimits", ulimits)?.unwrap_or_default(),
        stop_grace_period: f
            .opt("stop_grace_period", decode::duration)?
            .unwrap_or(Duration::from_secs(10)),
        stop_signal: f.opt("stop_signal", signal)?,
        platform: f.opt("platform", platform)?,
        expose: f.opt("expose", expose)?.unwrap_or_default(),
        profiles: f.opt("profiles", profiles)?.unwrap_or_default(),
    })
}

fn seq_item(node: &Node, i: usize) -> &Node {
    match &node.value {
        Value::Seq(items) => items.get(i).unwrap_or(node),
        _ => node,
    }
}

fn image(node: &Node, path: &str) -> Result<String> {
    let s = string(node, path)?;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            &node.loc,
            path,
            format!("{s:?} is not an image reference (example: registry.local:5000/app:1.2)"),
        ));
    }
    Ok(s)
}

fn command(node: &Node, path: &str) -> Result<Vec<String>> {
    let words = match &node.value {
        Value::Seq(_) => string_list(node, path)?,
        Value::Str(s) => super::shell::split(s).map_err(|m| invalid(&node.loc, path, m))?,
        _ => return Err(wrong(node, path, "a string or a list of strings")),
    };
    if words.is_empty() {
        return Err(invalid(
            &node.loc,
            path,
            "an empty command would clear the image's, which skiff cannot express yet: leave the key out to use the image's",
        ));
    }
    Ok(words)
}

fn network_mode(node: &Node, path: &str) -> Result<NetworkMode> {
    match string(node, path)?.as_str() {
        "host" => Ok(NetworkMode::Host),
        "none" => Ok(NetworkMode::None),
        other => Err(invalid(
            &node.loc,
            path,
            format!(
                "network_mode {other:?} is not supported: use host, none, or `networks` (sharing another service's or container's network would tie tasks to one node)"
            ),
        )),
    }
}

const SERVICE_NETWORK: Schema = Schema {
    known: &["aliases"],
    unsupported: &[
        (
            "ipv4_address",
            "addresses on overlay networks are allocated by the cluster",
        ),
        (
            "ipv6_address",
            "addresses on overlay networks are allocated by the cluster",
        ),
        (
            "link_local_ips",
            "addresses on overlay networks are allocated by the cluster",
        ),
        (
            "mac_address",
            "overlay networks assign MAC addresses themselves",
        ),
        (
            "driver_opts",
            "overlay networks take no per-container options",
        ),
        ("priority", "every network of a task is equal"),
        ("gw_priority", "egress always leaves through the node"),
        ("interface_name", "skiff names interfaces itself"),
    ],
};

fn service_networks(
    node: &Node,
    path: &str,
    declared: &BTreeSet<String>,
) -> Result<BTreeMap<String, ServiceNetwork>> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong(node, path, "a list or mapping of networks"));
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let p = join(path, &e.key);
        if e.key != "default" && !declared.contains(&e.key) {
            return Err(ComposeError::at(
                &e.key_loc,
                &p,
                ErrorKind::Undefined {
                    kind: "network",
                    name: e.key.clone(),
                    hint: "declare it under the top-level `networks`",
                },
            ));
        }
        let mut net = ServiceNetwork::default();
        if !e.value.is_null() {
            let f = Fields::of(&e.value, &p, &SERVICE_NETWORK)?;
            if let Some(a) = f.get("aliases") {
                net.aliases = string_list(a, &f.path_of("aliases"))?;
                for (i, alias) in net.aliases.iter().enumerate() {
                    if !valid_name(alias) {
                        return Err(invalid(
                            &seq_item(a, i).loc,
                            &index(&f.path_of("aliases"), i),
                            format!("{alias:?} is not a valid DNS name"),
                        ));
                    }
                }
            }
        }
        out.insert(e.key.clone(), net);
    }
    Ok(out)
}

/// Names of services, networks, volumes and aliases: Compose's `[a-zA-Z0-9._-]`,
/// starting with a letter or digit, at most 63 characters (a DNS label).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn environment_map(
    node: &Node,
    path: &str,
    ctx: &ServiceContext<'_>,
) -> Result<BTreeMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong(node, path, "a list or mapping of variables"));
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let p = join(path, &e.key);
        if e.key.is_empty() || e.key.contains(['=', '\0']) {
            return Err(invalid(
                &e.key_loc,
                &p,
                format!("{:?} is not a variable name", e.key),
            ));
        }
        if e.value.is_null() {
            // `- KEY` / `KEY:`: from the environment skiffctl runs in, if set there.
            if let Some(v) = (ctx.lookup)(&e.key) {
                out.insert(e.key.clone(), v);
            }
            continue;
        }
        out.insert(e.key.clone(), string(&e.value, &p)?);
    }
    Ok(out)
}

fn labels_map(node: &Node, path: &str) -> Result<BTreeMap<String, String>> {
    if !matches!(node.value, Value::Map(_)) {
        return Err(wrong(node, path, "a list or mapping of labels"));
    }
    let labels = string_map(node, path)?;
    if let Some(e) = node
        .as_map()
        .and_then(|m| m.iter().find(|e| e.key.is_empty()))
    {
        return Err(invalid(&e.key_loc, path, "a label needs a name"));
    }
    Ok(labels)
}

const ENV_FILE: Schema = Schema {
    known: &["path", "required", "format"],
    unsupported: &[],
};

fn env_files(node: &Node, path: &str, ctx: &ServiceContext<'_>) -> Result<Vec<(String, String)>> {
    let Value::Seq(items) = &node.value else {
        return Err(wrong(node, path, "a path or a list of paths"));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let f = Fields::of(item, &p, &ENV_FILE)?;
        let Some(file) = f.get("path") else {
            return Err(ComposeError::at(
                &item.loc,
                &p,
                ErrorKind::Missing {
                    key: "path",
                    why: "",
                },
            ));
        };
        let file_path = f.path_of("path");
        let file_name = string(file, &file_path)?;
        if let Some(fmt) = f.get("format") {
            let v = string(fmt, &f.path_of("format"))?;
            if v != "raw" && !v.is_empty() {
                return Err(invalid(
                    &fmt.loc,
                    &f.path_of("format"),
                    format!(
                        "unknown env_file format {v:?} (skiff reads the dotenv format, or `raw`)"
                    ),
                ));
            }
        }
        let required = f.opt("required", boolean)?.unwrap_or(true);
        out.extend(read_env_file(&file_name, required, file, &file_path, ctx)?);
    }
    Ok(out)
}

/// Reads a dotenv-format file named in the compose file; bare keys come from the
/// environment (and are skipped when unset there).
fn read_env_file(
    name: &str,
    required: bool,
    node: &Node,
    path: &str,
    ctx: &ServiceContext<'_>,
) -> Result<Vec<(String, String)>> {
    let full = ctx.project_dir.join(name);
    let bytes = match (ctx.read_file)(&full) {
        Ok(b) => b,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(Vec::new());
        }
        Err(err) => {
            return Err(ComposeError::at(
                &node.loc,
                path,
                ErrorKind::Read { path: full, err },
            ));
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| {
        invalid(
            &node.loc,
            path,
            format!("{} is not valid UTF-8", full.display()),
        )
    })?;
    let file: Arc<str> = Arc::from(full.display().to_string());
    let lines = dotenv::parse(&file, &text, ctx.lookup)?;
    Ok(lines
        .into_iter()
        .filter_map(|l| match l.value {
            Some(v) => Some((l.key, v)),
            None => (ctx.lookup)(&l.key).map(|v| (l.key, v)),
        })
        .collect())
}

const PORT: Schema = Schema {
    known: &["target", "published", "host_ip", "protocol", "mode", "name"],
    unsupported: &[(
        "app_protocol",
        "skiff's routing mesh forwards TCP and UDP without looking at the application protocol",
    )],
};

fn ports_list(node: &Node, path: &str) -> Result<Vec<Port>> {
    let Value::Seq(items) = &node.value else {
        return Err(wrong(node, path, "a list of ports"));
    };
    let mut out: Vec<Port> = Vec::new();
    let mut published_seen: HashSet<(u16, Protocol)> = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let f = Fields::of(item, &p, &PORT)?;
        let Some(target) = f.get("target") else {
            return Err(ComposeError::at(
                &item.loc,
                &p,
                ErrorKind::Missing {
                    key: "target",
                    why: "",
                },
            ));
        };
        let target = port_number(target, &f.path_of("target"))?;
        let published = match f.get("published") {
            Some(n) => port_number(n, &f.path_of("published"))?,
            None => {
                return Err(invalid(
                    &item.loc,
                    &p,
                    format!(
                        "port {target} is not published: skiff does not pick published ports, write \"PUBLISHED:{target}\" (on the project's networks every port is reachable without publishing it)"
                    ),
                ));
            }
        };
        if let Some(ip) = f.get("host_ip") {
            let ip_text = string(ip, &f.path_of("host_ip"))?;
            if !matches!(ip_text.as_str(), "0.0.0.0" | "::" | "") {
                return Err(invalid(
                    &ip.loc,
                    &f.path_of("host_ip"),
                    format!(
                        "binding to {ip_text} is not supported: a published port answers on every address of the node (ingress: of every node)"
                    ),
                ));
            }
        }
        let protocol = match f.opt("protocol", string)?.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                let n = f.get("protocol").unwrap_or(item);
                return Err(invalid(
                    &n.loc,
                    &f.path_of("protocol"),
                    format!("protocol {other:?} is not supported (tcp or udp)"),
                ));
            }
        };
        let mode = match f.opt("mode", string)?.as_deref() {
            None | Some("ingress") => PublishMode::Ingress,
            Some("host") => PublishMode::Host,
            Some(other) => {
                let n = f.get("mode").unwrap_or(item);
                return Err(invalid(
                    &n.loc,
                    &f.path_of("mode"),
                    format!("mode {other:?} is not ingress or host"),
                ));
            }
        };
        let port = Port {
            target,
            published: Some(published),
            protocol,
            mode,
            name: f.opt("name", string)?,
        };
        if !published_seen.insert((published, protocol)) {
            return Err(invalid(
                &item.loc,
                &p,
                format!(
                    "port {published}/{} is published twice",
                    protocol_name(protocol)
                ),
            ));
        }
        out.push(port);
    }
    Ok(out)
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn port_number(node: &Node, path: &str) -> Result<u16> {
    let v = int(node, path).map_err(|_| wrong(node, path, "a port number"))?;
    u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| {
        invalid(
            &node.loc,
            path,
            format!("{v} is not a port number (1-65535)"),
        )
    })
}

const MOUNT: Schema = Schema {
    known: &[
        "type",
        "source",
        "target",
        "read_only",
        "bind",
        "volume",
        "tmpfs",
        "consistency",
    ],
    unsupported: &[],
};
const MOUNT_BIND: Schema = Schema {
    known: &[],
    unsupported: &[
        (
            "propagation",
            "mount propagation is not supported by skiff's runtime (mounts are private)",
        ),
        (
            "create_host_path",
            "the bind source must exist on the node; skiff does not create it",
        ),
        ("selinux", "skiff's nodes do not use SELinux labels"),
    ],
};
const MOUNT_VOLUME: Schema = Schema {
    known: &[],
    unsupported: &[
        (
            "nocopy",
            "skiff volumes start empty; the image's content is never copied into them",
        ),
        ("subpath", "mounting part of a volume is not supported yet"),
    ],
};
const MOUNT_TMPFS: Schema = Schema {
    known: &["size", "mode"],
    unsupported: &[],
};

fn mounts_list(node: &Node, path: &str, declared: &BTreeSet<String>) -> Result<Vec<Mount>> {
    let Value::Seq(items) = &node.value else {
        return Err(wrong(node, path, "a list of volumes"));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let f = Fields::of(item, &p, &MOUNT)?;
        let Some(kind_node) = f.get("type") else {
            return Err(ComposeError::at(
                &item.loc,
                &p,
                ErrorKind::Missing {
                    key: "type",
                    why: "bind, volume or tmpfs",
                },
            ));
        };
        let kind = match string(kind_node, &f.path_of("type"))?.as_str() {
            "bind" => MountKind::Bind,
            "volume" => MountKind::Volume,
            "tmpfs" => MountKind::Tmpfs,
            other @ ("npipe" | "cluster" | "image") => {
                return Err(invalid(
                    &kind_node.loc,
                    &f.path_of("type"),
                    format!("volume type {other:?} is not supported (bind, volume or tmpfs)"),
                ));
            }
            other => {
                return Err(invalid(
                    &kind_node.loc,
                    &f.path_of("type"),
                    format!("unknown volume type {other:?} (bind, volume or tmpfs)"),
                ));
            }
        };
        let Some(target_node) = f.get("target") else {
            return Err(ComposeError::at(
                &item.loc,
                &p,
                ErrorKind::Missing {
                    key: "target",
                    why: "",
                },
            ));
        };
        let target = string(target_node, &f.path_of("target"))?;
        check_target(&target, target_node, &f.path_of("target"))?;
        if let Some(b) = f.get("bind") {
            Fields::of(b, &f.path_of("bind"), &MOUNT_BIND)?;
        }
        if let Some(v) = f.get("volume") {
            Fields::of(v, &f.path_of("volume"), &MOUNT_VOLUME)?;
        }
        // `consistency` (cached, delegated) only ever mattered on macOS: accepted, no effect.
        f.opt("consistency", string)?;
        let source = f.opt("source", string)?.filter(|s| !s.is_empty());
        let source_node = f.get("source").unwrap_or(item);
        let source = match kind {
            MountKind::Bind => {
                let Some(s) = source else {
                    return Err(ComposeError::at(
                        &item.loc,
                        &p,
                        ErrorKind::Missing {
                            key: "source",
                            why: "the path on the node",
                        },
                    ));
                };
                if !s.starts_with('/') {
                    return Err(invalid(
                        &source_node.loc,
                        &f.path_of("source"),
                        format!(
                            "{s:?} is relative: a bind mount's source is a path on the node that runs the task, so it must be absolute"
                        ),
                    ));
                }
                Some(s)
            }
            MountKind::Volume => {
                let Some(s) = source else {
                    return Err(invalid(
                        &item.loc,
                        &p,
                        format!(
                            "an anonymous volume at {target} is not supported: name it and declare it under the top-level `volumes`"
                        ),
                    ));
                };
                if !declared.contains(&s) {
                    return Err(ComposeError::at(
                        &source_node.loc,
                        &f.path_of("source"),
                        ErrorKind::Undefined {
                            kind: "volume",
                            name: s,
                            hint: "declare it under the top-level `volumes`",
                        },
                    ));
                }
                Some(s)
            }
            MountKind::Tmpfs => {
                if source.is_some() {
                    return Err(invalid(
                        &source_node.loc,
                        &f.path_of("source"),
                        "a tmpfs mount has no source",
                    ));
                }
                None
            }
        };
        let tmpfs = match (kind, f.get("tmpfs")) {
            (MountKind::Tmpfs, t) => {
                let mut opts = TmpfsOptions {
                    size: None,
                    mode: None,
                };
                if let Some(t) = t {
                    let tf = Fields::of(t, &f.path_of("tmpfs"), &MOUNT_TMPFS)?;
                    opts.size = tf.opt("size", decode::bytes)?;
                    opts.mode = tf.opt("mode", octal_mode)?;
                }
                Some(opts)
            }
            (_, Some(t)) => {
                return Err(invalid(
                    &t.loc,
                    &f.path_of("tmpfs"),
                    "tmpfs options need `type: tmpfs`",
                ));
            }
            (_, None) => None,
        };
        out.push(Mount {
            kind,
            source,
            target,
            read_only: f.opt("read_only", boolean)?.unwrap_or(false),
            tmpfs,
        });
    }
    Ok(out)
}

fn check_target(target: &str, node: &Node, path: &str) -> Result<()> {
    if !target.starts_with('/') {
        return Err(invalid(
            &node.loc,
            path,
            format!("{target:?}: a mount target must be an absolute path"),
        ));
    }
    Ok(())
}

/// `mode: 1777` (octal digits, as Docker reads them) or `"0755"`.
fn octal_mode(node: &Node, path: &str) -> Result<u32> {
    let text = string(node, path)?;
    mounts::parse_mode(&text).map_err(|m| invalid(&node.loc, path, m))
}

const DEPENDS_ON: Schema = Schema {
    known: &["condition", "required", "restart"],
    unsupported: &[],
};

fn depends_on(node: &Node, path: &str) -> Result<BTreeMap<String, DependsOn>> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong(node, path, "a list or mapping of services"));
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let p = join(path, &e.key);
        let mut dep = DependsOn {
            condition: DependsCondition::ServiceStarted,
        };
        if !e.value.is_null() {
            let f = Fields::of(&e.value, &p, &DEPENDS_ON)?;
            if let Some(c) = f.get("condition") {
                dep.condition = match string(c, &f.path_of("condition"))?.as_str() {
                    "service_started" => DependsCondition::ServiceStarted,
                    "service_healthy" => DependsCondition::ServiceHealthy,
                    "service_completed_successfully" => {
                        DependsCondition::ServiceCompletedSuccessfully
                    }
                    other => {
                        return Err(invalid(
                            &c.loc,
                            &f.path_of("condition"),
                            format!(
                                "unknown condition {other:?} (service_started, service_healthy or service_completed_successfully)"
                            ),
                        ));
                    }
                };
            }
            if let Some(r) = f.get("restart")
                && boolean(r, &f.path_of("restart"))?
            {
                return Err(invalid(
                    &r.loc,
                    &f.path_of("restart"),
                    "restarting dependents when a dependency restarts is not supported; tasks restart by their own restart policy",
                ));
            }
            // `required: false` is resolved by the loader, which knows the service list.
            f.opt("required", boolean)?;
        }
        out.insert(e.key.clone(), dep);
    }
    Ok(out)
}

/// Whether `depends_on.<name>.required` is false (the dependency may be absent).
pub fn dependency_optional(svc: &Node, dep: &str) -> bool {
    svc.get("depends_on")
        .and_then(|d| d.get(dep))
        .and_then(|d| d.get("required"))
        .is_some_and(|r| matches!(boolean(r, ""), Ok(false)))
}

const HEALTHCHECK: Schema = Schema {
    known: &[
        "test",
        "interval",
        "timeout",
        "start_period",
        "retries",
        "disable",
    ],
    unsupported: &[(
        "start_interval",
        "skiff's health checker probes at `interval` during the start period too",
    )],
};

fn healthcheck(node: &Node, path: &str) -> Result<Healthcheck> {
    let f = Fields::of(node, path, &HEALTHCHECK)?;
    let disabled = f.opt("disable", boolean)?.unwrap_or(false);
    let test = match f.get("test") {
        _ if disabled => vec!["NONE".to_owned()],
        None => Vec::new(),
        Some(t) => match &t.value {
            Value::Str(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
            Value::Seq(_) => {
                let words = string_list(t, &f.path_of("test"))?;
                match words.first().map(String::as_str) {
                    Some("CMD") if words.len() > 1 => words,
                    Some("CMD-SHELL") if words.len() == 2 => words,
                    Some("NONE") if words.len() == 1 => words,
                    _ => {
                        return Err(invalid(
                            &t.loc,
                            &f.path_of("test"),
                            "a test list starts with CMD (then the command), CMD-SHELL (then one string) or is [NONE]",
                        ));
                    }
                }
            }
            _ => return Err(wrong(t, &f.path_of("test"), "a string or a list")),
        },
    };
    Ok(Healthcheck {
        test,
        interval: f
            .opt("interval", positive_duration)?
            .unwrap_or(Duration::from_secs(30)),
        timeout: f
            .opt("timeout", positive_duration)?
            .unwrap_or(Duration::from_secs(30)),
        start_period: f
            .opt("start_period", decode::duration)?
            .unwrap_or(Duration::ZERO),
        retries: u32::try_from(
            f.opt("retries", |n, p| int_in(n, p, 0, 1_000_000))?
                .unwrap_or(3),
        )
        .unwrap_or(3),
    })
}

fn positive_duration(node: &Node, path: &str) -> Result<Duration> {
    let d = decode::duration(node, path)?;
    if d < Duration::from_millis(1) {
        return Err(invalid(&node.loc, path, "must be at least 1ms"));
    }
    Ok(d)
}

fn absolute_path(node: &Node, path: &str) -> Result<String> {
    let s = string(node, path)?;
    if !s.starts_with('/') {
        return Err(invalid(
            &node.loc,
            path,
            format!("{s:?} must be an absolute path"),
        ));
    }
    Ok(s)
}

fn hostname(node: &Node, path: &str) -> Result<String> {
    let s = string(node, path)?;
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        });
    if !ok {
        return Err(invalid(
            &node.loc,
            path,
            format!("{s:?} is not a valid hostname"),
        ));
    }
    Ok(s)
}

/// Linux capabilities, for validating `cap_add`/`cap_drop`.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Capability names in canonical `CAP_*` form (`ALL` stays).
fn capabilities(node: &Node, path: &str) -> Result<Vec<String>> {
    let names = string_list(node, path)?;
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let upper = name.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let canonical = if bare == "ALL" {
            "ALL".to_owned()
        } else if CAPABILITIES.contains(&bare) {
            format!("CAP_{bare}")
        } else {
            return Err(invalid(
                &seq_item(node, i).loc,
                &index(path, i),
                format!("{name:?} is not a Linux capability"),
            ));
        };
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

fn security_opt(node: &Node, path: &str) -> Result<Vec<String>> {
    let opts = string_list(node, path)?;
    let mut no_new_privileges = false;
    for (i, opt) in opts.iter().enumerate() {
        let o = opt.trim();
        let value = match o.split_once([':', '=']) {
            Some(("no-new-privileges", v)) => v,
            None if o == "no-new-privileges" => "true",
            _ => {
                return Err(invalid(
                    &seq_item(node, i).loc,
                    &index(path, i),
                    format!(
                        "security option {o:?} is not supported: skiff applies its own seccomp profile and uses no AppArmor or SELinux labels; only no-new-privileges is accepted"
                    ),
                ));
            }
        };
        no_new_privileges = match value {
            "true" => true,
            "false" => false,
            _ => {
                return Err(invalid(
                    &seq_item(node, i).loc,
                    &index(path, i),
                    format!("{o:?}: no-new-privileges is true or false"),
                ));
            }
        };
    }
    Ok(if no_new_privileges {
        vec!["no-new-privileges:true".to_owned()]
    } else {
        Vec::new()
    })
}

const ULIMIT_NAMES: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

const ULIMIT: Schema = Schema {
    known: &["soft", "hard"],
    unsupported: &[],
};

fn ulimits(node: &Node, path: &str) -> Result<BTreeMap<String, Ulimit>> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong(node, path, "a mapping of limits"));
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let p = join(path, &e.key);
        if !ULIMIT_NAMES.contains(&e.key.as_str()) {
            return Err(invalid(
                &e.key_loc,
                &p,
                format!("unknown ulimit {:?} ({})", e.key, ULIMIT_NAMES.join(", ")),
            ));
        }
        let limit = match &e.value.value {
            Value::Map(_) => {
                let f = Fields::of(&e.value, &p, &ULIMIT)?;
                let soft = f.get("soft").ok_or_else(|| {
                    ComposeError::at(
                        &e.value.loc,
                        &p,
                        ErrorKind::Missing {
                            key: "soft",
                            why: "",
                        },
                    )
                })?;
                let hard = f.get("hard").ok_or_else(|| {
                    ComposeError::at(
                        &e.value.loc,
                        &p,
                        ErrorKind::Missing {
                            key: "hard",
                            why: "",
                        },
                    )
                })?;
                Ulimit {
                    soft: int(soft, &f.path_of("soft"))?,
                    hard: int(hard, &f.path_of("hard"))?,
                }
            }
            _ => {
                let v = int(&e.value, &p)?;
                Ulimit { soft: v, hard: v }
            }
        };
        if limit.soft > limit.hard && limit.hard >= 0 {
            return Err(invalid(
                &e.value.loc,
                &p,
                format!(
                    "soft limit {} is above hard limit {}",
                    limit.soft, limit.hard
                ),
            ));
        }
        out.insert(e.key.clone(), limit);
    }
    Ok(out)
}

const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// A signal name in `SIGTERM` form.
fn signal(node: &Node, path: &str) -> Result<String> {
    let s = string(node, path)?;
    let upper = s.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&bare) {
        Ok(format!("SIG{bare}"))
    } else {
        Err(invalid(
            &node.loc,
            path,
            format!("{s:?} is not a signal name (SIGTERM, SIGINT, SIGQUIT...)"),
        ))
    }
}

fn platform(node: &Node, path: &str) -> Result<String> {
    let s = string(node, path)?;
    let parts: Vec<&str> = s.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !ok {
        return Err(invalid(
            &node.loc,
            path,
            format!("{s:?} is not a platform (os/arch or os/arch/variant, e.g. linux/amd64)"),
        ));
    }
    Ok(s)
}

fn expose(node: &Node, path: &str) -> Result<Vec<String>> {
    let items = string_list(node, path)?;
    for (i, item) in items.iter().enumerate() {
        let (ports, proto) = match item.split_once('/') {
            Some((p, proto)) => (p, Some(proto)),
            None => (item.as_str(), None),
        };
        let valid_port = |p: &str| p.parse::<u16>().is_ok_and(|n| n > 0);
        let ok = match ports.split_once('-') {
            Some((a, b)) => valid_port(a) && valid_port(b),
            None => valid_port(ports),
        } && matches!(proto, None | Some("tcp" | "udp"));
        if !ok {
            return Err(invalid(
                &seq_item(node, i).loc,
                &index(path, i),
                format!("{item:?} is not a port like 80, 80/udp or 8000-8010"),
            ));
        }
    }
    Ok(items)
}

fn profiles(node: &Node, path: &str) -> Result<Vec<String>> {
    let items = string_or_list(node, path)?;
    for (i, p) in items.iter().enumerate() {
        if !valid_name(p) {
            return Err(invalid(
                &seq_item(node, i).loc,
                &index(path, i),
                format!("{p:?} is not a valid profile name"),
            ));
        }
    }
    Ok(items)
}

/// The service-level `restart:` as a restart policy (used when `deploy.restart_policy`
/// is absent).
pub fn restart(node: &Node, path: &str) -> Result<super::model::RestartPolicy> {
    use super::model::{RestartCondition, RestartPolicy};
    let s = string(node, path)?;
    let mut policy = RestartPolicy::default();
    match s.as_str() {
        "no" => policy.condition = RestartCondition::None,
        "always" | "unless-stopped" => policy.condition = RestartCondition::Any,
        "on-failure" => policy.condition = RestartCondition::OnFailure,
        other => match other.strip_prefix("on-failure:") {
            Some(n) => {
                policy.condition = RestartCondition::OnFailure;
                policy.max_attempts = Some(n.trim().parse().map_err(|_| {
                    invalid(
                        &node.loc,
                        path,
                        format!("{other:?}: the retry count must be a number"),
                    )
                })?);
            }
            None => {
                return Err(invalid(
                    &node.loc,
                    path,
                    format!(
                        "unknown restart policy {other:?} (no, always, on-failure[:N], unless-stopped)"
                    ),
                ));
            }
        },
    }
    Ok(policy)
}
