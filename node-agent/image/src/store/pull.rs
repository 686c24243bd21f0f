//! The pull pipeline: resolve, store manifest and config, then each layer streamed from
//! the registry into the content store and the unpacker at once (a blocking thread per
//! layer), both verified before anything is renamed into place.

use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use super::content::{ContentError, Ingest, open_blob};
use super::meta::{ImageRecord, LayerRecord, SnapshotRecord};
use super::{Image, ImageError, Inner};
use crate::digest::{Digest, chain_ids};
use crate::manifest::{self, Descriptor, ImageConfig};
use crate::reference::Reference;
use crate::unpack::{self, Unpacked};

/// Layers fetched and unpacked at once (containerd's default is 3 too).
const MAX_CONCURRENT_LAYERS: usize = 3;
/// Chunks in flight between the download and the unpacker.
const CHANNEL_DEPTH: usize = 64;

/// What one layer of a pull is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerState {
    /// Its snapshot already existed.
    Cached,
    /// Bytes are arriving (and being unpacked as they arrive).
    Downloading,
    /// The blob was already here; unpacking it.
    Unpacking,
    Done,
}

/// A per-layer progress report.
#[derive(Clone, Debug)]
pub struct PullProgress {
    /// Position in the image, lowest layer first.
    pub layer: usize,
    pub digest: Digest,
    pub state: LayerState,
    pub current: u64,
    pub total: u64,
}

pub(crate) type Progress = Arc<dyn Fn(&PullProgress) + Send + Sync>;

/// Where each layer of this pull stands, for layers that need their lowers (a hard link
/// to a file of a lower layer).
struct Slots {
    state: Mutex<Vec<Slot>>,
    changed: Condvar,
}

#[derive(Clone)]
enum Slot {
    Pending,
    Ready(PathBuf),
    Failed,
}

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            state: Mutex::new(vec![Slot::Pending; n]),
            changed: Condvar::new(),
        }
    }

    fn set(&self, i: usize, s: Slot) {
        let mut st = super::lock(&self.state);
        st[i] = s;
        self.changed.notify_all();
    }

    /// Blocks until layers `0..i` are unpacked; `None` if one of them failed.
    fn lowers(&self, i: usize) -> Option<Vec<PathBuf>> {
        let mut st = super::lock(&self.state);
        loop {
            if st[..i].iter().any(|s| matches!(s, Slot::Failed)) {
                return None;
            }
            if st[..i].iter().all(|s| matches!(s, Slot::Ready(_))) {
                return Some(
                    st[..i]
                        .iter()
                        .filter_map(|s| match s {
                            Slot::Ready(p) => Some(p.clone()),
                            _ => None,
                        })
                        .collect(),
                );
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Marks the slot failed unless the layer completed.
struct SlotGuard {
    slots: Arc<Slots>,
    i: usize,
    done: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.done {
            self.slots.set(self.i, Slot::Failed);
        }
    }
}

/// A temporary snapshot directory, deleted unless renamed into place.
struct TempSnapshot(Option<PathBuf>);

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(err) = std::fs::remove_dir_all(&p)
        {
            tracing::warn!(?err, path = ?p, "removing temporary snapshot");
        }
    }
}

struct LayerJob {
    inner: Arc<Inner>,
    reference: Reference,
    index: usize,
    blob: Descriptor,
    diff_id: Digest,
    chain_id: Digest,
    slots: Arc<Slots>,
    progress: Progress,
}

pub(crate) async fn pull(
    inner: &Arc<Inner>,
    r: &Reference,
    progress: Progress,
) -> Result<Image, ImageError> {
    let _shared = inner.op.read().await;
    let reference = r.to_string();
    let resolved = inner.registry.resolve(r).await?;
    let m = &resolved.manifest;
    for layer in &m.layers {
        manifest::check_layer(layer).map_err(|source| ImageError::Manifest {
            reference: reference.clone(),
            source,
        })?;
    }
    if let Some((d, bytes)) = &resolved.index {
        inner.content.write(d, bytes)?;
    }
    inner
        .content
        .write(&resolved.manifest_digest, &resolved.manifest_bytes)?;
    let config_bytes = if inner.content.has(&m.config.digest) {
        inner.content.read(&m.config.digest)?
    } else {
        let pinned = r.with_digest(resolved.manifest_digest.clone());
        let bytes = inner.registry.blob(&pinned, &m.config).await?;
        inner
            .content
            .write(&m.config.digest, &bytes)
            .map_err(|source| ImageError::Content {
                reference: reference.clone(),
                layer: m.config.digest.clone(),
                source,
            })?;
        bytes.to_vec()
    };
    let (config, diff_ids) =
        config_and_diff_ids(&reference, &m.config.digest, &config_bytes, m.layers.len())?;

    let layers = unpack_all(inner, r, &m.layers, &diff_ids, progress).await?;
    inner.commit_image(ImageRecord {
        reference: r.clone(),
        digest: resolved.digest.clone(),
        index_digest: resolved.index.as_ref().map(|(d, _)| d.clone()),
        manifest_digest: resolved.manifest_digest.clone(),
        manifest_media_type: m
            .media_type
            .clone()
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_owned()),
        config_digest: m.config.digest.clone(),
        config,
        layers,
    })
}

pub(crate) fn config_and_diff_ids(
    reference: &str,
    digest: &Digest,
    bytes: &[u8],
    layers: usize,
) -> Result<(ImageConfig, Vec<Digest>), ImageError> {
    let manifest_err = |source| ImageError::Manifest {
        reference: reference.to_owned(),
        source,
    };
    let (config, diff_ids) = manifest::parse_config(digest, bytes).map_err(manifest_err)?;
    if diff_ids.len() != layers {
        return Err(manifest_err(manifest::ManifestError::LayerCount {
            digest: digest.clone(),
            diff_ids: diff_ids.len(),
            layers,
        }));
    }
    Ok((config, diff_ids))
}

/// Makes sure every layer has its snapshot; `r` is where missing blobs come from.
pub(crate) async fn unpack_all(
    inner: &Arc<Inner>,
    r: &Reference,
    blobs: &[Descriptor],
    diff_ids: &[Digest],
    progress: Progress,
) -> Result<Vec<LayerRecord>, ImageError> {
    let chains = chain_ids(diff_ids);
    let slots = Arc::new(Slots::new(blobs.len()));
    let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_LAYERS));
    let mut tasks = Vec::with_capacity(blobs.len());
    for (i, blob) in blobs.iter().enumerate() {
        // Permits are taken in layer order, so a layer waiting for its lowers never
        // holds a permit a lower layer needs.
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ImageError::Store {
                source: ContentError::Missing {
                    digest: blob.digest.clone(),
                },
            })?;
        let job = LayerJob {
            inner: inner.clone(),
            reference: r.clone(),
            index: i,
            blob: blob.clone(),
            diff_id: diff_ids[i].clone(),
            chain_id: chains[i].clone(),
            slots: slots.clone(),
            progress: progress.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let res = job.run().await;
            drop(permit);
            res
        }));
    }
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(ImageError::Task(e));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(blobs
        .iter()
        .enumerate()
        .map(|(i, b)| LayerRecord {
            blob: b.clone(),
            diff_id: diff_ids[i].clone(),
            chain_id: chains[i].clone(),
        })
        .collect())
}

impl LayerJob {
    fn report(&self, state: LayerState, current: u64) {
        (self.progress)(&PullProgress {
            layer: self.index,
            digest: self.blob.digest.clone(),
            state,
            current,
            total: self.blob.size,
        });
    }

    fn existing(&self) -> Option<PathBuf> {
        let meta = self.inner.meta();
        meta.snapshots
            .get(&self.chain_id)
            .map(|s| self.inner.snapshot_dir(s.id))
    }

    async fn run(self) -> Result<(), ImageError> {
        let mut guard = SlotGuard {
            slots: self.slots.clone(),
            i: self.index,
            done: false,
        };
        if let Some(p) = self.existing() {
            self.report(LayerState::Cached, self.blob.size);
            self.slots.set(self.index, Slot::Ready(p));
            guard.done = true;
            return Ok(());
        }
        let _locked = self.inner.content.lock(&self.blob.digest).await;
        if let Some(p) = self.existing() {
            self.report(LayerState::Cached, self.blob.size);
            self.slots.set(self.index, Slot::Ready(p));
            guard.done = true;
            return Ok(());
        }
        let tmp = tempfile::Builder::new()
            .prefix("tmp-")
            .tempdir_in(&self.inner.snap_dir)
            .map_err(|e| super::content::io_err("create", &self.inner.snap_dir)(e))?
            .keep();
        let tmp = TempSnapshot(Some(tmp));
        let dest = tmp.0.clone().unwrap_or_default();
        // The snapshot root becomes "/" in the overlay; tempfile made it 0700, which
        // would lock every non-root container user out of its own root.
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| super::content::io_err("chmod", &dest)(e))?;
        let unpacked = if self.inner.content.has(&self.blob.digest) {
            self.unpack_local(dest).await?
        } else {
            self.fetch_and_unpack(dest).await?
        };
        if unpacked.diff_id != self.diff_id {
            return Err(ImageError::DiffIdMismatch {
                reference: self.reference.to_string(),
                layer: self.blob.digest.clone(),
                expected: self.diff_id.clone(),
                actual: unpacked.diff_id,
            });
        }
        let path = self.commit_snapshot(tmp, unpacked.size)?;
        self.report(LayerState::Done, self.blob.size);
        self.slots.set(self.index, Slot::Ready(path));
        guard.done = true;
        Ok(())
    }

    fn commit_snapshot(&self, mut tmp: TempSnapshot, size: u64) -> Result<PathBuf, ImageError> {
        let mut meta = self.inner.meta();
        let id = meta.next_snapshot;
        meta.next_snapshot += 1;
        let path = self.inner.snapshot_dir(id);
        let from = tmp.0.clone().unwrap_or_default();
        std::fs::rename(&from, &path).map_err(super::content::io_err("rename into", &path))?;
        tmp.0 = None;
        meta.snapshots.insert(
            self.chain_id.clone(),
            SnapshotRecord {
                id,
                diff_id: self.diff_id.clone(),
                size,
            },
        );
        // persisted with the image record that references it (`Inner::commit_image`)
        Ok(path)
    }

    fn unpack_error(&self, source: unpack::UnpackError) -> ImageError {
        ImageError::Unpack {
            reference: self.reference.to_string(),
            layer: self.blob.digest.clone(),
            source: Box::new(source),
        }
    }

    fn content_error(&self, source: ContentError) -> ImageError {
        ImageError::Content {
            reference: self.reference.to_string(),
            layer: self.blob.digest.clone(),
            source,
        }
    }

    async fn unpack_local(&self, dest: PathBuf) -> Result<Unpacked, ImageError> {
        self.report(LayerState::Unpacking, 0);
        let file =
            open_blob(&self.inner.content, &self.blob.digest).map_err(|e| self.content_error(e))?;
        let slots = self.slots.clone();
        let i = self.index;
        let res = tokio::task::spawn_blocking(move || {
            let lowers = move || slots.lowers(i);
            unpack::unpack_layer(BufReader::with_capacity(256 * 1024, file), &dest, &lowers)
        })
        .await?;
        res.map_err(|e| self.unpack_error(e))
    }

    async fn fetch_and_unpack(&self, dest: PathBuf) -> Result<Unpacked, ImageError> {
        let ingest = self
            .inner
            .content
            .ingest(&self.blob.digest, self.blob.size)
            .map_err(|e| self.content_error(e))?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(CHANNEL_DEPTH);
        let slots = self.slots.clone();
        let i = self.index;
        let worker = tokio::task::spawn_blocking(move || {
            let mut tee = Tee {
                rx,
                cur: Bytes::new(),
                ingest,
                failed: None,
            };
            let lowers = move || slots.lowers(i);
            let res = unpack::unpack_layer(&mut tee, &dest, &lowers);
            // Read to the end either way: the blob's digest covers every byte, and a
            // failed unpack of a blob that is not what the manifest names is reported
            // as the digest error it is.
            let drained = io::copy(&mut tee, &mut io::sink());
            let Tee { ingest, failed, .. } = tee;
            if let Some(e) = failed {
                return Err(Failure::Content(e));
            }
            match (ingest.commit(), res, drained) {
                (Ok(()), Ok(u), _) => Ok(u),
                (Ok(()), Err(e), _) => Err(Failure::Unpack(e)),
                // short: the transfer broke off (its error wins) or the registry sent less
                (Err(ContentError::SizeMismatch { .. }), Err(e), Err(_)) => Err(Failure::Unpack(e)),
                (Err(ContentError::SizeMismatch { .. }), Ok(_), Err(source)) => {
                    Err(Failure::Unpack(unpack::UnpackError::Read { source }))
                }
                (Err(c), _, _) => Err(Failure::Content(c)),
            }
        });

        self.report(LayerState::Downloading, 0);
        let mut download_err = None;
        match self
            .inner
            .registry
            .blob_stream(&self.reference, &self.blob)
            .await
        {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                let mut got = 0u64;
                let mut last_report = 0u64;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => {
                            got += c.len() as u64;
                            if got - last_report >= 256 * 1024 || got == self.blob.size {
                                self.report(LayerState::Downloading, got);
                                last_report = got;
                            }
                            if tx.send(Ok(c)).await.is_err() {
                                break; // the unpacker stopped; its error is reported
                            }
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            let _ignored = tx.send(Err(e)).await;
                            download_err = Some(msg);
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                let _ignored = tx.send(Err(io::Error::other("download failed"))).await;
                drop(tx);
                let _ignored = worker.await;
                return Err(e.into());
            }
        }
        drop(tx);
        match worker.await? {
            Ok(u) => Ok(u),
            Err(Failure::Content(e)) => Err(self.content_error(e)),
            Err(Failure::Unpack(e)) => match download_err {
                Some(msg) => Err(self.unpack_error(unpack::UnpackError::Read {
                    source: io::Error::other(format!("download interrupted: {msg}")),
                })),
                None => Err(self.unpack_error(e)),
            },
        }
    }
}

enum Failure {
    Content(ContentError),
    Unpack(unpack::UnpackError),
}

/// Reads chunks from the download, writing each into the ingest file (which hashes it)
/// before handing it to the decompressor.
struct Tee {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    cur: Bytes,
    ingest: Ingest,
    failed: Option<ContentError>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => {
                    if let Err(e) = self.ingest.write(&chunk) {
                        let msg = e.to_string();
                        self.failed = Some(e);
                        return Err(io::Error::other(msg));
                    }
                    self.cur = chunk;
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}
