//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Job counts and the build-duration histogram come from the store (all history, so they
//! survive restarts) through a cache that is rebuilt only when a job changes; webhook counters
//! are this process's.

use super::AppState;
use super::pages::Caches;
use crate::model::JobStatus;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Upper bounds (seconds) of the build-duration histogram buckets.
const BUCKETS: [f64; 10] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// A label value, escaped as the text format requires.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars().take(200) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

pub async fn metrics(
    State(state): State<AppState>,
    Extension(caches): Extension<Arc<Caches>>,
) -> Response {
    match render(&state, &caches).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: store read failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "store read failed\n").into_response()
        }
    }
}

async fn render(state: &AppState, caches: &Caches) -> Result<String, crate::store::StoreError> {
    let jobs = caches.jobs.get(&state.store).await?;
    let specs = caches.specs.get(&state.store).await?;
    let sync = state.store.sync_status()?;
    let mut out = String::with_capacity(4096);
    let w = &mut out;

    let _ = writeln!(w, "# HELP kiln_jobs Jobs in the store by status.");
    let _ = writeln!(w, "# TYPE kiln_jobs gauge");
    for (status, n) in JobStatus::ALL.iter().zip(jobs.by_status) {
        let _ = writeln!(w, "kiln_jobs{{status=\"{status}\"}} {n}");
    }
    let queued = jobs.by_status[0];
    let running = jobs.by_status[1];
    let _ = writeln!(w, "# HELP kiln_queue_length Jobs waiting for a worker.");
    let _ = writeln!(w, "# TYPE kiln_queue_length gauge");
    let _ = writeln!(w, "kiln_queue_length {queued}");
    let _ = writeln!(w, "# HELP kiln_builds_running Jobs being built now.");
    let _ = writeln!(w, "# TYPE kiln_builds_running gauge");
    let _ = writeln!(w, "kiln_builds_running {running}");

    let _ = writeln!(
        w,
        "# HELP kiln_build_duration_seconds Time from start to finish of finished builds (re-uses excluded)."
    );
    let _ = writeln!(w, "# TYPE kiln_build_duration_seconds histogram");
    for outcome in [JobStatus::Succeeded, JobStatus::Failed] {
        let durations: Vec<f64> = jobs
            .durations
            .iter()
            .filter(|(s, _)| *s == outcome)
            .map(|(_, d)| *d)
            .collect();
        for bound in BUCKETS {
            let n = durations.iter().filter(|d| **d <= bound).count();
            let _ = writeln!(
                w,
                "kiln_build_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            w,
            "kiln_build_duration_seconds_bucket{{outcome=\"{outcome}\",le=\"+Inf\"}} {}",
            durations.len()
        );
        let _ = writeln!(
            w,
            "kiln_build_duration_seconds_sum{{outcome=\"{outcome}\"}} {}",
            durations.iter().sum::<f64>()
        );
        let _ = writeln!(
            w,
            "kiln_build_duration_seconds_count{{outcome=\"{outcome}\"}} {}",
            durations.len()
        );
    }

    let _ = writeln!(w, "# HELP kiln_specs Specs by state.");
    let _ = writeln!(w, "# TYPE kiln_specs gauge");
    let invalid = specs.count(super::pages::index::SpecStatus::Invalid);
    let _ = writeln!(w, "kiln_specs{{state=\"valid\"}} {}", specs.live - invalid);
    let _ = writeln!(w, "kiln_specs{{state=\"invalid\"}} {invalid}");
    let _ = writeln!(w, "kiln_specs{{state=\"deleted\"}} {}", specs.deleted);

    let _ = writeln!(
        w,
        "# HELP kiln_last_sync_success_timestamp_seconds When the repository was last synced successfully (0: never)."
    );
    let _ = writeln!(w, "# TYPE kiln_last_sync_success_timestamp_seconds gauge");
    let _ = writeln!(
        w,
        "kiln_last_sync_success_timestamp_seconds {}",
        sync.last_success.unwrap_or(0)
    );
    let _ = writeln!(
        w,
        "# HELP kiln_last_sync_attempt_timestamp_seconds When a sync was last attempted (0: never)."
    );
    let _ = writeln!(w, "# TYPE kiln_last_sync_attempt_timestamp_seconds gauge");
    let _ = writeln!(
        w,
        "kiln_last_sync_attempt_timestamp_seconds {}",
        sync.last_attempt.unwrap_or(0)
    );
    let _ = writeln!(
        w,
        "# HELP kiln_sync_error 1 when the last sync attempt failed; the message is in kiln_sync_error_info."
    );
    let _ = writeln!(w, "# TYPE kiln_sync_error gauge");
    let _ = writeln!(w, "kiln_sync_error {}", u8::from(sync.error.is_some()));
    if let Some(error) = &sync.error {
        let _ = writeln!(w, "# HELP kiln_sync_error_info The last sync error.");
        let _ = writeln!(w, "# TYPE kiln_sync_error_info gauge");
        let _ = writeln!(w, "kiln_sync_error_info{{message=\"{}\"}} 1", label(error));
    }

    let counters = &state.counters;
    let _ = writeln!(
        w,
        "# HELP kiln_webhooks_total Webhook requests since start, by outcome (rejected: bad signature or token)."
    );
    let _ = writeln!(w, "# TYPE kiln_webhooks_total counter");
    let _ = writeln!(
        w,
        "kiln_webhooks_total{{outcome=\"accepted\"}} {}",
        counters.webhooks_accepted.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        w,
        "kiln_webhooks_total{{outcome=\"rejected\"}} {}",
        counters.webhooks_rejected.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        w,
        "# HELP kiln_sync_passes_total Looks at the repository (fetch + reconcile) since start, by outcome."
    );
    let _ = writeln!(w, "# TYPE kiln_sync_passes_total counter");
    let passes = counters.sync_passes.load(Ordering::Relaxed);
    let failures = counters.sync_failures.load(Ordering::Relaxed);
    let _ = writeln!(
        w,
        "kiln_sync_passes_total{{outcome=\"ok\"}} {}",
        passes.saturating_sub(failures)
    );
    let _ = writeln!(w, "kiln_sync_passes_total{{outcome=\"failed\"}} {failures}");
    let _ = writeln!(
        w,
        "# HELP kiln_gc_passes_total Retention passes (log_retention_days, max_jobs_per_spec) since start."
    );
    let _ = writeln!(w, "# TYPE kiln_gc_passes_total counter");
    let _ = writeln!(
        w,
        "kiln_gc_passes_total {}",
        counters.gc_passes.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        w,
        "# HELP kiln_gc_pruned_total What retention passes removed since start: job records and log lines."
    );
    let _ = writeln!(w, "# TYPE kiln_gc_pruned_total counter");
    let _ = writeln!(
        w,
        "kiln_gc_pruned_total{{what=\"jobs\"}} {}",
        counters.gc_jobs_pruned.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        w,
        "kiln_gc_pruned_total{{what=\"log_lines\"}} {}",
        counters.gc_log_lines_pruned.load(Ordering::Relaxed)
    );
    let _ = writeln!(w, "# HELP kiln_build_info Version of this Kiln.");
    let _ = writeln!(w, "# TYPE kiln_build_info gauge");
    let _ = writeln!(
        w,
        "kiln_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
