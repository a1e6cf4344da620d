//! The read-only HTTP side: dashboard, JSON API, health, metrics, webhooks.
//!
//! Handlers read the store and nothing else; nothing here can change state (the only POST
//! routes are the signed webhooks in [`hooks`], which merely ask for a fetch). Servers bind
//! where the config says, 127.0.0.1:8080 by default.
//!
//! [`router`] registers every route; [`AppState`] is everything handlers share (the store,
//! the in-memory [`index`] caches, the metrics registry …). Modules depend downwards only:
//! handlers → `index`, `format`, `ansi` → store; nothing below imports a handler module.

mod ansi;
mod api;
pub mod backup;
mod base;
mod changes;
mod format;
mod headers;
pub mod hooks;
mod index;
mod links;
mod metrics;
mod pages;
mod router;
mod sse;
mod status;
pub mod workers;

pub use router::router;

use crate::pool::WorkerPool;
use crate::store::Store;
use index::Caches;
use metrics::Metrics;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
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
    /// In-memory views of the store for the spec list and `/metrics`, kept fresh by store
    /// events.
    caches: Arc<Caches>,
    /// The Prometheus registry `/metrics` encodes.
    metrics: Arc<Metrics>,
    /// The build workers, when this server builds (set once by [`AppState::with_workers`]).
    pub workers: Arc<OnceLock<WorkerPool>>,
    /// The base check's state, when this server runs it ([`AppState::with_base`]).
    pub base: Arc<OnceLock<Arc<crate::base::BaseMonitor>>>,
}

impl AppState {
    /// The state of one server: what the caller runs beside it (the sync loop it triggers,
    /// the counters it feeds, the shutdown token) plus what only the web side needs.
    pub fn new(
        store: Store,
        info: AppInfo,
        webhooks: hooks::Webhooks,
        sync_trigger: Arc<Notify>,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> AppState {
        let inner = Arc::new(info);
        let workers = Arc::new(OnceLock::new());
        let base = Arc::new(OnceLock::new());
        let mut metrics = Metrics::new(Arc::clone(&counters), Arc::clone(&workers));
        metrics.watch_base(Arc::clone(&base));
        AppState {
            caches: Caches::new(&store, &inner),
            metrics: Arc::new(metrics),
            workers,
            base,
            store,
            inner,
            sync_trigger,
            counters,
            webhooks: Arc::new(webhooks),
            shutdown,
            backup_gate: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The same state, showing `pool`'s workers in the API, the dashboard and `/metrics`.
    pub fn with_workers(self, pool: WorkerPool) -> AppState {
        // A second call keeps the first pool: one server has one pool.
        let _ = self.workers.set(pool);
        self
    }

    /// The same state, showing the base check's status and gauges.
    pub fn with_base(self, monitor: Arc<crate::base::BaseMonitor>) -> AppState {
        let _ = self.base.set(monitor);
        self
    }
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
