//! mTLS on real masters: a manager joins with its token and raft runs over mTLS; a
//! client without a certificate, a wrong token, and another cluster's certificate are
//! refused; masters renew their own certificates before they expire, while serving;
//! any master issues admin certificates for skiffctl.

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

/// `m1` inits a cluster and `m2` joins it with the manager token; returns once `m2` is
/// a voter and holds the CA.
async fn two_masters(
    d1: &Path,
    a1: &str,
    d2: &Path,
    a2: &str,
) -> (Kill, Kill, pb::ListTokensResponse) {
    let m1 = spawn(d1, a1, &["init"]);
    let admin = d1.join("admin");
    let mut c = wait_admin(a1, &admin).await;
    let tokens = c
        .list_tokens(pb::ListTokensRequest {})
        .await
        .expect("tokens")
        .into_inner();
    assert!(tokens.manager.starts_with("SKIFF-1-"), "{}", tokens.manager);
    assert_ne!(tokens.manager, tokens.worker);

    tracing::info!("--- a master joins with the manager token; raft runs over mTLS");
    let m2 = spawn(d2, a2, &["join", "--token", &tokens.manager, a1]);
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
    (m1, m2, tokens)
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
    let (_m1, _m2, tokens) = two_masters(&d1, &a1, &d2, &a2).await;
    let admin = d1.join("admin");
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

    tracing::info!("--- an admin certificate issued on the joined master's machine");
    let adm2 = dir.path().join("adm2");
    let out = Command::new(BIN)
        .args(["--data-dir", &d2.display().to_string()])
        .args([
            "admin-cert",
            "--out",
            &adm2.display().to_string(),
            "--name",
            "ops",
        ])
        .output()
        .expect("run admin-cert");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("valid for 36"), "a year: {text}");
    let mut ops = wait_admin(&a2, &adm2).await;
    ops.list_masters(pb::ListMastersRequest {})
        .await
        .expect("the new admin certificate is accepted");
    let out = Command::new(BIN)
        .args([
            "--data-dir",
            &dir.path().join("nothing").display().to_string(),
        ])
        .args([
            "admin-cert",
            "--out",
            &dir.path().join("x").display().to_string(),
        ])
        .output()
        .expect("run admin-cert");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no cluster CA"),
        "{err}"
    );

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

/// Deploys a project with one network through `c`, retrying for 30 s; on failure the
/// message carries the logs of the masters in `dirs`.
async fn write_until_ok(c: &mut ClusterApiClient<Channel>, project: &str, dirs: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let write = c
            .deploy(pb::DeployRequest {
                project: project.into(),
                networks: vec![pb::NetworkSpec {
                    name: "n".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await;
        match write {
            Ok(_) => return,
            Err(status) => assert!(
                Instant::now() < deadline,
                "no write of {project}: {status:?}\n{}",
                dirs.iter()
                    .map(|d| {
                        let log =
                            std::fs::read_to_string(d.with_extension("log")).unwrap_or_default();
                        format!("--- {}\n{log}", d.display())
                    })
                    .collect::<String>()
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The certificate a master presents in a fresh TLS handshake.
fn served_certificate(addr: &str, ca_pem: &str) -> skiff_pki::CertInfo {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    skiff_pki::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("CA into the root store");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("skiff-master").expect("name");
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS client");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("TLS handshake");
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the master's certificate");
    skiff_pki::CertInfo::from_der(leaf.as_ref()).expect("certificate")
}

/// Replaces the certificate in `<dir>/tls` with one for the same key that lives `ttl`.
fn shorten_certificate(dir: &Path, ttl: Duration) -> skiff_pki::CertInfo {
    let tls = dir.join("tls");
    let creds = skiff_pki::Credentials::load(&tls, skiff_pki::NODE_FILE_STEM).expect("creds");
    let ca = skiff_pki::ClusterCa::load(&dir.join("ca")).expect("the master's CA");
    let key = skiff_pki::NodeKey::from_pem(&creds.key_pem).expect("key");
    let info = creds.info().expect("info");
    let issued = ca
        .sign_csr(
            &key.csr_pem().expect("csr"),
            &skiff_pki::SignRequest::renewing(&info, ttl),
        )
        .expect("sign");
    let short = skiff_pki::Credentials {
        cert_pem: issued.cert_pem,
        ..creds
    };
    short
        .save_cert(&tls, skiff_pki::NODE_FILE_STEM)
        .expect("save");
    short.info().expect("info")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_renew_their_certificates_before_they_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a1, a2) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (d1, d2) = (dir.path().join("m1"), dir.path().join("m2"));
    let (m1, m2, _) = two_masters(&d1, &a1, &d2, &a2).await;
    drop((m1, m2));

    // Certificates backdated by a minute that live 42 s: renewal is due (two thirds
    // in) ~8 s from now, expiry ~42 s from now.
    let ttl = Duration::from_secs(42);
    let short = [shorten_certificate(&d1, ttl), shorten_certificate(&d2, ttl)];
    let expired_at = Instant::now() + ttl;
    let m1 = spawn(&d1, &a1, &["run"]);
    let m2 = spawn(&d2, &a2, &["run"]);
    let admin = d1.join("admin");
    let ca_pem = std::fs::read_to_string(admin.join("ca.pem")).expect("CA");
    wait_admin(&a1, &admin).await;
    // Before the renewal: m2 dials m1 (a forwarded write, or replication if m2 leads)
    // with the short-lived certificate, and keeps that channel.
    let mut c2 = wait_admin(&a2, &admin).await;
    write_until_ok(&mut c2, "before-renewal", &[&d1, &d2]).await;

    tracing::info!("--- both renew while serving, and present the new certificate");
    for ((addr, dir), old) in [(&a1, &d1), (&a2, &d2)].into_iter().zip(&short) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let renewed = loop {
            let served = served_certificate(addr, &ca_pem);
            if served.identity.serial != old.identity.serial {
                break served;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} still serves its short-lived certificate"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(renewed.identity.node_id, old.identity.node_id);
        assert!(
            renewed.not_after > std::time::SystemTime::now() + Duration::from_secs(80 * 24 * 3600),
            "renewed for the full lifetime: {:?}",
            renewed.not_after
        );
        let log = std::fs::read_to_string(dir.with_extension("log")).expect("log");
        assert!(
            log.contains("serving with the renewed certificate"),
            "{addr} renewed in place, not by a restart:\n{log}"
        );
    }

    tracing::info!("--- after the old certificates expired, each restarts from disk in turn");
    tokio::time::sleep(
        expired_at.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
    )
    .await;
    // The follower first: the leader, which has replicated to it since before its
    // renewal, must redial it with the new certificate. Then the leader: an election
    // with fresh handshakes both ways. Each with the certificate it saved.
    let mut masters = [
        (d1.clone(), a1.clone(), Some(m1)),
        (d2.clone(), a2.clone(), Some(m2)),
    ];
    let mut c = wait_admin(&a1, &admin).await;
    let leader = c
        .cluster_info(pb::ClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .leader_addr;
    let first = masters
        .iter()
        .position(|(_, a, _)| *a != leader)
        .unwrap_or(0);
    for (round, i) in [first, 1 - first].into_iter().enumerate() {
        let (dir, addr, proc) = &mut masters[i];
        drop(proc.take());
        *proc = Some(spawn(dir, addr, &["run"]));
        let other = &masters[1 - i].1;
        let mut c = wait_admin(other, &admin).await;
        write_until_ok(&mut c, &format!("after-renewal-{round}"), &[&d1, &d2]).await;
    }
    let served = served_certificate(&a1, &ca_pem);
    assert_ne!(served.identity.serial, short[0].identity.serial);
}
