//! Health checks as Docker runs them: a command inside the container every `interval`,
//! failed if it exits non-zero or outlives `timeout`; `starting` until the first
//! success, `unhealthy` after `retries` consecutive failures, and failures during
//! `start_period` don't count. The tracker is pure; the runner runs the commands.

use std::time::Duration;

use skiff_proto::v1::{self as pb, HealthState};

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;

/// A health check ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

impl Check {
    /// The check a container spec asks for, if any: `["CMD", ...]` runs as is,
    /// `["CMD-SHELL", "cmd"]` through `/bin/sh -c`, `["NONE"]` or nothing: no check.
    pub fn from_spec(hc: Option<&pb::HealthCheck>) -> Option<Check> {
        let hc = hc?;
        let (kind, rest) = hc.test.split_first()?;
        let argv = match kind.as_str() {
            "CMD" if !rest.is_empty() => rest.to_vec(),
            "CMD-SHELL" if !rest.is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            _ => return None,
        };
        let ms = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
        Some(Check {
            argv,
            interval: ms(hc.interval_ms, DEFAULT_INTERVAL),
            timeout: ms(hc.timeout_ms, DEFAULT_TIMEOUT),
            start_period: Duration::from_millis(hc.start_period_ms),
            retries: if hc.retries == 0 {
                DEFAULT_RETRIES
            } else {
                hc.retries
            },
        })
    }
}

/// Docker's merge of a container's health check over its image's: the service's test
/// wins unless empty, and each duration or retry count left at 0 comes from the image.
/// `["NONE"]` on the service disables the image's check.
pub fn merge(
    service: Option<&pb::HealthCheck>,
    image: Option<&pb::HealthCheck>,
) -> Option<pb::HealthCheck> {
    let (s, i) = match (service, image) {
        (None, None) => return None,
        (Some(s), None) => return Some(s.clone()),
        (None, Some(i)) => return Some(i.clone()),
        (Some(s), Some(i)) => (s, i),
    };
    let or = |a: u64, b: u64| if a == 0 { b } else { a };
    Some(pb::HealthCheck {
        test: if s.test.is_empty() {
            i.test.clone()
        } else {
            s.test.clone()
        },
        interval_ms: or(s.interval_ms, i.interval_ms),
        timeout_ms: or(s.timeout_ms, i.timeout_ms),
        start_period_ms: or(s.start_period_ms, i.start_period_ms),
        retries: if s.retries == 0 { i.retries } else { s.retries },
    })
}

/// Where a container's health stands after each probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracker {
    pub state: HealthState,
    failures: u32,
    retries: u32,
    start_period: Duration,
}

impl Tracker {
    pub fn new(check: &Check) -> Self {
        Tracker {
            state: HealthState::Starting,
            failures: 0,
            retries: check.retries,
            start_period: check.start_period,
        }
    }

    /// A tracker that continues from `state` (a re-adopted container whose health the
    /// masters recorded): the start period is over, failures count from zero.
    pub fn resume(check: &Check, state: HealthState) -> Self {
        Tracker {
            state,
            failures: 0,
            retries: check.retries,
            start_period: Duration::ZERO,
        }
    }

    /// Records one probe made `since_start` after the container started; returns the
    /// new state if it changed.
    pub fn record(&mut self, ok: bool, since_start: Duration) -> Option<HealthState> {
        let before = self.state;
        if ok {
            self.failures = 0;
            self.state = HealthState::Healthy;
        } else if since_start >= self.start_period || self.state == HealthState::Healthy {
            self.failures += 1;
            if self.failures >= self.retries {
                self.state = HealthState::Unhealthy;
            }
        }
        (self.state != before).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(test: &[&str], retries: u32, start_ms: u64) -> pb::HealthCheck {
        pb::HealthCheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval_ms: 1000,
            timeout_ms: 500,
            start_period_ms: start_ms,
            retries,
        }
    }

    #[test]
    fn docker_test_forms_become_commands() {
        let c =
            Check::from_spec(Some(&hc(&["CMD", "wget", "-q", "http://x/"], 3, 0))).expect("cmd");
        assert_eq!(c.argv, vec!["wget", "-q", "http://x/"]);
        let c = Check::from_spec(Some(&hc(&["CMD-SHELL", "test -f /ok"], 3, 0))).expect("shell");
        assert_eq!(c.argv, vec!["/bin/sh", "-c", "test -f /ok"]);
        assert!(Check::from_spec(Some(&hc(&["NONE"], 3, 0))).is_none());
        assert!(Check::from_spec(None).is_none());
        let defaults = Check::from_spec(Some(&pb::HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        }))
        .expect("defaults");
        assert_eq!(defaults.interval, Duration::from_secs(30));
        assert_eq!(defaults.retries, 3);
    }

    #[test]
    fn unhealthy_after_retries_consecutive_failures_and_healthy_again_on_success() {
        let check = Check::from_spec(Some(&hc(&["CMD", "x"], 2, 0))).expect("check");
        let mut t = Tracker::new(&check);
        let at = Duration::from_secs(5);
        assert_eq!(t.record(false, at), None);
        assert_eq!(t.record(false, at), Some(HealthState::Unhealthy));
        assert_eq!(t.record(true, at), Some(HealthState::Healthy));
        assert_eq!(t.record(false, at), None);
        assert_eq!(
            t.record(true, at),
            None,
            "one failure then success stays healthy"
        );
    }

    #[test]
    fn the_image_check_fills_what_the_service_leaves_out() {
        let image = hc(&["CMD", "probe"], 5, 2_000);
        assert_eq!(merge(None, Some(&image)), Some(image.clone()));
        let only_interval = pb::HealthCheck {
            interval_ms: 250,
            ..Default::default()
        };
        let m = merge(Some(&only_interval), Some(&image)).expect("merged");
        assert_eq!(m.test, vec!["CMD", "probe"]);
        assert_eq!((m.interval_ms, m.timeout_ms, m.retries), (250, 500, 5));
        let none = hc(&["NONE"], 0, 0);
        assert!(Check::from_spec(merge(Some(&none), Some(&image)).as_ref()).is_none());
        assert_eq!(merge(None, None), None);
    }

    #[test]
    fn a_resumed_tracker_keeps_its_health_until_probes_change_it() {
        let check = Check::from_spec(Some(&hc(&["CMD", "x"], 2, 60_000))).expect("check");
        let mut t = Tracker::resume(&check, HealthState::Healthy);
        assert_eq!(t.state, HealthState::Healthy);
        assert_eq!(t.record(true, Duration::ZERO), None);
        assert_eq!(t.record(false, Duration::ZERO), None);
        assert_eq!(
            t.record(false, Duration::ZERO),
            Some(HealthState::Unhealthy),
            "no start period after a restart"
        );
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let check = Check::from_spec(Some(&hc(&["CMD", "x"], 1, 10_000))).expect("check");
        let mut t = Tracker::new(&check);
        assert_eq!(t.record(false, Duration::from_secs(1)), None);
        assert_eq!(t.state, HealthState::Starting);
        assert_eq!(
            t.record(false, Duration::from_secs(11)),
            Some(HealthState::Unhealthy)
        );
    }
}
