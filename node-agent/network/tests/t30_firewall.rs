//! Root tests of skiff's nftables tables on a node that behaves like a Docker host
//! (FORWARD policy DROP, br_netfilter on): isolation, VIPs, the routing mesh, egress
//! masquerade, and a clean teardown.

mod common;

use std::time::Duration;

use common::*;
use skiff_network::NetworkMode;
use skiff_proto::v1 as pb;

const T: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_vip_isolation_and_egress_on_a_docker_like_node() {
    let lab = Lab::build(2, Vec::new(), &[0]).await;
    let (n0, n1) = (&lab.nodes[0], &lab.nodes[1]);
    assert!(
        n0.net
            .diagnostics()
            .iter()
            .any(|l| l.contains("policy is DROP") && l.contains("inserted")),
        "{:?}",
        n0.net.diagnostics()
    );
    let assign = pb::Assignments {
        networks: vec![network("n1", 1, 4301), network("n2", 2, 4302)],
        peers: lab.peers(),
        ..Default::default()
    };
    for n in &lab.nodes {
        n.net.apply_assignments(&assign).await.expect("assignments");
    }
    let att = |net: &str, a: &str| vec![attachment(net, a)];
    let c1 = n0
        .net
        .attach("c1", NetworkMode::Networks, &att("n1", "10.213.1.2/24"))
        .await
        .expect("c1")
        .expect("ns");
    let c2 = n0
        .net
        .attach("c2", NetworkMode::Networks, &att("n2", "10.213.2.2/24"))
        .await
        .expect("c2")
        .expect("ns");
    let c3 = n0
        .net
        .attach("c3", NetworkMode::Networks, &att("n1", "10.213.1.4/24"))
        .await
        .expect("c3")
        .expect("ns");
    let w1 = n1
        .net
        .attach("w1", NetworkMode::Networks, &att("n1", "10.213.1.3/24"))
        .await
        .expect("w1")
        .expect("ns");
    let table = pb::EndpointTable {
        revision: 1,
        services: vec![pb::ServiceEndpoint {
            service_id: "s-web".into(),
            network_id: "n1".into(),
            name: "web".into(),
            project: "p".into(),
            vip: "10.213.1.100".into(),
            backends: vec!["10.213.1.3".into()],
            ports: vec![pb::PortConfig {
                target_port: 80,
                published_port: 8080,
                ..Default::default()
            }],
            tasks: vec![pb::TaskEndpoint {
                task_id: "w1".into(),
                addr: "10.213.1.3".into(),
                node_id: n1.id.clone(),
            }],
            ..Default::default()
        }],
    };
    for n in &lab.nodes {
        n.net.apply_endpoints(&table).await.expect("endpoints");
    }
    let _web = serve_tag(Some(w1.as_path()), sa("10.213.1.3", 80), "web");
    let _c1srv = serve_tag(Some(c1.as_path()), sa("10.213.1.2", 81), "c1");
    let _outside = serve_tag(Some(&lab.hub), sa(&HUB_IP.to_string(), 9000), "outside");

    // Across the overlay, from the Docker-like node, directly and through the VIP.
    let got = eventually(Duration::from_secs(5), || {
        fetch(Some(c1.as_path()), sa("10.213.1.3", 80), T)
    });
    assert_eq!(got, "web 10.213.1.2");
    assert_eq!(
        fetch(Some(c1.as_path()), sa("10.213.1.100", 80), T).expect("vip"),
        "web 10.213.1.2",
        "VIP keeps the client address"
    );
    // Bridged on the same node despite FORWARD DROP + br_netfilter.
    assert_eq!(
        fetch(Some(c3.as_path()), sa("10.213.1.2", 81), T).expect("same node"),
        "c1 10.213.1.4"
    );
    // Isolation: n2 cannot reach n1, locally or across nodes.
    assert!(
        fetch(
            Some(c2.as_path()),
            sa("10.213.1.2", 81),
            Duration::from_millis(500)
        )
        .is_err()
    );
    assert!(
        fetch(
            Some(c2.as_path()),
            sa("10.213.1.3", 80),
            Duration::from_millis(500)
        )
        .is_err()
    );
    // Egress: the outside server sees the node's address.
    assert_eq!(
        fetch(Some(c1.as_path()), sa(&HUB_IP.to_string(), 9000), T).expect("egress"),
        format!("outside {}", n0.ip)
    );
    // Routing mesh: the node without a replica answers (client address lost on the
    // hop); the node with one keeps the client's address.
    let via0 = fetch(
        Some(&lab.hub),
        std::net::SocketAddr::new(n0.ip.into(), 8080),
        T,
    )
    .expect("mesh via node0");
    assert_eq!(via0, format!("web {}", n0.ip));
    let via1 = fetch(
        Some(&lab.hub),
        std::net::SocketAddr::new(n1.ip.into(), 8080),
        T,
    )
    .expect("node1");
    assert_eq!(via1, format!("web {HUB_IP}"));

    // The replica goes: the VIP is rejected, the port stops answering on node0.
    let mut empty = table.clone();
    empty.revision = 2;
    empty.services[0].backends.clear();
    for n in &lab.nodes {
        n.net.apply_endpoints(&empty).await.expect("endpoints");
    }
    assert!(
        fetch(
            Some(c1.as_path()),
            sa("10.213.1.100", 80),
            Duration::from_millis(500)
        )
        .is_err()
    );
    assert!(
        fetch(
            Some(&lab.hub),
            std::net::SocketAddr::new(n0.ip.into(), 8080),
            Duration::from_millis(500)
        )
        .is_err()
    );

    lab.teardown().await;
    for n in &lab.nodes {
        let tables = cmd_in(&n.ns, "nft", &["list", "tables"]).expect("nft");
        assert!(!tables.contains("skiff"), "{tables}");
        let fwd = cmd_in(&n.ns, "iptables", &["-w", "-S", "FORWARD"]).expect("iptables");
        assert!(!fwd.contains("skiff"), "{fwd}");
        assert_eq!(owned_links(&n.ns).await, Vec::<String>::new());
    }
}

/// Removes the namespace even when the test fails.
struct RemoveNs(std::path::PathBuf);

impl Drop for RemoveNs {
    fn drop(&mut self) {
        let _ = skiff_network::netns::remove(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_table_loads_fresh_reloads_in_place_and_replaces_a_foreign_one() {
    // Through libnftables in process (installed with nft), and through the binary.
    assert!(
        skiff_network::nft::Nft::new(None).uses_library(),
        "libnftables.so.1 comes with Debian's nftables"
    );
    for library in [true, false] {
        task_table_cycle(library).await;
    }
}

async fn task_table_cycle(library: bool) {
    use skiff_network::nft::Nft;
    use skiff_network::{firewall, netns};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("skiff-fwtest");
    let ns = tokio::task::spawn_blocking({
        let p = path.clone();
        move || netns::create(&p)
    })
    .await
    .expect("join")
    .expect("netns");
    let _gone = RemoveNs(ns.as_path().to_owned());
    let nft = if library {
        Nft::new(Some(&path))
    } else {
        Nft::binary(Some(&path))
    };
    // What the kernel holds.
    let list = || {
        let list = vec!["list".into(), "table".into(), "ip".into(), "skiff".into()];
        firewall::run_in(Some(&path), "nft", list, None)
    };
    let vip = |vip: &str, backend: &str| {
        let t = pb::EndpointTable {
            services: vec![pb::ServiceEndpoint {
                network_id: "n1".into(),
                vip: vip.into(),
                backends: vec![backend.into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let ep = skiff_network::attach::Endpoint {
            network_id: "n1".into(),
            addr: "10.213.1.2/24".parse().expect("addr"),
            gateway: "10.213.1.1".parse().expect("gateway"),
            bridge: String::new(),
        };
        firewall::render_task(&[ep], Some(&t))
    };
    let body = vip("10.213.1.100", "10.213.1.5");
    firewall::load_task_table(&nft, &body)
        .await
        .expect("first load");
    assert_eq!(nft.uses_library(), library, "{nft:?}");
    let first = list().await.expect("list");
    assert!(
        first.contains("10.213.1.100") && first.contains("10.213.1.5"),
        "{first}"
    );
    let body = vip("10.213.1.101", "10.213.1.6");
    firewall::load_task_table(&nft, &body)
        .await
        .expect("reload");
    let second = list().await.expect("list");
    assert!(second.contains("10.213.1.101"), "{second}");
    assert!(!second.contains("10.213.1.100"), "old rule left: {second}");
    // A table whose chain has another type can't be refilled: it is replaced.
    firewall::apply(
        Some(&path),
        "table ip skiff {}\ndelete table ip skiff\ntable ip skiff {\n  chain output {\n    type filter hook output priority 0; policy accept;\n  }\n}\n".into(),
    )
    .await
    .expect("foreign table");
    let body = vip("10.213.1.102", "10.213.1.7");
    firewall::load_task_table(&nft, &body)
        .await
        .expect("replace");
    let third = list().await.expect("list");
    assert!(
        third.contains("type nat hook output") && third.contains("10.213.1.102"),
        "{third}"
    );
    // A script nft refuses fails with nft's own message, and changes nothing.
    let err = nft
        .load("table ip skiff {\n  chain output {\n    bogus words\n  }\n}\n".into())
        .await
        .expect_err("a bad script");
    let msg = err.to_string();
    assert!(msg.contains("nft -f -") && msg.contains("Error:"), "{msg}");
    assert_eq!(list().await.expect("list"), third);
}
