//! The assembled daemon (`skiff-agent run`): image store, runtime, node network,
//! executor, worker, the session with the masters and the agent API, each a task on one
//! tracker that stops on shutdown. Containers are never stopped by the agent stopping.
//!
//! ```text
//!   masters ══Dispatcher.Session══► session ──events──► network router ──► worker
//!      ▲                               ▲      Assignments: apply networks + peers first,
//!      │                               │      Endpoints: DNS, VIPs, FDB (persisted)
//!      │                         statuses (runners)       │
//!      └──Agent API (logs, exec)◄── api ◄── Runtime ◄── ContainerExecutor ◄── runners
//! ```
//!
//! Start-up order matters after a restart: the persisted assignments and endpoint table
//! are applied to the network first, running containers get their namespaces
//! re-registered, namespaces of containers that are gone are removed, and only then does
//! the worker re-adopt what runs and the session connect.
//!
//! ## Limitations
//! - A renewed certificate restarts the agent API's TLS: logs and exec calls in flight
//!   end (masters call again); sessions switch at their next reconnect.
//! - On an insecure cluster the agent API has no access control at all.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use skiff_image::{ImageStore, RegistryConfig};
use skiff_network::{NetworkMode, NodeConfig, NodeNetwork};
use skiff_pki::{Authorizer, ClientCerts, Credentials, RevocationSet, Role};
use skiff_proto::v1 as pb;
use skiff_proto::v1::agent_server::AgentServer;
use skiff_runtime::{Layout, Runtime, RuntimeConfig, Status};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::api::{AgentApi, TaskNames};
use crate::config::Settings;
use crate::containers::ContainerExecutor;
use crate::host::{self, HostError};
use crate::identity::{Identity, IdentityError};
use crate::renew::Renewer;
use crate::session::{self, SessionConfig, SessionEvent, StatusTiming};
use crate::worker::{self, Worker, WorkerError};

/// The worker's persisted assignments, in the data dir.
pub const ASSIGNMENTS_FILE: &str = "assignments.pb";
/// The last endpoint table, in the data dir.
pub const ENDPOINTS_FILE: &str = "endpoints.pb";
/// How long shutdown waits for the agent's tasks.
/// The DNS socket keeper's socket, in the data directory.
pub const DNS_KEEPER_SOCKET: &str = "dns-keeper.sock";
/// Hidden subcommand the agent re-executes itself with to become the keeper.
pub const KEEPER_COMMAND: &str = "keep-dns-sockets";
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Heartbeat period until a master says otherwise (Swarm's 5 s).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("the underlay address {ip} is IPv6; the overlay needs IPv4: pass --advertise-addr")]
    Ipv6Underlay { ip: IpAddr },
    #[error(
        "the shim {path} does not exist: install skiff-shim next to skiff-agent or pass --shim"
    )]
    NoShim { path: PathBuf },
    #[error("starting the container runtime in {dir}: {err}")]
    Runtime {
        dir: PathBuf,
        err: skiff_runtime::RuntimeError,
    },
    #[error(
        "no cgroup hierarchy is mounted in this mount namespace (/proc/self/mountinfo lists none): mount /sys/fs/cgroup; `ip netns exec` mounts a fresh /sys that hides it, so enter only the network namespace (`nsenter --net=/run/netns/NAME skiff-agent ...`)"
    )]
    NoCgroups,
    #[error("opening the image store {dir}: {err}")]
    Images {
        dir: PathBuf,
        err: Box<skiff_image::ImageError>,
    },
    #[error("setting up the node network: {0}")]
    Network(#[from] skiff_network::NetworkError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("cannot listen on {addr} for the agent API: {err}")]
    Bind { addr: String, err: std::io::Error },
    #[error("TLS of the agent API: {0}")]
    Tls(#[from] skiff_pki::TlsError),
    #[error("agent API server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// An agent ready to run: identity loaded, API port bound, addresses known.
pub struct Agent {
    settings: Settings,
    identity: Identity,
    credentials: Option<Credentials>,
    masters: Vec<String>,
    underlay: Ipv4Addr,
    listener: TcpListener,
    api_addr: SocketAddr,
}

impl Agent {
    /// Loads the identity from the data dir (an error naming it if the agent never
    /// joined), finds the underlay address and binds the agent API.
    pub async fn prepare(settings: Settings) -> Result<Agent, AgentError> {
        let identity = Identity::require(&settings.data_dir)?;
        let credentials = identity.credentials(&settings.data_dir)?;
        let masters = if settings.masters.is_empty() {
            identity.masters.clone()
        } else {
            settings.masters.clone()
        };
        let ip = host::underlay_ip(settings.advertise_addr, &masters).await?;
        let IpAddr::V4(underlay) = ip else {
            return Err(AgentError::Ipv6Underlay { ip });
        };
        if !settings.shim.exists() {
            return Err(AgentError::NoShim {
                path: settings.shim.clone(),
            });
        }
        let bind = |err| AgentError::Bind {
            addr: settings.api_listen.clone(),
            err,
        };
        let listener = TcpListener::bind(&settings.api_listen)
            .await
            .map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let api_addr = if local.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(underlay), local.port())
        } else {
            local
        };
        Ok(Agent {
            settings,
            identity,
            credentials,
            masters,
            underlay,
            listener,
            api_addr,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.identity.node_id
    }

    /// Where the agent API answers (as advertised to the masters).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Runs until `shutdown` (or a fatal error). Containers keep running afterwards.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let s = &self.settings;
        let node_id = self.identity.node_id.clone();
        tracing::info!(node = %node_id, underlay = %self.underlay, api = %self.api_addr, masters = ?self.masters, "agent starting");

        let images_dir = s.data_dir.join("images");
        let images = ImageStore::open(
            &images_dir,
            RegistryConfig {
                insecure: s.insecure_registries.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|err| AgentError::Images {
            dir: images_dir.clone(),
            err: Box::new(err),
        })?;
        let mut rcfg = RuntimeConfig::new(&s.runtime_root, &s.shim);
        rcfg.cgroup_parent = s.cgroup_parent.clone();
        let runtime = Runtime::new(rcfg).map_err(|err| match err {
            skiff_runtime::RuntimeError::Cgroup(skiff_runtime::CgroupError::NoHierarchy) => {
                AgentError::NoCgroups
            }
            err => AgentError::Runtime {
                dir: s.runtime_root.clone(),
                err,
            },
        })?;
        let mut ncfg = NodeConfig::new(&node_id, self.underlay, &s.data_dir);
        ncfg.netns = s.network_namespace.clone();
        ncfg.dns_upstreams = s.dns_upstreams.clone();
        let data_dir = s.data_dir.clone();
        ncfg.dns_keeper = tokio::task::spawn_blocking(move || start_dns_keeper(&data_dir))
            .await
            .ok()
            .flatten();
        let network = Arc::new(NodeNetwork::new(ncfg).await?);
        // The host firewall findings were logged by the network itself; the full list
        // (with the MTU) is for debugging.
        for line in network.diagnostics() {
            tracing::debug!(target: "skiff_agent::network", "{line}");
        }

        let state_file = s.data_dir.join(ASSIGNMENTS_FILE);
        let endpoints_file = s.data_dir.join(ENDPOINTS_FILE);
        let persisted = worker::load_assignments(&state_file)?;
        let endpoints = load_endpoints(&endpoints_file);
        restore_network(
            &network,
            &runtime,
            &persisted,
            endpoints.as_ref(),
            &s.data_dir,
        )
        .await;
        let names = TaskNames::default();
        names.set(&persisted.tasks);

        let tracker = TaskTracker::new();
        let executor = Arc::new(ContainerExecutor::new(
            runtime.clone(),
            images.clone(),
            Some(network.clone()),
            &s.data_dir,
        ));
        let (status_tx, status_rx) = mpsc::channel(1024);
        let worker = Worker::start(executor, status_tx, state_file, shutdown.clone()).await?;
        let (session_tx, session_rx) = mpsc::channel(64);
        let (worker_tx, worker_rx) = mpsc::channel(64);

        let credentials = match self.credentials.clone() {
            Some(c) => {
                let (tx, rx) = watch::channel(c);
                let renewer = Renewer {
                    tls_dir: s.data_dir.join(crate::identity::TLS_DIR),
                    masters: self.masters.clone(),
                    credentials: tx,
                };
                tracker.spawn(
                    renewer
                        .run(shutdown.clone())
                        .instrument(tracing::info_span!("renew")),
                );
                Some(rx)
            }
            None => None,
        };
        let session_cfg = SessionConfig {
            masters: self.masters.clone(),
            credentials: credentials.clone(),
            description: host::describe(
                IpAddr::V4(self.underlay),
                &self.api_addr.to_string(),
                &s.labels,
                cgroup_driver(runtime.layout()),
            ),
            heartbeat_period: HEARTBEAT,
            batch_max: 256,
            status_timing: StatusTiming::default(),
            insecure_node_id: self.credentials.is_none().then(|| node_id.clone()),
        };
        let snapshot = worker.snapshot_fn();
        tracker.spawn(
            session::run(
                session_cfg,
                session_tx,
                status_rx,
                snapshot,
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("session")),
        );
        tracker.spawn(
            worker
                .run(worker_rx)
                .instrument(tracing::info_span!("worker")),
        );
        tracker.spawn(
            route(
                session_rx,
                worker_tx,
                network.clone(),
                names.clone(),
                endpoints_file,
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("network")),
        );

        let api = AgentApi::new(
            runtime.clone(),
            images.clone(),
            node_id.clone(),
            names,
            tracker.clone(),
            shutdown.clone(),
        );
        let tls = credentials.as_ref().map(|rx| ApiTls {
            credentials: rx.clone(),
            cluster_id: self.identity.cluster_id.clone(),
        });
        let server = serve_api(self.listener, api, tls, shutdown.clone());
        tokio::pin!(server);
        let result = tokio::select! {
            () = shutdown.cancelled() => {
                // The server drains in-flight calls (their streams end on shutdown).
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("agent API did not stop within the grace period");
                        Ok(())
                    }
                }
            }
            r = &mut server => {
                tracing::error!(?r, "agent API server ended");
                shutdown.cancel();
                r.and(Ok(()))
            }
        };
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tracker.len(),
                "agent tasks did not stop within the grace period"
            );
        }
        if let Err(err) = images.sync().await {
            tracing::warn!(%err, "image index not synced");
        }
        tracing::info!(node = %node_id, "agent stopped; containers keep running");
        result
    }
}

/// Makes sure the process keeping the embedded DNS's sockets across restarts runs: the
/// previous agent's, or a new one (this binary, re-executed, in its own process group so
/// it outlives the agent as the shims do). Returns its socket, or None if it cannot
/// start (the DNS then works without it; only restarts show a gap). Blocking.
fn start_dns_keeper(data_dir: &Path) -> Option<PathBuf> {
    use std::os::unix::process::CommandExt;
    let path = data_dir.join(DNS_KEEPER_SOCKET);
    let keeper = skiff_network::dns::keeper::Keeper::new(&path);
    if keeper.is_running() {
        return Some(path);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            tracing::warn!(%err, "no DNS socket keeper: cannot find this executable");
            return None;
        }
    };
    let spawned = std::process::Command::new(&exe)
        .arg(KEEPER_COMMAND)
        .arg("--socket")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        // Reaped if it ends while this agent runs (QUIT when the node leaves).
        Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
        Err(err) => {
            tracing::warn!(%err, exe = %exe.display(), "no DNS socket keeper: cannot start it");
            return None;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if keeper.is_running() {
            tracing::info!(socket = %path.display(), "DNS socket keeper started");
            return Some(path);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(socket = %path.display(), "no DNS socket keeper: it did not answer");
    None
}

/// "v1" or "v2", as `NodeDescription.cgroup_driver` says it.
fn cgroup_driver(layout: &Layout) -> &'static str {
    match layout {
        Layout::V1 { .. } => "v1",
        Layout::V2 { .. } => "v2",
    }
}

/// TLS of the agent API: the node's credentials (the server restarts its TLS when they
/// change, after a renewal) and the cluster whose managers get in.
pub struct ApiTls {
    pub credentials: watch::Receiver<Credentials>,
    pub cluster_id: String,
}

/// Serves the agent API on `listener` until `shutdown`; with `tls`, client certificates
/// are required and only managers of the cluster get through. New credentials restart
/// the server on the same listener (calls in flight end; callers reconnect).
pub async fn serve_api(
    listener: TcpListener,
    api: AgentApi,
    tls: Option<ApiTls>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let listener = Arc::new(listener);
    let Some(mut tls) = tls else {
        return serve_round(&listener, api, None, shutdown).await;
    };
    loop {
        let creds = tls.credentials.borrow_and_update().clone();
        let config = skiff_pki::server_tls_config_with(&creds, ClientCerts::Required)?;
        let authz = Authorizer::new(tls.cluster_id.clone(), RevocationSet::new());
        let round = shutdown.child_token();
        let server = serve_round(
            &listener,
            api.with_shutdown(round.clone()),
            Some((config, authz)),
            round.clone(),
        );
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => return r,
            changed = tls.credentials.changed() => {
                if changed.is_err() {
                    // Nobody renews any more: keep serving what we have.
                    return (&mut server).await;
                }
                tracing::info!("agent API: new node certificate; restarting TLS");
                round.cancel();
                (&mut server).await?;
            }
        }
    }
}

async fn serve_round(
    listener: &Arc<TcpListener>,
    api: AgentApi,
    tls: Option<(tonic::transport::ServerTlsConfig, Authorizer)>,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    let incoming = futures::stream::unfold(listener.clone(), |l| async move {
        let accepted = l.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, l))
    });
    let builder = tonic::transport::Server::builder();
    match tls {
        Some((cfg, authz)) => {
            builder
                .tls_config(cfg)?
                .add_service(AgentServer::with_interceptor(
                    api,
                    authz.interceptor(&[Role::Manager]),
                ))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await?
        }
        None => {
            let mut builder = builder;
            builder
                .add_service(AgentServer::new(api))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await?
        }
    }
    Ok(())
}

/// Between the session and the worker: every assignment's networks and peers are
/// applied before the worker sees it (tasks attach to networks that exist), endpoint
/// tables go to the network (and to disk, for a restart without masters). A failed
/// apply is retried every few seconds until one succeeds.
async fn route(
    mut from: mpsc::Receiver<SessionEvent>,
    to: mpsc::Sender<SessionEvent>,
    network: Arc<NodeNetwork>,
    names: TaskNames,
    endpoints_file: PathBuf,
    shutdown: CancellationToken,
) {
    let mut retry = tokio::time::interval(Duration::from_secs(3));
    let mut failed_assignments: Option<pb::Assignments> = None;
    let mut failed_endpoints: Option<pb::EndpointTable> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            event = from.recv() => {
                let Some(event) = event else { return };
                // Both kinds are full snapshots: of what queued while the last one was
                // applied only the latest of each matters. Without this, 100 tasks
                // ending at once queue an endpoint table per change, each re-rendering
                // every local task's VIP table, and a new assignment waits behind them.
                let mut latest = Latest::default();
                latest.fold(event);
                let mut closed = false;
                loop {
                    match from.try_recv() {
                        Ok(event) => latest.fold(event),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                // Assignments first: new tasks reach the worker without waiting for the
                // endpoint table.
                if let Some(a) = latest.assignments {
                    failed_assignments = apply_assignments(&network, &a).await.then(|| a.clone());
                    names.set(&a.tasks);
                    if to.send(SessionEvent::Assignments(a)).await.is_err() {
                        return;
                    }
                }
                if let Some(t) = latest.endpoints {
                    if let Err(err) = persist(&endpoints_file, &t.encode_to_vec()) {
                        tracing::warn!(%err, "endpoint table kept in memory only");
                    }
                    failed_endpoints = apply_endpoints(&network, &t).await.then_some(t);
                }
                if closed {
                    return;
                }
            }
            _ = retry.tick(), if failed_assignments.is_some() || failed_endpoints.is_some() => {
                if let Some(a) = failed_assignments.take() {
                    failed_assignments = apply_assignments(&network, &a).await.then_some(a);
                }
                if let Some(t) = failed_endpoints.take() {
                    failed_endpoints = apply_endpoints(&network, &t).await.then_some(t);
                }
            }
        }
    }
}

/// The newest assignment and endpoint table among events that queued up.
#[derive(Default)]
struct Latest {
    assignments: Option<pb::Assignments>,
    endpoints: Option<pb::EndpointTable>,
}

impl Latest {
    fn fold(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Assignments(a) => self.assignments = Some(a),
            SessionEvent::Endpoints(t) => self.endpoints = Some(t),
            SessionEvent::Connected { node_id, master } => {
                tracing::info!(node = %node_id, %master, "connected");
            }
            SessionEvent::Disconnected { reason } => {
                tracing::debug!(%reason, "disconnected");
            }
        }
    }
}

/// True if it failed (and was logged).
async fn apply_assignments(network: &NodeNetwork, a: &pb::Assignments) -> bool {
    match network.apply_assignments(a).await {
        Ok(()) => false,
        Err(err) => {
            tracing::warn!(%err, revision = a.revision, "networks of the assignment not applied; retrying");
            true
        }
    }
}

async fn apply_endpoints(network: &NodeNetwork, t: &pb::EndpointTable) -> bool {
    match network.apply_endpoints(t).await {
        Ok(()) => false,
        Err(err) => {
            tracing::warn!(%err, revision = t.revision, "endpoint table not applied; retrying");
            true
        }
    }
}

/// After a restart: networks and endpoints as last known, namespaces of running
/// containers re-registered (so DNS, VIPs and FDB entries cover them), containers that
/// were created but never started deleted (their runner makes them again), and
/// namespaces of tasks that are gone removed.
async fn restore_network(
    network: &NodeNetwork,
    runtime: &Runtime,
    assignments: &pb::Assignments,
    endpoints: Option<&pb::EndpointTable>,
    run_dir: &Path,
) {
    if (!assignments.networks.is_empty() || !assignments.peers.is_empty())
        && let Err(err) = network.restore(assignments, endpoints).await
    {
        tracing::warn!(%err, "restoring the node network from what was persisted");
    }
    let containers = match runtime.list().await {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(%err, "listing containers; leaving namespaces alone");
            return;
        }
    };
    for c in containers.iter().filter(|c| c.status == Status::Created) {
        match skiff_runtime::ContainerId::new(&c.id) {
            Ok(id) => {
                if let Err(err) = runtime.delete(&id, true).await {
                    tracing::warn!(task = %c.id, %err, "deleting a container that never started");
                }
            }
            Err(err) => tracing::warn!(task = %c.id, %err, "odd container id"),
        }
    }
    let attached: HashSet<String> = skiff_network::attach::attached_tasks(run_dir)
        .into_iter()
        .collect();
    let running: HashSet<&str> = containers
        .iter()
        .filter(|c| matches!(c.status, Status::Running | Status::Paused))
        .map(|c| c.id.as_str())
        .collect();
    for task in &assignments.tasks {
        if !running.contains(task.id.as_str()) || !attached.contains(&task.id) {
            continue;
        }
        let mode = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map(|c| c.network_mode.as_str())
            .unwrap_or("");
        let Ok(mode) = NetworkMode::parse(mode) else {
            continue;
        };
        if let Err(err) = network.attach(&task.id, mode, &task.networks).await {
            tracing::warn!(task = %task.id, %err, "re-registering the namespace of a running task");
        }
    }
    // Only running tasks keep their namespaces: an ended task's addresses may belong
    // to a new task already (the runner releases them when a task ends; this catches
    // tasks that ended while no agent ran).
    let keep: Vec<&str> = running.iter().copied().collect();
    match network.gc(&keep).await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(?removed, "removed namespaces of tasks that are gone")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "removing namespaces of gone tasks"),
    }
}

fn load_endpoints(path: &Path) -> Option<pb::EndpointTable> {
    let bytes = std::fs::read(path).ok()?;
    match pb::EndpointTable::decode(bytes.as_slice()) {
        Ok(t) => Some(t),
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "ignoring a corrupt endpoint table");
            None
        }
    }
}

/// Replaces `path` atomically.
fn persist(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_snapshots_fold_to_the_newest_of_each_kind() {
        let mut latest = Latest::default();
        for revision in 1..=3 {
            latest.fold(SessionEvent::Endpoints(pb::EndpointTable {
                revision,
                ..Default::default()
            }));
        }
        latest.fold(SessionEvent::Assignments(pb::Assignments {
            revision: 7,
            ..Default::default()
        }));
        latest.fold(SessionEvent::Disconnected {
            reason: "test".into(),
        });
        latest.fold(SessionEvent::Endpoints(pb::EndpointTable {
            revision: 4,
            ..Default::default()
        }));
        assert_eq!(latest.assignments.map(|a| a.revision), Some(7));
        assert_eq!(latest.endpoints.map(|t| t.revision), Some(4));
    }
}
