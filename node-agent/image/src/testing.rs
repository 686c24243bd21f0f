//! Test support (cargo feature `testing`, never in production builds): a real
//! `docker-registry` on 127.0.0.1 with its own storage, killed on drop; builders for
//! layers (including malformed ones) and images; and busybox pushed in one call.
//!
//! ```ignore
//! let registry = skiff_image::testing::Registry::start().await?;
//! let busybox = registry.push_busybox("busybox:latest").await?;   // 127.0.0.1:<port>/busybox:latest
//! let store = ImageStore::open(dir, registry.config()).await?;
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, Index, Manifest};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry::{Credentials, RegistryClient, RegistryConfig, RegistryError};

/// The registry binary (Debian `docker-registry`); `SKIFF_DOCKER_REGISTRY` overrides.
pub fn registry_binary() -> PathBuf {
    std::env::var_os("SKIFF_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// A `docker-registry serve` process on a free loopback port.
pub struct Registry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
    token: Option<Auth>,
}

/// How a test registry authenticates clients.
enum Auth {
    Basic,
    Token(TokenServer),
}

/// The user [`Registry::start_with_basic_auth`] accepts.
pub const BASIC_USER: &str = "skiff";
/// Its password.
pub const BASIC_PASSWORD: &str = "s3cret";
/// bcrypt (cost 4, so each request stays cheap) of [`BASIC_PASSWORD`]: distribution's
/// htpasswd accepts only bcrypt, and a fixed fixture needs no bcrypt crate.
const BASIC_PASSWORD_BCRYPT: &str = "$2b$04$yapL2A5y.LOBJ.vjCabiJuGq1QyaoN26LgXUYHchJe00URMXS1JDm";

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .finish()
    }
}

impl Registry {
    /// Starts a registry with empty storage and waits until `/v2/` answers.
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None).await
    }

    /// Starts a registry that demands bearer tokens from a token service (also started
    /// here) which hands them out only for `username`/`password` (basic auth), the way
    /// Docker Hub and most private registries work.
    pub async fn start_with_token_auth(username: &str, password: &str) -> io::Result<Self> {
        Self::start_inner(Some((username.to_owned(), password.to_owned()))).await
    }

    /// Starts a registry that demands HTTP basic auth (htpasswd) as
    /// [`BASIC_USER`]/[`BASIC_PASSWORD`].
    pub async fn start_with_basic_auth() -> io::Result<Self> {
        Self::start_inner(Some((String::new(), String::new()))).await
    }

    async fn start_inner(auth: Option<(String, String)>) -> io::Result<Self> {
        let mut last_err = None;
        for _ in 0..5 {
            let token = match &auth {
                Some((u, p)) if !u.is_empty() => Some(Auth::Token(TokenServer::start(u, p).await?)),
                Some(_) => Some(Auth::Basic),
                None => None,
            };
            match Self::try_start(token).await {
                Ok(r) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    async fn try_start(token: Option<Auth>) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let auth = match &token {
            Some(Auth::Basic) => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{BASIC_USER}:{BASIC_PASSWORD_BCRYPT}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            Some(Auth::Token(t)) => {
                let bundle = dir.path().join("token.pem");
                std::fs::write(&bundle, &t.cert_pem)?;
                format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    t.addr,
                    bundle.display()
                )
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {host}\n{auth}",
                dir.path().join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(registry_binary())
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("spawning {}: {e}", registry_binary().display()),
                )
            })?;
        let mut reg = Self {
            child,
            host,
            dir,
            token,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = reg.child.try_wait()? {
                let log = std::fs::read_to_string(reg.dir.path().join("registry.log"))
                    .unwrap_or_default();
                return Err(io::Error::other(format!(
                    "docker-registry exited with {status}: {log}"
                )));
            }
            if reg.ping().await {
                return Ok(reg);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "docker-registry did not answer within 15s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    async fn ping(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(&self.host).await else {
            return false;
        };
        let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
        if s.write_all(req.as_bytes()).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        // 401 is an answer too: the registry is up and wants a token
        s.read_exact(&mut buf).await.is_ok()
            && buf.starts_with(b"HTTP/1.")
            && (&buf[9..12] == b"200" || &buf[9..12] == b"401")
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A registry configuration that reaches this registry over plain HTTP, with its
    /// credentials if it demands them.
    pub fn config(&self) -> RegistryConfig {
        let mut credentials = BTreeMap::new();
        let (username, password) = match &self.token {
            Some(Auth::Token(t)) => (t.username.clone(), t.password.clone()),
            Some(Auth::Basic) => (BASIC_USER.to_owned(), BASIC_PASSWORD.to_owned()),
            None => (String::new(), String::new()),
        };
        if self.token.is_some() {
            credentials.insert(self.host.clone(), Credentials { username, password });
        }
        RegistryConfig {
            insecure: vec![self.host.clone()],
            credentials,
            ..RegistryConfig::default()
        }
    }

    /// Tokens the token service has issued (0 without token auth).
    pub fn tokens_issued(&self) -> usize {
        match &self.token {
            Some(Auth::Token(t)) => t.issued.load(Ordering::SeqCst),
            _ => 0,
        }
    }

    /// `127.0.0.1:<port>/<name>`.
    pub fn reference(&self, name: &str) -> Reference {
        Reference::parse(&format!("{}/{name}", self.host)).expect("a valid repository name")
    }

    /// A client for this registry.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(self.config())
    }

    /// Builds the busybox image (see [`busybox`]) and pushes it as `name`.
    pub async fn push_busybox(&self, name: &str) -> Result<Reference, RegistryError> {
        let r = self.reference(name);
        let image = busybox().build();
        image.push(&self.client(), &r).await?;
        Ok(r)
    }

    /// The registry's data directory (to corrupt blobs in tests).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ignored = self.child.kill();
        let _ignored = self.child.wait();
        if let Some(Auth::Token(t)) = &self.token {
            t.task.abort();
        }
    }
}

const TOKEN_SERVICE: &str = "skiff-test-registry";
const TOKEN_ISSUER: &str = "skiff-test-issuer";

/// A minimal Docker token service: `GET /token?service=..&scope=repository:<name>:<actions>`
/// with basic auth returns an ES256 JWT granting what was asked; anything else gets 401.
struct TokenServer {
    addr: String,
    cert_pem: String,
    username: String,
    password: String,
    issued: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

struct TokenSigner {
    key: ring::signature::EcdsaKeyPair,
    kid: String,
    username: String,
    password: String,
}

impl TokenServer {
    async fn start(username: &str, password: &str) -> io::Result<Self> {
        let rcgen_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(io::Error::other)?;
        let cert_pem = rcgen::CertificateParams::new(vec!["skiff-token".to_owned()])
            .and_then(|p| p.self_signed(&rcgen_key))
            .map_err(io::Error::other)?
            .pem();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rcgen_key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        let kid = libtrust_key_id(ring::signature::KeyPair::public_key(&key).as_ref());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let issued = Arc::new(AtomicUsize::new(0));
        let signer = Arc::new(TokenSigner {
            key,
            kid,
            username: username.to_owned(),
            password: password.to_owned(),
        });
        let counter = issued.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let signer = signer.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ignored = serve_token(conn, &signer, &counter).await;
                });
            }
        });
        Ok(Self {
            addr,
            cert_pem,
            username: username.to_owned(),
            password: password.to_owned(),
            issued,
            task,
        })
    }
}

/// libtrust's key ID (what distribution matches a JWT's `kid` against): sha256 of the
/// PKIX public key, first 30 bytes, base32, in 12 groups of 4 joined by ':'.
fn libtrust_key_id(uncompressed_point: &[u8]) -> String {
    use sha2::Digest as _;
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(uncompressed_point);
    let hash = sha2::Sha256::digest(&spki);
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut b32 = String::new();
    for &byte in &hash[..30] {
        bits = (bits << 8) | u32::from(byte);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            b32.push(char::from(ALPHABET[((bits >> nbits) & 31) as usize]));
        }
    }
    b32.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => out.push(v),
                    Err(_) => out.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve_token(
    mut conn: tokio::net::TcpStream,
    signer: &TokenSigner,
    issued: &AtomicUsize,
) -> io::Result<()> {
    use base64::Engine as _;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || req.len() > 64 * 1024 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&req);
    let mut lines = text.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let authorized = lines.any(|l| {
        let Some((k, v)) = l.split_once(':') else {
            return false;
        };
        if !k.trim().eq_ignore_ascii_case("authorization") {
            return false;
        }
        let Some(b64) = v.trim().strip_prefix("Basic ") else {
            return false;
        };
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .is_ok_and(|d| d == format!("{}:{}", signer.username, signer.password).as_bytes())
    });
    let respond = |status: &str, body: String| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if !authorized || !target.starts_with("/token") {
        let r = respond(
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#.to_owned(),
        );
        return conn.write_all(r.as_bytes()).await;
    }
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut access = Vec::new();
    for pair in query.split('&') {
        if let Some(("scope", v)) = pair.split_once('=') {
            let scope = percent_decode(v);
            let mut parts = scope.splitn(3, ':');
            if let (Some(kind), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            {
                access.push(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let n = issued.fetch_add(1, Ordering::SeqCst);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(json!({"typ": "JWT", "alg": "ES256", "kid": signer.kid}).to_string());
    let claims = b64.encode(
        json!({
            "iss": TOKEN_ISSUER, "sub": signer.username, "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("skiff-{n}"),
            "access": access,
        })
        .to_string(),
    );
    let signing_input = format!("{header}.{claims}");
    let sig = signer
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let token = format!("{signing_input}.{}", b64.encode(sig.as_ref()));
    let body = json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    conn.write_all(respond("200 OK", body).as_bytes()).await
}

/// How a built layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Builds a layer tar entry by entry. `raw` writes names unchecked, for malicious tars.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Complete);
        Self {
            tar,
            mtime: 1_700_000_000,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = self.header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut h, path, io::empty())
            .expect("append dir");
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.tar
            .append_data(&mut h, path, data)
            .expect("append file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("append symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = self.header(tar::EntryType::Link, 0o644, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("append hard link");
        self
    }

    /// Deletes `path` of lower layers (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), b"", 0o644)
    }

    /// Hides everything lower layers have in `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// An entry whose name and link target are written as given, unvalidated.
    pub fn raw(
        mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: Option<&[u8]>,
        data: &[u8],
    ) -> Self {
        let mut h = self.header(kind, 0o644, data.len() as u64);
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                old.linkname = [0; 100];
                old.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_cksum();
        self.tar.append(&h, data).expect("append raw");
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.tar.into_inner().expect("finish tar")
    }
}

/// Compresses a layer tar.
pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
        }
    }
}

/// Builds an image: layers plus config, ready to push or to write as an OCI layout.
#[derive(Clone)]
pub struct ImageBuilder {
    layers: Vec<(Vec<u8>, Compression)>,
    config: serde_json::Map<String, serde_json::Value>,
    platform: Platform,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            config: serde_json::Map::new(),
            platform: Platform::host(),
        }
    }

    pub fn layer(mut self, tar: Vec<u8>, c: Compression) -> Self {
        self.layers.push((tar, c));
        self
    }

    pub fn platform(mut self, p: Platform) -> Self {
        self.platform = p;
        self
    }

    /// Sets a field of the run config (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, ...).
    pub fn set(mut self, key: &str, value: serde_json::Value) -> Self {
        self.config.insert(key.to_owned(), value);
        self
    }

    pub fn build(&self) -> BuiltImage {
        let mut blobs = Vec::new();
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, c) in &self.layers {
            let data = compress(tar, *c);
            let media_type = match c {
                Compression::None => manifest::OCI_LAYER_TAR,
                Compression::Gzip => manifest::OCI_LAYER_GZIP,
                Compression::Zstd => manifest::OCI_LAYER_ZSTD,
            };
            let d = Digest::of(&data);
            diff_ids.push(Digest::of(tar).to_string());
            layers.push(Descriptor::new(media_type, d.clone(), data.len() as u64));
            blobs.push((d, Bytes::from(data)));
        }
        let mut config = json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = json!(v);
        }
        let config_bytes = serde_json::to_vec(&config).expect("config json");
        let config_desc = Descriptor::new(
            manifest::OCI_CONFIG,
            Digest::of(&config_bytes),
            config_bytes.len() as u64,
        );
        blobs.push((config_desc.digest.clone(), Bytes::from(config_bytes)));
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.to_owned()),
            config: config_desc,
            layers,
            annotations: BTreeMap::new(),
        };
        let manifest_bytes = Bytes::from(serde_json::to_vec(&m).expect("manifest json"));
        BuiltImage {
            manifest_digest: Digest::of(&manifest_bytes),
            manifest_bytes,
            manifest: m,
            blobs,
            platform: self.platform.clone(),
        }
    }
}

/// A built image: its blobs and manifest.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: Manifest,
    pub manifest_bytes: Bytes,
    pub manifest_digest: Digest,
    /// Layers then config.
    pub blobs: Vec<(Digest, Bytes)>,
    pub platform: Platform,
}

impl BuiltImage {
    /// Pushes blobs and manifest straight through the registry client.
    pub async fn push(&self, client: &RegistryClient, r: &Reference) -> Result<(), RegistryError> {
        for (d, data) in &self.blobs {
            client.push_blob(r, d, data.clone()).await?;
        }
        client
            .push_manifest(r, manifest::OCI_MANIFEST, self.manifest_bytes.clone())
            .await
    }

    /// Writes an OCI image layout at `dir` naming the image `name`.
    pub fn write_oci_layout(&self, dir: &Path, name: &Reference) -> io::Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        for (d, data) in &self.blobs {
            std::fs::write(blobs.join(d.hex()), data)?;
        }
        std::fs::write(blobs.join(self.manifest_digest.hex()), &self.manifest_bytes)?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut desc = Descriptor::new(
            manifest::OCI_MANIFEST,
            self.manifest_digest.clone(),
            self.manifest_bytes.len() as u64,
        );
        desc.annotations
            .insert("io.containerd.image.name".to_owned(), name.to_string());
        if let Some(t) = name.tag() {
            desc.annotations
                .insert("org.opencontainers.image.ref.name".to_owned(), t.to_owned());
        }
        let index = Index {
            schema_version: 2,
            media_type: Some(manifest::OCI_INDEX.to_owned()),
            manifests: vec![desc],
            annotations: BTreeMap::new(),
        };
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&index).map_err(io::Error::other)?,
        )
    }
}

/// Pushes several platform images and an index over them as `r`; returns the index digest.
pub async fn push_index(
    client: &RegistryClient,
    r: &Reference,
    images: &[BuiltImage],
) -> Result<Digest, RegistryError> {
    let mut manifests = Vec::new();
    for img in images {
        img.push(client, &r.with_digest(img.manifest_digest.clone()))
            .await?;
        let mut d = Descriptor::new(
            manifest::OCI_MANIFEST,
            img.manifest_digest.clone(),
            img.manifest_bytes.len() as u64,
        );
        d.platform = Some(img.platform.clone());
        manifests.push(d);
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.to_owned()),
        manifests,
        annotations: BTreeMap::new(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&index).expect("index json"));
    let digest = Digest::of(&bytes);
    client.push_manifest(r, manifest::OCI_INDEX, bytes).await?;
    Ok(digest)
}

/// Applets linked in the busybox image's /bin.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "echo", "env", "id", "sleep", "true", "false", "hostname", "ip",
    "ifconfig", "ping", "wget", "nc", "ps", "kill", "mkdir", "rm", "touch", "test", "[", "grep",
    "head", "tail", "wc", "date", "mount", "uname", "whoami", "nslookup", "httpd", "top", "df",
    "du", "stat", "find", "sed", "awk", "tr", "chmod", "chown", "cp", "mv", "ln", "pwd",
];

/// The busybox image: Debian's static `/bin/busybox` with its applets as symlinks, a
/// minimal /etc, `Cmd ["sh"]`. One gzip layer.
pub fn busybox() -> ImageBuilder {
    let binary = std::fs::read("/bin/busybox").expect("busybox-static installed at /bin/busybox");
    let mut layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .dir("dev", 0o755)
        .dir("var", 0o755)
        .file("bin/busybox", &binary, 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644);
    for applet in BUSYBOX_APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    ImageBuilder::new()
        .layer(layer.tar(), Compression::Gzip)
        .set(
            "Env",
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
        )
        .set("Cmd", json!(["sh"]))
}
