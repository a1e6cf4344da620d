//! The retention loop of `kiln serve`: a pass shortly after start, then every `gc_interval`.
//!
//! A pass ([`Store::gc`]) scans and deletes in sled, so it runs on a blocking thread; the
//! loop only sleeps and counts. `kiln gc` runs the same pass once on a stopped data dir
//! ([`crate::commands::gc`]).

use crate::config::Retention;
use crate::store::{GcPolicy, Store};
use crate::web::Counters;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The first pass runs this soon after start (or after `gc_interval`, if shorter).
const FIRST_PASS: Duration = Duration::from_secs(10);

/// The store's policy from the configured retention.
pub fn policy(retention: &Retention) -> GcPolicy {
    GcPolicy::new(retention.log_retention_days, retention.max_jobs_per_spec)
}

/// Passes until `shutdown`; returns at once when no retention is configured.
pub async fn run(
    store: Store,
    retention: Retention,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let policy = policy(&retention);
    if !policy.is_active() {
        return;
    }
    let mut delay = retention.gc_interval.min(FIRST_PASS);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = retention.gc_interval;
        let (store, policy) = (store.clone(), policy.clone());
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || store.gc(&policy, crate::model::now())).await {
            Ok(Ok(report)) => {
                counters.gc_passes.fetch_add(1, Relaxed);
                counters
                    .gc_jobs_pruned
                    .fetch_add(report.jobs_pruned, Relaxed);
                counters
                    .gc_log_lines_pruned
                    .fetch_add(report.log_lines_pruned, Relaxed);
                tracing::info!(
                    jobs_pruned = report.jobs_pruned,
                    log_lines_pruned = report.log_lines_pruned,
                    jobs_protected = report.jobs_protected,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention pass"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "retention pass failed; next one in gc_interval")
            }
            Err(e) => tracing::warn!(error = %e, "retention pass panicked"),
        }
    }
}
