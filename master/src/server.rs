//! A running master: bootstrap (init / join / restart), the gRPC server with the raft
//! transport, the cluster API and any services the caller adds, and orderly shutdown
//! (stop serving, then `raft.shutdown()`).
//!
//! Data directory layout:
//! ```text
//! <data>/master.toml       raft id, cluster id, advertised address
//! <data>/raft/log/         raft log, vote, committed index (raft-log)
//! <data>/raft/snapshots/   the last state machine snapshot
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::v1 as pb;
use skiff_proto::v1::cluster_api_server::ClusterApiServer;
use skiff_proto::v1::raft_transport_client::RaftTransportClient;
use skiff_proto::v1::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::{Routes, RoutesBuilder};
use tracing::Instrument;

use crate::api::auth::Guard;
use crate::api::cluster::{ClusterService, TokenFormat, default_token, new_secret};
use crate::api::status;
use crate::handle::MasterHandle;
use crate::raft::network::Network;
use crate::raft::service::RaftService;
use crate::raft::{RaftNode, RaftNodeError, RaftSettings};
use crate::tls::{CertKeeper, DialTls, JoinService, MasterCert};
use skiff_proto::v1::join_server::JoinServer;

/// Identity file name in the data directory.
pub const IDENTITY_FILE: &str = "master.toml";

/// Who this master is; written at init/join, read on every start.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub raft_id: u64,
    pub cluster_id: String,
    pub advertise: String,
}

impl Identity {
    pub fn load(data_dir: &Path) -> Result<Option<Self>, MasterError> {
        let path = data_dir.join(IDENTITY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| MasterError::Identity {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MasterError::Identity {
                path,
                reason: e.to_string(),
            }),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), MasterError> {
        let path = data_dir.join(IDENTITY_FILE);
        let err = |reason: String| MasterError::Identity {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| err(e.to_string()))?;
        let text = toml::to_string(self).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
    }
}

/// Why a master could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("{path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error(
        "{dir} already holds a master (raft id {raft_id}, cluster {cluster_id}); start it with `skiff-master run`, or pick another --data-dir"
    )]
    AlreadyInitialized {
        dir: PathBuf,
        raft_id: u64,
        cluster_id: String,
    },
    #[error("{dir} holds no master: run `skiff-master init` or `skiff-master join` first")]
    NotInitialized { dir: PathBuf },
    #[error("cannot listen on {addr}: {err}")]
    Bind { addr: String, err: std::io::Error },
    #[error(transparent)]
    Raft(#[from] RaftNodeError),
    #[error("writing the cluster object: {0}")]
    Bootstrap(String),
    #[error("joining through {peer}: {reason}")]
    Join { peer: String, reason: String },
    #[error("timed out after {0:?} waiting for this master to become leader")]
    NoLeadership(Duration),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Extra gRPC services to serve beside the master's own (the dispatcher).
pub type ExtraServices = Box<dyn FnOnce(&MasterHandle, &mut RoutesBuilder) + Send>;

/// TLS for the server and for peer channels.
#[derive(Clone, Default)]
pub struct TlsSetup {
    /// This master's certificate, kept renewed (None: plain HTTP/2, `--insecure`).
    pub certs: Option<Arc<CertKeeper>>,
    pub guard: Option<Guard>,
    pub token: Option<TokenFormat>,
    /// Where the CA lives (serves `Join`, hands the key to joining masters).
    pub ca_dir: Option<PathBuf>,
    /// Kept equal to the store's revocation list.
    pub revoked: Option<skiff_pki::RevocationSet>,
}

impl TlsSetup {
    /// How this master dials peers and agents.
    pub fn dial(&self) -> DialTls {
        self.certs
            .as_ref()
            .map(|k| DialTls::Renewed(k.subscribe()))
            .unwrap_or_default()
    }
}

/// Everything a master needs to start.
#[derive(Clone)]
pub struct MasterOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    /// The address other masters and clients reach this one at.
    pub advertise: String,
    pub raft: RaftSettings,
    pub watch_history: usize,
    pub tls: TlsSetup,
}

/// How to start.
#[derive(Clone, Debug)]
pub enum StartMode {
    /// A new cluster with this master as its only member.
    Init {
        cluster_id: String,
        ca_digest: String,
        ca_cert_pem: String,
    },
    /// Join the cluster one of `peers` belongs to.
    Join { peers: Vec<String> },
    /// Restart from the data directory.
    Run,
}

/// A running master.
pub struct Master {
    handle: MasterHandle,
    server: JoinHandle<Result<(), MasterError>>,
    stop: CancellationToken,
    /// The leader's controllers (and future background components): stopped after the
    /// server, before raft.
    components: CancellationToken,
    tracker: TaskTracker,
    heartbeats: crate::dispatcher::service::Heartbeats,
    pub local_addr: SocketAddr,
    pub identity: Identity,
    /// The leader's answer when this master joined (carries the CA key).
    pub joined: Option<pb::AddMasterResponse>,
}

fn random_id() -> u64 {
    loop {
        let id: u64 = rand::random::<u64>() >> 12; // fits a JSON number exactly
        if id != 0 {
            return id;
        }
    }
}

/// Default cluster settings written at init.
pub fn default_settings() -> pb::ClusterSettings {
    pb::ClusterSettings {
        cluster_cidr: "10.213.0.0/16".into(),
        heartbeat_period_ms: 5000,
        heartbeat_misses: 3,
        node_cert_ttl_ms: 90 * 24 * 3600 * 1000,
        task_history_per_slot: 5,
    }
}

impl Master {
    /// Starts a master (bootstrapping first for init and join).
    pub async fn start(
        opts: &MasterOptions,
        mode: StartMode,
        extra: Option<ExtraServices>,
    ) -> Result<Master, MasterError> {
        let existing = Identity::load(&opts.data_dir)?;
        let identity = match (&mode, existing) {
            (StartMode::Run, Some(id)) => id,
            (StartMode::Run, None) => {
                return Err(MasterError::NotInitialized {
                    dir: opts.data_dir.clone(),
                });
            }
            (_, Some(id)) => {
                return Err(MasterError::AlreadyInitialized {
                    dir: opts.data_dir.clone(),
                    raft_id: id.raft_id,
                    cluster_id: id.cluster_id,
                });
            }
            (StartMode::Init { cluster_id, .. }, None) => Identity {
                raft_id: random_id(),
                cluster_id: cluster_id.clone(),
                advertise: opts.advertise.clone(),
            },
            (StartMode::Join { .. }, None) => Identity {
                raft_id: random_id(),
                cluster_id: String::new(),
                advertise: opts.advertise.clone(),
            },
        };
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|err| MasterError::Bind {
                addr: opts.listen.clone(),
                err,
            })?;
        let local_addr = listener.local_addr().map_err(|err| MasterError::Bind {
            addr: opts.listen.clone(),
            err,
        })?;
        if !matches!(mode, StartMode::Run) {
            identity.save(&opts.data_dir)?;
        }
        let network = Network::new(opts.tls.dial());
        let node = RaftNode::start(
            identity.raft_id,
            &opts.data_dir.join("raft"),
            &opts.raft,
            network,
            opts.watch_history,
        )
        .await?;
        let handle = MasterHandle::new(node.clone(), &identity.advertise);
        let guard = opts.tls.guard.clone().unwrap_or_else(Guard::open);
        let token = opts
            .tls
            .token
            .clone()
            .unwrap_or_else(|| std::sync::Arc::new(default_token));

        let mut routes = RoutesBuilder::default();
        routes.add_service(
            RaftTransportServer::new(RaftService::new(
                node.clone(),
                guard.clone(),
                opts.tls.ca_dir.clone(),
            ))
            .max_decoding_message_size(256 << 20),
        );
        if let Some(ca_dir) = &opts.tls.ca_dir {
            routes.add_service(JoinServer::new(JoinService::new(
                handle.clone(),
                ca_dir.clone(),
                guard.clone(),
            )));
        }
        if let Some(revoked) = &opts.tls.revoked {
            crate::tls::sync_revocations(handle.clone(), revoked.clone());
        }
        let heartbeats = crate::dispatcher::service::Heartbeats::default();
        routes.add_service(crate::dispatcher::server(
            &handle,
            guard.clone(),
            heartbeats.clone(),
        ));
        routes.add_service(
            ClusterApiServer::new(
                ClusterService::new(handle.clone(), guard, token).with_agent_tls(opts.tls.dial()),
            )
            .max_decoding_message_size(64 << 20),
        );
        if let Some(extra) = extra {
            extra(&handle, &mut routes);
        }
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            routes.routes(),
            opts.tls.certs.as_ref().map(|k| k.subscribe()),
            stop.clone(),
        ));
        let mut master = Master {
            handle,
            server,
            stop,
            components: CancellationToken::new(),
            tracker: TaskTracker::new(),
            heartbeats,
            local_addr,
            identity,
            joined: None,
        };
        match mode {
            StartMode::Init {
                cluster_id,
                ca_digest,
                ca_cert_pem,
            } => {
                if let Err(e) = master
                    .bootstrap(&cluster_id, &ca_digest, &ca_cert_pem)
                    .await
                {
                    master.shutdown().await;
                    return Err(e);
                }
            }
            StartMode::Join { peers } => {
                if let Err(e) = master.join(&peers).await {
                    master.shutdown().await;
                    return Err(e);
                }
                master.identity.save(&opts.data_dir)?;
            }
            StartMode::Run => {}
        }
        if let Some(keeper) = &opts.tls.certs {
            master.tracker.spawn(
                keeper
                    .clone()
                    .run(master.components.clone())
                    .instrument(tracing::info_span!("certificate")),
            );
        }
        let controllers =
            crate::controllers::Controllers::new(master.handle.clone(), master.heartbeats.clone());
        master.tracker.spawn(
            controllers
                .run(master.components.clone())
                .instrument(tracing::info_span!("controllers")),
        );
        tracing::info!(raft_id = master.identity.raft_id, addr = %master.identity.advertise, listen = %master.local_addr, "master serving");
        Ok(master)
    }

    async fn bootstrap(
        &mut self,
        cluster_id: &str,
        ca_digest: &str,
        ca_cert_pem: &str,
    ) -> Result<(), MasterError> {
        let node = self.handle.raft().clone();
        node.initialize(&self.identity.advertise).await?;
        let wait = Duration::from_secs(10);
        let mut leader = node.leader();
        tokio::time::timeout(wait, leader.wait_for(|l| l.is_self))
            .await
            .map_err(|_| MasterError::NoLeadership(wait))?
            .map_err(|_| MasterError::NoLeadership(wait))?;
        let cluster = pb::Cluster {
            id: cluster_id.to_owned(),
            settings: Some(default_settings()),
            ca_digest: ca_digest.to_owned(),
            ca_cert_pem: ca_cert_pem.to_owned(),
            worker_token_secret: new_secret().map_err(|e| MasterError::Bootstrap(e.to_string()))?,
            manager_token_secret: new_secret()
                .map_err(|e| MasterError::Bootstrap(e.to_string()))?,
            ..Default::default()
        };
        node.propose_local(pb::Command {
            mutations: vec![pb::Mutation {
                op: Some(pb::mutation::Op::PutCluster(cluster)),
                expected_version: 0,
                unconditional: false,
            }],
            request_id: format!("bootstrap-{cluster_id}"),
        })
        .await
        .map_err(|e| MasterError::Bootstrap(e.to_string()))?;
        Ok(())
    }

    /// Asks the cluster to add this master (learner, then voter), following
    /// not-leader hints; then records the cluster id.
    async fn join(&mut self, peers: &[String]) -> Result<(), MasterError> {
        let network = self.handle.raft().network().clone();
        let mut targets: Vec<String> = peers.to_vec();
        let mut last = String::from("no master address given");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while tokio::time::Instant::now() < deadline {
            let Some(addr) = targets.first().cloned() else {
                break;
            };
            let ch = network.channel(&addr).map_err(|e| MasterError::Join {
                peer: addr.clone(),
                reason: e.to_string(),
            })?;
            let mut client = RaftTransportClient::new(ch);
            let req = pb::AddMasterRequest {
                raft_id: self.identity.raft_id,
                addr: self.identity.advertise.clone(),
            };
            match client.add_master(req).await {
                Ok(resp) => {
                    self.joined = Some(resp.into_inner());
                    // The cluster object arrives with replication.
                    let mut revs = self.handle.revisions();
                    let h = self.handle.clone();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        revs.wait_for(|_| !h.cluster_id().is_empty()),
                    )
                    .await;
                    self.identity.cluster_id = self.handle.cluster_id();
                    return Ok(());
                }
                Err(s) => {
                    last = s.message().to_owned();
                    if let Some(leader) = status::leader_hint(&s) {
                        targets.retain(|t| *t != leader);
                        targets.insert(0, leader);
                    } else {
                        targets.rotate_left(1);
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        Err(MasterError::Join {
            peer: peers.join(", "),
            reason: last,
        })
    }

    pub fn handle(&self) -> &MasterHandle {
        &self.handle
    }

    /// Stops serving, then the controllers, then raft.
    pub async fn shutdown(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(Ok(Err(err))) => tracing::warn!(%err, "gRPC server"),
            Ok(_) => {}
            Err(_) => tracing::warn!("gRPC server did not stop within 5 s"),
        }
        stop_components(&self.components, &self.tracker).await;
        self.handle.raft().shutdown().await;
    }

    /// Serves until `shutdown` is cancelled or the server fails.
    pub async fn serve_until(mut self, shutdown: CancellationToken) -> Result<(), MasterError> {
        tokio::select! {
            () = shutdown.cancelled() => {
                tracing::info!("shutting down: stop serving, then the controllers, then raft");
                self.shutdown().await;
                Ok(())
            }
            res = &mut self.server => {
                stop_components(&self.components, &self.tracker).await;
                self.handle.raft().shutdown().await;
                match res {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(MasterError::Bootstrap(format!("server task: {e}"))),
                }
            }
        }
    }
}

/// Serves `routes` on `listener` until `stop`. With TLS, every renewal of the
/// certificate starts a new round on the same listener: the old round stops accepting
/// (its connections get a GOAWAY and close when their calls end; a TLS session is
/// checked only at its handshake) and the new one accepts with the new certificate.
async fn serve(
    listener: TcpListener,
    routes: Routes,
    mut certs: Option<watch::Receiver<Arc<MasterCert>>>,
    stop: CancellationToken,
) -> Result<(), MasterError> {
    let listener = Arc::new(listener);
    let mut rounds = JoinSet::new();
    let mut result = Ok(());
    'rounds: loop {
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)));
        if let Some(certs) = &mut certs {
            let tls = certs.borrow_and_update().server.clone();
            builder = builder
                .tls_config(tls)
                .map_err(|e| MasterError::Tls(e.to_string()))?;
        }
        let round = stop.child_token();
        rounds.spawn(
            builder
                .add_routes(routes.clone())
                .serve_with_incoming_shutdown(
                    accept_until(listener.clone(), round.clone()),
                    stop.clone().cancelled_owned(),
                ),
        );
        loop {
            tokio::select! {
                () = stop.cancelled() => break 'rounds,
                renewed = renewal(&mut certs) => {
                    if renewed {
                        tracing::info!("serving with the renewed certificate");
                        round.cancel();
                        continue 'rounds;
                    }
                    // Nobody renews any more (shutting down): serve what we have.
                    stop.cancelled().await;
                    break 'rounds;
                }
                Some(ended) = rounds.join_next() => match ended {
                    // An earlier round whose connections have all closed.
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        result = Err(MasterError::Serve(err));
                        break 'rounds;
                    }
                    Err(err) => {
                        result = Err(MasterError::Bootstrap(format!("server task: {err}")));
                        break 'rounds;
                    }
                },
            }
        }
    }
    stop.cancel();
    while let Some(ended) = rounds.join_next().await {
        if let Ok(Err(err)) = ended {
            tracing::debug!(%err, "gRPC server round");
        }
    }
    result
}

/// Whether a renewed certificate came (false: its keeper is gone); never without TLS.
async fn renewal(certs: &mut Option<watch::Receiver<Arc<MasterCert>>>) -> bool {
    match certs {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Connections accepted on `listener` until `round` is cancelled, with `TCP_NODELAY`:
/// tonic ignores its own `tcp_nodelay` for a listener it did not bind, and without it
/// Nagle holds small replies (raft acks, write answers) for the peer's delayed ACK,
/// ~40 ms.
fn accept_until(
    listener: Arc<TcpListener>,
    round: CancellationToken,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    let accepted = futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(stream, _)| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%err, "TCP_NODELAY on an accepted connection");
            }
            stream
        });
        Some((next, l))
    });
    futures::StreamExt::take_until(accepted, round.cancelled_owned())
}

/// Stops the background components (controllers) and waits for them, 5 s at most.
async fn stop_components(components: &CancellationToken, tracker: &TaskTracker) {
    components.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("controllers did not stop within 5 s");
    }
}
