//! Ports for daemons started by tests and benchmarks on loopback.
//!
//! A port from `bind(:0)` lies in the kernel's ephemeral range, where any outgoing
//! connection of the machine may take it as its source port between the test reading
//! it and the daemon binding it (seen here: a master "not ready over mTLS", the DNS
//! failing to bind TCP with AddrInUse). These come from below that range instead,
//! spread by process id and handed out in turn within a process, and are free for both
//! TCP and UDP when returned.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out.
const FIRST_PORT: u32 = 10_000;

/// A loopback port nobody uses right now (TCP or UDP), below the ephemeral range.
///
/// # Panics
/// When no port between 10000 and the ephemeral range is free: a test set-up failure.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(FIRST_PORT).max(1);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span.min(5_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(FIRST_PORT + (start + n * 13) % span) else {
            continue;
        };
        let addr = (Ipv4Addr::LOCALHOST, port);
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST_PORT} and {ephemeral_low}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b, "handed out in turn");
        for p in [a, b] {
            assert!(u32::from(p) >= FIRST_PORT);
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("tcp");
            UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).expect("udp");
        }
    }
}
