//! Seccomp: Docker's default profile (`docker`), and a compiler from any OCI
//! `LinuxSeccomp` to BPF with seccompiler (pure Rust), cached in memory so a profile is
//! compiled once per runtime, not once per container.
//!
//! seccompiler gives one filter a single match action. An OCI profile is split into one
//! filter per distinct action: the allow-list filter falls back to the profile's default
//! action, every other filter (e.g. `clone3` → ENOSYS) falls back to allow. The kernel
//! runs all installed filters and keeps the most restrictive action; between equally
//! restrictive ones (two ERRNOs) the filter installed last wins, so the specific filters
//! are installed after the allow-list.

pub mod docker;
mod x86_64;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Why a profile could not be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {action:?} is not supported")]
    UnsupportedAction { action: LinuxSeccompAction },
    #[error("seccomp rule for {syscall}: {err}")]
    Rule {
        syscall: String,
        #[source]
        err: seccompiler::BackendError,
    },
    #[error("seccomp filter with action {action}: {err}")]
    Filter {
        action: String,
        #[source]
        err: seccompiler::BackendError,
    },
    #[error("installing seccomp filter: {err}")]
    Install {
        #[source]
        err: seccompiler::Error,
    },
    #[error("seccomp is only implemented for x86_64")]
    Arch,
}

/// Compiled BPF filters, in installation order, in a form that crosses to the shim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledFilters(pub Vec<Vec<(u16, u8, u8, u32)>>);

impl CompiledFilters {
    fn from_programs(progs: Vec<BpfProgram>) -> Self {
        CompiledFilters(
            progs
                .into_iter()
                .map(|p| p.into_iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
                .collect(),
        )
    }

    /// Installs every filter on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN.
    pub fn install(&self) -> Result<(), SeccompError> {
        for prog in &self.0 {
            let bpf: BpfProgram = prog
                .iter()
                .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                .collect();
            seccompiler::apply_filter(&bpf).map_err(|err| SeccompError::Install { err })?;
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

fn syscall_number(name: &str) -> Option<i64> {
    x86_64::SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| x86_64::SYSCALLS[i].1)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        other @ LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction { action: other });
        }
    })
}

/// Rules of one action: syscall → conditional rules, None when unconditional.
type Group = (SeccompAction, BTreeMap<i64, Option<Vec<SeccompRule>>>);

fn action_key(a: &SeccompAction) -> String {
    format!("{a:?}")
}

/// Compiles an OCI profile. Syscall names unknown on x86_64 (`chown32`, `_llseek`, ...)
/// are skipped, as libseccomp does for names of other architectures.
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledFilters, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::Arch);
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // action → syscall → rules (empty = unconditional)
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for sc in profile.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        if act == default {
            continue;
        }
        let conditions = sc
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
                    LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
                    LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
                    LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
                    LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
                    LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
                };
                let value = match a.op() {
                    LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                    _ => a.value(),
                };
                (a.index() as u8, op, value)
            })
            .collect::<Vec<_>>();
        let entry = groups
            .entry(action_key(&act))
            .or_insert_with(|| (act.clone(), BTreeMap::new()));
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            let slot = entry.1.entry(nr).or_insert_with(|| Some(Vec::new()));
            if conditions.is_empty() {
                // An unconditional match makes any conditional rule moot.
                *slot = None;
                continue;
            }
            let Some(rules) = slot else { continue };
            let conds = conditions
                .iter()
                .map(|(i, op, v)| {
                    SeccompCondition::new(*i, SeccompCmpArgLen::Qword, op.clone(), *v)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| SeccompError::Rule {
                    syscall: name.clone(),
                    err,
                })?;
            rules.push(SeccompRule::new(conds).map_err(|err| SeccompError::Rule {
                syscall: name.clone(),
                err,
            })?);
        }
    }
    let arch = TargetArch::x86_64;
    let mut programs = Vec::new();
    // The allow-list first (falls back to the default), then the specific actions.
    let allow_key = action_key(&SeccompAction::Allow);
    let mut ordered: Vec<(String, Group)> = Vec::new();
    if let Some(allow) = groups.remove(&allow_key) {
        ordered.push((allow_key, allow));
    } else if default != SeccompAction::Allow {
        ordered.push((allow_key, (SeccompAction::Allow, BTreeMap::new())));
    }
    ordered.extend(groups);
    for (key, (act, rules)) in ordered {
        let mismatch = if act == SeccompAction::Allow {
            default.clone()
        } else {
            SeccompAction::Allow
        };
        let rules: BTreeMap<i64, Vec<SeccompRule>> = rules
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect();
        let filter =
            SeccompFilter::new(rules, mismatch, act, arch).map_err(|err| SeccompError::Filter {
                action: key.clone(),
                err,
            })?;
        let prog: BpfProgram = filter
            .try_into()
            .map_err(|err| SeccompError::Filter { action: key, err })?;
        programs.push(prog);
    }
    Ok(CompiledFilters::from_programs(programs))
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
    fn docker_profile_compiles_into_allow_list_and_clone3_enosys() {
        let caps: Vec<String> = crate::spec::DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .collect();
        let profile = docker::default_profile(&caps);
        let compiled = compile(&profile).expect("compile");
        assert_eq!(compiled.0.len(), 2, "allow-list + errno(ENOSYS) for clone3");
        assert!(compiled.0.iter().all(|p| p.len() < 4096), "BPF_MAXINSNS");
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
