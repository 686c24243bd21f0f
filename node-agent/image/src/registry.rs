//! The registry client: OCI Distribution API calls through `oci-client` (token exchange
//! from the `WWW-Authenticate` challenge, basic auth, chunked uploads), with skiff's
//! references, platform choice, and errors that name the image and the registry.
//! Plain HTTP is used only for registries listed as insecure.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Once;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::{self, ACCEPTED_MANIFESTS, Descriptor, Fetched, ManifestError};
use crate::platform::{self, Platform};
use crate::reference::Reference;

/// How to reach registries. Deserializable so the agent can read it from its config.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// Registries (`host[:port]` as written in references) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Credentials by registry (`docker.io`, `ghcr.io`, `localhost:5000`).
    pub credentials: BTreeMap<String, Credentials>,
    /// The platform chosen from multi-platform indexes; the host's if unset.
    pub platform: Option<Platform>,
}

/// A username and password (or token) for a registry, used for basic auth or to obtain
/// a bearer token from the registry's token service.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// What went wrong talking to a registry. Every variant names the image or registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {reference} not found in registry {registry}")]
    NotFound { reference: String, registry: String },
    #[error("blob {digest} of {reference} not found in registry {registry}")]
    BlobNotFound {
        reference: String,
        digest: Digest,
        registry: String,
    },
    #[error("registry {registry} is unreachable: {source}")]
    Unreachable {
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry {registry} denied access to {reference}: {source}")]
    Denied {
        reference: String,
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry {registry} failed on {reference}: {source}")]
    Protocol {
        reference: String,
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry {registry} returned invalid digest {digest:?} for {reference}")]
    BadDigest {
        reference: String,
        registry: String,
        digest: String,
    },
    #[error("{reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("{reference} has no image for platform {platform} (index lists: {available})")]
    NoPlatform {
        reference: String,
        platform: Platform,
        available: String,
    },
    #[error(
        "{reference}: index {digest} points to another index; nested indexes are not supported"
    )]
    NestedIndex { reference: String, digest: Digest },
}

/// A resolved single-platform image as the registry describes it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the reference itself points to (the index's digest for multi-platform images).
    pub digest: Digest,
    /// The raw index, if the reference pointed to one.
    pub index: Option<(Digest, Bytes)>,
    /// The platform manifest's digest and raw bytes (stored verbatim).
    pub manifest_digest: Digest,
    pub manifest_bytes: Bytes,
    pub manifest: manifest::Manifest,
}

/// A client for OCI Distribution registries, cheap to clone (shares connections and tokens).
#[derive(Clone)]
pub struct RegistryClient {
    client: oci_client::Client,
    config: RegistryConfig,
    platform: Platform,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .field("platform", &self.platform)
            .finish()
    }
}

/// reqwest with `rustls-no-provider` panics on first use unless a process-wide crypto
/// provider is installed. Installing fails harmlessly if another one already is.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Self {
        install_crypto_provider();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(config.insecure.clone()),
            // skiff picks the platform itself (variants included) from the raw index
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            ..ClientConfig::default()
        });
        let platform = config.platform.clone().unwrap_or_else(Platform::host);
        Self {
            client,
            config,
            platform,
        }
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    fn auth(&self, r: &Reference) -> RegistryAuth {
        match self.config.credentials.get(r.registry()) {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// oci-client looks credentials up by API host; register them before any call.
    async fn prepare(&self, r: &Reference) -> oci_client::Reference {
        let oci = r.to_oci();
        self.client
            .store_auth_if_needed(oci.resolve_registry(), &self.auth(r))
            .await;
        oci
    }

    fn map_err(&self, r: &Reference, e: OciDistributionError) -> RegistryError {
        let reference = r.to_string();
        let registry = r.registry().to_owned();
        match &e {
            OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
                reference,
                registry,
            },
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                    )
                }) =>
            {
                RegistryError::NotFound {
                    reference,
                    registry,
                }
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) =>
            {
                RegistryError::Denied {
                    reference,
                    registry,
                    source: e,
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound {
                reference,
                registry,
            },
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => RegistryError::Denied {
                reference,
                registry,
                source: e,
            },
            OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
                RegistryError::Unreachable {
                    registry,
                    source: e,
                }
            }
            _ => RegistryError::Protocol {
                reference,
                registry,
                source: e,
            },
        }
    }

    /// Fetches the manifest or index `r` points to, verified against `r`'s digest if any.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<(Digest, Bytes), RegistryError> {
        let oci = self.prepare(r).await;
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&oci, &self.auth(r), ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.map_err(r, e))?;
        let digest = Digest::parse(&digest).map_err(|_| RegistryError::BadDigest {
            reference: r.to_string(),
            registry: r.registry().to_owned(),
            digest,
        })?;
        // oci-client checked the body against the header and the reference; check the
        // body ourselves too, since the store is keyed by this digest.
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(RegistryError::BadDigest {
                reference: r.to_string(),
                registry: r.registry().to_owned(),
                digest: actual.to_string(),
            });
        }
        Ok((digest, bytes))
    }

    /// Resolves `r` to one image manifest for this client's platform.
    pub async fn resolve(&self, r: &Reference) -> Result<Resolved, RegistryError> {
        let (digest, bytes) = self.fetch_manifest(r).await?;
        let manifest_err = |source| RegistryError::Manifest {
            reference: r.to_string(),
            source,
        };
        match manifest::parse_manifest(&digest, &bytes, None).map_err(manifest_err)? {
            Fetched::Manifest(m) => Ok(Resolved {
                digest: digest.clone(),
                index: None,
                manifest_digest: digest,
                manifest_bytes: bytes,
                manifest: m,
            }),
            Fetched::Index(index) => {
                let chosen = platform::choose(
                    &self.platform,
                    index.manifests.iter().map(|d| d.platform.as_ref()),
                )
                .ok_or_else(|| RegistryError::NoPlatform {
                    reference: r.to_string(),
                    platform: self.platform.clone(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
                let entry = &index.manifests[chosen];
                let (mdigest, mbytes) = self
                    .fetch_manifest(&r.with_digest(entry.digest.clone()))
                    .await?;
                match manifest::parse_manifest(&mdigest, &mbytes, Some(&entry.media_type))
                    .map_err(manifest_err)?
                {
                    Fetched::Manifest(m) => Ok(Resolved {
                        digest: digest.clone(),
                        index: Some((digest, bytes)),
                        manifest_digest: mdigest,
                        manifest_bytes: mbytes,
                        manifest: m,
                    }),
                    Fetched::Index(_) => Err(RegistryError::NestedIndex {
                        reference: r.to_string(),
                        digest: mdigest,
                    }),
                }
            }
        }
    }

    /// Streams a blob. The bytes are NOT verified here: the content store verifies them.
    pub async fn blob_stream(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<
        impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static + use<>,
        RegistryError,
    > {
        let oci = self.prepare(r).await;
        let d = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        // `Range: bytes=0-` makes the registry answer 206, for which oci-client skips its
        // own hashing (two sha256 passes: layer digest and header digest); the content
        // store hashes every byte anyway and is the check that counts. A registry that
        // ignores ranges answers 200 and oci-client verifies as well.
        let response = self
            .client
            .pull_blob_stream_partial(&oci, &d, 0, None)
            .await
            .map_err(|e| match self.map_err(r, e) {
                RegistryError::NotFound {
                    reference,
                    registry,
                } => RegistryError::BlobNotFound {
                    reference,
                    digest: desc.digest.clone(),
                    registry,
                },
                other => other,
            })?;
        let (oci_client::client::BlobResponse::Full(stream)
        | oci_client::client::BlobResponse::Partial(stream)) = response;
        Ok(stream)
    }

    /// Fetches a small blob (a config) whole.
    pub async fn blob(&self, r: &Reference, desc: &Descriptor) -> Result<Bytes, RegistryError> {
        let mut s = Box::pin(self.blob_stream(r, desc).await?);
        let mut out = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0).min(1 << 20));
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Protocol {
                reference: r.to_string(),
                registry: r.registry().to_owned(),
                source: OciDistributionError::IoError(source),
            })?;
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    /// Uploads a blob unless the repository already has it.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        data: Bytes,
    ) -> Result<(), RegistryError> {
        let oci = self.prepare(r).await;
        if self
            .client
            .blob_exists(&oci, digest.as_str())
            .await
            .map_err(|e| self.map_err(r, e))?
        {
            return Ok(());
        }
        self.client
            .push_blob(&oci, data, digest.as_str())
            .await
            .map_err(|e| self.map_err(r, e))?;
        Ok(())
    }

    /// Uploads a blob from a stream of chunks (large layers without loading them whole).
    pub async fn push_blob_stream<S>(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        stream: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let oci = self.prepare(r).await;
        if self
            .client
            .blob_exists(&oci, digest.as_str())
            .await
            .map_err(|e| self.map_err(r, e))?
        {
            return Ok(());
        }
        let stream = stream.map_err(OciDistributionError::IoError);
        self.client
            .push_blob_stream(&oci, stream, digest.as_str(), Some(size))
            .await
            .map_err(|e| self.map_err(r, e))?;
        Ok(())
    }

    /// Uploads a manifest or index under `r`'s tag (or digest), verbatim.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let oci = self.prepare(r).await;
        let content_type =
            http::HeaderValue::from_str(media_type).map_err(|_| RegistryError::Manifest {
                reference: r.to_string(),
                source: ManifestError::UnsupportedMediaType {
                    digest: Digest::of(&bytes),
                    media_type: media_type.to_owned(),
                },
            })?;
        self.client
            .push_manifest_raw(&oci, bytes, content_type)
            .await
            .map_err(|e| self.map_err(r, e))?;
        Ok(())
    }
}
