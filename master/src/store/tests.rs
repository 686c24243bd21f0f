//! Store tests: compare-and-swap, all-or-none, dedupe, indexes, snapshots and watch.

use futures::StreamExt;
use skiff_proto::v1 as pb;

use super::apply::{ApplyError, execute};
use super::*;

fn put(op: pb::mutation::Op, expected: u64) -> pb::Mutation {
    pb::Mutation {
        op: Some(op),
        expected_version: expected,
        unconditional: false,
    }
}

fn cmd(mutations: Vec<pb::Mutation>, request_id: &str) -> pb::Command {
    pb::Command {
        mutations,
        request_id: request_id.into(),
    }
}

fn service(id: &str, project: &str, name: &str) -> pb::Service {
    pb::Service {
        id: id.into(),
        spec: Some(pb::ServiceSpec {
            name: name.into(),
            project: project.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, service: &str, node: &str) -> pb::Task {
    pb::Task {
        id: id.into(),
        service_id: service.into(),
        node_id: node.into(),
        ..Default::default()
    }
}

fn node(id: &str, host: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        description: Some(pb::NodeDescription {
            hostname: host.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

use pb::mutation::Op;

#[test]
fn a_put_sets_meta_from_the_index_and_the_proposer_clock() {
    let mut s = StoreState::default();
    let e = execute(
        &mut s,
        &cmd(vec![put(Op::PutService(service("s1", "p", "web")), 0)], ""),
        7,
        1000,
    );
    assert_eq!(e.answer.result, Ok(()));
    let meta = s.service("s1").and_then(|s| s.meta).expect("meta");
    assert_eq!(
        (meta.version, meta.created_at_ms, meta.updated_at_ms),
        (7, 1000, 1000)
    );
    let e = execute(
        &mut s,
        &cmd(vec![put(Op::PutService(service("s1", "p", "web")), 7)], ""),
        9,
        2000,
    );
    assert_eq!(e.answer.result, Ok(()));
    let meta = s.service("s1").and_then(|s| s.meta).expect("meta");
    assert_eq!(
        (meta.version, meta.created_at_ms, meta.updated_at_ms),
        (9, 1000, 2000)
    );
    assert_eq!(s.revision(), 9);
}

#[test]
fn a_stale_version_is_refused_and_nothing_of_the_command_applies() {
    let mut s = StoreState::default();
    execute(
        &mut s,
        &cmd(vec![put(Op::PutService(service("s1", "p", "web")), 0)], ""),
        1,
        0,
    );
    let before = s.encode();
    let e = execute(
        &mut s,
        &cmd(
            vec![
                put(Op::PutTask(task("t1", "s1", "n1")), 0),
                put(Op::PutService(service("s1", "p", "web2")), 0), // exists at 1
            ],
            "",
        ),
        2,
        0,
    );
    assert_eq!(
        e.answer.result,
        Err(ApplyError::Conflict {
            kind: Kind::Service,
            id: "s1".into(),
            expected: 0,
            found: 1
        })
    );
    assert!(e.events.is_empty());
    assert!(s.task("t1").is_none(), "first mutation must not apply");
    // Only the revision moved.
    let mut after = StoreState::decode(&s.encode()).expect("decode");
    after.set_revision(1);
    let mut b = StoreState::decode(&before).expect("decode");
    b.set_revision(1);
    assert_eq!(b.to_snapshot().services, after.to_snapshot().services);
    assert_eq!(s.revision(), 2);
}

#[test]
fn unconditional_writes_and_deletes_skip_the_check() {
    let mut s = StoreState::default();
    execute(
        &mut s,
        &cmd(vec![put(Op::PutNode(node("n1", "a")), 0)], ""),
        1,
        0,
    );
    let mut m = put(Op::PutNode(node("n1", "b")), 0);
    m.unconditional = true;
    assert_eq!(
        execute(&mut s, &cmd(vec![m], ""), 2, 0).answer.result,
        Ok(())
    );
    let mut d = put(Op::DeleteNode("n1".into()), 0);
    d.unconditional = true;
    let e = execute(&mut s, &cmd(vec![d.clone()], ""), 3, 0);
    assert_eq!(e.events.len(), 1);
    assert_eq!(e.events[0].action, pb::watch_event::Action::Delete as i32);
    assert!(s.node("n1").is_none());
    // Deleting what is gone, unconditionally: nothing happens, no event.
    let e = execute(&mut s, &cmd(vec![d], ""), 4, 0);
    assert_eq!(e.answer.result, Ok(()));
    assert!(e.events.is_empty());
    // A checked delete of a missing object is a conflict.
    let e = execute(
        &mut s,
        &cmd(vec![put(Op::DeleteNode("n1".into()), 3)], ""),
        5,
        0,
    );
    assert!(matches!(
        e.answer.result,
        Err(ApplyError::Conflict { found: 0, .. })
    ));
}

#[test]
fn a_retried_request_is_answered_with_its_first_result_and_not_applied_again() {
    let mut s = StoreState::default();
    let c = cmd(
        vec![put(Op::PutService(service("s1", "p", "web")), 0)],
        "req-1",
    );
    let first = execute(&mut s, &c, 3, 0);
    assert_eq!(first.answer.result, Ok(()));
    // The retry computed a different command (CAS on the new version) with the same id.
    let retry = cmd(
        vec![put(Op::PutService(service("s1", "p", "web-x")), 3)],
        "req-1",
    );
    let second = execute(&mut s, &retry, 4, 0);
    assert!(second.duplicate);
    assert_eq!(second.answer, first.answer);
    assert!(second.events.is_empty());
    assert_eq!(
        s.service("s1").and_then(|x| x.spec.clone()).map(|x| x.name),
        Some("web".into())
    );
    // Failures are remembered too.
    let bad = cmd(
        vec![put(Op::PutService(service("s1", "p", "web")), 0)],
        "req-2",
    );
    let f1 = execute(&mut s, &bad, 5, 0);
    assert!(f1.answer.result.is_err());
    let f2 = execute(
        &mut s,
        &cmd(
            vec![put(Op::PutService(service("s1", "p", "w")), 3)],
            "req-2",
        ),
        6,
        0,
    );
    // A refusal is not remembered: the writer re-reads and retries with the same id.
    assert_eq!(f2.answer.result, Ok(()));
    assert!(!f2.duplicate);
}

#[test]
fn indexes_follow_puts_moves_and_deletes() {
    let mut s = StoreState::default();
    execute(
        &mut s,
        &cmd(
            vec![
                put(Op::PutService(service("s1", "p", "web")), 0),
                put(Op::PutService(service("s2", "q", "db")), 0),
                put(Op::PutTask(task("t1", "s1", "n1")), 0),
                put(Op::PutTask(task("t2", "s1", "")), 0),
                put(Op::PutNode(node("n1", "host-a")), 0),
            ],
            "",
        ),
        1,
        0,
    );
    let ids = |it: Vec<&pb::Task>| it.into_iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(s.tasks_of_service("s1").collect()), vec!["t1", "t2"]);
    assert_eq!(ids(s.tasks_on_node("n1").collect()), vec!["t1"]);
    assert_eq!(
        s.service_by_name("p", "web").map(|x| x.id.clone()),
        Some("s1".into())
    );
    assert_eq!(s.services_of_project("q").count(), 1);
    assert_eq!(s.nodes_by_hostname("host-a").count(), 1);
    // Move t2 onto n1, rename s1, re-host n1.
    let mut renamed = service("s1", "p", "www");
    renamed.spec_version = 2;
    execute(
        &mut s,
        &cmd(
            vec![
                put(Op::PutTask(task("t2", "s1", "n1")), 1),
                put(Op::PutService(renamed), 1),
                put(Op::PutNode(node("n1", "host-b")), 1),
            ],
            "",
        ),
        2,
        0,
    );
    assert_eq!(ids(s.tasks_on_node("n1").collect()), vec!["t1", "t2"]);
    assert!(s.service_by_name("p", "web").is_none());
    assert!(s.service_by_name("p", "www").is_some());
    assert_eq!(s.nodes_by_hostname("host-a").count(), 0);
    assert_eq!(s.nodes_by_hostname("host-b").count(), 1);
    execute(
        &mut s,
        &cmd(vec![put(Op::DeleteTask("t1".into()), 1)], ""),
        3,
        0,
    );
    assert_eq!(ids(s.tasks_on_node("n1").collect()), vec!["t2"]);
    assert_eq!(ids(s.tasks_of_service("s1").collect()), vec!["t2"]);
}

#[test]
fn a_snapshot_round_trips_objects_indexes_and_answers() {
    let mut s = StoreState::default();
    execute(
        &mut s,
        &cmd(
            vec![
                put(Op::PutService(service("s1", "p", "web")), 0),
                put(Op::PutTask(task("t1", "s1", "n1")), 0),
                put(
                    Op::PutCluster(pb::Cluster {
                        id: "c1".into(),
                        ..Default::default()
                    }),
                    0,
                ),
            ],
            "r1",
        ),
        4,
        0,
    );
    execute(
        &mut s,
        &cmd(vec![put(Op::PutNode(node("n9", "h")), 0)], "r2"),
        5,
        0,
    );
    let back = StoreState::decode(&s.encode()).expect("decode");
    assert_eq!(back.encode(), s.encode());
    assert_eq!(back.revision(), 5);
    assert_eq!(back.tasks_on_node("n1").count(), 1);
    assert_eq!(back.answer("r1"), s.answer("r1"));
    assert_eq!(back.answer("r2").map(|a| a.revision), Some(5));
    assert_eq!(back.cluster().map(|c| c.id.as_str()), Some("c1"));
}

#[test]
fn empty_commands_and_mutations_are_refused() {
    let mut s = StoreState::default();
    assert_eq!(
        execute(&mut s, &cmd(vec![], ""), 1, 0).answer.result,
        Err(ApplyError::EmptyCommand)
    );
    let m = pb::Mutation::default();
    assert_eq!(
        execute(&mut s, &cmd(vec![m], ""), 2, 0).answer.result,
        Err(ApplyError::EmptyMutation { index: 0 })
    );
    let e = execute(
        &mut s,
        &cmd(vec![put(Op::PutTask(task("", "s", "n")), 0)], ""),
        3,
        0,
    );
    assert_eq!(
        e.answer.result,
        Err(ApplyError::MissingId {
            index: 0,
            kind: Kind::Task
        })
    );
}

fn store_with(n: u64, history: usize) -> Arc<Store> {
    let store = Store::new(history);
    for i in 1..=n {
        store.apply(
            &cmd(vec![put(Op::PutNode(node(&format!("n{i}"), "h")), 0)], ""),
            i,
            0,
        );
    }
    store
}

#[tokio::test]
async fn a_watch_resumes_after_a_revision_and_follows_new_changes() {
    let store = store_with(5, 100);
    let mut w = Box::pin(store.watch(3, vec![]).expect("watch"));
    let a = w.next().await.expect("event").expect("ok");
    let b = w.next().await.expect("event").expect("ok");
    assert_eq!((a.revision, b.revision), (4, 5));
    store.apply(
        &cmd(vec![put(Op::PutService(service("s1", "p", "w")), 0)], ""),
        6,
        0,
    );
    let c = w.next().await.expect("event").expect("ok");
    assert_eq!(c.revision, 6);
    assert_eq!(event_kind(&c), pb::ObjectKind::Service);
}

#[tokio::test]
async fn a_watch_filters_kinds_and_keeps_every_event_of_one_revision() {
    let store = store_with(2, 100);
    let mut w = Box::pin(store.watch(0, vec![pb::ObjectKind::Task]).expect("watch"));
    store.apply(
        &cmd(
            vec![
                put(Op::PutNode(node("x", "h")), 0),
                put(Op::PutTask(task("t1", "s", "x")), 0),
                put(Op::PutTask(task("t2", "s", "x")), 0),
            ],
            "",
        ),
        3,
        0,
    );
    let a = w.next().await.expect("event").expect("ok");
    let b = w.next().await.expect("event").expect("ok");
    assert_eq!((a.revision, b.revision), (3, 3));
    assert_eq!(event_kind(&a), pb::ObjectKind::Task);
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_says_to_relist() {
    let store = store_with(20, 5);
    let err = store.watch(3, vec![]).err().expect("compacted");
    assert_eq!(
        err,
        WatchError::Compacted {
            requested: 3,
            oldest: 15
        }
    );
    assert!(err.to_string().contains("list the objects again"));
    assert!(store.watch(15, vec![]).is_ok());
}

#[tokio::test]
async fn a_slow_watcher_catches_up_from_the_ring() {
    let store = store_with(1, 100_000);
    let mut w = Box::pin(store.watch(1, vec![]).expect("watch"));
    // More than the broadcast buffer while nobody reads.
    for i in 2..=6000u64 {
        store.apply(
            &cmd(vec![put(Op::PutNode(node(&format!("n{i}"), "h")), 0)], ""),
            i,
            0,
        );
    }
    let mut expect = 2;
    while expect <= 6000 {
        let e = w.next().await.expect("event").expect("ok");
        assert_eq!(e.revision, expect);
        expect += 1;
    }
}

#[tokio::test]
async fn replacing_the_store_ends_watches_with_a_relist_error() {
    let store = store_with(3, 100);
    let mut w = Box::pin(store.watch(0, vec![]).expect("watch"));
    let snap = store.read(StoreState::encode);
    store.replace(StoreState::decode(&snap).expect("decode"));
    assert_eq!(w.next().await.expect("item"), Err(WatchError::Reset(3)));
    assert!(w.next().await.is_none());
}
