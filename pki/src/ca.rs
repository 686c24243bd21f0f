//! The cluster CA: made once at `skiff-master init`, kept as `ca.pem` + `ca-key.pem`
//! (0600, owned by root). It signs node certificates from CSRs; everything a certificate
//! says (node id, role, cluster, names, lifetime) comes from the CA's `SignRequest`,
//! never from the CSR, whose only contribution is the public key.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::cert::{self, CertError, CertInfo, MASTER_TLS_NAME, Role, Serial};
use crate::digest::CaDigest;
use crate::keyfile::{self, KeyFileError};
use crate::node::{Credentials, NodeError, NodeKey};

/// File name of the CA certificate inside the CA directory (and of every credentials dir).
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How long the CA certificate is valid.
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The longest lifetime the CA gives a node certificate.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Certificates start this long before they are signed, so a peer whose clock is a little
/// behind accepts them at once.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Why the CA could not be made, loaded, saved or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Name(#[from] CertError),
    #[error("cannot generate the CA key: {0}")]
    Generate(rcgen::Error),
    #[error("cannot create CA directory {path}: {err}")]
    CreateDir {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] KeyFileError),
    #[error("CA certificate {what}: {reason}")]
    BadCaCert { what: String, reason: String },
    #[error("CA key is not a usable PEM private key: {0}")]
    BadKey(rcgen::Error),
    #[error("CA key does not belong to the CA certificate (cluster {cluster_id})")]
    KeyMismatch { cluster_id: String },
    #[error("certificate signing request refused: {0}")]
    Csr(rcgen::Error),
    #[error("extra name {name:?} is neither an IP address nor a DNS name")]
    BadName { name: String },
    #[error("certificate lifetime {ttl:?} is out of range (1 s to {max:?})")]
    BadTtl { ttl: Duration, max: Duration },
    #[error("time {0:?} cannot be written into a certificate")]
    BadTime(SystemTime),
    #[error("signing the certificate for {node_id} failed: {err}")]
    Sign { node_id: String, err: rcgen::Error },
    #[error("the certificate just signed does not read back: {0}")]
    ReadBack(CertError),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// What the CA puts into a node certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignRequest {
    /// The node id (CN); one DNS label.
    pub node_id: String,
    pub role: Role,
    /// Lifetime from now.
    pub ttl: Duration,
    /// More IP addresses or DNS names to put into the SAN (e.g. a master's address).
    pub extra_names: Vec<String>,
}

impl SignRequest {
    /// The request that renews `current`: same node, role and extra names, new lifetime.
    /// The names every certificate of that role gets anyway are not repeated.
    pub fn renewing(current: &CertInfo, ttl: Duration) -> Self {
        let id = &current.identity;
        let implied = [
            MASTER_TLS_NAME.to_owned(),
            cert::node_server_name(&id.node_id),
        ];
        SignRequest {
            node_id: id.node_id.clone(),
            role: id.role,
            ttl,
            extra_names: current
                .names
                .iter()
                .filter(|n| !implied.contains(n))
                .cloned()
                .collect(),
        }
    }
}

/// A certificate the CA signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// The leaf certificate alone (servers append the CA themselves).
    pub cert_pem: String,
    /// For `Node.cert_serial`, and for revocation when the node is removed.
    pub serial: Serial,
    pub not_after: SystemTime,
}

/// The cluster's certificate authority (certificate and signing key).
pub struct ClusterCa {
    cluster_id: String,
    cert_pem: String,
    digest: CaDigest,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for `cluster_id` (one DNS label), valid for [`CA_TTL`].
    pub fn generate(cluster_id: &str) -> Result<Self, CaError> {
        Self::generate_at(cluster_id, SystemTime::now())
    }

    /// [`ClusterCa::generate`] as if the clock read `now`.
    pub fn generate_at(cluster_id: &str, now: SystemTime) -> Result<Self, CaError> {
        cert::check_name("cluster id", cluster_id)?;
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("skiff cluster CA {cluster_id}"));
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        // Path length 0: the CA signs leaves only, never an intermediate.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_cert_time(now.checked_sub(BACKDATE).unwrap_or(now))?.to_datetime();
        params.not_after = to_cert_time(now + CA_TTL)?.to_datetime();
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        Self::from_parts(cert.pem(), cert.der(), key)
    }

    /// The CA from its PEM certificate and PEM key (e.g. replicated to a new master).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|err| {
            CaError::BadCaCert {
                what: "is not PEM".into(),
                reason: err.to_string(),
            }
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(CaError::BadKey)?;
        Self::from_parts(cert_pem.to_owned(), &der, key)
    }

    fn from_parts(
        cert_pem: String,
        der: &CertificateDer<'_>,
        key: KeyPair,
    ) -> Result<Self, CaError> {
        let bad = |what: &str, reason: String| CaError::BadCaCert {
            what: what.to_owned(),
            reason,
        };
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|err| bad("is not X.509", err.to_string()))?;
        if !x509.is_ca() {
            return Err(bad("is not a CA", "basicConstraints CA is false".into()));
        }
        let cluster_id = x509
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| bad("names no cluster", "subject has no O".into()))?;
        if x509.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(CaError::KeyMismatch { cluster_id });
        }
        let issuer = Issuer::from_ca_cert_der(der, key)
            .map_err(|err| bad("cannot sign", err.to_string()))?;
        Ok(ClusterCa {
            cluster_id,
            cert_pem,
            digest: CaDigest::of_der(der),
            issuer,
        })
    }

    /// Loads `<dir>/ca.pem` and `<dir>/ca-key.pem`; the key must be 0600 (or stricter)
    /// and owned by this process's user.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_pem = keyfile::read_public(&dir.join(CA_CERT_FILE))?;
        let key_pem = keyfile::read_private(&dir.join(CA_KEY_FILE))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Writes `<dir>/ca-key.pem` (0600) and `<dir>/ca.pem` (0644); makes `dir` (0700)
    /// if it does not exist.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        create_private_dir(dir)?;
        keyfile::write_private(&dir.join(CA_KEY_FILE), self.key_pem().as_bytes())?;
        keyfile::write_public(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes())?;
        Ok(())
    }

    /// The cluster id (the CA's O).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// sha256 of the CA certificate (DER): what join tokens carry.
    pub fn digest(&self) -> CaDigest {
        self.digest
    }

    /// The CA private key, PEM. Secret: only for handing the CA to another master over an
    /// mTLS link, or for [`ClusterCa::save`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs the public key of `csr_pem` into a certificate saying what `req` says.
    pub fn sign_csr(&self, csr_pem: &str, req: &SignRequest) -> Result<IssuedCert, CaError> {
        self.sign_csr_at(csr_pem, req, SystemTime::now())
    }

    /// [`ClusterCa::sign_csr`] as if the clock read `now`.
    pub fn sign_csr_at(
        &self,
        csr_pem: &str,
        req: &SignRequest,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        // from_pem verifies the CSR's self-signature: the requester holds the key.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::Csr)?;
        let params = self.leaf_params(req, now)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|err| CaError::Sign {
                node_id: req.node_id.clone(),
                err,
            })?;
        let info = CertInfo::from_der(cert.der()).map_err(CaError::ReadBack)?;
        tracing::info!(
            node = %req.node_id,
            role = %req.role,
            serial = %info.identity.serial,
            ttl = ?req.ttl,
            "certificate issued"
        );
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial: info.identity.serial,
            not_after: info.not_after,
        })
    }

    /// Makes a key here and signs it: for this master's own certificate at `init` and for
    /// admin certificates. Nodes elsewhere send a CSR instead.
    pub fn issue_local(&self, req: &SignRequest) -> Result<(Credentials, IssuedCert), CaError> {
        self.issue_local_at(req, SystemTime::now())
    }

    /// [`ClusterCa::issue_local`] as if the clock read `now`.
    pub fn issue_local_at(
        &self,
        req: &SignRequest,
        now: SystemTime,
    ) -> Result<(Credentials, IssuedCert), CaError> {
        let key = NodeKey::generate()?;
        let issued = self.sign_csr_at(&key.csr_pem()?, req, now)?;
        let creds = Credentials {
            ca_pem: self.cert_pem.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: key.to_pem(),
        };
        Ok((creds, issued))
    }

    /// Issues an admin certificate named `name` for `skiffctl` and writes
    /// `<dir>/ca.pem`, `<dir>/admin.pem`, `<dir>/admin-key.pem` (0600).
    pub fn issue_admin(
        &self,
        dir: &Path,
        name: &str,
        ttl: Duration,
    ) -> Result<(Credentials, IssuedCert), CaError> {
        let (creds, issued) = self.issue_local(&SignRequest {
            node_id: name.to_owned(),
            role: Role::Admin,
            ttl,
            extra_names: Vec::new(),
        })?;
        create_private_dir(dir)?;
        creds.save(dir, crate::node::ADMIN_FILE_STEM)?;
        Ok((creds, issued))
    }

    fn leaf_params(
        &self,
        req: &SignRequest,
        now: SystemTime,
    ) -> Result<CertificateParams, CaError> {
        cert::check_name("node id", &req.node_id)?;
        if req.ttl < Duration::from_secs(1) || req.ttl > MAX_CERT_TTL {
            return Err(CaError::BadTtl {
                ttl: req.ttl,
                max: MAX_CERT_TTL,
            });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.node_id.as_str());
        dn.push(DnType::OrganizationalUnitName, req.role.as_str());
        dn.push(DnType::OrganizationName, self.cluster_id.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = to_cert_time(now.checked_sub(BACKDATE).unwrap_or(now))?.to_datetime();
        params.not_after = to_cert_time(now + req.ttl)?.to_datetime();

        let uri = cert::identity_uri(&self.cluster_id, req.role, &req.node_id);
        let mut sans = vec![SanType::URI(ia5(&uri)?)];
        match req.role {
            Role::Admin => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            Role::Worker | Role::Manager => {
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                sans.push(SanType::DnsName(ia5(&cert::node_server_name(
                    &req.node_id,
                ))?));
                if req.role == Role::Manager {
                    sans.push(SanType::DnsName(ia5(MASTER_TLS_NAME)?));
                }
                for name in &req.extra_names {
                    sans.push(extra_san(name)?);
                }
            }
        }
        params.subject_alt_names = sans;
        Ok(params)
    }
}

fn extra_san(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !dns_ok {
        return Err(CaError::BadName {
            name: name.to_owned(),
        });
    }
    Ok(SanType::DnsName(ia5(name)?))
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, CaError> {
    rcgen::string::Ia5String::try_from(s).map_err(|_| CaError::BadName { name: s.to_owned() })
}

/// 16 random bytes, positive and without a leading zero byte (RFC 5280: at most 20
/// octets, positive; unpredictable serials also blunt chosen-prefix attacks).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| CaError::Generate(rcgen::Error::RingUnspecified))?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

/// A time as rcgen wants it (`time::OffsetDateTime`, reached through x509-parser so that
/// skiff needs no direct `time` dependency): whole seconds since the epoch.
fn to_cert_time(t: SystemTime) -> Result<x509_parser::time::ASN1Time, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::BadTime(t))?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| CaError::BadTime(t))?;
    x509_parser::time::ASN1Time::from_timestamp(secs).map_err(|_| CaError::BadTime(t))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| CaError::CreateDir {
            path: dir.to_owned(),
            err,
        })
}
