//! Real compose files (the Compose Specification's own examples and realistic apps)
//! read the way Docker Compose reads them, normalize with defaults filled, print as
//! compose that reads back to the same project, and become a deterministic wire request.

mod compose_common;

use std::time::Duration;

use compose_common::{load_docs, load_fixtures};
use skiff_proto::v1 as pb;
use skiffctl::compose::model::{
    DependsCondition, DeployMode, EndpointMode, FailureAction, MountKind, Protocol, PublishMode,
    RestartCondition, UpdateOrder,
};
use skiffctl::compose::{ConfigArgs, Format, Project, config, deploy_request};

const VALID: &[&str] = &[
    "spec-readme-skiff.yaml",
    "spec-deploy.yaml",
    "wordpress.yaml",
    "voting-app.yaml",
    "web-db-cache.yaml",
];

fn env_for(file: &str) -> Vec<(&'static str, &'static str)> {
    if file == "web-db-cache.yaml" {
        vec![("DB_PASSWORD", "s3cret")]
    } else {
        Vec::new()
    }
}

fn load(file: &str) -> Project {
    load_fixtures(&[file], &env_for(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .project
}

#[test]
fn the_spec_readme_example_is_refused_for_its_configs() {
    let err = load_fixtures(&["spec-readme.yaml"], &[]).expect_err("configs/secrets");
    assert_eq!(
        err.to_string(),
        "spec-readme.yaml:28:1: configs: `configs` is not supported by skiff: skiff has no config store yet: bake the file into the image or use a volume"
    );
}

#[test]
fn the_spec_readme_example_without_configs_and_secrets() {
    let p = load("spec-readme-skiff.yaml");
    // No `name:`: the project is named after its directory.
    assert_eq!(p.name, "compose");
    let front = &p.services["frontend"];
    assert_eq!(front.image, "example/webapp");
    assert_eq!(front.ports.len(), 1);
    assert_eq!(front.ports[0].published, Some(443));
    assert_eq!(front.ports[0].target, 8043);
    assert_eq!(front.ports[0].mode, PublishMode::Ingress);
    assert_eq!(
        front.networks.keys().collect::<Vec<_>>(),
        ["back-tier", "front-tier"]
    );
    let back = &p.services["backend"];
    assert_eq!(back.volumes[0].kind, MountKind::Volume);
    assert_eq!(back.volumes[0].source.as_deref(), Some("db-data"));
    assert_eq!(back.volumes[0].target, "/etc/data");
    assert_eq!(p.volumes["db-data"].driver, "local");
    assert!(
        !p.networks.contains_key("default"),
        "every service names its networks"
    );
    // Defaults filled: Swarm's, since this is a cluster.
    assert_eq!(back.deploy.mode, DeployMode::Replicated);
    assert_eq!(back.deploy.replicas, Some(1));
    assert_eq!(back.deploy.restart_policy.condition, RestartCondition::Any);
    assert_eq!(back.deploy.restart_policy.delay, Duration::from_secs(5));
    assert_eq!(back.deploy.update_config.parallelism, 1);
    assert_eq!(
        back.deploy.update_config.failure_action,
        FailureAction::Pause
    );
    assert_eq!(back.deploy.update_config.monitor, Duration::from_secs(5));
    assert_eq!(back.stop_grace_period, Duration::from_secs(10));
}

#[test]
fn the_spec_deploy_section() {
    let p = load("spec-deploy.yaml");
    let d = &p.services["frontend"].deploy;
    assert_eq!(d.replicas, Some(6));
    assert_eq!(d.endpoint_mode, EndpointMode::Vip);
    assert_eq!(
        d.labels["com.example.description"],
        "This label will appear on the web service"
    );
    assert_eq!(d.resources.limits.cpus, Some(500_000_000));
    assert_eq!(d.resources.limits.memory, Some(50 << 20));
    assert_eq!(d.resources.limits.pids, Some(1));
    assert_eq!(d.resources.reservations.cpus, Some(250_000_000));
    assert_eq!(d.resources.reservations.memory, Some(20 << 20));
    assert_eq!(d.update_config.parallelism, 2);
    assert_eq!(d.update_config.delay, Duration::from_secs(10));
    assert_eq!(d.rollback_config.parallelism, 0);
    assert_eq!(d.rollback_config.failure_action, FailureAction::Continue);
    assert_eq!(d.rollback_config.monitor, Duration::from_secs(60));
    assert!((d.rollback_config.max_failure_ratio - 0.3).abs() < 1e-6);
    assert_eq!(d.rollback_config.order, UpdateOrder::StartFirst);
    assert_eq!(d.restart_policy.condition, RestartCondition::OnFailure);
    assert_eq!(d.restart_policy.max_attempts, Some(3));
    assert_eq!(d.restart_policy.window, Duration::from_secs(120));
    assert_eq!(
        d.placement.constraints,
        ["node.labels.disktype==ssd", "node.role!=manager"]
    );
    assert_eq!(d.placement.preferences[0].spread, "node.labels.zone");
    assert_eq!(d.placement.max_replicas_per_node, Some(2));

    let m = &p.services["monitor"];
    assert_eq!(m.deploy.mode, DeployMode::Global);
    assert_eq!(m.deploy.replicas, None);
    assert_eq!(m.deploy.endpoint_mode, EndpointMode::Dnsrr);
    let h = m.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(h.test, ["CMD", "curl", "-f", "http://localhost"]);
    assert_eq!(h.interval, Duration::from_secs(90));
    assert_eq!(h.timeout, Duration::from_secs(10));
    assert_eq!(h.start_period, Duration::from_secs(40));
    assert_eq!(h.retries, 3);
}

#[test]
fn wordpress_with_mysql() {
    let p = load("wordpress.yaml");
    let db = &p.services["db"];
    assert_eq!(
        db.command.as_deref(),
        Some(&["--default-authentication-plugin=mysql_native_password".to_owned()][..])
    );
    assert_eq!(db.environment["MYSQL_DATABASE"], "wordpress");
    assert_eq!(db.environment.len(), 4);
    // `restart: always` maps to the restart policy when deploy has none.
    assert_eq!(db.deploy.restart_policy.condition, RestartCondition::Any);
    assert_eq!(db.expose, ["3306", "33060"]);
    let wp = &p.services["wordpress"];
    // An unquoted 80:80 is a string in YAML 1.2 (YAML 1.1 would read base 60).
    assert_eq!(wp.ports[0].published, Some(80));
    assert_eq!(wp.ports[0].target, 80);
    assert_eq!(
        wp.depends_on["db"].condition,
        DependsCondition::ServiceStarted
    );
    // Services that name no network join the project's default network.
    assert!(wp.networks.contains_key("default"));
    assert_eq!(p.networks["default"].driver, "overlay");
    assert_eq!(p.volumes.len(), 2);
}

#[test]
fn the_voting_app_stack() {
    let loaded = load_fixtures(&["voting-app.yaml"], &[]).expect("loads");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("`version` is obsolete")),
        "{:?}",
        loaded.warnings
    );
    let p = loaded.project;
    assert_eq!(p.services.len(), 6);
    assert_eq!(p.services["vote"].ports[0].published, Some(5000));
    assert_eq!(p.services["vote"].deploy.replicas, Some(2));
    assert_eq!(
        p.services["db"].deploy.placement.constraints,
        ["node.role == manager"]
    );
    let worker = &p.services["worker"];
    assert_eq!(worker.deploy.labels["APP"], "VOTING");
    assert_eq!(worker.deploy.restart_policy.delay, Duration::from_secs(10));
    let viz = &p.services["visualizer"];
    assert_eq!(viz.stop_grace_period, Duration::from_secs(90));
    assert_eq!(viz.volumes[0].kind, MountKind::Bind);
    assert_eq!(
        viz.volumes[0].source.as_deref(),
        Some("/var/run/docker.sock")
    );
    // `networks: {frontend: , backend: }` with null values declares them.
    assert_eq!(
        p.networks.len(),
        3,
        "frontend, backend and default (visualizer)"
    );
}

#[test]
fn web_db_and_cache_with_health_checks_and_anchors() {
    let p = load("web-db-cache.yaml");
    assert_eq!(p.name, "shop");
    let web = &p.services["web"];
    assert_eq!(web.image, "registry.local:5000/shop/web:1.4.2");
    assert_eq!(
        web.command.as_deref().expect("command"),
        [
            "gunicorn",
            "--workers",
            "4",
            "--bind",
            "0.0.0.0:8000",
            "shop.wsgi:application"
        ]
    );
    assert_eq!(
        web.environment["DATABASE_URL"],
        "postgres://shop:s3cret@db:5432/shop"
    );
    assert_eq!(web.environment["FEATURE_FLAGS"], "");
    assert_eq!(web.environment["DEBUG"], "false");
    assert_eq!(web.environment["WORKERS"], "4");
    assert_eq!(
        web.environment["VERSION"], "1.10",
        "numbers keep their spelling"
    );
    assert_eq!(web.networks["back"].aliases, ["app"]);
    assert_eq!(
        web.depends_on["db"].condition,
        DependsCondition::ServiceHealthy
    );
    let h = web.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(
        h.test,
        [
            "CMD-SHELL",
            "curl -fsS http://localhost:8000/health || exit 1"
        ]
    );
    assert_eq!(h.retries, 5);
    assert!(web.read_only);
    let tmp = web
        .volumes
        .iter()
        .find(|m| m.kind == MountKind::Tmpfs)
        .expect("tmpfs");
    assert_eq!(tmp.target, "/tmp");
    assert_eq!(tmp.tmpfs.as_ref().and_then(|t| t.size), Some(64 << 20));
    assert_eq!(tmp.tmpfs.as_ref().and_then(|t| t.mode), Some(0o1777));
    assert_eq!(web.user.as_deref(), Some("1000:1000"));
    assert_eq!(web.cap_drop, ["ALL"]);
    assert_eq!(web.cap_add, ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(web.security_opt, ["no-new-privileges:true"]);
    // From the x-common anchor, through `<<`.
    assert_eq!(web.stop_grace_period, Duration::from_secs(20));
    assert_eq!(web.ulimits["nofile"].soft, 65536);
    assert_eq!(web.labels["com.example.team"], "storefront");
    assert_eq!(web.deploy.restart_policy.condition, RestartCondition::Any);
    assert_eq!(web.deploy.resources.limits.cpus, Some(1_500_000_000));
    assert_eq!(web.deploy.resources.limits.memory, Some(3 << 29));
    assert_eq!(web.deploy.resources.reservations.memory, Some(512 << 20));
    assert_eq!(
        web.deploy.update_config.failure_action,
        FailureAction::Rollback
    );
    assert_eq!(web.ports[0].protocol, Protocol::Tcp);

    let db = &p.services["db"];
    assert_eq!(db.environment["POSTGRES_PASSWORD"], "s3cret");
    assert_eq!(db.volumes[1].kind, MountKind::Bind);
    assert!(db.volumes[1].read_only);
    assert_eq!(db.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(
        db.healthcheck.as_ref().map(|h| h.interval),
        Some(Duration::from_secs(10))
    );

    let cache = &p.services["cache"];
    assert_eq!(cache.deploy.mode, DeployMode::Global);
    assert_eq!(
        cache.healthcheck.as_ref().map(|h| h.timeout),
        Some(Duration::from_secs(30))
    );
    assert!(p.networks["back"].internal);
    assert_eq!(
        p.networks["back"]
            .ipam
            .as_ref()
            .map(|i| i.config[0].subnet.as_str()),
        Some("10.77.0.0/24")
    );
    assert!(!p.networks.contains_key("default"));
    assert_eq!(p.volumes["pgdata"].labels["com.example.backup"], "nightly");
}

#[test]
fn the_lab_example_app_parses() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/web.yaml"),
    )
    .expect("deploy/examples/web.yaml");
    let p = load_docs(&[("web.yaml", &text)], &[])
        .expect("loads")
        .project;
    assert_eq!(p.name, "demo");
    assert_eq!(p.services["web"].deploy.replicas, Some(3));
    let cmd = p.services["web"].command.as_deref().expect("command");
    assert!(
        cmd[2].contains("hello from $(hostname)"),
        "$$ is a literal $: {cmd:?}"
    );
}

/// Serializes with `skiffctl config`'s code, in both formats.
fn render(project: &Project, format: Format) -> String {
    let loaded = skiffctl::compose::Loaded {
        project: project.clone(),
        warnings: Vec::new(),
    };
    let args = ConfigArgs {
        compose: Default::default(),
        quiet: false,
        services: false,
        wire: false,
    };
    config::render(&loaded, &args, format).expect("renders")
}

#[test]
fn config_output_reads_back_to_the_same_project() {
    for file in VALID {
        let p = load(file);
        let yaml = render(&p, Format::Yaml);
        let again = load_docs(&[("normalized.yaml", &yaml)], &[])
            .unwrap_or_else(|e| panic!("{file}: the normalized YAML does not load: {e}\n{yaml}"))
            .project;
        assert_eq!(again, p, "{file}: YAML round trip\n{yaml}");
        // JSON is YAML too.
        let json = render(&p, Format::Json);
        let again = load_docs(&[("normalized.json", &json)], &[])
            .unwrap_or_else(|e| panic!("{file}: the normalized JSON does not load: {e}\n{json}"))
            .project;
        assert_eq!(again, p, "{file}: JSON round trip");
    }
}

#[test]
fn the_wire_request_is_deterministic_and_complete() {
    for file in VALID {
        let a = deploy_request(&load(file));
        let b = deploy_request(&load(file));
        // Equal as messages; byte equality also needs prost maps to be BTreeMaps
        // (labels are HashMaps in the generated code).
        assert_eq!(a, b, "{file}: the same files must make the same request");
    }
    let req = deploy_request(&load("web-db-cache.yaml"));
    assert_eq!(req.project, "shop");
    let names: Vec<&str> = req.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cache", "db", "web"]);
    let web = &req.services[2];
    let c = web.container.as_ref().expect("container");
    assert_eq!(c.image, "registry.local:5000/shop/web:1.4.2");
    assert!(c.env.contains(&"REDIS_URL=redis://cache:6379/0".to_owned()));
    let mut sorted = c.env.clone();
    sorted.sort();
    assert_eq!(c.env, sorted, "environment sorted by key");
    assert!(c.no_new_privileges && c.read_only);
    assert_eq!(c.stop_grace_period_ms, 20_000);
    assert_eq!(c.healthcheck.as_ref().map(|h| h.interval_ms), Some(15_000));
    assert_eq!(c.mounts[0].r#type, pb::mount::Type::Tmpfs as i32);
    assert_eq!(c.mounts[0].tmpfs_mode, 0o1777);
    assert_eq!(
        web.mode,
        Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
            replicas: 3
        }))
    );
    let r = web.resources.as_ref().expect("resources");
    assert_eq!(r.limits.as_ref().map(|l| l.nano_cpus), Some(1_500_000_000));
    let u = web.update_config.as_ref().expect("update_config");
    assert_eq!(
        u.failure_action,
        pb::update_config::FailureAction::Rollback as i32
    );
    assert_eq!(u.order, pb::update_config::Order::StartFirst as i32);
    let ports = &web.endpoint.as_ref().expect("endpoint").ports;
    assert_eq!((ports[0].published_port, ports[0].target_port), (80, 8000));
    assert_eq!(web.depends_on[0].service, "cache");
    assert_eq!(
        web.depends_on[1].condition,
        pb::dependency::Condition::ServiceHealthy as i32
    );
    let back = web
        .networks
        .iter()
        .find(|n| n.network == "back")
        .expect("back");
    assert_eq!(back.aliases, ["app"]);
    let cache = &req.services[0];
    assert_eq!(
        cache.mode,
        Some(pb::service_spec::Mode::Global(pb::GlobalMode {}))
    );
    let back_net = req
        .networks
        .iter()
        .find(|n| n.name == "back")
        .expect("back");
    assert!(back_net.internal);
    assert_eq!(back_net.subnet, "10.77.0.0/24");
    assert_eq!(back_net.project, "shop");
    assert_eq!(req.volumes[0].name, "pgdata");
}

#[test]
fn external_networks_and_volumes_go_by_their_cluster_wide_names() {
    let p = load_docs(
        &[(
            "app.yaml",
            "services:\n  app:\n    image: x\n    networks: [shared]\n    volumes: [\"data:/data\"]\nnetworks:\n  shared:\n    external: true\n    name: infra_proxy\nvolumes:\n  data:\n    external: {name: legacy-data}\n",
        )],
        &[],
    )
    .expect("loads")
    .project;
    let req = deploy_request(&p);
    assert_eq!(req.networks.len(), 1);
    assert_eq!(req.networks[0].name, "infra_proxy");
    assert!(req.networks[0].external);
    assert_eq!(req.networks[0].project, "");
    assert_eq!(req.services[0].networks[0].network, "infra_proxy");
    assert_eq!(req.volumes[0].name, "legacy-data");
    assert_eq!(
        req.services[0]
            .container
            .as_ref()
            .map(|c| c.mounts[0].source.as_str()),
        Some("legacy-data")
    );
}
