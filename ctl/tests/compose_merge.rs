//! Several `-f` files merged in order by the Compose Specification's merge rules, the
//! default file discovery (compose.yaml + compose.override.yaml), and profiles.

mod compose_common;

use compose_common::{fixtures, load_docs, load_fixtures};
use skiffctl::compose::ComposeArgs;

#[test]
fn base_and_prod_files_merge_by_the_spec_rules() {
    let p = load_fixtures(&["merge/compose.yaml", "merge/prod.yaml"], &[])
        .expect("loads")
        .project;
    assert_eq!(p.name, "merged");
    let web = &p.services["web"];
    // Scalars: the later file wins.
    assert_eq!(web.image, "example/web:1.1");
    assert_eq!(web.deploy.replicas, Some(5));
    // command: replaced, not appended.
    assert_eq!(
        web.command.as_deref().expect("command"),
        ["serve", "--port", "80", "--prod"]
    );
    // environment: merged by key, whatever form each file uses.
    assert_eq!(web.environment["LOG_LEVEL"], "warn");
    assert_eq!(web.environment["REGION"], "eu");
    assert_eq!(web.environment["EXTRA"], "1");
    assert_eq!(web.labels["tier"], "edge");
    // ports: unique by (ip, target, published, protocol): 80:80 once, 8443:443 added.
    let published: Vec<Option<u16>> = web.ports.iter().map(|p| p.published).collect();
    assert_eq!(published, [Some(80), Some(443), Some(8443)]);
    // volumes: unique by target: /srv/static now comes from static-v2.
    assert_eq!(web.volumes.len(), 2);
    assert_eq!(web.volumes[0].target, "/srv/static");
    assert_eq!(web.volumes[0].source.as_deref(), Some("static-v2"));
    // Lists of strings: union.
    assert_eq!(web.cap_add, ["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
    assert_eq!(
        web.deploy.placement.constraints,
        ["node.labels.zone==a", "node.labels.zone==b"]
    );
    // !reset and !override.
    let worker = &p.services["worker"];
    assert!(worker.healthcheck.is_none());
    assert_eq!(worker.networks.keys().collect::<Vec<_>>(), ["front"]);
    // Top-level volumes merged.
    assert_eq!(
        p.volumes.keys().collect::<Vec<_>>(),
        ["static", "static-v2"]
    );
    // A profile-only service is skipped without --profile.
    assert!(!p.services.contains_key("debug"));
}

#[test]
fn order_matters() {
    let p = load_fixtures(&["merge/prod.yaml", "merge/compose.yaml"], &[]);
    // prod.yaml alone first: its worker has no image, compose.yaml adds it; web's
    // image ends up 1.0 since compose.yaml is now the later file.
    let p = p.expect("loads").project;
    assert_eq!(p.services["web"].image, "example/web:1.0");
    assert_eq!(p.services["web"].deploy.replicas, Some(2));
}

#[test]
fn an_override_file_merges_over_its_base() {
    let p = load_fixtures(&["merge/compose.yaml", "merge/compose.override.yaml"], &[])
        .expect("loads")
        .project;
    assert_eq!(p.services["web"].environment["LOG_LEVEL"], "debug");
    assert_eq!(p.services["web"].environment["REGION"], "eu");
}

#[test]
fn profiles_select_services() {
    let dir = fixtures().join("merge");
    let mut args = ComposeArgs {
        files: vec![dir.join("compose.yaml")],
        ..Default::default()
    };
    let loaded = args.load().expect("loads");
    assert!(!loaded.project.services.contains_key("debug"));
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("service debug is skipped")),
        "{:?}",
        loaded.warnings
    );
    args.profiles = vec!["debug".to_owned()];
    let p = args.load().expect("loads").project;
    assert!(p.services.contains_key("debug"));
    args.profiles = vec!["*".to_owned()];
    assert!(
        args.load()
            .expect("loads")
            .project
            .services
            .contains_key("debug")
    );
}

#[test]
fn a_dependency_on_an_inactive_profile_is_an_error() {
    let err = load_docs(
        &[(
            "app.yaml",
            "services:\n  web:\n    image: x\n    depends_on: [tools]\n  tools:\n    image: y\n    profiles: [ops]\n",
        )],
        &[],
    )
    .expect_err("inactive dependency");
    assert_eq!(
        err.to_string(),
        "app.yaml:4:18: services.web.depends_on.tools: `tools` runs only with the profile ops (activate one with --profile)"
    );
}

#[test]
fn an_override_file_may_add_a_service_and_extend_lists() {
    let p = load_docs(
        &[
            (
                "a.yaml",
                "services:\n  web:\n    image: x\n    expose: [\"80\"]\n    deploy:\n      labels: {a: '1'}\n",
            ),
            (
                "b.yaml",
                "services:\n  web:\n    expose: [\"80\", \"81\"]\n    deploy:\n      labels: [b=2]\n  extra:\n    image: y\n",
            ),
        ],
        &[],
    )
    .expect("loads")
    .project;
    assert_eq!(p.services["web"].expose, ["80", "81"]);
    assert_eq!(p.services["web"].deploy.labels.len(), 2);
    assert!(p.services.contains_key("extra"));
}

#[test]
fn a_later_file_can_fix_what_an_earlier_one_left_out() {
    // The base alone has no image; the override supplies it.
    load_docs(
        &[
            ("base.yaml", "services:\n  web:\n    ports: [\"80:80\"]\n"),
            ("images.yaml", "services:\n  web:\n    image: nginx\n"),
        ],
        &[],
    )
    .expect("merged result is complete");
}

#[test]
fn extends_from_another_file_and_from_the_same_file() {
    let args = ComposeArgs {
        files: vec![fixtures().join("extends/compose.yaml")],
        ..Default::default()
    };
    let p = args.load().expect("loads").project;
    let web = &p.services["web"];
    assert_eq!(web.image, "example/webapp:1");
    assert_eq!(web.ports[0].published, Some(8000));
    assert_eq!(
        web.environment["LOG"], "info",
        "environment wins over env_file"
    );
    assert_eq!(
        web.environment["FROM_FILE"], "1",
        "env_file found beside the base file"
    );
    assert_eq!(web.environment["DEBUG"], "1");
    assert_eq!(web.deploy.replicas, Some(2));
    assert!(web.healthcheck.is_some());
    let canary = &p.services["canary"];
    assert_eq!(canary.image, "example/webapp:2");
    assert_eq!(canary.ports.len(), 1);
    assert_eq!(canary.ports[0].published, Some(8001));
    assert_eq!(canary.environment["DEBUG"], "1");
    assert_eq!(canary.deploy.replicas, Some(1));
}
