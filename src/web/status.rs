//! `GET /api/v1/status`: how Kiln follows the repository — the last sync and its error (a
//! failed fetch keeps the last state and shows here until a pass succeeds), the trigger
//! sources, and the sync and webhook counters. No secret is ever part of it.

use super::AppState;
use crate::model::rfc3339;
use axum::Json;
use axum::extract::State;
use std::sync::atomic::Ordering;

pub(super) async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let sync = state.store.sync_status().unwrap_or_default();
    let counters = &state.counters;
    let info = &state.inner;
    Json(serde_json::json!({
        "status": if sync.error.is_none() { "ok" } else { "degraded" },
        "repo": crate::repo::redact(&info.repo),
        "branch": info.branch,
        "last_commit": state.store.last_commit().ok().flatten(),
        "sync": {
            "last_attempt": sync.last_attempt.map(rfc3339),
            "last_success": sync.last_success.map(rfc3339),
            "error": sync.error,
            "passes": counters.sync_passes.load(Ordering::Relaxed),
            "failures": counters.sync_failures.load(Ordering::Relaxed),
        },
        "triggers": {
            "watch": info.watching,
            "poll_interval_seconds": info.poll_interval_secs,
            "webhooks": state.webhooks.providers(),
        },
        "workers": super::workers::status_block(&state),
        "base_check": super::base::status_block(&state),
        "webhooks": {
            "accepted": counters.webhooks_accepted.load(Ordering::Relaxed),
            "rejected": counters.webhooks_rejected.load(Ordering::Relaxed),
        },
    }))
}
