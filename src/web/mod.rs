//! The read-only HTTP side: JSON API and health.
//!
//! Handlers read the store and nothing else; nothing here can change state (the only POST
//! routes are the signed webhooks in [`hooks`], which merely ask for a fetch). Servers bind
//! where the config says, 127.0.0.1:8080 by default.

mod api;
pub mod backup;
pub mod hooks;
mod metrics;
pub mod pages;
mod sse;
mod status;

use crate::store::Store;
use axum::Router;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub inner: Arc<AppInfo>,
    /// Ask the sync loop to look at the repository now (webhooks, the watcher). Many requests
    /// while one look is pending coalesce into that one look.
    pub sync_trigger: Arc<Notify>,
    pub counters: Arc<Counters>,
    /// Webhook secrets, replay cache and flood gate (`Default`: webhooks disabled).
    pub webhooks: Arc<hooks::Webhooks>,
    /// Cancelled on shutdown: long-lived responses (SSE) end on it.
    pub shutdown: CancellationToken,
    /// One permit: at most one `GET /api/v1/backup` streams at a time.
    pub backup_gate: Arc<tokio::sync::Semaphore>,
}

/// Process-wide counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub webhooks_accepted: AtomicU64,
    pub webhooks_rejected: AtomicU64,
    /// Sync passes (fetch + reconcile) started, and how many of them failed.
    pub sync_passes: AtomicU64,
    pub sync_failures: AtomicU64,
    /// Retention passes since start, and what they removed.
    pub gc_passes: AtomicU64,
    pub gc_jobs_pruned: AtomicU64,
    pub gc_log_lines_pruned: AtomicU64,
}

/// Static facts about this Kiln process.
#[derive(Debug, Default)]
pub struct AppInfo {
    pub repo: String,
    pub branch: String,
    pub no_build: bool,
    /// Seconds between looks when nothing triggers one.
    pub poll_interval_secs: u64,
    /// The git dir watched for ref changes, when a local repository is watched.
    pub watching: Option<String>,
    /// Dashboard link to a commit, `{sha}` replaced (config `commit_url`).
    pub commit_url: Option<String>,
    /// Web page of the repository (`https://git.example.com/org/specs`), for links to spec
    /// files (`…/blob/BRANCH/PATH`, or a template with `{path}` and `{branch}`) and, without
    /// `commit_url`, to commits (`…/commit/SHA`).
    pub repo_web_url: Option<String>,
}

pub fn router(state: AppState) -> Router {
    api::routes()
        .merge(backup::routes())
        .merge(hooks::routes())
        .merge(status::routes())
        .merge(pages::routes(&state))
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::middleware::from_fn(pages::security_headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serve until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
