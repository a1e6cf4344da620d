//! One image build on a Docker Engine's embedded BuildKit.
//!
//! First the build's session is opened (`session_server.rs`): its auth service answers
//! BuildKit's credential requests for a registry host with the credential of that host only,
//! and its secrets service gives a `RUN --mount=type=secret,id=ID` step the secret `ID` of
//! this build and no other, so passwords and secrets reach BuildKit in memory, never as files
//! on the worker, build arguments or layers, and a credential never travels towards another
//! registry. Then the request goes to the Engine's `/build` with `version=2` (BuildKit) and
//! that session's id (`build_request.rs`), on a connection of its own. The build runs on a
//! thread and runtime of its own ([`super::session`]), which is how its session ends with it.
//! Secret values and credentials are scrubbed from every log line and error.
//!
//! What the Engine sends back is BuildKit's solve status, rendered into log lines by
//! [`super::progress`], and at the end the image id (`moby.image.id`). A build fails on
//! three channels as with the classic builder (an HTTP error before the stream, an error
//! inside it, a stream that ends without an image id); the failing step, as BuildKit names
//! it, leads the error.
//!
//! Cancelling drops the request (its connection is closed): the Engine sees its client go
//! away and cancels the solve, which stops the running step.
//!
//! Facts of Engine 20.10 this follows: no `# syntax=` line may be needed (the Dockerfile
//! frontend built into the Engine is used; a `# syntax=` line would pull one from Docker
//! Hub); the embedded BuildKit exports inline cache only (`BUILDKIT_INLINE_CACHE=1` here),
//! which a later build on any Engine imports through `cache_from` of the pushed image; it
//! clips step output (2 MiB, 200 KiB/s) unless dockerd runs with `BUILDKIT_STEP_LOG_MAX_SIZE`
//! and `BUILDKIT_STEP_LOG_MAX_SPEED` raised — to large numbers, not -1, which this BuildKit
//! takes literally (docs/operations.md).

use super::build_request::{BuildQuery, JsonLines, engine_message};
use super::engine_conn::{self, hyper_message};
use super::progress::Progress;
use super::secret::{BuildSecret, check_ids, redactable};
use super::session::{LineSender, isolated};
use super::session_server;
use super::session_services::Services;
use crate::docker::auth::{Credential, registry_of};
use crate::docker::{
    BuiltImage, EngineEndpoint, EngineError, LogSink, Transport, bollard_message, build_context,
    client,
};
use bollard::errors::Error as BollardError;
use bollard::models::{BuildInfoAux, ImageId};
use bollard::query_parameters::TagImageOptionsBuilder;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// The build argument that makes Engine 20.10's BuildKit write its cache into the image.
pub const INLINE_CACHE_ARG: &str = "BUILDKIT_INLINE_CACHE";

/// What to build. `Default` gives an empty request, so callers can write
/// `BuildkitRequest { dockerfile, tags, ..Default::default() }`.
#[derive(Clone, Copy, Default)]
pub struct BuildkitRequest<'a> {
    /// The Dockerfile text (the context holds it as `Dockerfile`).
    pub dockerfile: &'a str,
    /// A CA bundle, put into the context as [`CA_BUNDLE_CONTEXT_NAME`].
    pub ca_bundle: Option<&'a [u8]>,
    /// Every tag to apply; the first is the build's `t`, the others are added after success.
    pub tags: &'a [String],
    /// Credentials BuildKit may ask for, each answered only for its own registry host: the
    /// `FROM` image's registry and the registry of `cache_from`.
    pub credentials: &'a [Credential],
    /// Network mode for `RUN` steps (`None`: the Engine's default).
    pub network: Option<&'a str>,
    /// Build arguments (`ARG`), as `docker build --build-arg`.
    pub build_args: &'a [(String, String)],
    /// Labels added to the image, as `docker build --label` (Kiln's own labels are in the
    /// rendered Dockerfile).
    pub labels: &'a [(String, String)],
    /// Images whose inline cache the build may use (`docker build --cache-from`). Only
    /// references that name a registry are used: anything else would send BuildKit to
    /// Docker Hub.
    pub cache_from: &'a [String],
    /// Write the build cache into the image (`BUILDKIT_INLINE_CACHE=1`), for a later
    /// `cache_from` of it once pushed.
    pub inline_cache: bool,
    /// Build secrets, each readable by a `RUN --mount=type=secret,id=ID` step through the
    /// build's session and nowhere else (not a layer, the history, the config or the log).
    pub secrets: &'a [BuildSecret],
}

impl std::fmt::Debug for BuildkitRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildkitRequest")
            .field("dockerfile_bytes", &self.dockerfile.len())
            .field("ca_bundle_bytes", &self.ca_bundle.map(<[u8]>::len))
            .field("tags", &self.tags)
            .field("credentials", &self.credentials)
            .field("network", &self.network)
            .field("build_args", &self.build_args)
            .field("labels", &self.labels)
            .field("cache_from", &self.cache_from)
            .field("inline_cache", &self.inline_cache)
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// Builds `req` with the BuildKit of the Engine at `endpoint` and returns the image id.
///
/// Every line of BuildKit's progress goes to `log` (see [`super::progress`]), with
/// backpressure: the Engine's stream is read no faster than `log` takes lines. When `cancel`
/// fires, the request is dropped, the Engine cancels the solve and
/// [`EngineError::Cancelled`] follows. The call returns only once the build's session and
/// connections are closed.
pub async fn build(
    endpoint: &EngineEndpoint,
    req: &BuildkitRequest<'_>,
    log: &mut dyn LogSink,
    cancel: &CancellationToken,
) -> Result<BuiltImage, EngineError> {
    let transport = endpoint.resolve(|name| std::env::var(name).ok())?;
    build_on(&transport, req, log, cancel).await
}

/// [`build`] on an Engine whose endpoint is already resolved (an [`crate::docker::Engine`]
/// keeps its own).
pub async fn build_on(
    transport: &Transport,
    req: &BuildkitRequest<'_>,
    log: &mut dyn LogSink,
    cancel: &CancellationToken,
) -> Result<BuiltImage, EngineError> {
    if req.tags.is_empty() {
        return Err(EngineError::Other("a build needs at least one tag".into()));
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    check_ids(req.secrets).map_err(EngineError::Other)?;
    let transport = transport.clone();
    let context = build_context(req.dockerfile, req.ca_bundle)
        .map_err(|e| EngineError::Other(format!("cannot assemble the build context: {e}")))?;
    let mut cache_from = Vec::new();
    for image in req.cache_from {
        if names_a_registry(image) {
            cache_from.push(image.clone());
        } else {
            log.line(format!(
                "note: not using {image} as a cache source: it names no registry"
            ));
        }
    }
    let job = Job {
        transport,
        context,
        tags: req.tags.to_vec(),
        credentials: req.credentials.to_vec(),
        network: req.network.filter(|n| !n.is_empty()).map(str::to_owned),
        build_args: req.build_args.to_vec(),
        labels: req.labels.to_vec(),
        cache_from,
        inline_cache: req.inline_cache,
        secrets: req.secrets.to_vec(),
        from_registry: first_from_image(req.dockerfile)
            .map(registry_of)
            .unwrap_or_default(),
    };
    let cancel = cancel.clone();
    isolated(
        "kiln-buildkit",
        move |lines| async move { job.run(lines, cancel).await },
        log,
    )
    .await
}

/// Everything a build needs, owned, to move onto its thread.
struct Job {
    transport: Transport,
    context: Vec<u8>,
    tags: Vec<String>,
    credentials: Vec<Credential>,
    network: Option<String>,
    build_args: Vec<(String, String)>,
    labels: Vec<(String, String)>,
    cache_from: Vec<String>,
    inline_cache: bool,
    secrets: Vec<BuildSecret>,
    /// The registry of the first `FROM` image, to name it in an access error.
    from_registry: String,
}

/// How the stream of a build ended.
enum Ended {
    Done,
    Failed(Failure),
    Cancelled,
}

impl Job {
    async fn run(
        self,
        lines: LineSender,
        cancel: CancellationToken,
    ) -> Result<BuiltImage, EngineError> {
        let endpoint = self.transport.host().to_string();
        let session = session_id();
        let mut build_args: BTreeMap<String, String> = self.build_args.iter().cloned().collect();
        if self.inline_cache {
            build_args.insert(INLINE_CACHE_ARG.to_string(), "1".to_string());
        }
        let labels: BTreeMap<String, String> = self.labels.iter().cloned().collect();
        let path = BuildQuery {
            session: &session,
            tag: &self.tags[0],
            build_args: &build_args,
            labels: &labels,
            network: self.network.as_deref(),
            cache_from: &self.cache_from,
        }
        .path();
        let mut hidden: Vec<String> = self
            .credentials
            .iter()
            .flat_map(|c| [Some(c.password()), c.identity_token()])
            .flatten()
            .filter(|s| s.len() >= 4)
            .map(str::to_owned)
            .collect();
        hidden.extend(redactable(&self.secrets));
        let redact = |line: String| -> String {
            let mut line = line;
            for secret in &hidden {
                if line.contains(secret.as_str()) {
                    line = line.replace(secret.as_str(), "<redacted>");
                }
            }
            line
        };

        // The session first: the Engine looks the build's session up when the build starts.
        let services = Services::new(&self.credentials, &self.secrets);
        let _session = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(EngineError::Cancelled),
            session = session_server::start(&self.transport, &session, services) => session?,
        };
        let (mut sender, driver) = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(EngineError::Cancelled),
            conn = engine_conn::http1(&self.transport) => conn?,
        };
        // Aborting the connection's driver closes the socket: the Engine cancels the solve.
        let _driver = AbortOnDrop(driver);
        let request = Request::post(path)
            .header("Host", engine_conn::host_header(&self.transport))
            .header("Content-Type", "application/x-tar")
            .body(Full::new(Bytes::from(self.context)))
            .map_err(|e| EngineError::Other(format!("cannot make the build request: {e}")))?;

        let mut progress = Progress::default();
        let mut image_id: Option<String> = None;
        let ended = 'ended: {
            let response = tokio::select! {
                biased;
                _ = cancel.cancelled() => break 'ended Ended::Cancelled,
                response = tokio::time::timeout(
                    engine_conn::ANSWER_TIMEOUT,
                    sender.send_request(request),
                ) => response,
            };
            let response = match response {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => break 'ended Ended::Failed(Failure::Connection(hyper_message(&e))),
                Err(_) => {
                    break 'ended Ended::Failed(Failure::Connection(format!(
                        "the build request got no answer within {} s",
                        engine_conn::ANSWER_TIMEOUT.as_secs()
                    )));
                }
            };
            let status = response.status();
            let mut body = response.into_body();
            if !status.is_success() {
                let text = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break 'ended Ended::Cancelled,
                    text = body.collect() => text.map(|b| b.to_bytes()).unwrap_or_default(),
                };
                break 'ended Ended::Failed(Failure::Http {
                    status: status.as_u16(),
                    message: engine_message(&text),
                });
            }
            let mut decoder = JsonLines::default();
            loop {
                let frame = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break 'ended Ended::Cancelled,
                    frame = body.frame() => frame,
                };
                let (messages, at_end) = match frame {
                    None => (decoder.finish().into_iter().collect(), true),
                    Some(Err(e)) => {
                        break 'ended Ended::Failed(Failure::Connection(hyper_message(&e)));
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => (decoder.push(&data), false),
                        Err(_) => (Vec::new(), false),
                    },
                };
                let mut batch = Vec::new();
                let mut failed = None;
                for message in messages {
                    let (info, error) = match message {
                        Ok(m) => (m.info, m.error),
                        Err(unreadable) => {
                            failed = Some(Failure::Other(unreadable));
                            break;
                        }
                    };
                    if let Some(error) = error {
                        failed = Some(Failure::Stream(error));
                        break;
                    }
                    match info.aux {
                        Some(BuildInfoAux::BuildKit(status)) => {
                            batch.extend(progress.update(&status))
                        }
                        Some(BuildInfoAux::Default(ImageId { id: Some(id) })) if !id.is_empty() => {
                            image_id = Some(id);
                        }
                        _ => {}
                    }
                    if let Some(text) = info.stream.as_deref() {
                        batch.extend(
                            text.lines()
                                .map(str::trim_end)
                                .filter(|l| !l.is_empty())
                                .map(str::to_owned),
                        );
                    }
                }
                let batch = batch.into_iter().map(&redact).collect();
                let sent = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break 'ended Ended::Cancelled,
                    sent = lines.send(batch) => sent,
                };
                if !sent {
                    break 'ended Ended::Cancelled;
                }
                if let Some(failure) = failed {
                    break 'ended Ended::Failed(failure);
                }
                if at_end {
                    break 'ended Ended::Done;
                }
            }
        };
        // Dropping the request is what makes the Engine cancel the solve.
        drop(_driver);
        drop(sender);
        let mut tail: Vec<String> = progress.finish();
        if let Some(f) = progress.failure() {
            tail.push("------".into());
            tail.push(format!(" > {}:", f.step));
            tail.extend(f.tail.iter().map(|l| format!(" {l}")));
            tail.push("------".into());
        }
        lines.send(tail.into_iter().map(&redact).collect()).await;

        match ended {
            Ended::Cancelled => return Err(EngineError::Cancelled),
            Ended::Failed(e) => {
                return Err(failure_error(
                    e,
                    &progress,
                    &endpoint,
                    &self.from_registry,
                    &redact,
                ));
            }
            Ended::Done if cancel.is_cancelled() => return Err(EngineError::Cancelled),
            Ended::Done => {}
        }
        let Some(image_id) = image_id else {
            return Err(EngineError::BuildFailed(match progress.failure() {
                Some(f) => redact(step_message(f)),
                None => "the build output ended without an image id (the Engine reported no error)"
                    .into(),
            }));
        };
        let docker = client(&self.transport)?;
        let first_tag = &self.tags[0];
        let tagged = docker
            .inspect_image(first_tag)
            .await
            .map_err(|e| api_error(e, &endpoint, "inspect"))?;
        match tagged.id {
            Some(id) if id == image_id => {}
            Some(id) => {
                return Err(EngineError::BuildFailed(format!(
                    "the build reported image {image_id} but {first_tag} points at {id}"
                )));
            }
            None => {
                return Err(EngineError::BuildFailed(format!(
                    "the build did not tag {first_tag}"
                )));
            }
        }
        for tag in &self.tags[1..] {
            let (repo, version) = split_reference(tag);
            let options = TagImageOptionsBuilder::default()
                .repo(repo)
                .tag(&version)
                .build();
            docker
                .tag_image(&image_id, Some(options))
                .await
                .map_err(|e| api_error(e, &endpoint, "tag"))?;
        }
        Ok(BuiltImage { image_id })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a build failed before it produced an image.
#[derive(Debug)]
enum Failure {
    /// An error message inside the stream (a failed step, a base image that cannot be pulled).
    Stream(String),
    /// An error status before any stream (a bad Dockerfile, an unknown option).
    Http { status: u16, message: String },
    /// The connection broke.
    Connection(String),
    /// Anything else (a message that cannot be read).
    Other(String),
}

/// The error of a build whose stream failed: the failing step when BuildKit named one.
fn failure_error(
    e: Failure,
    progress: &Progress,
    endpoint: &str,
    from_registry: &str,
    redact: &dyn Fn(String) -> String,
) -> EngineError {
    let message = match e {
        Failure::Stream(error) => error,
        Failure::Http { status, message } => format!("HTTP {status}: {message}"),
        Failure::Connection(message) => {
            return EngineError::Unreachable {
                endpoint: endpoint.to_string(),
                message: redact(message),
            };
        }
        Failure::Other(message) => message,
    };
    let message = redact(match progress.failure() {
        Some(f) => step_message(f),
        None => message.trim().to_string(),
    });
    if !message.contains("exit code:") && looks_like_auth_failure(&message) {
        let registry = if from_registry.is_empty() {
            "of the base image"
        } else {
            from_registry
        };
        EngineError::Auth {
            registry: registry.to_string(),
            message,
        }
    } else {
        EngineError::BuildFailed(message)
    }
}

/// The failing step's error as one line. A process that exited non-zero is also said the
/// classic builder's way ("returned a non-zero code"), which is what tells callers that
/// retrying will not help.
fn step_message(f: &super::progress::Failure) -> String {
    let mut text = f.message();
    if let Some((_, code)) = f.error.rsplit_once("exit code: ") {
        text.push_str(&format!(
            " (the command returned a non-zero code: {})",
            code.trim()
        ));
    }
    text
}

fn looks_like_auth_failure(message: &str) -> bool {
    const PATTERNS: [&str; 7] = [
        "401 unauthorized",
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "access denied",
        "denied: ",
        "403 forbidden",
    ];
    let lower = message.to_ascii_lowercase();
    PATTERNS.iter().any(|p| lower.contains(p))
}

fn is_connection_error(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_)
            | BollardError::HttpClientError { .. }
    )
}

fn api_error(e: BollardError, endpoint: &str, operation: &str) -> EngineError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Api {
            operation: operation.to_string(),
            status: status_code,
            message,
        },
        e if is_connection_error(&e) => EngineError::Unreachable {
            endpoint: endpoint.to_string(),
            message: bollard_message(&e),
        },
        e => EngineError::Other(format!("{operation}: {}", bollard_message(&e))),
    }
}

/// A session id no other build uses at the same time.
fn session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "kiln-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether an image reference starts with a registry host (`host.name/…`, `host:port/…`,
/// `localhost/…`).
fn names_a_registry(image: &str) -> bool {
    image.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// `repo[:tag]` → (repo, tag); no tag means `latest`.
fn split_reference(image: &str) -> (&str, String) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) if i + 1 < image.len() - last_slash => (
            &image[..last_slash + i],
            image[last_slash + i + 1..].to_string(),
        ),
        Some(i) => (&image[..last_slash + i], "latest".to_string()),
        None => (image, "latest".to_string()),
    }
}

/// The image of the first `FROM` line, for naming its registry in messages.
fn first_from_image(dockerfile: &str) -> Option<&str> {
    dockerfile.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let keyword = words.next()?;
        if !keyword.eq_ignore_ascii_case("FROM") {
            return None;
        }
        words.find(|w| !w.starts_with("--"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sources_must_name_a_registry() {
        assert!(names_a_registry("127.0.0.1:5000/kiln/app:latest"));
        assert!(names_a_registry("registry.example.com/app"));
        assert!(names_a_registry("localhost/app"));
        assert!(!names_a_registry("app:latest"));
        assert!(!names_a_registry("library/app"));
    }

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(
            split_reference("127.0.0.1:5000/kiln/a:r3"),
            ("127.0.0.1:5000/kiln/a", "r3".to_string())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/kiln/a"),
            ("127.0.0.1:5000/kiln/a", "latest".to_string())
        );
        assert_eq!(split_reference("app"), ("app", "latest".to_string()));
    }

    #[test]
    fn a_failed_process_says_non_zero_code_and_auth_failures_name_the_registry() {
        use bollard::moby::buildkit::v1::{StatusResponse, Vertex};
        let mut progress = Progress::default();
        progress.update(&StatusResponse {
            vertexes: vec![Vertex {
                digest: "sha256:a".into(),
                name: "[stage-0 2/2] RUN false".into(),
                started: Some(Default::default()),
                completed: Some(Default::default()),
                error: "executor failed running [/bin/sh -c false]: exit code: 1".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let e = failure_error(
            Failure::Stream("executor failed running [/bin/sh -c false]: exit code: 1".into()),
            &progress,
            "unix:///x",
            "127.0.0.1:5001",
            &|s| s,
        );
        let text = e.to_string();
        assert!(text.contains("#1 [stage-0 2/2] RUN false"), "{text}");
        assert!(text.contains("returned a non-zero code: 1"), "{text}");
        assert!(!e.is_transient());

        let e = failure_error(
            Failure::Stream("failed to solve with frontend dockerfile.v0: failed to create LLB definition: unexpected status code [manifests r1]: 401 Unauthorized".into()),
            &Progress::default(),
            "unix:///x",
            "127.0.0.1:5001",
            &|s| s,
        );
        assert!(
            matches!(&e, EngineError::Auth { registry, .. } if registry == "127.0.0.1:5001"),
            "{e:?}"
        );
    }
}
