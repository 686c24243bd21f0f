//! End to end on one node: a real master (TLS) schedules a busybox service, the real
//! agent pulls it from a local registry and runs it in skiff's runtime, RUNNING reaches
//! the store, the image's HEALTHCHECK makes the task healthy, the master's certificate
//! reads its logs through the agent API, and an agent restart keeps the container (same
//! pid) running.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AGENT, Master, Proc, Sandbox, eventually};
use skiff_proto::v1 as pb;
use skiff_proto::v1::agent_client::AgentClient;
use tokio_stream::StreamExt;

async fn tasks(
    c: &mut skiff_proto::v1::cluster_api_client::ClusterApiClient<tonic::transport::Channel>,
) -> Vec<pb::Task> {
    c.list_tasks(pb::ListTasksRequest {
        project: "demo".into(),
        ..Default::default()
    })
    .await
    .expect("list tasks")
    .into_inner()
    .tasks
}

fn running_task(ts: &[pb::Task]) -> Result<pb::Task, String> {
    let live: Vec<&pb::Task> = ts
        .iter()
        .filter(|t| t.desired_state() <= pb::TaskState::Running)
        .collect();
    match live.as_slice() {
        [t] if t.status.as_ref().is_some_and(|s| {
            s.state() == pb::TaskState::Running && s.health() == pb::HealthState::Healthy
        }) =>
        {
            Ok((*t).clone())
        }
        _ => Err(format!(
            "{:?}",
            ts.iter()
                .map(|t| (t.id.clone(), t.status.clone()))
                .collect::<Vec<_>>()
        )),
    }
}

/// Runs `command` in the task's container through the agent API: (stdout, exit code).
async fn exec(
    api: &mut AgentClient<tonic::transport::Channel>,
    task: &str,
    command: &[&str],
) -> (String, i32) {
    let start = pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(pb::ExecStart {
            task: task.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    };
    let mut out = api
        .task_exec(tokio_stream::iter(vec![start]))
        .await
        .expect("exec")
        .into_inner();
    let (mut text, mut code) = (Vec::new(), -1);
    while let Some(m) = out.next().await {
        match m.expect("exec output").output {
            Some(pb::exec_output::Output::Stdout(b) | pb::exec_output::Output::Stderr(b)) => {
                text.extend(b)
            }
            Some(pb::exec_output::Output::ExitCode(c)) => code = c,
            None => {}
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), code)
}

/// The task's overlay address and the service's VIP answer inside the container.
async fn check_network(
    api: &mut AgentClient<tonic::transport::Channel>,
    task: &pb::Task,
    vip: &str,
) -> Result<(), String> {
    let addr = task
        .networks
        .first()
        .and_then(|n| n.addresses.first())
        .ok_or("the task has no overlay address")?;
    let ip = addr.split('/').next().unwrap_or(addr);
    let (out, code) = exec(api, &task.id, &["ip", "-4", "addr", "show", "eth0"]).await;
    if code != 0 || !out.contains(&format!("inet {addr}")) {
        return Err(format!("eth0 lacks {addr}: {out}"));
    }
    let (out, code) = exec(api, &task.id, &["nslookup", "web"]).await;
    if code != 0 || !out.contains(vip) {
        return Err(format!(
            "DNS for web is not the VIP {vip} (task {ip}): {out}"
        ));
    }
    Ok(())
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_service_runs_reports_and_survives_an_agent_restart() {
    skiff_pki::install_crypto_provider();
    let mut sb = Sandbox::new();
    let registry = skiff_image::testing::Registry::start()
        .await
        .expect("registry");
    let image = skiff_image::testing::busybox()
        .set(
            "Healthcheck",
            serde_json::json!({
                "Test": ["CMD-SHELL", "test -f /tmp/ready"],
                "Interval": 300_000_000u64,
                "Timeout": 2_000_000_000u64,
                "Retries": 2
            }),
        )
        .build();
    let reference = registry.reference("busybox-health:1");
    image
        .push(&registry.client(), &reference)
        .await
        .expect("push");

    let master = Master::init(&mut sb, "m1", false);
    let token = master.worker_token().await;
    let mut c = master.client().await;
    let data = sb.path("a1");
    let flags = {
        let mut f = sb.agent_flags(&data);
        f.extend(["--insecure-registry".into(), registry.host().to_owned()]);
        f
    };
    let spawn = |sb: &mut Sandbox, command: &[&str]| {
        let mut args = flags.clone();
        args.extend(command.iter().map(|s| s.to_string()));
        let n = sb.procs.len();
        let log = sb.path(&format!("a1.log{n}"));
        sb.procs
            .push(Proc::spawn("a1", Path::new(AGENT), &args, log));
        n
    };
    let first = spawn(&mut sb, &["join", "--token", &token, &master.addr]);
    eventually(Duration::from_secs(30), "node READY", async || {
        let ns = common::nodes(&mut c).await;
        if ns.iter().any(|n| n.state() == pb::NodeState::Ready) {
            Ok(())
        } else {
            Err(format!("{ns:?}"))
        }
    })
    .await;

    tracing::info!("--- deploy one replica");
    c.deploy(pb::DeployRequest {
        project: "demo".into(),
        networks: vec![pb::NetworkSpec {
            name: "front".into(),
            project: "demo".into(),
            ..Default::default()
        }],
        services: vec![pb::ServiceSpec {
            networks: vec![pb::NetworkAttachmentConfig {
                network: "front".into(),
                aliases: vec![],
            }],
            name: "web".into(),
            project: "demo".into(),
            container: Some(pb::ContainerSpec {
                image: reference.to_string(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "touch /tmp/ready; while true; do echo alive; sleep 0.5; done".into(),
                ],
                ..Default::default()
            }),
            mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
                replicas: 1,
            })),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .expect("deploy");
    let task = eventually(
        Duration::from_secs(60),
        "the task RUNNING and healthy",
        async || running_task(&tasks(&mut c).await),
    )
    .await;
    let pid = task.status.as_ref().map_or(0, |s| s.pid);
    assert!(
        pid > 0 && alive(pid),
        "the reported pid {pid} is a live process"
    );

    tracing::info!("--- the master reads the task's logs through the agent API");
    let node = common::nodes(&mut c)
        .await
        .into_iter()
        .find(|n| n.id == task.node_id)
        .expect("the task's node");
    let api_addr = node.description.expect("description").api_addr;
    let tls =
        skiff_pki::client_tls_config_for(&master.manager(), &skiff_pki::node_server_name(&node.id))
            .expect("tls");
    let ch = skiff_pki::endpoint(&api_addr, tls)
        .expect("endpoint")
        .connect()
        .await
        .expect("the master reaches the agent API");
    let mut agent_api = AgentClient::new(ch);
    let mut lines = agent_api
        .task_logs(pb::TaskLogsRequest {
            task_id: task.id.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("a log line")
        .expect("stream")
        .expect("line");
    assert_eq!(line.line, b"alive\n");
    assert_eq!(line.task_name, "demo_web.1");
    drop(lines);

    tracing::info!("--- the container is on the overlay, and DNS names the service");
    let service = c
        .get_service(pb::GetServiceRequest {
            name: "web".into(),
            project: "demo".into(),
            ..Default::default()
        })
        .await
        .expect("service")
        .into_inner();
    let vip = service
        .virtual_ips
        .first()
        .map(|v| v.addr.split('/').next().unwrap_or(&v.addr).to_owned())
        .expect("a VIP");
    eventually(Duration::from_secs(20), "address and DNS", async || {
        check_network(&mut agent_api, &task, &vip).await
    })
    .await;

    tracing::info!("--- SIGTERM the agent: the container keeps running");
    let status = sb.procs[first]
        .terminate(Duration::from_secs(15))
        .expect("the agent stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(alive(pid), "the container outlives the agent");

    tracing::info!("--- the agent comes back and re-adopts it");
    spawn(&mut sb, &["run"]);
    eventually(
        Duration::from_secs(30),
        "the agent re-registers",
        async || {
            let log = sb.procs.last().map(Proc::log_text).unwrap_or_default();
            if log.contains("re-adopting container") && log.contains("session accepted") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = eventually(
        Duration::from_secs(20),
        "one task, running and healthy again",
        async || running_task(&tasks(&mut c).await),
    )
    .await;
    assert_eq!(after.id, task.id, "no new task was made");
    assert_eq!(after.status.as_ref().map_or(0, |s| s.pid), pid, "same pid");
    assert!(alive(pid));

    tracing::info!("--- its network namespace, address and names survived the restart");
    // The API listens on a fresh port (127.0.0.1:0) and the node says where.
    let api_addr = eventually(Duration::from_secs(20), "the new API address", async || {
        let ns = common::nodes(&mut c).await;
        let addr = ns
            .iter()
            .find(|n| n.id == node.id)
            .and_then(|n| n.description.as_ref())
            .map(|d| d.api_addr.clone())
            .unwrap_or_default();
        if addr != api_addr && !addr.is_empty() {
            Ok(addr)
        } else {
            Err(addr)
        }
    })
    .await;
    let ch = skiff_pki::endpoint(
        &api_addr,
        skiff_pki::client_tls_config_for(&master.manager(), &skiff_pki::node_server_name(&node.id))
            .expect("tls"),
    )
    .expect("endpoint")
    .connect()
    .await
    .expect("the restarted agent's API");
    let mut agent_api = AgentClient::new(ch);
    eventually(
        Duration::from_secs(20),
        "address and DNS after restart",
        async || check_network(&mut agent_api, &after, &vip).await,
    )
    .await;

    tracing::info!("--- no master for a while: the container keeps running");
    let m = sb
        .procs
        .iter()
        .position(|p| p.name == "m1")
        .expect("master process");
    sb.procs[m]
        .terminate(Duration::from_secs(15))
        .expect("the master stops");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(pid), "no master, still running");
    let agent_log = sb.procs.last().map(Proc::log_text).unwrap_or_default();
    assert!(agent_log.contains("no session"), "{agent_log}");
    master.restart(&mut sb);
    let mut c = master.client().await;
    let back = eventually(
        Duration::from_secs(30),
        "the same task, running, once the master is back",
        async || running_task(&tasks(&mut c).await),
    )
    .await;
    assert_eq!(
        (back.id.as_str(), back.status.as_ref().map_or(0, |s| s.pid)),
        (task.id.as_str(), pid)
    );
    assert!(alive(pid));
}
