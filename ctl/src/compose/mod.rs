//! Compose files (the Compose Specification, with its `deploy:` section) read into
//! skiff's wire types. Any problem is one error naming file:line:column and the key's
//! path, e.g. `app.yaml:7:15: services.web.deploy.replicas: expected an integer, found
//! "three"`.
//!
//! ```text
//!  -f a.yaml -f b.yaml, .env, process env            (config.rs: the only I/O)
//!        │ bytes
//!        ▼
//!  tree::parse        serde-saphyr → located tree (Spanned + Tagged), budgets
//!        ▼
//!  interpolate        ${VAR}, ${VAR:-d}, ${VAR:?m}, $$ in every string value
//!        ▼
//!  canonical          short forms → long forms (ports, volumes, env lists...)
//!        ▼
//!  extends            per file: services built on others (same or other file)
//!        ▼
//!  merge              files in order: maps merge, lists append, unique keys,
//!        │            command replaced, !reset / !override
//!        ▼
//!  service, deploy,   typed decoding against the known keys; unsupported keys
//!  load (top level)   refused with a reason; cross-checks (networks, volumes,
//!        │            depends_on cycles, published ports, profiles)
//!        ▼
//!  model::Project     normalized, defaults filled: `skiffctl config` prints it
//!        ▼
//!  wire               pb::DeployRequest, deterministic
//! ```
//!
//! ## Limitations
//! - One YAML document per file (Compose uses one too); at most 4 MiB per file,
//!   nesting 48 deep, 200 000 nodes and 10 000 aliases after expansion.
//! - `include`, `secrets`, `configs` and `build` are refused (see
//!   docs/compose.md for every refused key and why).
//! - A value that a later file overrides is not type-checked (Compose checks each file
//!   against its schema first); the merged result always is.
//! - Durations are kept in milliseconds: `1500us` is `1ms`.

pub mod canonical;
pub mod config;
pub mod decode;
pub mod deploy;
pub mod dotenv;
pub mod error;
pub mod extends;
pub mod interpolate;
pub mod load;
pub mod merge;
pub mod model;
pub mod mounts;
pub mod ports;
pub mod service;
pub mod shell;
pub mod tree;
pub mod units;
pub mod wire;

pub use config::{ComposeArgs, ConfigArgs, Format};
pub use error::{ComposeError, ErrorKind, Loc, Origin};
pub use load::{LoadInput, Loaded, Source, load};
pub use model::Project;
pub use wire::deploy_request;
