//! What a skiff certificate says and how to read it back: the identity (CN = node id,
//! OU = role, O = cluster id, URI SAN `skiff://<cluster>/<role>/<node>`), serial, validity,
//! and when it is due for renewal. Pure functions over DER/PEM, no I/O.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

/// The fixed DNS name every master certificate carries; clients verify masters by this
/// name plus the cluster CA, so master addresses can change (swarmkit: "swarm-manager").
pub const MASTER_TLS_NAME: &str = "skiff-master";

/// The DNS suffix of per-node server names: node `n1` serves as `n1.node.skiff`.
const NODE_NAME_SUFFIX: &str = ".node.skiff";

/// Why a certificate could not be read as a skiff certificate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("no PEM certificate found: {reason}")]
    NoPem { reason: String },
    #[error("certificate is not valid DER X.509: {reason}")]
    Der { reason: String },
    #[error("certificate subject has no {field} (a skiff certificate names {what} there)")]
    MissingField {
        field: &'static str,
        what: &'static str,
    },
    #[error("certificate names unknown role {role:?} (expected worker, manager or admin)")]
    UnknownRole { role: String },
    #[error("certificate is not a CA certificate (basicConstraints CA is false)")]
    NotCa,
    #[error("certificate subject says {subject:?} but its URI SAN says {uri:?}")]
    Inconsistent { subject: String, uri: String },
    #[error(
        "{what} {value:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')"
    )]
    InvalidName { what: &'static str, value: String },
}

/// What a certificate allows its holder to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// An agent: the dispatcher session, its own certificate renewal.
    Worker,
    /// A master: the raft transport, forwarding, calls to agents (logs, exec).
    Manager,
    /// `skiffctl`: the cluster API.
    Admin,
}

impl Role {
    /// The name written into certificates (the OU).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "worker" => Ok(Role::Worker),
            "manager" => Ok(Role::Manager),
            "admin" => Ok(Role::Admin),
            _ => Err(CertError::UnknownRole { role: s.to_owned() }),
        }
    }
}

/// A certificate serial number as lowercase hex without leading zero bytes: the form
/// stored in `Node.cert_serial` and `Cluster.revoked_cert_serials`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(String);

impl Serial {
    /// From the big-endian bytes of the DER INTEGER.
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let hex = hex::encode(&bytes[start..]);
        Serial(if hex.is_empty() { "00".into() } else { hex })
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Serial {
    /// Normalises any case and `:` separators (openssl prints `0A:1B:..`).
    fn from(s: &str) -> Self {
        let clean: String = s
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_lowercase();
        let trimmed = clean.trim_start_matches("00");
        Serial(if trimmed.is_empty() {
            "00".into()
        } else {
            trimmed.to_owned()
        })
    }
}

/// Who holds a certificate, as the certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The CN.
    pub node_id: String,
    /// The OU.
    pub role: Role,
    /// The O.
    pub cluster_id: String,
    /// What the revocation set is keyed by.
    pub serial: Serial,
}

/// Everything skiff reads from one of its certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: PeerIdentity,
    /// Start of validity (whole seconds; skiff backdates it by `BACKDATE`).
    pub not_before: SystemTime,
    /// End of validity (whole seconds).
    pub not_after: SystemTime,
    /// DNS names and IP addresses in the subject alternative names.
    pub names: Vec<String>,
}

impl CertInfo {
    /// Reads the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| CertError::NoPem {
                reason: err.to_string(),
            })?;
        Self::from_der(der.as_ref())
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, x509) = x509_parser::parse_x509_certificate(der).map_err(|err| CertError::Der {
            reason: err.to_string(),
        })?;
        let first =
            |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>,
             field: &'static str,
             what: &'static str| {
                it.next()
                    .and_then(|a| a.as_str().ok())
                    .map(str::to_owned)
                    .ok_or(CertError::MissingField { field, what })
            };
        let subject = x509.subject();
        let node_id = first(&mut subject.iter_common_name(), "CN", "the node id")?;
        let role =
            first(&mut subject.iter_organizational_unit(), "OU", "the role")?.parse::<Role>()?;
        let cluster_id = first(&mut subject.iter_organization(), "O", "the cluster id")?;
        let serial = Serial::from_be_bytes(x509.raw_serial());
        let names = alt_names(&x509);
        let want_uri = identity_uri(&cluster_id, role, &node_id);
        if let Some(uri) = names_uri(&x509)
            && uri != want_uri
        {
            return Err(CertError::Inconsistent {
                subject: want_uri,
                uri,
            });
        }
        Ok(CertInfo {
            identity: PeerIdentity {
                node_id,
                role,
                cluster_id,
                serial,
            },
            not_before: to_system_time(x509.validity().not_before.timestamp()),
            not_after: to_system_time(x509.validity().not_after.timestamp()),
            names,
        })
    }

    /// When this certificate should be replaced: two thirds into its lifetime.
    pub fn renewal_due_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime * 2 / 3
    }

    /// Whether `now` is past the renewal point (or past expiry).
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renewal_due_at()
    }

    /// Whether `now` lies inside the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now >= self.not_before && now <= self.not_after
    }
}

/// Whether the certificate in `cert_pem` is past two thirds of its lifetime at `now`.
pub fn needs_renewal(cert_pem: &str, now: SystemTime) -> Result<bool, CertError> {
    Ok(CertInfo::from_pem(cert_pem)?.needs_renewal(now))
}

/// Checks that `pem` holds a CA certificate (basicConstraints CA).
pub fn check_ca_pem(pem: &str) -> Result<(), CertError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| CertError::NoPem {
        reason: err.to_string(),
    })?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|err| CertError::Der {
            reason: err.to_string(),
        })?;
    if x509.is_ca() {
        Ok(())
    } else {
        Err(CertError::NotCa)
    }
}

/// The URI SAN that names a certificate's holder: `skiff://<cluster>/<role>/<node>`.
pub fn identity_uri(cluster_id: &str, role: Role, node_id: &str) -> String {
    format!("skiff://{cluster_id}/{role}/{node_id}")
}

/// The TLS server name a node's certificate carries, for masters dialing an agent.
pub fn node_server_name(node_id: &str) -> String {
    format!("{node_id}{NODE_NAME_SUFFIX}")
}

/// Checks that `value` can be a node or cluster id: one DNS label, so it fits in a DNS
/// SAN (`<node>.node.skiff`) and a URI without escaping.
pub fn check_name(what: &'static str, value: &str) -> Result<(), CertError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

fn alt_names(x509: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn names_uri(x509: &X509Certificate<'_>) -> Option<String> {
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return None;
    };
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(u) if u.starts_with("skiff://") => Some((*u).to_owned()),
        _ => None,
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

fn to_system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_roles_are_named() {
        for r in [Role::Worker, Role::Manager, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        let err = "root".parse::<Role>().expect_err("unknown");
        assert!(err.to_string().contains("\"root\""), "{err}");
    }

    #[test]
    fn serials_are_normalised() {
        assert_eq!(Serial::from_be_bytes(&[0, 0, 0x0a, 0xff]).as_str(), "0aff");
        assert_eq!(Serial::from_be_bytes(&[0, 0]).as_str(), "00");
        assert_eq!(
            Serial::from("00:0A:FF"),
            Serial::from_be_bytes(&[0x0a, 0xff])
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        for ok in [
            "n1",
            "a",
            "4f9c2d1e-0b7a-4c55-9e2f-1a2b3c4d5e6f",
            &"a".repeat(63),
        ] {
            check_name("node id", ok).expect(ok);
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", "a b", &"a".repeat(64)] {
            let err = check_name("node id", bad).expect_err(bad);
            assert!(err.to_string().contains("node id"), "{err}");
        }
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            identity: PeerIdentity {
                node_id: "n1".into(),
                role: Role::Worker,
                cluster_id: "c1".into(),
                serial: Serial::from("01"),
            },
            not_before: start,
            not_after: start + Duration::from_secs(300),
            names: vec![],
        };
        assert_eq!(info.renewal_due_at(), start + Duration::from_secs(200));
        assert!(!info.needs_renewal(start));
        assert!(!info.needs_renewal(start + Duration::from_secs(199)));
        assert!(info.needs_renewal(start + Duration::from_secs(200)));
        assert!(info.needs_renewal(start + Duration::from_secs(400)));
        assert!(info.is_valid_at(start + Duration::from_secs(300)));
        assert!(!info.is_valid_at(start + Duration::from_secs(301)));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            CertInfo::from_pem("nope"),
            Err(CertError::NoPem { .. })
        ));
        assert!(matches!(
            CertInfo::from_der(b"\x30\x03\x01\x01\x00"),
            Err(CertError::Der { .. })
        ));
    }
}
