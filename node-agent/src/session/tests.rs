//! The session against real gRPC servers on loopback playing the masters: a follower
//! that names the leader, and a leader that accepts, assigns and records what it gets.

use std::sync::{Arc, Mutex};

use skiff_proto::v1::dispatcher_server::{Dispatcher, DispatcherServer};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::*;

#[derive(Default)]
struct Seen {
    registers: Vec<pb::Register>,
    statuses: Vec<pb::TaskStatusUpdate>,
    heartbeats: usize,
    node_ids: Vec<String>,
}

#[derive(Clone)]
enum Role {
    Follower { leader: String },
    Leader { seen: Arc<Mutex<Seen>> },
}

#[tonic::async_trait]
impl Dispatcher for Role {
    type SessionStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::MasterMessage, Status>> + Send>,
    >;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let seen = match self {
            Role::Follower { leader } => {
                let mut status = Status::failed_precondition("not the leader");
                status
                    .metadata_mut()
                    .insert(LEADER_METADATA, leader.parse().expect("ascii address"));
                return Err(status);
            }
            Role::Leader { seen } => seen.clone(),
        };
        if let Some(id) = request.metadata().get(NODE_ID_METADATA) {
            let id = id.to_str().expect("ascii node id").to_owned();
            seen.lock().expect("lock").node_ids.push(id);
        }
        let mut up = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = up.next().await {
                let replies = {
                    let mut seen = seen.lock().expect("lock");
                    match msg.msg {
                        Some(pb::agent_message::Msg::Register(r)) => {
                            seen.registers.push(r);
                            vec![
                                pb::master_message::Msg::Accepted(pb::SessionAccepted {
                                    node_id: "node-1".into(),
                                    heartbeat_period_ms: 50,
                                    ..Default::default()
                                }),
                                pb::master_message::Msg::Assignments(pb::Assignments {
                                    revision: 7,
                                    tasks: vec![pb::Task {
                                        id: "t1".into(),
                                        ..Default::default()
                                    }],
                                    ..Default::default()
                                }),
                            ]
                        }
                        Some(pb::agent_message::Msg::Heartbeat(_)) => {
                            seen.heartbeats += 1;
                            Vec::new()
                        }
                        Some(pb::agent_message::Msg::Statuses(b)) => {
                            seen.statuses.extend(b.updates);
                            Vec::new()
                        }
                        None => Vec::new(),
                    }
                };
                for msg in replies {
                    let _ = tx.send(Ok(pb::MasterMessage { msg: Some(msg) })).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn serve(role: Role) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(role))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

fn config(masters: Vec<String>) -> SessionConfig {
    SessionConfig {
        masters,
        credentials: None,
        description: pb::NodeDescription {
            hostname: "a1".into(),
            ..Default::default()
        },
        heartbeat_period: Duration::from_millis(50),
        batch_max: 16,
        status_timing: StatusTiming::default(),
        insecure_node_id: Some("node-1".into()),
    }
}

/// Whether a status of `task` reached the fake master within `within` (checked every
/// 20 ms).
async fn delivered(seen: &Mutex<Seen>, task: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = seen
            .lock()
            .expect("lock")
            .statuses
            .iter()
            .any(|s| s.task_id == task);
        if got || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(task: &str, state: pb::TaskState) -> pb::TaskStatusUpdate {
    pb::TaskStatusUpdate {
        task_id: task.into(),
        status: Some(pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn follows_the_leader_registers_and_receives_assignments() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let leader = serve(Role::Leader { seen: seen.clone() }).await;
    let follower = serve(Role::Follower {
        leader: leader.clone(),
    })
    .await;

    let (ev_tx, mut ev_rx) = mpsc::channel(16);
    let (st_tx, st_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let running = || vec![status("kept", pb::TaskState::Running)];
    let task = tokio::spawn(run(
        config(vec![follower]),
        ev_tx,
        st_rx,
        running,
        shutdown.clone(),
    ));

    let mut connected_to = None;
    let mut assigned = None;
    while assigned.is_none() {
        match tokio::time::timeout(Duration::from_secs(5), ev_rx.recv()).await {
            Ok(Some(SessionEvent::Connected { master, .. })) => connected_to = Some(master),
            Ok(Some(SessionEvent::Assignments(a))) => assigned = Some(a),
            Ok(Some(_)) => {}
            other => panic!("no assignment: {other:?}"),
        }
    }
    assert_eq!(connected_to.as_deref(), Some(leader.as_str()));
    assert_eq!(assigned.map(|a| a.revision), Some(7));

    st_tx
        .send(status("t1", pb::TaskState::Running))
        .await
        .expect("send status");
    for _ in 0..100 {
        if !seen.lock().expect("lock").statuses.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.registers.len(), 1);
        assert_eq!(
            seen.node_ids,
            vec!["node-1"],
            "insecure sessions name the node"
        );
        assert_eq!(seen.registers[0].running[0].task_id, "kept");
        assert_eq!(
            seen.registers[0]
                .description
                .as_ref()
                .map(|d| d.hostname.as_str()),
            Some("a1")
        );
        assert_eq!(seen.statuses[0].task_id, "t1");
        assert!(seen.heartbeats >= 1 || seen.statuses.len() == 1);
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("session stops on shutdown")
        .expect("session task");
}

#[tokio::test]
async fn statuses_made_while_no_master_answers_are_sent_once_one_does() {
    // A free port nobody listens on yet: the first attempts fail to connect.
    let addr = std::net::SocketAddr::from((
        std::net::Ipv4Addr::LOCALHOST,
        skiff_daemon::test_ports::free_port(),
    ));

    let (ev_tx, mut ev_rx) = mpsc::channel(16);
    let (st_tx, st_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        config(vec![addr.to_string()]),
        ev_tx,
        st_rx,
        Vec::new,
        shutdown.clone(),
    ));
    match tokio::time::timeout(Duration::from_secs(5), ev_rx.recv()).await {
        Ok(Some(SessionEvent::Disconnected { reason })) => {
            assert!(reason.contains(&addr.to_string()), "{reason}")
        }
        other => panic!("expected a disconnect first: {other:?}"),
    }
    st_tx
        .send(status("t9", pb::TaskState::Failed))
        .await
        .expect("send");

    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let role = Role::Leader { seen: seen.clone() };
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(role))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    assert!(
        delivered(&seen, "t9", Duration::from_secs(6)).await,
        "the status made while disconnected must reach the master"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
}

#[tokio::test]
async fn a_lone_status_goes_up_once_no_other_follows_not_on_the_next_tick() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let leader = serve(Role::Leader { seen: seen.clone() }).await;
    let (ev_tx, mut ev_rx) = mpsc::channel(16);
    let (st_tx, st_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let mut cfg = config(vec![leader]);
    // A tick far beyond the wait below: only the quiet rule can send the status.
    cfg.status_timing = StatusTiming {
        quiet: Duration::from_millis(10),
        flush: Duration::from_secs(600),
    };
    let task = tokio::spawn(run(cfg, ev_tx, st_rx, Vec::new, shutdown.clone()));
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ev_rx.recv()).await {
            Ok(Some(SessionEvent::Assignments(_))) => break,
            Ok(Some(_)) => {}
            other => panic!("no session: {other:?}"),
        }
    }
    // The session's first tick fires as it opens; wait past it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    st_tx
        .send(status("t2", pb::TaskState::Running))
        .await
        .expect("send status");
    assert!(
        delivered(&seen, "t2", Duration::from_secs(5)).await,
        "a lone status must not wait for the 600 s tick"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
}
