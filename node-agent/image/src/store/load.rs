//! Importing images from a `docker save` tar (classic or Docker 25+ with an OCI layout
//! inside) or from an OCI image layout, as a directory or a tar. Every blob is verified
//! into the content store first; layers are then unpacked like pulled ones.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::content::{ContentError, io_err};
use super::meta::ImageRecord;
use super::pull::{config_and_diff_ids, unpack_all};
use super::{Image, ImageError, Inner};
use crate::digest::Digest;
use crate::manifest::{self, Descriptor, Fetched, Manifest};
use crate::platform;
use crate::reference::Reference;

/// OCI's annotation for an image's name; containerd and Docker write the full reference
/// in `io.containerd.image.name` and only the tag here.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Where an archive's files are: a directory, or files of a tar already imported into
/// the content store (path in the tar → digest).
enum Source {
    Dir(PathBuf),
    Tar(BTreeMap<String, Digest>),
}

/// An image found in the archive, with all its blobs in the content store.
struct Found {
    reference: Reference,
    digest: Digest,
    manifest_digest: Digest,
    manifest: Manifest,
    media_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn load_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Load {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

pub(crate) async fn load(inner: &Arc<Inner>, path: &Path) -> Result<Vec<Image>, ImageError> {
    let _shared = inner.op.read().await;
    let found = {
        let inner = inner.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || scan(&inner, &path)).await??
    };
    let mut images = Vec::new();
    let noop: super::pull::Progress = Arc::new(|_| {});
    for f in found {
        let reference = f.reference.to_string();
        let config_bytes = inner.content.read(&f.manifest.config.digest)?;
        let (config, diff_ids) = config_and_diff_ids(
            &reference,
            &f.manifest.config.digest,
            &config_bytes,
            f.manifest.layers.len(),
        )?;
        let layers = unpack_all(
            inner,
            &f.reference,
            &f.manifest.layers,
            &diff_ids,
            noop.clone(),
        )
        .await?;
        images.push(inner.commit_image(ImageRecord {
            reference: f.reference.clone(),
            digest: f.digest.clone(),
            index_digest: None,
            manifest_digest: f.manifest_digest.clone(),
            manifest_media_type: f.media_type.clone(),
            config_digest: f.manifest.config.digest.clone(),
            config,
            layers,
        })?);
    }
    Ok(images)
}

fn scan(inner: &Inner, path: &Path) -> Result<Vec<Found>, ImageError> {
    let md = fs::metadata(path).map_err(|e| load_err(path, e.to_string()))?;
    let source = if md.is_dir() {
        Source::Dir(path.to_owned())
    } else {
        Source::Tar(import_tar(inner, path)?)
    };
    if let Some(bytes) = read_file(inner, &source, path, "manifest.json")? {
        docker_save(inner, &source, path, &bytes)
    } else if let Some(bytes) = read_file(inner, &source, path, "index.json")? {
        oci_layout(inner, &source, path, &bytes)
    } else {
        Err(load_err(
            path,
            "neither a docker save archive (manifest.json) nor an OCI layout (index.json)",
        ))
    }
}

/// Imports every regular file of the tar as a blob; symlinks (old `docker save` links
/// duplicate layers) resolve to their target's digest.
fn import_tar(inner: &Inner, path: &Path) -> Result<BTreeMap<String, Digest>, ImageError> {
    let file = File::open(path).map_err(|e| load_err(path, e.to_string()))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(256 * 1024, file));
    let mut files = BTreeMap::new();
    let mut links = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| load_err(path, e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| load_err(path, e.to_string()))?;
        let name = normalize(&entry.path().map_err(|e| load_err(path, e.to_string()))?);
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (digest, _) = inner.content.import(&mut entry)?;
                files.insert(name, digest);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Ok(Some(target)) = entry.link_name() {
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&name)
                            .parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default()
                    } else {
                        PathBuf::new()
                    };
                    links.push((name, normalize(&base.join(target))));
                }
            }
            _ => {}
        }
    }
    for (name, target) in links {
        if let Some(d) = files.get(&target).cloned() {
            files.insert(name, d);
        }
    }
    Ok(files)
}

/// A tar member path as a plain relative string (`./a/../b` → `b`).
fn normalize(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.join("/")
}

fn read_file(
    inner: &Inner,
    source: &Source,
    archive: &Path,
    name: &str,
) -> Result<Option<Vec<u8>>, ImageError> {
    match source {
        Source::Dir(dir) => {
            let p = dir.join(name);
            match fs::read(&p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(load_err(archive, format!("reading {name}: {e}"))),
            }
        }
        Source::Tar(files) => match files.get(name) {
            Some(d) => Ok(Some(inner.content.read(d)?)),
            None => Ok(None),
        },
    }
}

/// Makes sure the blob at `name` in the archive is in the content store and returns its
/// digest (for a directory: copied in, verified against `expect` if given).
fn blob_at(
    inner: &Inner,
    source: &Source,
    archive: &Path,
    name: &str,
    expect: Option<&Digest>,
) -> Result<Digest, ImageError> {
    let digest = match source {
        Source::Dir(dir) => {
            let p = dir.join(name);
            let mut f = File::open(&p).map_err(|e| load_err(archive, format!("{name}: {e}")))?;
            inner.content.import(&mut f)?.0
        }
        Source::Tar(files) => files
            .get(&normalize(Path::new(name)))
            .cloned()
            .ok_or_else(|| load_err(archive, format!("{name} is missing from the archive")))?,
    };
    if let Some(e) = expect
        && *e != digest
    {
        return Err(ImageError::Store {
            source: ContentError::DigestMismatch {
                expected: e.clone(),
                actual: digest,
                size: 0,
            },
        });
    }
    Ok(digest)
}

fn oci_blob(
    inner: &Inner,
    source: &Source,
    archive: &Path,
    d: &Digest,
) -> Result<Vec<u8>, ImageError> {
    blob_at(
        inner,
        source,
        archive,
        &format!("blobs/sha256/{}", d.hex()),
        Some(d),
    )?;
    Ok(inner.content.read(d)?)
}

fn sniff_layer_type(inner: &Inner, d: &Digest) -> Result<&'static str, ImageError> {
    let mut head = [0u8; 4];
    let mut f = super::content::open_blob(&inner.content, d)?;
    let n = f
        .read(&mut head)
        .map_err(|e| io_err("read", &inner.content.path(d))(e))?;
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        manifest::OCI_LAYER_GZIP
    } else if head[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        manifest::OCI_LAYER_ZSTD
    } else {
        manifest::OCI_LAYER_TAR
    })
}

fn docker_save(
    inner: &Inner,
    source: &Source,
    archive: &Path,
    manifest_json: &[u8],
) -> Result<Vec<Found>, ImageError> {
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(manifest_json)
        .map_err(|e| load_err(archive, format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            return Err(load_err(
                archive,
                format!(
                    "image {} has no RepoTags; skiff stores images by name",
                    entry.config
                ),
            ));
        }
        let config_digest = blob_at(inner, source, archive, &entry.config, None)?;
        let config_size = fs::metadata(inner.content.path(&config_digest))
            .map_err(|e| io_err("stat", &inner.content.path(&config_digest))(e))?
            .len();
        let mut layers = Vec::new();
        for l in &entry.layers {
            let d = blob_at(inner, source, archive, l, None)?;
            let size = fs::metadata(inner.content.path(&d))
                .map_err(|e| io_err("stat", &inner.content.path(&d))(e))?
                .len();
            layers.push(Descriptor::new(sniff_layer_type(inner, &d)?, d, size));
        }
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.to_owned()),
            config: Descriptor::new(manifest::OCI_CONFIG, config_digest, config_size),
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&m).map_err(|e| load_err(archive, e.to_string()))?;
        let manifest_digest = Digest::of(&bytes);
        inner.content.write(&manifest_digest, &bytes)?;
        for tag in tags {
            let reference = Reference::parse(&tag).map_err(|e| load_err(archive, e.to_string()))?;
            out.push(Found {
                reference,
                digest: manifest_digest.clone(),
                manifest_digest: manifest_digest.clone(),
                manifest: m.clone(),
                media_type: manifest::OCI_MANIFEST.to_owned(),
            });
        }
    }
    Ok(out)
}

fn oci_layout(
    inner: &Inner,
    source: &Source,
    archive: &Path,
    index_json: &[u8],
) -> Result<Vec<Found>, ImageError> {
    let index_digest = Digest::of(index_json);
    let Fetched::Index(index) =
        manifest::parse_manifest(&index_digest, index_json, Some(manifest::OCI_INDEX)).map_err(
            |source| ImageError::Manifest {
                reference: archive.display().to_string(),
                source,
            },
        )?
    else {
        return Err(load_err(archive, "index.json is not an image index"));
    };
    let want = inner.registry.platform().clone();
    let mut out = Vec::new();
    for desc in &index.manifests {
        let name = desc
            .annotations
            .get(CONTAINERD_NAME)
            .or_else(|| desc.annotations.get(REF_NAME))
            .filter(|n| n.contains('/') || n.contains(':') || n.contains('@'))
            .ok_or_else(|| {
                load_err(
                    archive,
                    format!(
                        "manifest {} has no full image name ({CONTAINERD_NAME} or a full {REF_NAME})",
                        desc.digest
                    ),
                )
            })?;
        let reference = Reference::parse(name).map_err(|e| load_err(archive, e.to_string()))?;
        let bytes = oci_blob(inner, source, archive, &desc.digest)?;
        let parse_err = |source| ImageError::Manifest {
            reference: reference.to_string(),
            source,
        };
        let (manifest_digest, m, media_type) =
            match manifest::parse_manifest(&desc.digest, &bytes, Some(&desc.media_type))
                .map_err(parse_err)?
            {
                Fetched::Manifest(m) => (desc.digest.clone(), m, desc.media_type.clone()),
                Fetched::Index(idx) => {
                    let i =
                        platform::choose(&want, idx.manifests.iter().map(|d| d.platform.as_ref()))
                            .ok_or_else(|| {
                                load_err(
                                    archive,
                                    format!("{reference} has no image for platform {want}"),
                                )
                            })?;
                    let sub = &idx.manifests[i];
                    let sub_bytes = oci_blob(inner, source, archive, &sub.digest)?;
                    match manifest::parse_manifest(&sub.digest, &sub_bytes, Some(&sub.media_type))
                        .map_err(parse_err)?
                    {
                        Fetched::Manifest(m) => (sub.digest.clone(), m, sub.media_type.clone()),
                        Fetched::Index(_) => {
                            return Err(load_err(
                                archive,
                                format!("{reference}: nested indexes are not supported"),
                            ));
                        }
                    }
                }
            };
        oci_blob(inner, source, archive, &m.config.digest)?;
        for l in &m.layers {
            oci_blob(inner, source, archive, &l.digest)?;
        }
        out.push(Found {
            reference,
            digest: desc.digest.clone(),
            manifest_digest,
            manifest: m,
            media_type,
        });
    }
    Ok(out)
}
