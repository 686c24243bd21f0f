//! Join tokens: `SKIFF-1-<sha256 of the CA cert, 64 hex>-<secret, 32 base32>`. The digest
//! lets a joiner pin the CA before it has it; the secret (160 random bits) says which role
//! the joiner gets. Workers and managers have separate secrets; rotating one makes a new
//! secret and old tokens stop working. Secrets are compared in constant time.

use std::fmt;
use std::str::FromStr;

use crate::cert::Role;
use crate::digest::CaDigest;

/// Every token starts with this (format version 1).
pub const TOKEN_PREFIX: &str = "SKIFF-1-";

const SECRET_LEN: usize = 20;
const SECRET_CHARS: usize = 32; // 160 bits / 5 bits per base32 char
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token: {reason}")]
    Malformed { reason: String },
    #[error(
        "token is for another cluster: it pins CA digest {token}, this cluster's CA is {cluster}"
    )]
    WrongCa { token: CaDigest, cluster: CaDigest },
    #[error(
        "token rejected: its secret matches neither the worker nor the manager token (was it rotated?)"
    )]
    UnknownSecret,
    #[error("cannot generate a token secret: the system random source failed")]
    Random,
}

fn malformed(reason: impl Into<String>) -> TokenError {
    TokenError::Malformed {
        reason: reason.into(),
    }
}

/// The secret half of a join token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret([u8; SECRET_LEN]);

impl TokenSecret {
    /// 160 fresh random bits.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| TokenError::Random)?;
        Ok(TokenSecret(bytes))
    }

    /// Constant-time equality: the time taken does not depend on where the secrets differ.
    pub fn ct_eq(&self, other: &TokenSecret) -> bool {
        let a = std::hint::black_box(&self.0);
        let b = std::hint::black_box(&other.0);
        let diff = a
            .iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Display for TokenSecret {
    /// Lowercase RFC 4648 base32, no padding (20 bytes are exactly 32 characters).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(SECRET_CHARS);
        for chunk in self.0.chunks(5) {
            let mut buf = [0u8; 8];
            buf[3..3 + chunk.len()].copy_from_slice(chunk);
            let n = u64::from_be_bytes(buf);
            for i in (0..8).rev() {
                let idx = usize::try_from((n >> (i * 5)) & 31).unwrap_or(0);
                out.push(char::from(BASE32[idx]));
            }
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

impl FromStr for TokenSecret {
    type Err = TokenError;

    /// Parses 32 base32 characters (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != SECRET_CHARS {
            return Err(malformed(format!(
                "secret has {} characters, expected {SECRET_CHARS}",
                s.len()
            )));
        }
        let mut bytes = [0u8; SECRET_LEN];
        for (chunk_idx, chunk) in s.as_bytes().chunks(8).enumerate() {
            let mut n: u64 = 0;
            for c in chunk {
                let v = BASE32
                    .iter()
                    .position(|b| *b == c.to_ascii_lowercase())
                    .ok_or_else(|| {
                        malformed(format!(
                            "secret contains {:?}, which is not base32 (a-z, 2-7)",
                            char::from(*c)
                        ))
                    })?;
                n = (n << 5) | u64::try_from(v).unwrap_or(0);
            }
            let be = n.to_be_bytes();
            bytes[chunk_idx * 5..chunk_idx * 5 + 5].copy_from_slice(&be[3..8]);
        }
        Ok(TokenSecret(bytes))
    }
}

/// A join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: CaDigest,
    pub secret: TokenSecret,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            if s.starts_with("SKIFF-") {
                malformed("unsupported token version (expected SKIFF-1-...)")
            } else {
                malformed("does not start with SKIFF-1-")
            }
        })?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or_else(|| malformed("expected SKIFF-1-<CA digest>-<secret>"))?;
        let ca_digest = digest.parse::<CaDigest>().map_err(|_| {
            malformed(format!(
                "CA digest has {} characters, expected 64 hex digits",
                digest.len()
            ))
        })?;
        Ok(JoinToken {
            ca_digest,
            secret: secret.parse()?,
        })
    }
}

/// The cluster's current worker and manager secrets (kept in the replicated store as
/// `Cluster.worker_token_secret` / `manager_token_secret`, in their text form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinSecrets {
    pub worker: TokenSecret,
    pub manager: TokenSecret,
}

impl JoinSecrets {
    /// Fresh secrets for both roles.
    pub fn generate() -> Result<Self, TokenError> {
        Ok(JoinSecrets {
            worker: TokenSecret::generate()?,
            manager: TokenSecret::generate()?,
        })
    }

    /// The token a joiner of `role` uses (admins do not join; they get a certificate).
    pub fn token(&self, ca_digest: CaDigest, role: Role) -> JoinToken {
        let secret = match role {
            Role::Manager => self.manager.clone(),
            Role::Worker | Role::Admin => self.worker.clone(),
        };
        JoinToken { ca_digest, secret }
    }

    /// Which role `token` grants in the cluster whose CA has `ca_digest`. Both secrets are
    /// compared (in constant time) whatever the first result.
    pub fn role_of(&self, token: &JoinToken, ca_digest: CaDigest) -> Result<Role, TokenError> {
        if token.ca_digest != ca_digest {
            return Err(TokenError::WrongCa {
                token: token.ca_digest,
                cluster: ca_digest,
            });
        }
        let worker = self.worker.ct_eq(&token.secret);
        let manager = self.manager.ct_eq(&token.secret);
        match (worker, manager) {
            (_, true) => Ok(Role::Manager),
            (true, false) => Ok(Role::Worker),
            (false, false) => Err(TokenError::UnknownSecret),
        }
    }

    /// Parses `token` and checks it, in one step.
    pub fn check(&self, token: &str, ca_digest: CaDigest) -> Result<Role, TokenError> {
        self.role_of(&token.parse()?, ca_digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> CaDigest {
        CaDigest::of_der(b"ca")
    }

    #[test]
    fn tokens_round_trip() {
        let secrets = JoinSecrets::generate().expect("random");
        for role in [Role::Worker, Role::Manager] {
            let token = secrets.token(digest(), role);
            let text = token.to_string();
            assert!(text.starts_with("SKIFF-1-"), "{text}");
            assert_eq!(text.len(), 8 + 64 + 1 + 32, "{text}");
            assert_eq!(text.parse::<JoinToken>(), Ok(token));
            assert_eq!(secrets.check(&text, digest()), Ok(role));
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 test vector "fooba" -> "MZXW6YTB", in lowercase and padded to 20 bytes.
        let mut bytes = [0u8; 20];
        bytes[..5].copy_from_slice(b"fooba");
        let s = TokenSecret(bytes).to_string();
        assert!(s.starts_with("mzxw6ytb"), "{s}");
        assert_eq!(s.parse::<TokenSecret>(), Ok(TokenSecret(bytes)));
        assert_eq!(
            s.to_uppercase().parse::<TokenSecret>(),
            Ok(TokenSecret(bytes))
        );
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = JoinSecrets::generate()
            .expect("random")
            .token(digest(), Role::Worker)
            .to_string();
        let cases = [
            ("", "does not start with SKIFF-1-"),
            ("SWMTKN-1-abc-def", "does not start with SKIFF-1-"),
            ("SKIFF-2-abc-def", "unsupported token version"),
            ("SKIFF-1-abcdef", "expected SKIFF-1-<CA digest>-<secret>"),
            ("SKIFF-1-abc-def", "CA digest has 3 characters"),
            (&good[..good.len() - 1], "secret has 31 characters"),
            (&format!("{}1", &good[..good.len() - 1]), "not base32"),
        ];
        for (input, want) in cases {
            let err = input.parse::<JoinToken>().expect_err(input);
            let text = err.to_string();
            assert!(text.starts_with("malformed token: "), "{text}");
            assert!(text.contains(want), "{input:?}: {text}");
        }
    }

    #[test]
    fn a_token_of_another_cluster_or_a_rotated_secret_is_refused() {
        let secrets = JoinSecrets::generate().expect("random");
        let token = secrets.token(digest(), Role::Worker);
        let other = CaDigest::of_der(b"other ca");
        assert!(matches!(
            secrets.role_of(&token, other),
            Err(TokenError::WrongCa { .. })
        ));
        let rotated = JoinSecrets {
            worker: TokenSecret::generate().expect("random"),
            manager: secrets.manager.clone(),
        };
        assert_eq!(
            rotated.role_of(&token, digest()),
            Err(TokenError::UnknownSecret)
        );
        // The manager token still works after a worker rotation.
        assert_eq!(
            rotated.role_of(&secrets.token(digest(), Role::Manager), digest()),
            Ok(Role::Manager)
        );
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let s = TokenSecret::generate().expect("random");
        assert!(!format!("{s:?}").contains(&s.to_string()));
    }

    #[test]
    fn constant_time_compare_is_equality() {
        let a = TokenSecret([7; 20]);
        let mut b = [7; 20];
        assert!(a.ct_eq(&TokenSecret(b)));
        b[19] = 8;
        assert!(!a.ct_eq(&TokenSecret(b)));
    }
}
