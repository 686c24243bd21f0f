//! One compact classic-BPF program for a seccomp profile (x86_64): the syscall numbers
//! are cut into ranges that behave alike (most of an allow-list is a few long runs of
//! allowed numbers), a binary search over the ranges' bounds finds a number's range in
//! ~log2(ranges) jumps, and only the numbers with argument rules get code of their own.
//!
//! Why not a linear list (one compare per syscall, what seccompiler emits): the kernel
//! converts, JIT-compiles and, to fill its per-syscall action cache, *runs* the filter for
//! every syscall number at install time, in every container. For Docker's profile that
//! was 1,546 instructions and `seccomp()` 20 % of the shims' CPU in a 100-container deploy;
//! this program is 172 (and `seccomp()` 4 %).
//!
//! Semantics (as the kernel gives for several filters, and runc for one profile):
//! a call gets the most restrictive action among the rules that match it (all of a rule's
//! argument checks hold), else the default action. Equally restrictive rules: the first
//! in profile order. Calls of the x32 ABI (bit 30 of the number) get the default action,
//! or ENOSYS when the default allows: the rules name x86_64 numbers only.

use std::collections::BTreeMap;

/// `seccomp_data` offsets.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARGS: u32 = 16;
pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// Syscall numbers of the x32 ABI carry this bit.
pub(crate) const X32_BIT: u32 = 0x4000_0000;
/// The kernel's limit on a filter's length.
pub(crate) const MAX_INSNS: usize = 4096;

const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// What a rule (or the default) does to a call, in the kernel's order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    /// The filter's return value.
    pub fn ret(self) -> u32 {
        match self {
            Action::KillProcess => 0x8000_0000,
            Action::KillThread => 0,
            Action::Trap => 0x0003_0000,
            Action::Errno(e) => 0x0005_0000 | u32::from(e),
            Action::Trace(d) => 0x7ff0_0000 | u32::from(d),
            Action::Log => 0x7ffc_0000,
            Action::Allow => 0x7fff_0000,
        }
    }

    /// Higher wins when several rules match.
    fn precedence(self) -> u8 {
        match self {
            Action::KillProcess => 6,
            Action::KillThread => 5,
            Action::Trap => 4,
            Action::Errno(_) => 3,
            Action::Trace(_) => 2,
            Action::Log => 1,
            Action::Allow => 0,
        }
    }
}

/// A comparison of one 64-bit argument with a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == value`
    MaskedEq(u64),
}

/// One argument check of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Check {
    /// 0..=5
    pub index: u8,
    pub op: Op,
    pub value: u64,
}

impl Check {
    /// Whether `arg` passes (what the emitted code computes).
    pub fn holds(&self, arg: u64) -> bool {
        match self.op {
            Op::Ne => arg != self.value,
            Op::Lt => arg < self.value,
            Op::Le => arg <= self.value,
            Op::Eq => arg == self.value,
            Op::Ge => arg >= self.value,
            Op::Gt => arg > self.value,
            Op::MaskedEq(mask) => arg & mask == self.value,
        }
    }
}

/// A rule: the action, taken when every check holds (no checks: always).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub action: Action,
    pub checks: Vec<Check>,
}

/// A profile in numbers: the default action and each syscall's rules, in profile order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub default: Action,
    pub rules: BTreeMap<u32, Vec<Rule>>,
}

/// Why a profile has no program.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BpfError {
    #[error("argument index {index} of a rule for syscall {nr}: seccomp sees arguments 0 to 5")]
    ArgIndex { nr: u32, index: u8 },
    #[error("syscall number {nr} is beyond the x86_64 table")]
    Number { nr: u32 },
    #[error("the filter would be {len} instructions; the kernel takes {MAX_INSNS}")]
    TooLong { len: usize },
    #[error("a jump of {distance} instructions in the rules of one syscall (at most 255)")]
    TooFar { distance: usize },
}

impl Profile {
    /// What the profile says about a call: the reference the program is tested against.
    pub fn decide(&self, nr: u32, args: &[u64; 6]) -> Action {
        if nr & X32_BIT != 0 {
            return self.x32_action();
        }
        let mut best: Option<Action> = None;
        for rule in self.rules.get(&nr).into_iter().flatten() {
            let matches = rule
                .checks
                .iter()
                .all(|c| args.get(usize::from(c.index)).is_some_and(|&a| c.holds(a)));
            if matches && best.is_none_or(|b| rule.action.precedence() > b.precedence()) {
                best = Some(rule.action);
            }
        }
        best.unwrap_or(self.default)
    }

    fn x32_action(&self) -> Action {
        match self.default {
            Action::Allow => Action::Errno(libc::ENOSYS as u16),
            other => other,
        }
    }

    /// The program, as `(code, jt, jf, k)`.
    pub fn assemble(&self) -> Result<Vec<(u16, u8, u8, u32)>, BpfError> {
        for (&nr, rules) in &self.rules {
            if nr >= X32_BIT {
                return Err(BpfError::Number { nr });
            }
            if let Some(c) = rules.iter().flat_map(|r| &r.checks).find(|c| c.index > 5) {
                return Err(BpfError::ArgIndex { nr, index: c.index });
            }
        }
        let segments = self.segments();
        let mut asm = Asm::default();
        asm.push(Ins::Ld(ARCH));
        asm.push(Ins::Jump {
            code: JMP_JEQ_K,
            k: AUDIT_ARCH_X86_64,
            jt: Target::Skip(1),
            jf: Target::Next,
        });
        asm.push(Ins::Ret(Action::KillProcess.ret()));
        asm.push(Ins::Ld(NR));
        asm.tree(&segments);
        asm.resolve()
    }

    /// The number line cut into ranges of equal behaviour: `(first number, leaf)`,
    /// ascending from 0; the last range runs to `u32::MAX`.
    fn segments(&self) -> Vec<(u32, Leaf)> {
        let default = Leaf {
            rules: Vec::new(),
            otherwise: self.default,
        };
        let mut out: Vec<(u32, Leaf)> = Vec::new();
        // From `from` on, `leaf` (until the next call); equal neighbours merge.
        let mut set = |from: u32, leaf: Leaf| {
            match out.last_mut() {
                Some(last) if last.0 == from => last.1 = leaf,
                _ => out.push((from, leaf)),
            }
            let n = out.len();
            if n >= 2 && out[n - 2].1 == out[n - 1].1 {
                out.pop();
            }
        };
        set(0, default.clone());
        for (&nr, rules) in &self.rules {
            set(nr, Leaf::of(rules, self.default));
            set(nr + 1, default.clone());
        }
        set(
            X32_BIT,
            Leaf {
                rules: Vec::new(),
                otherwise: self.x32_action(),
            },
        );
        out
    }
}

/// What one range does: the conditional rules to try, most restrictive first, then the
/// action of the first unconditional rule (or the default).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leaf {
    rules: Vec<Rule>,
    otherwise: Action,
}

impl Leaf {
    fn of(rules: &[Rule], default: Action) -> Leaf {
        let mut ordered: Vec<&Rule> = rules.iter().collect();
        // Stable: equal precedence keeps profile order.
        ordered.sort_by_key(|r| std::cmp::Reverse(r.action.precedence()));
        let mut conditional = Vec::new();
        let mut otherwise = default;
        for rule in ordered {
            if rule.checks.is_empty() {
                // Rules after an unconditional one can only be less restrictive.
                otherwise = rule.action;
                break;
            }
            conditional.push(rule.clone());
        }
        // A conditional rule with the fallback's action decides nothing.
        conditional.retain(|r| r.action != otherwise);
        Leaf {
            rules: conditional,
            otherwise,
        }
    }
}

/// Instructions `Asm::tree` emits for `segments`.
fn tree_len(segments: &[(u32, Leaf)]) -> usize {
    match segments {
        [] => 0,
        [(_, leaf)] => leaf_len(leaf),
        _ => {
            let mid = segments.len() / 2;
            let left = tree_len(&segments[..mid]);
            let node = if left <= 255 { 1 } else { 2 };
            node + left + tree_len(&segments[mid..])
        }
    }
}

/// Instructions `Asm::leaf` emits.
fn leaf_len(leaf: &Leaf) -> usize {
    let check_len = |c: &Check| match c.op {
        Op::Eq | Op::Ne => 4,
        Op::Gt | Op::Ge | Op::Lt | Op::Le => 5,
        Op::MaskedEq(_) => 6,
    };
    1 + leaf
        .rules
        .iter()
        .map(|r| 1 + r.checks.iter().map(check_len).sum::<usize>())
        .sum::<usize>()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

#[derive(Clone, Copy, Debug)]
enum Target {
    Next,
    Skip(u8),
    To(Label),
}

#[derive(Clone, Copy, Debug)]
enum Ins {
    Ld(u32),
    And(u32),
    Ret(u32),
    Ja(Label),
    Jump {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Mark(Label),
}

#[derive(Default)]
struct Asm {
    code: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn push(&mut self, ins: Ins) {
        self.code.push(ins);
    }

    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    /// Binary search over the ranges' first numbers (the accumulator holds the number).
    /// A node is `jge bound, right, next` when its left half is short enough for a
    /// conditional jump (255), else `jge bound, next, +1; ja right`.
    fn tree(&mut self, segments: &[(u32, Leaf)]) {
        match segments {
            [] => {}
            [(_, leaf)] => self.leaf(leaf),
            _ => {
                let mid = segments.len() / 2;
                let right = self.label();
                if tree_len(&segments[..mid]) <= 255 {
                    self.push(Ins::Jump {
                        code: JMP_JGE_K,
                        k: segments[mid].0,
                        jt: Target::To(right),
                        jf: Target::Next,
                    });
                } else {
                    self.push(Ins::Jump {
                        code: JMP_JGE_K,
                        k: segments[mid].0,
                        jt: Target::Next,
                        jf: Target::Skip(1),
                    });
                    self.push(Ins::Ja(right));
                }
                self.tree(&segments[..mid]);
                self.push(Ins::Mark(right));
                self.tree(&segments[mid..]);
            }
        }
    }

    fn leaf(&mut self, leaf: &Leaf) {
        for rule in &leaf.rules {
            let next_rule = self.label();
            for check in &rule.checks {
                self.check(check, next_rule);
            }
            self.push(Ins::Ret(rule.action.ret()));
            self.push(Ins::Mark(next_rule));
        }
        self.push(Ins::Ret(leaf.otherwise.ret()));
    }

    /// Falls through when the check holds, jumps to `fail` when not. 64-bit values:
    /// high word (offset +4, little endian) first, then the low word.
    fn check(&mut self, c: &Check, fail: Label) {
        let lo_off = ARGS + 8 * u32::from(c.index);
        let hi_off = lo_off + 4;
        let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
        let fail = Target::To(fail);
        let jump = |code, k, jt, jf| Ins::Jump { code, k, jt, jf };
        let ok = self.label();
        let pass = Target::To(ok);
        let seq: Vec<Ins> = match c.op {
            Op::Eq => vec![
                Ins::Ld(hi_off),
                jump(JMP_JEQ_K, hi, Target::Next, fail),
                Ins::Ld(lo_off),
                jump(JMP_JEQ_K, lo, Target::Next, fail),
            ],
            Op::Ne => vec![
                Ins::Ld(hi_off),
                jump(JMP_JEQ_K, hi, Target::Next, pass),
                Ins::Ld(lo_off),
                jump(JMP_JEQ_K, lo, fail, Target::Next),
            ],
            Op::Gt | Op::Ge => vec![
                Ins::Ld(hi_off),
                jump(JMP_JGT_K, hi, pass, Target::Next),
                jump(JMP_JEQ_K, hi, Target::Next, fail),
                Ins::Ld(lo_off),
                jump(
                    if c.op == Op::Gt { JMP_JGT_K } else { JMP_JGE_K },
                    lo,
                    Target::Next,
                    fail,
                ),
            ],
            Op::Lt | Op::Le => vec![
                Ins::Ld(hi_off),
                jump(JMP_JGT_K, hi, fail, Target::Next),
                jump(JMP_JEQ_K, hi, Target::Next, pass),
                Ins::Ld(lo_off),
                // Lt fails on lo >= value, Le on lo > value.
                jump(
                    if c.op == Op::Lt { JMP_JGE_K } else { JMP_JGT_K },
                    lo,
                    fail,
                    Target::Next,
                ),
            ],
            Op::MaskedEq(mask) => vec![
                Ins::Ld(hi_off),
                Ins::And((mask >> 32) as u32),
                jump(JMP_JEQ_K, hi, Target::Next, fail),
                Ins::Ld(lo_off),
                Ins::And(mask as u32),
                jump(JMP_JEQ_K, lo, Target::Next, fail),
            ],
        };
        self.code.extend(seq);
        self.push(Ins::Mark(ok));
    }

    /// Places the labels and encodes.
    fn resolve(self) -> Result<Vec<(u16, u8, u8, u32)>, BpfError> {
        let mut at = vec![0usize; self.labels];
        let mut n = 0;
        for ins in &self.code {
            match ins {
                Ins::Mark(l) => at[l.0] = n,
                _ => n += 1,
            }
        }
        if n > MAX_INSNS {
            return Err(BpfError::TooLong { len: n });
        }
        let mut out = Vec::with_capacity(n);
        let offset = |target: Target, pc: usize| -> Result<u8, BpfError> {
            match target {
                Target::Next => Ok(0),
                Target::Skip(s) => Ok(s),
                Target::To(l) => {
                    let distance = at[l.0] - (pc + 1);
                    u8::try_from(distance).map_err(|_| BpfError::TooFar { distance })
                }
            }
        };
        for ins in self.code {
            let pc = out.len();
            out.push(match ins {
                Ins::Mark(_) => continue,
                Ins::Ld(off) => (LD_W_ABS, 0, 0, off),
                Ins::And(k) => (ALU_AND_K, 0, 0, k),
                Ins::Ret(k) => (RET_K, 0, 0, k),
                Ins::Ja(l) => (JMP_JA, 0, 0, (at[l.0] - (pc + 1)) as u32),
                Ins::Jump { code, k, jt, jf } => (code, offset(jt, pc)?, offset(jf, pc)?, k),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions above, over a `seccomp_data`.
    pub(crate) fn run(prog: &[(u16, u8, u8, u32)], arch: u32, nr: u32, args: &[u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                NR => nr,
                ARCH => arch,
                o if (ARGS..ARGS + 48).contains(&o) => {
                    let i = ((o - ARGS) / 8) as usize;
                    if (o - ARGS).is_multiple_of(8) {
                        args[i] as u32
                    } else {
                        (args[i] >> 32) as u32
                    }
                }
                o => panic!("load at {o}"),
            }
        };
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = prog[pc];
            pc += 1;
            let cond = |taken: bool| usize::from(if taken { jt } else { jf });
            match code {
                LD_W_ABS => a = word(k),
                ALU_AND_K => a &= k,
                RET_K => return k,
                JMP_JA => pc += k as usize,
                JMP_JEQ_K => pc += cond(a == k),
                JMP_JGT_K => pc += cond(a > k),
                JMP_JGE_K => pc += cond(a >= k),
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    /// Numbers worth trying around each value a profile compares with.
    pub(crate) fn interesting(profile: &Profile) -> Vec<u64> {
        let mut v = vec![0, 1, u64::MAX, 0xffff_ffff, 1 << 32, 0x8000_0000_0000_0000];
        for c in profile.rules.values().flatten().flat_map(|r| &r.checks) {
            for x in [
                c.value,
                c.value ^ (1 << 32),
                c.value ^ 1,
                c.value | (1 << 40),
            ] {
                v.extend([x, x.wrapping_add(1), x.wrapping_sub(1)]);
            }
            if let Op::MaskedEq(m) = c.op {
                v.extend([m, !m, c.value | !m, m & !c.value]);
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Every number 0..=600, the x32 range and the top, against `decide`, with each
    /// argument position taking each interesting value.
    pub(crate) fn assert_program_matches(profile: &Profile) -> usize {
        let prog = profile.assemble().expect("assemble");
        assert_eq!(
            tree_len(&profile.segments()) + 4,
            prog.len(),
            "tree_len is exact"
        );
        let values = interesting(profile);
        let mut numbers: Vec<u32> = (0..=600).collect();
        numbers.extend([X32_BIT, X32_BIT + 165, u32::MAX]);
        for nr in numbers {
            let has_checks = profile
                .rules
                .get(&nr)
                .is_some_and(|r| r.iter().any(|r| !r.checks.is_empty()));
            let sets: Vec<[u64; 6]> = if has_checks {
                (0..6)
                    .flat_map(|i| {
                        values.iter().map(move |&v| {
                            let mut a = [0u64; 6];
                            a[i] = v;
                            a
                        })
                    })
                    .chain(values.iter().map(|&v| [v; 6]))
                    .collect()
            } else {
                vec![[0; 6], [u64::MAX; 6]]
            };
            for args in sets {
                assert_eq!(
                    run(&prog, AUDIT_ARCH_X86_64, nr, &args),
                    profile.decide(nr, &args).ret(),
                    "syscall {nr} args {args:x?}"
                );
            }
        }
        assert_eq!(
            run(&prog, 0x4000_0003, 0, &[0; 6]),
            Action::KillProcess.ret(),
            "another architecture"
        );
        prog.len()
    }

    fn rule(action: Action, checks: &[(u8, Op, u64)]) -> Rule {
        Rule {
            action,
            checks: checks
                .iter()
                .map(|&(index, op, value)| Check { index, op, value })
                .collect(),
        }
    }

    #[test]
    fn every_operator_on_64_bit_values() {
        let big = 0x0000_0001_0000_0005;
        let mut rules = BTreeMap::new();
        let ops = [
            Op::Ne,
            Op::Lt,
            Op::Le,
            Op::Eq,
            Op::Ge,
            Op::Gt,
            Op::MaskedEq(0xff00_0000_0000_00ff),
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let value = if matches!(op, Op::MaskedEq(_)) {
                0x1200_0000_0000_0034
            } else {
                big
            };
            rules.insert(
                10 + i as u32,
                vec![rule(Action::Allow, &[(i as u8 % 6, op, value)])],
            );
        }
        // Two checks in one rule (both must hold), on different arguments.
        rules.insert(
            40,
            vec![rule(Action::Allow, &[(0, Op::Ge, 2), (5, Op::Lt, big)])],
        );
        let profile = Profile {
            default: Action::Errno(1),
            rules,
        };
        assert_program_matches(&profile);
    }

    #[test]
    fn the_most_restrictive_matching_rule_wins_and_runs_merge() {
        let mut rules = BTreeMap::new();
        for nr in 0..50 {
            rules.insert(nr, vec![rule(Action::Allow, &[])]);
        }
        // A conditional kill over an unconditional allow; an errno over a log.
        rules.insert(
            7,
            vec![
                rule(Action::Allow, &[]),
                rule(Action::KillThread, &[(1, Op::Eq, 9)]),
            ],
        );
        rules.insert(
            60,
            vec![
                rule(Action::Log, &[(0, Op::Gt, 3)]),
                rule(Action::Errno(13), &[(0, Op::Lt, 10)]),
                rule(Action::Trace(7), &[]),
            ],
        );
        rules.insert(0, vec![rule(Action::Trap, &[])]);
        let profile = Profile {
            default: Action::Allow,
            rules,
        };
        let len = assert_program_matches(&profile);
        // 0 trap, 1..=6 allow, 7 rules, 8..=49 allow, 50..=59 allow (default), 60 rules,
        // 61.. allow, x32: a handful of ranges.
        assert!(len < 40, "{len} instructions");
    }

    #[test]
    fn bad_rules_are_refused_with_the_syscall() {
        let mut rules = BTreeMap::new();
        rules.insert(3, vec![rule(Action::Allow, &[(6, Op::Eq, 1)])]);
        let profile = Profile {
            default: Action::Errno(1),
            rules,
        };
        assert_eq!(
            profile.assemble(),
            Err(BpfError::ArgIndex { nr: 3, index: 6 })
        );
    }
}
