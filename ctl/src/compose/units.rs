//! Compose's quantities: durations in Go's syntax (`1m30s`, `300ms`, `1.5h`), byte sizes
//! as go-units reads them (`512m`, `1g`, `1.5GiB`: binary multiples whatever the
//! spelling), CPU counts (`0.5`). Pure parsing and Go-style printing.

use std::time::Duration;

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers with
/// units ns, us (µs), ms, s, m, h; `0` alone is allowed. Negative durations are
/// refused. Precision below a millisecond is dropped (skiff stores milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("an empty duration".to_owned());
    }
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad_duration(s));
        }
        let value: f64 = num.parse().map_err(|_| bad_duration(s))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad_duration(s)),
        };
        rest = &rest[unit_len..];
        total_ns += value * unit_ns;
    }
    // Ten years is far beyond any timeout; it also keeps the float conversion exact.
    if !total_ns.is_finite() || total_ns > 10.0 * 365.0 * 86_400e9 {
        return Err(format!("{s:?} is too long"));
    }
    let ms = (total_ns / 1e6).floor() as u64;
    Ok(Duration::from_millis(ms))
}

fn bad_duration(s: &str) -> String {
    format!("{s:?} is not a duration (examples: \"10s\", \"1m30s\", \"500ms\")")
}

/// Prints a duration as Go does (`1h2m3.5s`, `300ms`, `0s`), at millisecond precision.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = (ms / 60_000) % 60;
    let secs = (ms / 1000) % 60;
    let frac = ms % 1000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{secs}s"));
    } else {
        let f = format!("{frac:03}");
        out.push_str(&format!("{secs}.{}s", f.trim_end_matches('0')));
    }
    out
}

/// Parses a byte size: a plain number of bytes, or a number with a unit letter
/// (b, k, m, g, t, p; any case; optionally followed by `i` and/or `b`). Every unit is a
/// power of 1024, as go-units `RAMInBytes` reads them.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_len);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad_bytes(s));
    }
    let value: f64 = num.parse().map_err(|_| bad_bytes(s))?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let (letter, suffix) = match unit.chars().next() {
        Some(c) if "kmgtp".contains(c) => (Some(c), &unit[1..]),
        _ => (None, unit.as_str()),
    };
    if !matches!(suffix, "" | "b" | "i" | "ib") || (letter.is_none() && suffix.starts_with('i')) {
        return Err(bad_bytes(s));
    }
    let mult: f64 = match letter {
        None => 1.0,
        Some('k') => 1024.0,
        Some('m') => 1024.0 * 1024.0,
        Some('g') => 1024.0 * 1024.0 * 1024.0,
        Some('t') => 1024f64.powi(4),
        _ => 1024f64.powi(5),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes >= 9.0e18 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes.floor() as u64)
}

fn bad_bytes(s: &str) -> String {
    format!("{s:?} is not a size (examples: 512m, 1g, 1.5GiB, 65536)")
}

/// Parses a CPU count (`0.5`, `2`) into nano-CPUs (1e9 = one CPU).
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of CPUs (examples: 0.5, 2)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{s:?} is not a number of CPUs (examples: 0.5, 2)"));
    }
    if value > 1e6 {
        return Err(format!("{s:?} CPUs is more than any node has"));
    }
    Ok((value * 1e9).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u128 {
        parse_duration(s).expect("parses").as_millis()
    }

    #[test]
    fn go_durations() {
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("10s"), 10_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("300ms"), 300);
        assert_eq!(ms("2h"), 7_200_000);
        assert_eq!(ms("1h1m1s1ms"), 3_661_001);
        assert_eq!(ms("1500us"), 1);
        assert_eq!(ms("0"), 0);
        assert_eq!(ms("0s"), 0);
        assert_eq!(ms(".5s"), 500);
        for bad in [
            "",
            "10",
            "1x",
            "s",
            "1.2.3s",
            "-1s",
            "1m30",
            "1 s",
            "99999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn durations_print_as_go_does_and_read_back() {
        for (d, s) in [
            (0, "0s"),
            (300, "300ms"),
            (1_500, "1.5s"),
            (90_000, "1m30s"),
            (3_600_000, "1h0m0s"),
            (3_661_250, "1h1m1.25s"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(d)), s);
            assert_eq!(ms(s), u128::from(d));
        }
    }

    #[test]
    fn byte_sizes_are_binary() {
        let p = |s: &str| parse_bytes(s).expect(s);
        assert_eq!(p("512m"), 512 << 20);
        assert_eq!(p("512M"), 512 << 20);
        assert_eq!(p("1g"), 1 << 30);
        assert_eq!(p("1gb"), 1 << 30);
        assert_eq!(p("1.5GiB"), 3 << 29);
        assert_eq!(p("64k"), 65_536);
        assert_eq!(p("100"), 100);
        assert_eq!(p("100b"), 100);
        assert_eq!(p("2 MB"), 2 << 20);
        assert_eq!(p("1t"), 1 << 40);
        for bad in [
            "",
            "m",
            "1x",
            "1.5.5g",
            "-1g",
            "1gig",
            "1i",
            ".5g",
            "99999999999p",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn cpus_are_nano() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus("0.001"), Ok(1_000_000));
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("half").is_err());
        assert!(parse_cpus("NaN").is_err());
    }
}
