//! `skiffctl logs` and `skiffctl exec` through the masters: find the task(s) in the
//! store, dial the agent API (`skiff.v1.Agent`) of the node that runs each, and relay.
//! Any master can do it (reads are local; the agents are reached directly), so these
//! calls are never forwarded to the leader.
//!
//! ```text
//!  skiffctl ─Logs{service}─► master ─ TaskLogs ─► agent of task 1 ─┐
//!                                   ─ TaskLogs ─► agent of task 2 ─┼─► merged LogLine*
//!          (follow: tasks that start later, e.g. a restarted replica, join the stream)
//!  skiffctl ═Exec═► master ═ TaskExec(start with the full task id, then stdin…) ═► agent
//! ```
//!
//! Masters dial agents with their own (manager) certificate and the TLS name
//! `<node id>.node.skiff`, which only that node's certificate carries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_proto::v1 as pb;
use skiff_proto::v1::agent_client::AgentClient;
use skiff_proto::{TaskStateExt, short_id};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::handle::MasterHandle;
use crate::store::StoreState;
use crate::tls::DialTls;

/// How long dialing an agent may take before the node counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Channels to agents' APIs, one per node, made lazily and kept (until the node's
/// address or this master's certificate changes).
pub struct AgentDialer {
    tls: DialTls,
    /// node id → (address, TLS generation, channel)
    channels: Mutex<HashMap<String, (String, u64, Channel)>>,
}

impl AgentDialer {
    /// `tls`: the master's client configuration (plain for `--insecure` clusters).
    pub fn new(tls: DialTls) -> Self {
        AgentDialer {
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for the agent API of `node`.
    pub fn client(&self, node: &pb::Node) -> Result<AgentClient<Channel>, Status> {
        let addr = node
            .description
            .as_ref()
            .map(|d| d.api_addr.clone())
            .unwrap_or_default();
        if addr.is_empty() {
            return Err(Status::failed_precondition(format!(
                "node {} does not advertise an agent API address",
                node_label(node)
            )));
        }
        let tls = self.tls.current();
        let generation = tls.as_ref().map_or(0, |(_, g)| *g);
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, made, channel)) = channels.get(&node.id)
            && *known == addr
            && *made == generation
        {
            return Ok(AgentClient::new(channel.clone()));
        }
        let bad = |e: &dyn std::fmt::Display| {
            Status::internal(format!(
                "agent API address {addr:?} of node {}: {e}",
                node_label(node)
            ))
        };
        let endpoint = match tls {
            Some((tls, _)) => {
                let tls = tls.domain_name(skiff_pki::node_server_name(&node.id));
                skiff_pki::endpoint(&addr, tls).map_err(|e| bad(&e))?
            }
            None => Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| bad(&e))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true),
        };
        let channel = endpoint.connect_lazy();
        channels.insert(node.id.clone(), (addr, generation, channel.clone()));
        Ok(AgentClient::new(channel))
    }
}

/// "hostname (id)" for messages.
fn node_label(node: &pb::Node) -> String {
    match node.description.as_ref().map(|d| d.hostname.as_str()) {
        Some(h) if !h.is_empty() => format!("{h} ({})", short_id(&node.id)),
        _ => node.id.clone(),
    }
}

/// Swarm's task name: `<service>.<slot>`, or `<service>.<node id>` for global tasks.
pub fn task_name(t: &pb::Task) -> String {
    if t.slot > 0 {
        format!("{}.{}", t.service_name, t.slot)
    } else {
        format!("{}.{}", t.service_name, t.node_id)
    }
}

/// Whether a task got as far as having a container on its node.
fn has_container(t: &pb::Task) -> bool {
    !t.node_id.is_empty()
        && t.status
            .as_ref()
            .is_some_and(|s| s.state() >= pb::TaskState::Starting)
}

/// The task `query` names, for exec: a task id, its short id, `<service>.<slot>`, or a
/// service (its first running task). It must be running.
pub fn resolve_task(
    s: &StoreState,
    query: &str,
    project: &str,
) -> Result<(pb::Task, pb::Node), Status> {
    let by_name = |t: &&pb::Task| {
        let name = task_name(t);
        name == query || (!project.is_empty() && name == format!("{project}_{query}"))
    };
    let task = s
        .task(query)
        .or_else(|| s.tasks().find(|t| short_id(&t.id) == query))
        .or_else(|| {
            s.tasks()
                .filter(|t| t.desired_state() == pb::TaskState::Running)
                .find(by_name)
        })
        .or_else(|| {
            let svc = super::cluster::find_service(s, query, project)?;
            let mut running: Vec<&pb::Task> = s
                .tasks_of_service(&svc.id)
                .filter(|t| is_running(t))
                .collect();
            running.sort_by_key(|t| (t.slot, t.node_id.clone()));
            running.first().copied()
        })
        .ok_or_else(|| {
            Status::not_found(format!(
                "no task or service {query:?}{} (give a task id, <service>.<slot> or a service)",
                if project.is_empty() {
                    String::new()
                } else {
                    format!(" in project {project:?}")
                }
            ))
        })?;
    if !is_running(task) {
        return Err(Status::failed_precondition(format!(
            "task {} is {}, not running",
            task_name(task),
            task.status
                .as_ref()
                .map(|st| st.state().label())
                .unwrap_or("new")
        )));
    }
    let node = s.node(&task.node_id).ok_or_else(|| {
        Status::failed_precondition(format!(
            "task {} is on node {}, which is no longer in the cluster",
            task_name(task),
            task.node_id
        ))
    })?;
    Ok((task.clone(), node.clone()))
}

fn is_running(t: &pb::Task) -> bool {
    t.status
        .as_ref()
        .is_some_and(|s| s.state() == pb::TaskState::Running)
}

/// The tasks whose logs `query` asks for, with their nodes: every task of a service
/// that had a container (history included, as `docker service logs` does), or one task.
pub fn log_tasks(
    s: &StoreState,
    query: &str,
    project: &str,
) -> Result<Vec<(pb::Task, pb::Node)>, Status> {
    let with_node = |t: &pb::Task| s.node(&t.node_id).map(|n| (t.clone(), n.clone()));
    if let Some(svc) = super::cluster::find_service(s, query, project) {
        let mut tasks: Vec<(pb::Task, pb::Node)> = s
            .tasks_of_service(&svc.id)
            .filter(|t| has_container(t))
            .filter_map(with_node)
            .collect();
        tasks.sort_by_key(|(t, _)| (t.slot, t.id.clone()));
        return Ok(tasks);
    }
    let task = s
        .task(query)
        .or_else(|| s.tasks().find(|t| short_id(&t.id) == query))
        .or_else(|| s.tasks().find(|t| task_name(t) == query))
        .ok_or_else(|| Status::not_found(format!("no service or task {query:?}")))?;
    Ok(with_node(task).into_iter().collect())
}

/// The service id whose new tasks a `logs --follow` should pick up, if it is one.
fn followed_service(s: &StoreState, query: &str, project: &str) -> Option<String> {
    super::cluster::find_service(s, query, project).map(|svc| svc.id.clone())
}

/// Starts relaying the logs `r` asks for into a channel; the caller streams its
/// receiver. Non-following: every task's lines, then the stream ends, ordered by time.
/// Following: one relay per task, plus a watcher that adds tasks that start later; all
/// stop when the client goes away.
pub fn start_logs(
    master: &MasterHandle,
    agents: &Arc<AgentDialer>,
    r: &pb::LogsRequest,
) -> Result<mpsc::Receiver<Result<pb::LogLine, Status>>, Status> {
    let tasks = master.read(|s| log_tasks(s, &r.service, &r.project))?;
    let (tx, rx) = mpsc::channel(256);
    let request = |task: &pb::Task, follow: bool| pb::TaskLogsRequest {
        task_id: task.id.clone(),
        follow,
        since_ms: r.since_ms,
        tail: r.tail,
    };
    if !r.follow {
        let agents = agents.clone();
        let requests: Vec<_> = tasks
            .into_iter()
            .map(|(t, n)| (request(&t, false), t, n))
            .collect();
        tokio::spawn(async move {
            let mut lines = Vec::new();
            for (req, task, node) in requests {
                collect(&agents, &task, &node, req, &mut lines).await;
            }
            lines.sort_by_key(|l: &pb::LogLine| l.timestamp_ms);
            for line in lines {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        });
        return Ok(rx);
    }
    let service = master.read(|s| followed_service(s, &r.service, &r.project));
    let mut started: HashSet<String> = HashSet::new();
    for (task, node) in tasks {
        started.insert(task.id.clone());
        relay(
            agents.clone(),
            task.clone(),
            node,
            request(&task, true),
            tx.clone(),
        );
    }
    if let Some(service_id) = service {
        let master = master.clone();
        let agents = agents.clone();
        let since_ms = r.since_ms;
        tokio::spawn(async move {
            let mut revisions = master.revisions();
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = revisions.changed() => if changed.is_err() { return },
                }
                let fresh: Vec<(pb::Task, pb::Node)> = master.read(|s| {
                    s.tasks_of_service(&service_id)
                        .filter(|t| has_container(t) && !started.contains(&t.id))
                        .filter_map(|t| s.node(&t.node_id).map(|n| (t.clone(), n.clone())))
                        .collect()
                });
                for (task, node) in fresh {
                    started.insert(task.id.clone());
                    let req = pb::TaskLogsRequest {
                        task_id: task.id.clone(),
                        follow: true,
                        since_ms,
                        tail: 0,
                    };
                    relay(agents.clone(), task, node, req, tx.clone());
                }
            }
        });
    }
    Ok(rx)
}

/// Reads one task's lines to the end into `lines` (an unreachable node becomes one
/// stderr line saying so).
async fn collect(
    agents: &AgentDialer,
    task: &pb::Task,
    node: &pb::Node,
    req: pb::TaskLogsRequest,
    lines: &mut Vec<pb::LogLine>,
) {
    let opened = match agents.client(node) {
        Ok(mut client) => client.task_logs(req).await.map(tonic::Response::into_inner),
        Err(status) => Err(status),
    };
    match opened {
        Ok(mut stream) => loop {
            match stream.message().await {
                Ok(Some(line)) => lines.push(label(line, task)),
                Ok(None) => break,
                Err(status) => {
                    lines.push(unavailable(task, node, &status));
                    break;
                }
            }
        },
        Err(status) => lines.push(unavailable(task, node, &status)),
    }
}

/// Forwards one task's lines until its stream ends or the client goes away.
fn relay(
    agents: Arc<AgentDialer>,
    task: pb::Task,
    node: pb::Node,
    req: pb::TaskLogsRequest,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
) {
    tokio::spawn(async move {
        let opened = match agents.client(&node) {
            Ok(mut client) => client.task_logs(req).await.map(tonic::Response::into_inner),
            Err(status) => Err(status),
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(status) => {
                let _ = tx.send(Ok(unavailable(&task, &node, &status))).await;
                return;
            }
        };
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                next = stream.message() => match next {
                    Ok(Some(line)) => {
                        if tx.send(Ok(label(line, &task))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Ok(unavailable(&task, &node, &status))).await;
                        return;
                    }
                },
            }
        }
    });
}

/// Fills in what the agent may not know any more (a task no longer assigned to it).
fn label(mut line: pb::LogLine, task: &pb::Task) -> pb::LogLine {
    if line.task_id.is_empty() {
        line.task_id = task.id.clone();
    }
    if line.task_name.is_empty() {
        line.task_name = task_name(task);
    }
    if line.node_id.is_empty() {
        line.node_id = task.node_id.clone();
    }
    line
}

fn unavailable(task: &pb::Task, node: &pb::Node, status: &Status) -> pb::LogLine {
    pb::LogLine {
        task_id: task.id.clone(),
        task_name: task_name(task),
        node_id: task.node_id.clone(),
        stream: "stderr".into(),
        timestamp_ms: 0,
        line: format!(
            "skiff: logs of this task on node {} are unavailable: {}\n",
            node_label(node),
            status.message()
        )
        .into_bytes(),
    }
}
