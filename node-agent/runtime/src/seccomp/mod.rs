//! Seccomp: Docker's default profile (`docker`), and a compiler from any OCI
//! `LinuxSeccomp` to one compact BPF program (`bpf`), cached in memory so a profile is
//! compiled once per runtime, not once per container. The shim installs the program as
//! it is (`CompiledFilters::install`).

pub mod bpf;
pub mod docker;
mod x86_64;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use serde::{Deserialize, Serialize};

use bpf::{Action, BpfError, Check, Op, Profile, Rule};

/// Why a profile could not be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {action:?} is not supported")]
    UnsupportedAction { action: LinuxSeccompAction },
    #[error("seccomp rule for {syscall}: argument index {index} (seccomp sees 0 to 5)")]
    ArgIndex { syscall: String, index: usize },
    #[error("seccomp profile: {0}")]
    Program(#[from] BpfError),
    #[error("installing the seccomp filter ({len} instructions): {err}")]
    Install { len: usize, err: std::io::Error },
    #[error("seccomp is only implemented for x86_64")]
    Arch,
}

/// Compiled BPF filters, in installation order, in a form that crosses to the shim
/// (`(code, jt, jf, k)`; one program for profiles compiled here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledFilters(pub Vec<Vec<(u16, u8, u8, u32)>>);

impl CompiledFilters {
    /// Installs every filter on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN;
    /// sets neither (no_new_privs is the spec's to ask for).
    pub fn install(&self) -> Result<(), SeccompError> {
        for prog in &self.0 {
            crate::sys::seccomp_set_filter(prog).map_err(|err| SeccompError::Install {
                len: prog.len(),
                err,
            })?;
        }
        Ok(())
    }
}

/// Compiles profiles once; keyed by the profile's JSON.
#[derive(Default)]
pub struct FilterCache {
    compiled: Mutex<HashMap<String, Arc<CompiledFilters>>>,
}

impl std::fmt::Debug for FilterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterCache").finish_non_exhaustive()
    }
}

impl FilterCache {
    pub fn get(&self, profile: &LinuxSeccomp) -> Result<Arc<CompiledFilters>, SeccompError> {
        let key = serde_json::to_string(profile).unwrap_or_default();
        if let Some(hit) = self
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let compiled = Arc::new(compile(profile)?);
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, compiled.clone());
        Ok(compiled)
    }
}

fn syscall_number(name: &str) -> Option<u32> {
    x86_64::SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| x86_64::SYSCALLS[i].1)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<Action, SeccompError> {
    // The kernel keeps 16 bits of an errno or trace value.
    let low = |v: Option<u32>, default: u32| (v.unwrap_or(default) & 0xffff) as u16;
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActErrno => Action::Errno(low(errno, libc::EPERM as u32)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActTrace => Action::Trace(low(errno, 0)),
        other @ LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction { action: other });
        }
    })
}

/// An OCI profile in numbers. Syscall names unknown on x86_64 (`chown32`, `_llseek`,
/// ...) are skipped, as libseccomp does for names of other architectures; rules with
/// the default action are dropped (as runc does: they decide nothing).
pub fn profile(oci: &LinuxSeccomp) -> Result<Profile, SeccompError> {
    let default = action(oci.default_action(), oci.default_errno_ret())?;
    let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for sc in oci.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        if act == default {
            continue;
        }
        let mut checks = Vec::new();
        for a in sc.args().iter().flatten() {
            let index = u8::try_from(a.index())
                .ok()
                .filter(|i| *i <= 5)
                .ok_or_else(|| SeccompError::ArgIndex {
                    syscall: sc.names().join(","),
                    index: a.index(),
                })?;
            let (op, value) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (Op::Ne, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (Op::Lt, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (Op::Le, a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (Op::Eq, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (Op::Ge, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (Op::Gt, a.value()),
                // OCI: `value` is the mask, `valueTwo` what the masked argument equals.
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    (Op::MaskedEq(a.value()), a.value_two().unwrap_or(0))
                }
            };
            checks.push(Check { index, op, value });
        }
        for name in sc.names() {
            if let Some(nr) = syscall_number(name) {
                rules.entry(nr).or_default().push(Rule {
                    action: act,
                    checks: checks.clone(),
                });
            }
        }
    }
    Ok(Profile { default, rules })
}

/// Compiles an OCI profile into one program.
pub fn compile(oci: &LinuxSeccomp) -> Result<CompiledFilters, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::Arch);
    }
    Ok(CompiledFilters(vec![profile(oci)?.assemble()?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_table_is_sorted_and_finds_names() {
        assert!(x86_64::SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("unshare"), Some(272));
        assert_eq!(syscall_number("chown32"), None);
    }

    #[test]
    fn docker_profile_compiles_into_one_short_program_that_does_what_it_says() {
        use bpf::tests::run;
        let caps: Vec<String> = crate::spec::DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .collect();
        let oci = docker::default_profile(&caps);
        let compiled = compile(&oci).expect("compile");
        assert_eq!(compiled.0.len(), 1);
        let prog = &compiled.0[0];
        // seccompiler's linear list was 1,546 instructions.
        eprintln!("docker profile: {} instructions", prog.len());
        assert!(prog.len() < 200, "{} instructions", prog.len());
        let len = bpf::tests::assert_program_matches(&profile(&oci).expect("profile"));
        assert_eq!(len, prog.len());
        let nr = |n: &str| syscall_number(n).expect(n);
        let arch = bpf::AUDIT_ARCH_X86_64;
        let allow = Action::Allow.ret();
        let eperm = Action::Errno(libc::EPERM as u16).ret();
        assert_eq!(run(prog, arch, nr("read"), &[0; 6]), allow);
        assert_eq!(run(prog, arch, nr("unshare"), &[0; 6]), eperm);
        assert_eq!(run(prog, arch, nr("mount"), &[0; 6]), eperm);
        assert_eq!(
            run(prog, arch, nr("clone3"), &[0; 6]),
            Action::Errno(libc::ENOSYS as u16).ret()
        );
        let sigchld = [libc::SIGCHLD as u64, 0, 0, 0, 0, 0];
        assert_eq!(run(prog, arch, nr("clone"), &sigchld), allow);
        let newns = [
            libc::CLONE_NEWNS as u64 | libc::SIGCHLD as u64,
            0,
            0,
            0,
            0,
            0,
        ];
        assert_eq!(run(prog, arch, nr("clone"), &newns), eperm);
        let vsock = [40, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        assert_eq!(run(prog, arch, nr("socket"), &vsock), eperm);
        let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        assert_eq!(run(prog, arch, nr("socket"), &inet), allow);
        assert_eq!(run(prog, arch, bpf::X32_BIT | nr("read"), &[0; 6]), eperm);
    }

    #[test]
    fn sys_admin_profile_allows_namespaces_without_clone3_filter() {
        let caps = vec!["CAP_SYS_ADMIN".to_string()];
        let profile = docker::default_profile(&caps);
        let names: Vec<&String> = profile
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names())
            .collect();
        assert!(names.iter().any(|n| *n == "unshare"));
        assert_eq!(compile(&profile).expect("compile").0.len(), 1);
        bpf::tests::assert_program_matches(&super::profile(&profile).expect("profile"));
    }

    #[test]
    fn an_argument_beyond_the_sixth_is_refused_naming_the_syscall() {
        let mut oci = docker::default_profile(&[]);
        let mut rules = oci.syscalls().clone().unwrap_or_default();
        let mut bad = rules[0].clone();
        bad.set_names(vec!["openat".into()]);
        bad.set_args(Some(vec![
            oci_spec::runtime::LinuxSeccompArgBuilder::default()
                .index(6usize)
                .op(LinuxSeccompOperator::ScmpCmpEq)
                .value(1u64)
                .build()
                .expect("arg"),
        ]));
        rules.push(bad);
        oci.set_syscalls(Some(rules));
        let err = compile(&oci).expect_err("index 6");
        assert!(err.to_string().contains("openat"), "{err}");
        assert!(err.to_string().contains("index 6"), "{err}");
    }

    #[test]
    fn cache_compiles_once() {
        let cache = FilterCache::default();
        let profile = docker::default_profile(&[]);
        let a = cache.get(&profile).expect("a");
        let b = cache.get(&profile).expect("b");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
