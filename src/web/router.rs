//! Every route Kiln serves, in one table, and the layers around all of them.
//!
//! Handlers live in the module of their concept (`api`, `changes`, `pages`, `sse`, `hooks`, `backup`,
//! `metrics`, `status`) and only take [`AppState`]; none of them registers routes, so this
//! file is the one place that says what answers at which address. Outermost first, every
//! response goes through: tracing, the security headers ([`super::headers`]), compression.

use super::{AppState, api, backup, changes, headers, hooks, metrics, pages, sse, status, workers};
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
        .route("/api/v1/jobs/{id}/changes", get(changes::job_changes))
        .route("/api/v1/jobs/{id}/sbom", get(changes::job_sbom))
        .route("/api/v1/catalog", get(api::catalog))
        .route("/api/v1/workers", get(workers::list))
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
        .route("/workers", get(workers::page))
        .route("/jobs/{id}/events", get(sse::job_events))
        .route("/static/{name}", get(pages::static_file))
        .route("/metrics", get(metrics::metrics))
        .fallback(pages::not_found_page)
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::middleware::from_fn(headers::security_headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode, header};
    use std::sync::Arc;
    use tower::ServiceExt as _;

    /// Every route answers from this one router (on an empty store), as what it is: JSON
    /// where the API is, HTML where the dashboard is, the text format at `/metrics` — never
    /// the HTML fallback by accident — and every answer carries the security headers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_route_answers_from_the_one_router() {
        let dir = tempfile::tempdir().unwrap();
        let state = AppState::new(
            crate::store::Store::open(dir.path()).unwrap(),
            super::super::AppInfo::default(),
            super::super::hooks::Webhooks::default(),
            Arc::default(),
            Arc::default(),
            tokio_util::sync::CancellationToken::new(),
        );
        let app = router(state);
        let json = "application/json";
        let html = "text/html; charset=utf-8";
        for (method, path, status, content_type) in [
            (Method::GET, "/healthz", StatusCode::OK, json),
            (Method::GET, "/api/v1/status", StatusCode::OK, json),
            (Method::GET, "/api/v1/specs", StatusCode::OK, json),
            (
                Method::GET,
                "/api/v1/specs/nope",
                StatusCode::NOT_FOUND,
                json,
            ),
            (
                Method::GET,
                "/api/v1/specs/nope/jobs",
                StatusCode::NOT_FOUND,
                json,
            ),
            (Method::GET, "/api/v1/jobs/1", StatusCode::NOT_FOUND, json),
            (
                Method::GET,
                "/api/v1/jobs/1/log",
                StatusCode::NOT_FOUND,
                json,
            ),
            (
                Method::GET,
                "/api/v1/jobs/1/packages",
                StatusCode::NOT_FOUND,
                json,
            ),
            (
                Method::GET,
                "/api/v1/backup",
                StatusCode::OK,
                "application/octet-stream",
            ),
            // Webhooks without a secret are disabled: a JSON 404 from the hook handler.
            (Method::POST, "/hooks/github", StatusCode::NOT_FOUND, json),
            (Method::POST, "/hooks/gitlab", StatusCode::NOT_FOUND, json),
            (Method::POST, "/hooks/gitea", StatusCode::NOT_FOUND, json),
            (Method::POST, "/hooks/generic", StatusCode::NOT_FOUND, json),
            (Method::GET, "/", StatusCode::OK, html),
            (Method::GET, "/specs/nope", StatusCode::NOT_FOUND, html),
            (Method::GET, "/jobs/1", StatusCode::NOT_FOUND, html),
            (
                Method::GET,
                "/jobs/1/events",
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
            ),
            (
                Method::GET,
                "/static/app.css",
                StatusCode::OK,
                "text/css; charset=utf-8",
            ),
            (
                Method::GET,
                "/metrics",
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (Method::GET, "/no/such/page", StatusCode::NOT_FOUND, html),
        ] {
            let response = app
                .clone()
                .oneshot(
                    Request::builder()
                        .method(method.clone())
                        .uri(path)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{method} {path}");
            let h = response.headers();
            assert_eq!(h[header::CONTENT_TYPE], content_type, "{method} {path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], headers::CSP, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            // Drain bodies (the backup streams from a blocking task).
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
        }
    }
}
