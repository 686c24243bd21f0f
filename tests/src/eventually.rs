//! Waiting for a distributed system to get somewhere: retry a check until it passes or a
//! deadline expires, then fail with the last thing the check said. Never a bare sleep.

use std::time::{Duration, Instant};

/// Retries `check` every `every` until it returns `Ok`, or until `within` has passed,
/// returning the last error then.
pub fn eventually<T, E: std::fmt::Display>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                return Err(format!("still failing after {within:?}: {err}"));
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(1), Duration::from_millis(1), || {
            n += 1;
            if n < 3 { Err("not yet") } else { Ok(n) }
        });
        assert_eq!(got, Ok(3));
    }

    #[test]
    fn reports_the_last_error_at_the_deadline() {
        let got: Result<(), String> =
            eventually(Duration::from_millis(20), Duration::from_millis(5), || {
                Err::<(), _>("still down")
            });
        let err = got.expect_err("never succeeds");
        assert!(err.contains("still down"), "{err}");
    }
}
