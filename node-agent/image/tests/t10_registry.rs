//! Pull, push, load and gc against a real `docker-registry` on loopback, with images the
//! tests build themselves; unpacked trees checked file by file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use skiff_image::testing::{self, Compression, ImageBuilder, LayerBuilder, Registry};
use skiff_image::{
    ContentError, Digest, ImageError, ImageStore, LayerState, Platform, PullProgress, Reference,
    RegistryConfig, RegistryError,
};

/// A tree as `path -> description`, for whole-tree comparisons.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let mode = md.mode() & 0o7777;
            let desc = if ft.is_dir() {
                walk(root, &p, out);
                format!("dir {mode:o} {}:{}", md.uid(), md.gid())
            } else if ft.is_symlink() {
                format!(
                    "symlink -> {}",
                    fs::read_link(&p).expect("readlink").display()
                )
            } else if ft.is_char_device() {
                format!("char {}", md.rdev())
            } else {
                let data = fs::read(&p).expect("read");
                format!(
                    "file {mode:o} {}:{} {}",
                    md.uid(),
                    md.gid(),
                    Digest::of(&data)
                )
            };
            out.insert(rel, desc);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn file_desc(data: &[u8], mode: u32) -> String {
    format!("file {mode:o} 0:0 {}", Digest::of(data))
}

/// A test's temporary directory. A store writes its index in the background after a
/// pull; when that write lands while `TempDir` is removing the directory, the removal
/// fails and `TempDir` says nothing: two or three directories (`meta.json`, `2/`,
/// `store2/`) were left in /tmp by every run of this suite. The removal here is retried
/// until the directory is gone.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        TestDir(tempfile::tempdir().expect("tempdir").keep())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        for _ in 0..250 {
            match fs::remove_dir_all(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

async fn store(dir: &Path, config: RegistryConfig) -> ImageStore {
    ImageStore::open(dir, config).await.expect("open store")
}

fn recorder() -> (
    Arc<Mutex<Vec<PullProgress>>>,
    impl Fn(&PullProgress) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    (events, move |p: &PullProgress| {
        e.lock().expect("lock").push(p.clone())
    })
}

#[tokio::test]
async fn busybox_loaded_pushed_and_pulled_back_file_by_file() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();

    // build → OCI layout → load into store A → push (our push) → pull into store B
    let local = Reference::parse("skiff.test/busybox:1").expect("ref");
    let built = testing::busybox().build();
    built
        .write_oci_layout(&tmp.path().join("layout"), &local)
        .expect("layout");
    let a = store(&tmp.path().join("a"), registry.config()).await;
    let loaded = a.load(tmp.path().join("layout")).await.expect("load");
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].reference, local);
    assert_eq!(loaded[0].manifest_digest, built.manifest_digest);
    let remote = registry.reference("library/busybox:latest");
    a.push(&local, &remote).await.expect("push");

    let b = store(&tmp.path().join("b"), registry.config()).await;
    let (events, progress) = recorder();
    let image = b.pull(&remote, progress).await.expect("pull");
    assert_eq!(image.reference, remote);
    assert_eq!(
        image.manifest_digest, built.manifest_digest,
        "push kept the manifest bytes"
    );
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.config.cmd, ["sh"]);
    assert!(image.config.env[0].starts_with("PATH="));

    let got = tree(&image.layers[0]);
    let busybox = fs::read("/bin/busybox").expect("busybox");
    assert_eq!(got["bin/busybox"], file_desc(&busybox, 0o755));
    assert_eq!(got["tmp"], "dir 1777 0:0");
    assert_eq!(got["root"], "dir 700 0:0");
    for applet in testing::BUSYBOX_APPLETS {
        assert_eq!(
            got[&format!("bin/{applet}")],
            "symlink -> busybox",
            "{applet}"
        );
    }
    assert_eq!(
        got.len(),
        8 + 3 + testing::BUSYBOX_APPLETS.len(),
        "{got:#?}"
    );

    let events = events.lock().expect("lock").clone();
    let last = events.last().expect("progress reported");
    assert_eq!(last.state, LayerState::Done);
    assert!(
        events.iter().any(|e| e.state == LayerState::Downloading
            && e.current == e.total
            && e.total > 1_000_000),
        "per-layer byte progress: {events:?}"
    );

    // the same image through `get`/`list`, and a second pull is all cached
    assert_eq!(b.get(&remote).await.expect("get"), image);
    assert_eq!(b.list().await.expect("list"), vec![image.clone()]);
    let (events, progress) = recorder();
    b.pull(&remote, progress).await.expect("pull again");
    assert!(
        events
            .lock()
            .expect("lock")
            .iter()
            .all(|e| e.state == LayerState::Cached)
    );
    // and `busybox` style short names resolve to docker.io, which the test never contacts
    assert_eq!(
        Reference::parse("busybox").expect("ref").to_string(),
        "docker.io/library/busybox:latest"
    );
}

/// Mounts an overlay of `lowers` (lowest first) and unmounts on drop.
struct Overlay {
    merged: PathBuf,
}

impl Overlay {
    fn mount(lowers: &[PathBuf], merged: &Path) -> Self {
        fs::create_dir_all(merged).expect("mkdir");
        let lowerdir = lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "skiff-image-test", "-o"])
            .arg(format!("lowerdir={lowerdir}"))
            .arg(merged)
            .status()
            .expect("mount");
        assert!(status.success(), "mount overlay");
        Self {
            merged: merged.to_owned(),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ignored = std::process::Command::new("umount")
            .arg(&self.merged)
            .status();
    }
}

#[tokio::test]
async fn multi_layer_image_with_deletions_replacements_and_opaque_dirs() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/deleted", b"gone soon", 0o644)
        .file("etc/replaced", b"old", 0o644)
        .file("etc/kept", b"kept", 0o600)
        .dir("var/cache", 0o755)
        .file("var/cache/a", b"a", 0o644)
        .file("var/cache/b", b"b", 0o644)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"tool v1", 0o755)
        .tar();
    let middle = LayerBuilder::new()
        .dir("etc", 0o755)
        .whiteout("etc/deleted")
        .file("etc/replaced", b"new contents", 0o640)
        .dir("var/cache", 0o755)
        .opaque("var/cache")
        .file("var/cache/c", b"c", 0o644)
        .file("data/blob", &[9u8; 300_000], 0o644)
        .hardlink("data/blob-link", "data/blob")
        .symlink("data/current", "blob")
        .tar();
    let top = LayerBuilder::new()
        .dir("usr", 0o755)
        .whiteout("usr/bin")
        .file("usr/README", b"bin is gone", 0o644)
        .hardlink("etc/kept-link", "etc/kept") // target in the base layer
        .tar();
    let image = ImageBuilder::new()
        .layer(base, Compression::Gzip)
        .layer(middle, Compression::Zstd)
        .layer(top, Compression::None)
        .set("Entrypoint", json!(["/usr/bin/tool"]))
        .set("Cmd", json!(["--serve"]))
        .set("WorkingDir", json!("/data"))
        .set("User", json!("1000:1000"))
        .set("ExposedPorts", json!({"8080/tcp": {}}))
        .set(
            "Healthcheck",
            json!({"Test": ["CMD", "true"], "Interval": 5_000_000_000u64, "Retries": 2}),
        )
        .set("Labels", json!({"org.example": "yes"}))
        .build();
    let r = registry.reference("app/multi:v1");
    image.push(&registry.client(), &r).await.expect("push");

    let s = store(&tmp.path().join("store"), registry.config()).await;
    let pulled = s.pull(&r, |_| {}).await.expect("pull");
    assert_eq!(pulled.layers.len(), 3);
    let c = &pulled.config;
    assert_eq!(
        (c.entrypoint.as_slice(), c.cmd.as_slice()),
        (
            &["/usr/bin/tool".to_owned()][..],
            &["--serve".to_owned()][..]
        )
    );
    assert_eq!(
        (c.workdir.as_str(), c.user.as_str()),
        ("/data", "1000:1000")
    );
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.healthcheck.as_ref().map(|h| h.retries), Some(2));
    assert_eq!(c.labels["org.example"], "yes");

    let want_base: BTreeMap<String, String> = [
        ("etc", "dir 755 0:0".to_owned()),
        ("etc/deleted", file_desc(b"gone soon", 0o644)),
        ("etc/kept", file_desc(b"kept", 0o600)),
        ("etc/replaced", file_desc(b"old", 0o644)),
        ("usr", "dir 755 0:0".to_owned()),
        ("usr/bin", "dir 755 0:0".to_owned()),
        ("usr/bin/tool", file_desc(b"tool v1", 0o755)),
        ("var", "dir 755 0:0".to_owned()),
        ("var/cache", "dir 755 0:0".to_owned()),
        ("var/cache/a", file_desc(b"a", 0o644)),
        ("var/cache/b", file_desc(b"b", 0o644)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(tree(&pulled.layers[0]), want_base);

    let blob = [9u8; 300_000];
    let want_middle: BTreeMap<String, String> = [
        ("data", "dir 755 0:0".to_owned()),
        ("data/blob", file_desc(&blob, 0o644)),
        ("data/blob-link", file_desc(&blob, 0o644)),
        ("data/current", "symlink -> blob".to_owned()),
        ("etc", "dir 755 0:0".to_owned()),
        ("etc/deleted", "char 0".to_owned()),
        ("etc/replaced", file_desc(b"new contents", 0o640)),
        ("var", "dir 755 0:0".to_owned()),
        ("var/cache", "dir 755 0:0".to_owned()),
        ("var/cache/c", file_desc(b"c", 0o644)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(tree(&pulled.layers[1]), want_middle);
    let mid = &pulled.layers[1];
    assert_eq!(
        fs::metadata(mid.join("data/blob")).expect("blob").ino(),
        fs::metadata(mid.join("data/blob-link"))
            .expect("link")
            .ino()
    );
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(mid.join("var/cache"), "trusted.overlay.opaque", &mut buf)
        .expect("opaque");
    assert_eq!(&buf[..n], b"y");

    let want_top: BTreeMap<String, String> = [
        ("etc", "dir 755 0:0".to_owned()),
        ("etc/kept-link", file_desc(b"kept", 0o600)),
        ("usr", "dir 755 0:0".to_owned()),
        ("usr/README", file_desc(b"bin is gone", 0o644)),
        ("usr/bin", "char 0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(tree(&pulled.layers[2]), want_top);

    for layer in &pulled.layers {
        let md = fs::metadata(layer).expect("snapshot root");
        assert_eq!(
            md.mode() & 0o7777,
            0o755,
            "snapshot roots are 0755: {layer:?}"
        );
        let short = layer
            .strip_prefix(tmp.path())
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        assert!(
            short.len() <= "store/snap/NNN".len(),
            "short snapshot path: {short}"
        );
    }

    // what a container sees: the overlay of the snapshots
    let overlay = Overlay::mount(&pulled.layers, &tmp.path().join("merged"));
    let merged = tree(&overlay.merged);
    let want_merged: BTreeMap<String, String> = [
        ("data", "dir 755 0:0".to_owned()),
        ("data/blob", file_desc(&blob, 0o644)),
        ("data/blob-link", file_desc(&blob, 0o644)),
        ("data/current", "symlink -> blob".to_owned()),
        ("etc", "dir 755 0:0".to_owned()),
        ("etc/kept", file_desc(b"kept", 0o600)),
        ("etc/kept-link", file_desc(b"kept", 0o600)),
        ("etc/replaced", file_desc(b"new contents", 0o640)),
        ("usr", "dir 755 0:0".to_owned()),
        ("usr/README", file_desc(b"bin is gone", 0o644)),
        ("var", "dir 755 0:0".to_owned()),
        ("var/cache", "dir 755 0:0".to_owned()),
        ("var/cache/c", file_desc(b"c", 0o644)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(merged, want_merged);
    drop(overlay);
}

fn arch_image(p: &str) -> testing::BuiltImage {
    let mut it = p.split('/');
    let platform = Platform::new(it.next().expect("os"), it.next().expect("arch"), it.next());
    ImageBuilder::new()
        .platform(platform)
        .layer(
            LayerBuilder::new()
                .file("platform", p.as_bytes(), 0o644)
                .tar(),
            Compression::Gzip,
        )
        .build()
}

#[tokio::test]
async fn multi_platform_index_resolves_to_the_node_platform() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let host = Platform::host();
    let host_s = host.to_string();
    let images: Vec<_> = [
        "linux/arm/v7",
        "linux/arm64/v8",
        "linux/amd64",
        "linux/ppc64le",
    ]
    .iter()
    .map(|p| {
        if p.starts_with(&format!("linux/{}", host.architecture)) {
            arch_image(&host_s)
        } else {
            arch_image(p)
        }
    })
    .collect();
    let r = registry.reference("multi/arch:latest");
    let index_digest = testing::push_index(&registry.client(), &r, &images)
        .await
        .expect("push index");

    let s = store(&tmp.path().join("host"), registry.config()).await;
    let img = s.pull(&r, |_| {}).await.expect("pull");
    assert_eq!(
        img.digest, index_digest,
        "the reference resolves to the index"
    );
    assert_eq!(
        fs::read_to_string(img.layers[0].join("platform")).expect("read"),
        host_s
    );
    assert_eq!(img.config.platform, host);

    let mut cfg = registry.config();
    cfg.platform = Some(Platform::new("linux", "arm", Some("v7")));
    let s = store(&tmp.path().join("arm"), cfg).await;
    let img = s.pull(&r, |_| {}).await.expect("pull arm");
    assert_eq!(
        fs::read_to_string(img.layers[0].join("platform")).expect("read"),
        "linux/arm/v7"
    );

    let mut cfg = registry.config();
    cfg.platform = Some(Platform::new("linux", "s390x", None));
    let s = store(&tmp.path().join("s390x"), cfg).await;
    let err = s.pull(&r, |_| {}).await.expect_err("no s390x image");
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains(&r.to_string()) && msg.contains("linux/arm/v7"),
        "{msg}"
    );
}

#[tokio::test]
async fn wrong_digest_is_rejected_and_nothing_is_kept() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let image = ImageBuilder::new()
        .layer(
            LayerBuilder::new().file("f", &[1u8; 10_000], 0o644).tar(),
            Compression::Gzip,
        )
        .build();
    let r = registry.reference("corrupt/me:v1");
    image.push(&registry.client(), &r).await.expect("push");
    // corrupt the layer in the registry's storage: same size, other bytes
    let layer = image.manifest.layers[0].digest.clone();
    let hex = layer.hex();
    let data = registry.data_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let evil = testing::compress(
        &LayerBuilder::new().file("f", &[2u8; 10_000], 0o644).tar(),
        Compression::Gzip,
    );
    let mut bytes = fs::read(&data).expect("blob in registry storage");
    let n = bytes.len().min(evil.len());
    bytes[..n].copy_from_slice(&evil[..n]);
    fs::write(&data, &bytes).expect("corrupt");

    let root = tmp.path().join("store");
    let s = store(&root, registry.config()).await;
    let err = s.pull(&r, |_| {}).await.expect_err("corrupt layer");
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            ImageError::Content {
                source: ContentError::DigestMismatch { .. },
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains(layer.as_str()), "error names the layer: {msg}");
    assert!(!root.join("blobs/sha256").join(hex).exists());
    assert_eq!(
        fs::read_dir(root.join("snap")).expect("snap").count(),
        0,
        "no snapshot kept"
    );
    assert_eq!(
        fs::read_dir(root.join("ingest")).expect("ingest").count(),
        0,
        "no partial blob kept"
    );
    assert!(matches!(s.get(&r).await, Err(ImageError::NotFound { .. })));
}

#[tokio::test]
async fn malicious_layers_are_refused_with_nothing_written_outside() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let root = tmp.path().join("store");
    let s = store(&root, registry.config()).await;
    let cases = [
        (
            "dotdot",
            LayerBuilder::new()
                .file("ok", b"fine", 0o644)
                .raw(b"../../../../pwned", tar::EntryType::Regular, None, b"evil")
                .tar(),
            "../../../../pwned",
        ),
        (
            "symlink",
            LayerBuilder::new()
                .symlink("escape", "../../../..")
                .file("escape/pwned", b"evil", 0o644)
                .tar(),
            "escape/pwned",
        ),
    ];
    for (name, tar, needle) in cases {
        let image = ImageBuilder::new().layer(tar, Compression::Gzip).build();
        let r = registry.reference(&format!("evil/{name}:v1"));
        image.push(&registry.client(), &r).await.expect("push");
        let err = s.pull(&r, |_| {}).await.expect_err("malicious layer");
        let msg = err.to_string();
        assert!(matches!(err, ImageError::Unpack { .. }), "{msg}");
        assert!(
            msg.contains(needle) && msg.contains(&r.to_string()),
            "{msg}"
        );
    }
    // the store root is tmp/store: nothing appeared beside it or above it
    let beside: Vec<_> = fs::read_dir(tmp.path())
        .expect("read")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(beside, ["store"]);
    assert!(!tmp.path().parent().expect("parent").join("pwned").exists());
    assert_eq!(fs::read_dir(root.join("snap")).expect("snap").count(), 0);
}

#[tokio::test]
async fn unknown_images_and_registries_are_named_in_errors() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let s = store(tmp.path(), registry.config()).await;

    let missing = registry.reference("no/such-image:v9");
    let err = s.pull(&missing, |_| {}).await.expect_err("unknown image");
    assert!(
        matches!(err, ImageError::Registry(RegistryError::NotFound { .. })),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&missing.to_string()) && msg.contains("not found"),
        "{msg}"
    );

    // a registry nobody listens on
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let nowhere = Reference::parse(&format!("127.0.0.1:{closed}/x:v1")).expect("ref");
    let mut cfg = registry.config();
    cfg.insecure.push(format!("127.0.0.1:{closed}"));
    let s2 = store(&tmp.path().join("2"), cfg).await;
    let err = s2
        .pull(&nowhere, |_| {})
        .await
        .expect_err("unknown registry");
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::Registry(RegistryError::Unreachable { .. })),
        "{msg}"
    );
    assert!(msg.contains(&format!("127.0.0.1:{closed}")), "{msg}");

    let err = s.get(&missing).await.expect_err("not stored");
    assert!(err.to_string().contains(&missing.to_string()));
    assert!(s.remove(&missing).await.is_err());
}

#[tokio::test]
async fn concurrent_pulls_download_a_shared_layer_once() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let shared = LayerBuilder::new()
        .file("shared", &vec![3u8; 2_000_000], 0o644)
        .tar();
    let a = ImageBuilder::new()
        .layer(shared.clone(), Compression::Gzip)
        .layer(
            LayerBuilder::new().file("a", b"a", 0o644).tar(),
            Compression::Gzip,
        )
        .build();
    let b = ImageBuilder::new()
        .layer(shared, Compression::Gzip)
        .layer(
            LayerBuilder::new().file("b", b"b", 0o644).tar(),
            Compression::Gzip,
        )
        .build();
    let ra = registry.reference("share/a:v1");
    let rb = registry.reference("share/b:v1");
    a.push(&registry.client(), &ra).await.expect("push a");
    b.push(&registry.client(), &rb).await.expect("push b");
    let shared_digest = a.manifest.layers[0].digest.clone();

    let s = store(tmp.path(), registry.config()).await;
    let (ea, pa) = recorder();
    let (eb, pb) = recorder();
    let (ia, ib) = tokio::join!(s.pull(&ra, pa), s.pull(&rb, pb));
    let (ia, ib) = (ia.expect("pull a"), ib.expect("pull b"));
    assert_eq!(
        ia.layers[0], ib.layers[0],
        "one snapshot for the shared layer"
    );
    assert_ne!(ia.layers[1], ib.layers[1]);
    let downloads = |e: &Arc<Mutex<Vec<PullProgress>>>| {
        e.lock()
            .expect("lock")
            .iter()
            .filter(|p| p.digest == shared_digest && p.state == LayerState::Downloading)
            .count()
    };
    let cached = |e: &Arc<Mutex<Vec<PullProgress>>>| {
        e.lock()
            .expect("lock")
            .iter()
            .any(|p| p.digest == shared_digest && p.state == LayerState::Cached)
    };
    let (da, db) = (downloads(&ea), downloads(&eb));
    assert!(
        (da > 0) ^ (db > 0),
        "exactly one pull downloads the shared layer ({da}, {db})"
    );
    assert!(if da > 0 { cached(&eb) } else { cached(&ea) });

    // same reference pulled twice at once: one download
    let s2 = store(&tmp.path().join("2"), registry.config()).await;
    let (e1, p1) = recorder();
    let (e2, p2) = recorder();
    let (x, y) = tokio::join!(s2.pull(&ra, p1), s2.pull(&ra, p2));
    assert_eq!(x.expect("x"), y.expect("y"));
    let per_layer: HashMap<Digest, usize> = e1
        .lock()
        .expect("lock")
        .iter()
        .chain(e2.lock().expect("lock").iter())
        .filter(|p| p.state == LayerState::Done)
        .fold(HashMap::new(), |mut m, p| {
            *m.entry(p.digest.clone()).or_default() += 1;
            m
        });
    assert!(
        per_layer.values().all(|&n| n == 1),
        "each layer unpacked once: {per_layer:?}"
    );
}

#[tokio::test]
async fn gc_frees_what_no_image_uses() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let base = LayerBuilder::new()
        .file("base", &vec![5u8; 500_000], 0o644)
        .tar();
    let mk = |n: &str| {
        ImageBuilder::new()
            .layer(base.clone(), Compression::Gzip)
            .layer(
                LayerBuilder::new()
                    .file(n, &vec![6u8; 200_000], 0o644)
                    .tar(),
                Compression::None,
            )
            .build()
    };
    let (ra, rb) = (registry.reference("gc/a:v1"), registry.reference("gc/b:v1"));
    mk("a").push(&registry.client(), &ra).await.expect("push");
    mk("b").push(&registry.client(), &rb).await.expect("push");
    let root = tmp.path().join("store");
    let s = store(&root, registry.config()).await;
    let a = s.pull(&ra, |_| {}).await.expect("a");
    let b = s.pull(&rb, |_| {}).await.expect("b");
    assert_eq!(s.gc().await.expect("gc"), 0, "everything is in use");

    s.remove(&ra).await.expect("remove a");
    let freed = s.gc().await.expect("gc");
    assert!(freed >= 400_000, "a's own layer blob and snapshot: {freed}");
    assert!(!a.layers[1].exists());
    assert!(a.layers[0].exists(), "shared base stays");
    assert_eq!(s.get(&rb).await.expect("b still there"), b);

    // reopening keeps b
    s.sync().await.expect("sync");
    drop(s);
    let s = store(&root, registry.config()).await;
    assert_eq!(s.list().await.expect("list"), vec![b.clone()]);
    s.remove(&rb).await.expect("remove b");
    assert!(s.gc().await.expect("gc") > 500_000);
    assert_eq!(
        fs::read_dir(root.join("blobs/sha256"))
            .expect("blobs")
            .count(),
        0
    );
    assert_eq!(fs::read_dir(root.join("snap")).expect("snap").count(), 0);
}

/// A classic `docker save` archive: manifest.json, <id>/layer.tar, <config>.json.
fn docker_save_tar(image: &testing::BuiltImage, layer_tars: &[Vec<u8>], tag: &str) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        t.append_data(&mut h, path, data).expect("append");
    };
    let config = image.blobs.last().expect("config");
    let config_name = format!("{}.json", config.0.hex());
    add(&config_name, &config.1);
    let mut layers = Vec::new();
    for (i, l) in layer_tars.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, l);
        layers.push(name);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": layers}]);
    add(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    t.into_inner().expect("tar")
}

#[tokio::test]
async fn docker_save_archives_load_and_push() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let l1 = LayerBuilder::new().file("hello", b"world", 0o644).tar();
    let l2 = LayerBuilder::new()
        .whiteout("hello")
        .file("bye", b"now", 0o600)
        .tar();
    let built = ImageBuilder::new()
        .layer(l1.clone(), Compression::None)
        .layer(l2.clone(), Compression::None)
        .set("Cmd", json!(["/bye"]))
        .build();
    let archive = tmp.path().join("saved.tar");
    fs::write(
        &archive,
        docker_save_tar(&built, &[l1, l2], "example.com/saved:v1"),
    )
    .expect("write");

    let s = store(&tmp.path().join("store"), registry.config()).await;
    let loaded = s.load(&archive).await.expect("load");
    assert_eq!(loaded.len(), 1);
    let img = &loaded[0];
    assert_eq!(img.reference.to_string(), "example.com/saved:v1");
    assert_eq!(img.config.cmd, ["/bye"]);
    assert_eq!(tree(&img.layers[1])["hello"], "char 0");
    assert_eq!(tree(&img.layers[1])["bye"], file_desc(b"now", 0o600));

    let remote = registry.reference("saved:v1");
    s.push(&img.reference, &remote).await.expect("push");
    let s2 = store(&tmp.path().join("store2"), registry.config()).await;
    let pulled = s2.pull(&remote, |_| {}).await.expect("pull");
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    assert_eq!(tree(&pulled.layers[0]), tree(&img.layers[0]));
    assert_eq!(tree(&pulled.layers[1]), tree(&img.layers[1]));

    let err = s
        .load(tmp.path().join("nothing-here"))
        .await
        .expect_err("missing");
    assert!(err.to_string().contains("nothing-here"), "{err}");
}

#[tokio::test]
async fn bearer_tokens_from_the_challenge_with_stored_credentials() {
    let registry = Registry::start_with_token_auth("skiff", "s3cret")
        .await
        .expect("registry");
    let tmp = TestDir::new();
    // push with credentials: the client follows WWW-Authenticate to the token service
    let r = registry
        .push_busybox("auth/busybox:v1")
        .await
        .expect("push with a token");
    let after_push = registry.tokens_issued();
    assert!(after_push > 0, "tokens were obtained");

    let s = store(&tmp.path().join("ok"), registry.config()).await;
    let image = s.pull(&r, |_| {}).await.expect("pull with a token");
    assert!(image.layers[0].join("bin/busybox").exists());
    assert!(registry.tokens_issued() > after_push);

    let mut anonymous = registry.config();
    anonymous.credentials.clear();
    let s = store(&tmp.path().join("anon"), anonymous).await;
    let err = s.pull(&r, |_| {}).await.expect_err("anonymous pull");
    assert!(
        matches!(err, ImageError::Registry(RegistryError::Denied { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(registry.host()), "{err}");

    let mut wrong = registry.config();
    for c in wrong.credentials.values_mut() {
        c.password = "nope".to_owned();
    }
    let s = store(&tmp.path().join("wrong"), wrong).await;
    let err = s.pull(&r, |_| {}).await.expect_err("wrong password");
    assert!(
        matches!(err, ImageError::Registry(RegistryError::Denied { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn basic_auth_from_stored_credentials() {
    let registry = Registry::start_with_basic_auth().await.expect("registry");
    let tmp = TestDir::new();
    let r = registry
        .push_busybox("basic/busybox:v1")
        .await
        .expect("push with basic auth");
    let s = store(&tmp.path().join("ok"), registry.config()).await;
    let image = s.pull(&r, |_| {}).await.expect("pull with basic auth");
    assert!(image.layers[0].join("bin/busybox").exists());

    let mut anonymous = registry.config();
    anonymous.credentials.clear();
    let s = store(&tmp.path().join("anon"), anonymous).await;
    let err = s.pull(&r, |_| {}).await.expect_err("anonymous pull");
    assert!(
        matches!(err, ImageError::Registry(RegistryError::Denied { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(&r.to_string()), "{err}");
}

/// Tars a directory tree (an OCI layout) with paths relative to it.
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    t.append_dir_all(".", dir).expect("tar dir");
    t.into_inner().expect("tar")
}

#[tokio::test]
async fn oci_layout_tars_and_docker_25_archives_load() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let layer = LayerBuilder::new()
        .file("etc/os-release", b"ID=skiff\n", 0o644)
        .tar();
    let built = ImageBuilder::new()
        .layer(layer.clone(), Compression::Zstd)
        .set("Env", json!(["A=1"]))
        .build();
    let name = Reference::parse("example.com/layout:v2").expect("ref");
    let layout = tmp.path().join("layout");
    built.write_oci_layout(&layout, &name).expect("layout");

    // an OCI layout as a tar (what `docker save` writes since Docker 25, plus its
    // manifest.json pointing into blobs/sha256)
    let mut archive = tar_dir(&layout);
    let s = store(&tmp.path().join("a"), registry.config()).await;
    fs::write(tmp.path().join("layout.tar"), &archive).expect("write");
    let loaded = s
        .load(tmp.path().join("layout.tar"))
        .await
        .expect("load layout tar");
    assert_eq!(loaded[0].reference, name);
    assert_eq!(loaded[0].manifest_digest, built.manifest_digest);
    assert_eq!(
        fs::read(loaded[0].layers[0].join("etc/os-release")).expect("read"),
        b"ID=skiff\n"
    );

    let config = built.blobs.last().expect("config").0.clone();
    let manifest = json!([{
        "Config": format!("blobs/sha256/{}", config.hex()),
        "RepoTags": ["example.com/docker25:v1"],
        "Layers": [format!("blobs/sha256/{}", built.manifest.layers[0].digest.hex())],
    }]);
    fs::write(
        layout.join("manifest.json"),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write");
    archive = tar_dir(&layout);
    fs::write(tmp.path().join("docker25.tar"), &archive).expect("write");
    let s = store(&tmp.path().join("b"), registry.config()).await;
    let loaded = s
        .load(tmp.path().join("docker25.tar"))
        .await
        .expect("load docker 25 archive");
    assert_eq!(loaded[0].reference.to_string(), "example.com/docker25:v1");
    assert_eq!(loaded[0].config.env, ["A=1"]);
    assert_eq!(
        fs::read(loaded[0].layers[0].join("etc/os-release")).expect("read"),
        b"ID=skiff\n"
    );

    // a layout blob that does not match its name is refused
    let bad = tmp.path().join("bad");
    built.write_oci_layout(&bad, &name).expect("layout");
    let victim = bad
        .join("blobs/sha256")
        .join(built.manifest.layers[0].digest.hex());
    fs::write(&victim, b"not the layer").expect("corrupt");
    let s = store(&tmp.path().join("c"), registry.config()).await;
    let err = s.load(&bad).await.expect_err("corrupt layout");
    assert!(
        err.to_string()
            .contains(built.manifest.layers[0].digest.as_str()),
        "{err}"
    );
}

#[tokio::test]
async fn pull_by_digest_pins_the_manifest() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let r = registry.push_busybox("pinned:v1").await.expect("push");
    let digest = testing::busybox().build().manifest_digest;
    let pinned = r.with_digest(digest.clone());
    let s = store(tmp.path(), registry.config()).await;
    let image = s.pull(&pinned, |_| {}).await.expect("pull by digest");
    assert_eq!(image.manifest_digest, digest);
    assert_eq!(image.reference, pinned);

    let wrong = r.with_digest(Digest::of(b"no such manifest"));
    let err = s.pull(&wrong, |_| {}).await.expect_err("unknown digest");
    assert!(
        err.to_string()
            .contains(wrong.digest().expect("digest").as_str()),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_reference_share_one_pull() {
    let registry = Registry::start().await.expect("registry");
    let tmp = TestDir::new();
    let remote = registry.reference("library/busybox:shared");
    let a = store(&tmp.path().join("a"), registry.config()).await;
    let local = Reference::parse("skiff.test/busybox:shared").expect("ref");
    testing::busybox()
        .build()
        .write_oci_layout(&tmp.path().join("layout"), &local)
        .expect("layout");
    a.load(tmp.path().join("layout")).await.expect("load");
    a.push(&local, &remote).await.expect("push");

    // Ten replicas starting at once: one pull reports progress, all get the image.
    let b = store(&tmp.path().join("b"), registry.config()).await;
    let mut recorded = Vec::new();
    let mut pulls = Vec::new();
    for _ in 0..10 {
        let (events, progress) = recorder();
        recorded.push(events);
        pulls.push(b.pull(&remote, progress));
    }
    let images = futures::future::join_all(pulls).await;
    let first = images[0].as_ref().expect("pull");
    for image in &images {
        assert_eq!(image.as_ref().expect("pull"), first);
    }
    let reporting = recorded
        .iter()
        .filter(|events| !events.lock().expect("lock").is_empty())
        .count();
    assert_eq!(reporting, 1, "only the pull that ran reports progress");

    // A failure reaches every waiting caller, naming the image.
    let missing = registry.reference("no/such-image:shared");
    let errors = futures::future::join_all((0..5).map(|_| b.pull(&missing, |_| {}))).await;
    for err in errors {
        let msg = err.expect_err("unknown image").to_string();
        assert!(
            msg.contains(&missing.to_string()) && msg.contains("not found"),
            "{msg}"
        );
    }

    // A pull after those ran starts afresh (the tag is resolved again).
    let (events, progress) = recorder();
    b.pull(&remote, progress).await.expect("pull again");
    assert!(!events.lock().expect("lock").is_empty(), "a new pull ran");

    // A waiting caller gets the image the first pull stored, even when it is removed
    // before the waiter wakes up (it used to read the store again: NotFound).
    b.remove(&remote).await.expect("remove");
    let mut leader = Box::pin(b.pull(&remote, |_| {}));
    let mut waiter = Box::pin(b.pull(&remote, |_| {}));
    let pulled = tokio::select! {
        biased;
        r = &mut leader => r.expect("leader pull"),
        _ = &mut waiter => panic!("the waiter finished before the pull it waits for"),
    };
    b.remove(&remote).await.expect("remove after the pull");
    assert_eq!(waiter.await.expect("waiter"), pulled);
}
