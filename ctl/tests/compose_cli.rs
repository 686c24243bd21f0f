//! `skiffctl config` as a user runs it: the real binary, files on disk, exit codes a
//! script can rely on (0 valid, 2 bad input), the error on stderr.

use std::process::Command;

fn skiffctl(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiffctl"))
        .args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_PROFILES")
        .env("HOME", dir)
        .output()
        .expect("runs skiffctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const APP: &str = "services:\n  web:\n    image: nginx:${TAG:-1.27}\n    ports: [\"8080:80\"]\n    deploy:\n      replicas: 2\n";

#[test]
fn config_prints_normalized_yaml_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proj = dir.path().join("My-Shop");
    std::fs::create_dir(&proj).expect("mkdir");
    std::fs::write(proj.join("compose.yaml"), APP).expect("write");

    // No -f: compose.yaml in the current directory; project named after it.
    let (code, out, err) = skiffctl(&proj, &["config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("name: my-shop\n"), "{out}");
    assert!(out.contains("image: nginx:1.27"), "{out}");
    assert!(out.contains("published: 8080"), "{out}");
    assert!(out.contains("replicas: 2"), "{out}");

    let (code, out, _) = skiffctl(
        dir.path(),
        &[
            "config",
            "-f",
            "My-Shop/compose.yaml",
            "-p",
            "shop",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["name"], "shop");
    assert_eq!(json["services"]["web"]["deploy"]["replicas"], 2);

    let (code, yaml, _) = skiffctl(&proj, &["config", "--output", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml.starts_with("name: my-shop\n"), "{yaml}");

    let (code, out, _) = skiffctl(&proj, &["config", "--services"]);
    assert_eq!((code, out.as_str()), (0, "web\n"));

    let (code, out, _) = skiffctl(&proj, &["config", "--wire"]);
    assert_eq!(code, 0);
    let wire: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(wire["project"], "my-shop");
    assert_eq!(wire["services"][0]["container"]["image"], "nginx:1.27");

    let (code, out, _) = skiffctl(&proj, &["config", "-q"]);
    assert_eq!((code, out.as_str()), (0, ""));
}

#[test]
fn without_f_the_default_file_and_its_override_are_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose/merge");
    for f in ["compose.yaml", "compose.override.yaml"] {
        std::fs::copy(fixtures.join(f), dir.path().join(f)).expect("copy");
    }
    let (code, out, err) = skiffctl(dir.path(), &["config", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["services"]["web"]["environment"]["LOG_LEVEL"], "debug");
    // With -f only the named file counts.
    let (code, out, _) = skiffctl(dir.path(), &["config", "-o", "json", "-f", "compose.yaml"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["services"]["web"]["environment"]["LOG_LEVEL"], "info");
}

#[test]
fn bad_input_exits_2_with_one_located_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.yaml"),
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: three\n",
    )
    .expect("write");
    let (code, out, err) = skiffctl(dir.path(), &["config", "-f", "app.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert_eq!(
        err.trim_end(),
        "skiffctl: app.yaml:5:17: services.web.deploy.replicas: expected an integer, found \"three\""
    );
    assert_eq!(err.lines().count(), 1, "one error: {err}");

    let (code, _, err) = skiffctl(dir.path(), &["config", "-f", "nope.yaml"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("skiffctl: nope.yaml: cannot read nope.yaml: "),
        "{err}"
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = skiffctl(empty.path(), &["config"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no compose file: none of compose.yaml"),
        "{err}"
    );

    let (code, _, err) = skiffctl(dir.path(), &["config", "-f", "app.yaml", "-p", "Bad Name"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid project name \"Bad Name\""), "{err}");
}

#[test]
fn warnings_go_to_stderr_and_stdin_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiffctl"))
        .args(["config", "-f", "-", "-p", "piped"])
        .current_dir(dir.path())
        .env_remove("UNSET_FOR_TEST")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"version: '3.8'\nservices:\n  web:\n    image: nginx${UNSET_FOR_TEST}\n")
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: the variable UNSET_FOR_TEST is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: `version` is obsolete"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: piped"));
}

#[test]
fn deploy_of_a_broken_file_fails_with_its_location_before_any_master_is_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.yaml"),
        "services:\n  web:\n    image: busybox\n    deploy:\n      replicas: many\n",
    )
    .expect("write");
    // No context and no --master: reaching a master would fail with exit 2 or 3 and a
    // different message; the file's error must come first.
    let (code, out, err) = skiffctl(dir.path(), &["deploy", "-f", "app.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("app.yaml:5"), "{err}");
    assert!(err.contains("replicas"), "{err}");
}
