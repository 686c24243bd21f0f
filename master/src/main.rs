//! `skiff-master`: parses flags, sets up logging, runs the command, maps errors to exit
//! codes. Everything else lives in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skiff_master::api::cluster::default_token;
use skiff_master::config::{GlobalArgs, Settings};
use skiff_master::server::{Identity, Master, MasterOptions, StartMode, TlsSetup};
use skiff_master::tls;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: a master allocates and frees many small objects
/// per write (decoded commands, gRPC frames, store objects) from several threads, and
/// glibc's arenas spent about a sixth of the leader's CPU there (raft_writes bench).
/// Transparent huge pages are turned off for the process first thing in `main` (see
/// [`no_huge_pages`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A skiff master: keeps the cluster's state replicated with Raft and the cluster
/// converged to it.
#[derive(Debug, Parser)]
#[command(name = "skiff-master", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new cluster with this machine as its first master, then serve. Makes
    /// the cluster id, the CA, the worker and manager join tokens, and an admin
    /// certificate for skiffctl in <data-dir>/admin/.
    Init,
    /// Join an existing cluster as a master (learner first, voter once caught up),
    /// then serve.
    Join {
        /// The manager join token (`skiffctl token ls` on the cluster).
        #[arg(long, env = "SKIFF_JOIN_TOKEN")]
        token: String,
        /// gRPC address of any master of the cluster (more may follow).
        #[arg(required = true)]
        masters: Vec<String>,
    },
    /// Start the master kept in the data directory (after init or join).
    Run,
    /// Recover from lost quorum: make this master the only member of its cluster,
    /// keeping all data it has. Refuses while a quorum of the old members answers.
    ForceNewCluster,
    /// Write a consistent copy of the store, taken from a running master, to a file.
    Backup {
        /// gRPC address of a master [default: the --advertise address].
        #[arg(long)]
        master: Option<String>,
        /// File to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new single-master cluster in the data directory from a backup file;
    /// then `skiff-master run` it.
    Restore {
        /// A file written by `skiff-master backup`.
        #[arg(long)]
        from: PathBuf,
    },
    /// Print the settings this master would run with (flags, environment and file merged).
    ShowConfig,
    /// Issue a new admin certificate for skiffctl with the CA this master holds (any
    /// master, running or not): to renew the one made at init before it expires (a
    /// year), or to get one on another master's machine.
    AdminCert {
        /// Directory to write ca.pem, admin.pem and admin-key.pem (0600) into.
        #[arg(long)]
        out: PathBuf,
        /// The certificate's name (one DNS label), seen in the masters' logs.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on the
/// regions it reserves (`MADV_HUGEPAGE`), so the first touch of each fresh 2 MiB of heap
/// faults in and zeroes a whole huge page: in a 100-replica deploy that was ~70 ms of
/// the leader's CPU, all of it on the path from the deploy request to the tasks'
/// assignments (perf: `do_huge_pmd_anonymous_page` → `clear_page`, under `Vec` growth
/// in the store's apply and watch). A master's heap is tens of MiB: huge pages buy it
/// nothing in TLB reach and cost it latency and resident memory. Failure (a kernel
/// without the call) only costs that time, so it is logged, not fatal.
fn no_huge_pages() -> Option<nix::Error> {
    nix::sys::prctl::set_thp_disable(true).err()
}

fn main() -> std::process::ExitCode {
    let thp = no_huge_pages();
    skiff_pki::install_crypto_provider();
    let cli = Cli::parse();
    let settings = match cli.global.resolve() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("skiff-master: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    skiff_daemon::init_logging(settings.log_format);
    if let Some(err) = thp {
        tracing::warn!(%err, "transparent huge pages stay on: PR_SET_THP_DISABLE failed");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("skiff-master: starting the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff-master: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options(settings: &Settings, tls: TlsSetup) -> MasterOptions {
    MasterOptions {
        data_dir: settings.data_dir.clone(),
        listen: settings.listen.clone(),
        advertise: settings.advertise.clone(),
        raft: settings.raft.clone(),
        watch_history: skiff_master::store::watch::DEFAULT_HISTORY,
        tls,
    }
}

/// Refuses to bootstrap over an existing master (it would replace its CA).
fn ensure_fresh(settings: &Settings) -> anyhow::Result<()> {
    if let Some(id) = Identity::load(&settings.data_dir)? {
        anyhow::bail!(
            "{} already holds master {} of cluster {}: start it with `skiff-master run`, or pick another --data-dir",
            settings.data_dir.display(),
            id.raft_id,
            id.cluster_id
        );
    }
    Ok(())
}

async fn start(
    settings: &Settings,
    mode: StartMode,
    tls: TlsSetup,
) -> anyhow::Result<(Master, CancellationToken)> {
    let shutdown = CancellationToken::new();
    skiff_daemon::shutdown_on_signal(shutdown.clone()).context("installing signal handlers")?;
    let opts = options(settings, tls);
    let master = Master::start(&opts, mode, None)
        .await
        .with_context(|| format!("starting the master in {}", settings.data_dir.display()))?;
    println!(
        "master {} of cluster {} serving on {} (advertised as {})",
        master.identity.raft_id,
        master.identity.cluster_id,
        master.local_addr,
        master.identity.advertise
    );
    Ok((master, shutdown))
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Init => {
            ensure_fresh(&settings)?;
            let cluster_id = uuid::Uuid::new_v4().simple().to_string();
            let (mode, tls) = if settings.insecure {
                (
                    StartMode::Init {
                        cluster_id,
                        ca_digest: String::new(),
                        ca_cert_pem: String::new(),
                    },
                    TlsSetup::default(),
                )
            } else {
                let (ca, creds) = tls::init_files(
                    &settings.data_dir,
                    &cluster_id,
                    &tls::master_node_id(),
                    &settings.advertise,
                )
                .context("making the cluster CA and certificates")?;
                let setup = tls::setup(&settings.data_dir, &creds, &cluster_id)?;
                (
                    StartMode::Init {
                        cluster_id,
                        ca_digest: ca.digest().to_string(),
                        ca_cert_pem: ca.cert_pem().to_owned(),
                    },
                    setup,
                )
            };
            let (master, shutdown) = start(&settings, mode, tls).await?;
            if let Some(c) = master.handle().read(|s| s.cluster().cloned()) {
                println!(
                    "worker join token:  {}",
                    default_token(&c.ca_digest, &c.worker_token_secret)
                );
                println!(
                    "manager join token: {}",
                    default_token(&c.ca_digest, &c.manager_token_secret)
                );
            }
            if !settings.insecure {
                let admin = settings.data_dir.join(tls::ADMIN_DIR);
                println!(
                    "skiffctl admin certificate: {} (skiffctl context add NAME --master {} --ca {} --cert {} --key {})",
                    admin.display(),
                    settings.advertise,
                    admin.join("ca.pem").display(),
                    admin.join("admin.pem").display(),
                    admin.join("admin-key.pem").display()
                );
            }
            master.serve_until(shutdown).await?;
            Ok(())
        }
        Command::Join { token, masters } => {
            ensure_fresh(&settings)?;
            if settings.insecure {
                let (master, shutdown) = start(
                    &settings,
                    StartMode::Join { peers: masters },
                    TlsSetup::default(),
                )
                .await?;
                master.serve_until(shutdown).await?;
                return Ok(());
            }
            let first = masters.first().cloned().unwrap_or_default();
            let (creds, resp) =
                tls::join_files(&settings.data_dir, &token, &first, &settings.advertise)
                    .await
                    .with_context(|| format!("getting a certificate from {first}"))?;
            let setup = tls::setup(&settings.data_dir, &creds, &resp.cluster_id)?;
            let peers = if resp.masters.is_empty() {
                masters
            } else {
                resp.masters
            };
            let (master, shutdown) = start(&settings, StartMode::Join { peers }, setup).await?;
            if let Some(joined) = &master.joined
                && !joined.ca_key_pem.is_empty()
            {
                tls::save_ca(&settings.data_dir, &creds.ca_pem, &joined.ca_key_pem)?;
            }
            master.serve_until(shutdown).await?;
            Ok(())
        }
        Command::Run => {
            let identity = Identity::load(&settings.data_dir)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} holds no master: run `skiff-master init` or `skiff-master join` first",
                    settings.data_dir.display()
                )
            })?;
            let setup = match tls::load_credentials(&settings.data_dir)? {
                Some(creds) => tls::setup(&settings.data_dir, &creds, &identity.cluster_id)?,
                None if settings.insecure => TlsSetup::default(),
                None => anyhow::bail!(
                    "no certificate in {}: this master was made with --insecure; start it with --insecure too",
                    settings.data_dir.join(tls::TLS_DIR).display()
                ),
            };
            let (master, shutdown) = start(&settings, StartMode::Run, setup).await?;
            master.serve_until(shutdown).await?;
            Ok(())
        }
        Command::ForceNewCluster => {
            let report = skiff_master::recovery::force_new_cluster(
                &settings.data_dir,
                tls::client_config(&settings.data_dir)?,
            )
            .await
            .context("force-new-cluster")?;
            println!("{report}");
            Ok(())
        }
        Command::Backup { master, out } => {
            let addr = master.unwrap_or_else(|| settings.advertise.clone());
            let revision = skiff_master::recovery::backup(
                &addr,
                &out,
                tls::client_config(&settings.data_dir)?,
            )
            .await
            .with_context(|| format!("backing up from {addr} to {}", out.display()))?;
            println!("wrote {} (store revision {revision})", out.display());
            Ok(())
        }
        Command::Restore { from } => {
            let report =
                skiff_master::recovery::restore(&settings.data_dir, &from, &settings.advertise)
                    .await
                    .with_context(|| {
                        format!(
                            "restoring {} into {}",
                            from.display(),
                            settings.data_dir.display()
                        )
                    })?;
            println!("{report}");
            Ok(())
        }
        Command::AdminCert { out, name, days } => {
            let ttl = std::time::Duration::from_secs(u64::from(days) * 24 * 3600);
            let info = tls::issue_admin_cert(&settings.data_dir, &out, &name, ttl)?;
            let days_left = info
                .not_after
                .duration_since(std::time::SystemTime::now())
                .map_or(0, |d| d.as_secs() / (24 * 3600));
            println!(
                "admin certificate {name} (serial {}) in {}, valid for {days_left} days (skiffctl context add NAME --master {} --ca {} --cert {} --key {})",
                info.identity.serial,
                out.display(),
                settings.advertise,
                out.join("ca.pem").display(),
                out.join("admin.pem").display(),
                out.join("admin-key.pem").display()
            );
            Ok(())
        }
        Command::ShowConfig => {
            println!("data_dir = {:?}", settings.data_dir);
            println!("log_format = {:?}", settings.log_format);
            println!("listen = {:?}", settings.listen);
            println!("advertise = {:?}", settings.advertise);
            println!("raft = {:?}", settings.raft);
            println!("insecure = {}", settings.insecure);
            Ok(())
        }
    }
}
