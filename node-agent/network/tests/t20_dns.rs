//! Root tests of the embedded DNS: service names per endpoint mode, scoping by the
//! asker's network, answers that follow the endpoint table, and forwarding of other
//! names to an upstream (a fake one on loopback, started here).

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use skiff_network::NetworkMode;
use skiff_proto::v1 as pb;

/// Answers `outside.test` with 198.51.100.7 and everything else with NXDOMAIN, over UDP.
async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.add_queries(q.queries.clone());
            match q.queries.first() {
                Some(query) if query.name().to_ascii() == "outside.test." => {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(198, 51, 100, 7))),
                    ));
                }
                _ => r.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = sock.send_to(&r.to_vec().expect("encode"), from).await;
        }
    });
    (addr, task)
}

fn service(net: &str, name: &str, vip: &str, backends: &[&str]) -> pb::ServiceEndpoint {
    pb::ServiceEndpoint {
        service_id: format!("svc-{name}"),
        network_id: net.into(),
        name: name.into(),
        project: "shop".into(),
        vip: vip.into(),
        backends: backends.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolve_per_network_follow_endpoints_and_others_are_forwarded() {
    let (upstream, _up) = fake_upstream().await;
    let lab = Lab::with_upstreams(1, vec![upstream]).await;
    let n = &lab.nodes[0];
    let assign = pb::Assignments {
        networks: vec![network("n1", 1, 4201), network("n2", 2, 4202)],
        peers: lab.peers(),
        ..Default::default()
    };
    n.net.apply_assignments(&assign).await.expect("assignments");
    let c1 = n
        .net
        .attach(
            "c1",
            NetworkMode::Networks,
            &[attachment("n1", "10.213.1.2/24")],
        )
        .await
        .expect("attach")
        .expect("ns");
    let c2 = n
        .net
        .attach(
            "c2",
            NetworkMode::Networks,
            &[attachment("n2", "10.213.2.2/24")],
        )
        .await
        .expect("attach")
        .expect("ns");
    assert_eq!(
        n.net
            .resolv_conf("c1")
            .await
            .expect("resolv")
            .lines()
            .find(|l| l.starts_with("nameserver")),
        Some("nameserver 10.213.1.1")
    );

    let mut table = pb::EndpointTable {
        revision: 1,
        services: vec![
            service("n1", "web", "10.213.1.100", &["10.213.1.5", "10.213.1.6"]),
            service("n1", "db", "", &["10.213.1.7"]),
        ],
    };
    n.net.apply_endpoints(&table).await.expect("endpoints");
    let dns1 = sa("10.213.1.1", 53);
    let q = |name: &str, tcp| dns_query(c1.as_path(), dns1, name, tcp);
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    assert_eq!(q("web", false).expect("web").1, [ip("10.213.1.100")]);
    assert_eq!(
        q("web.shop", true).expect("web.shop over tcp").1,
        [ip("10.213.1.100")]
    );
    let mut tasks = q("tasks.web", false).expect("tasks.web").1;
    tasks.sort();
    assert_eq!(tasks, [ip("10.213.1.5"), ip("10.213.1.6")]);
    assert_eq!(
        q("db", false).expect("db").1,
        [ip("10.213.1.7")],
        "dnsrr answers the backends"
    );
    assert_eq!(
        q("outside.test", false).expect("forwarded"),
        ("No Error".to_owned(), vec![ip("198.51.100.7")])
    );
    assert_eq!(
        q("nothing.test", false).expect("forwarded").0,
        "Non-Existent Domain"
    );

    // A container on another network does not see n1's services.
    let (code, ips) = dns_query(c2.as_path(), sa("10.213.2.1", 53), "web", false).expect("query");
    assert!(ips.is_empty(), "{code} {ips:?}");
    assert_eq!(code, "Non-Existent Domain");

    // Replicas move: the answers follow the table.
    table.revision = 2;
    table.services[1].backends = vec!["10.213.1.8".into()];
    n.net.apply_endpoints(&table).await.expect("endpoints");
    assert_eq!(q("db", false).expect("db").1, [ip("10.213.1.8")]);
    table.services.remove(1);
    n.net.apply_endpoints(&table).await.expect("endpoints");
    assert_eq!(
        q("db", false).expect("db").0,
        "Non-Existent Domain",
        "a removed service is forwarded and unknown"
    );

    lab.teardown().await;
    assert!(
        dns_query(c1.as_path(), dns1, "web", false).is_err(),
        "namespace is gone"
    );
}
