//! `skiff-agent join` and `run` against a real `skiff-master init` with mTLS: the node
//! registers READY with its resources and labels, keeps its id over a SIGTERM and a
//! restart; bad tokens and a data dir that never joined fail with errors that say why.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{AGENT, Master, Proc, Sandbox, eventually, nodes};
use skiff_proto::v1 as pb;

fn agent(sb: &mut Sandbox, name: &str, command: &[&str], extra: &[&str]) -> usize {
    let data = sb.path(name);
    let mut args = sb.agent_flags(&data);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(command.iter().map(|s| s.to_string()));
    let n = sb.procs.len();
    let log = sb.path(&format!("{name}.log{n}"));
    sb.procs
        .push(Proc::spawn(name, std::path::Path::new(AGENT), &args, log));
    n
}

async fn ready_node(
    c: &mut skiff_proto::v1::cluster_api_client::ClusterApiClient<tonic::transport::Channel>,
    after_ms: i64,
) -> pb::Node {
    eventually(
        Duration::from_secs(30),
        "the agent's node is READY",
        async || {
            let ns = nodes(c).await;
            match ns.as_slice() {
                [n] if n.state() == pb::NodeState::Ready && n.last_heartbeat_ms > after_ms => {
                    Ok(n.clone())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_agent_is_ready_with_its_resources_and_labels_and_keeps_its_id() {
    let mut sb = Sandbox::new();
    let master = Master::init(&mut sb, "m1", false);
    let token = master.worker_token().await;
    let mut c = master.client().await;

    tracing::info!("--- join with the worker token");
    let first = agent(
        &mut sb,
        "a1",
        &["join", "--token", &token, &master.addr],
        &["--label", "zone=a", "--label", "disk=ssd"],
    );
    let node = ready_node(&mut c, 0).await;
    let d = node.description.clone().expect("description");
    let r = d.resources.expect("resources");
    assert!(r.nano_cpus >= 1_000_000_000, "{r:?}");
    assert!(r.memory_bytes > 1 << 20, "{r:?}");
    assert_eq!(d.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(d.labels.get("disk").map(String::as_str), Some("ssd"));
    assert_eq!(d.addr, "127.0.0.1");
    assert!(d.api_addr.starts_with("127.0.0.1:"), "{}", d.api_addr);
    assert_eq!(d.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        d.platform.as_ref().map(|p| p.os.as_str()),
        Some("linux"),
        "{d:?}"
    );
    assert!(!d.hostname.is_empty());
    assert!(!node.cert_serial.is_empty(), "joined with a certificate");

    let data = sb.path("a1");
    let key = data.join("tls/node-key.pem");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key.display());
    let identity = std::fs::read_to_string(data.join("agent.toml")).expect("identity");
    assert!(identity.contains(&node.id), "{identity}");

    tracing::info!("--- SIGTERM stops the agent cleanly");
    let status = sb.procs[first]
        .terminate(Duration::from_secs(15))
        .expect("the agent exits on SIGTERM within its grace period");
    assert!(status.success(), "exit status {status:?}");
    let log = sb.procs[first].log_text();
    assert!(log.contains("containers keep running"), "{log}");

    tracing::info!("--- renewal: the master signs a CSR of the same key, only the cert changes");
    let tls_dir = data.join("tls");
    let before_key = std::fs::read(&key).expect("key");
    let creds = skiff_pki::Credentials::load(&tls_dir, skiff_pki::NODE_FILE_STEM).expect("creds");
    let old_serial = creds.info().expect("info").identity.serial;
    let (tx, rx) = tokio::sync::watch::channel(creds);
    let renewed = skiff_agent::renew::Renewer {
        tls_dir: tls_dir.clone(),
        masters: vec![master.addr.clone()],
        credentials: tx,
    }
    .renew_once()
    .await
    .expect("renewed");
    assert_eq!(renewed.identity.node_id, node.id);
    assert_ne!(renewed.identity.serial, old_serial, "a new certificate");
    assert_eq!(
        std::fs::read(&key).expect("key"),
        before_key,
        "the key stays"
    );
    let on_disk = skiff_pki::Credentials::load(&tls_dir, skiff_pki::NODE_FILE_STEM)
        .expect("renewed credentials load");
    assert_eq!(
        on_disk.info().expect("info").identity.serial,
        renewed.identity.serial
    );
    assert_eq!(*rx.borrow(), on_disk, "published to the running agent");

    tracing::info!(
        "--- run from the data dir (with the renewed certificate): same node, READY again"
    );
    let before = node.last_heartbeat_ms;
    agent(&mut sb, "a1", &["run"], &[]);
    let again = ready_node(&mut c, before).await;
    assert_eq!(again.id, node.id, "the node keeps its id");
    assert_eq!(
        again
            .description
            .as_ref()
            .and_then(|d| d.labels.get("zone"))
            .map(String::as_str),
        None,
        "labels are whatever this start was given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_a_data_dir_that_never_joined_are_refused_clearly() {
    let mut sb = Sandbox::new();
    let master = Master::init(&mut sb, "m1", false);
    let worker = master.worker_token().await;
    let mut c = master.client().await;
    let manager = c
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("tokens")
        .into_inner()
        .manager;

    let run_to_end = |sb: &mut Sandbox, name: &str, command: Vec<String>| {
        let i = agent(
            sb,
            name,
            &command.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
        );
        let status = sb.procs[i]
            .wait_exit(Duration::from_secs(20))
            .expect("the agent gives up");
        (status, sb.procs[i].log_text())
    };

    tracing::info!("--- the right CA, a secret of no role");
    let (prefix, _) = worker.rsplit_once('-').expect("token form");
    let wrong = format!("{prefix}-{}", "A".repeat(32));
    let (status, out) = run_to_end(
        &mut sb,
        "wrong",
        vec!["join".into(), "--token".into(), wrong, master.addr.clone()],
    );
    assert!(!status.success());
    assert!(
        out.contains("refused the join") && out.contains("token rejected"),
        "{out}"
    );
    assert!(!sb.path("wrong/agent.toml").exists(), "nothing is kept");

    tracing::info!("--- a token of another CA: the pinned connection fails");
    let other = format!(
        "SKIFF-1-{}-{}",
        skiff_pki::CaDigest::of_der(b"another ca"),
        "A".repeat(32)
    );
    let (status, out) = run_to_end(
        &mut sb,
        "other",
        vec!["join".into(), "--token".into(), other, master.addr.clone()],
    );
    assert!(!status.success());
    assert!(out.contains("pinned"), "{out}");

    tracing::info!("--- a malformed token");
    let (status, out) = run_to_end(
        &mut sb,
        "malformed",
        vec![
            "join".into(),
            "--token".into(),
            "SKIFF-1-xyz".into(),
            master.addr.clone(),
        ],
    );
    assert!(!status.success());
    assert!(out.contains("malformed token"), "{out}");

    tracing::info!("--- the manager token makes no agent");
    let (status, out) = run_to_end(
        &mut sb,
        "manager",
        vec![
            "join".into(),
            "--token".into(),
            manager,
            master.addr.clone(),
        ],
    );
    assert!(!status.success());
    assert!(out.contains("manager token"), "{out}");

    tracing::info!("--- run in a data dir that never joined");
    let (status, out) = run_to_end(&mut sb, "fresh", vec!["run".into()]);
    assert!(!status.success());
    let dir = sb.path("fresh").display().to_string();
    assert!(
        out.contains(&dir) && out.contains("skiff-agent join"),
        "{out}"
    );
    assert!(
        nodes(&mut c)
            .await
            .iter()
            .all(|n| n.state() != pb::NodeState::Ready),
        "no agent registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_agent_names_itself_and_keeps_that_name() {
    let mut sb = Sandbox::new();
    let master = Master::init(&mut sb, "m1", true);
    let mut c = master.client().await;
    let first = agent(
        &mut sb,
        "a1",
        &["join", &master.addr],
        &["--insecure", "--label", "zone=b"],
    );
    let node = ready_node(&mut c, 0).await;
    let identity = std::fs::read_to_string(sb.path("a1/agent.toml")).expect("identity");
    assert!(
        identity.contains(&format!("node_id = \"{}\"", node.id)),
        "{identity}"
    );
    assert!(identity.contains("insecure = true"), "{identity}");
    assert!(
        !sb.path("a1/tls").exists(),
        "no certificate on an insecure cluster"
    );

    sb.procs[first]
        .terminate(Duration::from_secs(15))
        .expect("stops on SIGTERM");
    // `run` remembers the cluster is insecure without being told.
    agent(&mut sb, "a1", &["run"], &[]);
    let again = ready_node(&mut c, node.last_heartbeat_ms).await;
    assert_eq!(again.id, node.id);
}
