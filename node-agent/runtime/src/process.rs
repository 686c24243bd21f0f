//! The container process's identity and privileges (user and groups from `uid:gid` or
//! from the image's /etc/passwd and /etc/group, rlimits, capabilities, no_new_privs,
//! seccomp, working directory), its exec, and skiff's minimal init for `init: true`.
//!
//! Order (as runc): rlimits while still privileged; seccomp early unless no_new_privs
//! (installing it then needs CAP_SYS_ADMIN); bounding set; uid/gid with keep-caps;
//! capset; no_new_privs; seccomp last if no_new_privs; chdir as the user; close_range
//! right before execve (CVE-2024-21626).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process, Spec};

use crate::child::SetupError;
use crate::seccomp::CompiledFilters;
use crate::spec::{ANNOTATION_USER, cap_mask};
use crate::sys;

/// Who the process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves Docker's `user` string against the image's passwd and group files.
/// `named` is `name`, `uid`, `name:group`, `uid:group` or `name:gid`; None keeps the
/// spec's numeric ids (and still looks up the home directory and groups).
pub fn resolve_user(
    uid: u32,
    gid: u32,
    extra_gids: &[u32],
    named: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<Credentials, String> {
    struct Pw<'a> {
        name: &'a str,
        uid: u32,
        gid: u32,
        home: &'a str,
    }
    let entries: Vec<Pw<'_>> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then(|| Pw {
                name: f[0],
                uid: f[2].parse().unwrap_or(u32::MAX),
                gid: f[3].parse().unwrap_or(u32::MAX),
                home: f[5],
            })
        })
        .collect();
    let groups: Vec<(&str, u32, Vec<&str>)> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then(|| {
                (
                    f[0],
                    f[2].parse().unwrap_or(u32::MAX),
                    f[3].split(',').filter(|s| !s.is_empty()).collect(),
                )
            })
        })
        .collect();
    let (user_part, group_part) = match named {
        Some(n) => n
            .split_once(':')
            .map_or((Some(n), None), |(u, g)| (Some(u), Some(g))),
        None => (None, None),
    };
    let (uid, mut gid, home, name) = match user_part {
        None => {
            let pw = entries.iter().find(|e| e.uid == uid);
            (uid, gid, pw.map_or("/", |p| p.home), pw.map(|p| p.name))
        }
        Some(u) => match u.parse::<u32>() {
            Ok(n) => {
                let pw = entries.iter().find(|e| e.uid == n);
                (
                    n,
                    pw.map_or(0, |p| p.gid),
                    pw.map_or("/", |p| p.home),
                    pw.map(|p| p.name),
                )
            }
            Err(_) => {
                let pw = entries
                    .iter()
                    .find(|e| e.name == u)
                    .ok_or_else(|| format!("no user {u:?} in the image's /etc/passwd"))?;
                (pw.uid, pw.gid, pw.home, Some(pw.name))
            }
        },
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| *id)
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        };
    }
    let mut supplementary: Vec<u32> = extra_gids.to_vec();
    if let Some(name) = name
        && group_part.is_none()
    {
        for (_, id, members) in &groups {
            if members.contains(&name) && !supplementary.contains(id) {
                supplementary.push(*id);
            }
        }
    }
    Ok(Credentials {
        uid,
        gid,
        groups: supplementary,
        home: if home.is_empty() {
            "/".into()
        } else {
            home.into()
        },
    })
}

/// What execve needs, prepared before the start signal.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

fn cstr(s: &str, what: &str) -> Result<CString, SetupError> {
    CString::new(s)
        .map_err(|_| SetupError::new("process", format!("{what} {s:?} holds a NUL byte")))
}

fn rlimit_resource(t: PosixRlimitType) -> Option<Resource> {
    Some(match t {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    })
}

/// Finds `cmd` in `PATH` (when it has no slash) and checks it is executable.
fn find_executable(cmd: &str, env: &[String]) -> Result<PathBuf, SetupError> {
    let check =
        |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file();
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return if check(&p) {
            Ok(p)
        } else {
            Err(SetupError::new(
                "exec",
                format!("{cmd}: no such executable in the container"),
            ))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(cmd))
        .find(|p| check(p))
        .ok_or_else(|| {
            SetupError::new("exec", format!("{cmd}: executable file not found in $PATH"))
        })
}

fn read_or_empty(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Applies identity and privileges to the calling process (inside the container's
/// root) and prepares the exec. Returns with seccomp installed.
pub(crate) fn prepare(
    spec: &Spec,
    process: &Process,
    seccomp: Option<&CompiledFilters>,
) -> Result<Prepared, SetupError> {
    let named = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_USER))
        .map(String::as_str);
    let u = process.user();
    let creds = resolve_user(
        u.uid(),
        u.gid(),
        u.additional_gids().as_deref().unwrap_or_default(),
        named,
        &read_or_empty("/etc/passwd"),
        &read_or_empty("/etc/group"),
    )
    .map_err(|m| SetupError::new("user", m))?;

    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", creds.home));
    }

    for r in process.rlimits().iter().flatten() {
        if let Some(res) = rlimit_resource(r.typ()) {
            setrlimit(res, r.soft(), r.hard()).map_err(|e| {
                SetupError::new(
                    "setrlimit",
                    format!("{:?} {}:{}: {e}", r.typ(), r.soft(), r.hard()),
                )
            })?;
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| SetupError::io("write", Path::new("/proc/self/oom_score_adj"), e))?;
    }

    let nnp = process.no_new_privileges() == Some(true);
    if let Some(f) = seccomp
        && !nnp
    {
        f.install()
            .map_err(|e| SetupError::new("seccomp", e.to_string()))?;
    }

    let caps = process.capabilities().clone().unwrap_or_default();
    let set = |c: &Option<oci_spec::runtime::Capabilities>| {
        c.as_ref()
            .map_or(0, |s| cap_mask(&s.iter().cloned().collect::<Vec<_>>()))
    };
    let bounding = set(caps.bounding());
    let last_cap: u32 = read_or_empty("/proc/sys/kernel/cap_last_cap")
        .trim()
        .parse()
        .unwrap_or(40);
    for cap in 0..=last_cap {
        if bounding & (1u64 << cap) == 0 {
            sys::capbset_drop(cap)
                .map_err(|e| SetupError::new("drop bounding capability", format!("{cap}: {e}")))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true)
        .map_err(|e| SetupError::new("prctl", format!("PR_SET_KEEPCAPS: {e}")))?;
    let groups: Vec<Gid> = creds.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups)
        .map_err(|e| SetupError::new("setgroups", format!("{:?}: {e}", creds.groups)))?;
    let gid = Gid::from_raw(creds.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| SetupError::new("setresgid", format!("{}: {e}", creds.gid)))?;
    let uid = Uid::from_raw(creds.uid);
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| SetupError::new("setresuid", format!("{}: {e}", creds.uid)))?;
    nix::sys::prctl::set_keepcaps(false)
        .map_err(|e| SetupError::new("prctl", format!("PR_SET_KEEPCAPS: {e}")))?;
    let (eff, perm, inh, amb) = (
        set(caps.effective()),
        set(caps.permitted()),
        set(caps.inheritable()),
        set(caps.ambient()),
    );
    sys::capset(eff, perm, inh).map_err(|e| {
        SetupError::new(
            "capset",
            format!("effective {eff:#x} permitted {perm:#x}: {e}"),
        )
    })?;
    for cap in 0..=last_cap {
        if amb & (1u64 << cap) != 0 {
            sys::ambient_raise(cap)
                .map_err(|e| SetupError::new("raise ambient capability", format!("{cap}: {e}")))?;
        }
    }
    if nnp {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| SetupError::new("prctl", format!("PR_SET_NO_NEW_PRIVS: {e}")))?;
        if let Some(f) = seccomp {
            f.install()
                .map_err(|e| SetupError::new("seccomp", e.to_string()))?;
        }
    }

    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(SetupError::new(
            "cwd",
            format!("{} is not absolute", cwd.display()),
        ));
    }
    nix::unistd::chdir(cwd).map_err(|e| SetupError::io("chdir", cwd, e.into()))?;
    // A cwd outside the root shows up as "(unreachable)/..." (CVE-2024-21626).
    let actual = nix::unistd::getcwd().map_err(|e| SetupError::io("getcwd", cwd, e.into()))?;
    if !actual.is_absolute() {
        return Err(SetupError::new(
            "cwd",
            format!("{} resolves outside the container root", cwd.display()),
        ));
    }

    let args = process.args().clone().unwrap_or_default();
    let Some(cmd) = args.first() else {
        return Err(SetupError::new("process", "args are empty".into()));
    };
    let path = find_executable(cmd, &env)?;
    Ok(Prepared {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| SetupError::new("exec", format!("{} holds a NUL byte", path.display())))?,
        argv: args
            .iter()
            .map(|a| cstr(a, "argument"))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|e| cstr(e, "environment entry"))
            .collect::<Result<_, _>>()?,
    })
}

/// Marks every descriptor from 3 on close-on-exec, restores signals, execs. Returns
/// only on failure.
pub(crate) fn exec(p: &Prepared) -> SetupError {
    if let Err(e) = sys::cloexec_from(3) {
        return SetupError::new("close_range", e.to_string());
    }
    sys::reset_signal_dispositions();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    match nix::unistd::execve(&p.path, &p.argv, &p.envp) {
        Err(e) => SetupError::new("exec", format!("{}: {e}", p.path.to_string_lossy())),
        Ok(never) => match never {},
    }
}

/// skiff's init as PID 1: reaps every child (orphans included) and forwards signals to
/// the entrypoint; exits with the entrypoint's code, 128+signal if it was killed (as
/// tini and Docker's `--init` report it).
pub(crate) fn init_loop(child: Pid) -> ! {
    let _ = sys::set_not_dumpable();
    let _ = nix::unistd::close(0);
    let all = SigSet::all();
    // Signals stay blocked in PID 1: they queue and sigwait takes them (a blocked
    // signal is never discarded as "ignored by init").
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None);
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig == Signal::SIGCHLD {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => sys::exit_now(code),
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                        sys::exit_now(128 + s as i32)
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        } else {
            let _ = kill(child, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\naudio:x:29:other\n";

    #[test]
    fn names_resolve_through_passwd_and_group() {
        let c = resolve_user(0, 0, &[], Some("app"), PASSWD, GROUP).expect("app");
        assert_eq!(
            (c.uid, c.gid, c.groups.clone(), c.home.as_str()),
            (1000, 1000, vec![50], "/home/app")
        );
        let c = resolve_user(0, 0, &[], Some("app:staff"), PASSWD, GROUP).expect("app:staff");
        assert_eq!((c.uid, c.gid), (1000, 50));
        let c = resolve_user(0, 0, &[], Some("1000"), PASSWD, GROUP).expect("1000");
        assert_eq!((c.uid, c.gid), (1000, 1000));
        let c = resolve_user(4242, 7, &[], None, PASSWD, GROUP).expect("numeric");
        assert_eq!((c.uid, c.gid, c.home.as_str()), (4242, 7, "/"));
        assert!(resolve_user(0, 0, &[], Some("nobody"), PASSWD, GROUP).is_err());
        assert!(resolve_user(0, 0, &[], Some("app:nogroup"), PASSWD, GROUP).is_err());
    }
}
