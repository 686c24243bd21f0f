//! The CA on its own: generation, its files and their permissions, what a signed
//! certificate says (and what a CSR cannot make it say), admin credentials, renewal timing.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use skiff_pki::{
    CaDigest, CaError, CertInfo, ClusterCa, CredentialPaths, Credentials, KeyFileError,
    MASTER_TLS_NAME, NodeError, NodeKey, Role, SignRequest, needs_renewal, node_server_name,
};

fn req(node: &str, role: Role) -> SignRequest {
    SignRequest {
        node_id: node.into(),
        role,
        ttl: Duration::from_secs(3600),
        extra_names: vec![],
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn the_ca_round_trips_through_its_directory() {
    let ca = ClusterCa::generate("c1").expect("generate");
    assert_eq!(ca.cluster_id(), "c1");
    assert_eq!(CaDigest::of_pem(ca.cert_pem()).expect("pem"), ca.digest());

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    ca.save(&ca_dir).expect("save");
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&ca_dir.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&ca_dir.join("ca.pem")), 0o644);

    let loaded = ClusterCa::load(&ca_dir).expect("load");
    assert_eq!(loaded.digest(), ca.digest());
    assert_eq!(loaded.cluster_id(), "c1");
    assert_eq!(loaded.key_pem(), ca.key_pem());

    // The reloaded CA signs certificates that name the same issuer and cluster.
    let key = NodeKey::generate().expect("key");
    let issued = loaded
        .sign_csr(&key.csr_pem().expect("csr"), &req("n1", Role::Worker))
        .expect("sign");
    let info = CertInfo::from_pem(&issued.cert_pem).expect("info");
    assert_eq!(info.identity.cluster_id, "c1");
    assert_eq!(info.identity.serial, issued.serial);
    assert_eq!(info.not_after, issued.not_after);
}

#[test]
fn a_ca_key_readable_by_others_is_refused() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let dir = tempfile::tempdir().expect("tempdir");
    ca.save(dir.path()).expect("save");
    let key = dir.path().join("ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = ClusterCa::load(dir.path()).expect_err("0644 key");
    assert!(
        matches!(
            err,
            CaError::File(KeyFileError::TooOpen { mode: 0o644, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ca-key.pem"), "{err}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ClusterCa::load(dir.path()).expect("0600 key loads");
}

#[test]
fn a_ca_with_a_key_that_is_not_its_own_is_refused() {
    let a = ClusterCa::generate("c1").expect("a");
    let b = ClusterCa::generate("c1").expect("b");
    let err = ClusterCa::from_pem(a.cert_pem(), &b.key_pem()).expect_err("mismatch");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
}

#[test]
fn certificates_name_node_role_and_cluster() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let key = NodeKey::generate().expect("key");
    let csr = key.csr_pem().expect("csr");

    let mut manager = req("m1", Role::Manager);
    manager.extra_names = vec!["10.0.0.7".into(), "m1.example".into()];
    let info =
        CertInfo::from_pem(&ca.sign_csr(&csr, &manager).expect("sign").cert_pem).expect("info");
    assert_eq!(info.identity.node_id, "m1");
    assert_eq!(info.identity.role, Role::Manager);
    assert_eq!(info.identity.cluster_id, "c1");
    for name in [
        MASTER_TLS_NAME,
        &node_server_name("m1"),
        "10.0.0.7",
        "m1.example",
    ] {
        assert!(
            info.names.iter().any(|n| n == name),
            "{name} in {:?}",
            info.names
        );
    }

    let worker = CertInfo::from_pem(
        &ca.sign_csr(&csr, &req("w1", Role::Worker))
            .expect("sign")
            .cert_pem,
    )
    .expect("info");
    assert!(
        !worker.names.iter().any(|n| n == MASTER_TLS_NAME),
        "{:?}",
        worker.names
    );

    let a = ca.sign_csr(&csr, &req("w1", Role::Worker)).expect("sign");
    let b = ca.sign_csr(&csr, &req("w1", Role::Worker)).expect("sign");
    assert_ne!(a.serial, b.serial, "serials are random");
}

#[test]
fn a_csr_cannot_choose_its_identity() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec![MASTER_TLS_NAME.to_owned()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "other");
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");

    let issued = ca.sign_csr(&csr, &req("w1", Role::Worker)).expect("sign");
    let info = CertInfo::from_pem(&issued.cert_pem).expect("info");
    assert_eq!(info.identity.node_id, "w1");
    assert_eq!(info.identity.role, Role::Worker);
    assert_eq!(info.identity.cluster_id, "c1");
    assert!(
        !info.names.iter().any(|n| n == MASTER_TLS_NAME),
        "{:?}",
        info.names
    );
    skiff_pki::check_ca_pem(&issued.cert_pem).expect_err("a node certificate is no CA");
}

#[test]
fn a_tampered_csr_is_refused() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let csr = NodeKey::generate().expect("key").csr_pem().expect("csr");
    // Change one base64 character inside the body (past the header, before the end).
    let mut bytes = csr.into_bytes();
    let pos = 80;
    bytes[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    let err = ca
        .sign_csr(&tampered, &req("w1", Role::Worker))
        .expect_err("tampered");
    assert!(matches!(err, CaError::Csr(_)), "{err}");
}

#[test]
fn bad_names_and_lifetimes_are_refused() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let csr = NodeKey::generate().expect("key").csr_pem().expect("csr");
    for bad in ["", "Node", "a/b", "-x"] {
        let err = ca.sign_csr(&csr, &req(bad, Role::Worker)).expect_err(bad);
        assert!(err.to_string().contains("node id"), "{err}");
    }
    let mut r = req("n1", Role::Worker);
    r.ttl = Duration::ZERO;
    assert!(matches!(ca.sign_csr(&csr, &r), Err(CaError::BadTtl { .. })));
    let mut r = req("n1", Role::Manager);
    r.extra_names = vec!["not a name!".into()];
    assert!(matches!(
        ca.sign_csr(&csr, &r),
        Err(CaError::BadName { .. })
    ));
    assert!(ClusterCa::generate("Cluster One").is_err());
}

#[test]
fn admin_credentials_are_written_where_skiffctl_reads_them() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_dir = dir.path().join("admin");
    let (creds, issued) = ca
        .issue_admin(&admin_dir, "admin", Duration::from_secs(3600))
        .expect("admin");
    let paths = CredentialPaths::new(&admin_dir, "admin");
    assert_eq!(paths.ca, admin_dir.join("ca.pem"));
    assert_eq!(paths.cert, admin_dir.join("admin.pem"));
    assert_eq!(paths.key, admin_dir.join("admin-key.pem"));
    assert_eq!(mode(&paths.key), 0o600);
    assert_eq!(
        std::fs::read_to_string(&paths.ca).expect("ca"),
        ca.cert_pem()
    );

    let loaded = Credentials::load(&admin_dir, "admin").expect("load");
    assert_eq!(loaded, creds);
    let info = loaded.check().expect("check");
    assert_eq!(info.identity.role, Role::Admin);
    assert_eq!(info.identity.serial, issued.serial);

    // A key that does not belong to the certificate is caught at load.
    NodeKey::generate()
        .expect("key")
        .save(&paths.key)
        .expect("save other key");
    let err = Credentials::load(&admin_dir, "admin").expect_err("mismatch");
    assert!(matches!(err, NodeError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("admin-key.pem"), "{err}");
}

#[test]
fn renewal_is_due_two_thirds_into_a_certificates_life() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let now = SystemTime::now();
    let (creds, issued) = ca
        .issue_local_at(&req("n1", Role::Worker), now)
        .expect("issue");
    let info = creds.info().expect("info");
    // The certificate starts BACKDATE early; the lifetime counts from there.
    let lifetime = Duration::from_secs(3600) + skiff_pki::BACKDATE;
    let due = info.not_before + lifetime * 2 / 3;
    assert_eq!(info.renewal_due_at(), due);
    assert!(!needs_renewal(&issued.cert_pem, now).expect("parse"));
    assert!(!needs_renewal(&issued.cert_pem, due - Duration::from_secs(1)).expect("parse"));
    assert!(needs_renewal(&issued.cert_pem, due).expect("parse"));
    assert!(needs_renewal(&issued.cert_pem, now + Duration::from_secs(7200)).expect("parse"));
}

#[test]
fn a_renewal_keeps_node_role_and_extra_names() {
    let ca = ClusterCa::generate("c1").expect("generate");
    let mut first = req("m1", Role::Manager);
    first.extra_names = vec!["10.0.0.7".into()];
    let (creds, _) = ca.issue_local(&first).expect("issue");
    let info = creds.info().expect("info");
    let again = SignRequest::renewing(&info, Duration::from_secs(60));
    assert_eq!(again.node_id, "m1");
    assert_eq!(again.role, Role::Manager);
    assert_eq!(again.extra_names, vec!["10.0.0.7".to_owned()]);
    assert_eq!(again.ttl, Duration::from_secs(60));
}
