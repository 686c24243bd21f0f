//! OCI images for skiff: references resolved as Docker does, pulls from registries into a
//! verified content store, layers unpacked once into snapshot directories that become a
//! container's overlay lowerdirs.
//!
//! ```text
//!  Reference::parse("busybox")  ─►  docker.io/library/busybox:latest
//!        │
//!  ImageStore::pull ─► RegistryClient (oci-client: token/basic auth, HTTP only if insecure)
//!        │              └─ index? ─► platform::choose(node platform)
//!        ├─► content store  blobs/sha256/<hex>   (sha256 + size verified before rename)
//!        └─► unpack         snap/<n>             (whiteouts → overlay form, no escapes,
//!                                                 diff_id verified)
//!  Image { config (entrypoint, cmd, env, ...), layers: [snap/<n>, ...] lowest first }
//! ```
//!
//! ## Limitations
//! - sha256 only; schema 1 manifests and nested indexes are refused.
//! - One process per store root (pull deduplication is in memory).
//! - See `unpack` for what the unpacker refuses.

pub mod digest;
pub mod manifest;
pub mod platform;
pub mod reference;
pub mod registry;
mod store;
pub mod unpack;

#[cfg(feature = "testing")]
pub mod testing;

pub use digest::Digest;
pub use manifest::{Healthcheck, ImageConfig};
pub use platform::Platform;
pub use reference::{Reference, ReferenceError};
pub use registry::{Credentials, RegistryClient, RegistryConfig, RegistryError};
pub use store::{ContentError, Image, ImageError, ImageStore, LayerState, PullProgress};
