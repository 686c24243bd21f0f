//! The client side of the raft transport: one cached gRPC channel per peer address,
//! openraft messages postcard-encoded in `RaftPayload`s, snapshots streamed in chunks.
//! Also carries follower → leader proposals and read-index requests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use skiff_proto::v1 as pb;
use skiff_proto::v1::raft_transport_client::RaftTransportClient;
use tonic::transport::{Channel, Endpoint};

use super::{BasicNode, ProposeError, TypeConfig};
use crate::api::status::{leader_hint, outcome_unknown};
use crate::tls::DialTls;

/// Snapshot chunk size on the wire.
const CHUNK: usize = 1 << 20;

/// The TLS name every master certificate carries.
pub const MASTER_TLS_NAME: &str = "skiff-master";

/// Channels to peers, shared by every raft replication stream and the forwarders.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each channel with the TLS generation it was made with.
    channels: Mutex<HashMap<String, (u64, Channel)>>,
    tls: DialTls,
}

/// A peer address that can't be turned into a channel.
#[derive(Debug, thiserror::Error)]
#[error("invalid master address {addr:?}: {err}")]
pub struct AddressError {
    addr: String,
    err: tonic::transport::Error,
}

impl Network {
    /// `tls`: client TLS (CA + this master's certificate), or plain HTTP/2.
    pub fn new(tls: DialTls) -> Self {
        Network {
            inner: Arc::new(Inner {
                channels: Mutex::new(HashMap::new()),
                tls,
            }),
        }
    }

    /// The cached channel to `addr` (connected lazily, reconnects by itself); made
    /// anew after this master's certificate was renewed (calls on the old one go on).
    pub fn channel(&self, addr: &str) -> Result<Channel, AddressError> {
        let tls = self.inner.tls.current();
        let generation = tls.as_ref().map_or(0, |(_, g)| *g);
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((made, ch)) = channels.get(addr)
            && *made == generation
        {
            return Ok(ch.clone());
        }
        let err = |err| AddressError {
            addr: addr.to_owned(),
            err,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(err)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some((tls, _)) = tls {
            ep = ep.tls_config(tls).map_err(err)?;
        }
        let ch = ep.connect_lazy();
        channels.insert(addr.to_owned(), (generation, ch.clone()));
        Ok(ch)
    }

    fn client(&self, addr: &str) -> Result<RaftTransportClient<Channel>, ProposeError> {
        self.channel(addr)
            .map(|ch| RaftTransportClient::new(ch).max_decoding_message_size(256 << 20))
            .map_err(|e| ProposeError::Unavailable(e.to_string()))
    }

    /// Sends a command to the leader at `addr` and returns its answer.
    pub async fn forward_proposal(
        &self,
        addr: &str,
        command: pb::Command,
    ) -> Result<u64, ProposeError> {
        let mut client = self.client(addr)?;
        let mut req = tonic::Request::new(pb::ProposeRequest {
            command: Some(command),
        });
        req.set_timeout(Duration::from_secs(10));
        match client.propose(req).await {
            Ok(resp) => decode_propose(resp.into_inner()),
            Err(status) => Err(status_to_propose_error(&status, addr)),
        }
    }

    /// Asks the leader at `addr` for a read index (it confirms leadership first).
    pub async fn leader_read_index(&self, addr: &str) -> Result<u64, ProposeError> {
        let mut client = self.client(addr)?;
        let mut req = tonic::Request::new(pb::MasterStatusRequest { read_index: true });
        req.set_timeout(Duration::from_secs(5));
        match client.status(req).await {
            Ok(resp) => Ok(resp.into_inner().read_index),
            Err(status) => Err(status_to_propose_error(&status, addr)),
        }
    }
}

/// The answer of a forwarded proposal.
pub fn decode_propose(resp: pb::ProposeResponse) -> Result<u64, ProposeError> {
    if resp.error.is_empty() {
        return Ok(resp.revision);
    }
    match postcard::from_bytes(&resp.error) {
        Ok(err) => Err(ProposeError::Rejected(err)),
        Err(err) => Err(ProposeError::Unavailable(format!(
            "the leader's answer could not be decoded: {err}"
        ))),
    }
}

/// Maps the leader's status back to a propose error.
pub fn status_to_propose_error(status: &tonic::Status, addr: &str) -> ProposeError {
    if outcome_unknown(status) {
        return ProposeError::Unknown;
    }
    if status.code() == tonic::Code::Unavailable && status.message().contains("not the leader") {
        return ProposeError::NotLeader {
            leader: leader_hint(status),
        };
    }
    ProposeError::Unavailable(format!("forwarding to {addr}: {}", status.message()))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            network: self.clone(),
            addr: node.addr.clone(),
            target,
        }
    }
}

/// One peer, as openraft sees it. openraft keeps a peer for as long as it replicates
/// to it, so the channel is looked up for every call: after this master's certificate
/// is renewed, new calls go out with the new one (a channel made before would redial a
/// restarted peer with the old, perhaps expired, certificate).
pub struct Peer {
    network: Network,
    addr: String,
    target: u64,
}

fn encode<T: serde::Serialize>(v: &T) -> Result<pb::RaftPayload, RPCError<TypeConfig>> {
    postcard::to_stdvec(v)
        .map(|data| pb::RaftPayload { data })
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn decode<T: serde::de::DeserializeOwned>(p: &pb::RaftPayload) -> Result<T, RPCError<TypeConfig>> {
    postcard::from_bytes(&p.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn rpc_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown => RPCError::Unreachable(Unreachable::new(status)),
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

/// One answer of an append stream, as openraft takes it.
type StreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// How long an append stream may wait for an answer while requests are unanswered: the
/// RPC deadline openraft gives (the heartbeat interval), but at least a second, so a
/// follower's slow fsync does not tear the stream down.
fn stream_answer_deadline(option: &RPCOption) -> Duration {
    option.hard_ttl().max(Duration::from_secs(1))
}

impl Peer {
    fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        self.network
            .channel(&self.addr)
            .map(|ch| RaftTransportClient::new(ch).max_decoding_message_size(256 << 20))
            .map_err(|e| {
                RPCError::Unreachable(Unreachable::from_string(format!(
                    "master {}: {e}",
                    self.target
                )))
            })
    }

    /// One unary RPC: `msg` postcard-encoded with openraft's deadline, the answer
    /// decoded.
    async fn unary<Req, Resp, Call, Fut>(
        &self,
        msg: &Req,
        option: &RPCOption,
        call: Call,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        Call: FnOnce(RaftTransportClient<Channel>, tonic::Request<pb::RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftPayload>, tonic::Status>>,
    {
        let resp = call(self.client()?, request(encode(msg)?, option))
            .await
            .map_err(|s| rpc_error(&s))?;
        decode(&resp.into_inner())
    }
}

fn request<T>(msg: T, option: &RPCOption) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(option.hard_ttl());
    req
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    /// Replication as one gRPC stream per session: requests go out as openraft makes
    /// them, without waiting for the answer to the one before (pipelining), and the
    /// answers come back in order. The stream fails when answers stop coming while
    /// requests are waiting for one (`stream_answer_deadline`).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            let target = self.target;
            let sent = Arc::new(AtomicU64::new(0));
            let counted = Arc::clone(&sent);
            let outgoing = input.filter_map(move |rpc| {
                let payload = match postcard::to_stdvec(&rpc) {
                    Ok(data) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        Some(pb::RaftPayload { data })
                    }
                    Err(err) => {
                        // Never for openraft's own types; the answer that does not come
                        // then fails the stream.
                        tracing::error!(%err, target, "encoding an append request");
                        None
                    }
                };
                std::future::ready(payload)
            });
            let answers = client
                .append_stream(tonic::Request::new(outgoing))
                .await
                .map_err(|s| rpc_error(&s))?
                .into_inner();
            let deadline = stream_answer_deadline(&option);
            let state = Some((answers, sent, 0u64));
            let stream = futures::stream::unfold(state, move |state| async move {
                let (mut answers, sent, mut received) = state?;
                loop {
                    match tokio::time::timeout(deadline, answers.message()).await {
                        Ok(Ok(Some(p))) => {
                            received += 1;
                            return Some((decode(&p), Some((answers, sent, received))));
                        }
                        Ok(Ok(None)) => return None,
                        Ok(Err(status)) => return Some((Err(rpc_error(&status)), None)),
                        // An idle stream (nothing to replicate) is fine.
                        Err(_) if sent.load(Ordering::Relaxed) <= received => {}
                        Err(_) => {
                            let err = Unreachable::from_string(format!(
                                "master {target}: no append answer within {deadline:?}"
                            ));
                            return Some((Err(RPCError::Unreachable(err)), None));
                        }
                    }
                }
            });
            Ok(Box::pin(stream) as BoxStream<'s, StreamItem>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::from_string(other.to_string())),
        })?;
        let net = |e: &dyn std::fmt::Display| {
            StreamingError::Network(NetworkError::from_string(e.to_string()))
        };
        let vote_bytes = postcard::to_stdvec(&vote).map_err(|e| net(&e))?;
        let meta_bytes = postcard::to_stdvec(&snapshot.meta).map_err(|e| net(&e))?;
        let data = snapshot.snapshot;
        let mut chunks = Vec::with_capacity(data.len() / CHUNK + 1);
        chunks.push(pb::SnapshotChunk {
            vote: vote_bytes,
            meta: meta_bytes,
            data: Vec::new(),
        });
        for c in data.chunks(CHUNK) {
            chunks.push(pb::SnapshotChunk {
                vote: Vec::new(),
                meta: Vec::new(),
                data: c.to_vec(),
            });
        }
        let mut req = tonic::Request::new(futures::stream::iter(chunks));
        req.set_timeout(Duration::from_secs(60));
        let resp = client
            .install_snapshot(req)
            .await
            .map_err(|s| match rpc_error(&s) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::from_string(other.to_string())),
            })?;
        postcard::from_bytes(&resp.into_inner().data).map_err(|e| net(&e))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }
}
