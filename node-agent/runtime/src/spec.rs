//! Docker's defaults (moby `daemon/pkg/oci/defaults.go`, `caps/defaults.go`) and a
//! builder of a Docker-like OCI `Spec` from what a task says (args, env, user, mounts,
//! resources, network namespace). The agent maps a task to [`SpecOptions`]; the runtime
//! only ever sees the resulting `Spec`.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Mount, PosixRlimit, Process, Root, Spec, User,
};

use crate::seccomp::docker;

/// Docker's 14 default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's 12 masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's 5 read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Capability names in kernel order: the index is the capability number.
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Annotation asking for skiff's init as PID 1 (`"true"`).
pub const ANNOTATION_INIT: &str = "io.skiff.init";
/// Annotation carrying a user given by name (`app`, `app:staff`), resolved in the
/// container's own `/etc/passwd` and `/etc/group` at create.
pub const ANNOTATION_USER: &str = "io.skiff.user";

/// `CAP_CHOWN` → 0. Accepts `chown`, `CHOWN` and `CAP_CHOWN`.
pub fn cap_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    CAP_NAMES.iter().position(|c| *c == full).map(|i| i as u32)
}

/// The bit mask of a list of capabilities (unknown names are ignored).
pub fn cap_mask(caps: &[Capability]) -> u64 {
    caps.iter()
        .filter_map(|c| cap_number(&cap_name(c)))
        .fold(0u64, |m, n| m | (1u64 << n))
}

/// `Capability::Chown` → `CAP_CHOWN`.
pub fn cap_name(cap: &Capability) -> String {
    serde_json::to_value(cap)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn parse_cap(name: &str) -> Option<Capability> {
    let n = cap_number(name)?;
    serde_json::from_value(serde_json::Value::String(CAP_NAMES[n as usize].into())).ok()
}

/// What a task asks of its container, in Docker's terms.
#[derive(Clone, Debug, Default)]
pub struct SpecOptions {
    pub args: Vec<String>,
    /// `KEY=value`; PATH and HOSTNAME are added when missing.
    pub env: Vec<String>,
    /// Defaults to `/`.
    pub cwd: Option<String>,
    /// `uid[:gid]` or `name[:group]`; empty or `root` for root.
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// `NET_ADMIN` or `CAP_NET_ADMIN`; `ALL` adds or drops every capability.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub resources: Option<LinuxResources>,
    /// Bind, volume and tmpfs mounts, after the defaults.
    pub mounts: Vec<Mount>,
    pub read_only: bool,
    pub init: bool,
    /// A network namespace prepared by the agent (`/run/netns/skiff-...`); a fresh one
    /// (with only `lo`) when None.
    pub netns: Option<PathBuf>,
    pub no_new_privileges: bool,
    /// Leave seccomp off (Docker's `seccomp=unconfined`).
    pub seccomp_unconfined: bool,
    pub rlimits: Vec<PosixRlimit>,
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into());
    m.set_typ(Some(typ.into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The standard mounts of a Docker container.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    ]
}

fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(typ);
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.into()));
    d
}

/// Docker's device cgroup allow-list: deny all, then mknod of anything, and use of
/// null, zero, full, random, urandom, tty, console, ptmx and the pts. Nothing is denied
/// after the first rule: a deny that cuts into an allowed wildcard (a `c 10:229 rwm`
/// deny stood here until 2026-12-07; it only took away mknod of /dev/fuse, whose use
/// was never allowed) cannot be written as a cgroup v1 exception list, and runc refuses
/// such a bundle ("cannot punch hole in existing wildcard rule").
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    vec![
        device_rule(false, None, None, None, "rwm"),
        device_rule(true, Some(C), None, None, "m"),
        device_rule(true, Some(B), None, None, "m"),
        device_rule(true, Some(C), Some(1), Some(3), "rwm"),
        device_rule(true, Some(C), Some(1), Some(5), "rwm"),
        device_rule(true, Some(C), Some(1), Some(7), "rwm"),
        device_rule(true, Some(C), Some(1), Some(8), "rwm"),
        device_rule(true, Some(C), Some(1), Some(9), "rwm"),
        device_rule(true, Some(C), Some(5), Some(0), "rwm"),
        device_rule(true, Some(C), Some(5), Some(1), "rwm"),
        device_rule(true, Some(C), Some(5), Some(2), "rwm"),
        device_rule(true, Some(C), Some(136), None, "rwm"),
    ]
}

/// The capability list after Docker's `cap_add` / `cap_drop` rules.
pub fn effective_caps(add: &[String], drop: &[String]) -> Vec<String> {
    let is_all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let norm = |c: &String| {
        let u = c.to_ascii_uppercase();
        if u.starts_with("CAP_") {
            u
        } else {
            format!("CAP_{u}")
        }
    };
    let mut caps: Vec<String> = if is_all(add) {
        CAP_NAMES.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    if is_all(drop) {
        caps.clear();
    }
    for c in add
        .iter()
        .filter(|c| !c.eq_ignore_ascii_case("ALL"))
        .map(norm)
    {
        if cap_number(&c).is_some() && !caps.contains(&c) {
            caps.push(c);
        }
    }
    let drops: Vec<String> = drop.iter().map(norm).collect();
    caps.retain(|c| !drops.contains(c));
    caps
}

fn is_root_user(user: &Option<String>) -> bool {
    match user.as_deref() {
        None | Some("") => true,
        Some(u) => {
            let name = u.split(':').next().unwrap_or("");
            name == "root" || name == "0"
        }
    }
}

/// Builds a Docker-like spec: default mounts, masked and read-only paths, 14 default
/// capabilities, Docker's seccomp profile, device allow-list, new namespaces (joining
/// `netns` for the network when given).
pub fn docker_spec(o: &SpecOptions) -> Spec {
    let mut spec = Spec::default();
    let caps = effective_caps(&o.cap_add, &o.cap_drop);
    let cap_set: Vec<Capability> = caps.iter().filter_map(|c| parse_cap(c)).collect();

    let mut env = o.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    if let Some(h) = &o.hostname
        && !env.iter().any(|e| e.starts_with("HOSTNAME="))
    {
        env.push(format!("HOSTNAME={h}"));
    }

    let mut user = User::default();
    let mut annotations = HashMap::new();
    if let Some(u) = o.user.as_deref().filter(|u| !u.is_empty()) {
        let (name, group) = u.split_once(':').map_or((u, None), |(a, b)| (a, Some(b)));
        match (name.parse::<u32>(), group.map(str::parse::<u32>)) {
            (Ok(uid), None) => {
                user.set_uid(uid);
                // The gid comes from /etc/passwd when present.
                annotations.insert(ANNOTATION_USER.to_string(), u.to_string());
            }
            (Ok(uid), Some(Ok(gid))) => {
                user.set_uid(uid);
                user.set_gid(gid);
            }
            _ => {
                annotations.insert(ANNOTATION_USER.to_string(), u.to_string());
            }
        }
    }
    if o.init {
        annotations.insert(ANNOTATION_INIT.to_string(), "true".into());
    }

    let mut capabilities = LinuxCapabilities::default();
    let set: oci_spec::runtime::Capabilities = cap_set.iter().cloned().collect();
    capabilities.set_bounding(Some(set.clone()));
    if is_root_user(&o.user) {
        capabilities.set_effective(Some(set.clone()));
        capabilities.set_permitted(Some(set));
    } else {
        // A non-root user gets the capabilities only in its bounding set (moby does
        // the same since CVE-2022-24769).
        capabilities.set_effective(Some(Default::default()));
        capabilities.set_permitted(Some(Default::default()));
    }
    capabilities.set_inheritable(Some(Default::default()));
    capabilities.set_ambient(Some(Default::default()));

    let mut process = Process::default();
    process.set_args(Some(o.args.clone()));
    process.set_env(Some(env));
    process.set_cwd(o.cwd.clone().unwrap_or_else(|| "/".into()).into());
    process.set_user(user);
    process.set_capabilities(Some(capabilities));
    process.set_no_new_privileges(Some(o.no_new_privileges));
    process.set_terminal(Some(false));
    // Docker sets none by default: the container inherits the daemon's (here the
    // shim's) limits.
    process.set_rlimits((!o.rlimits.is_empty()).then(|| o.rlimits.clone()));
    spec.set_process(Some(process));

    let mut root = Root::default();
    root.set_path("rootfs".into());
    root.set_readonly(Some(o.read_only));
    spec.set_root(Some(root));
    spec.set_hostname(o.hostname.clone());

    let mut mounts = default_mounts();
    mounts.extend(o.mounts.iter().cloned());
    spec.set_mounts(Some(mounts));
    spec.set_annotations((!annotations.is_empty()).then_some(annotations));

    let mut linux = oci_spec::runtime::Linux::default();
    let ns = |typ, path: Option<PathBuf>| {
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        n.set_path(path);
        n
    };
    linux.set_namespaces(Some(vec![
        ns(LinuxNamespaceType::Pid, None),
        ns(LinuxNamespaceType::Network, o.netns.clone()),
        ns(LinuxNamespaceType::Ipc, None),
        ns(LinuxNamespaceType::Uts, None),
        ns(LinuxNamespaceType::Mount, None),
        ns(LinuxNamespaceType::Cgroup, None),
    ]));
    linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    let mut resources = o.resources.clone().unwrap_or_default();
    let mut devices = default_device_rules();
    devices.extend(resources.devices().clone().unwrap_or_default());
    resources.set_devices(Some(devices));
    linux.set_resources(Some(resources));
    if !o.seccomp_unconfined {
        linux.set_seccomp(Some(docker::default_profile(&caps)));
    }
    spec.set_linux(Some(linux));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rules_deny_all_then_only_allow() {
        let rules = default_device_rules();
        assert!(!rules[0].allow(), "first rule denies everything");
        assert_eq!(rules[0].typ(), None);
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        for r in &rules[1..] {
            assert!(r.allow(), "no hole punched after the deny-all: {r:?}");
        }
    }

    #[test]
    fn default_caps_make_dockers_capeff() {
        let caps: Vec<Capability> = DEFAULT_CAPS.iter().filter_map(|c| parse_cap(c)).collect();
        assert_eq!(caps.len(), 14);
        // `docker run busybox grep CapEff /proc/self/status` prints this.
        assert_eq!(cap_mask(&caps), 0xa80425fb);
    }

    #[test]
    fn cap_add_and_drop_follow_docker() {
        let caps = effective_caps(&["net_admin".into()], &["CAP_CHOWN".into()]);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(caps.len(), 14);
        assert!(effective_caps(&[], &["ALL".into()]).is_empty());
        assert_eq!(effective_caps(&["ALL".into()], &[]).len(), CAP_NAMES.len());
    }

    #[test]
    fn spec_joins_given_netns_and_marks_user_and_init() {
        let spec = docker_spec(&SpecOptions {
            args: vec!["/bin/true".into()],
            user: Some("app".into()),
            init: true,
            netns: Some("/run/netns/skiff-x".into()),
            ..Default::default()
        });
        let linux = spec.linux().as_ref().expect("linux");
        let net = linux
            .namespaces()
            .iter()
            .flatten()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .expect("net ns");
        assert_eq!(
            net.path().as_deref(),
            Some(std::path::Path::new("/run/netns/skiff-x"))
        );
        let ann = spec.annotations().as_ref().expect("annotations");
        assert_eq!(ann.get(ANNOTATION_USER).map(String::as_str), Some("app"));
        assert_eq!(ann.get(ANNOTATION_INIT).map(String::as_str), Some("true"));
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("caps");
        assert!(caps.effective().as_ref().is_some_and(|e| e.is_empty()));
        assert_eq!(linux.masked_paths().as_ref().map(Vec::len), Some(12));
        assert_eq!(linux.readonly_paths().as_ref().map(Vec::len), Some(5));
    }
}
