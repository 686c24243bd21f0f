//! Image references resolved exactly as Docker does (distribution/reference's
//! `ParseNormalizedNamed`): `busybox` is `docker.io/library/busybox:latest`.
//! A parsed `Reference` always has a registry and a repository, and a tag or a digest.

use std::fmt;

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical name; `index.docker.io` is normalised to it.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Docker Hub's actual API endpoint.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: empty")]
    Empty { input: String },
    #[error("invalid image reference {input:?}: repository name must be lowercase")]
    Uppercase { input: String },
    #[error("invalid image reference {input:?}: bad registry host {registry:?}")]
    BadRegistry { input: String, registry: String },
    #[error("invalid image reference {input:?}: bad path component {component:?}")]
    BadComponent { input: String, component: String },
    #[error("invalid image reference {input:?}: bad tag {tag:?}")]
    BadTag { input: String, tag: String },
    #[error("invalid image reference {input:?}: name longer than {MAX_NAME_LEN} characters")]
    TooLong { input: String },
    #[error("invalid image reference {input:?}: {source}")]
    Digest {
        input: String,
        #[source]
        source: DigestError,
    },
}

/// A fully qualified image reference: `registry/repository[:tag][@digest]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises like `docker pull` does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty {
                input: input.to_owned(),
            });
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    input: input.to_owned(),
                    source,
                })?),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before that
        // is a registry port: `localhost:5000/x`).
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
            }
            None => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty {
                input: input.to_owned(),
            });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong {
                input: input.to_owned(),
            });
        }
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ReferenceError::BadTag {
                input: input.to_owned(),
                tag: tag.to_owned(),
            });
        }

        let (registry, remainder) = split_registry(name);
        if registry != DOCKER_HUB && !valid_registry(&registry) {
            return Err(ReferenceError::BadRegistry {
                input: input.to_owned(),
                registry,
            });
        }
        if remainder.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                input: input.to_owned(),
            });
        }
        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{remainder}")
        } else {
            remainder.to_owned()
        };
        for component in repository.split('/') {
            if !valid_component(component) {
                return Err(ReferenceError::BadComponent {
                    input: input.to_owned(),
                    component: component.to_owned(),
                });
            }
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `docker.io`, `localhost:5000`, `127.0.0.1:5000`, `ghcr.io`...
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host that serves the registry API (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest` (tag dropped): what gets fetched once a
    /// tag has been resolved, or a platform chosen from an index.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository under another tag.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag {
                input: self.to_string(),
                tag: tag.to_owned(),
            });
        }
        Ok(Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        })
    }

    /// The `oci-client` form, pointing at the API host.
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        let registry = self.api_host().to_owned();
        let repository = self.repository.clone();
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                t.clone(),
                d.to_string(),
            ),
            (None, Some(d)) => {
                oci_client::Reference::with_digest(registry, repository, d.to_string())
            }
            (Some(t), None) => oci_client::Reference::with_tag(registry, repository, t.clone()),
            (None, None) => {
                oci_client::Reference::with_tag(registry, repository, DEFAULT_TAG.to_owned())
            }
        }
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry only if it looks
/// like a host (has a '.' or ':', or is `localhost`) and is not all lowercase-free.
fn split_registry(name: &str) -> (String, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            let registry = if first == DOCKER_HUB_LEGACY {
                DOCKER_HUB.to_owned()
            } else {
                first.to_owned()
            };
            (registry, rest)
        }
        _ => (DOCKER_HUB.to_owned(), name),
    }
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // [ipv6]:port
        match rest.split_once(']') {
            Some((addr, tail)) => {
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, tail.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    match host {
        None => true,
        Some(host) => {
            !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        }
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__", or any number of '-'
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    fn norm(s: &str) -> String {
        Reference::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("index.docker.io/foo/bar:v1", "docker.io/foo/bar:v1"),
            ("foo/bar", "docker.io/foo/bar:latest"),
            ("foo/bar/baz", "docker.io/foo/bar/baz:latest"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost:5000/x:v2", "localhost:5000/x:v2"),
            ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
            ("ghcr.io/org/app:1.0.0-rc.1", "ghcr.io/org/app:1.0.0-rc.1"),
            (
                "quay.io/a_b/c__d/e-f---g:T_a.g",
                "quay.io/a_b/c__d/e-f---g:T_a.g",
            ),
            ("[::1]:5000/x", "[::1]:5000/x:latest"),
            // A ':' in a single-component name is a tag, not a port (Docker agrees).
            ("test.com:5000", "docker.io/library/test.com:5000"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "{input}");
        }
    }

    #[test]
    fn digests_pin_and_drop_the_default_tag() {
        assert_eq!(
            norm(&format!("busybox@{D}")),
            format!("docker.io/library/busybox@{D}")
        );
        assert_eq!(
            norm(&format!("localhost:5000/x:v1@{D}")),
            format!("localhost:5000/x:v1@{D}")
        );
        let r = Reference::parse(&format!("busybox@{D}")).expect("parse");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(Digest::as_str), Some(D));
    }

    #[test]
    fn accessors_and_api_host() {
        let r = Reference::parse("busybox").expect("parse");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        let r = Reference::parse("localhost:5000/x").expect("parse");
        assert_eq!(r.api_host(), "localhost:5000");
        let oci = r.to_oci();
        assert_eq!(oci.registry(), "localhost:5000");
        assert_eq!(oci.repository(), "x");
        assert_eq!(oci.tag(), Some("latest"));
    }

    #[test]
    fn rejects_what_docker_rejects() {
        let bad = [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("docker.io/Foo/bar", "lowercase"),
            ("foo/-bar", "bad path component"),
            ("foo//bar", "bad path component"),
            ("foo/bar.", "bad path component"),
            ("foo/a...b", "bad path component"),
            ("busybox:", "bad tag"),
            ("busybox:-x", "bad tag"),
            ("busybox@sha256:abc", "64 lowercase hex"),
            ("busybox@md5:abc", "only sha256"),
            ("local host:5000/x", "bad registry"),
            ("localhost:50a0/x", "bad registry"),
            (":tag", "empty"),
        ];
        for (input, needle) in bad {
            let err = Reference::parse(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(
                err.contains(&format!("{input:?}")),
                "error names the input: {err}"
            );
        }
        let long = format!("x/{}", "a".repeat(300));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::TooLong { .. })
        ));
    }

    #[test]
    fn with_tag_and_digest_rewrite() {
        let r = Reference::parse("localhost:5000/x:v1").expect("parse");
        let d = Digest::parse(D).expect("digest");
        assert_eq!(
            r.with_digest(d).to_string(),
            format!("localhost:5000/x@{D}")
        );
        assert_eq!(
            r.with_tag("v2").expect("tag").to_string(),
            "localhost:5000/x:v2"
        );
        assert!(r.with_tag("-").is_err());
    }

    #[test]
    fn round_trips_through_display() {
        for s in [
            "busybox",
            "a.b:1/c/d:e",
            "localhost/x@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ] {
            let once = Reference::parse(s).expect("parse");
            let twice = Reference::parse(&once.to_string()).expect("reparse");
            assert_eq!(once, twice);
        }
    }
}
