//! The CA digest: sha256 of the CA certificate's DER bytes, shown as 64 lowercase hex
//! digits. Join tokens carry it so a joining machine can pin the CA before it has one.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a CA digest or the certificate it should be taken from was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("CA digest {input:?} is not 64 hex digits (sha256 of the CA certificate)")]
    Malformed { input: String },
    #[error("no PEM certificate found in the CA certificate text: {reason}")]
    NoCertificate { reason: String },
}

/// sha256 of a CA certificate (DER).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest([u8; 32]);

impl CaDigest {
    /// The digest of a certificate given as DER bytes.
    pub fn of_der(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        CaDigest(out)
    }

    /// The digest of the first certificate in a PEM text.
    pub fn of_pem(pem: &str) -> Result<Self, DigestError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| {
            DigestError::NoCertificate {
                reason: err.to_string(),
            }
        })?;
        Ok(Self::of_der(der.as_ref()))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

impl FromStr for CaDigest {
    type Err = DigestError;

    /// Parses 64 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || DigestError::Malformed {
            input: s.to_owned(),
        };
        if s.len() != 64 {
            return Err(malformed());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| malformed())?;
        Ok(CaDigest(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_hex() {
        let d = CaDigest::of_der(b"not really a certificate");
        let text = d.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<CaDigest>(), Ok(d));
        assert_eq!(text.to_uppercase().parse::<CaDigest>(), Ok(d));
    }

    #[test]
    fn malformed_digests_are_named() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            let err = bad.parse::<CaDigest>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        assert!(matches!(
            CaDigest::of_pem("hello"),
            Err(DigestError::NoCertificate { .. })
        ));
    }
}
