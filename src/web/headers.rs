//! The security headers of every response (pages, API, static files, errors), as one layer
//! over the whole router: a handler that sets one of them itself keeps its own value.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The Content-Security-Policy of every response: scripts, styles and images only from this
/// origin, no inline code, no framing, forms only to here (the filter is a GET form).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Adds the security headers (and `Cache-Control: no-cache` on pages) unless already set.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let is_page = !request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let defaults = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in defaults {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    // Pages are live views: always revalidate (static files set their own caching).
    if is_page && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    async fn headers_of(app: Router, path: &str) -> axum::http::HeaderMap {
        app.layer(axum::middleware::from_fn(security_headers))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .headers()
            .clone()
    }

    #[tokio::test]
    async fn defaults_are_added_and_a_handlers_own_value_wins() {
        let app = Router::new()
            .route("/page", get(|| async { "x" }))
            .route("/api/v1/x", get(|| async { "x" }))
            .route(
                "/own",
                get(|| async { ([(header::X_FRAME_OPTIONS, "SAMEORIGIN")], "x") }),
            );
        let page = headers_of(app.clone(), "/page").await;
        assert_eq!(page[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(page[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(page[header::CACHE_CONTROL], "no-cache");
        let api = headers_of(app.clone(), "/api/v1/x").await;
        assert_eq!(api[header::REFERRER_POLICY], "same-origin");
        assert!(!api.contains_key(header::CACHE_CONTROL));
        let own = headers_of(app, "/own").await;
        assert_eq!(own[header::X_FRAME_OPTIONS], "SAMEORIGIN");
    }
}
