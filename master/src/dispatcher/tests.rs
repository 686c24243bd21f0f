//! What nodes are told, from store contents.

use skiff_proto::v1 as pb;

use super::assign::{View, assignments, endpoints};

fn node(id: &str, addr: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        description: Some(pb::NodeDescription {
            addr: addr.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(
    id: &str,
    svc: &str,
    node: &str,
    addr: &str,
    state: pb::TaskState,
    desired: pb::TaskState,
) -> pb::Task {
    pb::Task {
        id: id.into(),
        service_id: svc.into(),
        node_id: node.into(),
        desired_state: desired as i32,
        status: Some(pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        networks: vec![pb::NetworkAttachment {
            network_id: "net1".into(),
            addresses: vec![addr.into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn world() -> (
    Vec<pb::Node>,
    Vec<pb::Service>,
    Vec<pb::Task>,
    Vec<pb::Network>,
) {
    let nodes = vec![
        node("n1", "172.31.200.21"),
        node("n2", "172.31.200.22"),
        node("n3", "172.31.200.23"),
    ];
    let services = vec![pb::Service {
        id: "web".into(),
        spec: Some(pb::ServiceSpec {
            name: "web".into(),
            project: "demo".into(),
            ..Default::default()
        }),
        virtual_ips: vec![pb::VirtualIp {
            network_id: "net1".into(),
            addr: "10.213.0.2/24".into(),
        }],
        ..Default::default()
    }];
    use pb::TaskState::*;
    let tasks = vec![
        task("t1", "web", "n1", "10.213.0.3/24", Running, Running),
        task("t2", "web", "n2", "10.213.0.4/24", Running, Running),
        task("t3", "web", "n2", "10.213.0.5/24", Failed, Shutdown),
        task("t4", "web", "n1", "10.213.0.6/24", Preparing, Running),
    ];
    let networks = vec![pb::Network {
        id: "net1".into(),
        subnet: "10.213.0.0/24".into(),
        vni: 4096,
        ..Default::default()
    }];
    (nodes, services, tasks, networks)
}

#[test]
fn a_node_gets_its_live_tasks_their_networks_and_its_overlay_peers() {
    let (nodes, services, tasks, networks) = world();
    let view = View {
        nodes: &nodes,
        services: &services,
        tasks: &tasks,
        networks: &networks,
    };
    let a = assignments(&view, "n2", 9);
    let ids: Vec<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["t2"],
        "an ended task that is no longer wanted leaves the node"
    );
    assert_eq!(a.networks.len(), 1);
    let peers: Vec<&str> = a.peers.iter().map(|p| p.addr.as_str()).collect();
    assert_eq!(peers, vec!["172.31.200.21"], "n3 runs nothing on net1");
    assert_eq!(a.revision, 9);
}

#[test]
fn endpoints_list_only_running_backends_behind_the_vip() {
    let (nodes, services, tasks, networks) = world();
    let view = View {
        nodes: &nodes,
        services: &services,
        tasks: &tasks,
        networks: &networks,
    };
    let table = endpoints(&view, "n1", 3);
    assert_eq!(table.services.len(), 1);
    let web = &table.services[0];
    assert_eq!(web.vip, "10.213.0.2");
    assert_eq!(web.backends, vec!["10.213.0.3", "10.213.0.4"]);
    assert!(
        endpoints(&view, "n3", 3).services.is_empty(),
        "n3 has no task on net1"
    );
}

#[test]
fn a_task_with_a_health_check_serves_only_once_healthy() {
    let (nodes, services, mut tasks, networks) = world();
    for t in &mut tasks {
        t.spec = Some(pb::ServiceSpec {
            container: Some(pb::ContainerSpec {
                healthcheck: Some(pb::HealthCheck {
                    test: vec!["CMD".into(), "true".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(s) = tasks[0].status.as_mut() {
        s.health = pb::HealthState::Healthy as i32;
    }
    let view = View {
        nodes: &nodes,
        services: &services,
        tasks: &tasks,
        networks: &networks,
    };
    let table = endpoints(&view, "n1", 3);
    assert_eq!(table.services[0].backends, vec!["10.213.0.3"]);
}

#[test]
fn statuses_apply_only_to_the_reporting_nodes_tasks_and_never_move_back() {
    use super::service::status_mutations;
    let (_, _, tasks, _) = world();
    let report = |node: &str, task: &str, state: pb::TaskState| {
        (
            node.to_string(),
            pb::TaskStatusUpdate {
                task_id: task.into(),
                status: Some(pb::TaskStatus {
                    state: state as i32,
                    ..Default::default()
                }),
                networks: vec![],
            },
        )
    };
    let updates = [
        report("n1", "t4", pb::TaskState::Running), // its own: applied
        report("n1", "t2", pb::TaskState::Failed),  // n2's task: ignored
        report("n2", "t2", pb::TaskState::Starting), // backwards: ignored
        report("n2", "nope", pb::TaskState::Running), // unknown task: ignored
    ];
    let muts = status_mutations(&tasks, updates.iter());
    assert_eq!(muts.len(), 1);
    let Some(pb::mutation::Op::PutTask(t)) = &muts[0].op else {
        panic!("a task write")
    };
    assert_eq!(t.id, "t4");
    assert_eq!(
        t.status.as_ref().map(|s| s.state()),
        Some(pb::TaskState::Running)
    );
}
