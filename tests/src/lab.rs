//! A lab: N machines on one host, each a network namespace with its own address on the
//! lab bridge, its own data directory and its own daemons, all inside the lab's cgroup
//! subtree. A `Lab` value owns all of it: dropping it (a test ending, passing or
//! panicking) tears it down; `persist` hands it to the `skiff-lab` CLI instead, which
//! keeps its description in a state file and tears it down with `skiff-lab down`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroup;
use crate::host::HostError;
use crate::process::{self, Daemon, SpawnError};
use crate::topology::{LabNet, MachineNet};

/// Where persisted labs keep their state files.
pub const STATE_DIR: &str = "/run/skiff-lab";

/// What a machine is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Master,
    Agent,
}

/// One machine of the lab.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub net: MachineNet,
    pub role: Role,
    /// The machine's own directory: data dirs, logs, run dir.
    pub dir: PathBuf,
    /// The cgroup (relative to each hierarchy) its daemons run in.
    pub cgroup: String,
    pub daemons: Vec<Daemon>,
}

/// Everything that describes a lab, as kept in its state file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LabState {
    pub id: String,
    pub dir: PathBuf,
    pub net: LabNet,
    pub cgroup: String,
    pub machines: Vec<Machine>,
    /// Daemons on the host side (the registry).
    pub host_daemons: Vec<Daemon>,
}

/// A lab that could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("lab state file {path}: {err}")]
    State {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("no machine named {0:?} in this lab")]
    NoMachine(String),
}

/// A lab and the duty to tear it down.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    /// Tear down on drop (tests); false once persisted for the CLI.
    owned: bool,
}

impl Lab {
    /// Makes the bridge, `masters` master machines (m1..) and `agents` agent machines
    /// (a1..) under `root/<id>`. Nothing runs on them yet.
    pub fn create(root: &Path, masters: usize, agents: usize) -> Result<Self, LabError> {
        let id = short_id();
        let dir = root.join(&id);
        std::fs::create_dir_all(&dir).map_err(|err| LabError::Io {
            what: "cannot create lab directory",
            path: dir.clone(),
            err,
        })?;
        let lab_cgroup = cgroup::lab_cgroup(&id);
        cgroup::create(&lab_cgroup).map_err(|err| LabError::Io {
            what: "cannot create lab cgroup",
            path: PathBuf::from(&lab_cgroup),
            err,
        })?;
        let net = match LabNet::create(&id) {
            Ok(net) => net,
            Err(err) => {
                cgroup::kill_and_remove(&lab_cgroup);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err.into());
            }
        };
        // From here on, the Lab's Drop cleans up whatever was made.
        let mut lab = Lab {
            state: LabState {
                id,
                dir,
                net,
                cgroup: lab_cgroup,
                machines: Vec::new(),
                host_daemons: Vec::new(),
            },
            owned: true,
        };
        let names = (1..=masters)
            .map(|i| (format!("m{i}"), Role::Master, 10 + i))
            .chain((1..=agents).map(|i| (format!("a{i}"), Role::Agent, 20 + i)));
        for (name, role, octet) in names {
            let octet = u8::try_from(octet).map_err(|_| LabError::NoMachine(name.clone()))?;
            let net = lab.state.net.add_machine(&name, octet)?;
            let dir = lab.state.dir.join(&name);
            let machine_cgroup = format!("{}/{name}", lab.state.cgroup);
            let machine = Machine {
                net,
                role,
                dir: dir.clone(),
                cgroup: machine_cgroup.clone(),
                daemons: Vec::new(),
            };
            lab.state.machines.push(machine);
            std::fs::create_dir_all(&dir).map_err(|err| LabError::Io {
                what: "cannot create machine directory",
                path: dir.clone(),
                err,
            })?;
            cgroup::create(&machine_cgroup).map_err(|err| LabError::Io {
                what: "cannot create machine cgroup",
                path: PathBuf::from(&machine_cgroup),
                err,
            })?;
        }
        Ok(lab)
    }

    /// Reads a persisted lab's state. The returned value does not tear down on drop;
    /// call [`Lab::teardown`].
    pub fn load(state_file: &Path) -> Result<Self, LabError> {
        let text = std::fs::read_to_string(state_file).map_err(|err| LabError::Io {
            what: "cannot read lab state",
            path: state_file.to_owned(),
            err,
        })?;
        let state = serde_json::from_str(&text).map_err(|err| LabError::State {
            path: state_file.to_owned(),
            err,
        })?;
        Ok(Lab {
            state,
            owned: false,
        })
    }

    /// Writes the state file and gives up ownership: the lab outlives this value.
    pub fn persist(mut self, state_file: &Path) -> Result<LabState, LabError> {
        self.save(state_file)?;
        self.owned = false;
        Ok(self.state.clone())
    }

    /// Writes the state file, keeping ownership.
    pub fn save(&self, state_file: &Path) -> Result<(), LabError> {
        if let Some(parent) = state_file.parent() {
            std::fs::create_dir_all(parent).map_err(|err| LabError::Io {
                what: "cannot create lab state directory",
                path: parent.to_owned(),
                err,
            })?;
        }
        let text = serde_json::to_string_pretty(&self.state).map_err(|err| LabError::State {
            path: state_file.to_owned(),
            err,
        })?;
        std::fs::write(state_file, text).map_err(|err| LabError::Io {
            what: "cannot write lab state",
            path: state_file.to_owned(),
            err,
        })
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The host's address on the lab net.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.state.net.gateway()
    }

    pub fn machine(&self, name: &str) -> Result<&Machine, LabError> {
        self.state
            .machines
            .iter()
            .find(|m| m.net.name == name)
            .ok_or_else(|| LabError::NoMachine(name.to_owned()))
    }

    pub fn machines(&self, role: Role) -> impl Iterator<Item = &Machine> {
        self.state.machines.iter().filter(move |m| m.role == role)
    }

    /// Starts `program args` on machine `name`, logging to `<machine dir>/<log>`.
    pub fn spawn_on(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log: &str,
    ) -> Result<Daemon, LabError> {
        let machine = self
            .state
            .machines
            .iter_mut()
            .find(|m| m.net.name == name)
            .ok_or_else(|| LabError::NoMachine(name.to_owned()))?;
        let daemon = process::spawn(
            &machine.net.netns,
            &machine.cgroup,
            program,
            args,
            envs,
            &machine.dir.join(log),
        )?;
        machine.daemons.push(daemon.clone());
        Ok(daemon)
    }

    /// Starts `program args` on the host side of the lab (the registry), in the lab's
    /// cgroup so teardown finds it.
    pub fn spawn_on_host(
        &mut self,
        program: &Path,
        args: &[String],
        log: &str,
    ) -> Result<Daemon, LabError> {
        let cg = format!("{}/host", self.state.cgroup);
        cgroup::create(&cg).map_err(|err| LabError::Io {
            what: "cannot create host cgroup",
            path: PathBuf::from(&cg),
            err,
        })?;
        let procs: Vec<String> = cgroup::procs_files(&cg)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        let daemon = process::spawn_in_host(&procs, program, args, &self.state.dir.join(log))?;
        self.state.host_daemons.push(daemon.clone());
        Ok(daemon)
    }

    /// Stops every daemon of machine `name` (SIGTERM, then SIGKILL after `grace`).
    /// Containers an agent started keep running, as on a real machine.
    pub fn stop_machine(&mut self, name: &str, grace: Duration) -> Result<Vec<Daemon>, LabError> {
        let machine = self
            .state
            .machines
            .iter_mut()
            .find(|m| m.net.name == name)
            .ok_or_else(|| LabError::NoMachine(name.to_owned()))?;
        let stopped: Vec<Daemon> = machine.daemons.drain(..).collect();
        for daemon in &stopped {
            daemon.stop(grace);
        }
        Ok(stopped)
    }

    /// Starts again the daemons [`Lab::stop_machine`] stopped, with the same command
    /// lines, data and logs.
    pub fn restart_machine(&mut self, name: &str, stopped: &[Daemon]) -> Result<(), LabError> {
        for d in stopped {
            let log = d
                .log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "daemon.log".into());
            self.spawn_on(name, &d.program, &d.args, &d.envs, &log)?;
        }
        Ok(())
    }

    /// Changes the command line a daemon of machine `name` is restarted with (a daemon
    /// started with `join` comes back with `run`).
    pub fn set_restart_args(
        &mut self,
        name: &str,
        pid: u32,
        args: Vec<String>,
    ) -> Result<(), LabError> {
        let machine = self
            .state
            .machines
            .iter_mut()
            .find(|m| m.net.name == name)
            .ok_or_else(|| LabError::NoMachine(name.to_owned()))?;
        if let Some(d) = machine.daemons.iter_mut().find(|d| d.pid == pid) {
            d.args = args;
        }
        Ok(())
    }

    /// Kills machine `name`'s daemons with SIGKILL, no grace.
    pub fn kill_machine(&mut self, name: &str) -> Result<Vec<Daemon>, LabError> {
        self.stop_machine(name, Duration::ZERO)
    }

    /// Cuts machine `name` off the lab net.
    pub fn cut(&self, name: &str) -> Result<(), LabError> {
        Ok(self.machine(name)?.net.cut()?)
    }

    /// Reconnects machine `name`.
    pub fn heal(&self, name: &str) -> Result<(), LabError> {
        Ok(self.machine(name)?.net.heal()?)
    }

    /// The last lines of every daemon's log: what a failing test prints.
    pub fn dump_logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for m in &self.state.machines {
            for d in &m.daemons {
                out.push_str(&format!(
                    "----- {} {} (pid {}) {}\n{}\n",
                    m.net.name,
                    d.program.display(),
                    d.pid,
                    d.log.display(),
                    d.log_tail(lines)
                ));
            }
        }
        out
    }

    /// Removes everything the lab made: daemons and all their descendants (found through
    /// the lab's cgroup subtree), mounts under its directory, namespaces, links, the
    /// bridge and its directory.
    pub fn teardown(&mut self) {
        for m in &mut self.state.machines {
            for d in m.daemons.drain(..) {
                d.stop(Duration::from_secs(2));
            }
        }
        for d in self.state.host_daemons.drain(..) {
            d.stop(Duration::from_secs(1));
        }
        cgroup::kill_and_remove(&self.state.cgroup);
        unmount_beneath(&self.state.dir);
        for m in &self.state.machines {
            m.net.remove();
        }
        self.state.net.remove();
        let _ = std::fs::remove_dir_all(&self.state.dir);
        self.owned = false;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            if std::thread::panicking() {
                eprintln!("lab {} logs:\n{}", self.state.id, self.dump_logs(40));
            }
            self.teardown();
        }
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first (overlay roots,
/// netns bind mounts, tmpfs), so the directory can be removed.
pub fn unmount_beneath(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Four hex digits: short enough for 15-character interface names.
fn short_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = nanos ^ (std::process::id() << 16) ^ std::process::id();
    format!("{:04x}", mix & 0xffff)
}
