//! Exponential backoff: the one rule every retry loop in Kiln waits by.
//!
//! The sync loop (a failed pass), the wait for a Docker Engine that does not answer yet, and
//! a job's retries after a transient failure all wait `first · 2ⁿ`, capped, after the n-th
//! failure. One small pure function, so the three loops cannot drift apart and the schedule is
//! unit-tested without a clock; a crate (`backoff`, `backon`) would bring jitter and timers
//! none of the three needs.

use std::time::Duration;

/// The wait after `failures_before` earlier failures: `first · 2^failures_before`, at most
/// `cap` (and never more than `cap` even when `first` is larger).
pub fn delay(first: Duration, cap: Duration, failures_before: u32) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(failures_before.min(31)))
        .min(cap)
}

/// [`delay`] with the failure count kept: for loops that fail, recover and fail again.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            failures: 0,
        }
    }

    /// Records a failure; returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let wait = delay(self.first, self.cap, self.failures);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// Records a success; returns how many failures came before it.
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (0..9).map(|_| b.failed().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.succeeded(), 9);
        assert_eq!(b.failed(), Duration::from_secs(1));
        let mut short = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(short.failed(), Duration::from_secs(1));
        assert_eq!(short.failed(), Duration::from_secs(1));
        for _ in 0..100 {
            short.failed();
        }
        assert_eq!(short.failed(), Duration::from_secs(1));
    }

    #[test]
    fn delay_never_overflows_and_respects_a_small_cap() {
        let cap = Duration::from_secs(10);
        assert_eq!(
            delay(Duration::from_millis(500), cap, 0),
            Duration::from_millis(500)
        );
        assert_eq!(
            delay(Duration::from_millis(500), cap, 4),
            Duration::from_secs(8)
        );
        assert_eq!(delay(Duration::from_millis(500), cap, 5), cap);
        assert_eq!(delay(Duration::from_secs(30), cap, 0), cap);
        assert_eq!(delay(Duration::MAX, cap, u32::MAX), cap);
        assert_eq!(delay(Duration::ZERO, cap, 7), Duration::ZERO);
    }
}
