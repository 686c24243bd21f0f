//! Root tests: two nodes (namespaces on a lab bridge) joined by skiff's VXLAN overlay;
//! containers are namespaces made by `NodeNetwork::attach`.

mod common;

use std::time::Duration;

use common::*;
use skiff_network::link::Links;
use skiff_network::{NetworkMode, names, netns, steering};
use skiff_proto::v1 as pb;

const T: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_on_two_nodes_talk_over_vxlan_and_peers_are_reconciled() {
    let lab = Lab::new(2).await;
    let (a, b) = (&lab.nodes[0], &lab.nodes[1]);
    let assign = pb::Assignments {
        networks: vec![network("n1", 1, 4101)],
        peers: lab.peers(),
        ..Default::default()
    };
    for n in &lab.nodes {
        n.net.apply_assignments(&assign).await.expect("assignments");
        n.net.apply_assignments(&assign).await.expect("idempotent");
    }
    let ca = a
        .net
        .attach(
            "ta",
            NetworkMode::Networks,
            &[attachment("n1", "10.213.1.2/24")],
        )
        .await
        .expect("attach")
        .expect("ns");
    let cb = b
        .net
        .attach(
            "tb",
            NetworkMode::Networks,
            &[attachment("n1", "10.213.1.3/24")],
        )
        .await
        .expect("attach")
        .expect("ns");
    assert!(ca.as_path().starts_with(&a.net.config().run_dir));

    let _srv = serve_tag(Some(cb.as_path()), sa("10.213.1.3", 7000), "b");
    let got = eventually(Duration::from_secs(5), || {
        fetch(Some(ca.as_path()), sa("10.213.1.3", 7000), T)
    });
    assert_eq!(
        got, "b 10.213.1.2",
        "reached b across the overlay with the source address kept"
    );

    // The overlay is IPv4 only: the task's eth0 got no IPv6 address (not even a
    // link-local one, so no duplicate address detection or MLD), while lo kept ::1.
    let v6 = ipv6_addresses(ca.as_path());
    assert!(
        v6.iter()
            .any(|(dev, addr)| dev == "lo" && addr == "00000000000000000000000000000001"),
        "{v6:?}"
    );
    assert!(v6.iter().all(|(dev, _)| dev == "lo"), "{v6:?}");

    // Both ends of the task's veth were made with one queue each way (so no grace
    // period was waited for under the rtnl lock to cut them down to one).
    let inner = Links::new(netns::netlink(Some(ca.as_path())).await.expect("netlink"));
    let eth0 = inner.require("eth0").await.expect("eth0");
    let host_end = Links::new(netns::netlink(Some(&a.ns)).await.expect("netlink"))
        .require(&names::host_veth("ta", "n1"))
        .await
        .expect("host end");
    assert_eq!((eth0.queues, host_end.queues), ((1, 1), (1, 1)));

    // The VXLAN device holds exactly one flood entry, for the other node.
    let al = Links::new(netns::netlink(Some(&a.ns)).await.expect("netlink"));
    let vx = al.require(&names::vxlan("n1")).await.expect("vxlan");
    let fdb = al.fdb(&vx).await.expect("fdb");
    assert_eq!(fdb.len(), 1, "{fdb:?}");
    assert_eq!(fdb[0].dst, b.ip);

    // Its receive processing is spread over every CPU the agent may use (read through
    // a sysfs of node a's namespace: the test's own /sys shows the host's devices).
    let cpus = steering::allowed_cpus();
    let want = if cpus.len() > 1 {
        steering::mask(cpus)
    } else {
        "0".into()
    };
    let ns = a.ns.clone();
    let masks =
        tokio::task::spawn_blocking(move || steering::current(Some(&ns), &names::vxlan("n1")))
            .await
            .expect("join")
            .expect("rps_cpus");
    assert!(!masks.is_empty());
    for m in masks {
        assert_eq!(
            m.trim_start_matches(['0', ',']),
            want.trim_start_matches(['0', ','])
        );
    }

    // The flow hash program sits on every VXLAN device's egress (bpf.rs), direct
    // action, under the clsact qdisc that also holds the shortcuts.
    for node in [&a, &b] {
        let shown = cmd_in(
            &node.ns,
            "tc",
            &["filter", "show", "dev", &names::vxlan("n1"), "egress"],
        )
        .expect("tc filter show");
        assert!(
            shown.contains(skiff_network::bpf::PROGRAM_NAME) && shown.contains("direct-action"),
            "flow hash program on {}: {shown}",
            node.id
        );
    }

    // Shortcuts: overlay traffic for a local container goes from the VXLAN device
    // straight to its veth. With the bridges told to drop every IPv4 frame they get
    // from a VXLAN device (ARP still passes), the containers still talk, also after one
    // comes back with a new veth.
    let drop_from_vxlan = "table bridge skiff_test {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    iifname \"skv-*\" ether type ip drop\n  }\n}\n";
    for n in &lab.nodes {
        nft_in(&n.ns, drop_from_vxlan);
    }
    assert_eq!(
        fetch(Some(ca.as_path()), sa("10.213.1.3", 7000), T).as_deref(),
        Ok("b 10.213.1.2"),
        "containers talk across the overlay without their bridges' forwarding"
    );
    let bl = Links::new(netns::netlink(Some(&b.ns)).await.expect("netlink"));
    let bvx = bl.require(&names::vxlan("n1")).await.expect("vxlan");
    assert_eq!(bl.redirect_nodes(&bvx).await.expect("filters"), vec![3]);
    b.net.detach("tb").await.expect("detach");
    assert!(
        bl.redirect_nodes(&bvx).await.expect("filters").is_empty(),
        "a detached task's shortcut goes with it"
    );
    let cb = b
        .net
        .attach(
            "tb",
            NetworkMode::Networks,
            &[attachment("n1", "10.213.1.3/24")],
        )
        .await
        .expect("attach again")
        .expect("ns");
    let _srv = serve_tag(Some(cb.as_path()), sa("10.213.1.3", 7000), "b");
    assert_eq!(
        fetch(Some(ca.as_path()), sa("10.213.1.3", 7000), T).as_deref(),
        Ok("b 10.213.1.2"),
        "the shortcut follows a container that came back with a new veth"
    );
    assert_eq!(bl.redirect_nodes(&bvx).await.expect("filters"), vec![3]);
    for n in &lab.nodes {
        nft_in(&n.ns, "delete table bridge skiff_test\n");
    }

    // Node b leaves a's peer list: its entry goes and traffic stops; it comes back.
    let mut alone = assign.clone();
    alone.peers.retain(|p| p.node_id == a.id);
    a.net.apply_assignments(&alone).await.expect("assignments");
    assert!(al.fdb(&vx).await.expect("fdb").is_empty());
    assert!(
        fetch(
            Some(ca.as_path()),
            sa("10.213.1.3", 7000),
            Duration::from_millis(500)
        )
        .is_err()
    );
    a.net.apply_assignments(&assign).await.expect("assignments");
    eventually(Duration::from_secs(5), || {
        fetch(Some(ca.as_path()), sa("10.213.1.3", 7000), T)
    });

    // Endpoint table: remote tasks get exact FDB and neighbour entries.
    let table = pb::EndpointTable {
        revision: 1,
        services: vec![
            service("n1", "web", "tb", "10.213.1.3", &b.id),
            service("n1", "cli", "ta", "10.213.1.2", &a.id),
        ],
    };
    for n in &lab.nodes {
        n.net.apply_endpoints(&table).await.expect("endpoints");
    }
    assert_eq!(al.fdb(&vx).await.expect("fdb").len(), 2);
    let br = al.require(&names::bridge("n1")).await.expect("bridge");
    assert_eq!(al.permanent_neighbours(&br).await.expect("neigh").len(), 1);
    assert_eq!(br.alias.as_deref(), Some("skiff network=n1"));
    let vx = al.require(&names::vxlan("n1")).await.expect("vxlan");
    assert_eq!(vx.alias.as_deref(), Some("skiff network=n1"));
    let task_links: Vec<_> = al.list().await.expect("links");
    assert!(
        task_links
            .iter()
            .any(|l| l.name.starts_with(names::HOST_VETH_PREFIX)
                && l.alias.as_deref().is_some_and(|a| a.contains("task=ta"))),
        "the task's host veth carries its alias"
    );
    eventually(Duration::from_secs(5), || {
        fetch(Some(ca.as_path()), sa("10.213.1.3", 7000), T)
    });

    // Send shortcuts: each node's containers send to the other node's tasks in the
    // table straight from their veth to the VXLAN device. With the bridges dropping
    // every IPv4 frame between a task veth and a VXLAN device (either way), the
    // containers still talk; once tb leaves a's table, a's traffic to it needs the
    // bridge again, and is dropped.
    for node in [&a, &b] {
        let shown = cmd_in(
            &node.ns,
            "tc",
            &[
                "filter",
                "show",
                "ingress",
                "dev",
                &names::host_veth(if node.id == a.id { "ta" } else { "tb" }, "n1"),
            ],
        )
        .expect("tc filter show");
        assert!(
            shown.contains(skiff_network::bpf::SEND_PROGRAM_NAME)
                && shown.contains("direct-action"),
            "send shortcut on {}'s task veth: {shown}",
            node.id
        );
    }
    let bridge_blind = "table bridge skiff_test {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    iifname \"skv-*\" ether type ip drop\n    oifname \"skv-*\" ether type ip drop\n  }\n}\n";
    for n in &lab.nodes {
        nft_in(&n.ns, bridge_blind);
    }
    assert_eq!(
        fetch(Some(ca.as_path()), sa("10.213.1.3", 7000), T).as_deref(),
        Ok("b 10.213.1.2"),
        "containers talk across the overlay without their bridges in either direction"
    );
    let mut without_tb = table.clone();
    without_tb.services.retain(|s| s.name != "web");
    a.net.apply_endpoints(&without_tb).await.expect("endpoints");
    assert!(
        fetch(
            Some(ca.as_path()),
            sa("10.213.1.3", 7000),
            Duration::from_millis(500)
        )
        .is_err(),
        "a task that left the table is sent to through the bridge"
    );
    a.net.apply_endpoints(&table).await.expect("endpoints");
    assert_eq!(
        fetch(Some(ca.as_path()), sa("10.213.1.3", 7000), T).as_deref(),
        Ok("b 10.213.1.2"),
        "back in the table, back on the shortcut"
    );
    for n in &lab.nodes {
        nft_in(&n.ns, "delete table bridge skiff_test\n");
    }

    // Detach removes the veth and the namespace; teardown leaves no skiff link.
    a.net.detach("ta").await.expect("detach");
    a.net.detach("ta").await.expect("detach is idempotent");
    assert!(!ca.as_path().exists());
    assert!(
        owned_links(&a.ns)
            .await
            .iter()
            .all(|l| !l.starts_with(names::HOST_VETH_PREFIX))
    );
    lab.teardown().await;
    for n in &lab.nodes {
        assert_eq!(owned_links(&n.ns).await, Vec::<String>::new());
        assert!(skiff_network::attach::attached_tasks(&n.net.config().run_dir).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_modes_host_and_none() {
    let lab = Lab::new(1).await;
    let n = &lab.nodes[0];
    assert_eq!(
        n.net
            .attach("th", NetworkMode::Host, &[])
            .await
            .expect("host"),
        None
    );
    let ns = n
        .net
        .attach("tn", NetworkMode::None, &[])
        .await
        .expect("none")
        .expect("ns");
    let l = Links::new(netns::netlink(Some(ns.as_path())).await.expect("netlink"));
    let links = l.list().await.expect("links");
    assert_eq!(
        links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["lo"]
    );
    assert!(links[0].up);
    // A task with an unassigned network is refused and leaves nothing behind.
    let err = n
        .net
        .attach(
            "tx",
            NetworkMode::Networks,
            &[attachment("nope", "10.213.9.2/24")],
        )
        .await;
    assert!(err.is_err());
    assert!(!n.net.config().run_dir.join("netns/tx").exists());
    assert_eq!(n.net.gc(&[]).await.expect("gc"), ["tn"]);
    lab.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_address_moves_to_the_new_task_and_the_ended_one_is_detached() {
    let lab = Lab::new(1).await;
    let n = &lab.nodes[0];
    let assign = pb::Assignments {
        networks: vec![network("reuse", 7, 4700)],
        peers: lab.peers(),
        ..Default::default()
    };
    n.net.apply_assignments(&assign).await.expect("assignments");
    let att = [attachment("reuse", "10.213.7.5/24")];
    n.net
        .attach("old", NetworkMode::Networks, &att)
        .await
        .expect("old")
        .expect("ns");
    // The masters gave the ended task's address to a new one: the new one gets it, and
    // the old namespace (which would answer for the address too) is gone.
    let new = n
        .net
        .attach("new", NetworkMode::Networks, &att)
        .await
        .expect("new")
        .expect("ns");
    let run = &n.net.config().run_dir;
    assert!(
        !run.join("netns/old").exists(),
        "the ended task's namespace stays"
    );
    let addrs = cmd_in(new.as_path(), "ip", &["-4", "-br", "addr"]).expect("ip");
    assert!(addrs.contains("10.213.7.5/24"), "{addrs}");
    // From the node, every connection to the address reaches the new task.
    let _server = serve_tag(Some(new.as_path()), sa("10.213.7.5", 8000), "new");
    for _ in 0..5 {
        let got = eventually(Duration::from_secs(5), || {
            fetch(Some(&n.ns), sa("10.213.7.5", 8000), Duration::from_secs(2))
        });
        assert!(got.starts_with("new "), "{got}");
    }
    assert_eq!(n.net.gc(&[]).await.expect("gc"), ["new"]);
    lab.teardown().await;
}

/// Loads an nftables script in `ns` with the `nft` binary.
fn nft_in(ns: &std::path::Path, script: &str) {
    let script = script.to_owned();
    let out = netns::run_in(Some(ns), move || {
        use std::io::Write;
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())?;
        child.wait_with_output()
    })
    .expect("thread")
    .expect("nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The IPv6 addresses inside `ns` as (interface, address in hex), from the kernel's
/// table of the namespace.
fn ipv6_addresses(ns: &std::path::Path) -> Vec<(String, String)> {
    let table = netns::run_in(Some(ns), || {
        std::fs::read_to_string("/proc/thread-self/net/if_inet6")
    })
    .expect("thread")
    .expect("if_inet6");
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(5)?.to_string(), f.first()?.to_string()))
        })
        .collect()
}
