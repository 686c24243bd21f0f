//! The leader's controllers on real `skiff-master` processes, with agents played by the
//! test: each agent is a `skiff.v1.Dispatcher` client speaking the real session
//! protocol (Register with its resources, heartbeats at the period the master gives,
//! task statuses up as the real agent reports them, following the leader). Its
//! "containers" start instantly and behave by image: `crash:*` exits 1, `bad:*` runs but
//! fails its health check, anything else runs (healthy if it has a check). Everything on
//! the master side is the shipped binary.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use skiff_proto::v1 as pb;
use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use skiff_proto::v1::dispatcher_client::DispatcherClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

const GIB: i64 = 1 << 30;
/// Node DOWN after 3 missed heartbeats of 5 s plus half a period (the defaults).
const DOWN_AFTER: Duration = Duration::from_millis(17_500);

// ------------------------------------------------------------------ the test's agents

/// What the test controls of one agent, and what its fake runtime holds.
#[derive(Default)]
struct AgentState {
    /// Hung: sends nothing (no heartbeat, no status), ignores assignments; the
    /// connection stays open.
    frozen: AtomicBool,
    /// Task id → the status of its "container".
    containers: Mutex<BTreeMap<String, pb::TaskStatus>>,
    /// The master the current session is with.
    master: Mutex<Option<String>>,
    /// The node id the master accepted the session as.
    accepted_as: Mutex<Option<String>>,
    /// Link cut: no session (the containers keep running) until healed.
    cut: tokio::sync::watch::Sender<bool>,
}

/// A fake agent: a real Dispatcher session in a tokio task, stopped on drop.
struct Agent {
    id: String,
    state: Arc<AgentState>,
    stop: CancellationToken,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Agent {
    /// An insecure agent (names itself in `skiff-node-id`) with 2 CPUs and 4 GiB.
    fn start(id: &str, masters: &[String]) -> Agent {
        Agent::start_with(id, masters, None)
    }

    fn start_with(id: &str, masters: &[String], tls: Option<ClientTlsConfig>) -> Agent {
        let state = Arc::new(AgentState::default());
        let stop = CancellationToken::new();
        tokio::spawn(agent_loop(
            id.to_owned(),
            masters.to_vec(),
            tls,
            Arc::clone(&state),
            stop.clone(),
        ));
        Agent {
            id: id.to_owned(),
            state,
            stop,
        }
    }

    fn freeze(&self) {
        self.state.frozen.store(true, Ordering::SeqCst);
    }

    /// Cuts the link: the session drops and no new one opens until `heal`.
    fn cut(&self) {
        self.state.cut.send_replace(true);
    }

    fn heal(&self) {
        self.state.cut.send_replace(false);
    }

    fn containers(&self) -> usize {
        self.state.containers.lock().expect("lock").len()
    }

    fn master(&self) -> Option<String> {
        self.state.master.lock().expect("lock").clone()
    }
}

fn description(id: &str) -> pb::NodeDescription {
    pb::NodeDescription {
        hostname: id.into(),
        platform: Some(pb::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }),
        resources: Some(pb::Resources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 4 * GIB,
            pids: 0,
        }),
        version: "test".into(),
        addr: "127.0.0.1".into(),
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

async fn agent_loop(
    id: String,
    masters: Vec<String>,
    tls: Option<ClientTlsConfig>,
    state: Arc<AgentState>,
    stop: CancellationToken,
) {
    let mut next = 0usize;
    let mut hint: Option<String> = None;
    let mut cut = state.cut.subscribe();
    while !stop.is_cancelled() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = link_is(&mut cut, false) => {}
        }
        let addr = hint
            .take()
            .unwrap_or_else(|| masters[next % masters.len()].clone());
        next += 1;
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            ended = session(&id, &addr, tls.clone(), &state) => ended,
        };
        *state.master.lock().expect("lock") = None;
        match ended {
            SessionEnd::Leader(l) => hint = Some(l),
            SessionEnd::Other(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Returns once the link is cut (`true`) or whole (`false`).
async fn link_is(cut: &mut tokio::sync::watch::Receiver<bool>, want: bool) {
    if cut.wait_for(|c| *c == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[derive(Debug)]
enum SessionEnd {
    /// Not the leader; go there.
    Leader(String),
    Other(String),
}

fn classify(status: tonic::Status) -> SessionEnd {
    match status
        .metadata()
        .get("skiff-leader")
        .and_then(|v| v.to_str().ok())
    {
        Some(l) if status.code() == tonic::Code::FailedPrecondition && !l.is_empty() => {
            SessionEnd::Leader(l.to_owned())
        }
        _ => SessionEnd::Other(status.to_string()),
    }
}

async fn channel(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(4))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).map_err(|e| e.to_string())?;
    }
    ep.connect().await.map_err(|e| e.to_string())
}

/// Opens a session; returns the stream of master messages and the sender of agent
/// messages (Register already queued).
async fn open(
    id: Option<&str>,
    addr: &str,
    tls: Option<ClientTlsConfig>,
    register: pb::Register,
) -> Result<
    (
        tonic::Streaming<pb::MasterMessage>,
        mpsc::Sender<pb::AgentMessage>,
    ),
    SessionEnd,
> {
    let ch = channel(addr, tls).await.map_err(SessionEnd::Other)?;
    let mut client = DispatcherClient::new(ch);
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(register)),
    })
    .await
    .expect("fresh channel");
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(id) = id {
        req.metadata_mut()
            .insert("skiff-node-id", id.parse().expect("ascii id"));
    }
    let down = client.session(req).await.map_err(classify)?.into_inner();
    Ok((down, tx))
}

async fn session(
    id: &str,
    addr: &str,
    tls: Option<ClientTlsConfig>,
    state: &AgentState,
) -> SessionEnd {
    let running: Vec<pb::TaskStatusUpdate> = state
        .containers
        .lock()
        .expect("lock")
        .iter()
        .map(|(task, status)| pb::TaskStatusUpdate {
            task_id: task.clone(),
            status: Some(status.clone()),
            networks: vec![],
        })
        .collect();
    let claim = if tls.is_some() { None } else { Some(id) };
    let register = pb::Register {
        description: Some(description(id)),
        running,
    };
    let (mut down, up) = match open(claim, addr, tls, register).await {
        Ok(s) => s,
        Err(end) => return end,
    };
    *state.master.lock().expect("lock") = Some(addr.to_owned());
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut cut = state.cut.subscribe();
    loop {
        tokio::select! {
            () = link_is(&mut cut, true) => return SessionEnd::Other("link cut".into()),
            msg = down.message() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return SessionEnd::Other("session ended".into()),
                    Err(status) => return classify(status),
                };
                if state.frozen.load(Ordering::SeqCst) {
                    continue;
                }
                match msg.msg {
                    Some(pb::master_message::Msg::Accepted(a)) => {
                        *state.accepted_as.lock().expect("lock") = Some(a.node_id);
                        heartbeat = tokio::time::interval(Duration::from_millis(a.heartbeat_period_ms));
                    }
                    Some(pb::master_message::Msg::Assignments(a)) => {
                        // As the real agent: first "preparing", then the outcome.
                        let (preparing, outcome) = converge(state, &a.tasks);
                        for batch in [preparing, outcome] {
                            if !batch.is_empty() {
                                let msg = pb::AgentMessage {
                                    msg: Some(pb::agent_message::Msg::Statuses(pb::TaskStatusBatch { updates: batch })),
                                };
                                if up.send(msg).await.is_err() {
                                    return SessionEnd::Other("stream closed".into());
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                if state.frozen.load(Ordering::SeqCst) {
                    continue;
                }
                let hb = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {})) };
                if up.send(hb).await.is_err() {
                    return SessionEnd::Other("stream closed".into());
                }
            }
        }
    }
}

fn has_healthcheck(t: &pb::Task) -> bool {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.healthcheck.as_ref())
        .is_some_and(|h| h.test.first().is_some_and(|k| k != "NONE"))
}

fn image(t: &pb::Task) -> String {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

fn status(state: pb::TaskState, health: pb::HealthState, exit: i32, task: &str) -> pb::TaskStatus {
    pb::TaskStatus {
        state: state as i32,
        timestamp_ms: now_ms(),
        message: state
            .as_str_name()
            .trim_start_matches("TASK_STATE_")
            .to_lowercase(),
        err: if exit != 0 {
            format!("exit status {exit}")
        } else {
            String::new()
        },
        exit_code: exit,
        container_id: format!("c-{task}"),
        health: health as i32,
        ..Default::default()
    }
}

/// The fake runtime: runs what is assigned and wanted running, stops what is asked to
/// stop, forgets what left the assignment. Returns the statuses to report.
fn converge(
    state: &AgentState,
    tasks: &[pb::Task],
) -> (Vec<pb::TaskStatusUpdate>, Vec<pb::TaskStatusUpdate>) {
    let mut containers = state.containers.lock().expect("lock");
    let mut preparing = Vec::new();
    let mut outcome = Vec::new();
    let update = |task: &str, s: pb::TaskStatus| pb::TaskStatusUpdate {
        task_id: task.to_owned(),
        status: Some(s),
        networks: vec![],
    };
    for t in tasks {
        let current = containers.get(&t.id).map(|s| s.state());
        if t.desired_state() <= pb::TaskState::Running {
            if current.is_some() {
                continue;
            }
            let hc = has_healthcheck(t);
            let image = image(t);
            let s = if image.starts_with("crash") {
                status(pb::TaskState::Failed, pb::HealthState::None, 1, &t.id)
            } else if image.starts_with("bad") {
                let health = if hc {
                    pb::HealthState::Unhealthy
                } else {
                    pb::HealthState::None
                };
                status(pb::TaskState::Running, health, 0, &t.id)
            } else {
                let health = if hc {
                    pb::HealthState::Healthy
                } else {
                    pb::HealthState::None
                };
                status(pb::TaskState::Running, health, 0, &t.id)
            };
            preparing.push(update(
                &t.id,
                status(pb::TaskState::Preparing, pb::HealthState::None, 0, &t.id),
            ));
            containers.insert(t.id.clone(), s.clone());
            outcome.push(update(&t.id, s));
        } else {
            let stop = match current {
                Some(st) => st < pb::TaskState::Complete,
                None => true,
            };
            if stop {
                let s = status(pb::TaskState::Shutdown, pb::HealthState::None, 0, &t.id);
                containers.insert(t.id.clone(), s.clone());
                outcome.push(update(&t.id, s));
            }
        }
    }
    let assigned: std::collections::HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    containers.retain(|id, _| assigned.contains(id.as_str()));
    (preparing, outcome)
}

// ------------------------------------------------------------------ cluster helpers

/// Retries `check` every 200 ms until it returns `Some` or `within` passes; then panics
/// with `what`, the last observation and the masters' logs.
async fn until<T, F, Fut>(cluster: &Cluster, what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!(
                "{what}: not within {within:?}; last seen: {last}\n{}",
                cluster.dump()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn api(addr: &str) -> ClusterApiClient<Channel> {
    client(addr).await.expect("connect to the cluster API")
}

fn replicated(name: &str, image: &str, replicas: u64) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        project: "app".into(),
        container: Some(pb::ContainerSpec {
            image: image.into(),
            ..Default::default()
        }),
        mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
            replicas,
        })),
        ..Default::default()
    }
}

async fn deploy(addr: &str, services: Vec<pb::ServiceSpec>) {
    api(addr)
        .await
        .deploy(pb::DeployRequest {
            project: "app".into(),
            services,
            ..Default::default()
        })
        .await
        .expect("deploy");
}

async fn tasks(addr: &str, service: &str) -> Result<Vec<pb::Task>, String> {
    let mut c = client(addr).await.map_err(|e| e.to_string())?;
    c.list_tasks(pb::ListTasksRequest {
        service: service.into(),
        include_history: true,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().tasks)
    .map_err(|e| e.to_string())
}

async fn nodes(addr: &str) -> Result<Vec<pb::Node>, String> {
    let mut c = client(addr).await.map_err(|e| e.to_string())?;
    c.list_nodes(pb::ListNodesRequest::default())
        .await
        .map(|r| r.into_inner().nodes)
        .map_err(|e| e.to_string())
}

fn state(t: &pb::Task) -> pb::TaskState {
    t.status.as_ref().map_or(pb::TaskState::New, |s| s.state())
}

/// Tasks wanted running and reported running, per node.
fn running_per_node(tasks: &[pb::Task]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in tasks.iter().filter(|t| is_running(t)) {
        *out.entry(t.node_id.clone()).or_default() += 1;
    }
    out
}

fn is_running(t: &pb::Task) -> bool {
    t.desired_state() == pb::TaskState::Running && state(t) == pb::TaskState::Running
}

fn brief(tasks: &[pb::Task]) -> String {
    tasks
        .iter()
        .map(|t| {
            format!(
                "{} on {:?} desired {} state {} ({})",
                t.id,
                t.node_id,
                t.desired_state().as_str_name(),
                state(t).as_str_name(),
                t.status.as_ref().map_or("", |s| s.message.as_str())
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// One master and two agents of 2 CPUs / 4 GiB, both registered and ready.
async fn one_master_two_agents() -> (Cluster, String, Agent, Agent) {
    let cluster = Cluster::start(1, &[]).await;
    let addr = cluster.masters[0].addr.clone();
    let a = Agent::start("node-a", std::slice::from_ref(&addr));
    let b = Agent::start("node-b", std::slice::from_ref(&addr));
    nodes_ready(&cluster, &addr, 2).await;
    (cluster, addr, a, b)
}

async fn nodes_ready(cluster: &Cluster, addr: &str, n: usize) {
    until(
        cluster,
        "agents registered",
        Duration::from_secs(10),
        || async {
            let nodes = nodes(addr).await?;
            let ready = nodes
                .iter()
                .filter(|n| n.state() == pb::NodeState::Ready)
                .count();
            if ready == n {
                Ok(())
            } else {
                Err(format!("{ready} ready of {:?}", nodes.len()))
            }
        },
    )
    .await
}

/// Waits until `service` has `n` running tasks; returns its tasks.
async fn running(cluster: &Cluster, addr: &str, service: &str, n: usize) -> Vec<pb::Task> {
    until(
        cluster,
        &format!("{n} running tasks of {service}"),
        Duration::from_secs(10),
        || async {
            let ts = tasks(addr, service).await?;
            let up = ts.iter().filter(|t| is_running(t)).count();
            if up == n { Ok(ts) } else { Err(brief(&ts)) }
        },
    )
    .await
}

// ------------------------------------------------------------------ scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_over_the_agents_and_a_silent_nodes_tasks_run_elsewhere_within_the_timeout()
{
    let (cluster, addr, a, b) = one_master_two_agents().await;
    deploy(&addr, vec![replicated("web", "busybox:1", 3)]).await;
    let ts = running(&cluster, &addr, "app_web", 3).await;
    let spread = running_per_node(&ts);
    assert_eq!(
        spread
            .values()
            .copied()
            .collect::<Vec<_>>()
            .iter()
            .sum::<usize>(),
        3
    );
    assert!(
        spread.len() == 2 && spread.values().all(|n| *n <= 2),
        "3 replicas spread over 2 nodes: {spread:?}"
    );
    // The agents run exactly what the store says they run.
    for agent in [&a, &b] {
        let held = agent.state.containers.lock().expect("lock").len();
        assert_eq!(held, spread.get(&agent.id).copied().unwrap_or(0));
    }

    tracing::info!("--- node-b stops heartbeating");
    let on_b: Vec<String> = ts
        .iter()
        .filter(|t| t.node_id == "node-b" && is_running(t))
        .map(|t| t.id.clone())
        .collect();
    b.freeze();
    let frozen = Instant::now();
    until(
        &cluster,
        "node-b down and all 3 replicas on node-a",
        DOWN_AFTER + Duration::from_secs(5),
        || async {
            let ts = tasks(&addr, "app_web").await?;
            let b_down = nodes(&addr)
                .await?
                .iter()
                .any(|n| n.id == "node-b" && n.state() == pb::NodeState::Down);
            let spread = running_per_node(&ts);
            if b_down && spread.get("node-a") == Some(&3) && spread.len() == 1 {
                Ok(())
            } else {
                Err(format!("node-b down: {b_down}\n  {}", brief(&ts)))
            }
        },
    )
    .await;
    let took = frozen.elapsed();
    // The last heartbeat came at most one period before the freeze.
    assert!(
        took >= DOWN_AFTER - Duration::from_secs(5),
        "node-b marked down after only {took:?} of silence"
    );
    let ts = tasks(&addr, "app_web").await.expect("tasks");
    for id in &on_b {
        let t = ts.iter().find(|t| &t.id == id).expect("kept as history");
        assert_eq!(state(t), pb::TaskState::Orphaned, "{}", brief(&ts));
    }
    let node_b = nodes(&addr)
        .await
        .expect("nodes")
        .into_iter()
        .find(|n| n.id == "node-b")
        .expect("node-b");
    assert!(
        node_b.state_message.starts_with("no heartbeat for"),
        "{}",
        node_b.state_message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_leaves_exactly_the_desired_replicas() {
    let (cluster, addr, a, b) = one_master_two_agents().await;
    deploy(&addr, vec![replicated("web", "busybox:1", 3)]).await;
    running(&cluster, &addr, "app_web", 3).await;

    tracing::info!("--- cut node-b's link: its containers keep running");
    b.cut();
    until(
        &cluster,
        "3 replicas on node-a while node-b is cut off",
        DOWN_AFTER + Duration::from_secs(5),
        || async {
            let ts = tasks(&addr, "app_web").await?;
            let spread = running_per_node(&ts);
            if spread.get("node-a") == Some(&3) && spread.len() == 1 {
                Ok(())
            } else {
                Err(brief(&ts))
            }
        },
    )
    .await;
    assert!(
        b.containers() > 0,
        "the cut-off agent still runs its old task"
    );

    tracing::info!("--- heal: node-b comes back and stops what was replaced");
    b.heal();
    until(
        &cluster,
        "node-b ready and exactly 3 containers in the cluster",
        Duration::from_secs(10),
        || async {
            let ready = nodes(&addr)
                .await?
                .iter()
                .any(|n| n.id == "node-b" && n.state() == pb::NodeState::Ready);
            let held = a.containers() + b.containers();
            if ready && held == 3 {
                Ok(())
            } else {
                Err(format!("node-b ready: {ready}, containers: {held}"))
            }
        },
    )
    .await;
    let ts = tasks(&addr, "app_web").await.expect("tasks");
    assert_eq!(
        ts.iter().filter(|t| is_running(t)).count(),
        3,
        "{}",
        brief(&ts)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_gets_its_share_gradually() {
    let cluster = Cluster::start(1, &[]).await;
    let addr = cluster.masters[0].addr.clone();
    let _a = Agent::start("node-a", std::slice::from_ref(&addr));
    nodes_ready(&cluster, &addr, 1).await;
    deploy(&addr, vec![replicated("web", "busybox:1", 4)]).await;
    running(&cluster, &addr, "app_web", 4).await;

    tracing::info!("--- node-b joins");
    let _b = Agent::start("node-b", std::slice::from_ref(&addr));
    until(
        &cluster,
        "4 replicas rebalanced 2/2",
        Duration::from_secs(15),
        || async {
            let ts = tasks(&addr, "app_web").await?;
            let spread = running_per_node(&ts);
            let live = ts
                .iter()
                .filter(|t| t.desired_state() <= pb::TaskState::Running)
                .count();
            if spread.get("node-a") == Some(&2) && spread.get("node-b") == Some(&2) && live == 4 {
                Ok(())
            } else {
                Err(brief(&ts))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_service_healthy_holds_a_service_back_until_its_dependency_is_healthy() {
    let (cluster, addr, _a, _b) = one_master_two_agents().await;
    let db = checked(replicated("db", "bad:1", 1));
    let mut web = replicated("web", "busybox:1", 2);
    web.depends_on = vec![pb::Dependency {
        service: "db".into(),
        condition: pb::dependency::Condition::ServiceHealthy as i32,
    }];
    deploy(&addr, vec![db.clone(), web.clone()]).await;
    until(
        &cluster,
        "db started (unhealthy)",
        Duration::from_secs(10),
        || async {
            let ts = tasks(&addr, "app_db").await?;
            if ts.iter().any(|t| state(t) >= pb::TaskState::Running) {
                Ok(())
            } else {
                Err(brief(&ts))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = tasks(&addr, "app_web").await.expect("tasks");
    assert!(
        held.is_empty(),
        "web waits for a healthy db: {}",
        brief(&held)
    );

    tracing::info!("--- db becomes healthy");
    let mut good = db;
    good.container.as_mut().expect("container").image = "good:1".into();
    deploy(&addr, vec![good, web]).await;
    running(&cluster, &addr, "app_web", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_stops_the_extra_tasks() {
    let (cluster, addr, _a, _b) = one_master_two_agents().await;
    deploy(&addr, vec![replicated("web", "busybox:1", 3)]).await;
    running(&cluster, &addr, "app_web", 3).await;
    api(&addr)
        .await
        .scale_service(pb::ScaleServiceRequest {
            name: "app_web".into(),
            project: String::new(),
            replicas: 1,
        })
        .await
        .expect("scale");
    let ts = until(
        &cluster,
        "two tasks stopped",
        Duration::from_secs(10),
        || async {
            let ts = tasks(&addr, "app_web").await?;
            let stopped = ts
                .iter()
                .filter(|t| {
                    t.desired_state() == pb::TaskState::Shutdown
                        && state(t) == pb::TaskState::Shutdown
                })
                .count();
            let up = ts.iter().filter(|t| is_running(t)).count();
            if stopped == 2 && up == 1 {
                Ok(ts)
            } else {
                Err(brief(&ts))
            }
        },
    )
    .await;
    let kept = ts.iter().find(|t| is_running(t)).expect("one runs");
    assert_eq!(kept.slot, 1, "the highest slots go first: {}", brief(&ts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_node_can_satisfy_stays_pending_with_the_reason() {
    let (cluster, addr, _a, _b) = one_master_two_agents().await;
    let mut big = replicated("big", "busybox:1", 1);
    big.resources = Some(pb::ResourceRequirements {
        limits: None,
        reservations: Some(pb::Resources {
            memory_bytes: 64 * GIB,
            ..Default::default()
        }),
    });
    deploy(&addr, vec![big, replicated("small", "busybox:1", 1)]).await;
    running(&cluster, &addr, "app_small", 1).await;
    let pending = until(
        &cluster,
        "app_big pending with its reason",
        Duration::from_secs(10),
        || async {
            let ts = tasks(&addr, "app_big").await?;
            match ts.as_slice() {
                [t] if state(t) == pb::TaskState::Pending => Ok(t.clone()),
                _ => Err(brief(&ts)),
            }
        },
    )
    .await;
    let message = &pending.status.as_ref().expect("status").message;
    assert_eq!(
        message,
        "no suitable node: insufficient memory on 2 nodes",
        "{}",
        brief(std::slice::from_ref(&pending))
    );
    // Still pending, and not rewritten on every pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = tasks(&addr, "app_big").await.expect("tasks");
    assert_eq!(again.len(), 1);
    assert_eq!(state(&again[0]), pb::TaskState::Pending);
    assert_eq!(
        again[0].meta, pending.meta,
        "no write while the reason holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_stop_after_max_attempts() {
    let (cluster, addr, _a, _b) = one_master_two_agents().await;
    let mut spec = replicated("job", "crash:1", 1);
    spec.restart_policy = Some(pb::RestartPolicy {
        condition: pb::restart_policy::Condition::OnFailure as i32,
        delay_ms: 200,
        max_attempts: 2,
        window_ms: 0,
    });
    deploy(&addr, vec![spec]).await;
    let ts = until(
        &cluster,
        "the first run and two restarts failed",
        Duration::from_secs(10),
        || async {
            let ts = tasks(&addr, "app_job").await?;
            let failed = ts
                .iter()
                .filter(|t| state(t) == pb::TaskState::Failed)
                .count();
            if failed == 3
                && ts
                    .iter()
                    .all(|t| t.desired_state() > pb::TaskState::Running)
            {
                Ok(ts)
            } else {
                Err(brief(&ts))
            }
        },
    )
    .await;
    let attempts: Vec<u64> = {
        let mut a: Vec<u64> = ts.iter().map(|t| t.attempt).collect();
        a.sort_unstable();
        a
    };
    assert_eq!(attempts, vec![0, 1, 2], "{}", brief(&ts));
    // No fourth attempt, however long we wait past the restart delay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = tasks(&addr, "app_job").await.expect("tasks");
    assert_eq!(later.len(), 3, "{}", brief(&later));
    assert!(
        later.iter().any(|t| t
            .status
            .as_ref()
            .is_some_and(|s| s.message.contains("not restarted"))),
        "the last task says why it stays down: {}",
        brief(&later)
    );
}

fn checked(mut spec: pb::ServiceSpec) -> pb::ServiceSpec {
    if let Some(c) = spec.container.as_mut() {
        c.healthcheck = Some(pb::HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: 1000,
            ..Default::default()
        });
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_to_an_unhealthy_image_rolls_back_by_itself() {
    let (cluster, addr, _a, _b) = one_master_two_agents().await;
    let mut spec = checked(replicated("web", "good:1", 2));
    spec.update_config = Some(pb::UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: pb::update_config::FailureAction::Rollback as i32,
        monitor_ms: 1000,
        max_failure_ratio: 0.0,
        order: pb::update_config::Order::StopFirst as i32,
    });
    deploy(&addr, vec![spec.clone()]).await;
    running(&cluster, &addr, "app_web", 2).await;

    tracing::info!("--- update to an image whose health check fails");
    spec.container.as_mut().expect("container").image = "bad:2".into();
    api(&addr)
        .await
        .update_service(pb::UpdateServiceRequest {
            name: "app_web".into(),
            project: String::new(),
            spec: Some(spec),
            expected_version: 0,
        })
        .await
        .expect("update");
    let svc = until(
        &cluster,
        "rollback completed with 2 healthy tasks of good:1",
        Duration::from_secs(20),
        || async {
            let mut c = client(&addr).await.map_err(|e| e.to_string())?;
            let svc = c
                .get_service(pb::GetServiceRequest {
                    name: "app_web".into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let ts = tasks(&addr, "app_web").await?;
            let update = svc.update_status.clone().unwrap_or_default();
            let good = ts
                .iter()
                .filter(|t| is_running(t) && image(t) == "good:1")
                .filter(|t| {
                    t.status
                        .as_ref()
                        .is_some_and(|s| s.health() == pb::HealthState::Healthy)
                })
                .count();
            let bad_live = ts
                .iter()
                .filter(|t| image(t) == "bad:2" && t.desired_state() <= pb::TaskState::Running)
                .count();
            if update.state() == pb::update_status::State::RollbackCompleted
                && good == 2
                && bad_live == 0
            {
                Ok(svc)
            } else {
                Err(format!(
                    "update {:?} {:?}\n  {}",
                    update.state(),
                    update.message,
                    brief(&ts)
                ))
            }
        },
    )
    .await;
    let image_now = svc
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.image.clone());
    assert_eq!(image_now.as_deref(), Some("good:1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_moves_its_tasks_away() {
    let (cluster, addr, _a, b) = one_master_two_agents().await;
    deploy(&addr, vec![replicated("web", "busybox:1", 4)]).await;
    let ts = running(&cluster, &addr, "app_web", 4).await;
    assert_eq!(running_per_node(&ts).get("node-b"), Some(&2));
    api(&addr)
        .await
        .update_node(pb::UpdateNodeRequest {
            node: "node-b".into(),
            availability: Some(pb::NodeAvailability::Drain as i32),
            ..Default::default()
        })
        .await
        .expect("drain");
    until(
        &cluster,
        "node-b empty, 4 running on node-a",
        Duration::from_secs(10),
        || async {
            let ts = tasks(&addr, "app_web").await?;
            let spread = running_per_node(&ts);
            let b_live = ts
                .iter()
                .filter(|t| t.node_id == "node-b" && state(t) <= pb::TaskState::Running)
                .count();
            if spread.get("node-a") == Some(&4) && b_live == 0 {
                Ok(())
            } else {
                Err(brief(&ts))
            }
        },
    )
    .await;
    // The agent was told: it runs nothing any more.
    until(
        &cluster,
        "node-b's agent idle",
        Duration::from_secs(5),
        || async {
            let held = b.state.containers.lock().expect("lock").len();
            if held == 0 {
                Ok(())
            } else {
                Err(format!("{held} containers"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_without_marking_live_nodes_down() {
    let mut cluster = Cluster::start(3, &[]).await;
    let addrs = cluster.addrs();
    let a = Agent::start("node-a", &addrs);
    // node-b knows only a follower: it reaches the leader through the follower's hint.
    let leader = cluster.leader().await;
    let follower = cluster.masters[(leader + 1) % 3].addr.clone();
    let b = Agent::start("node-b", std::slice::from_ref(&follower));
    let first = addrs[0].clone();
    nodes_ready(&cluster, &first, 2).await;
    let leader_addr = cluster.masters[leader].addr.clone();
    until(
        &cluster,
        "node-b followed the follower's hint to the leader",
        Duration::from_secs(5),
        || async {
            match b.master() {
                Some(m) if m == leader_addr => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    deploy(&first, vec![replicated("web", "busybox:1", 2)]).await;
    let before: Vec<String> = running(&cluster, &first, "app_web", 2)
        .await
        .iter()
        .filter(|t| is_running(t))
        .map(|t| t.id.clone())
        .collect();

    tracing::info!("--- kill the leader");
    let old = cluster.leader().await;
    let old_addr = cluster.masters[old].addr.clone();
    cluster.masters[old].kill();
    let killed = Instant::now();
    let new = cluster.leader().await;
    let new_addr = cluster.masters[new].addr.clone();
    until(
        &cluster,
        "both agents in session with the new leader",
        Duration::from_secs(10),
        || async {
            let at: Vec<Option<String>> = [&a, &b].iter().map(|x| x.master()).collect();
            if at.iter().all(|m| m.as_deref() == Some(new_addr.as_str())) {
                Ok(())
            } else {
                Err(format!("{at:?}"))
            }
        },
    )
    .await;

    // Past the new leader's grace period: nobody went DOWN, nothing was replaced.
    while killed.elapsed() < DOWN_AFTER + Duration::from_secs(3) {
        let ns = nodes(&new_addr).await.expect("nodes");
        for n in &ns {
            assert_eq!(
                n.state(),
                pb::NodeState::Ready,
                "{} after the leader change: {}\n{}",
                n.id,
                n.state_message,
                cluster.dump()
            );
        }
        let ts = tasks(&new_addr, "app_web").await.expect("tasks");
        let now: Vec<String> = ts
            .iter()
            .filter(|t| is_running(t))
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(now, before, "{}", brief(&ts));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    tracing::info!("--- the new leader's controllers act");
    api(&new_addr)
        .await
        .scale_service(pb::ScaleServiceRequest {
            name: "app_web".into(),
            project: String::new(),
            replicas: 4,
        })
        .await
        .expect("scale");
    let ts = running(&cluster, &new_addr, "app_web", 4).await;
    assert_eq!(running_per_node(&ts).len(), 2, "{}", brief(&ts));
    assert_ne!(old_addr, new_addr);
}

// ------------------------------------------------------------------ mTLS

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mtls_a_session_belongs_to_the_node_its_certificate_names() {
    skiff_pki::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("m1");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(tmp.path().join("m1.log")).expect("log");
    let _master = Kill(
        std::process::Command::new(BIN)
            .args(["--data-dir", &data.display().to_string(), "--listen", &addr])
            .args(["--advertise", &addr, "init"])
            .env("RUST_LOG", "warn,skiff_master=info")
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("spawn"),
    );
    let admin_dir = data.join("admin");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (admin, mut cluster_api) = loop {
        if let Ok(admin) = skiff_pki::Credentials::load(&admin_dir, skiff_pki::ADMIN_FILE_STEM)
            && let Ok(ch) = channel(
                &addr,
                Some(skiff_pki::client_tls_config(&admin).expect("tls")),
            )
            .await
        {
            let mut c = ClusterApiClient::new(ch);
            // Ready once the cluster object (and with it the join tokens) is applied.
            if c.cluster_info(pb::ClusterInfoRequest {})
                .await
                .is_ok_and(|i| !i.into_inner().cluster_id.is_empty())
            {
                break (admin, c);
            }
        }
        assert!(Instant::now() < deadline, "master not ready over mTLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A worker joins with the worker token, as `skiff-agent join` does.
    let token = cluster_api
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("tokens")
        .into_inner()
        .worker;
    let (worker, joined) =
        skiff_master::tls::join_files(&tmp.path().join("agent"), &token, &addr, "127.0.0.1:0")
            .await
            .expect("join with the worker token");
    let node_id = joined.node_id.clone();
    let worker_tls = skiff_pki::client_tls_config(&worker).expect("tls");

    // A certificate issued by the CA for a node that never joined (or was removed): no
    // session, even though the certificate is valid.
    let ca = skiff_pki::ClusterCa::load(&data.join("ca")).expect("ca");
    let (stranger, _) = ca
        .issue_local(&skiff_pki::SignRequest {
            node_id: "never-joined".into(),
            role: skiff_pki::Role::Worker,
            ttl: Duration::from_secs(3600),
            extra_names: vec![],
        })
        .expect("worker certificate");
    let register = || pb::Register {
        description: Some(description("w")),
        running: vec![],
    };
    let denied = |r: &Result<_, SessionEnd>| matches!(r, Err(SessionEnd::Other(m)) if m.contains("ermission"));
    let not_member = open(
        None,
        &addr,
        Some(skiff_pki::client_tls_config(&stranger).expect("tls")),
        register(),
    )
    .await;
    assert!(denied(&not_member), "{:?}", not_member.err());
    // Claiming another node than the certificate's is refused.
    let refused = open(
        Some("worker-2"),
        &addr,
        Some(worker_tls.clone()),
        register(),
    )
    .await;
    assert!(denied(&refused), "{:?}", refused.err());
    // The admin certificate is no agent's.
    let admin_session = open(
        None,
        &addr,
        Some(skiff_pki::client_tls_config(&admin).expect("tls")),
        register(),
    )
    .await;
    assert!(denied(&admin_session), "{:?}", admin_session.err());

    // The agent with its certificate: the node is the certificate's, whatever the hostname.
    let agent = Agent::start_with(
        "some-hostname",
        std::slice::from_ref(&addr),
        Some(worker_tls.clone()),
    );
    let member = |nodes: &[pb::Node]| {
        nodes
            .iter()
            .find(|n| n.id == node_id)
            .map(|n| (n.state(), n.cert_serial.clone()))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = cluster_api
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .expect("nodes")
            .into_inner()
            .nodes;
        if let Some((pb::NodeState::Ready, serial)) = member(&nodes) {
            assert!(
                !serial.is_empty(),
                "the node record keeps its certificate serial"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{node_id} not registered: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        agent.state.accepted_as.lock().expect("lock").as_deref(),
        Some(node_id.as_str())
    );

    tracing::info!("--- remove the node: its session ends and it cannot come back");
    cluster_api
        .remove_node(pb::RemoveNodeRequest {
            node: node_id.clone(),
            force: true,
        })
        .await
        .expect("remove");
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.master().is_some() {
        assert!(
            Instant::now() < deadline,
            "the removed node's session is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = open(None, &addr, Some(worker_tls), register()).await;
    assert!(again.is_err(), "a removed node opened a session");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nodes = cluster_api
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    assert_eq!(member(&nodes), None, "the removed node stays removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_replicas_are_created_in_one_write_and_run_within_five_seconds() {
    let cluster = Cluster::start(1, &[]).await;
    let addr = cluster.masters[0].addr.clone();
    let _a = Agent::start("node-a", std::slice::from_ref(&addr));
    nodes_ready(&cluster, &addr, 1).await;
    let started = Instant::now();
    deploy(&addr, vec![replicated("web", "busybox:1", 100)]).await;
    let ts = running(&cluster, &addr, "app_web", 100).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "100 replicas took {took:?}");
    let created: std::collections::BTreeSet<i64> = ts
        .iter()
        .map(|t| t.meta.as_ref().map_or(0, |m| m.created_at_ms))
        .collect();
    assert_eq!(created.len(), 1, "created by one command: {created:?}");
}
