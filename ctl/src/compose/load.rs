//! The pipeline from file contents to a normalized project: parse each file, interpolate
//! it, canonicalize its short forms, merge the files in order, then decode and check the
//! whole. Pure but for `read_file` (env_file, label_file), which the caller supplies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::canonical::canonicalize;
use super::decode::{Fields, Result, Schema, boolean, invalid, join, string, string_map, wrong};
use super::error::{ComposeError, ErrorKind, Loc, Origin};
use super::extends::{ExtendsContext, resolve_extends};
use super::interpolate::interpolate_tree;
use super::merge::merge_all;
use super::model::{Ipam, IpamConfig, Network, Project, PublishMode, Service, Volume};
use super::service::{self, ServiceContext, valid_name};
use super::tree::{self, Node, Value};

/// One compose file's contents and the name errors show for it.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: Arc<str>,
    pub bytes: Vec<u8>,
}

/// Everything a load needs.
pub struct LoadInput<'a> {
    /// In `-f` order; later files override earlier ones.
    pub files: Vec<Source>,
    /// The project environment: the process environment over the `.env` file.
    pub env: &'a BTreeMap<String, String>,
    /// `-p` or `COMPOSE_PROJECT_NAME`, if given.
    pub project_name: Option<String>,
    /// Relative paths in the files start here; its name is the default project name.
    pub project_dir: PathBuf,
    /// Active profiles (`--profile`, `COMPOSE_PROFILES`).
    pub profiles: Vec<String>,
    pub read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
}

/// A loaded project and what the user should hear about it without it being an error.
#[derive(Debug)]
pub struct Loaded {
    pub project: Project,
    pub warnings: Vec<String>,
}

const TOP: Schema = Schema {
    known: &["version", "name", "services", "networks", "volumes"],
    unsupported: &[
        (
            "configs",
            "skiff has no config store yet: bake the file into the image or use a volume",
        ),
        (
            "secrets",
            "skiff has no secret store yet: use environment variables, env_file or a volume",
        ),
        (
            "include",
            "not supported yet: list the files with several -f instead",
        ),
        (
            "models",
            "AI model services are a local Docker Compose feature",
        ),
    ],
};

/// Loads a project from its files.
pub fn load(input: &LoadInput<'_>) -> Result<Loaded> {
    let Some(first) = input.files.first() else {
        return Err(ComposeError {
            origin: Origin::CommandLine,
            path: String::new(),
            kind: ErrorKind::NoFile {
                tried: "the given files".to_owned(),
                dir: input.project_dir.clone(),
            },
        });
    };
    let first_name = first.name.clone();
    let lookup = |name: &str| input.env.get(name).cloned();
    let mut warnings = Vec::new();
    let mut unset = Vec::new();
    let mut docs = Vec::with_capacity(input.files.len());
    let extends = ExtendsContext::new(&lookup, input.read_file);
    for file in &input.files {
        let mut doc = prepare(&file.name, &file.bytes, &lookup, &mut unset)?;
        resolve_extends(&mut doc, &input.project_dir, &extends, &mut unset)?;
        docs.push(doc);
    }
    let mut seen = BTreeSet::new();
    for name in unset {
        if seen.insert(name.clone()) {
            warnings.push(format!(
                "the variable {name} is not set: using an empty string"
            ));
        }
    }
    let Some(root) = merge_all(docs) else {
        return Err(ComposeError {
            origin: Origin::File(first_name),
            path: String::new(),
            kind: ErrorKind::Missing {
                key: "services",
                why: "",
            },
        });
    };
    let top = Fields::of(&root, "", &TOP)?;
    if top.get("version").is_some() {
        warnings.push("`version` is obsolete and ignored".to_owned());
    }
    let name = project_name(input, &top)?;

    let networks = match top.get("networks") {
        Some(n) => networks(n)?,
        None => BTreeMap::new(),
    };
    let volumes = match top.get("volumes") {
        Some(n) => volumes(n)?,
        None => BTreeMap::new(),
    };
    let network_names: BTreeSet<String> = networks.keys().cloned().collect();
    let volume_names: BTreeSet<String> = volumes.keys().cloned().collect();

    let Some(services_node) = top.get("services") else {
        return Err(ComposeError {
            origin: Origin::File(first_name),
            path: "services".to_owned(),
            kind: ErrorKind::Missing {
                key: "services",
                why: "a project runs at least one service",
            },
        });
    };
    let Value::Map(service_entries) = &services_node.value else {
        return Err(wrong(services_node, "services", "a mapping of services"));
    };
    if service_entries.is_empty() {
        return Err(invalid(
            &services_node.loc,
            "services",
            "a project runs at least one service",
        ));
    }
    let ctx = ServiceContext {
        lookup: &lookup,
        project_dir: &input.project_dir,
        read_file: input.read_file,
        networks: &network_names,
        volumes: &volume_names,
    };
    let mut services = BTreeMap::new();
    for e in service_entries {
        let path = join("services", &e.key);
        if !valid_name(&e.key) {
            return Err(invalid(
                &e.key_loc,
                &path,
                format!(
                    "{:?} is not a valid service name (letters, digits, `_`, `.`, `-`, at most 63, starting with a letter or digit)",
                    e.key
                ),
            ));
        }
        let svc = service::service(&e.value, &e.key, &e.key_loc, &ctx)?;
        services.insert(e.key.clone(), svc);
    }

    let services = select_profiles(services, &input.profiles, service_entries, &mut warnings)?;
    check_dependencies(&services, service_entries)?;
    check_published_ports(&services, service_entries)?;

    let mut networks = networks;
    if services
        .values()
        .any(|s| s.networks.contains_key("default"))
    {
        networks
            .entry("default".to_owned())
            .or_insert_with(|| Network {
                driver: "overlay".to_owned(),
                ipam: None,
                internal: false,
                attachable: false,
                labels: BTreeMap::new(),
                external: false,
                name: None,
            });
    }
    Ok(Loaded {
        project: Project {
            name,
            services,
            networks,
            volumes,
        },
        warnings,
    })
}

/// One file's document, ready to merge: parsed, interpolated, short forms made long.
pub(crate) fn prepare(
    name: &Arc<str>,
    bytes: &[u8],
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<Node> {
    let mut doc = tree::parse(name, bytes)?;
    if !matches!(doc.value, Value::Map(_)) {
        return Err(ComposeError::at(
            &doc.loc,
            "",
            ErrorKind::NotAMapping {
                found: super::error::describe(&doc.value),
            },
        ));
    }
    // `x-` blocks are ignored, so they are dropped before interpolation: a `${VAR:?}`
    // in an unused block does not fail the load (their anchors were already expanded
    // where they are used).
    strip_extensions(&mut doc);
    interpolate_tree(&mut doc, "", lookup, unset)?;
    canonicalize(&mut doc)?;
    Ok(doc)
}

/// Removes `x-` keys from the top level, services, networks and volumes before
/// interpolation: extension blocks are ignored, so a `$` in them must not fail the load.
fn strip_extensions(doc: &mut Node) {
    let Value::Map(entries) = &mut doc.value else {
        return;
    };
    entries.retain(|e| !e.key.starts_with("x-"));
    for e in entries.iter_mut() {
        if matches!(e.key.as_str(), "services" | "networks" | "volumes")
            && let Value::Map(items) = &mut e.value.value
        {
            for item in items.iter_mut() {
                if let Value::Map(fields) = &mut item.value.value {
                    fields.retain(|f| !f.key.starts_with("x-"));
                }
            }
        }
    }
}

/// `-p`/`COMPOSE_PROJECT_NAME`, else `name:`, else the project directory's name made
/// valid the way Compose does it (lowercase, only `[a-z0-9_-]`, no leading `_`/`-`).
fn project_name(input: &LoadInput<'_>, top: &Fields<'_>) -> Result<String> {
    if let Some(name) = &input.project_name {
        check_project_name(name).map_err(|reason| ComposeError {
            origin: Origin::CommandLine,
            path: String::new(),
            kind: ErrorKind::ProjectName {
                name: name.clone(),
                reason,
            },
        })?;
        return Ok(name.clone());
    }
    if let Some(n) = top.get("name") {
        let name = string(n, "name")?;
        check_project_name(&name).map_err(|reason| {
            ComposeError::at(
                &n.loc,
                "name",
                ErrorKind::ProjectName {
                    name: name.clone(),
                    reason,
                },
            )
        })?;
        return Ok(name);
    }
    let dir = input
        .project_dir
        .file_name()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let normalized = normalize_project_name(&dir);
    check_project_name(&normalized).map_err(|reason| ComposeError {
        origin: Origin::CommandLine,
        path: String::new(),
        kind: ErrorKind::ProjectName {
            name: dir.clone(),
            reason: if normalized.is_empty() {
                "the directory name has no usable characters: give a name with -p or `name:`"
            } else {
                reason
            },
        },
    })?;
    Ok(normalized)
}

/// Compose's `NormalizeProjectName`.
pub fn normalize_project_name(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        .collect();
    lower.trim_start_matches(['_', '-']).to_owned()
}

/// A project name: `[a-z0-9][a-z0-9_-]*`, short enough that `<project>_<service>` stays a
/// usable name.
pub fn check_project_name(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.len() > 48 {
        return Err("it is longer than 48 characters");
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err("it must start with a lowercase letter or a digit");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
    {
        return Err("only lowercase letters, digits, `_` and `-` are allowed");
    }
    Ok(())
}

const NETWORK: Schema = Schema {
    known: &[
        "driver",
        "ipam",
        "internal",
        "attachable",
        "labels",
        "external",
        "name",
        "enable_ipv6",
    ],
    unsupported: &[("driver_opts", "overlay networks take no driver options")],
};
const IPAM: Schema = Schema {
    known: &["driver", "config"],
    unsupported: &[("options", "skiff's IPAM takes no options")],
};
const IPAM_CONFIG: Schema = Schema {
    known: &["subnet"],
    unsupported: &[
        (
            "ip_range",
            "addresses come from the node's share of the subnet",
        ),
        ("gateway", "the gateway is the subnet's first address"),
        ("aux_addresses", "addresses are allocated by the cluster"),
    ],
};
const EXTERNAL_LEGACY: Schema = Schema {
    known: &["name"],
    unsupported: &[],
};

fn networks(node: &Node) -> Result<BTreeMap<String, Network>> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong(node, "networks", "a mapping of networks"));
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let path = join("networks", &e.key);
        check_resource_name(e, &path)?;
        let mut net = Network {
            driver: "overlay".to_owned(),
            ipam: None,
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            external: false,
            name: None,
        };
        if !e.value.is_null() {
            let f = Fields::of(&e.value, &path, &NETWORK)?;
            if let Some(d) = f.get("driver") {
                let driver = string(d, &f.path_of("driver"))?;
                if driver != "overlay" {
                    return Err(invalid(
                        &d.loc,
                        &f.path_of("driver"),
                        format!(
                            "driver {driver:?} is not supported: a cluster network is an overlay"
                        ),
                    ));
                }
            }
            if let Some(i) = f.get("ipam") {
                net.ipam = ipam(i, &f.path_of("ipam"))?;
            }
            net.internal = f.opt("internal", boolean)?.unwrap_or(false);
            net.attachable = f.opt("attachable", boolean)?.unwrap_or(false);
            if let Some(l) = f.get("labels") {
                net.labels = labels(l, &f.path_of("labels"))?;
            }
            if let Some(v6) = f.get("enable_ipv6")
                && boolean(v6, &f.path_of("enable_ipv6"))?
            {
                return Err(invalid(
                    &v6.loc,
                    &f.path_of("enable_ipv6"),
                    "overlay networks are IPv4 only",
                ));
            }
            (net.external, net.name) = external(&f, &e.key, "network")?;
            if net.external
                && (net.ipam.is_some() || net.internal || net.attachable || !net.labels.is_empty())
            {
                return Err(invalid(
                    &e.key_loc,
                    &path,
                    "an external network is configured where it was made: give only `external` and `name`",
                ));
            }
        }
        out.insert(e.key.clone(), net);
    }
    Ok(out)
}

/// `external: true` (+ `name:`), or the legacy `external: {name: x}`. Returns whether
/// the resource is external and its cluster-wide name.
fn external(f: &Fields<'_>, key: &str, kind: &str) -> Result<(bool, Option<String>)> {
    let name = f.opt("name", string)?;
    let external = match f.get("external") {
        None => false,
        Some(x) if matches!(x.value, Value::Map(_)) => {
            let xf = Fields::of(x, &f.path_of("external"), &EXTERNAL_LEGACY)?;
            if let Some(n) = xf.opt("name", string)? {
                if name.as_ref().is_some_and(|m| *m != n) {
                    return Err(invalid(
                        &x.loc,
                        &f.path_of("external"),
                        "external.name and name disagree",
                    ));
                }
                return Ok((true, Some(n)));
            }
            true
        }
        Some(x) => boolean(x, &f.path_of("external"))?,
    };
    if !external {
        if let Some(n) = f.get("name") {
            return Err(invalid(
                &n.loc,
                &f.path_of("name"),
                format!(
                    "only an external {kind} can have its own name: the project's {kind}s are named <project>_<key> in the cluster so that projects never collide"
                ),
            ));
        }
        return Ok((false, None));
    }
    Ok((true, Some(name.unwrap_or_else(|| key.to_owned()))))
}

fn ipam(node: &Node, path: &str) -> Result<Option<Ipam>> {
    let f = Fields::of(node, path, &IPAM)?;
    if let Some(d) = f.get("driver") {
        let driver = string(d, &f.path_of("driver"))?;
        if driver != "default" {
            return Err(invalid(
                &d.loc,
                &f.path_of("driver"),
                format!("IPAM driver {driver:?} is not supported (only default)"),
            ));
        }
    }
    let Some(config) = f.get("config") else {
        return Ok(None);
    };
    let cp = f.path_of("config");
    let Value::Seq(items) = &config.value else {
        return Err(wrong(config, &cp, "a list of subnets"));
    };
    if items.len() > 1 {
        return Err(invalid(
            &config.loc,
            &cp,
            "an overlay network has one subnet",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = super::decode::index(&cp, i);
        let cf = Fields::of(item, &ip, &IPAM_CONFIG)?;
        let Some(subnet) = cf.get("subnet") else {
            return Err(ComposeError::at(
                &item.loc,
                &ip,
                ErrorKind::Missing {
                    key: "subnet",
                    why: "",
                },
            ));
        };
        let s = string(subnet, &cf.path_of("subnet"))?;
        check_subnet(&s).map_err(|m| invalid(&subnet.loc, &cf.path_of("subnet"), m))?;
        out.push(IpamConfig { subnet: s });
    }
    Ok((!out.is_empty()).then_some(Ipam { config: out }))
}

/// An IPv4 CIDR whose address is the network address, from /8 to /28.
fn check_subnet(s: &str) -> std::result::Result<(), String> {
    let bad = || format!("{s:?} is not an IPv4 subnet like 10.20.0.0/16");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if !(8..=28).contains(&len) {
        return Err(format!("{s:?}: the prefix must be between /8 and /28"));
    }
    let mask = u32::MAX << (32 - len);
    if u32::from(addr) & !mask != 0 {
        let net = std::net::Ipv4Addr::from(u32::from(addr) & mask);
        return Err(format!(
            "{s:?} has host bits set: did you mean {net}/{len}?"
        ));
    }
    Ok(())
}

const VOLUME: Schema = Schema {
    known: &["driver", "labels", "external", "name"],
    unsupported: &[("driver_opts", "skiff's local volumes take no options")],
};

fn volumes(node: &Node) -> Result<BTreeMap<String, Volume>> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong(node, "volumes", "a mapping of volumes"));
    };
    let mut out = BTreeMap::new();
    for e in entries {
        let path = join("volumes", &e.key);
        check_resource_name(e, &path)?;
        let mut vol = Volume {
            driver: "local".to_owned(),
            labels: BTreeMap::new(),
            external: false,
            name: None,
        };
        if !e.value.is_null() {
            let f = Fields::of(&e.value, &path, &VOLUME)?;
            if let Some(d) = f.get("driver") {
                let driver = string(d, &f.path_of("driver"))?;
                if driver != "local" {
                    return Err(invalid(
                        &d.loc,
                        &f.path_of("driver"),
                        format!("volume driver {driver:?} is not supported (only local)"),
                    ));
                }
            }
            if let Some(l) = f.get("labels") {
                vol.labels = labels(l, &f.path_of("labels"))?;
            }
            (vol.external, vol.name) = external(&f, &e.key, "volume")?;
            if vol.external && !vol.labels.is_empty() {
                return Err(invalid(
                    &e.key_loc,
                    &path,
                    "an external volume is configured where it was made: give only `external` and `name`",
                ));
            }
        }
        out.insert(e.key.clone(), vol);
    }
    Ok(out)
}

fn check_resource_name(e: &tree::Entry, path: &str) -> Result<()> {
    if !valid_name(&e.key) {
        return Err(invalid(
            &e.key_loc,
            path,
            format!(
                "{:?} is not a valid name (letters, digits, `_`, `.`, `-`)",
                e.key
            ),
        ));
    }
    Ok(())
}

/// Labels of a top-level network or volume: a mapping or a `KEY=value` list.
fn labels(node: &Node, path: &str) -> Result<BTreeMap<String, String>> {
    match &node.value {
        Value::Map(_) => string_map(node, path),
        Value::Seq(items) => {
            let mut out = BTreeMap::new();
            for (i, item) in items.iter().enumerate() {
                let text = string(item, &super::decode::index(path, i))?;
                let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                out.insert(k.to_owned(), v.to_owned());
            }
            Ok(out)
        }
        _ => Err(wrong(node, path, "a list or mapping of labels")),
    }
}

fn entry_of<'a>(entries: &'a [tree::Entry], name: &str) -> Option<&'a tree::Entry> {
    entries.iter().find(|e| e.key == name)
}

/// Drops services none of whose profiles is active (services without profiles always
/// run).
fn select_profiles(
    services: BTreeMap<String, Service>,
    active: &[String],
    entries: &[tree::Entry],
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, Service>> {
    let all_profiles = active.iter().any(|p| p == "*");
    let (on, off): (BTreeMap<_, _>, BTreeMap<_, _>) = services.into_iter().partition(|(_, s)| {
        s.profiles.is_empty() || all_profiles || s.profiles.iter().any(|p| active.contains(p))
    });
    for (name, svc) in &on {
        for dep in svc.depends_on.keys() {
            if let Some(disabled) = off.get(dep) {
                let loc = dependency_loc(entries, name, dep);
                return Err(invalid(
                    &loc,
                    &join(&join(&join("services", name), "depends_on"), dep),
                    format!(
                        "`{dep}` runs only with the profile{} {} (activate one with --profile)",
                        if disabled.profiles.len() > 1 { "s" } else { "" },
                        disabled.profiles.join(", ")
                    ),
                ));
            }
        }
    }
    if on.is_empty() {
        let first = entries.first().map(|e| e.key_loc.clone());
        return Err(match first {
            Some(loc) => invalid(
                &loc,
                "services",
                "no service runs without a profile: activate one with --profile",
            ),
            None => invalid(
                &Loc {
                    file: "".into(),
                    line: 0,
                    column: 0,
                },
                "services",
                "no services",
            ),
        });
    }
    for name in off.keys() {
        warnings.push(format!(
            "service {name} is skipped: none of its profiles is active"
        ));
    }
    Ok(on)
}

fn dependency_loc(entries: &[tree::Entry], service: &str, dep: &str) -> Loc {
    let svc = entry_of(entries, service);
    svc.and_then(|s| s.value.get("depends_on"))
        .and_then(|d| d.entry(dep))
        .map(|e| e.key_loc.clone())
        .or_else(|| svc.map(|s| s.key_loc.clone()))
        .unwrap_or(Loc {
            file: "".into(),
            line: 0,
            column: 0,
        })
}

/// Every `depends_on` names a service of the project (unless `required: false`, then it
/// is dropped), and there is no cycle.
fn check_dependencies(services: &BTreeMap<String, Service>, entries: &[tree::Entry]) -> Result<()> {
    for (name, svc) in services {
        for dep in svc.depends_on.keys() {
            let path = join(&join(&join("services", name), "depends_on"), dep);
            if dep == name {
                return Err(invalid(
                    &dependency_loc(entries, name, dep),
                    &path,
                    "a service cannot depend on itself",
                ));
            }
            if !services.contains_key(dep) {
                let optional = entry_of(entries, name)
                    .is_some_and(|e| service::dependency_optional(&e.value, dep));
                if !optional {
                    return Err(ComposeError::at(
                        &dependency_loc(entries, name, dep),
                        &path,
                        ErrorKind::Undefined {
                            kind: "service",
                            name: dep.clone(),
                            hint: "",
                        },
                    ));
                }
            }
        }
    }
    // Depth-first search for a cycle; `stack` is the current chain.
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, Service>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if done.contains(name) {
            return None;
        }
        if let Some(pos) = stack.iter().position(|s| *s == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name);
            return Some(cycle);
        }
        stack.push(name);
        if let Some(svc) = services.get(name) {
            for dep in svc.depends_on.keys() {
                if let Some(c) = visit(dep, services, stack, done) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        done.insert(name);
        None
    }
    let mut done = BTreeSet::new();
    for name in services.keys() {
        if let Some(cycle) = visit(name, services, &mut Vec::new(), &mut done) {
            let (a, b) = (cycle[0], cycle[1]);
            return Err(invalid(
                &dependency_loc(entries, a, b),
                &join(&join(&join("services", a), "depends_on"), b),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    Ok(())
}

/// A port published on the routing mesh belongs to one service.
fn check_published_ports(
    services: &BTreeMap<String, Service>,
    entries: &[tree::Entry],
) -> Result<()> {
    let mut owners: BTreeMap<(u16, &str), &str> = BTreeMap::new();
    for (name, svc) in services {
        for port in &svc.ports {
            let Some(published) = port.published else {
                continue;
            };
            let proto = service::protocol_name(port.protocol);
            if port.mode == PublishMode::Ingress
                && let Some(owner) = owners.insert((published, proto), name)
            {
                let svc_entry = entry_of(entries, name);
                let loc = svc_entry
                    .and_then(|e| e.value.entry("ports"))
                    .map(|e| e.key_loc.clone())
                    .or_else(|| svc_entry.map(|e| e.key_loc.clone()))
                    .unwrap_or(Loc {
                        file: "".into(),
                        line: 0,
                        column: 0,
                    });
                return Err(invalid(
                    &loc,
                    &join(&join("services", name), "ports"),
                    format!("port {published}/{proto} is already published by service {owner}"),
                ));
            }
            if svc.deploy.endpoint_mode == super::model::EndpointMode::Dnsrr
                && port.mode == PublishMode::Ingress
            {
                let loc = entry_of(entries, name)
                    .and_then(|e| e.value.entry("ports"))
                    .map(|e| e.key_loc.clone())
                    .unwrap_or(Loc {
                        file: "".into(),
                        line: 0,
                        column: 0,
                    });
                return Err(invalid(
                    &loc,
                    &join(&join("services", name), "ports"),
                    format!(
                        "port {published}/{proto}: with endpoint_mode dnsrr there is no virtual IP for the routing mesh; publish with mode: host"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_normalize_like_compose() {
        assert_eq!(normalize_project_name("My_App-2"), "my_app-2");
        assert_eq!(normalize_project_name("__web.site"), "website");
        assert_eq!(normalize_project_name("Ünïcode"), "ncode");
        assert_eq!(normalize_project_name("..."), "");
        assert!(check_project_name("demo").is_ok());
        assert!(check_project_name("Demo").is_err());
        assert!(check_project_name("-x").is_err());
        assert!(check_project_name("a.b").is_err());
    }

    #[test]
    fn subnets() {
        assert!(check_subnet("10.20.0.0/16").is_ok());
        assert!(
            check_subnet("10.20.1.0/16")
                .expect_err("host bits")
                .contains("10.20.0.0/16")
        );
        assert!(check_subnet("10.20.0.0/30").is_err());
        assert!(check_subnet("fd00::/64").is_err());
        assert!(check_subnet("10.20.0.0").is_err());
    }
}
