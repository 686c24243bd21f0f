//! `skiff-agent`: parses flags, sets up logging, runs the command, maps errors to exit
//! codes (0 ok, 1 failed, 2 bad settings). Everything else lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use skiff_agent::agent::Agent;
use skiff_agent::config::{GlobalArgs, Settings};
use skiff_agent::host;
use skiff_agent::join::{JoinOptions, join};
use tokio_util::sync::CancellationToken;

/// A skiff node agent: runs the tasks the masters assign to this machine, in skiff's
/// own container runtime, on the cluster's overlay network.
#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join a cluster: make a key here, get a node certificate from a master with the
    /// worker token (the CA is pinned by the digest in the token), store both in
    /// <data-dir>/tls, then run.
    Join {
        /// The worker join token (`skiffctl token ls`); not needed with --insecure.
        #[arg(long, env = "SKIFF_JOIN_TOKEN")]
        token: Option<String>,
        /// gRPC address of a master (more may follow; the first reachable one is used).
        #[arg(required = true)]
        masters: Vec<String>,
    },
    /// Start the agent kept in the data directory (after `join`): re-adopts the
    /// containers that kept running and reconnects to the masters.
    Run,
    /// Print the settings this agent would run with (flags, environment and file merged).
    ShowConfig,
    /// Internal: the process `run` starts to keep the embedded DNS's sockets open while
    /// the agent restarts (skiff_network::dns::keeper).
    #[command(name = "keep-dns-sockets", hide = true)]
    KeepDnsSockets {
        #[arg(long)]
        socket: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    skiff_pki::install_crypto_provider();
    let cli = Cli::parse();
    if let Command::KeepDnsSockets { socket } = &cli.command {
        return match skiff_network::dns::keeper::serve(socket) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("skiff-agent: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let settings = match cli.global.resolve() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("skiff-agent: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    // Before the runtime starts any thread (see `malloc`).
    let capped = skiff_agent::malloc::limit_arenas(skiff_agent::malloc::AGENT_ARENAS);
    skiff_daemon::init_logging(settings.log_format);
    if !capped {
        tracing::debug!("malloc arenas not capped (not glibc's allocator, or refused)");
    }
    if let Command::ShowConfig = cli.command {
        println!("{settings:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("skiff-agent: starting the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    if let Command::Join { token, masters } = &command {
        let underlay = host::underlay_ip(settings.advertise_addr, masters).await?;
        let port = settings
            .api_listen
            .rsplit_once(':')
            .map_or("0", |(_, p)| p)
            .to_owned();
        let id = join(&JoinOptions {
            data_dir: settings.data_dir.clone(),
            token: token.clone(),
            masters: masters.clone(),
            insecure: settings.insecure,
            hostname: host::hostname(),
            advertise: format!("{underlay}:{port}"),
        })
        .await
        .with_context(|| format!("joining through {}", masters.join(", ")))?;
        println!(
            "joined{} as node {} (identity in {})",
            if id.cluster_id.is_empty() {
                " an insecure cluster".to_owned()
            } else {
                format!(" cluster {}", id.cluster_id)
            },
            id.node_id,
            settings.data_dir.display()
        );
    }
    let shutdown = CancellationToken::new();
    skiff_daemon::shutdown_on_signal(shutdown.clone()).context("installing signal handlers")?;
    let agent = Agent::prepare(settings.clone())
        .await
        .with_context(|| format!("starting the agent in {}", settings.data_dir.display()))?;
    println!(
        "agent {} serving its API on {}",
        agent.node_id(),
        agent.api_addr()
    );
    agent.run(shutdown).await?;
    Ok(())
}
