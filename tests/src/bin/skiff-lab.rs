//! `skiff-lab`: a multi-machine skiff lab on one host. Each machine is a network
//! namespace on a lab bridge running the real binaries; the lab's description lives in
//! `/run/skiff-lab/current.json` between commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use skiff_lab::lab::STATE_DIR;
use skiff_lab::{Binaries, Cluster, Lab, Role};

/// A skiff lab: masters and agents as network namespaces on this machine.
#[derive(Debug, Parser)]
#[command(name = "skiff-lab", version, about)]
struct Cli {
    /// The lab's state file.
    #[arg(long, default_value_t = format!("{STATE_DIR}/current.json"))]
    state: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring up the machines (and the registry on the lab bridge).
    Up {
        /// Master machines (m1, m2, ...).
        #[arg(long, default_value_t = 3)]
        masters: usize,
        /// Agent machines (a1, a2, ...).
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Where machines keep their data and logs.
        #[arg(long, default_value = "/var/tmp/skiff-lab")]
        root: PathBuf,
        /// A compose file to deploy once the cluster is up (SKIFF_REGISTRY is set to
        /// the lab registry, which holds `busybox:latest`).
        #[arg(long)]
        deploy: Option<PathBuf>,
    },
    /// Run skiffctl against the lab's cluster.
    Ctl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show the machines, their addresses and whether their daemons run.
    Status,
    /// Stop one machine's daemons (containers keep running, as on a real machine).
    Stop { machine: String },
    /// Start a stopped machine's daemons again.
    Start { machine: String },
    /// Cut one machine off the lab network (a partition).
    Cut { machine: String },
    /// Reconnect a cut machine.
    Heal { machine: String },
    /// Run a command inside a machine's network namespace.
    Exec {
        machine: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Remove everything the lab made: processes, namespaces, links, mounts, cgroups.
    Down,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff-lab: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state = PathBuf::from(&cli.state);
    match cli.command {
        Command::Up {
            masters,
            agents,
            root,
            deploy,
        } => up(&state, &root, masters, agents, deploy.as_deref()),
        Command::Ctl { args } => {
            let lab = Lab::load(&state)?;
            let bins = Binaries::locate()?;
            let status = std::process::Command::new(&bins.ctl)
                .args(&args)
                .env("SKIFF_CONFIG", lab.state().dir.join("skiffctl.toml"))
                .env("SKIFF_REGISTRY", format!("{}:5000", lab.gateway()))
                .status()
                .context("running skiffctl")?;
            if !status.success() {
                bail!("skiffctl exited with {status}");
            }
            Ok(())
        }
        Command::Status => {
            let lab = Lab::load(&state)?;
            let s = lab.state();
            println!(
                "lab {}  bridge {}  host {}",
                s.id,
                s.net.bridge,
                lab.gateway()
            );
            for m in &s.machines {
                let running = m.daemons.iter().filter(|d| d.alive()).count();
                println!(
                    "{:<4} {:<7} {:<15} daemons {}/{}  {}",
                    m.net.name,
                    format!("{:?}", m.role).to_lowercase(),
                    m.net.addr,
                    running,
                    m.daemons.len(),
                    m.dir.display()
                );
            }
            for d in &s.host_daemons {
                println!(
                    "host {} pid {} alive {}",
                    d.program.display(),
                    d.pid,
                    d.alive()
                );
            }
            Ok(())
        }
        Command::Stop { machine } => {
            let mut lab = Lab::load(&state)?;
            let stopped = lab.stop_machine(&machine, Duration::from_secs(10))?;
            let file = stopped_file(&state, &machine);
            std::fs::write(&file, serde_json::to_string(&stopped)?)
                .with_context(|| format!("writing {}", file.display()))?;
            lab.save(&state)?;
            println!("stopped {machine} ({} daemons)", stopped.len());
            Ok(())
        }
        Command::Start { machine } => {
            let mut lab = Lab::load(&state)?;
            let file = stopped_file(&state, &machine);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{machine} was not stopped by `skiff-lab stop`"))?;
            let stopped: Vec<skiff_lab::process::Daemon> = serde_json::from_str(&text)?;
            lab.restart_machine(&machine, &stopped)?;
            lab.save(&state)?;
            let _ = std::fs::remove_file(&file);
            println!("started {machine}");
            Ok(())
        }
        Command::Cut { machine } => {
            Lab::load(&state)?.cut(&machine)?;
            println!("{machine} is cut off");
            Ok(())
        }
        Command::Heal { machine } => {
            Lab::load(&state)?.heal(&machine)?;
            println!("{machine} is reconnected");
            Ok(())
        }
        Command::Exec { machine, command } => {
            let lab = Lab::load(&state)?;
            let m = lab.machine(&machine)?;
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &m.net.netns])
                .args(&command)
                .status()
                .context("running ip netns exec")?;
            if !status.success() {
                bail!("{} exited with {status}", command.join(" "));
            }
            Ok(())
        }
        Command::Down => {
            let mut lab = Lab::load(&state)?;
            let id = lab.id().to_owned();
            lab.teardown();
            let _ = std::fs::remove_file(&state);
            println!("lab {id} removed");
            Ok(())
        }
    }
}

fn stopped_file(state: &Path, machine: &str) -> PathBuf {
    state.with_extension(format!("{machine}.stopped.json"))
}

fn up(
    state: &Path,
    root: &Path,
    masters: usize,
    agents: usize,
    example: Option<&Path>,
) -> anyhow::Result<()> {
    if state.exists() {
        bail!(
            "a lab is already up (state in {}): `skiff-lab down` first",
            state.display()
        );
    }
    let bins = Binaries::locate()?;
    let lab = Lab::create(root, masters, agents).context("creating the lab")?;
    println!(
        "lab {}: {masters} masters, {agents} agents on bridge {}",
        lab.id(),
        lab.state().net.bridge
    );
    let cluster = Cluster::start_on(lab, bins).context("starting the cluster")?;
    let image = cluster.push_busybox("busybox:latest")?;
    println!("registry {} holds {image}", cluster.registry);
    if let Some(file) = example {
        let file = file.display().to_string();
        let args = ["deploy", "-f", file.as_str(), "--timeout", "180"];
        let out = std::process::Command::new(&cluster.bins.ctl)
            .args(args)
            .env("SKIFF_CONFIG", &cluster.ctl_config)
            .env("SKIFF_REGISTRY", &cluster.registry)
            .status()
            .context("running skiffctl deploy")?;
        if !out.success() {
            eprintln!(
                "skiff-lab: the example did not converge; the lab stays up for a look (logs below)\n{}",
                cluster.lab.dump_logs(20)
            );
        }
    }
    let config = cluster.ctl_config.clone();
    let s = cluster.persist(state)?;
    println!("lab {} is up:", s.id);
    for m in &s.machines {
        let role = match m.role {
            Role::Master => "master",
            Role::Agent => "agent",
        };
        println!("  {:<4} {:<7} {}", m.net.name, role, m.net.addr);
    }
    println!("skiffctl context: export SKIFF_CONFIG={}", config.display());
    Ok(())
}
