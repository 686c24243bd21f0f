//! `skiff.v1.ClusterApi`: what `skiffctl` calls. Served by every master.
//!
//! Writes run on the leader: a follower forwards the whole call over its cached
//! channel to the leader (once; a forwarded call that lands on a non-leader answers
//! not-leader with a hint). On the leader a write reads the store, builds one
//! compare-and-swap command and proposes it, re-reading on a conflict. A client that
//! retries sets the `skiff-request-id` metadata: the store answers a retry of an
//! applied command with its first result instead of applying it twice.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use skiff_proto::v1 as pb;
use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use skiff_proto::v1::cluster_api_server::ClusterApi;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Guard, Role};
use super::deploy;
use super::status;
use crate::handle::MasterHandle;
use crate::raft::ProposeError;
use crate::store::{ApplyError, StoreState};
use crate::tls::DialTls;

/// Metadata key carrying a client's request id (idempotent retries).
pub const REQUEST_ID_METADATA: &str = "skiff-request-id";
/// Metadata key marking a call a follower forwarded (never forwarded twice).
pub const FORWARDED_METADATA: &str = "skiff-forwarded";

/// How many times a write re-reads the store after a compare-and-swap conflict.
const WRITE_ATTEMPTS: usize = 8;

/// Tokens and the CA digest, for `ListTokens` (kept outside the store's types).
pub type TokenFormat = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// The service.
#[derive(Clone)]
pub struct ClusterService {
    master: MasterHandle,
    guard: Guard,
    token: TokenFormat,
    /// Revokes a certificate serial in the running TLS stack (RemoveNode).
    version: &'static str,
    /// Reaches agents for logs and exec.
    agents: Arc<super::proxy::AgentDialer>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Formats a join token: "SKIFF-1-<ca digest>-<secret>".
pub fn default_token(ca_digest: &str, secret: &str) -> String {
    format!("SKIFF-1-{ca_digest}-{secret}")
}

fn request_id<T>(req: &Request<T>) -> String {
    req.metadata()
        .get(REQUEST_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn version_of(meta: Option<&pb::Meta>) -> u64 {
    meta.map_or(0, |m| m.version)
}

fn put(op: pb::mutation::Op, version: u64) -> pb::Mutation {
    pb::Mutation {
        op: Some(op),
        expected_version: version,
        unconditional: false,
    }
}

/// A service by id, "<project>_<name>", or name inside `project`.
pub fn find_service<'a>(s: &'a StoreState, name: &str, project: &str) -> Option<&'a pb::Service> {
    if let Some(svc) = s.service(name) {
        return Some(svc);
    }
    if !project.is_empty()
        && let Some(svc) = s.service_by_name(project, name)
    {
        return Some(svc);
    }
    // `<project>_<name>`: either part may hold '_' too, so try every split.
    name.match_indices('_')
        .find_map(|(at, _)| s.service_by_name(&name[..at], &name[at + 1..]))
}

/// A node by id or hostname.
pub fn find_node<'a>(s: &'a StoreState, node: &str) -> Option<&'a pb::Node> {
    s.node(node).or_else(|| s.nodes_by_hostname(node).next())
}

fn service_not_found(name: &str, project: &str) -> Status {
    if project.is_empty() {
        Status::not_found(format!(
            "no service {name:?} (give an id, <project>_<name>, or --project)"
        ))
    } else {
        Status::not_found(format!("no service {name:?} in project {project:?}"))
    }
}

fn is_running(t: &pb::Task) -> bool {
    t.status
        .as_ref()
        .is_some_and(|s| s.state == pb::TaskState::Running as i32)
}

fn is_active(t: &pb::Task) -> bool {
    t.desired_state <= pb::TaskState::Running as i32
}

fn summary(s: &StoreState, svc: &pb::Service) -> pb::ServiceSummary {
    let running = s
        .tasks_of_service(&svc.id)
        .filter(|t| is_running(t))
        .count() as u64;
    let desired = match svc.spec.as_ref().and_then(|sp| sp.mode.as_ref()) {
        Some(pb::service_spec::Mode::Replicated(r)) => r.replicas,
        Some(pb::service_spec::Mode::Global(_)) => {
            s.tasks_of_service(&svc.id).filter(|t| is_active(t)).count() as u64
        }
        None => 1,
    };
    pb::ServiceSummary {
        service: Some(svc.clone()),
        running,
        desired,
    }
}

impl ClusterService {
    pub fn new(master: MasterHandle, guard: Guard, token: TokenFormat) -> Self {
        ClusterService {
            master,
            guard,
            token,
            version: env!("CARGO_PKG_VERSION"),
            agents: Arc::new(super::proxy::AgentDialer::new(DialTls::Plain)),
        }
    }

    /// Dials agents (logs, exec) with this TLS client configuration.
    pub fn with_agent_tls(mut self, tls: DialTls) -> Self {
        self.agents = Arc::new(super::proxy::AgentDialer::new(tls));
        self
    }

    /// `skiffctl image ...`: `op` on the agents of the nodes `node` names.
    async fn on_nodes(
        &self,
        node: &str,
        op: super::images::Op,
    ) -> Result<Response<pb::NodeImagesResponse>, Status> {
        super::images::run(&self.master, &self.agents, node, op)
            .await
            .map(Response::new)
    }

    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        // Managers too: a follower forwards calls as itself.
        self.guard
            .check(req, &[Role::Admin, Role::Manager])
            .map(|_| ())
    }

    /// A client to the leader when this master does not lead (None: handle here).
    fn leader_client<T>(
        &self,
        req: &Request<T>,
    ) -> Result<Option<ClusterApiClient<Channel>>, Status> {
        let leader = self.master.leader().borrow().clone();
        if leader.is_self {
            return Ok(None);
        }
        if req.metadata().get(FORWARDED_METADATA).is_some() {
            return Err(status::not_leader(leader.addr));
        }
        let Some(addr) = leader.addr else {
            return Err(status::not_leader(None));
        };
        let ch = self
            .master
            .raft()
            .network()
            .channel(&addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Some(
            ClusterApiClient::new(ch).max_decoding_message_size(256 << 20),
        ))
    }

    async fn linearize(&self, read: Option<&pb::ReadOptions>) -> Result<(), Status> {
        if read.is_some_and(|r| r.linearizable) {
            self.master
                .linearize()
                .await
                .map_err(|e| status::from_propose(&e))?;
        }
        Ok(())
    }

    /// Read, build, propose; re-read on a conflict. `build` returns the mutations and
    /// a value to answer with (computed from the same read).
    async fn write<T>(
        &self,
        request_id: String,
        build: impl Fn(&StoreState) -> Result<(Vec<pb::Mutation>, T), Status>,
    ) -> Result<(u64, T), Status> {
        let mut last = None;
        for _ in 0..WRITE_ATTEMPTS {
            let (mutations, value) = self.master.read(&build)?;
            if mutations.is_empty() {
                return Ok((self.master.revision(), value));
            }
            let command = pb::Command {
                mutations,
                request_id: request_id.clone(),
            };
            match self.master.raft().propose_local(command).await {
                Ok(rev) => return Ok((rev, value)),
                Err(ProposeError::Rejected(e @ ApplyError::Conflict { .. })) => last = Some(e),
                Err(e) => return Err(status::from_propose(&e)),
            }
        }
        Err(last.map_or_else(
            || Status::aborted("write kept conflicting"),
            |e| status::from_apply(&e),
        ))
    }

    /// Waits until this master applied `revision`, so the answer reads its own write.
    async fn read_after(&self, revision: u64) {
        let mut revs = self.master.revisions();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            revs.wait_for(|r| *r >= revision),
        )
        .await;
    }

    fn service_after_write(&self, id: &str) -> Result<pb::Service, Status> {
        self.master
            .read(|s| s.service(id).cloned())
            .ok_or_else(|| Status::not_found(format!("service {id} was removed meanwhile")))
    }
}

macro_rules! forward {
    ($self:ident, $req:ident, $method:ident) => {
        if let Some(mut client) = $self.leader_client(&$req)? {
            let (mut md, ext, msg) = $req.into_parts();
            md.insert(
                FORWARDED_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            return client.$method(Request::from_parts(md, ext, msg)).await;
        }
    };
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn deploy(
        &self,
        req: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, deploy);
        let rid = request_id(&req);
        let r = req.into_inner();
        let build = |s: &StoreState| {
            let p = deploy::plan(s, &r, &mut deploy::new_id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok((if r.dry_run { Vec::new() } else { p.mutations }, p.changes))
        };
        let (revision, changes) = self.write(rid, build).await?;
        Ok(Response::new(pb::DeployResponse {
            changes,
            revision: if r.dry_run { 0 } else { revision },
        }))
    }

    async fn remove_project(
        &self,
        req: Request<pb::RemoveProjectRequest>,
    ) -> Result<Response<pb::RemoveProjectResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, remove_project);
        let rid = request_id(&req);
        let project = req.into_inner().project;
        let (_, changes) = self
            .write(rid, |s| {
                let p = deploy::remove_project(s, &project);
                Ok((p.mutations, p.changes))
            })
            .await?;
        Ok(Response::new(pb::RemoveProjectResponse { changes }))
    }

    async fn list_projects(
        &self,
        req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        self.admin(&req)?;
        self.linearize(req.get_ref().read.as_ref()).await?;
        let projects = self.master.read(|s| {
            let mut by: std::collections::BTreeMap<String, pb::ProjectSummary> = Default::default();
            for svc in s.services() {
                let p = svc
                    .spec
                    .as_ref()
                    .map(|sp| sp.project.clone())
                    .unwrap_or_default();
                let sum = summary(s, svc);
                let e = by.entry(p.clone()).or_insert_with(|| pb::ProjectSummary {
                    name: p,
                    ..Default::default()
                });
                e.services += 1;
                e.running_tasks += sum.running;
                e.desired_tasks += sum.desired;
            }
            by.into_values().collect()
        });
        Ok(Response::new(pb::ListProjectsResponse { projects }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.admin(&req)?;
        self.linearize(req.get_ref().read.as_ref()).await?;
        let project = req.into_inner().project;
        let services = self.master.read(|s| {
            if project.is_empty() {
                s.services().map(|svc| summary(s, svc)).collect()
            } else {
                s.services_of_project(&project)
                    .map(|svc| summary(s, svc))
                    .collect()
            }
        });
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        self.admin(&req)?;
        self.linearize(req.get_ref().read.as_ref()).await?;
        let r = req.into_inner();
        self.master
            .read(|s| find_service(s, &r.name, &r.project).cloned())
            .map(Response::new)
            .ok_or_else(|| service_not_found(&r.name, &r.project))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        self.admin(&req)?;
        forward!(self, req, update_service);
        let rid = request_id(&req);
        let r = req.into_inner();
        let spec = r
            .spec
            .clone()
            .ok_or_else(|| Status::invalid_argument("UpdateService without a spec"))?;
        let (rev, id) = self
            .write(rid, |s| {
                let svc = find_service(s, &r.name, &r.project).ok_or_else(|| service_not_found(&r.name, &r.project))?;
                let current = version_of(svc.meta.as_ref());
                if r.expected_version != 0 && r.expected_version != current {
                    return Err(Status::aborted(format!(
                        "service {} changed: you read version {}, it is at {current}; read it again",
                        r.name, r.expected_version
                    )));
                }
                let mut new = spec.clone();
                if let Some(old) = &svc.spec {
                    new.name.clone_from(&old.name);
                    new.project.clone_from(&old.project);
                } else {
                    new.name.clear();
                    new.project.clear();
                }
                if svc.spec.as_ref() == Some(&new) {
                    return Ok((Vec::new(), svc.id.clone()));
                }
                let updated = deploy::updated_service(svc, new);
                Ok((vec![put(pb::mutation::Op::PutService(updated), current)], svc.id.clone()))
            })
            .await?;
        self.read_after(rev).await;
        self.service_after_write(&id).map(Response::new)
    }

    async fn scale_service(
        &self,
        req: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        self.admin(&req)?;
        forward!(self, req, scale_service);
        let rid = request_id(&req);
        let r = req.into_inner();
        let (rev, id) = self
            .write(rid, |s| {
                let svc = find_service(s, &r.name, &r.project)
                    .ok_or_else(|| service_not_found(&r.name, &r.project))?;
                let mut spec = svc.spec.clone().unwrap_or_default();
                if let Some(pb::service_spec::Mode::Global(_)) = spec.mode {
                    return Err(Status::failed_precondition(format!(
                        "service {} is global (one task per node): it can't be scaled",
                        r.name
                    )));
                }
                spec.mode = Some(pb::service_spec::Mode::Replicated(pb::ReplicatedMode {
                    replicas: r.replicas,
                }));
                if svc.spec.as_ref() == Some(&spec) {
                    return Ok((Vec::new(), svc.id.clone()));
                }
                let updated = deploy::updated_service(svc, spec);
                Ok((
                    vec![put(
                        pb::mutation::Op::PutService(updated),
                        version_of(svc.meta.as_ref()),
                    )],
                    svc.id.clone(),
                ))
            })
            .await?;
        self.read_after(rev).await;
        self.service_after_write(&id).map(Response::new)
    }

    async fn rollback_service(
        &self,
        req: Request<pb::RollbackServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        self.admin(&req)?;
        forward!(self, req, rollback_service);
        let rid = request_id(&req);
        let r = req.into_inner();
        let (rev, id) = self
            .write(rid, |s| {
                let svc = find_service(s, &r.name, &r.project)
                    .ok_or_else(|| service_not_found(&r.name, &r.project))?;
                let Some(prev) = svc.previous_spec.clone() else {
                    return Err(Status::failed_precondition(format!(
                        "service {} has no previous spec to roll back to",
                        r.name
                    )));
                };
                let updated = deploy::updated_service(svc, prev);
                Ok((
                    vec![put(
                        pb::mutation::Op::PutService(updated),
                        version_of(svc.meta.as_ref()),
                    )],
                    svc.id.clone(),
                ))
            })
            .await?;
        self.read_after(rev).await;
        self.service_after_write(&id).map(Response::new)
    }

    async fn remove_service(
        &self,
        req: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, remove_service);
        let rid = request_id(&req);
        let r = req.into_inner();
        self.write(rid, |s| {
            let svc = find_service(s, &r.name, &r.project)
                .ok_or_else(|| service_not_found(&r.name, &r.project))?;
            Ok((
                vec![put(
                    pb::mutation::Op::DeleteService(svc.id.clone()),
                    version_of(svc.meta.as_ref()),
                )],
                (),
            ))
        })
        .await?;
        Ok(Response::new(pb::RemoveServiceResponse {}))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.admin(&req)?;
        self.linearize(req.get_ref().read.as_ref()).await?;
        let r = req.into_inner();
        let tasks = self.master.read(|s| -> Result<Vec<pb::Task>, Status> {
            let service = if r.service.is_empty() {
                None
            } else {
                Some(
                    find_service(s, &r.service, &r.project)
                        .ok_or_else(|| service_not_found(&r.service, &r.project))?,
                )
            };
            let node = if r.node.is_empty() {
                None
            } else {
                Some(
                    find_node(s, &r.node)
                        .ok_or_else(|| Status::not_found(format!("no node {:?}", r.node)))?,
                )
            };
            let keep = |t: &&pb::Task| {
                (r.include_history || is_active(t))
                    && node.is_none_or(|n| t.node_id == n.id)
                    && (r.project.is_empty()
                        || service.is_some()
                        || t.service_name.starts_with(&format!("{}_", r.project)))
            };
            Ok(match service {
                Some(svc) => s.tasks_of_service(&svc.id).filter(keep).cloned().collect(),
                None => s.tasks().filter(keep).cloned().collect(),
            })
        })?;
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.admin(&req)?;
        self.linearize(req.get_ref().read.as_ref()).await?;
        let nodes = self.master.read(|s| s.nodes().cloned().collect());
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.admin(&req)?;
        self.linearize(req.get_ref().read.as_ref()).await?;
        let r = req.into_inner();
        self.master
            .read(|s| find_node(s, &r.node).cloned())
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no node {:?}", r.node)))
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.admin(&req)?;
        forward!(self, req, update_node);
        let rid = request_id(&req);
        let r = req.into_inner();
        let (rev, id) = self
            .write(rid, |s| {
                let n = find_node(s, &r.node)
                    .ok_or_else(|| Status::not_found(format!("no node {:?}", r.node)))?;
                let mut node = n.clone();
                let spec = node.spec.get_or_insert_with(Default::default);
                if let Some(a) = r.availability {
                    spec.availability = a;
                }
                for (k, v) in &r.labels_add {
                    spec.labels.insert(k.clone(), v.clone());
                }
                for k in &r.labels_remove {
                    spec.labels.remove(k);
                }
                if node == *n {
                    return Ok((Vec::new(), n.id.clone()));
                }
                Ok((
                    vec![put(
                        pb::mutation::Op::PutNode(node),
                        version_of(n.meta.as_ref()),
                    )],
                    n.id.clone(),
                ))
            })
            .await?;
        self.read_after(rev).await;
        self.master
            .read(|s| s.node(&id).cloned())
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("node {id} was removed meanwhile")))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, remove_node);
        let rid = request_id(&req);
        let r = req.into_inner();
        self.write(rid, |s| {
            let n = find_node(s, &r.node).ok_or_else(|| Status::not_found(format!("no node {:?}", r.node)))?;
            if n.state == pb::NodeState::Ready as i32 && !r.force {
                return Err(Status::failed_precondition(format!(
                    "node {} is ready: drain it and stop its agent first, or remove it with --force",
                    n.id
                )));
            }
            let mut muts = vec![put(pb::mutation::Op::DeleteNode(n.id.clone()), version_of(n.meta.as_ref()))];
            // Its certificate stops working: the serial goes on the cluster's revocation list.
            if !n.cert_serial.is_empty()
                && let Some(c) = s.cluster() {
                    let mut c2 = c.clone();
                    if !c2.revoked_cert_serials.contains(&n.cert_serial) {
                        c2.revoked_cert_serials.push(n.cert_serial.clone());
                    }
                    muts.push(put(pb::mutation::Op::PutCluster(c2), version_of(c.meta.as_ref())));
                }
            Ok((muts, ()))
        })
        .await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        self.admin(&req)?;
        let p = req.into_inner().project;
        let networks = self.master.read(|s| {
            s.networks()
                .filter(|n| p.is_empty() || n.spec.as_ref().is_some_and(|sp| sp.project == p))
                .cloned()
                .collect()
        });
        Ok(Response::new(pb::ListNetworksResponse { networks }))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        self.admin(&req)?;
        let p = req.into_inner().project;
        let volumes = self.master.read(|s| {
            s.volumes()
                .filter(|v| p.is_empty() || v.spec.as_ref().is_some_and(|sp| sp.project == p))
                .cloned()
                .collect()
        });
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    async fn remove_volume(
        &self,
        req: Request<pb::RemoveVolumeRequest>,
    ) -> Result<Response<pb::RemoveVolumeResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, remove_volume);
        let rid = request_id(&req);
        let r = req.into_inner();
        self.write(rid, |s| {
            let v = s
                .volume(&r.name)
                .or_else(|| s.volume_by_name(&r.project, &r.name))
                .ok_or_else(|| {
                    Status::not_found(format!("no volume {:?} in project {:?}", r.name, r.project))
                })?;
            Ok((
                vec![put(
                    pb::mutation::Op::DeleteVolume(v.id.clone()),
                    version_of(v.meta.as_ref()),
                )],
                (),
            ))
        })
        .await?;
        Ok(Response::new(pb::RemoveVolumeResponse {}))
    }

    async fn cluster_info(
        &self,
        req: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        self.admin(&req)?;
        let st = self.master.raft().status();
        let leader = self.master.leader().borrow().clone();
        let masters = self.master.raft().masters().len() as u32;
        let info = self.master.read(|s| {
            let c = s.cluster().cloned().unwrap_or_default();
            pb::ClusterInfoResponse {
                cluster_id: c.id,
                settings: c.settings,
                leader_id: leader.id.map(|i| i.to_string()).unwrap_or_default(),
                leader_addr: leader.addr.clone().unwrap_or_default(),
                term: st.term,
                commit_index: st.applied_index,
                masters,
                nodes: s.nodes().count() as u32,
                version: self.version.to_owned(),
                ca_digest: c.ca_digest,
            }
        });
        Ok(Response::new(info))
    }

    async fn list_masters(
        &self,
        req: Request<pb::ListMastersRequest>,
    ) -> Result<Response<pb::ListMastersResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, list_masters);
        let matched = self.master.raft().matched();
        let me = self.master.raft_id();
        let masters = self
            .master
            .raft()
            .masters()
            .into_iter()
            .map(|(id, addr, voter)| pb::MasterInfo {
                id: id.to_string(),
                addr,
                leader: id == me,
                voter,
                matched_index: matched.get(&id).copied().unwrap_or(0),
                reachable: id == me || matched.get(&id).is_some_and(|m| *m > 0),
            })
            .collect();
        Ok(Response::new(pb::ListMastersResponse { masters }))
    }

    async fn remove_master(
        &self,
        req: Request<pb::RemoveMasterRequest>,
    ) -> Result<Response<pb::RemoveMasterResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, remove_master);
        let r = req.into_inner();
        let id: u64 = r.id.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "master id {:?} is not a number (see `skiffctl master ls`)",
                r.id
            ))
        })?;
        self.master
            .raft()
            .remove_master(id)
            .await
            .map_err(status::from_raft)?;
        Ok(Response::new(pb::RemoveMasterResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, transfer_leader);
        let r = req.into_inner();
        let me = self.master.raft_id();
        let to = if r.to.is_empty() {
            self.master
                .raft()
                .masters()
                .into_iter()
                .find(|(id, _, voter)| *voter && *id != me)
                .map(|(id, _, _)| id)
                .ok_or_else(|| {
                    Status::failed_precondition("there is no other voter to hand leadership to")
                })?
        } else {
            r.to.parse().map_err(|_| {
                Status::invalid_argument(format!("master id {:?} is not a number", r.to))
            })?
        };
        self.master
            .raft()
            .transfer_leader(to)
            .await
            .map_err(status::from_raft)?;
        let mut leader = self.master.leader();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            leader.wait_for(|l| l.id == Some(to)),
        )
        .await;
        let now = self.master.leader().borrow().id;
        Ok(Response::new(pb::TransferLeaderResponse {
            leader_id: now.map(|i| i.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.admin(&req)?;
        let c = self.master.read(|s| s.cluster().cloned()).ok_or_else(|| {
            Status::unavailable("the cluster object is not replicated to this master yet")
        })?;
        Ok(Response::new(pb::ListTokensResponse {
            worker: (self.token)(&c.ca_digest, &c.worker_token_secret),
            manager: (self.token)(&c.ca_digest, &c.manager_token_secret),
        }))
    }

    async fn rotate_token(
        &self,
        req: Request<pb::RotateTokenRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.admin(&req)?;
        forward!(self, req, rotate_token);
        let rid = request_id(&req);
        let r = req.into_inner();
        let (worker_secret, manager_secret) = (new_secret()?, new_secret()?);
        let (rev, ()) = self
            .write(rid, |s| {
                let c = s
                    .cluster()
                    .ok_or_else(|| Status::unavailable("no cluster object yet"))?;
                let mut c2 = c.clone();
                if r.worker {
                    c2.worker_token_secret = worker_secret.clone();
                }
                if r.manager {
                    c2.manager_token_secret = manager_secret.clone();
                }
                Ok((
                    vec![put(
                        pb::mutation::Op::PutCluster(c2),
                        version_of(c.meta.as_ref()),
                    )],
                    (),
                ))
            })
            .await?;
        self.read_after(rev).await;
        self.list_tokens(Request::new(pb::ListTokensRequest {}))
            .await
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        let kinds = r
            .kinds
            .iter()
            .filter_map(|k| pb::ObjectKind::try_from(*k).ok())
            .collect();
        let stream = self
            .master
            .watch(r.after_revision, kinds)
            .map_err(|e| status::from_watch(&e))?;
        Ok(Response::new(Box::pin(stream.map(|item| match item {
            Ok(e) => Ok((*e).clone()),
            Err(e) => Err(status::from_watch(&e)),
        }))))
    }

    type LogsStream = BoxStream<pb::LogLine>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.admin(&req)?;
        let rx = super::proxy::start_logs(&self.master, &self.agents, req.get_ref())?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type ExecStream = BoxStream<pb::ExecOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        self.admin(&req)?;
        let mut input = req.into_inner();
        let mut start = match input.message().await? {
            Some(pb::ExecInput {
                input: Some(pb::exec_input::Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an exec must be ExecStart",
                ));
            }
        };
        if start.command.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        let (task, node) = self
            .master
            .read(|s| super::proxy::resolve_task(s, &start.task, &start.project))?;
        start.task = task.id;
        let mut client = self.agents.client(&node)?;
        let first = pb::ExecInput {
            input: Some(pb::exec_input::Input::Start(start)),
        };
        let rest = input.take_while(|m| futures::future::ready(m.is_ok()));
        let outbound = futures::stream::once(futures::future::ready(first))
            .chain(rest.filter_map(|m| futures::future::ready(m.ok())));
        let output = client.task_exec(outbound).await?.into_inner();
        Ok(Response::new(Box::pin(output)))
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::NodeImagesResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.on_nodes(&r.node, super::images::Op::List).await
    }

    async fn pull_image(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<pb::NodeImagesResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.on_nodes(&r.node, super::images::Op::Pull(r.reference))
            .await
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::NodeImagesResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.on_nodes(&r.node, super::images::Op::Remove(r.reference))
            .await
    }

    type BackupStream = BoxStream<pb::BackupChunk>;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.admin(&req)?;
        // A backup includes every write acknowledged before it began.
        self.master
            .linearize()
            .await
            .map_err(|e| status::from_propose(&e))?;
        let (revision, data) = self.master.read(|s| (s.revision(), s.encode()));
        let chunks: Vec<Result<pb::BackupChunk, Status>> = data
            .chunks(1 << 20)
            .map(|c| {
                Ok(pb::BackupChunk {
                    data: c.to_vec(),
                    revision,
                })
            })
            .collect();
        let chunks = if chunks.is_empty() {
            vec![Ok(pb::BackupChunk {
                data: vec![],
                revision,
            })]
        } else {
            chunks
        };
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// A fresh join token secret, in the text form the store keeps.
pub fn new_secret() -> Result<String, Status> {
    skiff_pki::TokenSecret::generate()
        .map(|s| s.to_string())
        .map_err(|e| Status::internal(format!("generating a token secret: {e}")))
}
