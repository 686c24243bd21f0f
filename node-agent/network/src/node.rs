//! `NodeNetwork`: the one object the agent holds. It keeps the last assignments and
//! endpoint table it was given and converges links, namespaces, nftables and DNS to
//! them; every call is idempotent, so the agent can simply call again after an error.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use skiff_proto::v1 as pb;
use tokio::sync::Mutex;

use crate::attach::{self, AttachError, Endpoint, NetworkMode};
use crate::compat::{self, HostFirewall};
use crate::dns::{self, Dns, DnsError, DnsTable};
use crate::firewall::{self, FirewallError};
use crate::link::{Link, LinkError, Links, TcHook};
use crate::netns::{self, NetnsError, NetnsPath};
use crate::nft::Nft;
use crate::overlay::{self, OverlayError, OverlayPlan, PlanError};
use crate::sendpath::{self, SendPath};
use crate::{shortcut, steering};

/// How this node's networking is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (as in `pb::OverlayPeer::node_id`).
    pub node_id: String,
    /// This node's underlay address: the VXLAN source, and where published ports of
    /// other nodes send mesh traffic.
    pub underlay_ip: Ipv4Addr,
    /// Namespaces go to `<run_dir>/netns/<task id>`.
    pub run_dir: PathBuf,
    /// The namespace that plays the node (tests); `None`: the agent's own.
    pub netns: Option<PathBuf>,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// Port of the embedded DNS on each gateway address (53).
    pub dns_port: u16,
    /// Where names that are not services go; `None`: the host's /etc/resolv.conf.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// The socket of the process that keeps the DNS sockets open across agent
    /// restarts (`dns::keeper`); `None`: no keeper.
    pub dns_keeper: Option<PathBuf>,
}

impl NodeConfig {
    pub fn new(
        node_id: impl Into<String>,
        underlay_ip: Ipv4Addr,
        run_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            underlay_ip,
            run_dir: run_dir.into(),
            netns: None,
            vxlan_port: overlay::VXLAN_PORT,
            dns_port: 53,
            dns_upstreams: None,
            dns_keeper: None,
        }
    }
}

/// Anything `NodeNetwork` can fail at.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("writing sysctl {path}: {err}")]
    Sysctl { path: String, err: std::io::Error },
}

#[derive(Default)]
struct State {
    assignments: pb::Assignments,
    endpoints: Option<pb::EndpointTable>,
    plan: OverlayPlan,
    /// Local tasks and their endpoints.
    tasks: BTreeMap<String, Vec<Endpoint>>,
    /// The node table as last loaded.
    node_rules: Option<String>,
    /// Each task's table as last loaded.
    task_rules: BTreeMap<String, String>,
    /// VXLAN devices readied by this agent (steering, ingress qdisc), by name, and
    /// whether they take shortcuts (false once the kernel refused a qdisc or filter:
    /// not asked again, so a kernel without cls_u32/act_mirred logs it once).
    vxlans: BTreeMap<String, (Link, bool)>,
    /// Redirect filters installed: where each leads, and the veth's index then.
    shortcuts: BTreeMap<shortcut::Key, (shortcut::Target, u32)>,
    /// Send shortcuts by network id (`sendpath.rs`).
    send_paths: BTreeMap<String, SendPath>,
    /// The kernel refused a send shortcut's map or program: not asked again.
    send_refused: bool,
}

/// How many task tables are loaded at once.
const RULE_WORKERS: usize = 4;

/// Networking of one node.
pub struct NodeNetwork {
    cfg: NodeConfig,
    host: Links,
    mtu: u32,
    dns: Dns,
    host_firewall: std::sync::Mutex<HostFirewall>,
    state: Mutex<State>,
    /// One lock per attached task, held while its table is loaded or its namespace
    /// removed: loads of one task never overlap or run against a vanishing namespace,
    /// and none of them holds `state`, so a hundred tasks are set up side by side.
    task_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Writes a sysctl inside `ns`.
pub(crate) async fn sysctl(ns: Option<&Path>, key: &str, value: &str) -> Result<(), NetworkError> {
    let path = netns::sysctl_path(key);
    let (p, v) = (path.clone(), value.to_owned());
    netns::run_in_async(ns, move || std::fs::write(&p, v))
        .await?
        .map_err(|err| NetworkError::Sysctl {
            path: path.display().to_string(),
            err,
        })
}

impl NodeNetwork {
    /// Opens netlink in the node's namespace, turns on IPv4 forwarding and finds the
    /// underlay MTU.
    pub async fn new(cfg: NodeConfig) -> Result<Self, NetworkError> {
        let host = Links::new(netns::netlink(cfg.netns.as_deref()).await?);
        sysctl(cfg.netns.as_deref(), "net.ipv4.ip_forward", "1").await?;
        let underlay_mtu = match host.link_with_address(cfg.underlay_ip).await? {
            Some(l) if l.mtu > 0 => l.mtu,
            _ => {
                tracing::warn!(ip = %cfg.underlay_ip, "no link holds the underlay address; assuming MTU 1500");
                1500
            }
        };
        let upstreams = cfg
            .dns_upstreams
            .clone()
            .unwrap_or_else(|| dns::host_resolvers(Path::new("/etc/resolv.conf")));
        let host_firewall = compat::cope(cfg.netns.as_deref()).await;
        for line in host_firewall.diagnostics() {
            tracing::info!("{line}");
        }
        Ok(Self {
            host_firewall: std::sync::Mutex::new(host_firewall),
            dns: {
                let dns = Dns::new(cfg.netns.clone(), cfg.dns_port, upstreams);
                match &cfg.dns_keeper {
                    Some(path) => dns.with_keeper(crate::dns::keeper::Keeper::new(path)),
                    None => dns,
                }
            },
            mtu: underlay_mtu
                .saturating_sub(overlay::VXLAN_OVERHEAD)
                .max(576),
            cfg,
            host,
            state: Mutex::new(State::default()),
            task_locks: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// MTU of bridges, VXLAN devices and container interfaces.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn converge(&self, st: &mut State) -> Result<(), NetworkError> {
        let plan = overlay::plan(
            &st.assignments,
            st.endpoints.as_ref(),
            &self.cfg.node_id,
            self.cfg.underlay_ip,
        )?;
        let vxlans = overlay::reconcile(
            &self.host,
            &plan,
            self.cfg.underlay_ip,
            self.cfg.vxlan_port,
            self.mtu,
        )
        .await?;
        st.plan = plan;
        self.ready_vxlans(st, vxlans).await;
        Self::sync_send_paths(st);
        // Names first: sockets taken back from the keeper may hold queries already.
        self.refresh_names(st);
        let gateways: Vec<Ipv4Addr> = st.plan.networks.values().map(|n| n.gateway).collect();
        self.dns.listen_on(&gateways).await?;
        let rules = firewall::render_node(
            &self.cfg.node_id,
            &st.plan,
            st.endpoints.as_ref(),
            self.cfg.vxlan_port,
        );
        if st.node_rules.as_ref() != Some(&rules) {
            firewall::apply(self.cfg.netns.as_deref(), rules.clone()).await?;
            st.node_rules = Some(rules);
        }
        Ok(())
    }

    /// Readies VXLAN devices this agent has not seen yet (by name and index: a recreated
    /// device is new): spreads their receive processing over the CPUs and gives them a
    /// fresh ingress qdisc for shortcuts (dropping filters an earlier agent left). Then
    /// converges the shortcuts. Failures are logged: both are speed-ups, never a reason
    /// to fail a converge (without them traffic takes the bridge, on one CPU).
    async fn ready_vxlans(&self, st: &mut State, vxlans: Vec<Link>) {
        st.vxlans
            .retain(|name, _| vxlans.iter().any(|l| &l.name == name));
        for link in vxlans {
            if st.vxlans.get(&link.name).map(|(l, _)| l.index) == Some(link.index) {
                continue;
            }
            let (ns, name) = (self.cfg.netns.clone(), link.name.clone());
            let done =
                tokio::task::spawn_blocking(move || steering::spread(ns.as_deref(), &name)).await;
            match done {
                Ok(Ok(mask)) => {
                    tracing::debug!(link = %link.name, ?mask, "receive steering set");
                }
                Ok(Err(err)) => {
                    tracing::warn!(link = %link.name, %err, "could not spread receive processing over CPUs; overlay traffic into this node is received on one CPU");
                }
                Err(err) => tracing::warn!(link = %link.name, %err, "receive steering task failed"),
            }
            st.shortcuts.retain(|(vxlan, _), _| vxlan != &link.name);
            let ok = match self.host.reset_clsact(&link).await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(link = %link.name, %err, "no clsact qdisc: overlay traffic to local containers takes the bridge");
                    false
                }
            };
            if ok {
                self.reset_flow_hash(&link).await;
            }
            st.vxlans.insert(link.name.clone(), (link, ok));
        }
        self.sync_shortcuts(st).await;
    }

    /// Puts the flow hash program (`bpf.rs`) on `link`'s egress, so the receiving
    /// nodes steer both directions of a connection to one CPU. Logged, never fatal:
    /// without it steering goes by the sending socket's hash, as before.
    async fn reset_flow_hash(&self, link: &Link) {
        match crate::bpf::hash_reset() {
            Ok(prog) => {
                if let Err(err) = self
                    .host
                    .set_program(link, TcHook::Egress, prog, crate::bpf::PROGRAM_NAME)
                    .await
                {
                    tracing::warn!(link = %link.name, %err, "no flow hash program on the VXLAN device: receive steering goes by the sending socket's hash");
                }
            }
            Err(err) => {
                tracing::debug!(link = %link.name, %err, "no flow hash program: receive steering goes by the sending socket's hash");
            }
        }
    }

    /// Converges each network's send shortcut map to the network's tasks on other nodes
    /// (`sendpath.rs`), making the map and program of a network new to this agent.
    /// Failures are logged: without an entry, traffic takes the bridge.
    fn sync_send_paths(st: &mut State) {
        let State {
            plan,
            vxlans,
            tasks,
            send_paths,
            send_refused,
            ..
        } = st;
        send_paths.retain(|id, _| plan.networks.contains_key(id));
        for (id, net) in &plan.networks {
            let Some((vxlan, _)) = vxlans.get(&net.vxlan) else {
                continue;
            };
            let path = match send_paths.entry(id.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(_) if *send_refused => continue,
                Entry::Vacant(e) => match SendPath::new(net) {
                    Ok(p) => e.insert(p),
                    Err(err) => {
                        tracing::info!(%err, "no send shortcuts: overlay traffic from containers takes the bridge");
                        *send_refused = true;
                        continue;
                    }
                },
            };
            let local: BTreeSet<Ipv4Addr> = tasks
                .values()
                .flatten()
                .filter(|ep| &ep.network_id == id)
                .map(|ep| ep.addr.addr())
                .collect();
            let want = sendpath::desired(plan.remote_tasks.get(id), &local, vxlan.index);
            if let Err(err) = path.sync(&want) {
                tracing::warn!(network = %id, %err, "send shortcut map: traffic to some remote tasks takes the bridge");
            }
        }
    }

    /// Puts each network's send shortcut program on the ingress of a task's veth host
    /// ends (replacing one an earlier agent put there). Logged, never fatal.
    async fn set_send_programs(&self, programs: Vec<(Link, std::os::fd::OwnedFd)>) {
        for (veth, program) in programs {
            let set = async {
                self.host.ensure_clsact(&veth).await?;
                let prog = std::os::fd::AsFd::as_fd(&program);
                let name = crate::bpf::SEND_PROGRAM_NAME;
                self.host
                    .set_program(&veth, TcHook::Ingress, prog, name)
                    .await
            };
            if let Err(err) = set.await {
                tracing::warn!(%err, "no send shortcut on a task's veth: its overlay traffic takes the bridge");
            }
        }
    }

    /// Converges the redirect filters on the VXLAN devices to all local tasks.
    async fn sync_shortcuts(&self, st: &mut State) {
        let want = shortcut::desired(&st.plan.networks, &st.tasks);
        let stale: Vec<shortcut::Key> = st
            .shortcuts
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        self.remove_shortcuts(st, stale).await;
        self.add_shortcuts(st, want).await;
    }

    /// Adds the shortcuts of one task just attached (the others are left alone, so an
    /// attach costs the same with one task on the node or a thousand).
    async fn add_task_shortcuts(&self, st: &mut State, task_id: &str) {
        let Some((id, eps)) = st.tasks.get_key_value(task_id) else {
            return;
        };
        let want = shortcut::desired(&st.plan.networks, std::iter::once((id, eps)));
        self.add_shortcuts(st, want).await;
    }

    /// Removes the shortcuts that lead to `task_id` with endpoints `eps` (a reused
    /// address already taken over by another task's shortcut stays).
    async fn remove_task_shortcuts(&self, st: &mut State, task_id: &str, eps: Vec<Endpoint>) {
        let id = task_id.to_owned();
        let theirs = shortcut::desired(&st.plan.networks, std::iter::once((&id, &eps)));
        let gone: Vec<shortcut::Key> = theirs
            .into_iter()
            .filter(|(key, target)| st.shortcuts.get(key).is_some_and(|(t, _)| t == target))
            .map(|(key, _)| key)
            .collect();
        self.remove_shortcuts(st, gone).await;
    }

    async fn remove_shortcuts(&self, st: &mut State, keys: Vec<shortcut::Key>) {
        for key in keys {
            st.shortcuts.remove(&key);
            let Some((vxlan, _)) = st.vxlans.get(&key.0) else {
                continue;
            };
            if let Err(err) = self.host.delete_redirect(vxlan, key.1).await {
                tracing::warn!(%err, "removing a shortcut to a container that left");
            }
        }
    }

    async fn add_shortcuts(&self, st: &mut State, want: BTreeMap<shortcut::Key, shortcut::Target>) {
        for (key, target) in want {
            if st.shortcuts.get(&key).is_some_and(|(t, _)| t == &target) {
                continue;
            }
            let Some((vxlan, true)) = st.vxlans.get(&key.0) else {
                continue;
            };
            let veth = match self.host.by_name(&target.veth).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(%err, "looking up a container's veth for its shortcut");
                    continue;
                }
            };
            match self
                .host
                .set_redirect(vxlan, key.1, target.dst, veth.index)
                .await
            {
                Ok(()) => {
                    st.shortcuts.insert(key, (target, veth.index));
                }
                Err(err) => {
                    tracing::warn!(%err, "shortcuts off on this VXLAN device: overlay traffic to its containers takes the bridge");
                    if let Some((_, ok)) = st.vxlans.get_mut(&key.0) {
                        *ok = false;
                    }
                }
            }
        }
    }

    /// Converges the node under its lock, then every task's table without it.
    async fn converge_all(
        &self,
        mut st: tokio::sync::MutexGuard<'_, State>,
    ) -> Result<(), NetworkError> {
        self.converge(&mut st).await?;
        let tasks: Vec<String> = st.tasks.keys().cloned().collect();
        drop(st);
        self.sync_task_rules(tasks).await
    }

    fn task_lock(&self, task_id: &str) -> Arc<Mutex<()>> {
        let mut locks = self
            .task_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(task_id.to_owned()).or_default())
    }

    /// Loads the tables of `tasks` that differ from what the state asks for, several
    /// at once.
    async fn sync_task_rules(&self, tasks: Vec<String>) -> Result<(), NetworkError> {
        futures::stream::iter(tasks)
            .map(|task| async move { self.sync_task(&task).await })
            .buffer_unordered(RULE_WORKERS)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// Loads one task's table if it differs from what the state asks for. The rules
    /// are rendered from the state as it is once the task's lock is held, so a load
    /// never puts back an older table than one already loaded.
    async fn sync_task(&self, task_id: &str) -> Result<(), NetworkError> {
        let lock = self.task_lock(task_id);
        let _held = lock.lock().await;
        let rules = {
            let st = self.state.lock().await;
            let Some(eps) = st.tasks.get(task_id) else {
                return Ok(());
            };
            let rules = firewall::render_task(eps, st.endpoints.as_ref());
            if st.task_rules.get(task_id) == Some(&rules) {
                return Ok(());
            }
            rules
        };
        let path = attach::netns_path(&self.cfg.run_dir, task_id)?;
        firewall::load_task_table(&Nft::new(Some(&path)), &rules).await?;
        let mut st = self.state.lock().await;
        if st.tasks.contains_key(task_id) {
            st.task_rules.insert(task_id.to_owned(), rules);
        }
        Ok(())
    }

    /// What the agent prints about this node's networking: the host firewall
    /// (Docker's FORWARD DROP, br_netfilter) and what skiff did about it.
    pub fn diagnostics(&self) -> Vec<String> {
        let mut out = match self.host_firewall.lock() {
            Ok(h) => h.diagnostics(),
            Err(p) => p.into_inner().diagnostics(),
        };
        out.push(format!(
            "overlay MTU {} (underlay {} minus VXLAN overhead)",
            self.mtu, self.cfg.underlay_ip
        ));
        out
    }

    fn refresh_names(&self, st: &State) {
        self.dns.set_table(DnsTable::build(
            st.endpoints.as_ref(),
            &st.plan.networks,
            &st.tasks,
        ));
    }

    /// The resolv.conf for a task's container: the embedded DNS on its first network's
    /// gateway; `None` for tasks without networks (host mode: use the host's file).
    pub async fn resolv_conf(&self, task_id: &str) -> Option<String> {
        let st = self.state.lock().await;
        let ep = st.tasks.get(task_id)?.first()?;
        Some(dns::container_resolv_conf(ep.gateway))
    }

    /// Converges bridges, VXLAN devices and forwarding entries to the networks and
    /// peers of `a` (level-triggered: what is not in `a` is removed).
    pub async fn apply_assignments(&self, a: &pb::Assignments) -> Result<(), NetworkError> {
        let mut st = self.state.lock().await;
        st.assignments = networks_of(a);
        self.converge_all(st).await
    }

    /// Takes the assignments' networks and peers and the endpoint table together (after
    /// a restart, from what was persisted): the DNS starts answering with every name.
    pub async fn restore(
        &self,
        a: &pb::Assignments,
        t: Option<&pb::EndpointTable>,
    ) -> Result<(), NetworkError> {
        let mut st = self.state.lock().await;
        st.assignments = networks_of(a);
        st.endpoints = t.cloned();
        self.converge_all(st).await
    }

    /// Takes a new endpoint table: remote task entries, DNS names, VIPs, ports.
    pub async fn apply_endpoints(&self, t: &pb::EndpointTable) -> Result<(), NetworkError> {
        let mut st = self.state.lock().await;
        st.endpoints = Some(t.clone());
        self.converge_all(st).await
    }

    /// Sets up a task's namespace before its container is created. Returns the path the
    /// runtime joins, or `None` for `network_mode: host`.
    pub async fn attach(
        &self,
        task_id: &str,
        mode: NetworkMode,
        attachments: &[pb::NetworkAttachment],
    ) -> Result<Option<NetnsPath>, NetworkError> {
        if mode == NetworkMode::Host {
            return Ok(None);
        }
        let (eps, holders) = {
            let st = self.state.lock().await;
            let eps = match mode {
                NetworkMode::Networks => {
                    attach::endpoints(task_id, attachments, &st.plan.networks)?
                }
                _ => Vec::new(),
            };
            // The masters gave these addresses to this task, so whatever other task of
            // this node still holds one has ended: a second namespace with the same
            // address (and MAC) on the bridge would answer half the traffic.
            let holders: Vec<String> = st
                .tasks
                .iter()
                .filter(|(other, theirs)| {
                    other.as_str() != task_id
                        && theirs.iter().any(|t| {
                            eps.iter().any(|e| {
                                e.network_id == t.network_id && e.addr.addr() == t.addr.addr()
                            })
                        })
                })
                .map(|(other, _)| other.clone())
                .collect();
            (eps, holders)
        };
        for other in holders {
            tracing::warn!(task = task_id, stale = %other, "address still held by an ended task: detaching it");
            self.detach(&other).await?;
        }
        // The namespace and veths of one task touch nothing another task's do: made
        // without the node's lock, so a hundred tasks starting at once are set up side
        // by side. Names, which are shared, are updated under it; the task's table is
        // loaded under the task's own lock.
        let made = attach::attach(&self.host, &self.cfg.run_dir, task_id, &eps, self.mtu).await;
        let mut st = self.state.lock().await;
        match made {
            Ok(made) => {
                let networks: Vec<String> = eps.iter().map(|e| e.network_id.clone()).collect();
                st.tasks.insert(task_id.to_owned(), eps);
                self.refresh_names(&st);
                st.task_rules.remove(task_id);
                self.add_task_shortcuts(&mut st, task_id).await;
                Self::sync_send_paths(&mut st);
                // The programs are set without the node's lock, each held by an fd of
                // its own (the network could go meanwhile).
                let programs: Vec<_> = made
                    .host_ends
                    .into_iter()
                    .zip(&networks)
                    .filter_map(|(veth, net)| {
                        let path = st.send_paths.get(net)?;
                        match path.program().try_clone_to_owned() {
                            Ok(fd) => Some((veth, fd)),
                            Err(err) => {
                                tracing::warn!(%err, "duplicating the send shortcut program's fd");
                                None
                            }
                        }
                    })
                    .collect();
                drop(st);
                self.set_send_programs(programs).await;
                if mode == NetworkMode::Networks {
                    self.sync_task(task_id).await?;
                }
                Ok(Some(made.ns))
            }
            Err(err) => {
                if let Err(cleanup) = attach::detach(&self.host, &self.cfg.run_dir, task_id).await {
                    tracing::warn!(task = task_id, ?cleanup, "cleaning up a failed attach");
                }
                Err(err.into())
            }
        }
    }

    /// Removes a task's veths and namespace (idempotent).
    pub async fn detach(&self, task_id: &str) -> Result<(), NetworkError> {
        let lock = self.task_lock(task_id);
        let _held = lock.lock().await;
        let mut st = self.state.lock().await;
        attach::detach(&self.host, &self.cfg.run_dir, task_id).await?;
        if let Some(eps) = st.tasks.remove(task_id) {
            self.remove_task_shortcuts(&mut st, task_id, eps).await;
            Self::sync_send_paths(&mut st);
        }
        st.task_rules.remove(task_id);
        self.refresh_names(&st);
        drop(st);
        self.task_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(task_id);
        Ok(())
    }

    /// Detaches every task with a namespace under the run dir that is not in `keep`
    /// (after an agent restart). Returns the tasks removed.
    pub async fn gc(&self, keep: &[&str]) -> Result<Vec<String>, NetworkError> {
        let mut removed = Vec::new();
        for task in attach::attached_tasks(&self.cfg.run_dir) {
            if !keep.contains(&task.as_str()) {
                self.detach(&task).await?;
                removed.push(task);
            }
        }
        Ok(removed)
    }

    /// Removes everything skiff made on this node: task namespaces and veths, bridges
    /// and VXLAN devices (for `leave` and tests).
    pub async fn teardown(&self) -> Result<(), NetworkError> {
        self.gc(&[]).await?;
        let mut st = self.state.lock().await;
        *st = State::default();
        self.dns.shut_down().await;
        overlay::remove_stale(&self.host, &OverlayPlan::default()).await?;
        firewall::apply(
            self.cfg.netns.as_deref(),
            firewall::delete_script(firewall::NODE_TABLE),
        )
        .await?;
        let hf = match self.host_firewall.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        };
        compat::undo(self.cfg.netns.as_deref(), &hf).await?;
        Ok(())
    }
}

/// What the network keeps of an assignment: its networks and peers (tasks attach one by
/// one through `attach`).
fn networks_of(a: &pb::Assignments) -> pb::Assignments {
    pb::Assignments {
        revision: a.revision,
        tasks: Vec::new(),
        networks: a.networks.clone(),
        peers: a.peers.clone(),
    }
}
