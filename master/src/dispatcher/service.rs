//! The `skiff.v1.Dispatcher` gRPC service: one session per agent on the leader.
//!
//! ```text
//!  agent ── Register ──► upsert Node (READY, description) ──► SessionAccepted
//!        ── Heartbeat ─► Heartbeats (memory; node liveness is judged from it)
//!        ── Statuses ──► StatusWriter (batched, CAS on each task, own tasks only)
//!        ◄─ Assignments / EndpointTable whenever they change (store revision watch)
//! ```
//!
//! A follower refuses sessions with FAILED_PRECONDITION and the leader's address in the
//! `skiff-leader` metadata; the agent reconnects there. A session open on a master that
//! loses the leadership ends the same way (checked on every store change and every
//! second), so agents move to the new leader within about a second.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use skiff_proto::v1::{self as pb, dispatcher_server::Dispatcher};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::assign::{self, View};

/// Metadata key naming the leader on a refused session.
pub const LEADER_METADATA: &str = "skiff-leader";

/// A consistent copy of what the dispatcher reads, taken at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub nodes: Vec<pb::Node>,
    pub services: Vec<pb::Service>,
    pub tasks: Vec<pb::Task>,
    pub networks: Vec<pb::Network>,
    pub cluster: Option<pb::Cluster>,
}

impl Snapshot {
    fn view(&self) -> View<'_> {
        View {
            nodes: &self.nodes,
            services: &self.services,
            tasks: &self.tasks,
            networks: &self.networks,
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// An object changed since it was read: read again and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not the leader")]
    NotLeader,
    #[error("{0}")]
    Failed(String),
}

/// What the dispatcher needs from the master: reads, change notifications, writes and
/// leadership. The master's store implements it (see `crate::cluster`).
pub trait DispatchStore: Clone + Send + Sync + 'static {
    /// The current state.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// Ticks with the store revision after every applied command.
    fn revisions(&self) -> watch::Receiver<u64>;
    /// Commits a command through raft.
    fn write(
        &self,
        command: pb::Command,
    ) -> impl std::future::Future<Output = Result<u64, WriteError>> + Send;
    /// None when this master leads; else the leader's gRPC address, if known.
    fn leader_elsewhere(&self) -> Option<String>;
}

/// Who a session belongs to, decided before its first message is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionIdentity {
    /// Proven by a client certificate (`serial`). The node must be a member (its record
    /// is made by `Join`: a removed node cannot come back with a renewed certificate),
    /// and its record takes the serial, which is what removing it revokes.
    Certified { node_id: String, serial: String },
    /// Named in the `skiff-node-id` metadata on an insecure master.
    Node(String),
    /// Insecure master and no `skiff-node-id` metadata: the node is named by the
    /// hostname in its `Register`.
    FromRegister,
}

/// Who is calling: the node id from its certificate (see `dispatcher::access`).
pub type Authenticate = Arc<
    dyn Fn(&Request<Streaming<pb::AgentMessage>>) -> Result<SessionIdentity, Status> + Send + Sync,
>;

/// The masters' addresses, announced to agents in `SessionAccepted`.
pub type Masters = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// How long a session may go without checking whether this master still leads.
const LEADERSHIP_CHECK: Duration = Duration::from_secs(1);

/// Last heartbeat per node, kept in the leader's memory (not in raft: a heartbeat a
/// second per node would be most of the log).
#[derive(Clone, Debug, Default)]
pub struct Heartbeats(Arc<Mutex<HashMap<String, Instant>>>);

impl Heartbeats {
    pub fn beat(&self, node: &str) {
        self.lock().insert(node.to_owned(), Instant::now());
    }

    /// How long since each node's last heartbeat.
    pub fn ages(&self) -> HashMap<String, Duration> {
        self.lock()
            .iter()
            .map(|(n, t)| (n.clone(), t.elapsed()))
            .collect()
    }

    /// Each node's last heartbeat on the wall clock, given the wall clock now (the
    /// ages are measured on the monotonic clock, so a clock step moves them all alike).
    pub fn last_seen_ms(&self, now_ms: i64) -> HashMap<String, i64> {
        self.ages()
            .into_iter()
            .map(|(n, age)| {
                let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                (n, now_ms.saturating_sub(age))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The service.
#[derive(Clone)]
pub struct DispatcherService<S: DispatchStore> {
    store: S,
    authenticate: Authenticate,
    heartbeats: Heartbeats,
    statuses: mpsc::Sender<(String, Vec<pb::TaskStatusUpdate>)>,
    masters: Masters,
}

impl<S: DispatchStore> DispatcherService<S> {
    /// Makes the service and spawns its status writer (which stops when the service
    /// and all sessions are dropped). The heartbeat period agents are told is the
    /// cluster's `settings.heartbeat_period_ms` at the time the session opens.
    pub fn new(
        store: S,
        authenticate: Authenticate,
        heartbeats: Heartbeats,
        masters: Masters,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(status_writer(store.clone(), rx));
        DispatcherService {
            store,
            authenticate,
            heartbeats,
            statuses: tx,
            masters,
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::MasterMessage, Status>> + Send>>;

#[tonic::async_trait]
impl<S: DispatchStore> Dispatcher for DispatcherService<S> {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let identity = (self.authenticate)(&request)?;
        if let Some(leader) = self.store.leader_elsewhere() {
            return Err(not_leader(&leader));
        }
        let mut up = request.into_inner();
        let first = up
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before Register"))?;
        let Some(pb::agent_message::Msg::Register(register)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a session must be Register",
            ));
        };
        let (node_id, serial) = match identity {
            SessionIdentity::Certified { node_id, serial } => (node_id, Some(serial)),
            SessionIdentity::Node(id) => (id, None),
            SessionIdentity::FromRegister => register
                .description
                .as_ref()
                .map(|d| d.hostname.clone())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    Status::invalid_argument(
                        "this master runs without TLS: name the node in the skiff-node-id metadata or in Register.description.hostname",
                    )
                })
                .map(|id| (id, None))?,
        };
        register_node(
            &self.store,
            &node_id,
            register.description.unwrap_or_default(),
            serial,
        )
        .await?;
        self.heartbeats.beat(&node_id);
        if !register.running.is_empty() {
            let _ = self
                .statuses
                .send((node_id.clone(), register.running))
                .await;
        }
        tracing::info!(node = %node_id, "session opened");

        let (tx, rx) = mpsc::channel::<Result<pb::MasterMessage, Status>>(16);
        let settings = self
            .store
            .snapshot()
            .cluster
            .as_ref()
            .and_then(|c| c.settings.clone());
        let accepted = pb::MasterMessage {
            msg: Some(pb::master_message::Msg::Accepted(pb::SessionAccepted {
                node_id: node_id.clone(),
                session_id: format!("{node_id}-{}", now_ms()),
                heartbeat_period_ms: heartbeat_period_ms(settings.as_ref()),
                masters: (self.masters)(),
            })),
        };
        let _ = tx.send(Ok(accepted)).await;

        // Down: assignments and endpoints whenever they change.
        let store = self.store.clone();
        let down_node = node_id.clone();
        let down_tx = tx.clone();
        let pusher = tokio::spawn(async move {
            let mut revisions = store.revisions();
            let mut last_assign: Vec<u8> = Vec::new();
            let mut last_endpoints: Vec<u8> = Vec::new();
            loop {
                if let Some(leader) = store.leader_elsewhere() {
                    let _ = down_tx.send(Err(not_leader(&leader))).await;
                    return;
                }
                let snap = store.snapshot();
                if !snap.nodes.iter().any(|n| n.id == down_node) {
                    let _ = down_tx.send(Err(removed(&down_node))).await;
                    return;
                }
                let view = snap.view();
                let mut a = assign::assignments(&view, &down_node, 0);
                let key = a.encode_to_vec();
                if key != last_assign {
                    last_assign = key;
                    a.revision = snap.revision;
                    let msg = pb::master_message::Msg::Assignments(a);
                    if down_tx
                        .send(Ok(pb::MasterMessage { msg: Some(msg) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let mut e = assign::endpoints(&view, &down_node, 0);
                let key = e.encode_to_vec();
                if key != last_endpoints {
                    last_endpoints = key;
                    e.revision = snap.revision;
                    let msg = pb::master_message::Msg::Endpoints(e);
                    if down_tx
                        .send(Ok(pb::MasterMessage { msg: Some(msg) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(LEADERSHIP_CHECK) => {}
                    () = down_tx.closed() => return,
                }
            }
        });

        // Up: heartbeats and statuses.
        let heartbeats = self.heartbeats.clone();
        let statuses = self.statuses.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = up.message().await {
                match msg.msg {
                    Some(pb::agent_message::Msg::Heartbeat(_)) => heartbeats.beat(&node_id),
                    Some(pb::agent_message::Msg::Statuses(batch)) => {
                        heartbeats.beat(&node_id);
                        let _ = statuses.send((node_id.clone(), batch.updates)).await;
                    }
                    Some(pb::agent_message::Msg::Register(_)) | None => {}
                }
            }
            tracing::info!(node = %node_id, "session closed");
            pusher.abort();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// FAILED_PRECONDITION naming the leader (`leader` empty: not known yet) in the
/// `skiff-leader` metadata, which the agent follows.
pub fn not_leader(leader: &str) -> Status {
    let mut status = Status::failed_precondition(format!(
        "this master is not the leader; the leader is {}",
        if leader.is_empty() {
            "not known yet"
        } else {
            leader
        }
    ));
    if !leader.is_empty()
        && let Ok(v) = leader.parse()
    {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    status
}

/// The heartbeat period agents are told: the cluster's setting, else Swarm's 5 s.
pub fn heartbeat_period_ms(settings: Option<&pb::ClusterSettings>) -> u64 {
    settings
        .map(|s| s.heartbeat_period_ms)
        .filter(|p| *p > 0)
        .unwrap_or(skiff_orchestrator::DEFAULT_HEARTBEAT_PERIOD_MS)
}

/// PERMISSION_DENIED for a node that is not (or no longer) a member.
fn removed(node_id: &str) -> Status {
    Status::permission_denied(format!(
        "node {node_id} is not a member of this cluster (removed?): join it again with a worker token"
    ))
}

/// Upserts the node: description from the agent, READY, and the serial of the
/// certificate it came with. A certified node must exist already. Retries on conflicts.
async fn register_node<S: DispatchStore>(
    store: &S,
    node_id: &str,
    description: pb::NodeDescription,
    serial: Option<String>,
) -> Result<(), Status> {
    let failed = |e: WriteError| Status::unavailable(format!("registering node {node_id}: {e}"));
    for _ in 0..10 {
        let snap = store.snapshot();
        let existing = snap.nodes.iter().find(|n| n.id == node_id).cloned();
        let (mut node, expected) = match existing {
            Some(n) => {
                let v = n.meta.as_ref().map_or(0, |m| m.version);
                (n, v)
            }
            None if serial.is_some() => return Err(removed(node_id)),
            None => (
                pb::Node {
                    id: node_id.to_owned(),
                    spec: Some(pb::NodeSpec::default()),
                    ..Default::default()
                },
                0,
            ),
        };
        if let Some(serial) = &serial {
            node.cert_serial.clone_from(serial);
        }
        node.description = Some(description.clone());
        node.state = pb::NodeState::Ready as i32;
        node.state_message = String::new();
        node.last_heartbeat_ms = now_ms();
        let cmd = pb::Command {
            mutations: vec![pb::Mutation {
                op: Some(pb::mutation::Op::PutNode(node)),
                expected_version: expected,
                unconditional: false,
            }],
            request_id: String::new(),
        };
        match store.write(cmd).await {
            Ok(_) => return Ok(()),
            Err(WriteError::Conflict(_)) => continue,
            Err(e) => return Err(failed(e)),
        }
    }
    Err(failed(WriteError::Conflict(format!(
        "node {node_id} kept changing"
    ))))
}

/// Writes task statuses in batches: collects for a few milliseconds, then one command
/// per batch. A node may only report its own tasks; a status never moves a task
/// backwards.
async fn status_writer<S: DispatchStore>(
    store: S,
    mut rx: mpsc::Receiver<(String, Vec<pb::TaskStatusUpdate>)>,
) {
    while let Some(first) = rx.recv().await {
        let mut pending: HashMap<String, (String, pb::TaskStatusUpdate)> = HashMap::new();
        let mut add = |(node, updates): (String, Vec<pb::TaskStatusUpdate>)| {
            for u in updates {
                pending.insert(u.task_id.clone(), (node.clone(), u));
            }
        };
        add(first);
        // More batches (other agents) are taken until none came for 5 ms, or 20 ms
        // after the first: one agent's lone batch waits 5 ms, not 20.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        loop {
            let quiet = tokio::time::Instant::now() + Duration::from_millis(5);
            match tokio::time::timeout_at(deadline.min(quiet), rx.recv()).await {
                Ok(Some(more)) => add(more),
                _ => break,
            }
        }
        for attempt in 0..5 {
            let snap = store.snapshot();
            let mutations = status_mutations(&snap.tasks, pending.values());
            if mutations.is_empty() {
                break;
            }
            match store
                .write(pb::Command {
                    mutations,
                    request_id: String::new(),
                })
                .await
            {
                Ok(_) => break,
                Err(WriteError::Conflict(_)) if attempt < 4 => continue,
                Err(err) => {
                    tracing::warn!(%err, "task statuses not written");
                    break;
                }
            }
        }
    }
}

/// Pure: the task writes a batch of status updates makes, given the current tasks.
pub fn status_mutations<'a>(
    tasks: &[pb::Task],
    updates: impl Iterator<Item = &'a (String, pb::TaskStatusUpdate)>,
) -> Vec<pb::Mutation> {
    let by_id: HashMap<&str, &pb::Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut out = Vec::new();
    for (node, update) in updates {
        let Some(task) = by_id.get(update.task_id.as_str()) else {
            continue;
        };
        if task.node_id != *node {
            tracing::warn!(%node, task = %task.id, owner = %task.node_id, "status for a task of another node ignored");
            continue;
        }
        let Some(new) = &update.status else { continue };
        let old = task.status.clone().unwrap_or_default();
        let moves_back = new.state() < old.state();
        let same = new.state == old.state && new.health == old.health;
        if moves_back || same {
            continue;
        }
        let mut t = (*task).clone();
        t.status = Some(new.clone());
        out.push(pb::Mutation {
            expected_version: t.meta.as_ref().map_or(0, |m| m.version),
            op: Some(pb::mutation::Op::PutTask(t)),
            unconditional: false,
        });
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
