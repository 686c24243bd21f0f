//! The agent's session with the masters: one bidirectional `Dispatcher.Session` stream
//! held with the leader. Up: a `Register` first (with the tasks running right now, so a
//! master can reconcile after either side restarts), then heartbeats and batched task
//! statuses (sent after 10 ms without a new one, and at least every 100 ms). Down: the
//! node's full assignment set and the endpoint table.
//!
//! ```text
//!   connect(master) ──► Register ──► [Heartbeat | StatusBatch]* ──► stream ends/breaks
//!        ▲                                                              │
//!        └── leader hint (FAILED_PRECONDITION + "skiff-leader"), else next master,
//!            with backoff; statuses not yet sent are kept and sent first
//! ```
//!
//! While no master answers the agent keeps its containers running (the worker never
//! stops a task for lack of a session) and keeps the latest status of every task to
//! send when the session comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_pki::Credentials;
use skiff_proto::v1 as pb;
use skiff_proto::v1::dispatcher_client::DispatcherClient;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Metadata key a follower uses to name the leader's address.
pub const LEADER_METADATA: &str = "skiff-leader";
/// Metadata key naming the node to a master started with `--insecure` (no certificate
/// says who the agent is there).
pub const NODE_ID_METADATA: &str = "skiff-node-id";

/// How the session reaches the masters.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// gRPC addresses of the masters ("172.31.200.11:7700"); the list grows with what
    /// the masters announce.
    pub masters: Vec<String>,
    /// The node's credentials (mTLS), current after every renewal; None: insecure.
    pub credentials: Option<watch::Receiver<Credentials>>,
    pub description: pb::NodeDescription,
    /// Used until the master says otherwise in `SessionAccepted`.
    pub heartbeat_period: Duration,
    /// Largest number of statuses sent in one batch.
    pub batch_max: usize,
    /// When statuses go up: once none came for `quiet` (the end of a burst, or a lone
    /// one), and every `flush` whatever the traffic (a long burst).
    pub status_timing: StatusTiming,
    /// Sent as `skiff-node-id` metadata: only for insecure masters (`tls` is None).
    pub insecure_node_id: Option<String>,
}

/// When batched task statuses are sent (see [`SessionConfig::status_timing`]).
#[derive(Clone, Copy, Debug)]
pub struct StatusTiming {
    pub quiet: Duration,
    pub flush: Duration,
}

impl Default for StatusTiming {
    /// 10 ms of quiet, at least every 100 ms. A fixed 100 ms tick alone made the last
    /// task of a deploy wait 50 ms on average before anyone heard it ran. Each batch that
    /// changes a service's running replicas means a new endpoint table and a reload of
    /// the node's VIP tables, but tables that queue up while one applies are folded
    /// into the newest (the agent's `Latest`), and a load through libnftables costs
    /// ~0.8 ms: deploys of 100 replicas got no slower (stop 20: 0.62–0.89 s against
    /// 0.78–0.97 s in alternating runs), where the same rule cost 345 → 957 ms while every
    /// reload was an `nft` process (2026-12-06).
    fn default() -> Self {
        StatusTiming {
            quiet: Duration::from_millis(10),
            flush: Duration::from_millis(100),
        }
    }
}

/// What the session hands the worker.
#[derive(Debug)]
pub enum SessionEvent {
    Connected { node_id: String, master: String },
    Assignments(pb::Assignments),
    Endpoints(pb::EndpointTable),
    Disconnected { reason: String },
}

/// Ways one session attempt ends.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach master {addr}: {err}")]
    Connect {
        addr: String,
        err: tonic::transport::Error,
    },
    #[error("master {addr} is not the leader; leader is {leader}")]
    NotLeader { addr: String, leader: String },
    #[error("master {addr} refused the session: {status}")]
    Refused { addr: String, status: tonic::Status },
    #[error("session with {addr} broke: {status}")]
    Broken { addr: String, status: tonic::Status },
    #[error("master {addr} ended the session")]
    Ended { addr: String },
    #[error("TLS with the node certificate: {0}")]
    Tls(#[from] skiff_pki::TlsError),
    #[error("invalid master address {addr:?}: {err}")]
    Address {
        addr: String,
        err: tonic::transport::Error,
    },
}

/// Runs sessions until `shutdown`: connects, follows the leader, reconnects with backoff.
/// `running` is asked for the current task statuses before each `Register`.
pub async fn run(
    mut config: SessionConfig,
    events: mpsc::Sender<SessionEvent>,
    mut statuses: mpsc::Receiver<pb::TaskStatusUpdate>,
    running: impl Fn() -> Vec<pb::TaskStatusUpdate>,
    shutdown: CancellationToken,
) {
    let mut pending: BTreeMap<String, pb::TaskStatusUpdate> = BTreeMap::new();
    let mut next = 0usize;
    let mut hint: Option<String> = None;
    let mut backoff = Backoff::new();
    loop {
        if shutdown.is_cancelled() || config.masters.is_empty() {
            return;
        }
        let addr = hint
            .take()
            .unwrap_or_else(|| config.masters[next % config.masters.len()].clone());
        next = next.wrapping_add(1);
        let attempt = one_session(
            &mut config,
            &addr,
            &events,
            &mut statuses,
            &mut pending,
            &running,
            &shutdown,
            &mut backoff,
        )
        .await;
        if shutdown.is_cancelled() {
            return;
        }
        let reason = match attempt {
            Ok(()) => return,
            Err(SessionError::NotLeader { leader, .. }) => {
                tracing::info!(%leader, from = %addr, "following the leader");
                if !config.masters.contains(&leader) {
                    config.masters.push(leader.clone());
                }
                hint = Some(leader);
                continue;
            }
            Err(err) => err.to_string(),
        };
        tracing::warn!(master = %addr, %reason, "no session");
        let _ = events.send(SessionEvent::Disconnected { reason }).await;
        // Keep taking statuses while waiting, so runners never block on a full channel;
        // the latest per task goes up with the next session.
        let sleep = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(sleep);
        let mut open = true;
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = shutdown.cancelled() => return,
                update = statuses.recv(), if open => match update {
                    Some(u) => { pending.insert(u.task_id.clone(), u); }
                    None => open = false,
                },
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_session(
    config: &mut SessionConfig,
    addr: &str,
    events: &mpsc::Sender<SessionEvent>,
    statuses: &mut mpsc::Receiver<pb::TaskStatusUpdate>,
    pending: &mut BTreeMap<String, pb::TaskStatusUpdate>,
    running: &impl Fn() -> Vec<pb::TaskStatusUpdate>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let tls = match &config.credentials {
        Some(c) => Some(skiff_pki::client_tls_config(&c.borrow())?),
        None => None,
    };
    let channel = endpoint(addr, tls)?
        .connect()
        .await
        .map_err(|err| SessionError::Connect {
            addr: addr.to_owned(),
            err,
        })?;
    let mut client = DispatcherClient::new(channel);
    let (up_tx, up_rx) = mpsc::channel::<pb::AgentMessage>(64);
    let register = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            description: Some(config.description.clone()),
            running: running(),
        })),
    };
    // The channel is empty and ours: this cannot fail.
    let _ = up_tx.send(register).await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(up_rx));
    if let Some(id) = &config.insecure_node_id {
        match tonic::metadata::MetadataValue::try_from(id.as_str()) {
            Ok(v) => {
                request.metadata_mut().insert(NODE_ID_METADATA, v);
            }
            Err(err) => tracing::warn!(node = %id, %err, "node id cannot be sent as metadata"),
        }
    }
    let response = client
        .session(request)
        .await
        .map_err(|status| classify(addr, status, true))?;
    let mut down = response.into_inner();

    let mut period = config.heartbeat_period;
    let mut heartbeat = tokio::time::interval(period);
    let mut flush = tokio::time::interval(config.status_timing.flush);
    let quiet = tokio::time::sleep(config.status_timing.quiet);
    tokio::pin!(quiet);
    let mut quiet_armed = !pending.is_empty();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = &mut quiet, if quiet_armed => {
                quiet_armed = false;
                if !pending.is_empty() {
                    send_batch(&up_tx, pending, config.batch_max).await;
                }
            }
            msg = down.message() => {
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => return Err(SessionError::Ended { addr: addr.to_owned() }),
                    Err(status) => return Err(classify(addr, status, false)),
                };
                match msg.msg {
                    Some(pb::master_message::Msg::Accepted(acc)) => {
                        backoff.reset();
                        if acc.heartbeat_period_ms > 0 {
                            period = Duration::from_millis(acc.heartbeat_period_ms);
                            heartbeat = tokio::time::interval(period);
                        }
                        for m in acc.masters {
                            if !config.masters.contains(&m) {
                                config.masters.push(m);
                            }
                        }
                        tracing::info!(node = %acc.node_id, master = %addr, "session accepted");
                        let _ = events.send(SessionEvent::Connected { node_id: acc.node_id, master: addr.to_owned() }).await;
                    }
                    Some(pb::master_message::Msg::Assignments(a)) => {
                        let _ = events.send(SessionEvent::Assignments(a)).await;
                    }
                    Some(pb::master_message::Msg::Endpoints(e)) => {
                        let _ = events.send(SessionEvent::Endpoints(e)).await;
                    }
                    None => {}
                }
            }
            update = statuses.recv() => {
                let Some(update) = update else { return Ok(()) };
                pending.insert(update.task_id.clone(), update);
                quiet.as_mut().reset(tokio::time::Instant::now() + config.status_timing.quiet);
                quiet_armed = true;
                if pending.len() >= config.batch_max {
                    send_batch(&up_tx, pending, config.batch_max).await;
                }
            }
            _ = flush.tick() => {
                if !pending.is_empty() {
                    send_batch(&up_tx, pending, config.batch_max).await;
                }
            }
            _ = heartbeat.tick() => {
                let hb = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {})) };
                if up_tx.send(hb).await.is_err() {
                    return Err(SessionError::Ended { addr: addr.to_owned() });
                }
            }
        }
    }
}

/// Sends up to `max` pending statuses (oldest task ids first); what is sent leaves
/// `pending`. If the stream is gone they stay and go with the next session.
async fn send_batch(
    up: &mpsc::Sender<pb::AgentMessage>,
    pending: &mut BTreeMap<String, pb::TaskStatusUpdate>,
    max: usize,
) {
    let keys: Vec<String> = pending.keys().take(max).cloned().collect();
    let updates: Vec<pb::TaskStatusUpdate> = keys
        .iter()
        .filter_map(|k| pending.get(k).cloned())
        .collect();
    let msg = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Statuses(pb::TaskStatusBatch {
            updates,
        })),
    };
    if up.send(msg).await.is_ok() {
        for k in keys {
            pending.remove(&k);
        }
    }
}

fn classify(addr: &str, status: tonic::Status, at_open: bool) -> SessionError {
    if status.code() == tonic::Code::FailedPrecondition
        && let Some(leader) = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|l| !l.is_empty())
    {
        return SessionError::NotLeader {
            addr: addr.to_owned(),
            leader: leader.to_owned(),
        };
    }
    if at_open {
        SessionError::Refused {
            addr: addr.to_owned(),
            status,
        }
    } else {
        SessionError::Broken {
            addr: addr.to_owned(),
            status,
        }
    }
}

/// A channel endpoint with keepalives that notice a dead master in seconds.
pub fn endpoint(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Endpoint, SessionError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|err| SessionError::Address {
            addr: addr.to_owned(),
            err,
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(4))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).map_err(|err| SessionError::Address {
            addr: addr.to_owned(),
            err,
        })?;
    }
    Ok(ep)
}

/// Exponential backoff from 100 ms to 5 s, with jitter so agents don't reconnect in
/// lockstep after a leader change.
#[derive(Debug)]
struct Backoff {
    current: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { current: Self::MIN }
    }

    fn reset(&mut self) {
        self.current = Self::MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(Self::MAX);
        let jitter = u64::from(
            std::process::id()
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0),
        ) % (base.as_millis().max(1) as u64 / 2 + 1);
        base + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests;
