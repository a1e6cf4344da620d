//! A tag's current manifest digest, asked of the base's registry with one manifest `HEAD`
//! (Docker Registry HTTP API v2, `HEAD /v2/<name>/manifests/<tag>`).
//!
//! * `Accept` names the OCI image index, Docker's manifest list, Docker's v2 manifest and the
//!   OCI manifest, so a multi-platform tag answers with its index digest — the digest
//!   `docker pull` records in `RepoDigests`, which is what a job records for its base.
//! * The digest is the `Docker-Content-Digest` header; a registry that leaves it out of a
//!   `HEAD` is asked once more with `GET`, and the body's SHA-256 is the digest.
//! * Credentials: the spec's pull secret (HTTP Basic); a `401` with a `Bearer` challenge
//!   (Docker Hub, GHCR, Harbor) gets a pull token from the realm it names — with the
//!   credential when there is one, anonymously otherwise. The password is never in an error.
//! * `429 Too Many Requests` is [`DigestError::RateLimited`] with the `Retry-After` it sent
//!   (seconds or an HTTP date), which the check loop waits at least.
//! * Scheme `https`; a loopback registry is tried over plain `http` after `https` fails to
//!   connect (the Engine's default insecure registries), never another host.
//!   (The same rules as `changes/manifest.rs`, whose challenge parser this uses.)

use super::reference::BaseRef;
use crate::changes::manifest::bearer_challenge;
use crate::docker::auth::Credential;
use crate::http_client::{ClientOptions, HttpClient, HttpError, body_text};
use reqwest::{Method, Response, StatusCode, Url, header};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// What a manifest request accepts: index and list first, so a multi-platform tag answers
/// with the digest a pull records.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.manifest.v1+json";
const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, Error)]
pub enum DigestError {
    #[error("`{0}` names no tag to check")]
    NoTag(String),
    #[error("registry {registry} is unreachable: {message}")]
    Unreachable { registry: String, message: String },
    #[error("registry {registry} limits requests (429){}", retry_text(.retry_after))]
    RateLimited {
        registry: String,
        retry_after: Option<Duration>,
    },
    #[error("registry {registry} answered {status} for {reference}")]
    Status {
        registry: String,
        reference: String,
        status: u16,
    },
    #[error("registry {registry}: {message}")]
    Protocol { registry: String, message: String },
}

fn retry_text(after: &Option<Duration>) -> String {
    after.map_or(String::new(), |d| {
        format!("; retry after {} s", d.as_secs())
    })
}

impl DigestError {
    /// How long the registry asked Kiln to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DigestError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3), relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A client for base checks (one per pass: connections to a registry are reused).
pub fn client() -> Result<HttpClient, HttpError> {
    HttpClient::new(&ClientOptions {
        read_timeout: Some(TIMEOUT),
        ..ClientOptions::default()
    })
}

/// The current manifest digest of `base`'s tag.
pub async fn resolve(
    client: &HttpClient,
    base: &BaseRef,
    credential: Option<&Credential>,
) -> Result<String, DigestError> {
    let tag = base
        .tag
        .as_deref()
        .ok_or_else(|| DigestError::NoTag(base.to_string()))?;
    let schemes: &[&str] = if base.is_loopback() {
        &["https", "http"]
    } else {
        &["https"]
    };
    let mut last = None;
    for scheme in schemes {
        match resolve_over(client, scheme, base, tag, credential).await {
            Err(e @ DigestError::Unreachable { .. }) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| DigestError::NoTag(base.to_string())))
}

fn http_error(registry: &str, e: HttpError) -> DigestError {
    match e {
        HttpError::Connect { message, .. } | HttpError::Transfer { message, .. } => {
            DigestError::Unreachable {
                registry: registry.to_string(),
                message,
            }
        }
        HttpError::Timeout { timeout, .. } => DigestError::Unreachable {
            registry: registry.to_string(),
            message: format!("no answer within {} s", timeout.as_secs()),
        },
        other => DigestError::Protocol {
            registry: registry.to_string(),
            message: other.to_string(),
        },
    }
}

async fn resolve_over(
    client: &HttpClient,
    scheme: &str,
    base: &BaseRef,
    tag: &str,
    credential: Option<&Credential>,
) -> Result<String, DigestError> {
    let registry = base.registry.as_str();
    let url = Url::parse(&format!(
        "{scheme}://{}/v2/{}/manifests/{tag}",
        base.api_host(),
        base.repository
    ))
    .map_err(|e| DigestError::Protocol {
        registry: registry.to_string(),
        message: format!("bad manifest URL: {e}"),
    })?;
    let mut token: Option<String> = None;
    for method in [Method::HEAD, Method::GET] {
        let mut response = send(client, &method, &url, credential, token.as_deref())
            .await
            .map_err(|e| http_error(registry, e))?;
        if response.status() == StatusCode::UNAUTHORIZED
            && token.is_none()
            && let Some(params) = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_challenge)
        {
            let t = bearer_token(client, registry, &params, &base.repository, credential).await?;
            response = send(client, &method, &url, None, Some(&t))
                .await
                .map_err(|e| http_error(registry, e))?;
            token = Some(t);
        }
        check_status(&response, base)?;
        if let Some(digest) = content_digest(&response) {
            return Ok(digest);
        }
        if method == Method::GET {
            let body = body_text(response, MAX_BODY)
                .await
                .map_err(|e| http_error(registry, e))?;
            return Ok(format!(
                "sha256:{}",
                hex::encode(Sha256::digest(body.as_bytes()))
            ));
        }
        // No digest header on HEAD: ask with GET and hash the manifest.
    }
    Err(DigestError::Protocol {
        registry: registry.to_string(),
        message: "no manifest digest".into(),
    })
}

async fn send(
    client: &HttpClient,
    method: &Method,
    url: &Url,
    credential: Option<&Credential>,
    token: Option<&str>,
) -> Result<Response, HttpError> {
    let mut request = client
        .request(method.clone(), url.clone())
        .header(header::ACCEPT, ACCEPT);
    request = match (token, credential) {
        (Some(t), _) => request.bearer_auth(t),
        (None, Some(c)) => request.basic_auth(c.username(), Some(c.password())),
        (None, None) => request,
    };
    client.send(request, Some(TIMEOUT)).await
}

fn check_status(response: &Response, base: &BaseRef) -> Result<(), DigestError> {
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        return Err(DigestError::RateLimited {
            registry: base.registry.clone(),
            retry_after,
        });
    }
    if !status.is_success() {
        return Err(DigestError::Status {
            registry: base.registry.clone(),
            reference: base.to_string(),
            status: status.as_u16(),
        });
    }
    Ok(())
}

/// The `Docker-Content-Digest` header, when it is a digest.
fn content_digest(response: &Response) -> Option<String> {
    let value = response
        .headers()
        .get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim();
    valid_digest(value).then(|| value.to_string())
}

/// `algorithm:hex` as the distribution spec writes digests.
pub fn valid_digest(value: &str) -> bool {
    value.split_once(':').is_some_and(|(algo, hex)| {
        !algo.is_empty()
            && algo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
            && hex.len() >= 32
            && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// A pull token from the challenge's realm (Docker's token protocol).
async fn bearer_token(
    client: &HttpClient,
    registry: &str,
    params: &[(String, String)],
    repository: &str,
    credential: Option<&Credential>,
) -> Result<String, DigestError> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let protocol = |message: String| DigestError::Protocol {
        registry: registry.to_string(),
        message,
    };
    let realm = get("realm").ok_or_else(|| protocol("Bearer challenge without realm".into()))?;
    let mut url = crate::http_client::parse_url(realm).map_err(|e| protocol(e.to_string()))?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = get("service") {
            query.append_pair("service", service);
        }
        let scope = format!("repository:{repository}:pull");
        query.append_pair("scope", get("scope").unwrap_or(&scope));
    }
    let mut request = client.request(Method::GET, url.clone());
    if let Some(c) = credential {
        request = request.basic_auth(c.username(), Some(c.password()));
    }
    let response = client
        .send(request, Some(TIMEOUT))
        .await
        .map_err(|e| http_error(registry, e))?;
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(DigestError::RateLimited {
            registry: registry.to_string(),
            retry_after: None,
        });
    }
    if !status.is_success() {
        return Err(DigestError::Status {
            registry: url.host_str().unwrap_or_default().to_string(),
            reference: format!("a pull token for {repository}"),
            status: status.as_u16(),
        });
    }
    let body = body_text(response, MAX_BODY)
        .await
        .map_err(|e| http_error(registry, e))?;
    token_of(&body).ok_or_else(|| protocol("the token answer holds no token".into()))
}

/// `token` (or `access_token`) of a token endpoint's JSON answer.
pub fn token_of(body: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let t: Token = serde_json::from_str(body).ok()?;
    t.token.or(t.access_token).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn digests_and_tokens_are_parsed_strictly() {
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest("sha256:xyz"));
        assert!(!valid_digest(&"a".repeat(64)));
        assert_eq!(token_of(r#"{"token":"t1"}"#).as_deref(), Some("t1"));
        assert_eq!(token_of(r#"{"access_token":"t2"}"#).as_deref(), Some("t2"));
        assert_eq!(token_of(r#"{"token":""}"#), None);
        assert_eq!(token_of("<html>"), None);
    }

    #[test]
    fn rate_limit_errors_say_how_long() {
        let e = DigestError::RateLimited {
            registry: "r".into(),
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));
        assert_eq!(
            e.to_string(),
            "registry r limits requests (429); retry after 60 s"
        );
    }

    /// A tiny HTTP/1.1 server on 127.0.0.1 answering each request with `answer(request
    /// head)`; TLS hellos (the `https` try first) are closed at once. Stopped by aborting its
    /// task when the test ends.
    async fn serve(
        answer: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> (
        u16,
        tokio::task::JoinHandle<()>,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let answer = std::sync::Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (answer, log) = (std::sync::Arc::clone(&answer), std::sync::Arc::clone(&log));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 || chunk[0] == 0x16 && buf.is_empty() {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            log.lock().unwrap().push(head.clone());
                            if conn.write_all(answer(&head).as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, task, seen)
    }

    #[tokio::test]
    async fn a_429_is_a_rate_limit_with_its_retry_after() {
        let (port, task, _) = serve(|_| {
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n".into()
        })
        .await;
        let base = BaseRef::parse(&format!("127.0.0.1:{port}/x:t")).unwrap();
        let err = resolve(&client().unwrap(), &base, None).await.unwrap_err();
        task.abort();
        assert!(matches!(err, DigestError::RateLimited { .. }), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn a_bearer_challenge_gets_a_token_with_the_pull_secret_and_then_the_digest() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let d = digest.clone();
        let port_cell = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
        let cell = std::sync::Arc::clone(&port_cell);
        let (port, task, seen) = serve(move |head| {
            let port = cell.get().copied().unwrap_or_default();
            let auth = head
                .lines()
                .find_map(|l| l.strip_prefix("authorization: ").or_else(|| l.strip_prefix("Authorization: ")))
                .unwrap_or("");
            if head.starts_with("GET /token?") {
                // `kiln:s3cret` in Basic.
                return if auth == "Basic a2lsbjpzM2NyZXQ=" {
                    let body = r#"{"token":"t0k"}"#;
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".into()
                };
            }
            if auth == "Bearer t0k" {
                format!("HTTP/1.1 200 OK\r\nDocker-Content-Digest: {d}\r\nContent-Length: 0\r\n\r\n")
            } else {
                format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"reg\",scope=\"repository:team/x:pull\"\r\nContent-Length: 0\r\n\r\n")
            }
        })
        .await;
        port_cell.set(port).unwrap();
        let base = BaseRef::parse(&format!("127.0.0.1:{port}/team/x:t")).unwrap();
        let credential = Credential::new(&format!("127.0.0.1:{port}"), "kiln", "s3cret");
        let got = resolve(&client().unwrap(), &base, Some(&credential)).await;
        task.abort();
        assert_eq!(got.unwrap(), digest);
        let seen = seen.lock().unwrap().clone();
        let lines: Vec<&str> = seen.iter().filter_map(|h| h.lines().next()).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("HEAD /v2/team/x/manifests/t "),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("GET /token?service=reg&scope=repository%3Ateam%2Fx%3Apull "),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("HEAD /v2/team/x/manifests/t "),
            "{lines:?}"
        );
        assert!(
            seen[0]
                .to_ascii_lowercase()
                .contains("accept: application/vnd.oci.image.index.v1+json")
        );
        // The password never reaches an error text.
        let (port2, task2, _) =
            serve(|_| "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".into()).await;
        let base = BaseRef::parse(&format!("127.0.0.1:{port2}/x:t")).unwrap();
        let err = resolve(&client().unwrap(), &base, Some(&credential))
            .await
            .unwrap_err();
        task2.abort();
        assert!(
            err.to_string().contains("401") && !err.to_string().contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn accept_names_index_list_and_manifests() {
        for t in [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
        ] {
            assert!(ACCEPT.contains(t), "{t}");
        }
    }
}
