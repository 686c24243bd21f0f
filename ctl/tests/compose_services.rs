//! Key-by-key semantics of a service: how each Compose form maps onto skiff's model,
//! where two forms of one setting meet, and the checks that need the whole service.

mod compose_common;

use std::time::Duration;

use compose_common::{error_of, load_doc};
use skiffctl::compose::model::{MountKind, NetworkMode, PublishMode, RestartCondition, Service};

fn svc(body: &str) -> Service {
    let text = format!("services:\n  s:\n    image: x\n{body}");
    load_doc(&text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .project
        .services
        .remove("s")
        .expect("service s")
}

fn err(body: &str) -> String {
    error_of(&format!("services:\n  s:\n    image: x\n{body}"))
}

#[test]
fn restart_maps_to_the_restart_policy() {
    let cases = [
        ("\"no\"", RestartCondition::None, None),
        ("no", RestartCondition::None, None),
        ("always", RestartCondition::Any, None),
        ("unless-stopped", RestartCondition::Any, None),
        ("on-failure", RestartCondition::OnFailure, None),
        ("on-failure:3", RestartCondition::OnFailure, Some(3)),
    ];
    for (value, condition, attempts) in cases {
        let s = svc(&format!("    restart: {value}\n"));
        assert_eq!(s.deploy.restart_policy.condition, condition, "{value}");
        assert_eq!(s.deploy.restart_policy.max_attempts, attempts, "{value}");
    }
    // deploy.restart_policy wins over restart.
    let s = svc(
        "    restart: \"no\"\n    deploy:\n      restart_policy: {condition: any, delay: 2s}\n",
    );
    assert_eq!(s.deploy.restart_policy.condition, RestartCondition::Any);
    assert_eq!(s.deploy.restart_policy.delay, Duration::from_secs(2));
    assert!(
        err("    restart: sometimes\n")
            .starts_with("app.yaml:4:14: services.s.restart: unknown restart policy")
    );
}

#[test]
fn scale_and_service_level_resources_fold_into_deploy() {
    let s = svc(
        "    scale: 4\n    cpus: 0.5\n    mem_limit: 1g\n    mem_reservation: 256m\n    pids_limit: 100\n",
    );
    assert_eq!(s.deploy.replicas, Some(4));
    assert_eq!(s.deploy.resources.limits.cpus, Some(500_000_000));
    assert_eq!(s.deploy.resources.limits.memory, Some(1 << 30));
    assert_eq!(s.deploy.resources.reservations.memory, Some(256 << 20));
    assert_eq!(s.deploy.resources.limits.pids, Some(100));
    assert_eq!(
        svc("    pids_limit: -1\n").deploy.resources.limits.pids,
        None
    );
    // Agreeing forms are fine; disagreeing ones are an error.
    assert_eq!(
        svc("    scale: 2\n    deploy: {replicas: 2}\n")
            .deploy
            .replicas,
        Some(2)
    );
    assert_eq!(
        err("    scale: 3\n    deploy: {replicas: 2}\n"),
        "app.yaml:4:12: services.s.scale: scale 3 disagrees with deploy.replicas 2"
    );
    assert_eq!(
        err("    mem_limit: 1g\n    deploy:\n      resources:\n        limits: {memory: 2g}\n"),
        "app.yaml:4:16: services.s.mem_limit: disagrees with deploy.resources.limits.memory: give only one of them"
    );
    assert_eq!(
        err(
            "    deploy:\n      resources:\n        limits: {memory: 1g}\n        reservations: {memory: 2g}\n"
        ),
        "app.yaml:6:9: services.s.deploy.resources: a reservation is larger than its limit"
    );
    assert_eq!(
        err("    deploy:\n      resources:\n        limits: {memory: 1m}\n"),
        "app.yaml:6:26: services.s.deploy.resources.limits.memory: a memory limit must be at least 6 MiB"
    );
}

#[test]
fn commands_split_like_compose() {
    let s = svc("    entrypoint: /bin/sh -c\n    command: 'echo \"a b\" c\\ d'\n");
    assert_eq!(
        s.entrypoint.as_deref().expect("entrypoint"),
        ["/bin/sh", "-c"]
    );
    assert_eq!(
        s.command.as_deref().expect("command"),
        ["echo", "a b", "c d"]
    );
    assert_eq!(
        err("    command: echo hi; rm -rf /\n"),
        "app.yaml:4:14: services.s.command: shell operators (; & | < >) need a shell: write the command as [\"sh\", \"-c\", \"...\"]"
    );
    assert!(err("    entrypoint: []\n").contains("an empty command would clear the image's"));
    assert!(err("    command: \"echo 'unclosed\"\n").ends_with("a quote is not closed"));
}

#[test]
fn long_ports_and_modes() {
    let s = svc(
        "    ports:\n      - target: 53\n        published: \"5353\"\n        protocol: udp\n        mode: host\n        name: dns\n      - 9000-9001:9000-9001\n",
    );
    assert_eq!(s.ports.len(), 3);
    assert_eq!(s.ports[0].published, Some(5353));
    assert_eq!(s.ports[0].mode, PublishMode::Host);
    assert_eq!(s.ports[0].name.as_deref(), Some("dns"));
    assert_eq!(s.ports[2].target, 9001);
    assert!(err("    ports: [\"80:80/sctp\"]\n").contains("protocol \"sctp\" is not supported"));
    assert!(err("    ports: [\"80:80\", \"80:81\"]\n").contains("port 80/tcp is published twice"));
    assert!(
        err("    ports: [{target: 80, published: 80, app_protocol: http}]\n")
            .contains("`app_protocol` is not supported")
    );
    // dnsrr has no VIP for the routing mesh.
    assert!(
        err("    ports: [\"80:80\"]\n    deploy: {endpoint_mode: dnsrr}\n")
            .contains("publish with mode: host")
    );
    svc(
        "    ports: [{target: 80, published: 80, mode: host}]\n    deploy: {endpoint_mode: dnsrr}\n",
    );
}

#[test]
fn long_volumes_and_tmpfs() {
    let s = svc(
        "    volumes:\n      - type: tmpfs\n        target: /cache\n        tmpfs: {size: 10m, mode: 0700}\n      - type: bind\n        source: /etc/localtime\n        target: /etc/localtime\n        read_only: true\n        consistency: cached\n",
    );
    assert_eq!(s.volumes[0].kind, MountKind::Tmpfs);
    assert_eq!(
        s.volumes[0].tmpfs.as_ref().and_then(|t| t.size),
        Some(10 << 20)
    );
    assert_eq!(
        s.volumes[0].tmpfs.as_ref().and_then(|t| t.mode),
        Some(0o700)
    );
    assert!(s.volumes[1].read_only);
    assert!(
        err("    volumes: [\"/data\"]\n").contains("an anonymous volume at /data is not supported")
    );
    assert!(err("    volumes: [\"/a:/b:rslave\"]\n").contains("`propagation` is not supported"));
    assert!(err("    volumes: [\"/a:/b:Z\"]\n").contains("`selinux` is not supported"));
    assert!(
        err("    volumes: [\"/a:relative\"]\n").contains("a mount target must be an absolute path")
    );
    assert!(
        err("    volumes: [{type: npipe, source: x, target: /x}]\n")
            .contains("volume type \"npipe\" is not supported")
    );
    assert!(
        err("    tmpfs: /run\n    volumes: [{type: tmpfs, target: /run}]\n")
            .contains("two mounts have the target /run")
    );
}

#[test]
fn networking_modes() {
    let s = svc("    network_mode: host\n");
    assert_eq!(s.network_mode, Some(NetworkMode::Host));
    assert!(s.networks.is_empty());
    assert!(
        err("    network_mode: \"service:db\"\n")
            .contains("network_mode \"service:db\" is not supported")
    );
    assert!(
        err("    network_mode: none\n    networks: [default]\n")
            .contains("`networks` and `network_mode` cannot be combined")
    );
    assert!(
        err("    network_mode: host\n    ports: [\"80:80\"]\n").contains("cannot publish ports")
    );
    assert!(
        err("    networks:\n      default:\n        ipv4_address: 10.0.0.5\n")
            .contains("`ipv4_address` is not supported")
    );
}

#[test]
fn process_settings_are_normalized() {
    let s = svc(
        "    user: 1000\n    working_dir: /app\n    hostname: api-1\n    init: true\n    stop_signal: quit\n    stop_grace_period: 1m\n    cap_add: [sys_ptrace, CAP_NET_ADMIN, SYS_PTRACE]\n    ulimits:\n      nproc: 512\n      nofile: {soft: 1024, hard: 4096}\n    platform: linux/arm64/v8\n    security_opt: [\"no-new-privileges\"]\n",
    );
    assert_eq!(s.user.as_deref(), Some("1000"));
    assert_eq!(s.working_dir.as_deref(), Some("/app"));
    assert_eq!(s.hostname.as_deref(), Some("api-1"));
    assert!(s.init);
    assert_eq!(s.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(s.stop_grace_period, Duration::from_secs(60));
    assert_eq!(s.cap_add, ["CAP_SYS_PTRACE", "CAP_NET_ADMIN"]);
    assert_eq!(
        (s.ulimits["nproc"].soft, s.ulimits["nproc"].hard),
        (512, 512)
    );
    assert_eq!(
        (s.ulimits["nofile"].soft, s.ulimits["nofile"].hard),
        (1024, 4096)
    );
    assert_eq!(s.platform.as_deref(), Some("linux/arm64/v8"));
    assert_eq!(s.security_opt, ["no-new-privileges:true"]);
    assert!(err("    cap_add: [FLY]\n").contains("\"FLY\" is not a Linux capability"));
    assert!(err("    stop_signal: SIGNOPE\n").contains("is not a signal name"));
    assert!(err("    working_dir: app\n").contains("must be an absolute path"));
    assert!(
        err("    ulimits: {nofile: {soft: 10, hard: 5}}\n")
            .contains("soft limit 10 is above hard limit 5")
    );
    assert!(err("    ulimits: {files: 10}\n").contains("unknown ulimit \"files\""));
    assert!(
        err("    security_opt: [\"seccomp:unconfined\"]\n")
            .contains("only no-new-privileges is accepted")
    );
    assert!(err("    hostname: bad_host\n").contains("is not a valid hostname"));
}

#[test]
fn healthcheck_forms() {
    let s = svc("    healthcheck:\n      disable: true\n");
    assert_eq!(
        s.healthcheck.as_ref().map(|h| h.test.clone()),
        Some(vec!["NONE".to_owned()])
    );
    let s = svc("    healthcheck:\n      interval: 5s\n");
    assert!(
        s.healthcheck.as_ref().is_some_and(|h| h.test.is_empty()),
        "the image's test, new timing"
    );
    assert!(
        err("    healthcheck:\n      test: [\"curl\", \"-f\", \"x\"]\n")
            .contains("a test list starts with CMD")
    );
    assert!(
        err("    healthcheck:\n      test: [CMD]\n      start_interval: 1s\n")
            .contains("`start_interval` is not supported")
    );
}

#[test]
fn deploy_modes_and_policies() {
    assert!(
        err("    deploy: {mode: replicated-job}\n").contains("replicated-job is not supported")
    );
    assert!(
        err("    deploy: {mode: global, placement: {max_replicas_per_node: 1}}\n")
            .contains("replicated services only")
    );
    assert!(
        err("    deploy:\n      rollback_config: {failure_action: rollback}\n")
            .contains("a failed rollback cannot roll back")
    );
    assert!(
        err("    deploy:\n      update_config: {max_failure_ratio: 2}\n")
            .contains("is not a ratio between 0 and 1")
    );
    assert!(err("    deploy:\n      update_config: {order: random}\n").contains("unknown order"));
    assert!(
        err("    deploy:\n      placement: {preferences: [{spread: zone}]}\n")
            .contains("spread over a node label")
    );
    assert!(
        err("    deploy:\n      resources: {reservations: {devices: []}}\n")
            .contains("`devices` is not supported")
    );
    let s = svc("    deploy:\n      replicas: 0\n");
    assert_eq!(
        s.deploy.replicas,
        Some(0),
        "zero replicas is a valid way to park a service"
    );
}

#[test]
fn top_level_networks_and_volumes() {
    let bad = |tail: &str| error_of(&format!("services:\n  s:\n    image: x\n{tail}"));
    assert!(
        bad("networks:\n  n:\n    driver: bridge\n").contains("driver \"bridge\" is not supported")
    );
    assert!(
        bad("networks:\n  n:\n    name: custom\n")
            .contains("only an external network can have its own name")
    );
    assert!(
        bad("networks:\n  n:\n    ipam:\n      config: [{subnet: 10.1.2.3/24}]\n")
            .contains("did you mean 10.1.2.0/24?")
    );
    assert!(
        bad(
            "networks:\n  n:\n    ipam:\n      config: [{subnet: 10.1.0.0/24, gateway: 10.1.0.1}]\n"
        )
        .contains("`gateway` is not supported")
    );
    assert!(bad("networks:\n  n:\n    enable_ipv6: true\n").contains("IPv4 only"));
    assert!(
        bad("networks:\n  n:\n    external: true\n    internal: true\n")
            .contains("an external network is configured where it was made")
    );
    assert!(
        bad("volumes:\n  v:\n    driver: nfs\n").contains("volume driver \"nfs\" is not supported")
    );
    assert!(
        bad("volumes:\n  v:\n    driver_opts: {type: nfs}\n")
            .contains("`driver_opts` is not supported")
    );
    let p = load_doc("services:\n  s:\n    image: x\nnetworks:\n  n:\n    attachable: true\n    labels: [a=b]\nvolumes:\n  v:\n    external: true\n")
        .expect("loads")
        .project;
    assert!(p.networks["n"].attachable);
    assert_eq!(p.networks["n"].labels["a"], "b");
    assert_eq!(p.volumes["v"].name.as_deref(), Some("v"));
}
