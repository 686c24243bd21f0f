//! Decoding a service's `deploy:` section, together with the service-level keys that
//! say the same things in Compose's older or shorter forms (`restart`, `scale`, `cpus`,
//! `mem_limit`, `mem_reservation`, `pids_limit`). Where both forms are given they must
//! agree. Swarm's defaults fill whatever is left out.

use std::collections::BTreeMap;

use super::decode::{
    Fields, Result, Schema, bytes, cpus, float, index, int_in, invalid, string, string_list,
    string_map, uint, wrong,
};
use super::model::{
    Deploy, DeployMode, EndpointMode, FailureAction, Limits, Placement, Preference, Resources,
    RestartCondition, RestartPolicy, UpdateConfig, UpdateOrder,
};
use super::tree::{Node, Value};

const DEPLOY: Schema = Schema {
    known: &[
        "mode",
        "replicas",
        "labels",
        "resources",
        "placement",
        "update_config",
        "rollback_config",
        "restart_policy",
        "endpoint_mode",
    ],
    unsupported: &[],
};

/// Reads `deploy:` and the related service-level keys of the service `svc`.
pub fn deploy(svc: &Fields<'_>) -> Result<Deploy> {
    let empty = Node::new(
        Value::Map(Vec::new()),
        super::error::Loc {
            file: "".into(),
            line: 0,
            column: 0,
        },
    );
    let deploy_path = svc.path_of("deploy");
    let f = Fields::of(svc.get("deploy").unwrap_or(&empty), &deploy_path, &DEPLOY)?;

    let mode = match f.get("mode") {
        None => DeployMode::Replicated,
        Some(n) => match string(n, &f.path_of("mode"))?.as_str() {
            "replicated" => DeployMode::Replicated,
            "global" => DeployMode::Global,
            other @ ("replicated-job" | "global-job") => {
                return Err(invalid(
                    &n.loc,
                    &f.path_of("mode"),
                    format!(
                        "{other} is not supported: skiff runs services, not jobs (a task that should run once can use restart_policy condition none)"
                    ),
                ));
            }
            other => {
                return Err(invalid(
                    &n.loc,
                    &f.path_of("mode"),
                    format!("unknown mode {other:?} (replicated or global)"),
                ));
            }
        },
    };
    let replicas = f.opt("replicas", uint)?;
    let scale = svc.opt("scale", uint)?;
    let replicas = match (mode, replicas, scale) {
        (DeployMode::Global, Some(_), _) => {
            let n = f.get("replicas").unwrap_or(&empty);
            return Err(invalid(
                &n.loc,
                &f.path_of("replicas"),
                "a global service runs one task per node: it takes no replica count",
            ));
        }
        (DeployMode::Global, None, Some(_)) => {
            let n = svc.get("scale").unwrap_or(&empty);
            return Err(invalid(
                &n.loc,
                &svc.path_of("scale"),
                "a global service runs one task per node: it takes no scale",
            ));
        }
        (DeployMode::Global, None, None) => None,
        (DeployMode::Replicated, Some(r), Some(s)) if r != s => {
            let n = svc.get("scale").unwrap_or(&empty);
            return Err(invalid(
                &n.loc,
                &svc.path_of("scale"),
                format!("scale {s} disagrees with deploy.replicas {r}"),
            ));
        }
        (DeployMode::Replicated, r, s) => Some(r.or(s).unwrap_or(1)),
    };

    let restart_policy = match (f.get("restart_policy"), svc.get("restart")) {
        (Some(n), _) => restart_policy(n, &f.path_of("restart_policy"))?,
        (None, Some(n)) => super::service::restart(n, &svc.path_of("restart"))?,
        (None, None) => RestartPolicy::default(),
    };

    let mut resources = match f.get("resources") {
        Some(n) => resources(n, &f.path_of("resources"))?,
        None => Resources::default(),
    };
    legacy_resource(
        svc,
        "cpus",
        cpus,
        &mut resources.limits.cpus,
        "deploy.resources.limits.cpus",
    )?;
    legacy_resource(
        svc,
        "mem_limit",
        bytes,
        &mut resources.limits.memory,
        "deploy.resources.limits.memory",
    )?;
    legacy_resource(
        svc,
        "mem_reservation",
        bytes,
        &mut resources.reservations.memory,
        "deploy.resources.reservations.memory",
    )?;
    legacy_resource(
        svc,
        "pids_limit",
        |n, p| int_in(n, p, -1, i64::MAX),
        &mut resources.limits.pids,
        "deploy.resources.limits.pids",
    )?;
    // Compose's `pids_limit: -1` means no limit, as 0 does.
    resources.limits.pids = resources.limits.pids.filter(|p| *p > 0);
    check_reservations(&resources, svc, &f)?;

    let placement = match f.get("placement") {
        Some(n) => placement(n, &f.path_of("placement"))?,
        None => Placement::default(),
    };
    if mode == DeployMode::Global && placement.max_replicas_per_node.is_some() {
        let n = f.get("placement").unwrap_or(&empty);
        return Err(invalid(
            &n.loc,
            &f.path_of("placement"),
            "max_replicas_per_node applies to replicated services only",
        ));
    }

    let endpoint_mode = match f.get("endpoint_mode") {
        None => EndpointMode::Vip,
        Some(n) => match string(n, &f.path_of("endpoint_mode"))?.as_str() {
            "vip" => EndpointMode::Vip,
            "dnsrr" => EndpointMode::Dnsrr,
            other => {
                return Err(invalid(
                    &n.loc,
                    &f.path_of("endpoint_mode"),
                    format!("unknown endpoint_mode {other:?} (vip or dnsrr)"),
                ));
            }
        },
    };

    Ok(Deploy {
        mode,
        replicas,
        labels: match f.get("labels") {
            Some(n) if matches!(n.value, Value::Map(_)) => string_map(n, &f.path_of("labels"))?,
            Some(n) => {
                return Err(wrong(
                    n,
                    &f.path_of("labels"),
                    "a list or mapping of labels",
                ));
            }
            None => BTreeMap::new(),
        },
        resources,
        placement,
        update_config: f
            .opt("update_config", |n, p| update_config(n, p, true))?
            .unwrap_or_default(),
        rollback_config: f
            .opt("rollback_config", |n, p| update_config(n, p, false))?
            .unwrap_or_default(),
        restart_policy,
        endpoint_mode,
    })
}

/// A service-level resource key (`cpus: 0.5`) folded into `deploy.resources`; both may
/// be given only if they agree.
fn legacy_resource<T: PartialEq + std::fmt::Debug>(
    svc: &Fields<'_>,
    key: &str,
    read: impl Fn(&Node, &str) -> Result<T>,
    slot: &mut Option<T>,
    deploy_key: &str,
) -> Result<()> {
    let Some(n) = svc.get(key) else {
        return Ok(());
    };
    let v = read(n, &svc.path_of(key))?;
    match slot {
        Some(existing) if *existing != v => Err(invalid(
            &n.loc,
            &svc.path_of(key),
            format!("disagrees with {deploy_key}: give only one of them"),
        )),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

const RESOURCES: Schema = Schema {
    known: &["limits", "reservations"],
    unsupported: &[],
};
const LIMITS: Schema = Schema {
    known: &["cpus", "memory", "pids"],
    unsupported: &[],
};
const RESERVATIONS: Schema = Schema {
    known: &["cpus", "memory"],
    unsupported: &[
        ("devices", "skiff does not schedule devices or GPUs"),
        ("generic_resources", "skiff schedules CPU and memory only"),
    ],
};

fn resources(node: &Node, path: &str) -> Result<Resources> {
    let f = Fields::of(node, path, &RESOURCES)?;
    let mut out = Resources::default();
    if let Some(l) = f.get("limits") {
        let lf = Fields::of(l, &f.path_of("limits"), &LIMITS)?;
        out.limits = Limits {
            cpus: lf.opt("cpus", cpus)?.filter(|c| *c > 0),
            memory: lf.opt("memory", bytes)?.filter(|m| *m > 0),
            pids: lf.opt("pids", |n, p| int_in(n, p, -1, i64::MAX))?,
        };
        if let (Some(m), Some(n)) = (out.limits.memory, lf.get("memory")) {
            // The kernel refuses tiny memory limits, as Docker does below 6 MiB.
            if m < 6 * 1024 * 1024 {
                return Err(invalid(
                    &n.loc,
                    &lf.path_of("memory"),
                    "a memory limit must be at least 6 MiB",
                ));
            }
        }
    }
    if let Some(r) = f.get("reservations") {
        let rf = Fields::of(r, &f.path_of("reservations"), &RESERVATIONS)?;
        out.reservations = Limits {
            cpus: rf.opt("cpus", cpus)?.filter(|c| *c > 0),
            memory: rf.opt("memory", bytes)?.filter(|m| *m > 0),
            pids: None,
        };
    }
    Ok(out)
}

fn check_reservations(r: &Resources, svc: &Fields<'_>, f: &Fields<'_>) -> Result<()> {
    let over =
        |res: Option<i64>, lim: Option<i64>| matches!((res, lim), (Some(a), Some(b)) if a > b);
    let mem = |v: Option<u64>| v.and_then(|m| i64::try_from(m).ok());
    if over(r.reservations.cpus, r.limits.cpus)
        || over(mem(r.reservations.memory), mem(r.limits.memory))
    {
        // A reservation comes from deploy.resources or mem_reservation: one is there.
        let (n, path) = match f.get("resources") {
            Some(n) => (n, f.path_of("resources")),
            None => match svc.get("mem_reservation") {
                Some(n) => (n, svc.path_of("mem_reservation")),
                None => return Ok(()),
            },
        };
        return Err(invalid(
            &n.loc,
            &path,
            "a reservation is larger than its limit",
        ));
    }
    Ok(())
}

const PLACEMENT: Schema = Schema {
    known: &["constraints", "preferences", "max_replicas_per_node"],
    unsupported: &[],
};
const PREFERENCE: Schema = Schema {
    known: &["spread"],
    unsupported: &[],
};

fn placement(node: &Node, path: &str) -> Result<Placement> {
    let f = Fields::of(node, path, &PLACEMENT)?;
    let mut out = Placement::default();
    if let Some(c) = f.get("constraints") {
        let p = f.path_of("constraints");
        out.constraints = string_list(c, &p)?;
        for (i, constraint) in out.constraints.iter().enumerate() {
            if let Err(m) = check_constraint(constraint) {
                let item = match &c.value {
                    Value::Seq(items) => items.get(i).unwrap_or(c),
                    _ => c,
                };
                return Err(invalid(&item.loc, &index(&p, i), m));
            }
        }
    }
    if let Some(prefs) = f.get("preferences") {
        let p = f.path_of("preferences");
        let Value::Seq(items) = &prefs.value else {
            return Err(wrong(prefs, &p, "a list of preferences"));
        };
        for (i, item) in items.iter().enumerate() {
            let ip = index(&p, i);
            let pf = Fields::of(item, &ip, &PREFERENCE)?;
            let Some(spread) = pf.get("spread") else {
                return Err(super::error::ComposeError::at(
                    &item.loc,
                    &ip,
                    super::error::ErrorKind::Missing {
                        key: "spread",
                        why: "a node label, e.g. node.labels.zone",
                    },
                ));
            };
            let label = string(spread, &pf.path_of("spread"))?;
            if !label.starts_with("node.labels.") || label.len() == "node.labels.".len() {
                return Err(invalid(
                    &spread.loc,
                    &pf.path_of("spread"),
                    format!("{label:?}: spread over a node label, e.g. node.labels.zone"),
                ));
            }
            out.preferences.push(Preference { spread: label });
        }
    }
    out.max_replicas_per_node = f.opt("max_replicas_per_node", uint)?.filter(|m| *m > 0);
    Ok(out)
}

/// `node.labels.zone==b`, `node.role!=manager`, `node.hostname==n1`, `node.id==...`,
/// `node.platform.os==linux`, `node.platform.arch==amd64`, `engine.labels.disk==ssd`.
fn check_constraint(c: &str) -> std::result::Result<(), String> {
    let (lhs, rhs) = match (c.split_once("=="), c.split_once("!=")) {
        (Some(parts), _) | (None, Some(parts)) => parts,
        (None, None) => return Err(format!("{c:?} needs == or != (e.g. node.labels.zone==b)")),
    };
    let lhs = lhs.trim();
    let known = matches!(
        lhs,
        "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch"
    ) || ["node.labels.", "engine.labels."]
        .iter()
        .any(|p| lhs.starts_with(p) && lhs.len() > p.len());
    if !known {
        return Err(format!(
            "{c:?}: constraints test node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.<name> or engine.labels.<name>"
        ));
    }
    if rhs.trim().is_empty() {
        return Err(format!("{c:?} compares with nothing"));
    }
    if lhs == "node.role" && !matches!(rhs.trim(), "manager" | "worker") {
        return Err(format!("{c:?}: a node's role is manager or worker"));
    }
    Ok(())
}

const UPDATE_CONFIG: Schema = Schema {
    known: &[
        "parallelism",
        "delay",
        "failure_action",
        "monitor",
        "max_failure_ratio",
        "order",
    ],
    unsupported: &[],
};

fn update_config(node: &Node, path: &str, is_update: bool) -> Result<UpdateConfig> {
    let f = Fields::of(node, path, &UPDATE_CONFIG)?;
    let mut out = UpdateConfig::default();
    if let Some(p) = f.opt("parallelism", uint)? {
        out.parallelism = p;
    }
    if let Some(d) = f.opt("delay", super::decode::duration)? {
        out.delay = d;
    }
    if let Some(m) = f.opt("monitor", super::decode::duration)? {
        out.monitor = m;
    }
    if let Some(n) = f.get("failure_action") {
        out.failure_action = match string(n, &f.path_of("failure_action"))?.as_str() {
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" if is_update => FailureAction::Rollback,
            "rollback" => {
                return Err(invalid(
                    &n.loc,
                    &f.path_of("failure_action"),
                    "a failed rollback cannot roll back: pause or continue",
                ));
            }
            other => {
                return Err(invalid(
                    &n.loc,
                    &f.path_of("failure_action"),
                    format!(
                        "unknown failure_action {other:?} ({})",
                        if is_update {
                            "pause, continue or rollback"
                        } else {
                            "pause or continue"
                        }
                    ),
                ));
            }
        };
    }
    if let Some(n) = f.get("max_failure_ratio") {
        let r = float(n, &f.path_of("max_failure_ratio"))?;
        if !(0.0..=1.0).contains(&r) {
            return Err(invalid(
                &n.loc,
                &f.path_of("max_failure_ratio"),
                format!("{r} is not a ratio between 0 and 1"),
            ));
        }
        out.max_failure_ratio = r as f32;
    }
    if let Some(n) = f.get("order") {
        out.order = match string(n, &f.path_of("order"))?.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            other => {
                return Err(invalid(
                    &n.loc,
                    &f.path_of("order"),
                    format!("unknown order {other:?} (stop-first or start-first)"),
                ));
            }
        };
    }
    Ok(out)
}

const RESTART_POLICY: Schema = Schema {
    known: &["condition", "delay", "max_attempts", "window"],
    unsupported: &[],
};

fn restart_policy(node: &Node, path: &str) -> Result<RestartPolicy> {
    let f = Fields::of(node, path, &RESTART_POLICY)?;
    let mut out = RestartPolicy::default();
    if let Some(n) = f.get("condition") {
        out.condition = match string(n, &f.path_of("condition"))?.as_str() {
            "none" => RestartCondition::None,
            "on-failure" => RestartCondition::OnFailure,
            "any" => RestartCondition::Any,
            other => {
                return Err(invalid(
                    &n.loc,
                    &f.path_of("condition"),
                    format!("unknown condition {other:?} (none, on-failure or any)"),
                ));
            }
        };
    }
    if let Some(d) = f.opt("delay", super::decode::duration)? {
        out.delay = d;
    }
    out.max_attempts = f.opt("max_attempts", uint)?.filter(|m| *m > 0);
    if let Some(w) = f.opt("window", super::decode::duration)? {
        out.window = w;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints() {
        for ok in [
            "node.labels.zone==b",
            "node.role != manager",
            "node.hostname==n1",
            "node.platform.os==linux",
        ] {
            assert!(check_constraint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "zone==b",
            "node.labels.==x",
            "node.role==boss",
            "node.labels.a",
            "node.labels.a==",
        ] {
            assert!(check_constraint(bad).is_err(), "{bad}");
        }
    }
}
