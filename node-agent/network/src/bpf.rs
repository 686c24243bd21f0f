//! The eBPF programs skiff loads, and the one kind of map they read. Two programs, both
//! tc direct-action classifiers written out here instruction by instruction (skiff has
//! no BPF toolchain and needs none for programs this size), loaded with the `bpf`
//! syscall; tc takes them by file descriptor, so one load serves every namespace.
//!
//! - **Flow hash** ([`hash_reset`], on each VXLAN device's egress): drops the flow hash
//!   a packet carries and has the kernel compute it again from the packet's own
//!   headers, which gives both directions of a connection the same hash. A packet sent
//!   by a container keeps its socket's random `sk_txhash` through veth, bridge and
//!   VXLAN, and the receiving node's receive steering (`steering.rs`) picks a CPU by it:
//!   data and ACKs of one connection then land on unrelated CPUs, and ACKs steered to
//!   the busy sender's CPU interrupt it with an IPI per batch (a VM exit on virtual
//!   machines). Recomputed from the inner headers in `vxlan_xmit` (after tc egress),
//!   the hash is symmetric. Measured: overlay_throughput mean 0.71 → 0.85 of the plain
//!   link in five paired runs (docs/network.md).
//! - **Send shortcut** ([`send_program`], on each task veth's host end, ingress): an
//!   IPv4 packet for an address in the program's [`AddrMap`] (the network's tasks on
//!   other nodes) leaves straight through the device the map names (the network's VXLAN
//!   device) instead of crossing the bridge, which on hosts with `br_netfilter` (Docker's,
//!   most Kubernetes nodes) sends every frame through the node's whole IP netfilter path.
//!   See `sendpath.rs`.
//!
//! A kernel without eBPF (or without `cls_bpf`) keeps the old behaviour: the callers log
//! a refusal and carry on.

#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_HASH: u32 = 1;
/// Entries are allocated as they are added, not all at creation.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_REDIRECT: i32 = 23;
const HELPER_GET_HASH_RECALC: i32 = 34;
const HELPER_SET_HASH_INVALID: i32 = 41;
/// `__sk_buff` offsets of `data` and `data_end` (direct packet access).
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
const TC_ACT_OK: i32 = 0;
/// "No verdict": tc goes on to the next filter, and after the last lets the packet pass.
const TC_ACT_UNSPEC: i32 = -1;

/// The flow hash program's name as the kernel shows it (`bpftool`, `tc filter show`).
pub const PROGRAM_NAME: &str = "skiff_hash";
/// The send shortcut program's name.
pub const SEND_PROGRAM_NAME: &str = "skiff_send";

/// What the `bpf` syscall refused.
#[derive(Debug, thiserror::Error)]
#[error("bpf {op} ({what}): {err}{}", verifier_log(.log))]
pub struct BpfError {
    op: &'static str,
    what: String,
    err: std::io::Error,
    /// The verifier's log, for a program it refused.
    log: String,
}

fn verifier_log(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; verifier: {}", log.trim())
    }
}

/// Makes the syscall; a negative result is the errno's error.
///
/// # Safety
/// `attr` must be the attribute `cmd` expects, and every pointer in it valid for the
/// call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; its size is passed with it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: libc::c_long) -> std::io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::other(format!("fd {fd}")))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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

/// `union bpf_attr` for `BPF_MAP_CREATE`, up to the name.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for the `BPF_MAP_*_ELEM` commands.
#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A name for the kernel: at most 15 bytes and a NUL.
fn kernel_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from((src << 4) | (dst & 0xf)) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const STX_W: u8 = 0x63;
const LD_IMM64: u8 = 0x18;
const JGT_REG: u8 = 0x2d;
const JEQ_IMM: u8 = 0x15;
const JNE32_IMM: u8 = 0x56;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// `r6 = r1; bpf_set_hash_invalid(r1); r1 = r6; bpf_get_hash_recalc(r1); return
/// TC_ACT_OK`.
fn hash_program() -> Vec<u64> {
    vec![
        insn(MOV64_REG, 6, 1, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SET_HASH_INVALID),
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_GET_HASH_RECALC),
        insn(MOV64_IMM, 0, 0, 0, TC_ACT_OK),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// For an Ethernet frame carrying IPv4 whose destination address is a key of the map
/// `map_fd`: `return bpf_redirect(map[dst], 0)` (out of that device); anything else:
/// `TC_ACT_UNSPEC`.
fn send_instructions(map_fd: RawFd) -> Vec<u64> {
    const PASS: i16 = 19;
    // A jump's offset counts from the instruction after it.
    let to_pass = |at: i16| PASS - at - 1;
    vec![
        /* 0 */ insn(LDX_W, 2, 1, SKB_DATA, 0),
        /* 1 */ insn(LDX_W, 3, 1, SKB_DATA_END, 0),
        /* 2 */ insn(MOV64_REG, 4, 2, 0, 0),
        /* 3 */ insn(ADD64_IMM, 4, 0, 0, 34), // Ethernet (14) + IPv4 header (20)
        /* 4 */ insn(JGT_REG, 4, 3, to_pass(4), 0),
        /* 5 */ insn(LDX_H, 4, 2, 12, 0), // EtherType
        /* 6 */
        insn(JNE32_IMM, 4, 0, to_pass(6), i32::from(0x0800u16.to_be())),
        /* 7 */ insn(LDX_W, 4, 2, 14 + 16, 0), // IPv4 destination, network order
        /* 8 */ insn(STX_W, 10, 4, -4, 0),
        /* 9 */ insn(LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        /* 10 */ insn(0, 0, 0, 0, 0),
        /* 11 */ insn(MOV64_REG, 2, 10, 0, 0),
        /* 12 */ insn(ADD64_IMM, 2, 0, 0, -4),
        /* 13 */ insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),
        /* 14 */ insn(JEQ_IMM, 0, 0, to_pass(14), 0),
        /* 15 */ insn(LDX_W, 1, 0, 0, 0), // the device index
        /* 16 */ insn(MOV64_IMM, 2, 0, 0, 0),
        /* 17 */ insn(CALL, 0, 0, 0, HELPER_REDIRECT),
        /* 18 */ insn(EXIT, 0, 0, 0, 0),
        /* 19 PASS */ insn(MOV64_IMM, 0, 0, 0, TC_ACT_UNSPEC),
        /* 20 */ insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Loads a `SCHED_CLS` program; the error carries the verifier's log.
fn load(insns: &[u64], name: &str) -> Result<OwnedFd, BpfError> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: kernel_name(name),
        ..Default::default()
    };
    // SAFETY: a BPF_PROG_LOAD attribute; the instruction, license and log buffers it
    // points to outlive the call.
    let loaded = unsafe { bpf(BPF_PROG_LOAD, &attr) }.and_then(owned);
    loaded.map_err(|err| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        BpfError {
            op: "BPF_PROG_LOAD",
            what: name.to_owned(),
            err,
            log: String::from_utf8_lossy(&log[..end]).into_owned(),
        }
    })
}

/// The flow hash program, loaded on first use; the error says why it could not be (the
/// verifier's log included), and is kept, so a kernel without eBPF is asked once.
pub fn hash_reset() -> Result<BorrowedFd<'static>, &'static str> {
    static PROGRAM: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    match PROGRAM.get_or_init(|| load(&hash_program(), PROGRAM_NAME).map_err(|e| e.to_string())) {
        Ok(fd) => Ok(fd.as_fd()),
        Err(err) => Err(err.as_str()),
    }
}

/// Loads a send shortcut program that reads `map`. The program holds its own
/// reference to the map: each lives as long as something (an fd, a tc filter) holds it.
pub fn send_program(map: &AddrMap) -> Result<OwnedFd, BpfError> {
    load(&send_instructions(map.fd.as_raw_fd()), SEND_PROGRAM_NAME)
}

/// A kernel hash map from IPv4 address to device index, read by [`send_program`].
#[derive(Debug)]
pub struct AddrMap {
    fd: OwnedFd,
    name: String,
}

impl AddrMap {
    /// A map for at most `max_entries` addresses (allocated as they are added).
    pub fn new(name: &str, max_entries: u32) -> Result<Self, BpfError> {
        let attr = MapCreate {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: 4,
            max_entries: max_entries.max(1),
            map_flags: BPF_F_NO_PREALLOC,
            map_name: kernel_name(name),
            ..Default::default()
        };
        // SAFETY: a BPF_MAP_CREATE attribute without pointers.
        let fd = unsafe { bpf(BPF_MAP_CREATE, &attr) }
            .and_then(owned)
            .map_err(|err| BpfError {
                op: "BPF_MAP_CREATE",
                what: format!("{name}, {max_entries} entries"),
                err,
                log: String::new(),
            })?;
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    fn elem(&self, key: &[u8; 4], value: Option<&mut u32>, flags: u64) -> MapElem {
        MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.map_or(0, |v| v as *mut u32 as u64),
            flags,
            ..Default::default()
        }
    }

    fn error(&self, op: &'static str, addr: Ipv4Addr, err: std::io::Error) -> BpfError {
        BpfError {
            op,
            what: format!("{addr} in map {}", self.name),
            err,
            log: String::new(),
        }
    }

    /// Adds or replaces `addr` → `ifindex`.
    pub fn set(&self, addr: Ipv4Addr, ifindex: u32) -> Result<(), BpfError> {
        let key = addr.octets();
        let mut value = ifindex;
        let attr = self.elem(&key, Some(&mut value), 0);
        // SAFETY: key and value outlive the call and have the map's sizes.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &attr) }
            .map(drop)
            .map_err(|e| self.error("BPF_MAP_UPDATE_ELEM", addr, e))
    }

    /// Removes `addr` (missing is fine).
    pub fn remove(&self, addr: Ipv4Addr) -> Result<(), BpfError> {
        let key = addr.octets();
        let attr = self.elem(&key, None, 0);
        // SAFETY: the key outlives the call and has the map's key size.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &attr) } {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(self.error("BPF_MAP_DELETE_ELEM", addr, e)),
        }
    }

    /// The device index `addr` maps to, if any.
    pub fn get(&self, addr: Ipv4Addr) -> Result<Option<u32>, BpfError> {
        let key = addr.octets();
        let mut value = 0u32;
        let attr = self.elem(&key, Some(&mut value), 0);
        // SAFETY: key and value outlive the call and have the map's sizes.
        match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &attr) } {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(self.error("BPF_MAP_LOOKUP_ELEM", addr, e)),
        }
    }
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
        // *(u32 *)(r10 - 4) = r4: offset -4 as 16 bits.
        assert_eq!(insn(STX_W, 10, 4, -4, 0), 0xfffc_4a63);
        assert_eq!(hash_program().len(), 6);
    }

    #[test]
    fn send_program_jumps_land_on_the_pass_exit() {
        let insns = send_instructions(7);
        for (at, i) in insns.iter().enumerate() {
            let code = (*i & 0xff) as u8;
            if matches!(code, JGT_REG | JEQ_IMM | JNE32_IMM) {
                let off = ((*i >> 16) & 0xffff) as u16 as i16;
                let target = at as i64 + 1 + i64::from(off);
                assert_eq!(target, 19, "jump at {at}");
            }
        }
        assert_eq!(insns[19] >> 32, u64::from(TC_ACT_UNSPEC as u32));
        // The map fd sits in the first half of the wide load; the second is zero.
        assert_eq!(insns[9] >> 32, 7);
        assert_eq!(insns[10], 0);
    }

    /// Root (bpf), like the crate's other kernel tests.
    #[test]
    fn the_kernel_takes_both_programs_and_the_map_keeps_addresses() {
        assert!(hash_reset().is_ok(), "{:?}", hash_reset());
        let map = AddrMap::new("skiff_test", 16).expect("map");
        let a: Ipv4Addr = "10.213.1.3".parse().expect("addr");
        assert_eq!(map.get(a).expect("get"), None);
        map.set(a, 42).expect("set");
        map.set(a, 43).expect("replace");
        assert_eq!(map.get(a).expect("get"), Some(43));
        let prog = send_program(&map).expect("verifier takes the send program");
        drop(map);
        assert!(prog.as_raw_fd() >= 0, "the program keeps its map");
    }

    /// Root (bpf).
    #[test]
    fn a_full_map_names_the_address_and_removing_is_idempotent() {
        let map = AddrMap::new("skiff_test", 1).expect("map");
        let a: Ipv4Addr = "10.213.1.9".parse().expect("addr");
        map.set(a, 1).expect("set");
        let err = map
            .set("10.213.1.10".parse().expect("addr"), 2)
            .expect_err("full");
        assert!(
            err.to_string().contains("10.213.1.10 in map skiff_test"),
            "{err}"
        );
        map.remove(a).expect("remove");
        map.remove(a).expect("remove again");
        assert_eq!(map.get(a).expect("get"), None);
    }
}
