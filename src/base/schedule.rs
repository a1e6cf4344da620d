//! The base check loop of `kiln serve`: a pass every `base_check_interval`, the first one
//! right after the start; after a failed request the next pass comes sooner, with the one
//! backoff schedule of [`crate::backoff`] (from one second up to the interval), and never
//! before a registry's `Retry-After`. The outcome is kept in the [`BaseMonitor`] for
//! `/api/v1/status`; base updates wake the sync loop, which records and queues them.

use super::pass::{CheckSettings, check_once};
use super::status::BaseMonitor;
use crate::backoff::Backoff;
use crate::model::now;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Run passes until `shutdown`; returns at once when the interval is zero (checks off).
pub async fn run(
    store: Store,
    monitor: Arc<BaseMonitor>,
    settings: CheckSettings,
    sync_trigger: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let interval = settings.interval;
    if interval.is_zero() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_secs(1).min(interval), interval);
    loop {
        let started = now();
        // A registry that does not answer must not hold up shutdown.
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = check_once(&store, &monitor, &settings) => result,
        };
        let (wait, error) = match &result {
            Ok(report) if report.errors.is_empty() => {
                backoff.succeeded();
                (interval, None)
            }
            Ok(report) => {
                let wait = backoff.failed().max(report.retry_after.unwrap_or_default());
                (wait, Some(report.errors.join("; ")))
            }
            Err(e) => (backoff.failed(), Some(e.to_string())),
        };
        if let Some(e) = &error {
            tracing::warn!(error = %e, retry_in = ?wait, "base check failed");
        }
        let updates = result.as_ref().map_or(0, |r| r.updates);
        monitor.update_status(|st| {
            st.last_attempt = Some(started);
            if error.is_none() {
                st.last_success = Some(started);
            }
            st.error = error;
            st.next_check = Some(now() + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2));
        });
        if updates > 0 {
            sync_trigger.notify_one();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
