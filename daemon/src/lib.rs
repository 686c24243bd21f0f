//! What every skiff binary does at start: logging set up from `--log-format` and
//! `RUST_LOG`, a TOML config file whose values sit under flags and environment
//! variables, and a shutdown token cancelled on SIGINT or SIGTERM.

mod config;
mod logging;
mod shutdown;

pub use config::{ConfigError, load_toml};
pub use logging::{LogFormat, init_logging};
pub use shutdown::shutdown_on_signal;
