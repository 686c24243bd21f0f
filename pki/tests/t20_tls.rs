//! Real TLS handshakes over loopback between tonic servers and clients, with the
//! `skiff.v1.Join` service implemented here on top of the PKI: joining with a pinned CA,
//! mTLS renewal, and every way a caller must be refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use skiff_pki::{
    Authorizer, CaDigest, ClientCerts, ClusterCa, Credentials, JoinSecrets, JoinToken, NodeKey,
    PeerIdentity, PinError, RevocationSet, Role, SignRequest, client_tls_config,
    client_tls_config_for, connect_pinned, endpoint, node_server_name, server_tls_config_with,
};
use skiff_proto::v1 as pb;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

const TTL: Duration = Duration::from_secs(3600);

/// A Join service as a master would run it (the real one lives in skiff-master).
struct TestJoin {
    ca: Arc<ClusterCa>,
    secrets: JoinSecrets,
    authz: Authorizer,
    /// How many calls reached a handler at all.
    calls: Arc<AtomicUsize>,
    /// Who called, as the handler saw it (from the interceptor or the certificate).
    seen: Arc<Mutex<Vec<PeerIdentity>>>,
}

#[tonic::async_trait]
impl pb::join_server::Join for TestJoin {
    async fn join_cluster(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(id) = request.extensions().get::<PeerIdentity>() {
            self.seen.lock().expect("lock").push(id.clone());
        }
        let req = request.into_inner();
        let role = self
            .secrets
            .check(&req.token, self.ca.digest())
            .map_err(|err| Status::permission_denied(err.to_string()))?;
        let issued = self
            .ca
            .sign_csr(
                &req.csr_pem,
                &SignRequest {
                    node_id: req.hostname.clone(),
                    role,
                    ttl: TTL,
                    extra_names: vec![],
                },
            )
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        Ok(Response::new(pb::JoinResponse {
            node_id: req.hostname,
            cert_pem: issued.cert_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
            role: match role {
                Role::Manager => pb::NodeRole::Manager,
                Role::Worker | Role::Admin => pb::NodeRole::Worker,
            } as i32,
            masters: vec![],
            cluster_id: self.ca.cluster_id().to_owned(),
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = self
            .authz
            .require_role(&request, &[Role::Worker, Role::Manager])?;
        self.seen.lock().expect("lock").push(id);
        let current = skiff_pki::peer_cert_info(&request).expect("verified certificate");
        let issued = self
            .ca
            .sign_csr(
                &request.get_ref().csr_pem,
                &SignRequest::renewing(&current, TTL),
            )
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        Ok(Response::new(pb::RenewResponse {
            cert_pem: issued.cert_pem,
        }))
    }
}

/// How the test server puts the Join service behind the PKI.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// As a master serves it: client certificates optional, each handler decides.
    PerHandler,
    /// Every call through `Authorizer::interceptor(&[Role::Admin])`.
    AdminInterceptor,
}

/// A cluster (CA, secrets, revocations) with one master serving Join on loopback.
struct Cluster {
    ca: Arc<ClusterCa>,
    secrets: JoinSecrets,
    revoked: RevocationSet,
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<PeerIdentity>>>,
    _shutdown: oneshot::Sender<()>,
}

impl Cluster {
    async fn start(guard: Guard) -> Self {
        let ca = Arc::new(ClusterCa::generate("c1").expect("ca"));
        let (master, _) = ca
            .issue_local(&SignRequest {
                node_id: "m1".into(),
                role: Role::Manager,
                ttl: TTL,
                extra_names: vec!["127.0.0.1".into()],
            })
            .expect("master cert");
        Self::start_with(ca, &master, guard, ClientCerts::Optional).await
    }

    async fn start_with(
        ca: Arc<ClusterCa>,
        server_creds: &Credentials,
        guard: Guard,
        client_certs: ClientCerts,
    ) -> Self {
        skiff_pki::install_crypto_provider();
        let secrets = JoinSecrets::generate().expect("secrets");
        let revoked = RevocationSet::new();
        let authz = Authorizer::new(ca.cluster_id(), revoked.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = TestJoin {
            ca: ca.clone(),
            secrets: secrets.clone(),
            authz: authz.clone(),
            calls: calls.clone(),
            seen: seen.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let (tx, rx) = oneshot::channel::<()>();
        let mut builder = Server::builder()
            .tls_config(server_tls_config_with(server_creds, client_certs).expect("tls"))
            .expect("server tls");
        let shutdown = async {
            let _ = rx.await;
        };
        match guard {
            Guard::PerHandler => {
                let router = builder.add_service(pb::join_server::JoinServer::new(svc));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            }
            Guard::AdminInterceptor => {
                let router = builder.add_service(pb::join_server::JoinServer::with_interceptor(
                    svc,
                    authz.interceptor(&[Role::Admin]),
                ));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            }
        }
        Cluster {
            ca,
            secrets,
            revoked,
            addr,
            calls,
            seen,
            _shutdown: tx,
        }
    }

    fn token(&self, role: Role) -> JoinToken {
        self.secrets.token(self.ca.digest(), role)
    }

    fn issue(&self, node: &str, role: Role) -> Credentials {
        self.ca
            .issue_local(&SignRequest {
                node_id: node.into(),
                role,
                ttl: TTL,
                extra_names: vec![],
            })
            .expect("issue")
            .0
    }

    /// An mTLS client to the master with `creds` (server verified as `skiff-master`).
    async fn client(
        &self,
        creds: &Credentials,
    ) -> Result<pb::join_client::JoinClient<Channel>, String> {
        let ep = endpoint(
            &self.addr.to_string(),
            client_tls_config(creds).expect("tls"),
        )
        .expect("endpoint");
        ep.connect()
            .await
            .map(pb::join_client::JoinClient::new)
            .map_err(|err| skiff_pki::error_chain(&err))
    }

    /// A client that knows only the CA digest from the token.
    async fn pinned_client(
        &self,
        digest: CaDigest,
    ) -> Result<pb::join_client::JoinClient<Channel>, PinError> {
        connect_pinned(&self.addr.to_string(), digest)
            .await
            .map(pb::join_client::JoinClient::new)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn join_request(token: &JoinToken, node: &str, key: &NodeKey) -> pb::JoinRequest {
    pb::JoinRequest {
        token: token.to_string(),
        csr_pem: key.csr_pem().expect("csr"),
        hostname: node.into(),
        advertise_addr: String::new(),
    }
}

/// A handshake failure surfaces on the first call (with TLS 1.3 the client sends its
/// certificate after it considers the handshake done): the server's TLS alert must be in
/// the error and no handler may have run.
fn assert_refused_by_tls(
    result: Result<impl std::fmt::Debug, Status>,
    cluster: &Cluster,
    calls_before: usize,
    what: &str,
    alert: &str,
) {
    let status = result.expect_err(what);
    let chain = skiff_pki::error_chain(&status);
    assert!(
        chain.contains(&format!("received fatal alert: {alert}")),
        "{what}: expected TLS alert {alert}, got {chain}"
    );
    assert!(
        !matches!(
            status.code(),
            tonic::Code::Ok | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{what}: expected a transport failure, got {status:?}"
    );
    assert_eq!(
        cluster.calls(),
        calls_before,
        "{what}: a handler ran: {status:?}"
    );
}

#[tokio::test]
async fn a_node_joins_with_a_pinned_ca_and_then_renews_over_mtls() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let token = cluster.token(Role::Worker);
    // The joiner has only the token text.
    let token: JoinToken = token.to_string().parse().expect("token");
    let key = NodeKey::generate().expect("key");

    let mut join = cluster
        .pinned_client(token.ca_digest)
        .await
        .expect("pinned");
    let resp = join
        .join_cluster(join_request(&token, "w1", &key))
        .await
        .expect("join")
        .into_inner();
    // The CA handed over must be the one the token pinned.
    assert_eq!(CaDigest::of_pem(&resp.ca_pem).expect("ca"), token.ca_digest);
    let creds = Credentials {
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_pem,
        key_pem: key.to_pem(),
    };
    let info = creds.check().expect("credentials");
    assert_eq!(info.identity.node_id, "w1");
    assert_eq!(info.identity.role, Role::Worker);

    let mut client = cluster.client(&creds).await.expect("mtls connect");
    let renewed = client
        .renew_certificate(pb::RenewRequest {
            csr_pem: key.csr_pem().expect("csr"),
        })
        .await
        .expect("renew")
        .into_inner();
    let renewed_info = skiff_pki::CertInfo::from_pem(&renewed.cert_pem).expect("renewed");
    assert_eq!(renewed_info.identity.node_id, "w1");
    assert_eq!(renewed_info.identity.role, Role::Worker);
    assert_ne!(renewed_info.identity.serial, info.identity.serial);

    let seen = cluster.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].node_id, "w1");
    assert_eq!(seen[0].cluster_id, "c1");
    assert_eq!(seen[0].serial, info.identity.serial);
}

#[tokio::test]
async fn a_manager_token_yields_a_manager_certificate_usable_as_a_master() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let token = cluster.token(Role::Manager);
    let key = NodeKey::generate().expect("key");
    let mut join = cluster
        .pinned_client(token.ca_digest)
        .await
        .expect("pinned");
    let resp = join
        .join_cluster(join_request(&token, "m2", &key))
        .await
        .expect("join")
        .into_inner();
    assert_eq!(resp.role, pb::NodeRole::Manager as i32);
    let creds = Credentials {
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_pem,
        key_pem: key.to_pem(),
    };
    // The new master can serve: a client verifies it as `skiff-master`.
    let m2 = Cluster::start_with(
        cluster.ca.clone(),
        &creds,
        Guard::PerHandler,
        ClientCerts::Optional,
    )
    .await;
    let worker = m2.issue("w9", Role::Worker);
    let mut client = m2.client(&worker).await.expect("connect to m2");
    client
        .renew_certificate(pb::RenewRequest {
            csr_pem: NodeKey::generate().expect("key").csr_pem().expect("csr"),
        })
        .await
        .expect("renew at m2");
}

#[tokio::test]
async fn without_a_client_certificate_join_works_but_renewal_is_refused() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let mut join = cluster
        .pinned_client(cluster.ca.digest())
        .await
        .expect("pinned");
    let status = join
        .renew_certificate(pb::RenewRequest {
            csr_pem: NodeKey::generate().expect("key").csr_pem().expect("csr"),
        })
        .await
        .expect_err("no client certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("needs a client certificate"),
        "{status:?}"
    );
    // The same connection may still join.
    join.join_cluster(join_request(
        &cluster.token(Role::Worker),
        "w1",
        &NodeKey::generate().expect("key"),
    ))
    .await
    .expect("join without a certificate");
}

#[tokio::test]
async fn a_wrong_or_rotated_token_is_refused() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let mut join = cluster
        .pinned_client(cluster.ca.digest())
        .await
        .expect("pinned");
    let key = NodeKey::generate().expect("key");
    let stale = JoinToken {
        ca_digest: cluster.ca.digest(),
        secret: skiff_pki::TokenSecret::generate().expect("secret"),
    };
    let status = join
        .join_cluster(join_request(&stale, "w1", &key))
        .await
        .expect_err("unknown secret");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("token rejected"), "{status:?}");

    let mut req = join_request(&cluster.token(Role::Worker), "w1", &key);
    req.token = "SKIFF-1-nope".into();
    let status = join.join_cluster(req).await.expect_err("malformed");
    assert!(
        status.message().starts_with("malformed token"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_wrong_pinned_digest_is_refused_at_the_handshake() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let other = ClusterCa::generate("c2").expect("other ca");
    let err = cluster
        .pinned_client(other.digest())
        .await
        .expect_err("wrong digest");
    let text = err.to_string();
    assert!(matches!(err, PinError::Connect { .. }), "{text}");
    assert!(text.contains("no CA with the pinned digest"), "{text}");
    assert!(text.contains(&other.digest().to_string()), "{text}");
    assert_eq!(cluster.calls(), 0);
}

#[tokio::test]
async fn a_server_not_signed_by_the_pinned_ca_is_refused_even_if_it_sends_that_ca() {
    // An impostor serves its own leaf followed by the real CA certificate: the digest is
    // present in the chain, but the leaf does not verify against it.
    let real = ClusterCa::generate("c1").expect("real");
    let fake = Arc::new(ClusterCa::generate("c1").expect("fake"));
    let (mut impostor, _) = fake
        .issue_local(&SignRequest {
            node_id: "m1".into(),
            role: Role::Manager,
            ttl: TTL,
            extra_names: vec![],
        })
        .expect("impostor cert");
    impostor.ca_pem = real.cert_pem().to_owned();
    let cluster =
        Cluster::start_with(fake, &impostor, Guard::PerHandler, ClientCerts::Optional).await;
    let err = cluster
        .pinned_client(real.digest())
        .await
        .expect_err("leaf not signed by the pinned CA");
    assert!(matches!(err, PinError::Connect { .. }), "{err}");
    assert_eq!(cluster.calls(), 0);
}

#[tokio::test]
async fn a_certificate_from_another_cluster_is_refused_at_the_handshake() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let other = ClusterCa::generate("c2").expect("other ca");
    let (mut foreign, _) = other
        .issue_local(&SignRequest {
            node_id: "w1".into(),
            role: Role::Worker,
            ttl: TTL,
            extra_names: vec![],
        })
        .expect("foreign");
    // It trusts our CA for the server, so only its own certificate can fail.
    foreign.ca_pem = cluster.ca.cert_pem().to_owned();
    let result = match cluster.client(&foreign).await {
        Err(err) => Err(Status::unavailable(err)),
        Ok(mut c) => c
            .renew_certificate(pb::RenewRequest {
                csr_pem: NodeKey::generate().expect("key").csr_pem().expect("csr"),
            })
            .await
            .map(drop),
    };
    assert_refused_by_tls(
        result,
        &cluster,
        0,
        "certificate of another cluster",
        "UnknownCA",
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_at_the_handshake() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let (expired, issued) = cluster
        .ca
        .issue_local_at(
            &SignRequest {
                node_id: "w1".into(),
                role: Role::Worker,
                ttl: TTL,
                extra_names: vec![],
            },
            two_hours_ago,
        )
        .expect("issue");
    assert!(issued.not_after < SystemTime::now());
    let result = match cluster.client(&expired).await {
        Err(err) => Err(Status::unavailable(err)),
        Ok(mut c) => c
            .renew_certificate(pb::RenewRequest {
                csr_pem: NodeKey::generate().expect("key").csr_pem().expect("csr"),
            })
            .await
            .map(drop),
    };
    assert_refused_by_tls(
        result,
        &cluster,
        0,
        "expired certificate",
        "CertificateExpired",
    );
}

#[tokio::test]
async fn a_revoked_serial_is_refused() {
    let cluster = Cluster::start(Guard::PerHandler).await;
    let worker = cluster.issue("w1", Role::Worker);
    let serial = worker.info().expect("info").identity.serial;
    let mut client = cluster.client(&worker).await.expect("connect");
    let renew = || pb::RenewRequest {
        csr_pem: NodeKey::generate().expect("key").csr_pem().expect("csr"),
    };
    client
        .renew_certificate(renew())
        .await
        .expect("before revocation");

    cluster.revoked.revoke(serial.clone());
    // Same connection: the check is per call, so an open connection is cut off too.
    let status = client
        .renew_certificate(renew())
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(status.message().contains(serial.as_str()), "{status:?}");

    // Another node's certificate still works.
    let other = cluster.issue("w2", Role::Worker);
    let mut other_client = cluster.client(&other).await.expect("connect");
    other_client
        .renew_certificate(renew())
        .await
        .expect("w2 unaffected");
}

#[tokio::test]
async fn the_interceptor_admits_admins_and_tells_the_handler_who_called() {
    let cluster = Cluster::start(Guard::AdminInterceptor).await;
    let admin = cluster.issue("admin", Role::Admin);
    let mut client = cluster.client(&admin).await.expect("connect");
    client
        .join_cluster(join_request(
            &cluster.token(Role::Worker),
            "w1",
            &NodeKey::generate().expect("key"),
        ))
        .await
        .expect("admin may call");
    let seen = cluster.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].role, Role::Admin);
    assert_eq!(seen[0].node_id, "admin");

    let worker = cluster.issue("w1", Role::Worker);
    let mut client = cluster.client(&worker).await.expect("connect");
    let status = client
        .join_cluster(join_request(
            &cluster.token(Role::Worker),
            "w2",
            &NodeKey::generate().expect("key"),
        ))
        .await
        .expect_err("worker refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("needs role admin"), "{status:?}");

    let mut anonymous = cluster
        .pinned_client(cluster.ca.digest())
        .await
        .expect("pinned");
    let status = anonymous
        .join_cluster(join_request(
            &cluster.token(Role::Worker),
            "w3",
            &NodeKey::generate().expect("key"),
        ))
        .await
        .expect_err("anonymous refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        cluster.calls(),
        1,
        "only the admin's call reached the handler"
    );
}

#[tokio::test]
async fn a_server_without_the_master_name_is_refused_by_clients() {
    // A worker certificate (no `skiff-master` SAN) serving as if it were a master.
    let ca = Arc::new(ClusterCa::generate("c1").expect("ca"));
    let (worker_server, _) = ca
        .issue_local(&SignRequest {
            node_id: "w1".into(),
            role: Role::Worker,
            ttl: TTL,
            extra_names: vec![],
        })
        .expect("cert");
    let cluster =
        Cluster::start_with(ca, &worker_server, Guard::PerHandler, ClientCerts::Optional).await;
    let admin = cluster.issue("admin", Role::Admin);
    let err = cluster.client(&admin).await.expect_err("not a master");
    assert!(
        err.contains("skiff-master") || err.to_lowercase().contains("name"),
        "{err}"
    );
    let pinned = cluster
        .pinned_client(cluster.ca.digest())
        .await
        .expect_err("not a master either");
    assert!(matches!(pinned, PinError::Connect { .. }), "{pinned}");
}

#[tokio::test]
async fn a_master_dials_an_agent_by_its_node_name_with_client_certs_required() {
    let ca = Arc::new(ClusterCa::generate("c1").expect("ca"));
    let (agent, _) = ca
        .issue_local(&SignRequest {
            node_id: "w1".into(),
            role: Role::Worker,
            ttl: TTL,
            extra_names: vec![],
        })
        .expect("agent cert");
    let server = Cluster::start_with(ca, &agent, Guard::PerHandler, ClientCerts::Required).await;
    let master = server.issue("m1", Role::Manager);
    let addr = server.addr.to_string();

    let tls = client_tls_config_for(&master, &node_server_name("w1")).expect("tls");
    let channel = endpoint(&addr, tls)
        .expect("ep")
        .connect()
        .await
        .expect("connect");
    pb::join_client::JoinClient::new(channel)
        .renew_certificate(pb::RenewRequest {
            csr_pem: NodeKey::generate().expect("key").csr_pem().expect("csr"),
        })
        .await
        .expect("master reaches agent w1");

    // Dialing w1's address while expecting node w2 fails: names are checked.
    let tls = client_tls_config_for(&master, &node_server_name("w2")).expect("tls");
    endpoint(&addr, tls)
        .expect("ep")
        .connect()
        .await
        .expect_err("w1 is not w2");

    // No client certificate: this server refuses the handshake.
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .domain_name(node_server_name("w1"))
        .ca_certificate(tonic::transport::Certificate::from_pem(
            server.ca.cert_pem(),
        ));
    let result = match endpoint(&addr, anonymous).expect("ep").connect().await {
        Err(err) => Err(Status::unavailable(skiff_pki::error_chain(&err))),
        Ok(channel) => pb::join_client::JoinClient::new(channel)
            .join_cluster(join_request(
                &server.token(Role::Worker),
                "w5",
                &NodeKey::generate().expect("key"),
            ))
            .await
            .map(drop),
    };
    assert_refused_by_tls(
        result,
        &server,
        1,
        "no client certificate on a Required server",
        "CertificateRequired",
    );
}
