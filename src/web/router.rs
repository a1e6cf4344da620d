//! Every route Kiln serves, in one table, and the layers around all of them.
//!
//! Handlers live in the module of their concept (`api`, `pages`, `sse`, `hooks`, `backup`,
//! `metrics`, `status`) and only take [`AppState`]; none of them registers routes, so this
//! file is the one place that says what answers at which address. Outermost first, every
//! response goes through: tracing, the security headers ([`super::headers`]), compression.

use super::{AppState, api, backup, headers, hooks, metrics, pages, sse, status};
use axum::Router;
use axum::routing::{get, post};

/// The whole HTTP surface of a Kiln process.
pub fn router(state: AppState) -> Router {
    Router::new()
        // JSON API and health
        .route("/healthz", get(api::healthz))
        .route("/api/v1/status", get(status::status))
        .route("/api/v1/specs", get(api::list_specs))
        .route("/api/v1/specs/{name}", get(api::get_spec))
        .route("/api/v1/specs/{name}/jobs", get(api::spec_jobs))
        .route("/api/v1/jobs/{id}", get(api::get_job))
        .route("/api/v1/jobs/{id}/log", get(api::job_log))
        .route("/api/v1/jobs/{id}/packages", get(api::job_packages))
        .route("/api/v1/backup", get(backup::backup))
        // Signed webhooks: the only POST routes, and they only ask for a fetch.
        .route("/hooks/github", post(hooks::github))
        .route("/hooks/gitlab", post(hooks::gitlab))
        .route("/hooks/gitea", post(hooks::gitea))
        .route("/hooks/generic", post(hooks::generic))
        // Dashboard
        .route("/", get(pages::spec_list))
        .route("/specs/{name}", get(pages::spec_page))
        .route("/jobs/{id}", get(pages::job_page))
        .route("/jobs/{id}/events", get(sse::job_events))
        .route("/static/{name}", get(pages::static_file))
        .route("/metrics", get(metrics::metrics))
        .fallback(pages::not_found_page)
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::middleware::from_fn(headers::security_headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
