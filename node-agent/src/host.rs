//! Facts about this machine that the agent reports when it registers: hostname, CPUs,
//! memory, platform, and the underlay address (the source address of the route to the
//! first master, found by connecting a UDP socket: no packet is sent).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use skiff_proto::v1 as pb;

/// A fact that could not be found.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("resolving master address {addr}: {err}")]
    Resolve { addr: String, err: std::io::Error },
    #[error("master address {addr} resolves to nothing")]
    NoAddress { addr: String },
    #[error("finding the route to master {addr}: {err}")]
    Route {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("no master address to find this node's underlay address from; pass --advertise-addr")]
    NoMasters,
}

/// The source address this machine uses to reach `master` (`host:port`).
pub async fn route_source(master: &str) -> Result<IpAddr, HostError> {
    let target = tokio::net::lookup_host(master)
        .await
        .map_err(|err| HostError::Resolve {
            addr: master.to_owned(),
            err,
        })?
        .next()
        .ok_or_else(|| HostError::NoAddress {
            addr: master.to_owned(),
        })?;
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let route = |err| HostError::Route { addr: target, err };
    let sock = tokio::net::UdpSocket::bind(bind).await.map_err(route)?;
    sock.connect(target).await.map_err(route)?;
    Ok(sock.local_addr().map_err(route)?.ip())
}

/// The advertise address: the configured one, else the route to the first master.
pub async fn underlay_ip(
    configured: Option<IpAddr>,
    masters: &[String],
) -> Result<IpAddr, HostError> {
    if let Some(ip) = configured {
        return Ok(ip);
    }
    let first = masters.first().ok_or(HostError::NoMasters)?;
    route_source(first).await
}

/// This machine's hostname (empty if the kernel says nothing useful).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// GOARCH name of this machine's architecture ("amd64", "arm64"), as images use.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

/// CPUs this process may run on, in nano-CPUs (1e9 = one CPU).
pub fn nano_cpus() -> i64 {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    i64::try_from(n).unwrap_or(1).saturating_mul(1_000_000_000)
}

/// `MemTotal` of `/proc/meminfo` in bytes, 0 if unreadable.
pub fn memory_bytes(meminfo: &Path) -> i64 {
    std::fs::read_to_string(meminfo)
        .ok()
        .and_then(|text| parse_mem_total(&text))
        .unwrap_or(0)
}

/// Pure: the `MemTotal:  24576000 kB` line in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: i64 = parts.next()?.parse().ok()?;
    let unit = parts.next().unwrap_or("B");
    let factor = match unit {
        "kB" | "KB" | "kb" => 1024,
        "mB" | "MB" => 1024 * 1024,
        _ => 1,
    };
    value.checked_mul(factor)
}

/// What the agent says about this node at registration.
pub fn describe(
    addr: IpAddr,
    api_addr: &str,
    labels: &BTreeMap<String, String>,
    cgroup_driver: &str,
) -> pb::NodeDescription {
    pb::NodeDescription {
        hostname: hostname(),
        platform: Some(pb::Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture().to_owned(),
            variant: String::new(),
        }),
        resources: Some(pb::Resources {
            nano_cpus: nano_cpus(),
            memory_bytes: memory_bytes(Path::new("/proc/meminfo")),
            pids: 0,
        }),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        addr: addr.to_string(),
        cgroup_driver: cgroup_driver.to_owned(),
        api_addr: api_addr.to_owned(),
        labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_576_000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn this_machine_has_cpus_memory_and_a_go_arch() {
        assert!(nano_cpus() >= 1_000_000_000);
        assert!(memory_bytes(Path::new("/proc/meminfo")) > 0);
        assert!(!architecture().is_empty());
        let d = describe(
            "10.0.0.5".parse().expect("ip"),
            "10.0.0.5:7701",
            &BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            "v1",
        );
        assert_eq!(d.addr, "10.0.0.5");
        assert_eq!(d.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(d.platform.expect("platform").os, "linux");
    }

    #[tokio::test]
    async fn the_route_to_a_loopback_master_starts_at_loopback() {
        let ip = route_source("127.0.0.1:7700").await.expect("route");
        assert_eq!(ip, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            underlay_ip(Some("10.1.2.3".parse().expect("ip")), &[])
                .await
                .expect("configured"),
            IpAddr::from([10, 1, 2, 3])
        );
        assert!(matches!(
            underlay_ip(None, &[]).await,
            Err(HostError::NoMasters)
        ));
    }
}
