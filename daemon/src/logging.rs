//! Logging through `tracing`: human-readable by default, one JSON object per line with
//! `--log-format json`. `RUST_LOG` picks levels (default [`DEFAULT_FILTER`]).

use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What is logged when `RUST_LOG` is not set: skiff's own events at info; the DNS
/// server (a line per query) and openraft (whole membership dumps) only when something
/// is wrong. `RUST_LOG=info` shows everything again.
pub const DEFAULT_FILTER: &str = "info,hickory_server=warn,hickory_proto=warn,openraft=warn";

/// Installs the global subscriber. Calling it twice keeps the first (tests do).
pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
