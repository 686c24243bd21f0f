//! `skiffctl logs`: the lines of every replica of a service (or of one task), merged
//! by the master from the agents that run them, each prefixed by its task, stdout lines
//! to stdout and stderr lines to stderr (as `docker service logs` does).

use std::io::Write;

use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tonic::transport::Channel;

use crate::commands::CtlError;

/// What `logs` was asked for.
#[derive(Clone, Debug, Default)]
pub struct LogsArgs {
    pub service: String,
    pub project: Option<String>,
    pub follow: bool,
    pub since: Option<String>,
    pub tail: Option<u64>,
    pub timestamps: bool,
}

/// Streams the logs until the master ends the stream (or forever with `--follow`).
pub async fn logs(client: &mut ClusterApiClient<Channel>, args: LogsArgs) -> Result<(), CtlError> {
    let since_ms = match &args.since {
        Some(text) => parse_since(text, crate::output::now_ms())?,
        None => 0,
    };
    let mut stream = client
        .logs(pb::LogsRequest {
            service: args.service.clone(),
            project: args.project.clone().unwrap_or_default(),
            follow: args.follow,
            since_ms,
            tail: args.tail.unwrap_or(0),
            timestamps: args.timestamps,
        })
        .await?
        .into_inner();
    while let Some(line) = stream.message().await? {
        let text = render(&line, args.timestamps);
        // A closed pipe (`| head`) ends the command quietly.
        let written = if line.stream == "stderr" {
            std::io::stderr().write_all(text.as_bytes())
        } else {
            std::io::stdout().write_all(text.as_bytes())
        };
        if written.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// One output line: `<task name>@<node> | <line>`, with the time first if asked.
fn render(line: &pb::LogLine, timestamps: bool) -> String {
    let mut out = String::new();
    if timestamps {
        out.push_str(&rfc3339_ms(line.timestamp_ms));
        out.push(' ');
    }
    out.push_str(&line.task_name);
    if !line.node_id.is_empty() {
        out.push('@');
        out.push_str(&crate::commands::services::short(&line.node_id));
    }
    out.push_str(" | ");
    out.push_str(&String::from_utf8_lossy(&line.line));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `--since`: a duration ago (`90s`, `10m`, `2h`, `1d`) or unix seconds.
fn parse_since(text: &str, now_ms: i64) -> Result<i64, CtlError> {
    let bad = || {
        CtlError::Input(format!(
            "--since {text:?}: expected a duration ago (30s, 10m, 2h, 1d) or unix seconds"
        ))
    };
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .map(|ago| now_ms - ago)
        .ok_or_else(bad)
}

/// `2026-11-23T08:40:01.123Z` for a unix time in ms.
fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_ago_and_unix_seconds() {
        let now = 1_000_000_000;
        assert_eq!(parse_since("30s", now).expect("30s"), now - 30_000);
        assert_eq!(parse_since("10m", now).expect("10m"), now - 600_000);
        assert_eq!(parse_since("2h", now).expect("2h"), now - 7_200_000);
        assert_eq!(
            parse_since("1700000000", now).expect("unix"),
            1_700_000_000_000
        );
        for bad in ["", "m", "10x", "ten minutes", "-5m"] {
            let err = parse_since(bad, now).expect_err(bad).to_string();
            assert!(err.contains("--since"), "{err}");
        }
    }

    #[test]
    fn lines_are_prefixed_by_task_and_node_and_keep_one_newline() {
        let line = pb::LogLine {
            task_id: "t".into(),
            task_name: "demo_web.2".into(),
            node_id: "0123456789abcdef0123".into(),
            stream: "stdout".into(),
            timestamp_ms: 1_763_887_201_123,
            line: b"hello\n".to_vec(),
        };
        let text = render(&line, false);
        assert!(text.starts_with("demo_web.2@"), "{text}");
        assert!(text.ends_with(" | hello\n"), "{text}");
        let stamped = render(&line, true);
        assert!(
            stamped.starts_with("2025-11-23T08:40:01.123Z demo_web.2@"),
            "{stamped}"
        );
    }

    #[test]
    fn civil_dates_are_right_around_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }
}
