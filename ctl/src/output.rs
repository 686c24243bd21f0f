//! Printing results: a table for people, JSON for scripts. Each command builds rows of
//! plain serde structs, and both forms come from the same rows, so they never disagree.

use comfy_table::{Table, presets::NOTHING};

use crate::cli::Output;

/// Prints `rows` as a table with `headers` (each row yields its cells in order), or as a
/// JSON array of the rows.
pub fn print_rows<R: serde::Serialize>(
    format: Output,
    headers: &[&str],
    rows: &[R],
    cells: impl Fn(&R) -> Vec<String>,
) {
    match format {
        Output::Json => print_json(&rows),
        Output::Table => {
            let mut table = Table::new();
            table.load_preset(NOTHING);
            table.set_header(headers.iter().map(|h| h.to_uppercase()));
            for row in rows {
                table.add_row(cells(row));
            }
            println!("{}", table.to_string().trim_end());
        }
    }
}

/// Prints any serializable value as pretty JSON.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("skiffctl: cannot print as JSON: {err}"),
    }
}

/// "3s", "5m", "2h", "4d": how long ago `ms` (unix ms) was, as `docker ps` shows it.
pub fn age(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = (now_ms - ms).max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Bytes for people: "512MiB", "1.5GiB".
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() < 0.05 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Nano-CPUs for people: "0.5", "2".
pub fn cpus(nano: i64) -> String {
    let value = nano as f64 / 1e9;
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_docker_ps() {
        assert_eq!(age(0, 10_000), "-");
        assert_eq!(age(1_000, 6_000), "5s");
        assert_eq!(age(1, 3_600_001), "1h");
        assert_eq!(age(1, 2 * 86_400_000 + 1), "2d");
    }

    #[test]
    fn sizes_and_cpus_read_naturally() {
        assert_eq!(bytes(512 * 1024 * 1024), "512MiB");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.5GiB");
        assert_eq!(cpus(500_000_000), "0.5");
        assert_eq!(cpus(2_000_000_000), "2");
    }
}
