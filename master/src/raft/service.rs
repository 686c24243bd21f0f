//! The server side of `skiff.v1.RaftTransport`: hands peers' messages to openraft,
//! takes proposals forwarded by followers, adds joining masters, answers status and
//! read-index requests. Only masters (manager certificates) may call it.

use std::pin::Pin;

use futures::StreamExt;
use openraft::alias::SnapshotOf;
use openraft::raft::AppendEntriesRequest;
use skiff_proto::v1 as pb;
use skiff_proto::v1::raft_transport_server::RaftTransport;
use tonic::{Request, Response, Status, Streaming};

use super::{ProposeError, RaftNode, TypeConfig};
use crate::api::auth::{Guard, Role};
use crate::api::status;

/// The service.
#[derive(Clone)]
pub struct RaftService {
    node: RaftNode,
    guard: Guard,
    ca_dir: Option<std::path::PathBuf>,
}

impl RaftService {
    /// `ca_dir`: the CA this master holds, handed to masters that join.
    pub fn new(node: RaftNode, guard: Guard, ca_dir: Option<std::path::PathBuf>) -> Self {
        RaftService {
            node,
            guard,
            ca_dir,
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(p: &pb::RaftPayload, what: &str) -> Result<T, Status> {
    postcard::from_bytes(&p.data)
        .map_err(|e| Status::invalid_argument(format!("decoding {what}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    postcard::to_stdvec(v)
        .map(|data| Response::new(pb::RaftPayload { data }))
        .map_err(|e| Status::internal(format!("encoding a raft response: {e}")))
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft stopped: {e}"))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let rpc = decode(req.get_ref(), "AppendEntriesRequest")?;
        let resp = self.node.raft.append_entries(rpc).await.map_err(fatal)?;
        encode(&resp)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let rpc = decode(req.get_ref(), "VoteRequest")?;
        let resp = self.node.raft.vote(rpc).await.map_err(fatal)?;
        encode(&resp)
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let rpc = decode(req.get_ref(), "pre-vote VoteRequest")?;
        let resp = self.node.raft.pre_vote(rpc).await.map_err(fatal)?;
        encode(&resp)
    }

    type AppendStreamStream =
        Pin<Box<dyn futures::Stream<Item = Result<pb::RaftPayload, Status>> + Send + 'static>>;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        // Requests until the leader closes the stream, it breaks, or a request does not
        // decode; the answers to what came before still go back.
        let input = tokio_stream::StreamExt::map_while(req.into_inner(), |item| match item {
            Ok(p) => match postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&p.data) {
                Ok(rpc) => Some(rpc),
                Err(err) => {
                    tracing::warn!(%err, "append stream: a request that does not decode ends it");
                    None
                }
            },
            Err(status) => {
                tracing::debug!(%status, "append stream from the leader ended");
                None
            }
        });
        let output = self
            .node
            .raft
            .stream_append(input)
            .map(|answer| match answer {
                Ok(result) => postcard::to_stdvec(&result)
                    .map(|data| pb::RaftPayload { data })
                    .map_err(|e| Status::internal(format!("encoding an append result: {e}"))),
                Err(stopped) => Err(fatal(stopped)),
            });
        Ok(Response::new(Box::pin(output)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let mut stream = req.into_inner();
        let first = stream.next().await.ok_or_else(|| {
            Status::invalid_argument("snapshot stream closed before its first chunk")
        })??;
        let vote = postcard::from_bytes(&first.vote)
            .map_err(|e| Status::invalid_argument(format!("decoding the snapshot's vote: {e}")))?;
        let meta = postcard::from_bytes(&first.meta).map_err(|e| {
            Status::invalid_argument(format!("decoding the snapshot's metadata: {e}"))
        })?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?.data);
        }
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        };
        let resp = self
            .node
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fatal)?;
        encode(&resp)
    }

    async fn add_master(
        &self,
        req: Request<pb::AddMasterRequest>,
    ) -> Result<Response<pb::AddMasterResponse>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let r = req.into_inner();
        if r.raft_id == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument(
                "AddMaster needs a raft id and an address",
            ));
        }
        self.node
            .add_master(r.raft_id, &r.addr)
            .await
            .map_err(status::from_raft)?;
        let masters = self
            .node
            .masters()
            .into_iter()
            .map(|(_, addr, _)| addr)
            .collect();
        let ca_key_pem = match &self.ca_dir {
            Some(dir) => skiff_pki::ClusterCa::load(dir)
                .map(|ca| ca.key_pem())
                .map_err(|e| {
                    Status::internal(format!("loading the CA to hand to the new master: {e}"))
                })?,
            None => String::new(),
        };
        Ok(Response::new(pb::AddMasterResponse {
            masters,
            ca_key_pem,
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let rpc = decode(req.get_ref(), "TransferLeaderRequest")?;
        let resp = self
            .node
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(fatal)?;
        encode(&resp)
    }

    async fn propose(
        &self,
        req: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let command = req
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("Propose without a command"))?;
        // One hop only: a follower that got a forwarded command says where the leader is.
        match self.node.propose_local(command).await {
            Ok(revision) => Ok(Response::new(pb::ProposeResponse {
                revision,
                error: Vec::new(),
            })),
            Err(ProposeError::Rejected(err)) => Ok(Response::new(pb::ProposeResponse {
                revision: 0,
                error: postcard::to_stdvec(&err)
                    .map_err(|e| Status::internal(format!("encoding an apply error: {e}")))?,
            })),
            Err(err) => Err(status::from_propose(&err)),
        }
    }

    async fn status(
        &self,
        req: Request<pb::MasterStatusRequest>,
    ) -> Result<Response<pb::MasterStatusResponse>, Status> {
        self.guard.check(&req, &[Role::Manager])?;
        let mut out = self.node.status();
        if req.get_ref().read_index {
            let read = self
                .node
                .raft
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
                .map_err(|e| match e.forward_to_leader() {
                    Some(f) => status::not_leader(f.leader_node.as_ref().map(|n| n.addr.clone())),
                    None => Status::unavailable(e.to_string()),
                })?;
            out.read_index = read.index();
        }
        Ok(Response::new(out))
    }
}

/// Boxed stream type used by streaming responses in this crate.
pub type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;
