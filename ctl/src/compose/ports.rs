//! The short port syntax, `[[HOST_IP:]PUBLISHED:]TARGET[/PROTOCOL]` with ranges
//! (`9090-9091:8080-8081`) and bracketed IPv6 (`[::1]:80:80`), turned into long-form
//! entries (one per port of a range). Whether a host IP or a missing published port is
//! acceptable is decided later, for both forms alike.

/// One port of a short-syntax entry, in long form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongPort {
    pub host_ip: Option<String>,
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: String,
}

/// Largest range a single short entry may expand to.
const MAX_RANGE: u32 = 1024;

/// Parses one short-syntax entry.
pub fn parse_short(spec: &str) -> Result<Vec<LongPort>, String> {
    let s = spec.trim();
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p.to_ascii_lowercase()),
        None => (s, "tcp".to_owned()),
    };
    let (host_ip, rest) = if let Some(after) = addr.strip_prefix('[') {
        let (ip, rest) = after
            .split_once(']')
            .ok_or_else(|| format!("{spec:?}: an IPv6 address needs a closing ]"))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("{spec:?}: expected `:` after [{ip}]"))?;
        (Some(ip.to_owned()), rest)
    } else {
        let parts: Vec<&str> = addr.split(':').collect();
        match parts.len() {
            1 | 2 => (None, addr),
            3 => (Some(parts[0].to_owned()), &addr[parts[0].len() + 1..]),
            _ => {
                return Err(format!(
                    "{spec:?} is not a port (forms: 80, 8080:80, 127.0.0.1:8080:80, 8080:80/udp)"
                ));
            }
        }
    };
    let (published, target) = match rest.split_once(':') {
        Some((p, t)) => (Some(p), t),
        None => (None, rest),
    };
    let targets = range(target, spec)?;
    let published = match published {
        None | Some("") => None,
        Some(p) => Some(range(p, spec)?),
    };
    let host_ip = host_ip.filter(|ip| !ip.is_empty());
    match published {
        None => Ok(targets
            .map(|t| LongPort {
                host_ip: host_ip.clone(),
                published: None,
                target: t,
                protocol: protocol.clone(),
            })
            .collect()),
        Some(published) => {
            if published.len() != targets.len() {
                return Err(if targets.len() == 1 {
                    format!(
                        "{spec:?}: publishing one port chosen from a range is not supported; publish one port or equal ranges"
                    )
                } else {
                    format!("{spec:?}: the published and target ranges differ in length")
                });
            }
            Ok(published
                .zip(targets)
                .map(|(p, t)| LongPort {
                    host_ip: host_ip.clone(),
                    published: Some(p),
                    target: t,
                    protocol: protocol.clone(),
                })
                .collect())
        }
    }
}

/// `8080` or `8080-8090`, inclusive.
fn range(s: &str, spec: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{spec:?}: {p:?} is not a port number (1-65535)")),
        }
    };
    let r = match s.split_once('-') {
        Some((a, b)) => port(a)?..=port(b)?,
        None => {
            let p = port(s)?;
            p..=p
        }
    };
    if r.is_empty() {
        return Err(format!("{spec:?}: the range {s} ends before it starts"));
    }
    if u32::from(*r.end()) - u32::from(*r.start()) >= MAX_RANGE {
        return Err(format!("{spec:?}: ranges are limited to {MAX_RANGE} ports"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(ip: Option<&str>, published: Option<u16>, target: u16, proto: &str) -> LongPort {
        LongPort {
            host_ip: ip.map(str::to_owned),
            published,
            target,
            protocol: proto.to_owned(),
        }
    }

    #[test]
    fn the_spec_examples() {
        assert_eq!(parse_short("3000"), Ok(vec![one(None, None, 3000, "tcp")]));
        assert_eq!(parse_short("3000-3002").map(|v| v.len()), Ok(3));
        assert_eq!(
            parse_short("8000:8000"),
            Ok(vec![one(None, Some(8000), 8000, "tcp")])
        );
        assert_eq!(
            parse_short("9090-9091:8080-8081"),
            Ok(vec![
                one(None, Some(9090), 8080, "tcp"),
                one(None, Some(9091), 8081, "tcp")
            ])
        );
        assert_eq!(
            parse_short("49100:22"),
            Ok(vec![one(None, Some(49100), 22, "tcp")])
        );
        assert_eq!(
            parse_short("127.0.0.1:8001:8001"),
            Ok(vec![one(Some("127.0.0.1"), Some(8001), 8001, "tcp")])
        );
        assert_eq!(
            parse_short("6060:6060/udp"),
            Ok(vec![one(None, Some(6060), 6060, "udp")])
        );
        assert_eq!(
            parse_short("[::1]:6001:6001"),
            Ok(vec![one(Some("::1"), Some(6001), 6001, "tcp")])
        );
        assert_eq!(
            parse_short("127.0.0.1::5000"),
            Ok(vec![one(Some("127.0.0.1"), None, 5000, "tcp")])
        );
    }

    #[test]
    fn bad_ports() {
        for bad in [
            "",
            "http",
            "0",
            "70000",
            "80:",
            "1:2:3:4",
            "8000-8010:80",
            "90-80",
            "1-2000",
            "[::1:80:80",
            "[::1]80",
        ] {
            assert!(parse_short(bad).is_err(), "{bad:?} should fail");
        }
    }
}
