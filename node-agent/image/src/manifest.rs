//! The JSON documents of an image: manifests (Docker v2 schema 2 and OCI), indexes
//! (Docker manifest lists and OCI indexes) and the image config. Only the fields skiff
//! uses are modelled; the raw bytes are what the store keeps, so digests never change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Media types sent in `Accept` when fetching a manifest by tag or digest.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Why a manifest or config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot parse {what} {digest}: {source}")]
    Json {
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest {digest} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    #[error("manifest {digest} has schemaVersion {version}; only 2 is supported")]
    SchemaVersion { digest: Digest, version: u32 },
    #[error("image config {digest} lists {diff_ids} diff_ids but the manifest has {layers} layers")]
    LayerCount {
        digest: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedLayer { digest: Digest, media_type: String },
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// A single-platform image manifest (OCI or Docker v2 schema 2: same shape).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest fetch returned.
#[derive(Debug)]
pub enum Fetched {
    Manifest(Manifest),
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Parses a manifest or index. `content_type` is the HTTP header (or the descriptor's
/// media type); the document's own `mediaType` wins when present.
pub fn parse_manifest(
    digest: &Digest,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<Fetched, ManifestError> {
    let json = |source| ManifestError::Json {
        what: "manifest",
        digest: digest.clone(),
        source,
    };
    let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
    if probe.schema_version != 2 {
        return Err(ManifestError::SchemaVersion {
            digest: digest.clone(),
            version: probe.schema_version,
        });
    }
    let media_type = probe
        .media_type
        .or_else(|| content_type.map(str::to_owned))
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                OCI_INDEX.to_owned()
            } else {
                OCI_MANIFEST.to_owned()
            }
        });
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Fetched::Manifest(
            serde_json::from_slice(bytes).map_err(json)?,
        )),
        OCI_INDEX | DOCKER_LIST => Ok(Fetched::Index(serde_json::from_slice(bytes).map_err(json)?)),
        _ => Err(ManifestError::UnsupportedMediaType {
            digest: digest.clone(),
            media_type,
        }),
    }
}

/// Layer media types skiff can unpack (compression is also sniffed from the bytes).
pub fn check_layer(layer: &Descriptor) -> Result<(), ManifestError> {
    match layer.media_type.as_str() {
        OCI_LAYER_TAR
        | OCI_LAYER_GZIP
        | OCI_LAYER_ZSTD
        | DOCKER_LAYER_GZIP
        | DOCKER_LAYER_FOREIGN
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Ok(()),
        other => Err(ManifestError::UnsupportedLayer {
            digest: layer.digest.clone(),
            media_type: other.to_owned(),
        }),
    }
}

/// A container healthcheck as Docker writes it in the image config (durations in ns).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: u64,
    #[serde(default)]
    pub timeout: u64,
    #[serde(default)]
    pub start_period: u64,
    #[serde(default)]
    pub retries: u32,
}

/// The parts of an image's config that become a task's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings, in image order.
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    /// `80/tcp`, `53/udp`, sorted.
    pub exposed_ports: Vec<String>,
    pub healthcheck: Option<Healthcheck>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub platform: Platform,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

/// Parses an image config blob: the run defaults and the layers' uncompressed digests.
pub fn parse_config(
    digest: &Digest,
    bytes: &[u8],
) -> Result<(ImageConfig, Vec<Digest>), ManifestError> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what: "image config",
        digest: digest.clone(),
        source,
    })?;
    let c = raw.config.unwrap_or_default();
    let config = ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        workdir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
        healthcheck: c.healthcheck,
        labels: c.labels.unwrap_or_default(),
        stop_signal: c.stop_signal,
        platform: Platform {
            os: raw.os,
            architecture: raw.architecture,
            variant: raw.variant,
        },
    };
    Ok((config, raw.rootfs.diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Digest {
        Digest::of(b"x")
    }

    #[test]
    fn parses_docker_manifest_and_list() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"{DOCKER_CONFIG}","size":7,"digest":"{}"}},
            "layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","size":9,"digest":"{}"}}]}}"#,
            d(),
            d()
        );
        let Fetched::Manifest(m) = parse_manifest(&d(), m.as_bytes(), None).expect("parse") else {
            panic!("not a manifest")
        };
        assert_eq!(m.layers.len(), 1);
        check_layer(&m.layers[0]).expect("gzip layer ok");

        let l = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","size":1,"digest":"{}","platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#,
            d()
        );
        let Fetched::Index(i) = parse_manifest(&d(), l.as_bytes(), None).expect("parse") else {
            panic!("not an index")
        };
        assert_eq!(
            i.manifests[0].platform,
            Some(Platform::new("linux", "arm", Some("v7")))
        );
    }

    #[test]
    fn media_type_from_header_or_shape() {
        let idx = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(&d(), idx.as_bytes(), None),
            Ok(Fetched::Index(_))
        ));
        let err = parse_manifest(&d(), idx.as_bytes(), Some("text/html")).expect_err("html");
        assert!(err.to_string().contains("text/html"), "{err}");
        let v1 = r#"{"schemaVersion":1}"#;
        assert!(matches!(
            parse_manifest(&d(), v1.as_bytes(), None),
            Err(ManifestError::SchemaVersion { version: 1, .. })
        ));
    }

    #[test]
    fn parses_config_defaults() {
        let c = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{
              "Entrypoint":["/bin/sh"],"Cmd":["-c","echo"],"Env":["PATH=/bin"],
              "WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{{"80/tcp":{{}},"53/udp":{{}}}},
              "Healthcheck":{{"Test":["CMD","true"],"Interval":1000000000,"Retries":3}},
              "Labels":{{"a":"b"}},"StopSignal":"SIGQUIT"}},
              "rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d()
        );
        let (cfg, diffs) = parse_config(&d(), c.as_bytes()).expect("config");
        assert_eq!(cfg.entrypoint, ["/bin/sh"]);
        assert_eq!(cfg.cmd, ["-c", "echo"]);
        assert_eq!(cfg.workdir, "/srv");
        assert_eq!(cfg.user, "1000:1000");
        assert_eq!(cfg.exposed_ports, ["53/udp", "80/tcp"]);
        let hc = cfg.healthcheck.expect("healthcheck");
        assert_eq!(hc.test, ["CMD", "true"]);
        assert_eq!(hc.retries, 3);
        assert_eq!(cfg.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(cfg.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(diffs, [d()]);
        // a config with null fields (as Docker writes them) still parses
        let c = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":null,"Env":null}},"rootfs":{{"diff_ids":["{}"]}}}}"#,
            d()
        );
        assert!(parse_config(&d(), c.as_bytes()).is_ok());
    }
}
