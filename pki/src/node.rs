//! A node's side of the PKI: its private key (made on the node, never sent anywhere), the
//! CSR it sends when joining or renewing, and its credentials on disk
//! (`<dir>/ca.pem`, `<dir>/<stem>.pem`, `<dir>/<stem>-key.pem` with the key 0600).

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::cert::{CertError, CertInfo};
use crate::keyfile::{self, KeyFileError};

/// File stem of `skiffctl`'s admin credentials: `admin.pem`, `admin-key.pem`.
pub const ADMIN_FILE_STEM: &str = "admin";
/// File stem of a master's or agent's own credentials: `node.pem`, `node-key.pem`.
pub const NODE_FILE_STEM: &str = "node";

/// Why a node key or credentials could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot generate a node key: {0}")]
    Generate(rcgen::Error),
    #[error("cannot make a certificate signing request: {0}")]
    Csr(rcgen::Error),
    #[error("{what} is not a usable PEM private key: {err}")]
    BadKey { what: String, err: rcgen::Error },
    #[error(transparent)]
    File(#[from] KeyFileError),
    #[error("certificate {what}: {err}")]
    Cert { what: String, err: CertError },
    #[error("key {key} does not belong to certificate {cert}")]
    KeyMismatch { key: String, cert: String },
}

/// A node's private key (ECDSA P-256).
#[derive(Debug)]
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    /// A fresh key.
    pub fn generate() -> Result<Self, NodeError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(NodeError::Generate)?;
        Ok(NodeKey { key })
    }

    /// A key from PEM (PKCS#8).
    pub fn from_pem(pem: &str) -> Result<Self, NodeError> {
        let key = KeyPair::from_pem(pem).map_err(|err| NodeError::BadKey {
            what: "node key".into(),
            err,
        })?;
        Ok(NodeKey { key })
    }

    /// Reads a key file, refusing one that others could read (see [`keyfile::read_private`]).
    pub fn load(path: &Path) -> Result<Self, NodeError> {
        let pem = keyfile::read_private(path)?;
        let key = KeyPair::from_pem(&pem).map_err(|err| NodeError::BadKey {
            what: path.display().to_string(),
            err,
        })?;
        Ok(NodeKey { key })
    }

    /// Writes the key with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), NodeError> {
        keyfile::write_private(path, self.to_pem().as_bytes())?;
        Ok(())
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR for this key. Its subject is a placeholder: the CA decides the identity.
    pub fn csr_pem(&self) -> Result<String, NodeError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skiff node key");
        params.distinguished_name = dn;
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(NodeError::Csr)
    }

    /// Whether the certificate (DER) certifies this key.
    pub fn matches_cert_der(&self, der: &[u8]) -> bool {
        x509_parser::parse_x509_certificate(der).is_ok_and(|(_, x509)| {
            x509.public_key().subject_public_key.data.as_ref()
                == rcgen::PublicKeyData::der_bytes(&self.key)
        })
    }
}

/// Everything a process needs to speak mTLS in the cluster: the CA certificate to trust,
/// its own certificate and its own key (all PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = CertInfo::from_pem(&self.cert_pem)
            .map(|i| format!("{}/{}", i.identity.role, i.identity.node_id))
            .unwrap_or_else(|err| err.to_string());
        f.debug_struct("Credentials")
            .field("cert", &who)
            .finish_non_exhaustive()
    }
}

/// Where [`Credentials`] live inside a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CredentialPaths {
    /// `<dir>/ca.pem`, `<dir>/<stem>.pem`, `<dir>/<stem>-key.pem`.
    pub fn new(dir: &Path, stem: &str) -> Self {
        CredentialPaths {
            ca: dir.join(crate::ca::CA_CERT_FILE),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }
}

impl Credentials {
    /// What the certificate says.
    pub fn info(&self) -> Result<CertInfo, CertError> {
        CertInfo::from_pem(&self.cert_pem)
    }

    /// Checks that all three parse and that the key belongs to the certificate.
    pub fn check(&self) -> Result<CertInfo, NodeError> {
        self.check_named(&CredentialPaths::new(Path::new(""), "(memory)"))
    }

    fn check_named(&self, paths: &CredentialPaths) -> Result<CertInfo, NodeError> {
        let cert_err = |path: &Path| {
            let what = path.display().to_string();
            move |err| NodeError::Cert { what, err }
        };
        crate::cert::check_ca_pem(&self.ca_pem).map_err(cert_err(&paths.ca))?;
        let info = CertInfo::from_pem(&self.cert_pem).map_err(cert_err(&paths.cert))?;
        let key = NodeKey::from_pem(&self.key_pem).map_err(|err| match err {
            NodeError::BadKey { err, .. } => NodeError::BadKey {
                what: paths.key.display().to_string(),
                err,
            },
            other => other,
        })?;
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|err| {
            NodeError::Cert {
                what: paths.cert.display().to_string(),
                err: CertError::NoPem {
                    reason: err.to_string(),
                },
            }
        })?;
        if !key.matches_cert_der(der.as_ref()) {
            return Err(NodeError::KeyMismatch {
                key: paths.key.display().to_string(),
                cert: paths.cert.display().to_string(),
            });
        }
        Ok(info)
    }

    /// Reads `<dir>/ca.pem`, `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem` (the key must be
    /// 0600 and ours) and checks that the key belongs to the certificate.
    pub fn load(dir: &Path, stem: &str) -> Result<Self, NodeError> {
        let paths = CredentialPaths::new(dir, stem);
        let creds = Credentials {
            ca_pem: keyfile::read_public(&paths.ca)?,
            cert_pem: keyfile::read_public(&paths.cert)?,
            key_pem: keyfile::read_private(&paths.key)?,
        };
        creds.check_named(&paths)?;
        Ok(creds)
    }

    /// Writes the three files (key first, 0600; the certificate last, so its presence
    /// means the set is complete; each file replaced atomically).
    /// Renewal that keeps the key rewrites only the certificate, so a crash never leaves
    /// a key and a certificate that do not belong together.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<CredentialPaths, NodeError> {
        let paths = CredentialPaths::new(dir, stem);
        // The certificate last: whoever waits for it finds the key and the CA there.
        keyfile::write_private(&paths.key, self.key_pem.as_bytes())?;
        keyfile::write_public(&paths.ca, self.ca_pem.as_bytes())?;
        keyfile::write_public(&paths.cert, self.cert_pem.as_bytes())?;
        Ok(paths)
    }

    /// Replaces only the certificate file (after a renewal with the same key).
    pub fn save_cert(&self, dir: &Path, stem: &str) -> Result<(), NodeError> {
        let paths = CredentialPaths::new(dir, stem);
        keyfile::write_public(&paths.cert, self.cert_pem.as_bytes())?;
        Ok(())
    }

    /// The tonic identity (certificate + key) for a client or a server.
    pub fn tonic_identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}
