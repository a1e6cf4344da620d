//! The read-only HTTP side: JSON API and health.
//!
//! Handlers read the store and nothing else; nothing here can change state (the only POST
//! routes will be signed webhooks, which merely ask for a fetch). Servers bind where the
//! config says, 127.0.0.1:8080 by default.

mod api;

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
    /// Cancelled on shutdown: long-lived responses (SSE) end on it.
    pub shutdown: CancellationToken,
}

/// Process-wide counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub webhooks_accepted: AtomicU64,
    pub webhooks_rejected: AtomicU64,
}

/// Static facts about this Kiln process.
#[derive(Debug, Default)]
pub struct AppInfo {
    pub repo: String,
    pub branch: String,
    pub no_build: bool,
}

pub fn router(state: AppState) -> Router {
    api::routes()
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
