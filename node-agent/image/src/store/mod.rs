//! `ImageStore`: the agent's image API. Pulls resolve a reference to one platform
//! manifest, fetch blobs into the verified content store and unpack each layer once
//! into a snapshot directory; a container's root is an overlay of an image's snapshots.
//!
//! ```text
//!  <root>/meta.json               images (by reference) and snapshots (by chain ID)
//!  <root>/blobs/sha256/<hex>      verified blobs: indexes, manifests, configs, layers
//!  <root>/ingest/                 downloads in progress (emptied on open)
//!  <root>/snap/<n>                unpacked layers, overlay lowerdirs; n is a counter so
//!                                 that lowerdir=... stays under one page
//!
//!  pull: resolve ─► manifest, config (stored) ─► per layer, up to 3 at once, in order:
//!        snapshot for chain ID exists? ─yes─► done
//!          └─no─► lock blob digest ─► stream from registry ─┬─► ingest file (sha256, size)
//!                                                           └─► decompress ─► untar ─► diff_id
//!                 both verified ─► blob renamed into blobs/, snapshot renamed into snap/<n>
//! ```
//!
//! Durability: a pull returns once its snapshots are renamed into place and the image is
//! recorded in memory; a background task then flushes the filesystem (syncfs) and writes
//! `meta.json`. Until then a crash forgets the image (and `open` deletes its snapshots).
//! `sync()` waits for that point.
//!
//! Concurrent pulls of one reference share one: the first caller pulls, later ones
//! wait for it and then read the stored image (100 replicas starting on a node make one
//! manifest request, not 100). Only the first caller's `progress` is called. If the
//! first caller is cancelled, a waiting one takes over.
//!
//! ## Limitations
//! - One process owns a root: the per-digest locks that make concurrent pulls of one
//!   layer download it once are in memory.
//! - `gc` waits for running pulls and blocks new ones while it runs.
//! - Images are stored per reference; loading an archive needs names in it.

mod content;
mod load;
mod meta;
mod pull;
mod push;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

pub use content::ContentError;
pub use pull::{LayerState, PullProgress};

use content::ContentStore;
use meta::{ImageRecord, Meta};

use crate::digest::Digest;
use crate::manifest::{ImageConfig, ManifestError};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryConfig, RegistryError};
use crate::unpack::UnpackError;

const SNAP_DIR: &str = "snap";
const META_FILE: &str = "meta.json";

/// Everything that can fail in the image store; each variant names the image, layer,
/// digest or path involved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("image {reference} is not in the local store")]
    NotFound { reference: String },
    #[error("{reference}: layer {layer}: {source}")]
    Content {
        reference: String,
        layer: Digest,
        #[source]
        source: ContentError,
    },
    #[error("{reference}: layer {layer}: {source}")]
    Unpack {
        reference: String,
        layer: Digest,
        #[source]
        source: Box<UnpackError>,
    },
    #[error(
        "{reference}: layer {layer} unpacks to diff_id {actual}, but the image config says {expected}"
    )]
    DiffIdMismatch {
        reference: String,
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("image store: {source}")]
    Store {
        #[source]
        source: ContentError,
    },
    #[error("loading {path:?}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("image store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A pull this caller waited on (the same reference, pulled by another caller) failed.
    #[error("{message}")]
    SharedPull { reference: String, message: String },
}

impl From<ContentError> for ImageError {
    fn from(source: ContentError) -> Self {
        Self::Store { source }
    }
}

/// A stored image, ready to run: `layers` are the overlay lowerdirs, lowest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub reference: Reference,
    /// What the reference resolved to in its registry (index digest if multi-platform).
    pub digest: Digest,
    /// This platform's manifest.
    pub manifest_digest: Digest,
    /// The config digest, Docker's "image ID".
    pub id: Digest,
    pub config: ImageConfig,
    pub layers: Vec<PathBuf>,
    /// Sum of the layer blobs' sizes.
    pub size: u64,
}

pub(crate) struct Inner {
    root: PathBuf,
    snap_dir: PathBuf,
    meta_path: PathBuf,
    content: ContentStore,
    registry: RegistryClient,
    meta: Mutex<Meta>,
    /// Serialises `persist` so the file on disk only ever moves forward.
    save_lock: Mutex<()>,
    /// Background persists not finished yet, and their completion signal.
    in_flight: AtomicUsize,
    persisted: tokio::sync::Notify,
    /// Pulls, loads and pushes hold it shared; gc exclusively.
    op: tokio::sync::RwLock<()>,
    /// Pulls under way, by reference: how a later caller waits for the first one's
    /// outcome (None until it ends; the sender's drop means it was cancelled).
    pulls: Mutex<HashMap<String, watch::Receiver<Option<PullOutcome>>>>,
}

/// How a shared pull ended: the image it stored, or its error's text. Waiters take the
/// image from here rather than reading the store again, where a `remove` in between
/// would make them fail with NotFound.
type PullOutcome = Result<Image, String>;

/// Removes a pull's entry from `Inner::pulls` when its caller finishes or is dropped.
struct PullSlot<'a> {
    inner: &'a Inner,
    key: String,
}

impl Drop for PullSlot<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pulls).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The image store of one node. Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (or creates) the store at `root`, removing leftovers of interrupted pulls.
    pub async fn open(
        root: impl AsRef<Path>,
        registry: RegistryConfig,
    ) -> Result<Self, ImageError> {
        let root = root.as_ref().to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(root, registry)).await??;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn registry(&self) -> &RegistryClient {
        &self.inner.registry
    }

    /// Pulls `reference` (for this node's platform) and unpacks it; `progress` is called
    /// with per-layer byte counts. A pull of the same reference already under way is
    /// waited for instead of repeated (`progress` is then not called).
    pub async fn pull<F>(&self, reference: &Reference, progress: F) -> Result<Image, ImageError>
    where
        F: Fn(&PullProgress) + Send + Sync + 'static,
    {
        let progress: pull::Progress = Arc::new(progress);
        let key = reference.to_string();
        loop {
            // Either this caller pulls (it holds the sender) or it waits for the one that
            // does.
            let leading = {
                let mut pulls = lock(&self.inner.pulls);
                match pulls.get(&key) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        pulls.insert(key.clone(), rx);
                        Ok(tx)
                    }
                }
            };
            let mut waiting = match leading {
                Ok(tx) => {
                    let _slot = PullSlot {
                        inner: &self.inner,
                        key: key.clone(),
                    };
                    let result = pull::pull(&self.inner, reference, progress).await;
                    tx.send_replace(Some(
                        result
                            .as_ref()
                            .map(Clone::clone)
                            .map_err(ToString::to_string),
                    ));
                    return result;
                }
                Err(rx) => rx,
            };
            // Cloned out: the borrow of the channel must not outlive this statement.
            let outcome = waiting.wait_for(Option::is_some).await.map(|o| o.clone());
            match outcome {
                Ok(Some(Ok(image))) => return Ok(image),
                Ok(Some(Err(message))) => {
                    return Err(ImageError::SharedPull {
                        reference: key,
                        message,
                    });
                }
                // The first caller was dropped mid-pull: try again (one of the waiting
                // callers takes over).
                Ok(None) | Err(_) => {}
            }
        }
    }

    /// The stored image named `reference`.
    pub async fn get(&self, reference: &Reference) -> Result<Image, ImageError> {
        let meta = self.inner.meta();
        let rec = meta
            .images
            .get(&reference.to_string())
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_string(),
            })?;
        self.inner.image(&meta, rec)
    }

    /// All stored images, sorted by reference.
    pub async fn list(&self) -> Result<Vec<Image>, ImageError> {
        let meta = self.inner.meta();
        meta.images
            .values()
            .map(|r| self.inner.image(&meta, r))
            .collect()
    }

    /// Forgets `reference`; its blobs and snapshots go at the next `gc`.
    pub async fn remove(&self, reference: &Reference) -> Result<(), ImageError> {
        if self
            .inner
            .meta()
            .images
            .remove(&reference.to_string())
            .is_none()
        {
            return Err(ImageError::NotFound {
                reference: reference.to_string(),
            });
        }
        self.sync().await
    }

    /// Waits until every change so far is on disk (pulls return before that). Call it
    /// before shutting down, or before reopening the same root in this process.
    pub async fn sync(&self) -> Result<(), ImageError> {
        loop {
            let done = self.inner.persisted.notified();
            if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            done.await;
        }
        let inner = self.inner.clone();
        Ok(tokio::task::spawn_blocking(move || inner.persist()).await??)
    }

    /// Deletes blobs and snapshots no image references; returns the bytes freed.
    pub async fn gc(&self) -> Result<u64, ImageError> {
        let _exclusive = self.inner.op.write().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.gc()).await?
    }

    /// Imports the images of a `docker save` tar or an OCI image layout (a directory or
    /// a tar of one). Returns the images loaded.
    pub async fn load(&self, path: impl AsRef<Path>) -> Result<Vec<Image>, ImageError> {
        load::load(&self.inner, path.as_ref()).await
    }

    /// Uploads the stored image `local` to the registry as `target`.
    pub async fn push(&self, local: &Reference, target: &Reference) -> Result<(), ImageError> {
        push::push(&self.inner, local, target).await
    }
}

impl Inner {
    fn open(root: PathBuf, registry: RegistryConfig) -> Result<Self, ImageError> {
        let content = ContentStore::open(&root)?;
        let snap_dir = root.join(SNAP_DIR);
        fs::create_dir_all(&snap_dir).map_err(content::io_err("create", &snap_dir))?;
        let meta_path = root.join(META_FILE);
        let meta = Meta::load(&meta_path)?;
        // Directories without a record are interrupted unpacks.
        let known: BTreeSet<String> = meta.snapshots.values().map(|s| s.id.to_string()).collect();
        for entry in fs::read_dir(&snap_dir).map_err(content::io_err("read", &snap_dir))? {
            let entry = entry.map_err(content::io_err("read", &snap_dir))?;
            if !known.contains(&*entry.file_name().to_string_lossy()) {
                let p = entry.path();
                fs::remove_dir_all(&p).map_err(content::io_err("remove", &p))?;
            }
        }
        Ok(Self {
            root,
            snap_dir,
            meta_path,
            content,
            registry: RegistryClient::new(registry),
            meta: Mutex::new(meta),
            save_lock: Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            persisted: tokio::sync::Notify::new(),
            op: tokio::sync::RwLock::new(()),
            pulls: Mutex::new(HashMap::new()),
        })
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        lock(&self.meta)
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snap_dir.join(id.to_string())
    }

    fn image(&self, meta: &Meta, rec: &ImageRecord) -> Result<Image, ImageError> {
        let layers = rec
            .layers
            .iter()
            .map(|l| {
                meta.snapshots
                    .get(&l.chain_id)
                    .map(|s| self.snapshot_dir(s.id))
                    .ok_or_else(|| ImageError::Content {
                        reference: rec.reference.to_string(),
                        layer: l.blob.digest.clone(),
                        source: ContentError::Missing {
                            digest: l.chain_id.clone(),
                        },
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Image {
            reference: rec.reference.clone(),
            digest: rec.digest.clone(),
            manifest_digest: rec.manifest_digest.clone(),
            id: rec.config_digest.clone(),
            config: rec.config.clone(),
            layers,
            size: rec.layers.iter().map(|l| l.blob.size).sum(),
        })
    }

    /// Records an image (replacing what the reference named before) and returns it at
    /// once; the record reaches disk in the background (see `persist`).
    fn commit_image(self: &Arc<Self>, rec: ImageRecord) -> Result<Image, ImageError> {
        let image = {
            let mut meta = self.meta();
            let image = self.image(&meta, &rec)?;
            meta.images.insert(rec.reference.to_string(), rec);
            image
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = inner.persist() {
                tracing::error!(%err, root = ?inner.root, "persisting the image store index");
            }
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            inner.persisted.notify_waiters();
        });
        Ok(image)
    }

    /// Makes the current index durable, and with it everything it references: the
    /// index is copied, the filesystem flushed (syncfs: the unpacked files and blobs of
    /// every recorded snapshot), then the copy written (tmp, fsync, rename, fsync dir).
    /// One flush per change instead of an fsync per file keeps pulls fast; until it
    /// lands, a crash forgets the image and `open` deletes its orphan snapshots.
    fn persist(&self) -> Result<(), ContentError> {
        let _serial = lock(&self.save_lock);
        let snapshot = self.meta().clone();
        let dir = fs::File::open(&self.root).map_err(content::io_err("open", &self.root))?;
        rustix::fs::syncfs(&dir).map_err(|e| content::io_err("syncfs", &self.root)(e.into()))?;
        snapshot.save(&self.meta_path)?;
        dir.sync_all().map_err(content::io_err("fsync", &self.root))
    }

    fn gc(&self) -> Result<u64, ImageError> {
        let mut meta = self.meta();
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let mut chains: BTreeSet<Digest> = BTreeSet::new();
        for rec in meta.images.values() {
            for d in [&rec.digest, &rec.manifest_digest, &rec.config_digest]
                .into_iter()
                .chain(rec.index_digest.as_ref())
            {
                blobs.insert(d.hex().to_owned());
            }
            for l in &rec.layers {
                blobs.insert(l.blob.digest.hex().to_owned());
                chains.insert(l.chain_id.clone());
            }
        }
        let mut freed = 0;
        let dropped: Vec<Digest> = meta
            .snapshots
            .keys()
            .filter(|c| !chains.contains(*c))
            .cloned()
            .collect();
        let doomed: Vec<PathBuf> = dropped
            .iter()
            .filter_map(|c| meta.snapshots.remove(c))
            .map(|s| self.snapshot_dir(s.id))
            .collect();
        drop(meta);
        // the index must stop naming them before they go
        self.persist()?;
        for p in doomed {
            freed += content::disk_usage(&p);
            if p.exists() {
                fs::remove_dir_all(&p).map_err(content::io_err("remove", &p))?;
            }
        }
        let dir = self.content.blobs_dir();
        for entry in fs::read_dir(dir).map_err(content::io_err("read", dir))? {
            let entry = entry.map_err(content::io_err("read", dir))?;
            if !blobs.contains(&*entry.file_name().to_string_lossy()) {
                let p = entry.path();
                freed += content::disk_usage(&p);
                fs::remove_file(&p).map_err(content::io_err("remove", &p))?;
            }
        }
        tracing::info!(freed, "image gc");
        Ok(freed)
    }
}
