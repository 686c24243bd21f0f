//! The names the embedded DNS answers, built from the endpoint table: pure data, looked
//! up by the querying container's address so a container only sees services on its own
//! networks. Names per service endpoint on a network: `<name>`, `<name>.<project>`,
//! `<project>_<name>`, each alias (and `<alias>.<project>`): the VIP (`vip` mode) or
//! the healthy backends (`dnsrr`); `tasks.<name>` and `tasks.<name>.<project>`: the
//! healthy backends.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use skiff_proto::v1 as pb;

use crate::attach::Endpoint;
use crate::overlay::{NetworkPlan, parse_host};

/// Names and addresses per network, plus who asks from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsTable {
    names: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    subnets: Vec<(Ipv4Net, String)>,
    clients: HashMap<Ipv4Addr, Vec<String>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsTable {
    /// `networks`: the networks of this node; `tasks`: its local tasks' endpoints (a
    /// container on several networks sees the names of all of them, whichever address
    /// it asks from).
    pub fn build(
        endpoints: Option<&pb::EndpointTable>,
        networks: &BTreeMap<String, NetworkPlan>,
        tasks: &BTreeMap<String, Vec<Endpoint>>,
    ) -> Self {
        let mut t = DnsTable {
            subnets: networks
                .values()
                .map(|n| (n.subnet, n.id.clone()))
                .collect(),
            ..Default::default()
        };
        for eps in tasks.values() {
            let nets: Vec<String> = eps.iter().map(|e| e.network_id.clone()).collect();
            for e in eps {
                t.clients.insert(e.addr.addr(), nets.clone());
            }
        }
        for s in endpoints.map(|e| e.services.as_slice()).unwrap_or_default() {
            if !networks.contains_key(&s.network_id) {
                continue;
            }
            let backends: Vec<Ipv4Addr> = s.backends.iter().filter_map(|b| parse_host(b)).collect();
            let service: Vec<Ipv4Addr> = match parse_host(&s.vip) {
                Some(vip) => vec![vip],
                None => backends.clone(),
            };
            let names = t.names.entry(s.network_id.clone()).or_default();
            let mut add = |name: String, addrs: &[Ipv4Addr]| {
                if !name.is_empty() {
                    let e = names.entry(normalize(&name)).or_default();
                    for a in addrs {
                        if !e.contains(a) {
                            e.push(*a);
                        }
                    }
                }
            };
            let mut labels = vec![s.name.clone()];
            labels.extend(s.aliases.iter().cloned());
            for l in labels.iter().filter(|l| !l.is_empty()) {
                add(l.clone(), &service);
                if !s.project.is_empty() {
                    add(format!("{l}.{}", s.project), &service);
                }
            }
            if !s.name.is_empty() {
                if !s.project.is_empty() {
                    add(format!("{}_{}", s.project, s.name), &service);
                    add(format!("tasks.{}.{}", s.name, s.project), &backends);
                }
                add(format!("tasks.{}", s.name), &backends);
            }
        }
        t
    }

    /// The networks a querying address belongs to.
    fn networks_of(&self, src: Ipv4Addr) -> Vec<&str> {
        if let Some(nets) = self.clients.get(&src) {
            return nets.iter().map(String::as_str).collect();
        }
        self.subnets
            .iter()
            .filter(|(s, _)| s.contains(&src))
            .map(|(_, id)| id.as_str())
            .collect()
    }

    /// `Some(addresses)` (possibly empty: the name exists without an address right now)
    /// when the name is a service on one of the asker's networks; `None`: not ours, forward.
    pub fn lookup(&self, src: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
        let name = normalize(name);
        let mut found: Option<Vec<Ipv4Addr>> = None;
        for net in self.networks_of(src) {
            if let Some(addrs) = self.names.get(net).and_then(|n| n.get(&name)) {
                let f = found.get_or_insert_with(Vec::new);
                f.extend(
                    addrs
                        .iter()
                        .filter(|a| !f.contains(a))
                        .copied()
                        .collect::<Vec<_>>(),
                );
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, third: u8) -> NetworkPlan {
        NetworkPlan::from_pb(&pb::Network {
            id: id.into(),
            subnet: format!("10.213.{third}.0/24"),
            gateway: format!("10.213.{third}.1"),
            vni: 4096 + u32::from(third),
            ..Default::default()
        })
        .expect("plan")
    }

    fn svc(net: &str, name: &str, vip: &str, backends: &[&str]) -> pb::ServiceEndpoint {
        pb::ServiceEndpoint {
            network_id: net.into(),
            name: name.into(),
            project: "shop".into(),
            vip: vip.into(),
            backends: backends.iter().map(|s| s.to_string()).collect(),
            aliases: vec!["www".into()],
            ..Default::default()
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn answers_per_mode_and_scope() {
        let nets = BTreeMap::from([
            ("a".to_owned(), plan("a", 1)),
            ("b".to_owned(), plan("b", 2)),
        ]);
        let table = pb::EndpointTable {
            revision: 1,
            services: vec![
                svc("a", "web", "10.213.1.100", &["10.213.1.5/24", "10.213.1.6"]),
                svc("b", "db", "", &["10.213.2.5", "10.213.2.6"]),
            ],
        };
        let t = DnsTable::build(Some(&table), &nets, &BTreeMap::new());
        let on_a = ip("10.213.1.9");
        assert_eq!(t.lookup(on_a, "web"), Some(vec![ip("10.213.1.100")]));
        assert_eq!(t.lookup(on_a, "WEB.shop."), Some(vec![ip("10.213.1.100")]));
        assert_eq!(t.lookup(on_a, "shop_web"), Some(vec![ip("10.213.1.100")]));
        assert_eq!(t.lookup(on_a, "www"), Some(vec![ip("10.213.1.100")]));
        assert_eq!(
            t.lookup(on_a, "tasks.web"),
            Some(vec![ip("10.213.1.5"), ip("10.213.1.6")])
        );
        assert_eq!(t.lookup(on_a, "db"), None, "db is on another network");
        assert_eq!(
            t.lookup(ip("10.213.2.9"), "db"),
            Some(vec![ip("10.213.2.5"), ip("10.213.2.6")])
        );
        assert_eq!(t.lookup(on_a, "example.org"), None);
    }

    #[test]
    fn a_container_on_two_networks_sees_both() {
        let nets = BTreeMap::from([
            ("a".to_owned(), plan("a", 1)),
            ("b".to_owned(), plan("b", 2)),
        ]);
        let ep = |n: &str, a: &str| Endpoint {
            network_id: n.into(),
            addr: a.parse().expect("net"),
            gateway: ip("10.213.1.1"),
            bridge: String::new(),
        };
        let tasks = BTreeMap::from([(
            "t".to_owned(),
            vec![ep("a", "10.213.1.9/24"), ep("b", "10.213.2.9/24")],
        )]);
        let table = pb::EndpointTable {
            revision: 1,
            services: vec![svc("b", "db", "", &[])],
        };
        let t = DnsTable::build(Some(&table), &nets, &tasks);
        assert_eq!(
            t.lookup(ip("10.213.1.9"), "db"),
            Some(vec![]),
            "known name, no healthy backend"
        );
    }
}
