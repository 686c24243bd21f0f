//! The six kinds of stored object behind one trait, so the store's maps, its
//! compare-and-swap and its watch events are written once instead of six times.

use skiff_proto::v1 as pb;

/// Which kind of object; the name is what errors and logs print.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    Node,
    Service,
    Task,
    Network,
    Volume,
    Cluster,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Cluster => "cluster",
        })
    }
}

impl Kind {
    /// The wire enum for this kind.
    pub fn to_pb(self) -> pb::ObjectKind {
        match self {
            Kind::Node => pb::ObjectKind::Node,
            Kind::Service => pb::ObjectKind::Service,
            Kind::Task => pb::ObjectKind::Task,
            Kind::Network => pb::ObjectKind::Network,
            Kind::Volume => pb::ObjectKind::Volume,
            Kind::Cluster => pb::ObjectKind::Cluster,
        }
    }
}

/// One stored object of any kind.
#[allow(clippy::large_enum_variant)] // short-lived, moved once into the store
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Node(pb::Node),
    Service(pb::Service),
    Task(pb::Task),
    Network(pb::Network),
    Volume(pb::Volume),
    Cluster(pb::Cluster),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Network(_) => Kind::Network,
            Object::Volume(_) => Kind::Volume,
            Object::Cluster(_) => Kind::Cluster,
        }
    }

    /// The object's id. The cluster object is a singleton: its id is whatever it
    /// carries (the cluster id), but it is stored under one slot.
    pub fn id(&self) -> &str {
        match self {
            Object::Node(o) => &o.id,
            Object::Service(o) => &o.id,
            Object::Task(o) => &o.id,
            Object::Network(o) => &o.id,
            Object::Volume(o) => &o.id,
            Object::Cluster(o) => &o.id,
        }
    }

    pub fn meta(&self) -> Option<&pb::Meta> {
        match self {
            Object::Node(o) => o.meta.as_ref(),
            Object::Service(o) => o.meta.as_ref(),
            Object::Task(o) => o.meta.as_ref(),
            Object::Network(o) => o.meta.as_ref(),
            Object::Volume(o) => o.meta.as_ref(),
            Object::Cluster(o) => o.meta.as_ref(),
        }
    }

    pub fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.version)
    }

    pub fn set_meta(&mut self, meta: pb::Meta) {
        let slot = match self {
            Object::Node(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut o.meta,
            Object::Network(o) => &mut o.meta,
            Object::Volume(o) => &mut o.meta,
            Object::Cluster(o) => &mut o.meta,
        };
        *slot = Some(meta);
    }

    /// The object as a watch event's payload.
    pub fn into_event(self, revision: u64, action: pb::watch_event::Action) -> pb::WatchEvent {
        use pb::watch_event::Object as W;
        let object = match self {
            Object::Node(o) => W::Node(o),
            Object::Service(o) => W::Service(o),
            Object::Task(o) => W::Task(o),
            Object::Network(o) => W::Network(o),
            Object::Volume(o) => W::Volume(o),
            Object::Cluster(o) => W::Cluster(o),
        };
        pb::WatchEvent {
            revision,
            action: action as i32,
            object: Some(object),
        }
    }
}

/// What one mutation asks for, decoded.
#[allow(clippy::large_enum_variant)] // short-lived
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Put(Object),
    Delete(Kind, String),
}

impl Op {
    /// Decodes a mutation's `op`; `None` when the mutation carries none.
    pub fn from_pb(op: &pb::mutation::Op) -> Op {
        use pb::mutation::Op as M;
        match op {
            M::PutNode(o) => Op::Put(Object::Node(o.clone())),
            M::PutService(o) => Op::Put(Object::Service(o.clone())),
            M::PutTask(o) => Op::Put(Object::Task(o.clone())),
            M::PutNetwork(o) => Op::Put(Object::Network(o.clone())),
            M::PutVolume(o) => Op::Put(Object::Volume(o.clone())),
            M::PutCluster(o) => Op::Put(Object::Cluster(o.clone())),
            M::DeleteNode(id) => Op::Delete(Kind::Node, id.clone()),
            M::DeleteService(id) => Op::Delete(Kind::Service, id.clone()),
            M::DeleteTask(id) => Op::Delete(Kind::Task, id.clone()),
            M::DeleteNetwork(id) => Op::Delete(Kind::Network, id.clone()),
            M::DeleteVolume(id) => Op::Delete(Kind::Volume, id.clone()),
        }
    }
}
