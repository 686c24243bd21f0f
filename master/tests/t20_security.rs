//! mTLS on real masters: a manager joins with its token and raft runs over mTLS; a
//! client without a certificate, a wrong token, and another cluster's certificate are
//! refused.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, free_port};
use skiff_proto::v1 as pb;
use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, addr: &str, args: &[&str]) -> Kill {
    let log = std::fs::File::create(dir.with_extension("log")).expect("log");
    Kill(
        Command::new(BIN)
            .args(["--data-dir", &dir.display().to_string(), "--listen", addr])
            .args(args)
            .env("RUST_LOG", "warn,skiff_master=info")
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn"),
    )
}

fn tls(admin: &Path, with_cert: bool) -> ClientTlsConfig {
    let read = |f: &str| std::fs::read(admin.join(f)).expect("read pem");
    let mut t = ClientTlsConfig::new()
        .domain_name("skiff-master")
        .ca_certificate(Certificate::from_pem(read("ca.pem")));
    if with_cert {
        t = t.identity(Identity::from_pem(read("admin.pem"), read("admin-key.pem")));
    }
    t
}

async fn connect(
    addr: &str,
    tls: ClientTlsConfig,
) -> Result<ClusterApiClient<Channel>, tonic::transport::Error> {
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(ClusterApiClient::new(ch))
}

async fn wait_admin(addr: &str, admin: &Path) -> ClusterApiClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if admin.join("admin.pem").exists()
            && let Ok(mut c) = connect(addr, tls(admin, true)).await
            && let Ok(i) = c.cluster_info(pb::ClusterInfoRequest {}).await
            && !i.into_inner().cluster_id.is_empty()
        {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "master {addr} not ready over mTLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_members_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a1, a2, b1) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (d1, d2, db) = (
        dir.path().join("m1"),
        dir.path().join("m2"),
        dir.path().join("other"),
    );
    let _m1 = spawn(&d1, &a1, &["init"]);
    let admin = d1.join("admin");
    let mut c = wait_admin(&a1, &admin).await;
    let tokens = c
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("tokens")
        .into_inner();
    assert!(tokens.manager.starts_with("SKIFF-1-"), "{}", tokens.manager);
    assert_ne!(tokens.manager, tokens.worker);

    tracing::info!("--- a master joins with the manager token; raft runs over mTLS");
    let _m2 = spawn(&d2, &a2, &["join", "--token", &tokens.manager, &a1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = c
            .list_masters(pb::ListMastersRequest {})
            .await
            .expect("masters")
            .into_inner();
        if m.masters.iter().filter(|m| m.voter).count() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "second master never became a voter: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d2.join("ca/ca-key.pem").exists() {
        assert!(
            Instant::now() < deadline,
            "the joined master holds the CA to sign joins"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The joined master serves the admin too (and forwards writes to the leader).
    let mut c2 = wait_admin(&a2, &admin).await;
    c2.deploy(pb::DeployRequest {
        project: "p".into(),
        networks: vec![pb::NetworkSpec {
            name: "n".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .expect("write through the joined master");

    tracing::info!("--- no client certificate");
    let mut anon = connect(&a1, tls(&admin, false))
        .await
        .expect("TLS without a client cert connects");
    let err = anon
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    tracing::info!("--- a wrong token");
    let keep = &tokens.manager[..tokens.manager.len() - 5];
    let bad = if tokens.manager.ends_with("aaaaa") {
        format!("{keep}bbbbb")
    } else {
        format!("{keep}aaaaa")
    };
    let out = Command::new(BIN)
        .args(["--data-dir", &dir.path().join("m3").display().to_string()])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "join",
            "--token",
            &bad,
            &a1,
        ])
        .output()
        .expect("run join");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong token must not join");
    assert!(text.contains("token"), "says the token is wrong: {text}");

    tracing::info!("--- a certificate of another cluster");
    let _other = spawn(&db, &b1, &["init"]);
    wait_admin(&b1, &db.join("admin")).await;
    let mut mixed = tls(&admin, false);
    let read = |f: &str| std::fs::read(db.join("admin").join(f)).expect("read");
    mixed = mixed.identity(Identity::from_pem(read("admin.pem"), read("admin-key.pem")));
    match connect(&a1, mixed).await {
        Err(_) => {} // refused in the handshake: its CA is not ours
        Ok(mut c) => {
            let e = c
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .expect_err("refused");
            // The handshake alert (unknown CA) surfaces on the first call.
            assert_ne!(e.code(), tonic::Code::Ok, "{e:?}");
        }
    }
}
