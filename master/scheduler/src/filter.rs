//! What a task asks of a node (`Requirements`, read once per spec) and the filters that
//! turn a node away (`Rejection`), in pipeline order: the static ones (readiness,
//! availability, platform, constraints) depend only on the node and the spec; the
//! dynamic ones (replicas per node, host ports, memory, CPU) on what is placed there.

use std::fmt;

use skiff_proto::v1 as pb;

use crate::constraint::{Constraint, ConstraintError, Key, normalize_arch};

/// A host-mode published port: only one task per node can hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub port: u32,
    pub udp: bool,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{}/{proto}", self.port)
    }
}

/// Why one node can't take one task. Ordered as the pipeline runs, so a tally of them
/// reads in that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// The node is down, disconnected or has not reported yet.
    NotReady,
    /// The operator paused or drained the node.
    Unavailable,
    /// None of the spec's platforms is the node's.
    Platform,
    /// The `index`-th constraint of the spec (as written in `text`) is not satisfied.
    Constraint {
        index: usize,
        text: String,
    },
    /// The node already runs `max_replicas_per_node` tasks of the service.
    MaxReplicas(u64),
    /// Another task on the node publishes this port in host mode.
    HostPort(HostPort),
    InsufficientMemory,
    InsufficientCpu,
}

impl Rejection {
    /// Static rejections hold for every task of a spec until the node itself changes.
    pub fn is_static(&self) -> bool {
        matches!(
            self,
            Rejection::NotReady
                | Rejection::Unavailable
                | Rejection::Platform
                | Rejection::Constraint { .. }
        )
    }
}

/// Everything placement needs from a task's spec, parsed once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirements {
    pub constraints: Vec<Constraint>,
    /// Texts of the constraints as the spec wrote them, for messages.
    pub constraint_texts: Vec<String>,
    pub platforms: Vec<(String, String, String)>,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    /// Sorted, without duplicates.
    pub host_ports: Vec<HostPort>,
    /// 0 = no limit.
    pub max_replicas_per_node: u64,
    /// Spread preferences, outermost first.
    pub preferences: Vec<Key>,
    pub binpack: bool,
}

impl Requirements {
    /// Reads the placement, reservations and host ports of `spec`.
    pub fn from_spec(spec: &pb::ServiceSpec) -> Result<Requirements, ConstraintError> {
        let mut req = Requirements::default();
        if let Some(p) = &spec.placement {
            for text in &p.constraints {
                req.constraints.push(Constraint::parse(text)?);
                req.constraint_texts.push(text.trim().to_owned());
            }
            for pref in &p.preferences {
                let key = Key::parse(&pref.label).ok_or_else(|| ConstraintError::UnknownKey {
                    text: pref.label.clone(),
                    key: pref.label.clone(),
                })?;
                req.preferences.push(key);
            }
            req.platforms = p
                .platforms
                .iter()
                .map(|pl| {
                    (
                        pl.os.to_ascii_lowercase(),
                        normalize_arch(&pl.architecture.to_ascii_lowercase()).to_owned(),
                        pl.variant.clone(),
                    )
                })
                .collect();
            req.max_replicas_per_node = p.max_replicas_per_node;
            req.binpack = p.binpack;
        }
        if let Some(r) = spec
            .resources
            .as_ref()
            .and_then(|r| r.reservations.as_ref())
        {
            req.nano_cpus = r.nano_cpus.max(0);
            req.memory_bytes = r.memory_bytes.max(0);
        }
        req.host_ports = host_ports(spec);
        Ok(req)
    }

    /// The filters that depend only on the node: readiness, availability, platform,
    /// constraints. The first one that fails is returned.
    pub fn static_check(&self, node: &pb::Node) -> Result<(), Rejection> {
        if node.state() != pb::NodeState::Ready {
            return Err(Rejection::NotReady);
        }
        let availability = node
            .spec
            .as_ref()
            .map_or(pb::NodeAvailability::Active, |s| s.availability());
        if availability != pb::NodeAvailability::Active {
            return Err(Rejection::Unavailable);
        }
        self.placement_check(node)
    }

    /// Platform and constraints only: whether the spec may ever run on this node,
    /// whatever its state. The global orchestrator uses it to decide which nodes get a
    /// task.
    pub fn placement_check(&self, node: &pb::Node) -> Result<(), Rejection> {
        if !self.platforms.is_empty() && !self.platform_matches(node) {
            return Err(Rejection::Platform);
        }
        for (index, c) in self.constraints.iter().enumerate() {
            if !c.matches(node) {
                return Err(Rejection::Constraint {
                    index,
                    text: self.constraint_texts[index].clone(),
                });
            }
        }
        Ok(())
    }

    fn platform_matches(&self, node: &pb::Node) -> bool {
        let Some(np) = node.description.as_ref().and_then(|d| d.platform.as_ref()) else {
            return false;
        };
        let os = np.os.to_ascii_lowercase();
        let arch = normalize_arch(&np.architecture.to_ascii_lowercase()).to_owned();
        self.platforms.iter().any(|(pos, parch, pvariant)| {
            (pos.is_empty() || *pos == os)
                && (parch.is_empty() || *parch == arch)
                && (pvariant.is_empty() || np.variant.is_empty() || *pvariant == np.variant)
        })
    }
}

/// Host-mode published ports of a spec (ingress ports are answered by every node's
/// routing mesh and never conflict).
pub fn host_ports(spec: &pb::ServiceSpec) -> Vec<HostPort> {
    let mut ports: Vec<HostPort> = spec
        .endpoint
        .as_ref()
        .map(|e| {
            e.ports
                .iter()
                .filter(|p| {
                    p.publish_mode() == pb::port_config::PublishMode::Host && p.published_port != 0
                })
                .map(|p| HostPort {
                    port: p.published_port,
                    udp: p.protocol() == pb::port_config::Protocol::Udp,
                })
                .collect()
        })
        .unwrap_or_default();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: pb::NodeState, availability: pb::NodeAvailability) -> pb::Node {
        pb::Node {
            id: "n".into(),
            state: state as i32,
            spec: Some(pb::NodeSpec {
                availability: availability as i32,
                ..Default::default()
            }),
            description: Some(pb::NodeDescription {
                platform: Some(pb::Platform {
                    os: "linux".into(),
                    architecture: "aarch64".into(),
                    variant: "v8".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec_with_platforms(platforms: &[(&str, &str, &str)]) -> pb::ServiceSpec {
        pb::ServiceSpec {
            placement: Some(pb::Placement {
                platforms: platforms
                    .iter()
                    .map(|(os, arch, variant)| pb::Platform {
                        os: (*os).into(),
                        architecture: (*arch).into(),
                        variant: (*variant).into(),
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn readiness_and_availability_come_first() {
        let req = Requirements::default();
        let ready = node(pb::NodeState::Ready, pb::NodeAvailability::Active);
        assert_eq!(req.static_check(&ready), Ok(()));
        for state in [
            pb::NodeState::Down,
            pb::NodeState::Unknown,
            pb::NodeState::Disconnected,
        ] {
            let n = node(state, pb::NodeAvailability::Drain);
            assert_eq!(req.static_check(&n), Err(Rejection::NotReady));
        }
        for a in [pb::NodeAvailability::Pause, pb::NodeAvailability::Drain] {
            let n = node(pb::NodeState::Ready, a);
            assert_eq!(req.static_check(&n), Err(Rejection::Unavailable));
        }
    }

    #[test]
    fn platforms_match_on_os_arch_and_variant_with_aliases() {
        let n = node(pb::NodeState::Ready, pb::NodeAvailability::Active);
        let ok = [
            vec![("linux", "arm64", "")],
            vec![("", "", "")],
            vec![("linux", "", "")],
            vec![("LINUX", "aarch64", "v8")],
            vec![("windows", "amd64", ""), ("linux", "arm64", "")],
        ];
        for platforms in ok {
            let req = Requirements::from_spec(&spec_with_platforms(&platforms)).expect("spec");
            assert_eq!(req.static_check(&n), Ok(()), "{platforms:?}");
        }
        let bad = [
            vec![("linux", "amd64", "")],
            vec![("windows", "", "")],
            vec![("linux", "arm64", "v7")],
        ];
        for platforms in bad {
            let req = Requirements::from_spec(&spec_with_platforms(&platforms)).expect("spec");
            assert_eq!(
                req.static_check(&n),
                Err(Rejection::Platform),
                "{platforms:?}"
            );
        }
    }

    #[test]
    fn the_first_failing_constraint_is_named() {
        let spec = pb::ServiceSpec {
            placement: Some(pb::Placement {
                constraints: vec!["node.role==worker".into(), " node.labels.zone==b".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = Requirements::from_spec(&spec).expect("spec");
        let n = node(pb::NodeState::Ready, pb::NodeAvailability::Active);
        assert_eq!(
            req.static_check(&n),
            Err(Rejection::Constraint {
                index: 1,
                text: "node.labels.zone==b".into()
            })
        );
    }

    #[test]
    fn only_host_mode_published_ports_count() {
        let port = |published, mode: pb::port_config::PublishMode, udp| pb::PortConfig {
            target_port: 80,
            published_port: published,
            publish_mode: mode as i32,
            protocol: if udp {
                pb::port_config::Protocol::Udp as i32
            } else {
                pb::port_config::Protocol::Tcp as i32
            },
            ..Default::default()
        };
        use pb::port_config::PublishMode::{Host, Ingress};
        let spec = pb::ServiceSpec {
            endpoint: Some(pb::EndpointSpec {
                ports: vec![
                    port(8080, Host, false),
                    port(8080, Host, false),
                    port(53, Host, true),
                    port(443, Ingress, false),
                    port(0, Host, false),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let ports = host_ports(&spec);
        assert_eq!(
            ports,
            vec![
                HostPort {
                    port: 53,
                    udp: true
                },
                HostPort {
                    port: 8080,
                    udp: false
                }
            ]
        );
        assert_eq!(ports[0].to_string(), "53/udp");
    }

    #[test]
    fn reservations_and_placement_options_are_read() {
        let spec = pb::ServiceSpec {
            resources: Some(pb::ResourceRequirements {
                limits: None,
                reservations: Some(pb::Resources {
                    nano_cpus: 500_000_000,
                    memory_bytes: 64 << 20,
                    pids: 0,
                }),
            }),
            placement: Some(pb::Placement {
                preferences: vec![pb::SpreadOver {
                    label: "node.labels.zone".into(),
                }],
                max_replicas_per_node: 2,
                binpack: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = Requirements::from_spec(&spec).expect("spec");
        assert_eq!(req.nano_cpus, 500_000_000);
        assert_eq!(req.memory_bytes, 64 << 20);
        assert_eq!(req.preferences, vec![Key::Label("zone".into())]);
        assert_eq!(req.max_replicas_per_node, 2);
        assert!(req.binpack);
    }
}
