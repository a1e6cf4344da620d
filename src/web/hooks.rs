//! Signed webhooks: `POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea`, `/hooks/generic`,
//! and the client side of the generic one (`kiln notify`).
//!
//! A webhook only ever means "fetch now". Its body is never trusted for refs or content: the
//! sync pass reads the branch from the repository itself. The body is looked at only *after*
//! the signature checked out, and only to skip pushes to other branches.
//!
//! | provider | proof | replay protection |
//! |---|---|---|
//! | `github` | `X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256(secret, body) | each signature accepted once (kept 1 h) |
//! | `gitea` | `X-Gitea-Signature: HEX` (or `X-Forgejo-Signature`), HMAC-SHA256(secret, body) | each signature accepted once (kept 1 h) |
//! | `gitlab` | `X-Gitlab-Token: SECRET` (the token itself) | none possible (the token never changes) |
//! | `generic` | `X-Kiln-Timestamp: UNIX_SECONDS` and `X-Kiln-Signature: sha256=HEX`, HMAC-SHA256(secret, timestamp ‖ body) | timestamp within 5 minutes of now, each signature accepted once |
//!
//! Comparisons are constant-time (`subtle`; the GitLab token is compared as SHA-256 digests
//! so that not even its length leaks). A missing, malformed, wrong, stale or replayed proof
//! is a `401` with a log line and nothing else happens. Bodies are capped at [`MAX_BODY`]
//! (`413`). Secrets are never logged, stored or shown; [`Secret`]'s `Debug` is redacted.
//!
//! # Flood control
//!
//! Accepted webhooks go through a [`FetchGate`]: at most one trigger per [`MIN_FETCH_GAP`];
//! webhooks within the gap are coalesced into a single trigger at its end. Together with the
//! sync trigger's single permit, a burst of 1,000 webhooks costs a handful of fetches, and
//! never loses the last one.

use super::AppState;
use crate::config::Config;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::time::Instant;

type HmacSha256 = Hmac<Sha256>;

/// Largest accepted webhook body (1 MiB); GitHub caps its payloads at 25 MB but a push
/// payload is a few KiB, and Kiln reads nothing but `ref` from it.
pub const MAX_BODY: usize = 1024 * 1024;

/// How far `X-Kiln-Timestamp` may be from now, either way (5 minutes).
pub const GENERIC_WINDOW_SECS: i64 = 300;

/// How long a GitHub/Gitea signature (which signs no timestamp) is remembered.
pub const REPLAY_TTL: Duration = Duration::from_secs(3600);

/// At most this many remembered signatures; the oldest is forgotten first.
pub const REPLAY_CAPACITY: usize = 100_000;

/// At most one webhook-triggered look per this interval; later ones wait and coalesce.
pub const MIN_FETCH_GAP: Duration = Duration::from_secs(1);

/// The webhook flavours Kiln understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
    Generic,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::GitHub,
        Provider::GitLab,
        Provider::Gitea,
        Provider::Generic,
    ];

    /// The name used in routes, config keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Generic => "generic",
        }
    }

    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A webhook secret. Never printed: `Debug` shows `Secret(***)`.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// A secret from bytes; surrounding whitespace (the newline an editor or `echo` adds) is
    /// not part of it. Empty → `None`.
    pub fn new(bytes: &[u8]) -> Option<Secret> {
        let text = bytes.trim_ascii();
        (!text.is_empty()).then(|| Secret(text.to_vec()))
    }

    /// Reads a secret file (trimmed, must not be empty).
    pub fn from_file(path: &Path) -> Result<Secret, HookError> {
        let bytes = std::fs::read(path).map_err(|source| HookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Secret::new(&bytes).ok_or_else(|| HookError::Empty {
            path: path.to_path_buf(),
        })
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

#[derive(Debug, Error)]
pub enum HookError {
    #[error("cannot read webhook secret file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook secret file {path} is empty")]
    Empty { path: PathBuf },
    #[error("KILN_WEBHOOK_SECRET is set but empty")]
    EmptyEnv,
    #[error(
        "unknown webhook provider `{0}` in webhook_secret_files (expected github, gitlab, gitea or generic)"
    )]
    UnknownProvider(String),
}

/// Why a webhook was refused. The text goes to the log and the `401` body; it never holds a
/// secret or a signature.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("signature does not match")]
    BadSignature,
    #[error("token does not match")]
    BadToken,
    #[error("timestamp is {0} s away from now (allowed: {GENERIC_WINDOW_SECS} s)")]
    Stale(i64),
    #[error("signature was already used (replay)")]
    Replayed,
}

/// Signatures seen recently, each with the time after which it may be forgotten.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl ReplayCache {
    /// Records `sig` until `expires`; `false` if it is already known (a replay).
    fn insert(&mut self, sig: [u8; 32], expires: Instant, now: Instant) -> bool {
        while let Some((old, at)) = self.order.front().copied() {
            if at > now && self.order.len() < REPLAY_CAPACITY {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
            }
        }
        if self.seen.get(&sig).is_some_and(|&at| at > now) {
            return false;
        }
        self.seen.insert(sig, expires);
        self.order.push_back((sig, expires));
        true
    }
}

/// Rate limit for webhook-triggered looks: at most one per `min_gap`, the rest coalesced
/// into one deferred trigger.
#[derive(Debug)]
pub struct FetchGate {
    min_gap: Duration,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    last: Option<Instant>,
    deferred: bool,
}

/// What [`FetchGate::request`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateOutcome {
    /// The sync loop was triggered now.
    Now,
    /// A trigger is scheduled at the end of the current gap (this request joined it).
    Deferred,
}

impl FetchGate {
    pub fn new(min_gap: Duration) -> FetchGate {
        FetchGate {
            min_gap,
            state: Mutex::default(),
        }
    }

    /// Triggers `trigger` now, or once at the end of the gap. Needs a tokio runtime.
    pub fn request(self: &Arc<Self>, trigger: &Arc<Notify>) -> GateOutcome {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.deferred {
            return GateOutcome::Deferred;
        }
        let now = Instant::now();
        match state.last {
            Some(last) if now < last + self.min_gap => {
                state.deferred = true;
                let at = last + self.min_gap;
                let (gate, trigger) = (Arc::clone(self), Arc::clone(trigger));
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    {
                        let mut state = gate.state.lock().unwrap_or_else(|e| e.into_inner());
                        state.deferred = false;
                        state.last = Some(Instant::now());
                    }
                    trigger.notify_one();
                });
                GateOutcome::Deferred
            }
            _ => {
                state.last = Some(now);
                trigger.notify_one();
                GateOutcome::Now
            }
        }
    }
}

/// Webhook configuration and state of one Kiln process.
#[derive(Debug)]
pub struct Webhooks {
    secrets: BTreeMap<Provider, Secret>,
    branch: String,
    replay: Mutex<ReplayCache>,
    gate: Arc<FetchGate>,
}

impl Default for Webhooks {
    /// No secrets: every webhook route answers `404`.
    fn default() -> Self {
        Webhooks::new("main", BTreeMap::new())
    }
}

impl Webhooks {
    /// Webhooks following `branch`, with a secret per enabled provider.
    pub fn new(branch: &str, secrets: BTreeMap<Provider, Secret>) -> Webhooks {
        Webhooks {
            secrets,
            branch: branch.to_string(),
            replay: Mutex::default(),
            gate: Arc::new(FetchGate::new(MIN_FETCH_GAP)),
        }
    }

    /// Secrets from the config and the environment: `webhook_secret_files.<provider>` beats
    /// `KILN_WEBHOOK_SECRET` (`env_secret`) beats `webhook_secret_file`. No secret at all
    /// leaves webhooks disabled.
    pub fn load(config: &Config, env_secret: Option<&str>) -> Result<Webhooks, HookError> {
        let shared = match env_secret {
            Some(value) => Some(Secret::new(value.as_bytes()).ok_or(HookError::EmptyEnv)?),
            None => match &config.webhook_secret_file {
                Some(path) => Some(Secret::from_file(path)?),
                None => None,
            },
        };
        let mut secrets = BTreeMap::new();
        for (name, path) in &config.webhook_secret_files {
            let provider =
                Provider::parse(name).ok_or_else(|| HookError::UnknownProvider(name.clone()))?;
            secrets.insert(provider, Secret::from_file(path)?);
        }
        if let Some(shared) = shared {
            for provider in Provider::ALL {
                secrets.entry(provider).or_insert_with(|| shared.clone());
            }
        }
        Ok(Webhooks::new(&config.branch, secrets))
    }

    /// Providers with a secret, i.e. enabled routes.
    pub fn providers(&self) -> Vec<&'static str> {
        self.secrets.keys().map(|p| p.name()).collect()
    }

    /// Checks the proof of a webhook (and records its signature against replays).
    pub fn verify(
        &self,
        provider: Provider,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), Rejection> {
        let Some(secret) = self.secrets.get(&provider) else {
            return Err(Rejection::Missing("secret"));
        };
        let now = Instant::now();
        match provider {
            Provider::GitLab => {
                let token = header(headers, "X-Gitlab-Token")?;
                let expected = Sha256::digest(&secret.0);
                let got = Sha256::digest(token.as_bytes());
                if bool::from(expected.ct_eq(&got)) {
                    Ok(())
                } else {
                    Err(Rejection::BadToken)
                }
            }
            Provider::GitHub => {
                let name = "X-Hub-Signature-256";
                let value = header(headers, name)?;
                let hex = value
                    .strip_prefix("sha256=")
                    .ok_or(Rejection::Malformed(name))?;
                let sig = decode_sig(hex, name)?;
                check_mac(secret.mac(), &[body], &sig)?;
                self.remember(sig, now + REPLAY_TTL, now)
            }
            Provider::Gitea => {
                let name = "X-Gitea-Signature";
                let value = header(headers, name)
                    .or_else(|_| header(headers, "X-Forgejo-Signature"))
                    .map_err(|_| Rejection::Missing(name))?;
                let sig = decode_sig(value.strip_prefix("sha256=").unwrap_or(value), name)?;
                check_mac(secret.mac(), &[body], &sig)?;
                self.remember(sig, now + REPLAY_TTL, now)
            }
            Provider::Generic => {
                let ts_name = "X-Kiln-Timestamp";
                let ts_text = header(headers, ts_name)?;
                let ts: i64 = ts_text
                    .trim()
                    .parse()
                    .map_err(|_| Rejection::Malformed(ts_name))?;
                let name = "X-Kiln-Signature";
                let value = header(headers, name)?;
                let hex = value
                    .strip_prefix("sha256=")
                    .ok_or(Rejection::Malformed(name))?;
                let sig = decode_sig(hex, name)?;
                // Signature first: an unauthenticated caller learns nothing about the clock.
                check_mac(secret.mac(), &[ts_text.trim().as_bytes(), body], &sig)?;
                let skew = now_unix.saturating_sub(ts);
                if skew.abs() > GENERIC_WINDOW_SECS {
                    return Err(Rejection::Stale(skew));
                }
                // Remembered until the timestamp leaves the window (plus a margin).
                let left = (ts + GENERIC_WINDOW_SECS - now_unix).clamp(0, 2 * GENERIC_WINDOW_SECS);
                self.remember(sig, now + Duration::from_secs(left as u64 + 1), now)
            }
        }
    }

    fn remember(&self, sig: [u8; 32], expires: Instant, now: Instant) -> Result<(), Rejection> {
        let mut cache = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if cache.insert(sig, expires, now) {
            Ok(())
        } else {
            Err(Rejection::Replayed)
        }
    }

    /// After a successful check: does this delivery concern the followed branch? `Err` holds
    /// the reason it is ignored. Anything Kiln cannot tell counts as relevant (a look is cheap
    /// and harmless).
    fn relevance(
        &self,
        provider: Provider,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Ignored> {
        let event = match provider {
            Provider::GitHub => header(headers, "X-GitHub-Event").ok(),
            Provider::Gitea => header(headers, "X-Gitea-Event")
                .or_else(|_| header(headers, "X-Forgejo-Event"))
                .ok(),
            Provider::GitLab => header(headers, "X-Gitlab-Event").ok(),
            Provider::Generic => None,
        };
        if let Some(event) = event {
            let event = event.to_ascii_lowercase();
            if event == "ping" {
                return Err(Ignored::Ping);
            }
            let push = matches!(event.as_str(), "push" | "push hook" | "system hook");
            if !push {
                return Err(Ignored::Event(event));
            }
        }
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(());
        };
        let mut refs: Vec<&str> = Vec::new();
        if let Some(r) = json.get("ref").and_then(|r| r.as_str()) {
            refs.push(r);
        }
        if let Some(list) = json.get("refs").and_then(|r| r.as_array()) {
            refs.extend(list.iter().filter_map(|r| r.as_str()));
        }
        if refs.is_empty() {
            return Ok(());
        }
        let full = format!("refs/heads/{}", self.branch);
        if refs.iter().any(|r| *r == full || *r == self.branch) {
            Ok(())
        } else {
            Err(Ignored::Branch(refs.join(", ")))
        }
    }
}

/// Why an authentic webhook asks for nothing.
#[derive(Debug)]
enum Ignored {
    Ping,
    Event(String),
    Branch(String),
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, Rejection> {
    let value = headers.get(name).ok_or(Rejection::Missing(name))?;
    value.to_str().map_err(|_| Rejection::Malformed(name))
}

fn decode_sig(hex_text: &str, name: &'static str) -> Result<[u8; 32], Rejection> {
    let mut sig = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut sig).map_err(|_| Rejection::Malformed(name))?;
    Ok(sig)
}

fn check_mac(mut mac: HmacSha256, parts: &[&[u8]], sig: &[u8; 32]) -> Result<(), Rejection> {
    for part in parts {
        mac.update(part);
    }
    // `verify_slice` compares in constant time.
    mac.verify_slice(sig).map_err(|_| Rejection::BadSignature)
}

/// `sha256=HEX` of HMAC-SHA256(secret, timestamp ‖ body): the `X-Kiln-Signature` value for
/// an `X-Kiln-Timestamp` of `timestamp` (decimal unix seconds).
pub fn sign_generic(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(timestamp.to_string().as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha256=HEX` of HMAC-SHA256(secret, body), as GitHub sends it (Gitea sends the bare HEX).
pub fn sign_body(secret: &Secret, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(super) async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(Provider::GitHub, state, headers, body).await
}

pub(super) async fn gitlab(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(Provider::GitLab, state, headers, body).await
}

pub(super) async fn gitea(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(Provider::Gitea, state, headers, body).await
}

pub(super) async fn generic(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(Provider::Generic, state, headers, body).await
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn receive(provider: Provider, state: AppState, headers: HeaderMap, body: Body) -> Response {
    let hooks = &state.webhooks;
    let name = provider.name();
    let rejected = || {
        state
            .counters
            .webhooks_rejected
            .fetch_add(1, Ordering::Relaxed)
    };
    if !hooks.secrets.contains_key(&provider) {
        rejected();
        tracing::warn!(
            provider = name,
            "webhook refused: no webhook secret configured for this provider"
        );
        return reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("{name} webhooks are not enabled (no webhook secret configured)") }),
        );
    }
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            rejected();
            tracing::warn!(
                provider = name,
                limit = MAX_BODY,
                "webhook refused: body too large or unreadable"
            );
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "error": format!("body larger than {MAX_BODY} bytes") }),
            );
        }
    };
    if let Err(rejection) = hooks.verify(provider, &headers, &body, crate::model::now()) {
        rejected();
        tracing::warn!(provider = name, reason = %rejection, "webhook rejected");
        return reply(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": rejection.to_string() }),
        );
    }
    state
        .counters
        .webhooks_accepted
        .fetch_add(1, Ordering::Relaxed);
    match hooks.relevance(provider, &headers, &body) {
        Ok(()) => {
            let outcome = hooks.gate.request(&state.sync_trigger);
            tracing::info!(
                provider = name,
                ?outcome,
                "webhook accepted; fetch requested"
            );
            reply(
                StatusCode::ACCEPTED,
                serde_json::json!({ "status": "queued", "branch": hooks.branch }),
            )
        }
        Err(Ignored::Ping) => {
            tracing::info!(provider = name, "webhook ping");
            reply(StatusCode::OK, serde_json::json!({ "status": "pong" }))
        }
        Err(Ignored::Event(event)) => {
            tracing::info!(provider = name, event, "webhook ignored: not a push");
            reply(
                StatusCode::ACCEPTED,
                serde_json::json!({ "status": "ignored", "reason": format!("event `{event}` is not a push") }),
            )
        }
        Err(Ignored::Branch(refs)) => {
            tracing::info!(provider = name, refs, branch = %hooks.branch, "webhook ignored: another branch");
            reply(
                StatusCode::ACCEPTED,
                serde_json::json!({
                    "status": "ignored",
                    "reason": format!("push to {refs}; following {}", hooks.branch),
                }),
            )
        }
    }
}

// ---- the client: `kiln notify` ----

/// What the server answered to `kiln notify`.
#[derive(Debug)]
pub struct NotifyResponse {
    pub status: u16,
    pub reason: String,
    pub body: String,
}

impl NotifyResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, Error)]
pub enum NotifyError {
    #[error(
        "unsupported URL `{0}`: kiln notify speaks http:// and https:// (e.g. https://kiln.internal:8080; the path defaults to /hooks/generic)"
    )]
    Url(String),
    #[error(transparent)]
    Http(#[from] crate::http_client::HttpError),
}

/// The webhook URL for `url`: an http(s) address of a running Kiln, where a bare address
/// (no path, or `/`) means `/hooks/generic`.
fn notify_url(url: &str) -> Result<reqwest::Url, NotifyError> {
    let mut target = crate::http_client::parse_url(url)
        .map_err(|_| NotifyError::Url(crate::repo::redact(url)))?;
    if target.path() == "/" {
        target.set_path("/hooks/generic");
    }
    Ok(target)
}

/// Sends one signed generic webhook (`POST`, over http or https) saying that `refs` changed;
/// an empty `refs` means "look, whatever changed". `timeout` bounds the whole exchange.
pub async fn notify(
    url: &str,
    secret: &Secret,
    refs: &[String],
    timeout: Duration,
) -> Result<NotifyResponse, NotifyError> {
    use crate::http_client::{ClientOptions, HttpClient, body_text};
    let target = notify_url(url)?;
    let mut payload = serde_json::json!({ "source": "kiln notify" });
    if !refs.is_empty() {
        payload["refs"] = serde_json::json!(refs);
    }
    let body = serde_json::to_vec(&payload).expect("JSON of strings");
    let timestamp = crate::model::now();
    let signature = sign_generic(secret, timestamp, &body);
    let client = HttpClient::new(&ClientOptions {
        connect_timeout: timeout,
        ..ClientOptions::default()
    })?;
    let request = client
        .request(reqwest::Method::POST, target)
        .header("content-type", "application/json")
        .header("x-kiln-timestamp", timestamp.to_string())
        .header("x-kiln-signature", signature)
        .body(body);
    let response = client.send(request, Some(timeout)).await?;
    let status = response.status();
    let body = tokio::time::timeout(timeout, body_text(response, 64 * 1024))
        .await
        .unwrap_or_else(|_| Ok(String::new()))?;
    Ok(NotifyResponse {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or_default().to_string(),
        body: body.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn hooks() -> Webhooks {
        let secret = Secret::new(b"It's a Secret to Everybody\n").unwrap();
        let secrets = Provider::ALL
            .map(|p| (p, secret.clone()))
            .into_iter()
            .collect();
        Webhooks::new("main", secrets)
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn github_documented_example_verifies() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into(),
        )]);
        let hooks = hooks();
        assert_eq!(
            hooks.verify(Provider::GitHub, &h, b"Hello, World!", 0),
            Ok(())
        );
        assert_eq!(
            hooks.verify(Provider::GitHub, &h, b"Hello, World!", 0),
            Err(Rejection::Replayed)
        );
        assert_eq!(
            hooks.verify(Provider::GitHub, &h, b"Hello, World?", 0),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn every_provider_refuses_missing_malformed_and_wrong_proofs() {
        let hooks = hooks();
        let body = br#"{"ref":"refs/heads/main"}"#;
        for p in Provider::ALL {
            assert!(
                matches!(
                    hooks.verify(p, &HeaderMap::new(), body, 1000),
                    Err(Rejection::Missing(_))
                ),
                "{p:?}"
            );
        }
        let zero = "0".repeat(64);
        assert_eq!(
            hooks.verify(
                Provider::GitHub,
                &headers(&[("x-hub-signature-256", format!("sha256={zero}"))]),
                body,
                0
            ),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            hooks.verify(
                Provider::GitHub,
                &headers(&[("x-hub-signature-256", zero.clone())]),
                body,
                0
            ),
            Err(Rejection::Malformed("X-Hub-Signature-256"))
        );
        assert_eq!(
            hooks.verify(
                Provider::Gitea,
                &headers(&[("x-gitea-signature", "zz".into())]),
                body,
                0
            ),
            Err(Rejection::Malformed("X-Gitea-Signature"))
        );
        assert_eq!(
            hooks.verify(
                Provider::GitLab,
                &headers(&[("x-gitlab-token", "It's a Secret to Everybod".into())]),
                body,
                0
            ),
            Err(Rejection::BadToken)
        );
        assert_eq!(
            hooks.verify(
                Provider::GitLab,
                &headers(&[("x-gitlab-token", "It's a Secret to Everybody".into())]),
                body,
                0
            ),
            Ok(())
        );
    }

    #[test]
    fn gitea_signature_is_bare_hex() {
        let hooks = hooks();
        let secret = Secret::new(b"It's a Secret to Everybody").unwrap();
        let body = b"{}";
        let sig = sign_body(&secret, body);
        let bare = sig.trim_start_matches("sha256=").to_string();
        assert_eq!(
            hooks.verify(
                Provider::Gitea,
                &headers(&[("x-gitea-signature", bare)]),
                body,
                0
            ),
            Ok(())
        );
    }

    #[test]
    fn generic_checks_signature_window_and_replay() {
        let hooks = hooks();
        let secret = Secret::new(b"It's a Secret to Everybody").unwrap();
        let body = b"{}";
        let now = 1_800_000_000;
        let signed = |ts: i64| {
            headers(&[
                ("x-kiln-timestamp", ts.to_string()),
                ("x-kiln-signature", sign_generic(&secret, ts, body)),
            ])
        };
        assert_eq!(
            hooks.verify(Provider::Generic, &signed(now - 10), body, now),
            Ok(())
        );
        assert_eq!(
            hooks.verify(Provider::Generic, &signed(now - 10), body, now),
            Err(Rejection::Replayed)
        );
        assert_eq!(
            hooks.verify(Provider::Generic, &signed(now - 301), body, now),
            Err(Rejection::Stale(301))
        );
        assert_eq!(
            hooks.verify(Provider::Generic, &signed(now + 301), body, now),
            Err(Rejection::Stale(-301))
        );
        assert_eq!(
            hooks.verify(Provider::Generic, &signed(now + 299), body, now),
            Ok(())
        );
        // The timestamp is signed: moving it breaks the signature.
        let mut moved = signed(now);
        moved.insert("x-kiln-timestamp", HeaderValue::from(now + 1));
        assert_eq!(
            hooks.verify(Provider::Generic, &moved, body, now),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new(b"hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{:?}", hooks()).contains("Everybody"));
        assert!(Secret::new(b" \n").is_none());
    }

    #[test]
    fn branch_filter_reads_ref_and_refs() {
        let hooks = hooks();
        let none = HeaderMap::new();
        let check = |h: &HeaderMap, p, body: &str| hooks.relevance(p, h, body.as_bytes());
        assert!(check(&none, Provider::Generic, r#"{"ref":"refs/heads/main"}"#).is_ok());
        assert!(
            check(
                &none,
                Provider::Generic,
                r#"{"refs":["refs/heads/x","main"]}"#
            )
            .is_ok()
        );
        assert!(check(&none, Provider::Generic, "not json").is_ok());
        assert!(check(&none, Provider::Generic, "{}").is_ok());
        assert!(matches!(
            check(&none, Provider::Generic, r#"{"ref":"refs/heads/dev"}"#),
            Err(Ignored::Branch(_))
        ));
        assert!(matches!(
            check(&none, Provider::Generic, r#"{"ref":"refs/heads/main2"}"#),
            Err(Ignored::Branch(_))
        ));
        let ping = headers(&[("x-github-event", "ping".into())]);
        assert!(matches!(
            check(&ping, Provider::GitHub, "{}"),
            Err(Ignored::Ping)
        ));
        let pr = headers(&[("x-github-event", "pull_request".into())]);
        assert!(matches!(
            check(&pr, Provider::GitHub, "{}"),
            Err(Ignored::Event(_))
        ));
        let push = headers(&[("x-gitlab-event", "Push Hook".into())]);
        assert!(check(&push, Provider::GitLab, r#"{"ref":"refs/heads/main"}"#).is_ok());
    }

    #[test]
    fn replay_cache_forgets_expired_entries() {
        let mut cache = ReplayCache::default();
        let t0 = Instant::now();
        assert!(cache.insert([1; 32], t0 + Duration::from_secs(5), t0));
        assert!(!cache.insert([1; 32], t0 + Duration::from_secs(5), t0));
        let later = t0 + Duration::from_secs(6);
        assert!(cache.insert([1; 32], later + Duration::from_secs(5), later));
        assert_eq!(cache.seen.len(), 1);
    }

    #[tokio::test]
    async fn gate_coalesces_a_burst_into_two_triggers() {
        let gap = Duration::from_millis(300);
        let gate = Arc::new(FetchGate::new(gap));
        let trigger = Arc::new(Notify::new());
        let started = Instant::now();
        assert_eq!(gate.request(&trigger), GateOutcome::Now);
        trigger.notified().await;
        for _ in 0..1000 {
            assert_eq!(gate.request(&trigger), GateOutcome::Deferred);
        }
        // Exactly one more trigger, not before the gap ends.
        tokio::time::timeout(Duration::from_secs(5), trigger.notified())
            .await
            .expect("the deferred trigger fires at the end of the gap");
        assert!(started.elapsed() >= gap);
        assert!(
            tokio::time::timeout(gap * 2, trigger.notified())
                .await
                .is_err(),
            "more than one deferred trigger"
        );
        // After a quiet gap, the next request goes through at once.
        assert_eq!(gate.request(&trigger), GateOutcome::Now);
    }

    #[test]
    fn urls_for_notify() {
        assert_eq!(
            notify_url("http://127.0.0.1:8080").unwrap().as_str(),
            "http://127.0.0.1:8080/hooks/generic"
        );
        assert_eq!(
            notify_url("https://kiln.internal/").unwrap().as_str(),
            "https://kiln.internal/hooks/generic"
        );
        assert_eq!(
            notify_url("http://[::1]:9/x").unwrap().as_str(),
            "http://[::1]:9/x"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@host/",
            "http://h:port/",
            "kiln:8080",
        ] {
            assert!(matches!(notify_url(bad), Err(NotifyError::Url(_))), "{bad}");
        }
        let e = notify_url("ftp://u:hunter2@x/").unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("https://"), "{e}");
    }

    /// `kiln notify`'s client against the generic route of a server on a port of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notify_is_accepted_with_the_secret_and_refused_without() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"It's a Secret to Everybody").unwrap();
        let trigger = Arc::new(Notify::new());
        let state = AppState::new(
            crate::store::Store::open(dir.path()).unwrap(),
            super::super::AppInfo::default(),
            Webhooks::new("main", [(Provider::Generic, secret.clone())].into()),
            Arc::clone(&trigger),
            Arc::default(),
            tokio_util::sync::CancellationToken::new(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = state.shutdown.clone();
        let server = tokio::spawn(super::super::serve(
            listener,
            state.clone(),
            shutdown.clone(),
        ));
        let timeout = Duration::from_secs(20);

        let answer = notify(&url, &secret, &["refs/heads/main".into()], timeout)
            .await
            .unwrap();
        assert_eq!((answer.status, answer.reason.as_str()), (202, "Accepted"));
        assert!(
            answer.is_success() && answer.body.contains("queued"),
            "{answer:?}"
        );
        trigger.notified().await;

        let wrong = Secret::new(b"wrong").unwrap();
        let answer = notify(&url, &wrong, &[], timeout).await.unwrap();
        assert_eq!(answer.status, 401);
        assert!(
            answer.body.contains("signature does not match"),
            "{answer:?}"
        );
        let counters = &state.counters;
        assert_eq!(counters.webhooks_accepted.load(Ordering::Relaxed), 1);
        assert_eq!(counters.webhooks_rejected.load(Ordering::Relaxed), 1);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
