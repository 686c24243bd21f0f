//! A skiff cluster on a lab: the real `skiff-master`, `skiff-agent` and `skiffctl`
//! binaries, started the way an operator would start them on real machines.
//!
//! ```text
//!  host: registry 172.31.N.1:5000 (busybox pushed)   skiffctl (context file in the lab dir)
//!    m1: skiff-master init            ─┐ tokens from `skiffctl token ls`
//!    m2..: skiff-master join --token M ┤ one at a time, each waits until it is a member
//!    a1..: skiff-agent join --token W  ┘ each waits until its node is READY
//! ```
//!
//! Each daemon gets `<machine dir>/data` as its data dir and logs to
//! `<machine dir>/<binary>.log`. Agents get their own cgroup parent inside the lab's
//! subtree (so teardown finds every container), their own runtime state dir, the lab
//! registry as an insecure (plain HTTP) registry, and no DNS upstream (tests never
//! resolve outside names).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::eventually::eventually;
use crate::lab::{Lab, LabError, Role};

/// The port masters serve gRPC on inside their machine.
pub const MASTER_PORT: u16 = 7700;
/// The lab registry's port on the host side of the bridge.
pub const REGISTRY_PORT: u16 = 5000;

/// Debian's `docker-registry`, which the lab serves images from.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Where the skiff binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub master: PathBuf,
    pub agent: PathBuf,
    pub ctl: PathBuf,
    pub registry: PathBuf,
}

impl Binaries {
    /// `$SKIFF_BIN_DIR`, else the cargo target directory this executable was built in
    /// (a test binary lives in `<target>/debug/deps`, the daemons in `<target>/debug`).
    pub fn locate() -> Result<Self, ClusterError> {
        let mut dirs = Vec::new();
        if let Some(dir) = std::env::var_os("SKIFF_BIN_DIR") {
            dirs.push(PathBuf::from(dir));
        }
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            dirs.push(dir.to_path_buf());
            if let Some(up) = dir.parent() {
                dirs.push(up.to_path_buf());
            }
        }
        let find = |name: &str| {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| ClusterError::MissingBinary {
                    name: name.to_owned(),
                    searched: dirs.clone(),
                })
        };
        Ok(Binaries {
            master: find("skiff-master")?,
            agent: find("skiff-agent")?,
            ctl: find("skiffctl")?,
            registry: PathBuf::from(REGISTRY_BIN),
        })
    }
}

/// A cluster that could not be brought up or used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("binary {name} not found in {searched:?}: build with `cargo build --bins`")]
    MissingBinary {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("{step}: {detail}")]
    Step { step: String, detail: String },
}

impl ClusterError {
    fn step(step: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        ClusterError::Step {
            step: step.into(),
            detail: detail.to_string(),
        }
    }
}

/// What `skiffctl` printed and how it exited.
#[derive(Clone, Debug)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// The output as a result: `Err` names the command and what it said.
    pub fn ok(self, args: &[&str]) -> Result<String, String> {
        if self.code == 0 {
            Ok(self.stdout)
        } else {
            Err(format!(
                "skiffctl {} exited {}: {}{}",
                args.join(" "),
                self.code,
                self.stdout,
                self.stderr
            ))
        }
    }
}

/// A lab with a skiff cluster running on it. Dropping it tears the lab down.
#[derive(Debug)]
pub struct Cluster {
    pub lab: Lab,
    pub bins: Binaries,
    /// `host:port` of the lab registry.
    pub registry: String,
    /// The skiffctl contexts file for this cluster (`SKIFF_CONFIG`).
    pub ctl_config: PathBuf,
    pub worker_token: String,
    pub manager_token: String,
}

impl Cluster {
    /// Makes a lab of `masters` + `agents` machines and brings a cluster up on it.
    pub fn start(root: &Path, masters: usize, agents: usize) -> Result<Self, ClusterError> {
        let bins = Binaries::locate()?;
        let lab = Lab::create(root, masters, agents)?;
        Self::start_on(lab, bins)
    }

    /// Brings a cluster up on an existing lab (whose machines run nothing yet).
    pub fn start_on(lab: Lab, bins: Binaries) -> Result<Self, ClusterError> {
        let registry = format!("{}:{REGISTRY_PORT}", lab.gateway());
        let ctl_config = lab.state().dir.join("skiffctl.toml");
        let mut cluster = Cluster {
            lab,
            bins,
            registry,
            ctl_config,
            worker_token: String::new(),
            manager_token: String::new(),
        };
        cluster.start_registry()?;
        let masters: Vec<String> = cluster
            .lab
            .machines(Role::Master)
            .map(|m| m.net.name.clone())
            .collect();
        let agents: Vec<String> = cluster
            .lab
            .machines(Role::Agent)
            .map(|m| m.net.name.clone())
            .collect();
        let Some((first, others)) = masters.split_first() else {
            return Err(ClusterError::step("bring-up", "a cluster needs a master"));
        };
        cluster.init_master(first)?;
        for name in others {
            cluster.join_master(name)?;
        }
        for name in &agents {
            cluster.join_agent(name)?;
        }
        Ok(cluster)
    }

    /// gRPC address of master machine `name`.
    pub fn master_addr(&self, name: &str) -> Result<String, ClusterError> {
        Ok(format!(
            "{}:{MASTER_PORT}",
            self.lab.machine(name)?.net.addr
        ))
    }

    /// Every master's gRPC address.
    pub fn master_addrs(&self) -> Vec<String> {
        self.lab
            .machines(Role::Master)
            .map(|m| format!("{}:{MASTER_PORT}", m.net.addr))
            .collect()
    }

    /// A `skiffctl args` command set up for this cluster, to run as the caller likes
    /// (with input, or in the background).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.ctl);
        cmd.args(args)
            .env("SKIFF_CONFIG", &self.ctl_config)
            .env_remove("SKIFF_CONTEXT")
            .env_remove("SKIFF_MASTER");
        cmd
    }

    /// Runs `skiffctl args` against this cluster.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let out = self.ctl_command(args).output();
        match out {
            Ok(out) => CtlOutput {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Err(err) => CtlOutput {
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot run {}: {err}", self.bins.ctl.display()),
            },
        }
    }

    /// Runs `skiffctl -o json args` and parses what it printed.
    pub fn ctl_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full).ok(&full)?;
        serde_json::from_str(&out).map_err(|e| format!("skiffctl {}: {e}: {out}", args.join(" ")))
    }

    /// Builds the busybox test image (Debian's busybox-static) and pushes it to the lab
    /// registry as `name`; returns the reference to use in compose files.
    pub fn push_busybox(&self, name: &str) -> Result<String, ClusterError> {
        push_busybox(&self.registry, name)
    }

    fn start_registry(&mut self) -> Result<(), ClusterError> {
        let dir = self.lab.state().dir.join("registry");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ClusterError::step(format!("mkdir {}", dir.display()), e))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
                dir.join("data").display(),
                self.registry
            ),
        )
        .map_err(|e| ClusterError::step(format!("write {}", config.display()), e))?;
        let registry = self.bins.registry.clone();
        self.lab.spawn_on_host(
            &registry,
            &["serve".into(), config.display().to_string()],
            "registry.log",
        )?;
        let addr = self.registry.clone();
        eventually(Duration::from_secs(10), Duration::from_millis(50), || {
            std::net::TcpStream::connect(&addr)
        })
        .map_err(|e| ClusterError::step(format!("registry on {addr}"), e))?;
        Ok(())
    }

    fn master_args(&self, name: &str) -> Result<Vec<String>, ClusterError> {
        let m = self.lab.machine(name)?;
        let addr = format!("{}:{MASTER_PORT}", m.net.addr);
        Ok(vec![
            "--data-dir".into(),
            m.dir.join("data").display().to_string(),
            "--listen".into(),
            format!("0.0.0.0:{MASTER_PORT}"),
            "--advertise".into(),
            addr,
        ])
    }

    fn init_master(&mut self, name: &str) -> Result<(), ClusterError> {
        let mut args = self.master_args(name)?;
        let mut run = args.clone();
        run.push("run".into());
        args.push("init".into());
        let program = self.bins.master.clone();
        let daemon = self
            .lab
            .spawn_on(name, &program, &args, &log_env(), "skiff-master.log")?;
        self.lab.set_restart_args(name, daemon.pid, run)?;
        let admin = self.lab.machine(name)?.dir.join("data").join("admin");
        let files = ["ca.pem", "admin.pem", "admin-key.pem"].map(|f| admin.join(f));
        self.wait(
            name,
            "the admin certificate",
            Duration::from_secs(30),
            || match files.iter().find(|f| !f.is_file()) {
                Some(missing) => Err(format!("{} not written yet", missing.display())),
                None => Ok(()),
            },
        )?;
        let masters = self.master_addr(name)?;
        let [ca, cert, key] = files.map(|f| f.display().to_string());
        let add = [
            "context", "add", "lab", "--master", &masters, "--ca", &ca, "--cert", &cert, "--key",
            &key, "--use",
        ];
        self.ctl(&add)
            .ok(&add)
            .map_err(|e| ClusterError::step("skiffctl context add", e))?;
        let tokens = self.wait(name, "the join tokens", Duration::from_secs(30), || {
            self.ctl_json(&["token", "ls"])
        })?;
        let token = |key: &str| {
            tokens[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ClusterError::step("skiffctl token ls", format!("no {key}")))
        };
        self.worker_token = token("worker")?;
        self.manager_token = token("manager")?;
        Ok(())
    }

    fn join_master(&mut self, name: &str) -> Result<(), ClusterError> {
        let mut args = self.master_args(name)?;
        let mut run = args.clone();
        run.push("run".into());
        args.extend(["join".into(), "--token".into(), self.manager_token.clone()]);
        args.extend(self.joined_masters(name));
        let program = self.bins.master.clone();
        let daemon = self
            .lab
            .spawn_on(name, &program, &args, &log_env(), "skiff-master.log")?;
        self.lab.set_restart_args(name, daemon.pid, run)?;
        let addr = self.master_addr(name)?;
        self.wait(name, "membership", Duration::from_secs(60), || {
            let masters = self.ctl_json(&["master", "ls"])?;
            let text = masters.to_string();
            if text.contains(&addr) {
                Ok(())
            } else {
                Err(format!("{addr} not among the masters yet: {text}"))
            }
        })?;
        // skiffctl may ask any master from now on.
        self.refresh_context()
    }

    /// The masters already started (everything but `except`).
    fn joined_masters(&self, except: &str) -> Vec<String> {
        self.lab
            .machines(Role::Master)
            .filter(|m| m.net.name != except && !m.daemons.is_empty())
            .map(|m| format!("{}:{MASTER_PORT}", m.net.addr))
            .collect()
    }

    fn refresh_context(&self) -> Result<(), ClusterError> {
        let started: Vec<String> = self
            .lab
            .machines(Role::Master)
            .filter(|m| !m.daemons.is_empty())
            .map(|m| format!("{}:{MASTER_PORT}", m.net.addr))
            .collect();
        let text = std::fs::read_to_string(&self.ctl_config)
            .map_err(|e| ClusterError::step(format!("read {}", self.ctl_config.display()), e))?;
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e| ClusterError::step(format!("parse {}", self.ctl_config.display()), e))?;
        if let Some(toml::Value::Table(contexts)) = doc.get_mut("contexts")
            && let Some(toml::Value::Table(lab)) = contexts.get_mut("lab")
        {
            lab.insert(
                "masters".into(),
                toml::Value::Array(started.into_iter().map(toml::Value::String).collect()),
            );
        }
        std::fs::write(&self.ctl_config, doc.to_string())
            .map_err(|e| ClusterError::step(format!("write {}", self.ctl_config.display()), e))
    }

    /// The command line that starts the agent on machine `name` (`join` the first time;
    /// its data dir remembers the cluster after that).
    pub fn agent_args(&self, name: &str, command: &[String]) -> Result<Vec<String>, ClusterError> {
        let m = self.lab.machine(name)?;
        let mut args = vec![
            "--data-dir".into(),
            m.dir.join("data").display().to_string(),
            "--advertise-addr".into(),
            m.net.addr.to_string(),
            "--runtime-dir".into(),
            m.dir.join("run").display().to_string(),
            "--cgroup-parent".into(),
            format!("{}/{name}-containers", self.lab.state().cgroup),
            "--insecure-registry".into(),
            self.registry.clone(),
            "--dns-upstream".into(),
            "none".into(),
            "--label".into(),
            format!("lab.machine={name}"),
        ];
        args.extend(command.iter().cloned());
        Ok(args)
    }

    fn join_agent(&mut self, name: &str) -> Result<(), ClusterError> {
        let mut command = vec!["join".into(), "--token".into(), self.worker_token.clone()];
        command.extend(self.master_addrs());
        let args = self.agent_args(name, &command)?;
        let run = self.agent_args(name, &["run".to_owned()])?;
        let program = self.bins.agent.clone();
        let daemon = self
            .lab
            .spawn_on(name, &program, &args, &log_env(), "skiff-agent.log")?;
        // Once joined, the machine's data dir remembers the cluster: restarts use `run`.
        self.lab.set_restart_args(name, daemon.pid, run)?;
        self.wait_node_ready(name, Duration::from_secs(60))
    }

    /// Waits until the node of agent machine `name` is READY.
    pub fn wait_node_ready(&self, name: &str, within: Duration) -> Result<(), ClusterError> {
        self.wait(name, "node READY", within, || {
            let state = self.node_state(name)?;
            if state.eq_ignore_ascii_case("ready") {
                Ok(())
            } else {
                Err(format!("node of {name} is {state}"))
            }
        })
    }

    /// The state (`ready`, `down`, ...) of agent machine `name`'s node.
    pub fn node_state(&self, name: &str) -> Result<String, String> {
        let node = self.node(name)?;
        Ok(node["state"].as_str().unwrap_or("unknown").to_owned())
    }

    /// Agent machine `name`'s row of `skiffctl -o json node ls` (found by its address).
    pub fn node(&self, name: &str) -> Result<serde_json::Value, String> {
        let addr = self.lab.machine(name).map_err(|e| e.to_string())?.net.addr;
        let nodes = self.ctl_json(&["node", "ls"])?;
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| {
                n["addr"]
                    .as_str()
                    .is_some_and(|a| a == addr.to_string() || a.starts_with(&format!("{addr}:")))
            })
            .cloned()
            .ok_or_else(|| format!("no node with address {addr} in {nodes}"))
    }

    /// Retries `check` until it passes; on timeout, the error says which machine and
    /// step, what the check said last, and the tail of the daemons' logs.
    pub fn wait<T>(
        &self,
        machine: &str,
        what: &str,
        within: Duration,
        check: impl FnMut() -> Result<T, String>,
    ) -> Result<T, ClusterError> {
        eventually(within, Duration::from_millis(200), check).map_err(|e| {
            ClusterError::step(
                format!("{machine}: waiting for {what}"),
                format!("{e}\n{}", self.lab.dump_logs(30)),
            )
        })
    }

    /// Hands the lab over to the `skiff-lab` CLI (no teardown on drop).
    pub fn persist(self, state_file: &Path) -> Result<crate::lab::LabState, ClusterError> {
        Ok(self.lab.persist(state_file)?)
    }
}

/// The daemons' environment: their default log filter unless `SKIFF_LAB_LOG` says
/// otherwise (a `RUST_LOG` filter), and no colour codes in log files.
fn log_env() -> Vec<(String, String)> {
    let mut env = vec![("NO_COLOR".to_owned(), "1".to_owned())];
    if let Ok(filter) = std::env::var("SKIFF_LAB_LOG") {
        env.push(("RUST_LOG".into(), filter));
    }
    env
}

/// Builds the busybox test image and pushes it to `registry` (plain HTTP) as `name`.
pub fn push_busybox(registry: &str, name: &str) -> Result<String, ClusterError> {
    use skiff_image::{RegistryClient, RegistryConfig};
    let reference = format!("{registry}/{name}");
    let parsed = skiff_image::Reference::parse(&reference)
        .map_err(|e| ClusterError::step(format!("reference {reference}"), e))?;
    let client = RegistryClient::new(RegistryConfig {
        insecure: vec![registry.to_owned()],
        ..RegistryConfig::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::step("tokio runtime", e))?;
    rt.block_on(async {
        skiff_image::testing::busybox()
            .build()
            .push(&client, &parsed)
            .await
    })
    .map_err(|e| ClusterError::step(format!("push {reference}"), e))?;
    Ok(reference)
}
