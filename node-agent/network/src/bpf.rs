//! The one eBPF program skiff loads: at a VXLAN device's tc egress it drops the flow
//! hash a packet carries and has the kernel compute it again from the packet's own
//! headers, which gives both directions of a connection the same hash.
//!
//! Why: a packet sent by a container keeps its socket's random `sk_txhash` through
//! veth, bridge and VXLAN, and the receiving node's receive steering (`steering.rs`)
//! picks a CPU by it. Data and ACKs of one connection then land on unrelated CPUs, and
//! ACKs steered to the busy sender's CPU interrupt it with an IPI per batch (a VM exit
//! on virtual machines). Recomputed from the inner headers in `vxlan_xmit` (after tc
//! egress), the hash is symmetric, so both directions are handled on one CPU. Measured
//! by hand first (docs/network.md): overlay_throughput mean 0.71 → 0.85 of the plain
//! link in five paired runs.
//!
//! The program is six instructions, written out here rather than compiled: skiff has no
//! BPF toolchain and needs none for this. It is loaded once per process with the `bpf`
//! syscall; its file descriptor serves every namespace (tc takes it by fd). A kernel
//! without eBPF (or without `cls_bpf`) keeps the old behaviour: steering by the
//! sender's hash.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const HELPER_GET_HASH_RECALC: i32 = 34;
const HELPER_SET_HASH_INVALID: i32 = 41;

/// The program's name as the kernel shows it (`bpftool`, `tc filter show`).
pub const PROGRAM_NAME: &str = "skiff_hash";

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to the name (the kernel takes a shorter
/// attribute as long as what it leaves out would be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from((src << 4) | (dst & 0xf)) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// `r6 = r1; bpf_set_hash_invalid(r1); r1 = r6; bpf_get_hash_recalc(r1); return
/// TC_ACT_OK`.
fn program() -> [u64; 6] {
    const MOV64_REG: u8 = 0xbf;
    const MOV64_IMM: u8 = 0xb7;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    [
        insn(MOV64_REG, 6, 1, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SET_HASH_INVALID),
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_GET_HASH_RECALC),
        insn(MOV64_IMM, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// The loaded program, loaded on first use; the error says why it could not be (the
/// kernel's verifier log included), and is kept, so a kernel without eBPF is asked once.
pub fn hash_reset() -> Result<RawFd, &'static str> {
    static PROGRAM: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    match PROGRAM.get_or_init(load) {
        Ok(fd) => Ok(fd.as_raw_fd()),
        Err(err) => Err(err.as_str()),
    }
}

fn load() -> Result<OwnedFd, String> {
    let insns = program();
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..PROGRAM_NAME.len()].copy_from_slice(PROGRAM_NAME.as_bytes());
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size given; the
    // instruction, license and log buffers it points to outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let verifier = String::from_utf8_lossy(&log[..end]);
        return Err(format!(
            "loading the flow hash program (bpf BPF_PROG_LOAD): {err}{}",
            if verifier.trim().is_empty() {
                String::new()
            } else {
                format!("; verifier: {}", verifier.trim())
            }
        ));
    }
    let fd = RawFd::try_from(fd).map_err(|_| format!("bpf returned fd {fd}"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r6 = r1: opcode 0xbf, dst 6, src 1.
        assert_eq!(insn(0xbf, 6, 1, 0, 0), 0x16bf);
        // call 41.
        assert_eq!(insn(0x85, 0, 0, 0, 41), (41u64 << 32) | 0x85);
        assert_eq!(program().len(), 6);
    }
}
