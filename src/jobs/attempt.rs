//! The attempt policy: after a failed attempt, retry (after which delay), re-queue, or fail.
//!
//! A pure function of the failure's kind, the attempt number and the configuration, so every
//! rule is a unit test without Docker or a clock. The worker only classifies the failure
//! ([`FailureKind`]) and carries out the [`Decision`].

use crate::backoff;
use std::time::Duration;

/// The longest wait between two attempts of one job, however many attempts are allowed.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// What an attempt's failure means for the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Trying again later may succeed: the builder or a registry was unreachable, a
    /// connection broke, a 5xx or "too many requests".
    Transient,
    /// It will fail again: a failing `RUN`, a bad Dockerfile, a refused credential, a timeout,
    /// a job cancelled by the store.
    Permanent,
    /// Kiln is shutting down and stopped the attempt: the job belongs to the next start.
    Stopped,
    /// A package source answered HTTP 401/403 to the credential Kiln gave it: the same
    /// credential is refused again, so the job fails with the source's name (a source that
    /// does not answer is `Transient`).
    SourceRefused,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start attempt `n + 1` after `after`.
    Retry { after: Duration },
    /// Put the job back in the queue (`queued`), untouched by this attempt's failure.
    Requeue,
    /// The job fails with this attempt's error.
    Fail,
}

/// The configuration the policy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptPolicy {
    /// Attempts per job, the first included (`max_attempts`; 0 counts as 1).
    pub max_attempts: u32,
    /// The wait before the second attempt (`retry_backoff`); doubled per attempt.
    pub first_delay: Duration,
    /// The longest wait ([`MAX_RETRY_DELAY`] in Kiln).
    pub max_delay: Duration,
}

/// Decides after attempt `attempt` (1-based) failed with a failure of `kind`.
pub fn decide(kind: FailureKind, attempt: u32, policy: &AttemptPolicy) -> Decision {
    match kind {
        FailureKind::Stopped => Decision::Requeue,
        FailureKind::Transient if attempt < policy.max_attempts.max(1) => Decision::Retry {
            after: backoff::delay(
                policy.first_delay,
                policy.max_delay,
                attempt.saturating_sub(1),
            ),
        },
        FailureKind::Transient | FailureKind::Permanent | FailureKind::SourceRefused => {
            Decision::Fail
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> AttemptPolicy {
        AttemptPolicy {
            max_attempts,
            first_delay: Duration::from_secs(2),
            max_delay: MAX_RETRY_DELAY,
        }
    }

    #[test]
    fn transient_failures_retry_until_max_attempts() {
        let p = policy(3);
        assert_eq!(
            decide(FailureKind::Transient, 1, &p),
            Decision::Retry {
                after: Duration::from_secs(2)
            }
        );
        assert_eq!(
            decide(FailureKind::Transient, 2, &p),
            Decision::Retry {
                after: Duration::from_secs(4)
            }
        );
        assert_eq!(decide(FailureKind::Transient, 3, &p), Decision::Fail);
        assert_eq!(decide(FailureKind::Transient, 9, &p), Decision::Fail);
    }

    #[test]
    fn permanent_failures_fail_at_once() {
        for attempt in 1..=3 {
            assert_eq!(
                decide(FailureKind::Permanent, attempt, &policy(3)),
                Decision::Fail
            );
        }
    }

    #[test]
    fn a_refused_source_credential_fails_at_once() {
        for attempt in 1..=3 {
            assert_eq!(
                decide(FailureKind::SourceRefused, attempt, &policy(3)),
                Decision::Fail
            );
        }
    }

    #[test]
    fn a_stopped_attempt_is_requeued_whatever_its_number() {
        for attempt in [1, 3, 100] {
            assert_eq!(
                decide(FailureKind::Stopped, attempt, &policy(3)),
                Decision::Requeue
            );
        }
        assert_eq!(
            decide(FailureKind::Stopped, 1, &policy(1)),
            Decision::Requeue
        );
    }

    #[test]
    fn one_attempt_allowed_means_no_retry() {
        assert_eq!(
            decide(FailureKind::Transient, 1, &policy(1)),
            Decision::Fail
        );
        assert_eq!(
            decide(FailureKind::Transient, 1, &policy(0)),
            Decision::Fail
        );
    }

    #[test]
    fn backoff_doubles_per_attempt_up_to_the_cap() {
        let p = policy(u32::MAX);
        let waits: Vec<u64> = (1..=10)
            .map(
                |attempt| match decide(FailureKind::Transient, attempt, &p) {
                    Decision::Retry { after } => after.as_secs(),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        match decide(FailureKind::Transient, u32::MAX - 1, &p) {
            Decision::Retry { after } => assert_eq!(after, MAX_RETRY_DELAY),
            other => panic!("{other:?}"),
        }
    }
}
