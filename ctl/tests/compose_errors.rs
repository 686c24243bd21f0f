//! Every kind of bad input gives one error that names the file, the line and column,
//! and the key's path. Each test writes the exact message a user would read.

mod compose_common;

use compose_common::{error_of, load_docs, load_fixtures};

#[test]
fn broken_indentation() {
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n   ports: [\"80:80\"]\n"),
        "app.yaml:4:4: invalid YAML: while parsing a block mapping, did not find expected key"
    );
}

#[test]
fn unclosed_flow_list() {
    let err = error_of("services:\n  web:\n    image: nginx\n    command: [a, b\n    user: x\n");
    assert!(err.starts_with("app.yaml:5:9: invalid YAML: "), "{err}");
}

#[test]
fn tab_indentation() {
    let err = error_of("services:\n\tweb:\n    image: nginx\n");
    assert!(
        err.starts_with("app.yaml:2:2: invalid YAML: tabs disallowed"),
        "{err}"
    );
}

#[test]
fn duplicate_key() {
    let err = error_of("services:\n  web:\n    image: nginx\n    image: httpd\n");
    assert!(
        err.starts_with("app.yaml:4:5: invalid YAML: duplicate mapping key"),
        "{err}"
    );
}

#[test]
fn unknown_alias() {
    let err = error_of("services:\n  web:\n    <<: *base\n    image: nginx\n");
    assert!(err.starts_with("app.yaml:3:9: invalid YAML: "), "{err}");
}

#[test]
fn not_utf8() {
    let err = match load_docs(&[("app.yaml", "")], &[]) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("no service") || err.contains("missing"),
        "{err}"
    );
    let bytes = b"services:\n  web:\n    image: ng\xffinx\n";
    let err = skiffctl::compose::load(&skiffctl::compose::LoadInput {
        files: vec![skiffctl::compose::Source {
            name: "app.yaml".into(),
            bytes: bytes.to_vec(),
        }],
        env: &Default::default(),
        project_name: None,
        project_dir: "/nonexistent/app".into(),
        profiles: Vec::new(),
        read_file: &|p| std::fs::read(p),
    })
    .expect_err("not UTF-8");
    assert_eq!(err.to_string(), "app.yaml:3:14: not valid UTF-8");
}

#[test]
fn document_is_not_a_mapping() {
    assert_eq!(
        error_of("- web\n- db\n"),
        "app.yaml:1:1: the document must be a mapping, found a list"
    );
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        error_of("service:\n  web:\n    image: nginx\n"),
        "app.yaml:1:1: service: unknown key `service` (did you mean `services`?)"
    );
}

#[test]
fn unknown_service_key_with_a_suggestion() {
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    enviroment:\n      A: 1\n"),
        "app.yaml:4:5: services.web.enviroment: unknown key `enviroment` (did you mean `environment`?)"
    );
}

#[test]
fn unknown_deploy_key() {
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    deploy:\n      replica: 3\n"),
        "app.yaml:5:7: services.web.deploy.replica: unknown key `replica` (did you mean `replicas`?)"
    );
}

#[test]
fn wrong_type_replicas() {
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    deploy:\n      replicas: three\n"),
        "app.yaml:5:17: services.web.deploy.replicas: expected an integer, found \"three\""
    );
}

#[test]
fn wrong_type_collection_for_a_scalar() {
    assert_eq!(
        error_of("services:\n  web:\n    image: [nginx]\n"),
        "app.yaml:3:12: services.web.image: expected a string, found a list"
    );
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    read_only: maybe\n"),
        "app.yaml:4:16: services.web.read_only: expected true or false, found \"maybe\""
    );
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    ports: 80\n"),
        "app.yaml:4:12: services.web.ports: expected a list of ports, found 80"
    );
}

#[test]
fn unsupported_keys_say_why() {
    assert_eq!(
        error_of("services:\n  web:\n    build: .\n    image: nginx\n"),
        "app.yaml:3:5: services.web.build: `build` is not supported by skiff: skiff runs images from a registry and does not build them: build and push the image, then name it with `image:`"
    );
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    privileged: true\n"),
        "app.yaml:4:5: services.web.privileged: `privileged` is not supported by skiff: a privileged container can take over the node it runs on; grant single capabilities with `cap_add`"
    );
    let err = error_of("services:\n  web:\n    image: nginx\n    container_name: web1\n");
    assert!(err.starts_with("app.yaml:4:5: services.web.container_name: `container_name` is not supported by skiff: "), "{err}");
    let err = error_of(
        "services:\n  web:\n    image: nginx\n    devices: [\"/dev/ttyUSB0:/dev/ttyUSB0\"]\n",
    );
    assert!(
        err.starts_with("app.yaml:4:5: services.web.devices: `devices` is not supported"),
        "{err}"
    );
}

#[test]
fn missing_image() {
    assert_eq!(
        error_of("services:\n  web:\n    ports: [\"80:80\"]\n"),
        "app.yaml:2:3: services.web: missing `image`: skiff runs images from a registry"
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        error_of(
            "services:\n  web:\n    image: nginx\n    healthcheck:\n      test: [CMD, true]\n      interval: 10 seconds\n"
        ),
        "app.yaml:6:17: services.web.healthcheck.interval: \"10 seconds\" is not a duration (examples: \"10s\", \"1m30s\", \"500ms\")"
    );
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    stop_grace_period: 30\n"),
        "app.yaml:4:24: services.web.stop_grace_period: a duration needs a unit: write \"30s\" for seconds"
    );
}

#[test]
fn bad_memory_size() {
    assert_eq!(
        error_of(
            "services:\n  web:\n    image: nginx\n    deploy:\n      resources:\n        limits:\n          memory: 1.5 gigs\n"
        ),
        "app.yaml:7:19: services.web.deploy.resources.limits.memory: \"1.5 gigs\" is not a size (examples: 512m, 1g, 1.5GiB, 65536)"
    );
}

#[test]
fn undefined_network_and_volume() {
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    networks: [front]\n"),
        "app.yaml:4:16: services.web.networks.front: network `front` is not defined (declare it under the top-level `networks`)"
    );
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    volumes:\n      - data:/data\n"),
        "app.yaml:5:9: services.web.volumes[0].source: volume `data` is not defined (declare it under the top-level `volumes`)"
    );
}

#[test]
fn undefined_dependency_and_cycles() {
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx\n    depends_on: [db]\n"),
        "app.yaml:4:18: services.web.depends_on.db: service `db` is not defined"
    );
    assert_eq!(
        error_of(
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on:\n      a:\n        condition: service_healthy\n"
        ),
        "app.yaml:4:18: services.a.depends_on.b: dependency cycle: a -> b -> a"
    );
    // `required: false` lets a dependency be absent.
    load_docs(
        &[("app.yaml", "services:\n  web:\n    image: nginx\n    depends_on:\n      db: {condition: service_started, required: false}\n")],
        &[],
    )
    .expect("optional dependency");
}

#[test]
fn required_variable_missing() {
    assert_eq!(
        error_of(
            "services:\n  db:\n    image: postgres\n    environment:\n      POSTGRES_PASSWORD: ${DB_PASSWORD:?set DB_PASSWORD in .env}\n"
        ),
        "app.yaml:5:26: services.db.environment.POSTGRES_PASSWORD: required variable DB_PASSWORD is missing a value: set DB_PASSWORD in .env"
    );
}

#[test]
fn broken_interpolation() {
    assert_eq!(
        error_of("services:\n  web:\n    image: \"nginx:${TAG\"\n"),
        "app.yaml:3:12: services.web.image: invalid interpolation in \"nginx:${TAG\": unclosed `${`"
    );
    assert_eq!(
        error_of("services:\n  web:\n    image: nginx:${TAG/1.2}\n"),
        "app.yaml:3:12: services.web.image: invalid interpolation in \"nginx:${TAG/1.2}\": after the name comes `}`, `-`, `:-`, `?`, `:?`, `+` or `:+`"
    );
}

#[test]
fn bad_short_port() {
    assert_eq!(
        error_of(
            "services:\n  web:\n    image: nginx\n    ports:\n      - \"8080:80\"\n      - \"80:99999\"\n"
        ),
        "app.yaml:6:9: services.web.ports[1]: \"80:99999\": \"99999\" is not a port number (1-65535)"
    );
    let err = error_of("services:\n  web:\n    image: nginx\n    ports: [\"127.0.0.1:8080:80\"]\n");
    assert!(
        err.starts_with(
            "app.yaml:4:13: services.web.ports[0].host_ip: binding to 127.0.0.1 is not supported"
        ),
        "{err}"
    );
    let err = error_of("services:\n  web:\n    image: nginx\n    ports: [\"3000\"]\n");
    assert!(
        err.starts_with("app.yaml:4:13: services.web.ports[0]: port 3000 is not published"),
        "{err}"
    );
}

#[test]
fn relative_bind_mount() {
    assert_eq!(
        error_of(
            "services:\n  web:\n    image: nginx\n    volumes:\n      - ./site:/usr/share/nginx/html:ro\n"
        ),
        "app.yaml:5:9: services.web.volumes[0].source: \"./site\" is relative: a bind mount's source is a path on the node that runs the task, so it must be absolute"
    );
}

#[test]
fn invalid_project_name() {
    assert_eq!(
        error_of("name: My App\nservices:\n  web:\n    image: nginx\n"),
        "app.yaml:1:7: name: invalid project name \"My App\": it must start with a lowercase letter or a digit"
    );
}

#[test]
fn error_in_a_later_file_names_that_file() {
    let err = load_docs(
        &[
            ("app.yaml", "services:\n  web:\n    image: nginx\n"),
            (
                "prod.yaml",
                "services:\n  web:\n    deploy:\n      replicas: -2\n",
            ),
        ],
        &[],
    )
    .expect_err("negative");
    assert_eq!(
        err.to_string(),
        "prod.yaml:4:17: services.web.deploy.replicas: expected a non-negative integer, found -2"
    );
}

#[test]
fn error_in_an_anchor_points_at_its_definition() {
    assert_eq!(
        error_of(
            "x-deploy: &deploy\n  replicas: many\nservices:\n  web:\n    image: nginx\n    deploy: *deploy\n"
        ),
        "app.yaml:2:13: services.web.deploy.replicas: expected an integer, found \"many\""
    );
}

#[test]
fn error_in_an_env_file_points_into_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("web.env"), "A=1\nB='open\n").expect("write");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n    env_file: web.env\n",
    )
    .expect("write");
    let args = skiffctl::compose::ComposeArgs {
        files: vec![dir.path().join("compose.yaml")],
        ..Default::default()
    };
    let err = args.load().expect_err("bad env file");
    let env_path = dir
        .path()
        .canonicalize()
        .expect("canonical")
        .join("web.env");
    assert_eq!(
        err.to_string(),
        format!("{}:2:3: B: unterminated '-quoted value", env_path.display())
    );
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n    env_file: missing.env\n",
    )
    .expect("write");
    let err = args.load().expect_err("missing env file").to_string();
    assert!(
        err.contains(":4:15: services.web.env_file[0].path: cannot read ")
            && err.contains("missing.env"),
        "{err}"
    );
}

#[test]
fn unsupported_tag() {
    let err = error_of("services:\n  web:\n    image: !!python/object nginx\n");
    assert!(err.contains("unsupported tag"), "{err}");
    assert!(err.starts_with("app.yaml:3:"), "{err}");
}

#[test]
fn global_service_with_replicas() {
    assert_eq!(
        error_of(
            "services:\n  agent:\n    image: x\n    deploy:\n      mode: global\n      replicas: 2\n"
        ),
        "app.yaml:6:17: services.agent.deploy.replicas: a global service runs one task per node: it takes no replica count"
    );
}

#[test]
fn conflicting_published_ports() {
    assert_eq!(
        error_of(
            "services:\n  a:\n    image: x\n    ports: [\"80:80\"]\n  b:\n    image: x\n    ports: [\"80:8080\"]\n"
        ),
        "app.yaml:7:5: services.b.ports: port 80/tcp is already published by service a"
    );
}

#[test]
fn bad_constraint() {
    assert_eq!(
        error_of(
            "services:\n  web:\n    image: x\n    deploy:\n      placement:\n        constraints: [disktype=ssd]\n"
        ),
        "app.yaml:6:23: services.web.deploy.placement.constraints[0]: \"disktype=ssd\" needs == or != (e.g. node.labels.zone==b)"
    );
}

#[test]
fn fixture_with_an_unsupported_secret_names_the_key_in_the_service() {
    let err = load_docs(
        &[(
            "app.yaml",
            "services:\n  web:\n    image: x\n    secrets: [token]\n",
        )],
        &[],
    )
    .expect_err("secrets");
    assert!(
        err.to_string().starts_with(
            "app.yaml:4:5: services.web.secrets: `secrets` is not supported by skiff: "
        ),
        "{err}"
    );
    // The whole fixture directory's broken file, as loaded from disk.
    assert!(load_fixtures(&["spec-readme.yaml"], &[]).is_err());
}
