//! The normalized project as skiff's wire request (`pb::DeployRequest`). Every list is
//! in a fixed order (services, networks and volumes by name, environment by key), so
//! the same files always make byte-for-byte the same request: a redeploy compares equal
//! and changes nothing.

use skiff_proto::v1 as pb;

use super::model::{
    DependsCondition, DeployMode, EndpointMode, FailureAction, Limits, MountKind, NetworkMode,
    Project, Protocol, PublishMode, RestartCondition, Service, UpdateConfig, UpdateOrder,
};

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The deploy request for `project` (not pruning, not a dry run).
pub fn deploy_request(project: &Project) -> pb::DeployRequest {
    pb::DeployRequest {
        project: project.name.clone(),
        services: project
            .services
            .iter()
            .map(|(name, svc)| service_spec(project, name, svc))
            .collect(),
        networks: project
            .networks
            .iter()
            .map(|(key, n)| pb::NetworkSpec {
                name: n.name.clone().unwrap_or_else(|| key.clone()),
                project: if n.external {
                    String::new()
                } else {
                    project.name.clone()
                },
                driver: n.driver.clone(),
                subnet: n
                    .ipam
                    .as_ref()
                    .and_then(|i| i.config.first())
                    .map(|c| c.subnet.clone())
                    .unwrap_or_default(),
                internal: n.internal,
                attachable: n.attachable,
                labels: n.labels.clone().into_iter().collect(),
                external: n.external,
            })
            .collect(),
        volumes: project
            .volumes
            .iter()
            .map(|(key, v)| pb::VolumeSpec {
                name: v.name.clone().unwrap_or_else(|| key.clone()),
                project: if v.external {
                    String::new()
                } else {
                    project.name.clone()
                },
                driver: v.driver.clone(),
                labels: v.labels.clone().into_iter().collect(),
                external: v.external,
            })
            .collect(),
        prune: false,
        dry_run: false,
    }
}

/// The name a service's reference to network or volume `key` goes by on the wire: the
/// key inside the project, or an external resource's cluster-wide name.
fn network_name(project: &Project, key: &str) -> String {
    project
        .networks
        .get(key)
        .and_then(|n| n.name.clone())
        .unwrap_or_else(|| key.to_owned())
}

fn volume_name(project: &Project, key: &str) -> String {
    project
        .volumes
        .get(key)
        .and_then(|v| v.name.clone())
        .unwrap_or_else(|| key.to_owned())
}

fn service_spec(project: &Project, name: &str, svc: &Service) -> pb::ServiceSpec {
    let d = &svc.deploy;
    let container = pb::ContainerSpec {
        image: svc.image.clone(),
        entrypoint: svc.entrypoint.clone().unwrap_or_default(),
        command: svc.command.clone().unwrap_or_default(),
        env: svc
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        working_dir: svc.working_dir.clone().unwrap_or_default(),
        user: svc.user.clone().unwrap_or_default(),
        hostname: svc.hostname.clone().unwrap_or_default(),
        mounts: svc
            .volumes
            .iter()
            .map(|m| pb::Mount {
                r#type: match m.kind {
                    MountKind::Bind => pb::mount::Type::Bind,
                    MountKind::Volume => pb::mount::Type::Volume,
                    MountKind::Tmpfs => pb::mount::Type::Tmpfs,
                } as i32,
                source: match (m.kind, &m.source) {
                    (MountKind::Volume, Some(s)) => volume_name(project, s),
                    (_, s) => s.clone().unwrap_or_default(),
                },
                target: m.target.clone(),
                read_only: m.read_only,
                tmpfs_size_bytes: m.tmpfs.as_ref().and_then(|t| t.size).unwrap_or(0),
                tmpfs_mode: m.tmpfs.as_ref().and_then(|t| t.mode).unwrap_or(0),
            })
            .collect(),
        cap_add: svc.cap_add.clone(),
        cap_drop: svc.cap_drop.clone(),
        read_only: svc.read_only,
        init: svc.init,
        stop_grace_period_ms: ms(svc.stop_grace_period),
        stop_signal: svc.stop_signal.clone().unwrap_or_default(),
        ulimits: svc
            .ulimits
            .iter()
            .map(|(name, u)| pb::Ulimit {
                name: name.clone(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        healthcheck: svc.healthcheck.as_ref().map(|h| pb::HealthCheck {
            test: h.test.clone(),
            interval_ms: ms(h.interval),
            timeout_ms: ms(h.timeout),
            start_period_ms: ms(h.start_period),
            retries: h.retries,
        }),
        labels: svc.labels.clone().into_iter().collect(),
        no_new_privileges: svc
            .security_opt
            .iter()
            .any(|o| o == "no-new-privileges:true"),
        network_mode: match svc.network_mode {
            None => String::new(),
            Some(NetworkMode::Host) => "host".to_owned(),
            Some(NetworkMode::None) => "none".to_owned(),
        },
    };
    let platforms = svc
        .platform
        .as_deref()
        .map(|p| {
            let mut parts = p.split('/');
            vec![pb::Platform {
                os: parts.next().unwrap_or_default().to_owned(),
                architecture: parts.next().unwrap_or_default().to_owned(),
                variant: parts.next().unwrap_or_default().to_owned(),
            }]
        })
        .unwrap_or_default();
    pb::ServiceSpec {
        name: name.to_owned(),
        project: project.name.clone(),
        labels: d.labels.clone().into_iter().collect(),
        container: Some(container),
        mode: Some(match d.mode {
            DeployMode::Replicated => pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
                replicas: d.replicas.unwrap_or(1),
            }),
            DeployMode::Global => pb::service_spec::Mode::Global(pb::GlobalMode {}),
        }),
        restart_policy: Some(pb::RestartPolicy {
            condition: match d.restart_policy.condition {
                RestartCondition::Any => pb::restart_policy::Condition::Any,
                RestartCondition::OnFailure => pb::restart_policy::Condition::OnFailure,
                RestartCondition::None => pb::restart_policy::Condition::None,
            } as i32,
            delay_ms: ms(d.restart_policy.delay),
            max_attempts: d.restart_policy.max_attempts.unwrap_or(0),
            window_ms: ms(d.restart_policy.window),
        }),
        placement: Some(pb::Placement {
            constraints: d.placement.constraints.clone(),
            preferences: d
                .placement
                .preferences
                .iter()
                .map(|p| pb::SpreadOver {
                    label: p.spread.clone(),
                })
                .collect(),
            max_replicas_per_node: d.placement.max_replicas_per_node.unwrap_or(0),
            platforms,
            binpack: false,
        }),
        resources: Some(pb::ResourceRequirements {
            limits: Some(resources(&d.resources.limits)),
            reservations: Some(resources(&d.resources.reservations)),
        }),
        update_config: Some(update_config(&d.update_config)),
        rollback_config: Some(update_config(&d.rollback_config)),
        endpoint: Some(pb::EndpointSpec {
            mode: match d.endpoint_mode {
                EndpointMode::Vip => pb::endpoint_spec::Mode::Vip,
                EndpointMode::Dnsrr => pb::endpoint_spec::Mode::Dnsrr,
            } as i32,
            ports: svc
                .ports
                .iter()
                .map(|p| pb::PortConfig {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: match p.protocol {
                        Protocol::Tcp => pb::port_config::Protocol::Tcp,
                        Protocol::Udp => pb::port_config::Protocol::Udp,
                    } as i32,
                    target_port: u32::from(p.target),
                    published_port: p.published.map(u32::from).unwrap_or(0),
                    publish_mode: match p.mode {
                        PublishMode::Ingress => pb::port_config::PublishMode::Ingress,
                        PublishMode::Host => pb::port_config::PublishMode::Host,
                    } as i32,
                })
                .collect(),
        }),
        networks: svc
            .networks
            .iter()
            .map(|(key, n)| pb::NetworkAttachmentConfig {
                network: network_name(project, key),
                aliases: n.aliases.clone(),
            })
            .collect(),
        depends_on: svc
            .depends_on
            .iter()
            .map(|(dep, d)| pb::Dependency {
                service: dep.clone(),
                condition: match d.condition {
                    DependsCondition::ServiceStarted => pb::dependency::Condition::ServiceStarted,
                    DependsCondition::ServiceHealthy => pb::dependency::Condition::ServiceHealthy,
                    DependsCondition::ServiceCompletedSuccessfully => {
                        pb::dependency::Condition::ServiceCompletedSuccessfully
                    }
                } as i32,
            })
            .collect(),
    }
}

fn resources(l: &Limits) -> pb::Resources {
    pb::Resources {
        nano_cpus: l.cpus.unwrap_or(0),
        memory_bytes: l.memory.and_then(|m| i64::try_from(m).ok()).unwrap_or(0),
        pids: l.pids.unwrap_or(0),
    }
}

fn update_config(u: &UpdateConfig) -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: u.parallelism,
        delay_ms: ms(u.delay),
        failure_action: match u.failure_action {
            FailureAction::Pause => pb::update_config::FailureAction::Pause,
            FailureAction::Continue => pb::update_config::FailureAction::Continue,
            FailureAction::Rollback => pb::update_config::FailureAction::Rollback,
        } as i32,
        monitor_ms: ms(u.monitor),
        max_failure_ratio: u.max_failure_ratio,
        order: match u.order {
            UpdateOrder::StopFirst => pb::update_config::Order::StopFirst,
            UpdateOrder::StartFirst => pb::update_config::Order::StartFirst,
        } as i32,
    }
}
