//! The base check's fields in the API, the dashboard and `/metrics`: `base_digest` on jobs,
//! `cause` on revisions, `base_outdated` on specs, the `base_check` block of
//! `/api/v1/status`, and the gauges `kiln_base_digest_age_seconds` / `kiln_bases_outdated`.
//! Assembled from `store/base_digests.rs` and the [`BaseMonitor`] (memory) so the handlers of
//! other features only call in here.

use super::AppState;
use super::format::When;
use crate::base::BaseMonitor;
use crate::model::{Job, now, rfc3339};
use crate::store::StoreError;
use crate::store::base_digests::{RevisionCause, short_digest};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// A job's base as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub(super) struct BaseView {
    pub reference: String,
    pub digest: String,
    pub recorded_at: String,
}

/// The base a job's image stands on (a re-use: the base of the job it re-used).
pub(super) fn job_base(state: &AppState, job: &Job) -> Result<Option<BaseView>, StoreError> {
    Ok(
        crate::base::record::base_of(&state.store, job)?.map(|b| BaseView {
            reference: b.reference,
            digest: b.digest,
            recorded_at: rfc3339(b.recorded_at),
        }),
    )
}

/// `cause` and `cause_text` of one revision.
pub(super) fn cause_fields(cause: &RevisionCause) -> (&'static str, Option<String>) {
    (cause.kind(), cause.text())
}

/// A spec's outdated base, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub(super) struct OutdatedView {
    pub reference: String,
    pub built_on: String,
    pub current: String,
    pub since: String,
}

pub(super) fn outdated(state: &AppState, spec: &str) -> Result<Option<OutdatedView>, StoreError> {
    Ok(state.store.base_outdated(spec)?.map(|o| OutdatedView {
        reference: o.reference,
        built_on: o.built_on,
        current: o.current,
        since: rfc3339(o.since),
    }))
}

/// "base outdated since …" for the dashboard.
pub struct OutdatedNote {
    pub since: When,
    pub reference: String,
    pub built_on: String,
    pub current: String,
}

pub(super) fn outdated_note(
    state: &AppState,
    spec: &str,
) -> Result<Option<OutdatedNote>, StoreError> {
    Ok(state.store.base_outdated(spec)?.map(|o| OutdatedNote {
        since: When::at(o.since),
        reference: o.reference,
        built_on: short_digest(&o.built_on),
        current: short_digest(&o.current),
    }))
}

/// The `base_check` block of `/api/v1/status` (`null` when this server runs no check).
pub(super) fn status_block(state: &AppState) -> serde_json::Value {
    let Some(monitor) = state.base.get() else {
        return serde_json::Value::Null;
    };
    let s = monitor.status();
    serde_json::json!({
        "enabled": s.interval_secs > 0,
        "interval_seconds": s.interval_secs,
        "last_attempt": s.last_attempt.map(rfc3339),
        "last_success": s.last_success.map(rfc3339),
        "next_check": s.next_check.map(rfc3339),
        "error": s.error,
        "requests": s.requests,
        "checked": s.checked,
        "updates": s.updates,
        "outdated": s.outdated,
    })
}

/// The base gauges, read from the monitor when scraped (nothing before the first pass).
#[derive(Debug)]
pub(super) struct BaseGauges(pub Arc<OnceLock<Arc<BaseMonitor>>>);

impl Collector for BaseGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(monitor) = self.0.get() else {
            return Ok(());
        };
        let status = monitor.status();
        if status.last_attempt.is_none() {
            return Ok(());
        }
        let t = now();
        let mut age = encoder.encode_descriptor(
            "kiln_base_digest_age_seconds",
            "Seconds since each spec's latest image recorded its base digest (as of the last base check)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (spec, at) in &status.recorded {
            let labels = [("spec", spec.as_str())];
            ConstGauge::new(t.saturating_sub(*at).max(0)).encode(age.encode_family(&labels)?)?;
        }
        let outdated = ConstGauge::new(i64::try_from(status.outdated).unwrap_or(i64::MAX));
        outdated.encode(encoder.encode_descriptor(
            "kiln_bases_outdated",
            "Specs whose base tag moved since their latest image was built (last base check)",
            None,
            outdated.metric_type(),
        )?)?;
        Ok(())
    }
}
