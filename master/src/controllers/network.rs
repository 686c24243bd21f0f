//! The network allocator, as a pure pass over a snapshot: subnets and VXLAN ids for
//! networks that have none, a virtual IP per service on each of its networks (VIP mode),
//! and an address on each network for every new task. Returns store mutations, each
//! compare-and-swap on the version it read.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use skiff_ipam::{allocate_address, allocate_network, used_addresses};
use skiff_proto::TaskStateExt;
use skiff_proto::v1 as pb;

use crate::dispatcher::service::Snapshot;

/// What one pass decided: writes, and problems to report on the objects concerned.
#[derive(Debug, Default)]
pub struct Allocations {
    pub mutations: Vec<pb::Mutation>,
    /// (task id, reason) for tasks whose network could not be set up.
    pub task_errors: Vec<(String, String)>,
}

fn put(op: pb::mutation::Op, meta: Option<&pb::Meta>) -> pb::Mutation {
    pb::Mutation {
        op: Some(op),
        expected_version: meta.map_or(0, |m| m.version),
        unconditional: false,
    }
}

/// One allocation pass over `snap`.
pub fn allocate(snap: &Snapshot, cluster_cidr: &str) -> Allocations {
    let mut out = Allocations::default();
    // 1. Networks without a subnet.
    let mut networks: Vec<pb::Network> = snap.networks.clone();
    let mut done: Vec<pb::Network> = networks
        .iter()
        .filter(|n| !n.subnet.is_empty())
        .cloned()
        .collect();
    for net in networks.iter_mut().filter(|n| n.subnet.is_empty()) {
        let spec = net.spec.clone().unwrap_or_default();
        match allocate_network(cluster_cidr, &spec, &done) {
            Ok(a) => {
                net.subnet = a.subnet;
                net.gateway = a.gateway;
                net.vni = a.vni;
                done.push(net.clone());
                out.mutations.push(put(
                    pb::mutation::Op::PutNetwork(net.clone()),
                    net.meta.as_ref(),
                ));
            }
            Err(err) => tracing::warn!(network = %net.id, %err, "network not allocated"),
        }
    }
    let by_name: HashMap<(String, String), &pb::Network> = done
        .iter()
        .filter_map(|n| {
            let s = n.spec.as_ref()?;
            Some(((s.project.clone(), s.name.clone()), n))
        })
        .collect();
    let mut used: HashMap<String, BTreeSet<Ipv4Addr>> = done
        .iter()
        .map(|n| (n.id.clone(), used_addresses(n, &snap.services, &snap.tasks)))
        .collect();

    // 2. Virtual IPs for services in VIP mode.
    for svc in &snap.services {
        let spec = svc.spec.clone().unwrap_or_default();
        if spec
            .endpoint
            .as_ref()
            .is_some_and(|e| e.mode() == pb::endpoint_spec::Mode::Dnsrr)
        {
            continue;
        }
        let mut changed = svc.clone();
        for att in &spec.networks {
            let Some(net) = by_name.get(&(spec.project.clone(), att.network.clone())) else {
                continue;
            };
            if changed.virtual_ips.iter().any(|v| v.network_id == net.id) {
                continue;
            }
            if let Some(set) = used.get_mut(&net.id)
                && let Ok(addr) = allocate_address(net, set)
            {
                changed.virtual_ips.push(pb::VirtualIp {
                    network_id: net.id.clone(),
                    addr,
                });
            }
        }
        if changed.virtual_ips != svc.virtual_ips {
            out.mutations.push(put(
                pb::mutation::Op::PutService(changed),
                svc.meta.as_ref(),
            ));
        }
    }

    // 3. Addresses for new tasks.
    for task in &snap.tasks {
        let live = task.desired_state() <= pb::TaskState::Running
            && !task
                .status
                .as_ref()
                .is_some_and(|s| s.state().is_terminal());
        if !live || !task.networks.is_empty() || !needs_attachments(task) {
            continue;
        }
        let spec = task.spec.clone().unwrap_or_default();
        let mut attachments = Vec::new();
        let mut error = None;
        for att in &spec.networks {
            let Some(net) = by_name.get(&(spec.project.clone(), att.network.clone())) else {
                error = Some(format!(
                    "network {:?} of project {:?} does not exist or has no subnet yet",
                    att.network, spec.project
                ));
                break;
            };
            let Some(set) = used.get_mut(&net.id) else {
                continue;
            };
            match allocate_address(net, set) {
                Ok(addr) => attachments.push(pb::NetworkAttachment {
                    network_id: net.id.clone(),
                    network_name: att.network.clone(),
                    addresses: vec![addr],
                    aliases: att.aliases.clone(),
                }),
                Err(err) => {
                    error = Some(err.to_string());
                    break;
                }
            }
        }
        match error {
            Some(reason) => out.task_errors.push((task.id.clone(), reason)),
            None => {
                let mut t = task.clone();
                t.networks = attachments;
                out.mutations
                    .push(put(pb::mutation::Op::PutTask(t), task.meta.as_ref()));
            }
        }
    }
    out
}

/// Whether `task` joins networks (and so needs an address on each before it can run):
/// it names networks and its network mode is neither "host" nor "none".
pub fn needs_attachments(task: &pb::Task) -> bool {
    let Some(spec) = task.spec.as_ref() else {
        return false;
    };
    let mode = spec
        .container
        .as_ref()
        .map(|c| c.network_mode.as_str())
        .unwrap_or("");
    !(mode == "host" || mode == "none" || spec.networks.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let net = pb::Network {
            id: "n1".into(),
            meta: Some(pb::Meta {
                version: 3,
                ..Default::default()
            }),
            spec: Some(pb::NetworkSpec {
                name: "front".into(),
                project: "demo".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = pb::ServiceSpec {
            name: "web".into(),
            project: "demo".into(),
            networks: vec![pb::NetworkAttachmentConfig {
                network: "front".into(),
                aliases: vec!["www".into()],
            }],
            ..Default::default()
        };
        let svc = pb::Service {
            id: "s1".into(),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        let task = |id: &str| pb::Task {
            id: id.into(),
            service_id: "s1".into(),
            spec: Some(spec.clone()),
            desired_state: pb::TaskState::Running as i32,
            ..Default::default()
        };
        Snapshot {
            networks: vec![net],
            services: vec![svc],
            tasks: vec![task("t1"), task("t2")],
            ..Default::default()
        }
    }

    #[test]
    fn a_new_network_gets_a_subnet_its_services_a_vip_and_tasks_addresses_in_one_pass() {
        let snap = snapshot();
        let out = allocate(&snap, "10.213.0.0/16");
        assert!(out.task_errors.is_empty(), "{:?}", out.task_errors);
        let mut addrs = Vec::new();
        for m in &out.mutations {
            match &m.op {
                Some(pb::mutation::Op::PutNetwork(net)) => {
                    assert_eq!(m.expected_version, 3);
                    assert_eq!(net.subnet, "10.213.0.0/24");
                    assert_eq!(net.gateway, "10.213.0.1");
                }
                Some(pb::mutation::Op::PutService(s)) => addrs.push(s.virtual_ips[0].addr.clone()),
                Some(pb::mutation::Op::PutTask(t)) => {
                    assert_eq!(t.networks[0].aliases, vec!["www"]);
                    addrs.push(t.networks[0].addresses[0].clone());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            addrs,
            vec!["10.213.0.2/24", "10.213.0.3/24", "10.213.0.4/24"]
        );
    }

    #[test]
    fn a_task_on_an_unknown_network_is_reported_not_written() {
        let mut snap = snapshot();
        snap.networks.clear();
        let out = allocate(&snap, "10.213.0.0/16");
        assert!(out.mutations.is_empty());
        assert_eq!(out.task_errors.len(), 2);
        assert!(
            out.task_errors[0].1.contains("\"front\""),
            "{:?}",
            out.task_errors
        );
    }

    #[test]
    fn allocated_tasks_and_services_are_left_alone() {
        let snap = snapshot();
        let mut out = allocate(&snap, "10.213.0.0/16");
        let mut next = snap.clone();
        for m in out.mutations.drain(..) {
            match m.op {
                Some(pb::mutation::Op::PutNetwork(n)) => next.networks = vec![n],
                Some(pb::mutation::Op::PutService(s)) => next.services = vec![s],
                Some(pb::mutation::Op::PutTask(t)) => {
                    let i = next.tasks.iter().position(|x| x.id == t.id).expect("task");
                    next.tasks[i] = t;
                }
                _ => {}
            }
        }
        assert!(
            allocate(&next, "10.213.0.0/16").mutations.is_empty(),
            "a second pass changes nothing"
        );
    }
}
