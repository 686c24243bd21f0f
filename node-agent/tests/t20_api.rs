//! The agent API over mTLS against a real container of skiff's runtime: logs (all,
//! tail, follow), exec (pipes with stdin and exit code, env, a terminal with its size),
//! the node's images (pull from a real registry, list, remove refused while a task uses
//! it), and who gets in: managers of the cluster only.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Sandbox, busybox_root, eventually, shim_bin};
use skiff_agent::agent::{ApiTls, serve_api};
use skiff_agent::api::{AgentApi, TaskNames};
use skiff_image::testing::Registry;
use skiff_image::{ImageStore, RegistryConfig};
use skiff_pki::{ClusterCa, Credentials, Role, SignRequest, node_server_name};
use skiff_proto::v1 as pb;
use skiff_proto::v1::agent_client::AgentClient;
use skiff_runtime::{ContainerId, CreateOptions, EtcFiles, Rootfs, Runtime, RuntimeConfig};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

const NODE: &str = "agent-1";
const TASK: &str = "skiff-api-task";

fn issue(ca: &ClusterCa, node: &str, role: Role) -> Credentials {
    ca.issue_local(&SignRequest {
        node_id: node.into(),
        role,
        ttl: Duration::from_secs(3600),
        extra_names: vec!["127.0.0.1".into()],
    })
    .expect("issue")
    .0
}

struct World {
    sb: Sandbox,
    runtime: Runtime,
    names: TaskNames,
    addr: String,
    ca: ClusterCa,
    /// Publishes renewed agent credentials to the server.
    creds_tx: tokio::sync::watch::Sender<Credentials>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

async fn world() -> World {
    world_with(RegistryConfig::default(), "").await
}

/// The world with an image store that reaches registries as `registry` says, and the
/// running task's spec naming `image`.
async fn world_with(registry: RegistryConfig, image: &str) -> World {
    let sb = Sandbox::new();
    let data = sb.path("agent");
    let mut cfg = RuntimeConfig::new(data.join("containers"), shim_bin());
    cfg.cgroup_parent = sb.cgroup_parent.clone();
    let runtime = Runtime::new(cfg).expect("runtime");
    let root = busybox_root(&sb.path("rootfs"));
    let id = ContainerId::new(TASK).expect("id");
    let script =
        "echo hello; echo oops >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    let spec = skiff_runtime::docker_spec(&skiff_runtime::SpecOptions {
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "MODE=container".into(),
        ],
        hostname: Some("t1".into()),
        ..Default::default()
    });
    runtime
        .create(
            &id,
            CreateOptions {
                spec,
                rootfs: Rootfs::Dir(root),
                etc: EtcFiles::default(),
            },
        )
        .await
        .expect("create");
    runtime.start(&id).await.expect("start");

    let ca = ClusterCa::generate("cluster-1").expect("ca");
    let agent_creds = issue(&ca, NODE, Role::Worker);
    let names = TaskNames::default();
    names.set(&[pb::Task {
        id: TASK.into(),
        service_name: "demo_web".into(),
        slot: 1,
        spec: Some(pb::ServiceSpec {
            container: Some(pb::ContainerSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let images = ImageStore::open(data.join("images"), registry)
        .await
        .expect("image store");
    let shutdown = CancellationToken::new();
    let api = AgentApi::new(
        runtime.clone(),
        images,
        NODE.into(),
        names.clone(),
        TaskTracker::new(),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (creds_tx, credentials) = tokio::sync::watch::channel(agent_creds);
    let tls = ApiTls {
        credentials,
        cluster_id: "cluster-1".into(),
    };
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        serve_api(listener, api, Some(tls), stop)
            .await
            .expect("serve");
    });
    World {
        sb,
        runtime,
        names,
        addr,
        ca,
        creds_tx,
        shutdown,
        server,
    }
}

async fn client(addr: &str, creds: &Credentials) -> Result<AgentClient<Channel>, String> {
    let tls = skiff_pki::client_tls_config_for(creds, &node_server_name(NODE))
        .map_err(|e| e.to_string())?;
    let ch = skiff_pki::endpoint(addr, tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| skiff_pki::error_chain(&e))?;
    Ok(AgentClient::new(ch))
}

async fn logs(c: &mut AgentClient<Channel>, req: pb::TaskLogsRequest) -> Vec<pb::LogLine> {
    let mut s = c.task_logs(req).await.expect("logs").into_inner();
    let mut out = Vec::new();
    while let Some(l) = s.next().await {
        out.push(l.expect("line"));
    }
    out
}

/// Runs an exec to its end: (stdout, stderr, exit code).
async fn exec(
    c: &mut AgentClient<Channel>,
    start: pb::ExecStart,
    input: Vec<pb::exec_input::Input>,
) -> (String, String, i32) {
    let mut msgs = vec![pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(start)),
    }];
    msgs.extend(input.into_iter().map(|i| pb::ExecInput { input: Some(i) }));
    let mut s = c
        .task_exec(tokio_stream::iter(msgs))
        .await
        .expect("exec")
        .into_inner();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(m) = s.next().await {
        match m.expect("output").output {
            Some(pb::exec_output::Output::Stdout(b)) => out.extend(b),
            Some(pb::exec_output::Output::Stderr(b)) => err.extend(b),
            Some(pb::exec_output::Output::ExitCode(c)) => code = Some(c),
            None => {}
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        code.expect("the exit code comes last"),
    )
}

fn start(command: &[&str]) -> pb::ExecStart {
    pb::ExecStart {
        task: TASK.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_read_logs_and_exec_in_a_running_task() {
    skiff_pki::install_crypto_provider();
    let w = world().await;
    let manager = issue(&w.ca, "master-1", Role::Manager);
    let mut c = client(&w.addr, &manager).await.expect("manager connects");

    tracing::info!("--- all logs, then the tail, then following");
    let begun = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let all = eventually(Duration::from_secs(10), "two ticks logged", async || {
        let all = logs(
            &mut c,
            pb::TaskLogsRequest {
                task_id: TASK.into(),
                ..Default::default()
            },
        )
        .await;
        if all.iter().filter(|l| l.line.starts_with(b"tick")).count() >= 2 {
            Ok(all)
        } else {
            Err(format!("{} lines", all.len()))
        }
    })
    .await;
    assert_eq!(all[0].line, b"hello\n");
    let oops = all
        .iter()
        .find(|l| l.line == b"oops\n")
        .expect("stderr line");
    assert_eq!(oops.stream, "stderr");
    assert_eq!(all[0].stream, "stdout");
    assert_eq!(all[0].task_name, "demo_web.1");
    assert_eq!(all[0].node_id, NODE);
    assert!(
        (all[0].timestamp_ms - begun).abs() < 60_000,
        "timestamp {} near {begun}",
        all[0].timestamp_ms
    );
    let tail = logs(
        &mut c,
        pb::TaskLogsRequest {
            task_id: TASK.into(),
            tail: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(tail.len(), 1);
    assert!(tail[0].line.starts_with(b"tick"));
    let last_seen = tail[0].line.clone();
    let mut follow = c
        .task_logs(pb::TaskLogsRequest {
            task_id: TASK.into(),
            follow: true,
            tail: 1,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    let mut fresh = Vec::new();
    while fresh.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .expect("followed lines keep coming")
            .expect("stream open")
            .expect("line");
        fresh.push(line.line);
    }
    assert!(fresh.iter().skip(1).all(|l| *l != last_seen), "{fresh:?}");

    tracing::info!("--- exec with pipes: stdin, stdout, stderr, exit code");
    let (out, err, code) = exec(
        &mut c,
        start(&["sh", "-c", "read x; echo got $x; echo err >&2; exit 3"]),
        vec![pb::exec_input::Input::Stdin(b"abc\n".to_vec())],
    )
    .await;
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("got abc\n", "err\n", 3)
    );

    tracing::info!("--- exec env adds to the container's");
    let mut s = start(&["sh", "-c", "echo $MODE $EXTRA $PATH"]);
    s.env = vec!["EXTRA=1".into(), "MODE=exec".into()];
    let (out, _, code) = exec(&mut c, s, vec![]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("exec 1 /usr/local/sbin"), "{out}");

    tracing::info!("--- exec in a terminal of the asked size");
    let mut s = start(&["sh", "-c", "stty size; test -t 0 && echo terminal"]);
    s.tty = true;
    s.rows = 33;
    s.cols = 101;
    let (out, _, code) = exec(&mut c, s, vec![]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("33 101") && out.contains("terminal"),
        "{out:?}"
    );

    tracing::info!("--- a task this node does not run");
    let err = c
        .task_logs(pb::TaskLogsRequest {
            task_id: "skiff-no-such-task".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown task");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains(NODE), "{}", err.message());

    tracing::info!("--- shutdown ends a following stream and the server");
    w.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), async {
        while follow.next().await.is_some() {}
    })
    .await
    .expect("the follower ends with the agent");
    let server = w.server;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops on shutdown")
        .expect("server task");
    let id = ContainerId::new(TASK).expect("id");
    assert_eq!(
        w.runtime.state(&id).expect("state").status,
        skiff_runtime::Status::Running,
        "the container outlives the API"
    );
    drop(w.sb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_managers_of_this_cluster_get_in() {
    skiff_pki::install_crypto_provider();
    let w = world().await;

    tracing::info!("--- an admin and a worker are refused per call");
    for (who, role) in [("admin-1", Role::Admin), ("agent-2", Role::Worker)] {
        let creds = if role == Role::Admin {
            let dir = w.sb.path("admin");
            w.ca.issue_admin(&dir, who, Duration::from_secs(3600))
                .expect("admin");
            Credentials::load(&dir, skiff_pki::ADMIN_FILE_STEM).expect("load admin")
        } else {
            issue(&w.ca, who, role)
        };
        let mut c = client(&w.addr, &creds).await.expect("TLS connects");
        let err = c
            .task_logs(pb::TaskLogsRequest {
                task_id: TASK.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{who}: {err}");
        assert!(err.message().contains("manager"), "{}", err.message());
    }

    tracing::info!("--- another cluster's manager fails the handshake");
    let other = ClusterCa::generate("cluster-2").expect("ca");
    let stranger = issue(&other, "master-9", Role::Manager);
    let mut creds = stranger.clone();
    creds.ca_pem = w.ca.cert_pem().to_owned();
    let refused = match client(&w.addr, &creds).await {
        Err(e) => e,
        Ok(mut c) => c
            .task_logs(pb::TaskLogsRequest {
                task_id: TASK.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .expect_err("a stranger's certificate")
            .to_string(),
    };
    assert!(!refused.is_empty());

    tracing::info!("--- no client certificate, no connection");
    let anon = tonic::transport::ClientTlsConfig::new()
        .domain_name(node_server_name(NODE))
        .ca_certificate(tonic::transport::Certificate::from_pem(w.ca.cert_pem()));
    let result = async {
        let ch = skiff_pki::endpoint(&w.addr, anon)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        AgentClient::new(ch)
            .task_logs(pb::TaskLogsRequest {
                task_id: TASK.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(result.is_err(), "anonymous callers get nothing");
    w.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    skiff_pki::install_crypto_provider();
    let w = world().await;
    let manager = issue(&w.ca, "master-1", Role::Manager);
    let ask = async |addr: &str| -> Result<(), String> {
        let mut c = client(addr, &manager).await?;
        c.task_logs(pb::TaskLogsRequest {
            task_id: TASK.into(),
            tail: 1,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    ask(&w.addr)
        .await
        .expect("served with the first certificate");

    tracing::info!("--- an expired certificate is published: callers refuse the agent");
    let expired =
        w.ca.issue_local_at(
            &SignRequest {
                node_id: NODE.into(),
                role: Role::Worker,
                ttl: Duration::from_secs(1),
                extra_names: vec![],
            },
            SystemTime::now() - Duration::from_secs(3600),
        )
        .expect("issue")
        .0;
    w.creds_tx.send_replace(expired);
    let refused = eventually(
        Duration::from_secs(10),
        "the expired certificate served",
        // Another failure on the way (a connection cut while the server swaps its
        // configuration) is not the answer awaited.
        async || match ask(&w.addr).await {
            Err(e) if e.to_lowercase().contains("expired") => Ok(e),
            Err(e) => Err(format!("refused, but not for expiry: {e}")),
            Ok(()) => Err("still the old certificate".to_owned()),
        },
    )
    .await;
    assert!(refused.to_lowercase().contains("expired"), "{refused}");

    tracing::info!("--- a fresh one: served again on the same port");
    w.creds_tx.send_replace(issue(&w.ca, NODE, Role::Worker));
    eventually(
        Duration::from_secs(10),
        "the renewed certificate served",
        async || ask(&w.addr).await,
    )
    .await;
    w.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), w.server)
        .await
        .expect("stops")
        .expect("server task");
}

async fn list_images(c: &mut AgentClient<Channel>) -> pb::AgentImages {
    c.list_images(pb::AgentListImagesRequest {})
        .await
        .expect("list")
        .into_inner()
}

async fn remove_image(
    c: &mut AgentClient<Channel>,
    reference: &str,
) -> Result<tonic::Response<pb::AgentRemoveImageResponse>, tonic::Status> {
    c.remove_image(pb::AgentRemoveImageRequest {
        reference: reference.into(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_listed_and_removed_only_when_unused() {
    skiff_pki::install_crypto_provider();
    let registry = Registry::start().await.expect("registry");
    let busybox = registry
        .push_busybox("tools/busybox:1")
        .await
        .expect("push");
    // The task names the image as a user would write it; the store normalizes it.
    let w = world_with(registry.config(), &busybox.to_string()).await;
    let manager = issue(&w.ca, "master-1", Role::Manager);
    let mut c = client(&w.addr, &manager).await.expect("manager client");

    tracing::info!("--- an empty store, then a pull");
    let listed = list_images(&mut c).await;
    assert!(listed.images.is_empty(), "{listed:?}");
    let pulled = c
        .pull_image(pb::AgentPullImageRequest {
            reference: busybox.to_string(),
        })
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(pulled.images.len(), 1, "{pulled:?}");
    let image = &pulled.images[0];
    assert_eq!(image.reference, busybox.to_string());
    assert!(image.id.starts_with("sha256:"), "{image:?}");
    assert!(image.size > 100_000, "busybox is not that small: {image:?}");
    assert_eq!(image.used_by, vec!["demo_web.1".to_string()]);
    assert_eq!(image.node_id, NODE);
    let listed = list_images(&mut c).await;
    assert_eq!(listed.images, pulled.images);

    tracing::info!("--- removal is refused while a task uses the image");
    let err = remove_image(&mut c, &busybox.to_string())
        .await
        .expect_err("in use");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("demo_web.1"), "{}", err.message());

    tracing::info!("--- once no task uses it, it goes with its layers");
    w.names.set(&[]);
    let removed = remove_image(&mut c, &busybox.to_string())
        .await
        .expect("remove")
        .into_inner();
    assert!(removed.freed_bytes > 100_000, "{removed:?}");
    let listed = list_images(&mut c).await;
    assert!(listed.images.is_empty(), "{listed:?}");
    let err = remove_image(&mut c, &busybox.to_string())
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);

    tracing::info!("--- bad input names what is wrong");
    let unknown = registry.reference("tools/nothing:1");
    let err = c
        .pull_image(pb::AgentPullImageRequest {
            reference: unknown.to_string(),
        })
        .await
        .expect_err("unknown image");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("tools/nothing"), "{}", err.message());
    let err = c
        .pull_image(pb::AgentPullImageRequest {
            reference: "Not A Reference".into(),
        })
        .await
        .expect_err("bad reference");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("Not A Reference"),
        "{}",
        err.message()
    );

    w.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), w.server).await;
    drop(w.sb);
}
