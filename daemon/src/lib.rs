//! What every skiff binary does at start: logging set up from `--log-format` and
//! `RUST_LOG`, a TOML config file whose values sit under flags and environment
//! variables, and a shutdown token cancelled on SIGINT or SIGTERM. Also the loopback
//! ports tests and benchmarks give the daemons they start (`test_ports`).

mod config;
mod logging;
mod shutdown;
pub mod test_ports;

pub use config::{ConfigError, load_toml};
pub use logging::{LogFormat, init_logging};
pub use shutdown::shutdown_on_signal;
