//! `${VAR}` interpolation from the process environment and `.env`, as Docker Compose
//! does it: every form, precedence, escapes, casts after interpolation, and errors.

mod compose_common;

use compose_common::{load_docs, load_fixtures};

#[test]
fn every_form_against_env_and_dotenv() {
    let loaded = load_fixtures(
        &["interpolation/compose.yaml"],
        &[
            ("OVERRIDDEN", "from-process"),
            ("FROM_SHELL", "shell-value"),
        ],
    )
    .expect("loads");
    let app = &loaded.project.services["app"];
    assert_eq!(app.image, "registry.local:5000/app:latest");
    assert_eq!(
        app.command.as_deref().expect("command")[2],
        "echo $HOME ${NOT_A_VAR} costs 5$"
    );
    let env = &app.environment;
    let expect = [
        ("FROM_DOTENV", "dotenv-value"),
        ("OVERRIDDEN", "from-process"),
        ("DEFAULT_UNSET", "fallback"),
        ("DEFAULT_EMPTY", "fallback"),
        ("DASH_EMPTY", ""),
        ("DASH_UNSET", "fallback"),
        ("ALT_SET", "was set"),
        ("ALT_UNSET", ""),
        ("NESTED", "dotenv-value-nested"),
        ("BARE", "dotenv-value/bare"),
        ("QUOTED_IN_DOTENV", "a \"quoted\" value # not a comment"),
        ("PLAIN_UNSET", "xy"),
        ("FROM_SHELL", "shell-value"),
    ];
    for (k, v) in expect {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(
        !env.contains_key("NOT_IN_SHELL"),
        "a bare variable unset in the environment is left out"
    );
    // Strings become numbers where the schema wants numbers.
    assert_eq!(app.deploy.replicas, Some(3));
    assert_eq!(app.deploy.resources.limits.memory, Some(256 << 20));
    assert_eq!(
        loaded.warnings,
        ["the variable UNSET_VAR is not set: using an empty string"]
    );
}

#[test]
fn the_process_environment_wins_over_dotenv() {
    let loaded = load_fixtures(
        &["interpolation/compose.yaml"],
        &[
            ("REGISTRY", "mirror.local"),
            ("TAG", "2.0"),
            ("REPLICAS", "7"),
        ],
    )
    .expect("loads");
    let app = &loaded.project.services["app"];
    assert_eq!(app.image, "mirror.local/app:2.0");
    assert_eq!(app.deploy.replicas, Some(7));
}

#[test]
fn a_value_that_is_not_a_number_after_interpolation_points_at_its_source() {
    let err = load_fixtures(&["interpolation/compose.yaml"], &[("REPLICAS", "lots")])
        .expect_err("not a number");
    assert_eq!(
        err.to_string(),
        "interpolation/compose.yaml:22:17: services.app.deploy.replicas: expected an integer, found \"lots\""
    );
}

#[test]
fn interpolation_reaches_every_string_but_no_key() {
    let p = load_docs(
        &[(
            "app.yaml",
            "name: ${PROJECT}\nservices:\n  ${NOT_A_KEY}:\n    image: ${IMG}\n    labels:\n      ${KEY}: ${VALUE}\n    ports: [\"${PORT}:80\"]\n    deploy:\n      placement:\n        constraints: [\"node.labels.zone==${ZONE}\"]\n",
        )],
        &[
            ("PROJECT", "interp"),
            ("IMG", "nginx"),
            ("VALUE", "v"),
            ("PORT", "8081"),
            ("ZONE", "b"),
        ],
    );
    let err = p.expect_err("a service named ${NOT_A_KEY} is invalid");
    assert!(
        err.to_string().starts_with(
            "app.yaml:3:3: services.${NOT_A_KEY}: \"${NOT_A_KEY}\" is not a valid service name"
        ),
        "{err}"
    );
    let p = load_docs(
        &[(
            "app.yaml",
            "name: ${PROJECT}\nservices:\n  web:\n    image: ${IMG}\n    labels:\n      ${KEY}: ${VALUE}\n    ports: [\"${PORT}:80\"]\n    deploy:\n      placement:\n        constraints: [\"node.labels.zone==${ZONE}\"]\n",
        )],
        &[
            ("PROJECT", "interp"),
            ("IMG", "nginx"),
            ("VALUE", "v"),
            ("PORT", "8081"),
            ("ZONE", "b"),
        ],
    )
    .expect("loads")
    .project;
    assert_eq!(p.name, "interp");
    let web = &p.services["web"];
    assert_eq!(web.labels["${KEY}"], "v");
    assert_eq!(web.ports[0].published, Some(8081));
    assert_eq!(web.deploy.placement.constraints, ["node.labels.zone==b"]);
}

#[test]
fn extension_blocks_are_not_interpolated() {
    let p = load_docs(
        &[(
            "app.yaml",
            "x-notes: ${UNDOCUMENTED:?never read}\nservices:\n  web:\n    image: nginx\n    x-owner: ${OWNER:?never read either}\n",
        )],
        &[],
    )
    .expect("x- blocks are ignored");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn anchors_are_expanded_before_interpolation() {
    let p = load_docs(
        &[(
            "app.yaml",
            "x-img: &img ${IMG:-busybox}:${TAG:-1}\nservices:\n  a:\n    image: *img\n  b:\n    image: *img\n",
        )],
        &[("TAG", "2")],
    )
    .expect("loads")
    .project;
    assert_eq!(p.services["a"].image, "busybox:2");
    assert_eq!(p.services["b"].image, "busybox:2");
}

#[test]
fn an_explicit_env_file_replaces_dotenv() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".env"), "TAG=from-dotenv\n").expect("write");
    std::fs::write(dir.path().join("prod.env"), "TAG=from-prod\n").expect("write");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: nginx:${TAG}\n",
    )
    .expect("write");
    let mut args = skiffctl::compose::ComposeArgs {
        files: vec![dir.path().join("compose.yaml")],
        ..Default::default()
    };
    // The test's own environment may not set TAG (that would win over both).
    if std::env::var_os("TAG").is_some() {
        return;
    }
    let p = args.load().expect("loads").project;
    assert_eq!(p.services["web"].image, "nginx:from-dotenv");
    args.env_files = vec![dir.path().join("prod.env")];
    let p = args.load().expect("loads").project;
    assert_eq!(p.services["web"].image, "nginx:from-prod");
    args.env_files = vec![dir.path().join("missing.env")];
    let err = args.load().expect_err("a named env file must exist");
    assert!(err.to_string().contains("missing.env"), "{err}");
}

#[test]
fn env_file_values_sit_under_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("common.env"),
        "# shared\nLOG=info\nREGION=eu\nURL=http://${HOST_FROM_ENV:-localhost}:8080\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("web.env"), "LOG=debug\n").expect("write");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n    env_file:\n      - common.env\n      - path: web.env\n      - path: optional.env\n        required: false\n    environment:\n      REGION: us\n",
    )
    .expect("write");
    let args = skiffctl::compose::ComposeArgs {
        files: vec![dir.path().join("compose.yaml")],
        ..Default::default()
    };
    let p = args.load().expect("loads").project;
    let env = &p.services["web"].environment;
    assert_eq!(env["LOG"], "debug", "later env files win");
    assert_eq!(env["REGION"], "us", "environment wins over env files");
    assert!(env["URL"].ends_with(":8080"));
}
