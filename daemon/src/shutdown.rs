//! The shutdown signal: one `CancellationToken` per process, cancelled on the first
//! SIGINT or SIGTERM. Components take a child token and return when it fires.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Spawns a task that cancels `token` on SIGINT or SIGTERM.
pub fn shutdown_on_signal(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            () = token.cancelled() => return,
        }
        token.cancel();
    });
    Ok(())
}
