//! The build workers as the API and the dashboard show them: `GET /api/v1/workers` (a JSON
//! list), the `/workers` page, and the one sentence that says why queued jobs wait when no
//! worker can take them (the status endpoint and every page's banner use it).
//!
//! Everything here is read from the pool's in-memory state ([`WorkerPool::status`]): health
//! is what the last probe found, `running` and `builds` count this process's leases. A server
//! that builds nothing (`--no-build`) has no pool and shows an empty list.

use super::AppState;
use super::format::When;
use super::pages::{Layout, PageError};
use crate::model::rfc3339;
use crate::pool::{WorkerPool, WorkerStatus};
use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::SystemTime;

/// One worker in `GET /api/v1/workers`.
#[derive(Serialize)]
pub(super) struct WorkerView {
    name: String,
    kind: &'static str,
    /// `None`: the Docker default (`DOCKER_HOST` or the local socket).
    endpoint: Option<String>,
    healthy: bool,
    error: Option<String>,
    /// Since when it has been healthy or unhealthy (`None`: not probed yet).
    since: Option<String>,
    capacity: usize,
    running: usize,
    /// Attempts placed on it since Kiln started.
    builds: u64,
}

impl From<WorkerStatus> for WorkerView {
    fn from(w: WorkerStatus) -> Self {
        WorkerView {
            since: w.since.map(unix_seconds).map(rfc3339),
            name: w.name,
            kind: w.kind,
            endpoint: w.endpoint,
            healthy: w.healthy,
            error: w.error,
            capacity: w.capacity,
            running: w.running,
            builds: w.builds,
        }
    }
}

fn unix_seconds(t: SystemTime) -> crate::model::Timestamp {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn statuses(state: &AppState) -> Vec<WorkerStatus> {
    state
        .workers
        .get()
        .map(WorkerPool::status)
        .unwrap_or_default()
}

pub(super) async fn list(State(state): State<AppState>) -> Json<Vec<WorkerView>> {
    Json(statuses(&state).into_iter().map(WorkerView::from).collect())
}

/// Why jobs cannot be placed now, or `None` when at least one worker is healthy (or this
/// server has no pool). A worker that was never probed counts as not answering yet.
pub fn waiting_reason(workers: &[WorkerStatus]) -> Option<String> {
    if workers.is_empty() || workers.iter().any(|w| w.healthy) {
        return None;
    }
    let each: Vec<String> = workers
        .iter()
        .map(|w| match &w.error {
            Some(e) => format!("{}: {e}", w.name),
            None => format!("{}: not probed yet", w.name),
        })
        .collect();
    Some(format!(
        "no build worker is healthy; jobs wait queued until one answers ({})",
        each.join("; ")
    ))
}

/// The `workers` block of `/api/v1/status`.
pub(super) fn status_block(state: &AppState) -> serde_json::Value {
    let workers = statuses(state);
    serde_json::json!({
        "total": workers.len(),
        "healthy": workers.iter().filter(|w| w.healthy).count(),
        "running": workers.iter().map(|w| w.running).sum::<usize>(),
        "capacity": workers.iter().map(|w| w.capacity).sum::<usize>(),
        "waiting_reason": waiting_reason(&workers),
    })
}

/// The banner every page shows while no worker is healthy.
pub(super) fn banner(state: &AppState) -> Option<String> {
    waiting_reason(&statuses(state))
}

struct WorkerRow {
    name: String,
    kind: &'static str,
    endpoint: String,
    healthy: bool,
    probed: bool,
    error: Option<String>,
    since: Option<When>,
    capacity: usize,
    running: usize,
    builds: u64,
}

#[derive(Template, WebTemplate)]
#[template(path = "workers.html", config = "web/askama.toml")]
struct WorkersPage {
    layout: Layout,
    no_build: bool,
    rows: Vec<WorkerRow>,
}

pub(super) async fn page(State(state): State<AppState>) -> Result<Response, PageError> {
    let rows = statuses(&state)
        .into_iter()
        .map(|w| WorkerRow {
            probed: w.since.is_some(),
            since: w.since.map(|t| When::at(unix_seconds(t))),
            endpoint: w
                .endpoint
                .unwrap_or_else(|| "Docker default (DOCKER_HOST or the local socket)".into()),
            name: w.name,
            kind: w.kind,
            healthy: w.healthy,
            error: w.error,
            capacity: w.capacity,
            running: w.running,
            builds: w.builds,
        })
        .collect();
    let view = WorkersPage {
        layout: Layout::new(&state, "Workers", "workers"),
        no_build: state.inner.no_build,
        rows,
    };
    Ok(view.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, healthy: bool, error: Option<&str>) -> WorkerStatus {
        WorkerStatus {
            name: name.into(),
            kind: "docker",
            endpoint: None,
            healthy,
            error: error.map(str::to_owned),
            capacity: 1,
            running: 0,
            builds: 0,
            build_seconds: 0.0,
            since: None,
        }
    }

    #[test]
    fn jobs_wait_only_when_no_worker_is_healthy_and_the_reason_names_each() {
        assert_eq!(waiting_reason(&[]), None);
        assert_eq!(
            waiting_reason(&[
                worker("w1", false, Some("refused")),
                worker("w2", true, None)
            ]),
            None
        );
        let reason = waiting_reason(&[
            worker("w1", false, Some("connection refused")),
            worker("w2", false, None),
        ])
        .expect("all down");
        assert!(reason.contains("w1: connection refused"), "{reason}");
        assert!(reason.contains("w2: not probed yet"), "{reason}");
        assert!(reason.contains("jobs wait queued"), "{reason}");
    }
}
