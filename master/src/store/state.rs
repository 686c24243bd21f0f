//! The store's contents at one revision: every object by id, the indexes controllers
//! look things up by, and the answers to recent request ids. Only `commit` and
//! `restore` change it, and they keep the indexes in step with the maps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prost::Message;
use skiff_proto::v1 as pb;

use super::apply::ApplyError;
use super::object::{Kind, Object};

/// How many request ids the store remembers (oldest forgotten first). A client retries
/// within seconds; this covers far more than that at any write rate we reach.
pub const REMEMBERED_REQUESTS: usize = 100_000;

/// The answer a command with a request id got.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub revision: u64,
    pub result: Result<(), ApplyError>,
}

/// Everything the store holds.
#[derive(Clone, Debug, Default)]
pub struct StoreState {
    revision: u64,
    nodes: BTreeMap<String, pb::Node>,
    services: BTreeMap<String, pb::Service>,
    tasks: BTreeMap<String, pb::Task>,
    networks: BTreeMap<String, pb::Network>,
    volumes: BTreeMap<String, pb::Volume>,
    cluster: Option<pb::Cluster>,
    // Indexes.
    tasks_by_service: BTreeMap<String, BTreeSet<String>>,
    tasks_by_node: BTreeMap<String, BTreeSet<String>>,
    services_by_name: BTreeMap<(String, String), String>,
    networks_by_name: BTreeMap<(String, String), String>,
    volumes_by_name: BTreeMap<(String, String), String>,
    nodes_by_hostname: BTreeMap<String, BTreeSet<String>>,
    // Request-id dedupe, oldest first.
    answers: BTreeMap<String, Answer>,
    answer_order: VecDeque<String>,
}

/// A snapshot that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("store snapshot is not a valid StoreSnapshot message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("answer to request {request_id} in the snapshot is not a valid apply error: {err}")]
    Answer {
        request_id: String,
        err: postcard::Error,
    },
}

fn key(project: &str, name: &str) -> (String, String) {
    (project.to_owned(), name.to_owned())
}

impl StoreState {
    /// The raft index of the last command applied (the watch revision).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn nodes(&self) -> impl Iterator<Item = &pb::Node> {
        self.nodes.values()
    }
    pub fn services(&self) -> impl Iterator<Item = &pb::Service> {
        self.services.values()
    }
    pub fn tasks(&self) -> impl Iterator<Item = &pb::Task> {
        self.tasks.values()
    }
    pub fn networks(&self) -> impl Iterator<Item = &pb::Network> {
        self.networks.values()
    }
    pub fn volumes(&self) -> impl Iterator<Item = &pb::Volume> {
        self.volumes.values()
    }
    pub fn cluster(&self) -> Option<&pb::Cluster> {
        self.cluster.as_ref()
    }

    pub fn node(&self, id: &str) -> Option<&pb::Node> {
        self.nodes.get(id)
    }
    pub fn service(&self, id: &str) -> Option<&pb::Service> {
        self.services.get(id)
    }
    pub fn task(&self, id: &str) -> Option<&pb::Task> {
        self.tasks.get(id)
    }
    pub fn network(&self, id: &str) -> Option<&pb::Network> {
        self.networks.get(id)
    }
    pub fn volume(&self, id: &str) -> Option<&pb::Volume> {
        self.volumes.get(id)
    }

    /// Tasks of one service, by task id.
    pub fn tasks_of_service<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a pb::Task> {
        self.tasks_by_service
            .get(service_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    /// Tasks placed on one node, by task id.
    pub fn tasks_on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a pb::Task> {
        self.tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    /// A service by project and name inside the project.
    pub fn service_by_name(&self, project: &str, name: &str) -> Option<&pb::Service> {
        self.services_by_name
            .get(&key(project, name))
            .and_then(|id| self.services.get(id))
    }

    /// Services of one project.
    pub fn services_of_project<'a>(
        &'a self,
        project: &'a str,
    ) -> impl Iterator<Item = &'a pb::Service> {
        self.services_by_name
            .range(key(project, "")..)
            .take_while(move |((p, _), _)| p == project)
            .filter_map(|(_, id)| self.services.get(id))
    }

    pub fn network_by_name(&self, project: &str, name: &str) -> Option<&pb::Network> {
        self.networks_by_name
            .get(&key(project, name))
            .and_then(|id| self.networks.get(id))
    }

    pub fn volume_by_name(&self, project: &str, name: &str) -> Option<&pb::Volume> {
        self.volumes_by_name
            .get(&key(project, name))
            .and_then(|id| self.volumes.get(id))
    }

    /// Nodes reporting this hostname (more than one after a machine re-joined).
    pub fn nodes_by_hostname<'a>(&'a self, hostname: &str) -> impl Iterator<Item = &'a pb::Node> {
        self.nodes_by_hostname
            .get(hostname)
            .into_iter()
            .flatten()
            .filter_map(|id| self.nodes.get(id))
    }

    /// The answer recorded for a request id, if it is still remembered.
    pub fn answer(&self, request_id: &str) -> Option<&Answer> {
        self.answers.get(request_id)
    }

    /// The stored object of `kind` with `id` (the cluster ignores `id`).
    pub fn get(&self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Node => self.nodes.get(id).cloned().map(Object::Node),
            Kind::Service => self.services.get(id).cloned().map(Object::Service),
            Kind::Task => self.tasks.get(id).cloned().map(Object::Task),
            Kind::Network => self.networks.get(id).cloned().map(Object::Network),
            Kind::Volume => self.volumes.get(id).cloned().map(Object::Volume),
            Kind::Cluster => self.cluster.clone().map(Object::Cluster),
        }
    }

    /// The version of the stored object (0 when absent).
    pub fn version_of(&self, kind: Kind, id: &str) -> u64 {
        self.meta_of(kind, id).flatten().map_or(0, |m| m.version)
    }

    /// The stored object's meta, without copying the object: `None` when it is absent,
    /// `Some(None)` when it is stored without one.
    pub fn meta_of(&self, kind: Kind, id: &str) -> Option<Option<&pb::Meta>> {
        match kind {
            Kind::Node => self.nodes.get(id).map(|o| o.meta.as_ref()),
            Kind::Service => self.services.get(id).map(|o| o.meta.as_ref()),
            Kind::Task => self.tasks.get(id).map(|o| o.meta.as_ref()),
            Kind::Network => self.networks.get(id).map(|o| o.meta.as_ref()),
            Kind::Volume => self.volumes.get(id).map(|o| o.meta.as_ref()),
            Kind::Cluster => self.cluster.as_ref().map(|o| o.meta.as_ref()),
        }
    }

    /// Moves the revision forward (every log entry does, even one that changed nothing).
    pub(crate) fn set_revision(&mut self, revision: u64) {
        self.revision = self.revision.max(revision);
    }

    /// Stores `object`, replacing the one with its id, and updates the indexes.
    pub(crate) fn put(&mut self, object: Object) {
        match object {
            Object::Node(n) => {
                if let Some(old) = self.nodes.get(&n.id) {
                    let host = hostname(old).to_owned();
                    remove_from(&mut self.nodes_by_hostname, &host, &n.id);
                }
                self.nodes_by_hostname
                    .entry(hostname(&n).to_owned())
                    .or_default()
                    .insert(n.id.clone());
                self.nodes.insert(n.id.clone(), n);
            }
            Object::Service(s) => {
                if let Some(old) = self.services.get(&s.id) {
                    let k = service_key(old);
                    self.services_by_name.remove(&k);
                }
                self.services_by_name.insert(service_key(&s), s.id.clone());
                self.services.insert(s.id.clone(), s);
            }
            Object::Task(t) => {
                if let Some(old) = self.tasks.get(&t.id) {
                    let (svc, node) = (old.service_id.clone(), old.node_id.clone());
                    remove_from(&mut self.tasks_by_service, &svc, &t.id);
                    remove_from(&mut self.tasks_by_node, &node, &t.id);
                }
                self.tasks_by_service
                    .entry(t.service_id.clone())
                    .or_default()
                    .insert(t.id.clone());
                if !t.node_id.is_empty() {
                    self.tasks_by_node
                        .entry(t.node_id.clone())
                        .or_default()
                        .insert(t.id.clone());
                }
                self.tasks.insert(t.id.clone(), t);
            }
            Object::Network(n) => {
                if let Some(old) = self.networks.get(&n.id) {
                    let k = spec_key(old.spec.as_ref().map(|s| (&s.project, &s.name)));
                    self.networks_by_name.remove(&k);
                }
                let k = spec_key(n.spec.as_ref().map(|s| (&s.project, &s.name)));
                self.networks_by_name.insert(k, n.id.clone());
                self.networks.insert(n.id.clone(), n);
            }
            Object::Volume(v) => {
                if let Some(old) = self.volumes.get(&v.id) {
                    let k = spec_key(old.spec.as_ref().map(|s| (&s.project, &s.name)));
                    self.volumes_by_name.remove(&k);
                }
                let k = spec_key(v.spec.as_ref().map(|s| (&s.project, &s.name)));
                self.volumes_by_name.insert(k, v.id.clone());
                self.volumes.insert(v.id.clone(), v);
            }
            Object::Cluster(c) => self.cluster = Some(c),
        }
    }

    /// Removes the object and its index entries; returns what was stored.
    pub(crate) fn delete(&mut self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Node => {
                let n = self.nodes.remove(id)?;
                remove_from(&mut self.nodes_by_hostname, hostname(&n), id);
                Some(Object::Node(n))
            }
            Kind::Service => {
                let s = self.services.remove(id)?;
                self.services_by_name.remove(&service_key(&s));
                Some(Object::Service(s))
            }
            Kind::Task => {
                let t = self.tasks.remove(id)?;
                remove_from(&mut self.tasks_by_service, &t.service_id, id);
                remove_from(&mut self.tasks_by_node, &t.node_id, id);
                Some(Object::Task(t))
            }
            Kind::Network => {
                let n = self.networks.remove(id)?;
                let k = spec_key(n.spec.as_ref().map(|s| (&s.project, &s.name)));
                self.networks_by_name.remove(&k);
                Some(Object::Network(n))
            }
            Kind::Volume => {
                let v = self.volumes.remove(id)?;
                let k = spec_key(v.spec.as_ref().map(|s| (&s.project, &s.name)));
                self.volumes_by_name.remove(&k);
                Some(Object::Volume(v))
            }
            Kind::Cluster => self.cluster.take().map(Object::Cluster),
        }
    }

    /// Remembers the answer to a request id, forgetting the oldest past the limit.
    pub(crate) fn remember(&mut self, request_id: &str, answer: Answer) {
        if request_id.is_empty() {
            return;
        }
        if self.answers.insert(request_id.to_owned(), answer).is_none() {
            self.answer_order.push_back(request_id.to_owned());
        }
        while self.answer_order.len() > REMEMBERED_REQUESTS {
            if let Some(old) = self.answer_order.pop_front() {
                self.answers.remove(&old);
            }
        }
    }

    /// The whole store as one message (raft snapshot, backup).
    pub fn to_snapshot(&self) -> pb::StoreSnapshot {
        pb::StoreSnapshot {
            revision: self.revision,
            nodes: self.nodes.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            tasks: self.tasks.values().cloned().collect(),
            networks: self.networks.values().cloned().collect(),
            volumes: self.volumes.values().cloned().collect(),
            cluster: self.cluster.clone(),
            requests: self
                .answer_order
                .iter()
                .filter_map(|id| {
                    let a = self.answers.get(id)?;
                    Some(pb::AppliedRequest {
                        request_id: id.clone(),
                        revision: a.revision,
                        error: match &a.result {
                            Ok(()) => Vec::new(),
                            Err(e) => postcard::to_stdvec(e).unwrap_or_default(),
                        },
                    })
                })
                .collect(),
        }
    }

    /// The snapshot, prost-encoded.
    pub fn encode(&self) -> Vec<u8> {
        self.to_snapshot().encode_to_vec()
    }

    /// Rebuilds a store (indexes included) from a snapshot message.
    pub fn from_snapshot(snap: pb::StoreSnapshot) -> Result<Self, RestoreError> {
        let mut state = StoreState {
            revision: snap.revision,
            ..StoreState::default()
        };
        for n in snap.nodes {
            state.put(Object::Node(n));
        }
        for s in snap.services {
            state.put(Object::Service(s));
        }
        for t in snap.tasks {
            state.put(Object::Task(t));
        }
        for n in snap.networks {
            state.put(Object::Network(n));
        }
        for v in snap.volumes {
            state.put(Object::Volume(v));
        }
        if let Some(c) = snap.cluster {
            state.put(Object::Cluster(c));
        }
        for r in snap.requests {
            let result = if r.error.is_empty() {
                Ok(())
            } else {
                Err(
                    postcard::from_bytes(&r.error).map_err(|err| RestoreError::Answer {
                        request_id: r.request_id.clone(),
                        err,
                    })?,
                )
            };
            state.remember(
                &r.request_id,
                Answer {
                    revision: r.revision,
                    result,
                },
            );
        }
        Ok(state)
    }

    /// Decodes a prost-encoded snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self, RestoreError> {
        Self::from_snapshot(pb::StoreSnapshot::decode(bytes)?)
    }
}

/// A node's hostname as it registered ("" before it did).
pub fn hostname(n: &pb::Node) -> &str {
    n.description.as_ref().map_or("", |d| d.hostname.as_str())
}

fn service_key(s: &pb::Service) -> (String, String) {
    spec_key(s.spec.as_ref().map(|s| (&s.project, &s.name)))
}

fn spec_key(pn: Option<(&String, &String)>) -> (String, String) {
    pn.map(|(p, n)| (p.clone(), n.clone())).unwrap_or_default()
}

fn remove_from(index: &mut BTreeMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}
