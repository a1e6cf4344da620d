//! The Docker Engine layer: pull a base image, build a Dockerfile, tag, push, and run a
//! command in a throw-away container.
//!
//! This module knows nothing of git, specs or the store: it takes a Dockerfile and a few
//! parameters and reports what the Engine says through a `log` callback, one whole line at a
//! time.
//!
//! Things about bollard 0.21.1 this module works around (see DESIGN §8):
//!
//! - `build_image` panics without a body: the context is always an in-memory tar.
//! - Build output `stream` chunks are not line aligned: `LineBuffer` re-assembles lines.
//! - A build fails on three channels (HTTP error before the stream, `errorDetail` inside it, a
//!   stream that ends without an image id); all three become [`EngineError`]s.
//! - bollard encodes `X-Registry-Auth` / `X-Registry-Config` with the *standard* base64
//!   alphabet while the Engine decodes them as base64url (`base64.URLEncoding` in moby); a
//!   payload whose encoding holds `+` or `/` is silently dropped by the Engine (an anonymous
//!   pull/push follows). Every request passes through `url_safe_registry_headers`, which
//!   turns those headers into base64url.
//! - `push_image` decodes the Engine's messages into a type without the layer `id`, so a
//!   condensed per-layer log is impossible with it. The push is sent through `create_image`
//!   (whose message type keeps `id`) with the request path rewritten to the push endpoint;
//!   see [`Engine::push`].
//! - Paths are sent without an API version prefix (bollard joins an absolute path onto the
//!   versioned URL), so the Engine answers in its own newest API version; the models are
//!   lenient enough for 20.10 and newer.
//!
//!
//! TCP endpoints speak mutual TLS the way the Docker CLI does (`DOCKER_TLS_VERIFY`,
//! `DOCKER_CERT_PATH` with `ca.pem`, `cert.pem`, `key.pem`), resolved by [`EngineEndpoint`];
//! Kiln always verifies the Engine's certificate (`DOCKER_TLS` without verification is
//! treated as verification, never as a silent downgrade).

use crate::build::auth::{Credential, registry_of};
use crate::build::dockerfile::CA_BUNDLE_CONTEXT_NAME;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{BuildInfo, ContainerCreateBody, CreateImageInfo, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, BuilderVersion,
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, BollardRequest, Docker};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Engine endpoint used when neither the caller nor `DOCKER_HOST` names one.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";
/// How much of a command's stdout [`Engine::run_capture`] keeps.
pub const RUN_CAPTURE_LIMIT: usize = 4 << 20;
/// How long [`Engine::run_capture`] lets a command run.
pub const RUN_CAPTURE_TIMEOUT: Duration = Duration::from_secs(600);
/// Seconds bollard waits for response headers (not for a whole streamed build or push).
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// A line longer than this without a newline is emitted in pieces.
const MAX_LINE: usize = 64 * 1024;

/// Where the Engine layer puts log lines, one whole line per call.
///
/// [`LogSink::ready`] is the backpressure: the build, pull and push loops await it after each
/// Engine message, so a sink that cannot keep up (a store writing to disk) slows the reading
/// of the Engine's stream instead of buffering lines without bound. A closure is a sink that
/// is always ready.
pub trait LogSink: Send {
    /// Takes one line; never blocks.
    fn line(&mut self, line: String);
    /// Resolves once the sink can take more lines without growing past its bound.
    fn ready(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

impl<F: FnMut(String) + Send> LogSink for F {
    fn line(&mut self, line: String) {
        self(line)
    }
}

/// What can go wrong talking to the Engine. Messages never contain registry passwords.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The Engine did not answer (socket missing, connection refused or reset, timeout).
    #[error("Docker Engine unreachable at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    /// The build failed: a bad Dockerfile, a failed `RUN` (the Engine's text, e.g. "The command
    /// '/bin/sh -c …' returned a non-zero code: 100"), or a base image that could not be pulled.
    #[error("build failed: {0}")]
    BuildFailed(String),
    #[error("pull of {image} failed: {message}")]
    PullFailed { image: String, message: String },
    #[error("push of {image} failed: {message}")]
    PushFailed { image: String, message: String },
    /// The registry refused access (no or wrong credentials, or no permission).
    #[error("registry {registry} refused access: {message}")]
    Auth { registry: String, message: String },
    /// The TLS set-up for the endpoint is incomplete or contradictory (a missing `ca.pem`,
    /// `tls_verify` on an `http://` endpoint): fixing the configuration is the only cure.
    #[error("Docker Engine at {endpoint}: {message}")]
    TlsSetup { endpoint: String, message: String },
    /// The operation was cancelled through its token.
    #[error("cancelled")]
    Cancelled,
    /// The image is not in the Engine.
    #[error("no such image: {0}")]
    NoImage(String),
    /// Any other error status from the Engine.
    #[error("Docker Engine error (HTTP {status}) during {operation}: {message}")]
    Api {
        operation: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// Whether trying again later may succeed: the Engine or a registry was unreachable, a
    /// connection broke, a registry answered 5xx or "too many requests". A failed `RUN`, a bad
    /// Dockerfile, a refused credential, a missing image or a cancellation are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            // A certificate the Engine or Kiln refuses will be refused again.
            EngineError::Unreachable { message, .. } => !looks_like_tls_refusal(message),
            EngineError::BuildFailed(message) => {
                !message.contains("returned a non-zero code") && looks_transient(message)
            }
            EngineError::PullFailed { message, .. } | EngineError::PushFailed { message, .. } => {
                looks_transient(message)
            }
            EngineError::Api {
                status, message, ..
            } => *status >= 500 || looks_transient(message),
            EngineError::Other(message) => looks_transient(message),
            EngineError::Auth { .. }
            | EngineError::TlsSetup { .. }
            | EngineError::Cancelled
            | EngineError::NoImage(_) => false,
        }
    }
}

/// A TLS handshake that failed on a certificate (rustls' and Go's words): not network trouble.
fn looks_like_tls_refusal(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "bad certificate",
        "handshake failure",
    ]
    .iter()
    .any(|p| message.contains(p))
        && !message.contains("tls handshake timeout")
}

/// Network trouble and overloaded registries, as the Engine words them.
fn looks_transient(message: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "connection refused",
        "connection reset",
        "broken pipe",
        "i/o timeout",
        "timeout exceeded",
        "tls handshake timeout",
        "context deadline exceeded",
        "no such host",
        "server misbehaving",
        "temporary failure in name resolution",
        "network is unreachable",
        "no route to host",
        "unexpected eof",
        "500 internal server error",
        "502 bad gateway",
        "503 service unavailable",
        "504 gateway",
        "toomanyrequests",
        "too many requests",
    ];
    let lower = message.to_ascii_lowercase();
    PATTERNS.iter().any(|p| lower.contains(p)) || lower.trim_end().ends_with(": eof")
}

/// A registry's refusal, as the Engine words it.
fn looks_like_auth_failure(message: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "access denied",
        "requested access to the resource is denied",
        "denied:",
        "incorrect username or password",
        "401 unauthorized",
        "403 forbidden",
    ];
    let lower = message.to_ascii_lowercase();
    PATTERNS.iter().any(|p| lower.contains(p))
}

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image id, `sha256:…`.
    pub image_id: String,
}

/// A request for the image one build step produced, handed over while the build goes on.
///
/// Kiln uses it to look inside an image before the builder has finished the metadata-only
/// steps (`LABEL`, `USER`) that follow the last `RUN`: they change no file, so the listing
/// of installed packages can run in parallel with them.
#[derive(Debug)]
pub struct StepImage {
    /// 1-based step number, counted like the classic builder's `Step N/M`.
    pub step: usize,
    /// Receives the step's image id (short form, as the builder prints it) when the next step
    /// starts. Dropped unsent when the build ends first, fails, or is not a classic build.
    pub tx: tokio::sync::oneshot::Sender<String>,
}

/// What to build. `Default` gives an empty request, so callers can write
/// `BuildRequest { dockerfile, tags, ..Default::default() }`.
#[derive(Clone, Copy, Default)]
pub struct BuildRequest<'a> {
    /// The Dockerfile text (the context holds it as `Dockerfile`).
    pub dockerfile: &'a str,
    /// A CA bundle, put into the context as [`CA_BUNDLE_CONTEXT_NAME`].
    pub ca_bundle: Option<&'a [u8]>,
    /// Every tag to apply; the first is the build's `t`, the others are added after success.
    pub tags: &'a [String],
    /// Credential for the registry of the `FROM` image (sent as `X-Registry-Config`).
    pub pull_auth: Option<&'a Credential>,
    /// Network mode for `RUN` steps (`None`: the Engine's default bridge; `host` on machines
    /// where the bridge has no route out).
    pub network: Option<&'a str>,
}

impl std::fmt::Debug for BuildRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("dockerfile_bytes", &self.dockerfile.len())
            .field("ca_bundle_bytes", &self.ca_bundle.map(<[u8]>::len))
            .field("tags", &self.tags)
            .field("pull_auth", &self.pull_auth)
            .field("network", &self.network)
            .finish()
    }
}

/// A connection to one Docker Engine.
/// Where the Engine listens and, for TCP, the TLS client files: Kiln's `docker_host`,
/// `docker_tls_verify` and `docker_cert_path` settings. Each unset field falls back to the
/// Docker CLI's environment (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`/`DOCKER_TLS`,
/// `DOCKER_CERT_PATH`), so a machine set up for `docker` works for Kiln unchanged.
#[derive(Clone, Debug, Default)]
pub struct EngineEndpoint {
    /// `unix:///path`, `/path`, `tcp://host:port`, `http://host:port` or `https://host:port`.
    pub host: Option<String>,
    /// Speak mutual TLS to a `tcp://` endpoint. `Some(false)` forces plain HTTP.
    pub tls_verify: Option<bool>,
    /// Directory with `ca.pem`, `cert.pem` and `key.pem` (the Docker CLI's layout). Setting it
    /// asks for TLS on a `tcp://` endpoint unless `tls_verify` is `Some(false)`.
    pub cert_path: Option<PathBuf>,
}

/// The three files of a TLS client, as the Docker CLI names them in its cert directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A resolved [`EngineEndpoint`]: how bollard is to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A unix socket: the endpoint as given, and the socket's path.
    Unix { host: String, path: String },
    /// Plain HTTP over TCP (`tcp://` or `http://` as given).
    Http(String),
    /// Mutual TLS over TCP; `host` is the endpoint as given.
    Tls { host: String, files: TlsFiles },
}

impl Transport {
    /// The endpoint as the operator wrote it, for messages.
    pub fn host(&self) -> &str {
        match self {
            Transport::Unix { host, .. } | Transport::Http(host) | Transport::Tls { host, .. } => {
                host
            }
        }
    }
}

impl EngineEndpoint {
    /// Decides the transport from the fields, else from `env` (the process environment in
    /// production, a map in tests). Fails when TLS is asked for and a client file is missing
    /// or unreadable, when TLS is asked for an `http://` or unix endpoint, and on an unknown
    /// scheme. Nothing is connected yet.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Transport, EngineError> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let host = self
            .host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .or_else(|| set("DOCKER_HOST").map(|h| h.trim().to_owned()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let tls_setup = |message: String| EngineError::TlsSetup {
            endpoint: host.clone(),
            message,
        };
        let env_cert_path = set("DOCKER_CERT_PATH").map(PathBuf::from);
        let wants_tls = match self.tls_verify {
            Some(verify) => verify,
            None => {
                let flag = |name: &str| set(name).is_some_and(|v| v.trim() != "0");
                flag("DOCKER_TLS_VERIFY")
                    || flag("DOCKER_TLS")
                    || self.cert_path.is_some()
                    || env_cert_path.is_some()
            }
        };

        if let Some(path) = host
            .strip_prefix("unix://")
            .or(host.starts_with('/').then_some(host.as_str()))
        {
            if self.tls_verify == Some(true) {
                return Err(tls_setup(
                    "docker_tls_verify is set, but a unix socket does not speak TLS".into(),
                ));
            }
            return Ok(Transport::Unix {
                path: path.to_owned(),
                host,
            });
        }
        let tls = if host.starts_with("https://") {
            if self.tls_verify == Some(false) {
                return Err(tls_setup(
                    "an https:// endpoint needs TLS, but docker_tls_verify is false".into(),
                ));
            }
            true
        } else if host.starts_with("http://") {
            if self.tls_verify == Some(true) {
                return Err(tls_setup(
                    "docker_tls_verify is set for an http:// endpoint; write tcp:// or https://"
                        .into(),
                ));
            }
            false
        } else if host.starts_with("tcp://") {
            wants_tls
        } else {
            return Err(EngineError::Other(format!(
                "unsupported Docker endpoint {host:?} (expected unix:///path, tcp://host:port, http://host:port or https://host:port)"
            )));
        };
        if !tls {
            return Ok(Transport::Http(host));
        }

        let dir = self
            .cert_path
            .clone()
            .or(env_cert_path)
            .or_else(|| set("HOME").map(|home| Path::new(&home).join(".docker")))
            .ok_or_else(|| {
                tls_setup(
                    "TLS needs a cert directory: set docker_cert_path or DOCKER_CERT_PATH".into(),
                )
            })?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        for (role, path) in [
            ("CA certificate", &files.ca),
            ("client certificate", &files.cert),
            ("client key", &files.key),
        ] {
            let text = std::fs::read(path).map_err(|e| {
                tls_setup(format!(
                    "cannot read the TLS {role} {}: {e}",
                    path.display()
                ))
            })?;
            if !text.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(tls_setup(format!(
                    "the TLS {role} {} holds no PEM block",
                    path.display()
                )));
            }
        }
        Ok(Transport::Tls { host, files })
    }
}

#[derive(Clone, Debug)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
}

/// Which Engine operation an error came from, to name it well.
#[derive(Clone, Copy)]
enum Op<'a> {
    Build { registry: &'a str },
    Pull { image: &'a str },
    Push { image: &'a str },
    Other(&'a str),
}

impl Engine {
    /// Connects to `endpoint`, else `DOCKER_HOST`, else [`DEFAULT_ENDPOINT`], with TLS as the
    /// Docker CLI's environment asks for it; see [`Engine::connect_to`].
    pub async fn connect(endpoint: Option<&str>) -> Result<Engine, EngineError> {
        Engine::connect_to(&EngineEndpoint {
            host: endpoint.map(str::to_owned),
            ..EngineEndpoint::default()
        })
        .await
    }

    /// Connects to the Engine `endpoint` describes (see [`EngineEndpoint::resolve`]) and
    /// negotiates the API version: fails when the Engine does not answer.
    pub async fn connect_to(endpoint: &EngineEndpoint) -> Result<Engine, EngineError> {
        let engine = Engine::unverified(endpoint)?;
        let docker =
            engine
                .docker
                .negotiate_version()
                .await
                .map_err(|e| EngineError::Unreachable {
                    endpoint: engine.endpoint.clone(),
                    message: bollard_message(&e),
                })?;
        Ok(Engine { docker, ..engine })
    }

    /// [`Engine::connect_to`] for a controller: waits while the Engine does not answer (e.g.
    /// `dockerd` still starting after a reboot; the caller's jobs stay queued meanwhile) and
    /// says so every minute. An Engine that answers but refuses Kiln's TLS certificate is
    /// taken as it is: every job then fails with the refusal in its `error`, where the
    /// operator sees it. `None` when `shutdown` comes first.
    pub async fn connect_when_ready(
        endpoint: &EngineEndpoint,
        shutdown: &CancellationToken,
    ) -> Option<Engine> {
        let mut delay = Duration::from_millis(500);
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            match Engine::connect_to(endpoint).await {
                Ok(engine) => {
                    if last_warning.is_some() {
                        tracing::info!(endpoint = %engine.endpoint(), "the Docker Engine answers; building");
                    }
                    return Some(engine);
                }
                Err(e) if e.is_transient() => {
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "waiting for the Docker Engine; jobs stay queued");
                        last_warning = Some(std::time::Instant::now());
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the Docker Engine refuses Kiln; jobs will fail until this is fixed");
                    match Engine::unverified(endpoint) {
                        Ok(engine) => return Some(engine),
                        Err(e) => tracing::error!(error = %e, "cannot set up the Engine client"),
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// A client for `endpoint` that has not talked to the Engine yet (no I/O besides reading
    /// the TLS files): for a controller that must start while its Engine is down. Requests
    /// fail with [`EngineError::Unreachable`] until the Engine answers; paths carry no API
    /// version, so nothing depends on the skipped negotiation.
    pub fn unverified(endpoint: &EngineEndpoint) -> Result<Engine, EngineError> {
        let transport = endpoint.resolve(|name| std::env::var(name).ok())?;
        let host = transport.host().to_owned();
        let docker = match &transport {
            Transport::Unix { path, .. } => {
                Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            Transport::Http(url) => {
                Docker::connect_with_http(url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            Transport::Tls { host, files } => Docker::connect_with_ssl(
                host,
                &files.key,
                &files.cert,
                &files.ca,
                REQUEST_TIMEOUT_SECS,
                API_DEFAULT_VERSION,
            ),
        }
        .map_err(|e| EngineError::Unreachable {
            endpoint: host.clone(),
            message: bollard_message(&e),
        })?;
        Ok(Engine {
            docker: docker.with_request_modifier(url_safe_registry_headers),
            endpoint: host,
        })
    }

    /// The endpoint text, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Checks that the Engine answers.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: bollard_message(&e),
            })
    }

    /// The Engine's version text (e.g. `20.10.24+dfsg1`), for diagnostics.
    pub async fn server_version(&self) -> Result<String, EngineError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| self.map_err(e, Op::Other("version"), None))?;
        Ok(v.version.unwrap_or_default())
    }

    /// Makes sure `image` is present (pulling it with `auth` when it is not), then returns its
    /// `Config.User` (`None` when empty: the image runs as root).
    pub async fn prepare_base(
        &self,
        image: &str,
        auth: Option<&Credential>,
        log: &mut dyn LogSink,
    ) -> Result<Option<String>, EngineError> {
        if self.image_id(image).await?.is_some() {
            log.line(format!("base image {image} is present"));
        } else {
            self.pull(image, auth, log).await?;
        }
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| self.map_err(e, Op::Pull { image }, auth))?;
        Ok(inspect
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.trim().is_empty()))
    }

    /// Pulls `image` (a missing tag means `latest`, never "all tags") with `auth`.
    pub async fn pull(
        &self,
        image: &str,
        auth: Option<&Credential>,
        log: &mut dyn LogSink,
    ) -> Result<(), EngineError> {
        let (repo, tag) = split_reference(image);
        log.line(format!("pulling {image}"));
        let auth = credential_for(image, auth, log);
        let options = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(&tag)
            .build();
        let credentials = auth.map(docker_credentials);
        let stream = self.docker.create_image(Some(options), None, credentials);
        match drain_progress(stream, log, auth, &CancellationToken::new()).await {
            Drained::Done(_) => Ok(()),
            Drained::Failed(e) => Err(self.map_err(e, Op::Pull { image }, auth)),
            Drained::Cancelled => Err(EngineError::Cancelled),
        }
    }

    /// Builds `req` with the classic builder (no BuildKit) from an in-memory context.
    ///
    /// Every whole line of the build output goes to `log` (trailing `\r\n` removed, ANSI kept),
    /// pull progress of the `FROM` image condensed to one line per layer. Fails with the
    /// Engine's text on an HTTP error, on an `errorDetail` in the stream, and when the stream
    /// ends without an image id. When `cancel` fires the request is dropped, which closes the
    /// connection and makes the Engine stop the build; [`EngineError::Cancelled`] follows.
    ///
    /// With `watch`, the image of step `watch.step` is sent as soon as the builder moves past
    /// it, while the build goes on.
    pub async fn build(
        &self,
        req: &BuildRequest<'_>,
        watch: Option<StepImage>,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<BuiltImage, EngineError> {
        let Some(first_tag) = req.tags.first() else {
            return Err(EngineError::Other("a build needs at least one tag".into()));
        };
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let context = build_context(req.dockerfile, req.ca_bundle)
            .map_err(|e| EngineError::Other(format!("cannot assemble the build context: {e}")))?;
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(first_tag)
            .rm(true)
            .forcerm(true)
            .version(BuilderVersion::BuilderV1);
        if let Some(network) = req.network.filter(|n| !n.is_empty()) {
            options = options.networkmode(network);
        }
        let credentials = req
            .pull_auth
            .map(|c| HashMap::from([(c.server_address().to_string(), docker_credentials(c))]));
        let from_registry = first_from_image(req.dockerfile)
            .map(registry_of)
            .unwrap_or_default();
        if let Some(c) = req.pull_auth
            && !from_registry.is_empty()
            && c.registry() != from_registry
        {
            // X-Registry-Config is keyed by registry: the Engine will not use it for this FROM.
            log.line(format!(
                "note: the pull credential is for {} but the base image is on {from_registry}",
                c.registry()
            ));
        }
        let op = Op::Build {
            registry: &from_registry,
        };

        let stream = self.docker.build_image(
            options.build(),
            credentials,
            Some(bollard::body_full(context.into())),
        );
        let outcome = match drain_build(stream, log, req.pull_auth, watch, cancel).await {
            Drained::Done(outcome) => outcome,
            Drained::Failed(e) => return Err(self.map_err(e, op, req.pull_auth)),
            Drained::Cancelled => return Err(EngineError::Cancelled),
        };
        let image_id = match outcome.image_id()? {
            ImageIdent::Full(id) => id,
            ImageIdent::Short(short) => self.image_id(&short).await?.unwrap_or(short),
        };
        // The first tag was applied by the build; check it really points at the image.
        match self.image_id(first_tag).await? {
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
        for tag in &req.tags[1..] {
            self.tag(&image_id, tag).await?;
        }
        Ok(BuiltImage { image_id })
    }

    /// Tags the image `source` (id or reference) as `target` (`repo[:tag]`, default `latest`).
    pub async fn tag(&self, source: &str, target: &str) -> Result<(), EngineError> {
        let (repo, tag) = split_reference(target);
        if target.contains('@') {
            return Err(EngineError::Other(format!(
                "cannot tag with a digest reference: {target}"
            )));
        }
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(&tag)
            .build();
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404, ..
                } => EngineError::NoImage(source.to_string()),
                e => self.map_err(e, Op::Other("tag"), None),
            })
    }

    /// Pushes `image_ref` (`repo[:tag]`, default `latest`) with `auth`, and returns the
    /// manifest digest `sha256:…` the registry stored.
    ///
    /// The log gets "The push refers to repository […]", one line per layer when it is pushed,
    /// already exists, or is mounted (e.g. "pushed layer 1a2b3c4d5e6f (12.3 MB)"), and the
    /// final "tag: digest: sha256:… size: N" line.
    pub async fn push(
        &self,
        image_ref: &str,
        auth: Option<&Credential>,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, EngineError> {
        let failed = |message: String| EngineError::PushFailed {
            image: image_ref.to_string(),
            message,
        };
        if image_ref.contains('@') {
            return Err(failed(
                "a digest reference cannot be pushed; give repo:tag".into(),
            ));
        }
        let (repo, tag) = split_reference(image_ref);
        if !valid_push_repo(repo) || !valid_tag(&tag) {
            return Err(failed("not a valid image reference".into()));
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        // bollard's push_image drops each message's layer `id`; create_image's message type
        // keeps it. So the push goes out as a create_image call whose path is rewritten to
        // the push endpoint. Should the rewrite ever not apply, the Engine gets a pull of an
        // invalid reference, which it rejects before any network access.
        let push_path = format!("/images/{repo}/push?tag={tag}");
        let docker = self.docker.clone().with_request_modifier(move |req| {
            url_safe_registry_headers(rewrite_path(req, "/images/create", &push_path))
        });
        let options = CreateImageOptionsBuilder::default()
            .from_image(PUSH_PLACEHOLDER)
            .tag("kiln")
            .build();
        let auth = credential_for(image_ref, auth, log);
        // The Engine wants an X-Registry-Auth header on every push, even an empty one.
        let credentials = Some(auth.map(docker_credentials).unwrap_or_default());
        let stream = docker.create_image(Some(options), None, credentials);
        match drain_progress(stream, log, auth, cancel).await {
            Drained::Done(Some(digest)) => Ok(digest),
            Drained::Done(None) => Err(failed(
                "the push ended without a manifest digest (the Engine reported no error)".into(),
            )),
            Drained::Failed(e) => Err(self.map_err(e, Op::Push { image: image_ref }, auth)),
            Drained::Cancelled => Err(EngineError::Cancelled),
        }
    }

    /// The id of `image_ref` (reference or id) if the Engine has it.
    pub async fn image_id(&self, image_ref: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(image_ref).await {
            Ok(inspect) => Ok(inspect.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            // An unparsable reference cannot exist locally.
            Err(BollardError::DockerResponseServerError {
                status_code: 400, ..
            }) => Ok(None),
            Err(e) => Err(self.map_err(e, Op::Other("image inspect"), None)),
        }
    }

    /// Whether `ancestor` (an image id, short or full) is `image` itself or one of its first
    /// `max_depth` parents. The classic builder keeps every step's image as the parent of the
    /// next one (the image's history lists their ids), so this tells whether the image of a
    /// step belongs to a finished build.
    pub async fn descends_from(
        &self,
        image: &str,
        ancestor: &str,
        max_depth: usize,
    ) -> Result<bool, EngineError> {
        let want = ancestor.trim_start_matches("sha256:");
        if want.len() < 12 {
            return Ok(false);
        }
        let history = match self.docker.image_history(image).await {
            Ok(history) => history,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(false),
            Err(e) => return Err(self.map_err(e, Op::Other("image history"), None)),
        };
        // Newest first; layers that came from a registry read `<missing>`.
        Ok(history
            .iter()
            .take(max_depth + 1)
            .any(|item| item.id.trim_start_matches("sha256:").starts_with(want)))
    }

    /// Removes the tag or image `image_ref` (not forced: an image a container uses stays).
    /// `Ok(false)` when it did not exist.
    pub async fn remove_image(&self, image_ref: &str) -> Result<bool, EngineError> {
        let options = RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(false)
            .build();
        match self
            .docker
            .remove_image(image_ref, Some(options), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.map_err(e, Op::Other("image remove"), None)),
        }
    }

    /// Runs `cmd` (exactly: the image's entrypoint is replaced) in a fresh container from
    /// `image`, without network, and returns its exit code and stdout (at most
    /// [`RUN_CAPTURE_LIMIT`] bytes, lossily decoded as UTF-8). The container is removed
    /// afterwards in every case. A command the image does not have gives exit code 127.
    /// When `cancel` fires it stops waiting ([`EngineError::Cancelled`]); the container is
    /// removed then too.
    pub async fn run_capture(
        &self,
        image: &str,
        cmd: &[&str],
        cancel: &CancellationToken,
    ) -> Result<(i64, String), EngineError> {
        let Some((program, args)) = cmd.split_first() else {
            return Err(EngineError::Other("run_capture needs a command".into()));
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![program.to_string()]),
            cmd: Some(args.iter().map(|a| a.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            labels: Some(HashMap::from([(
                "io.kiln.run-capture".to_string(),
                "1".to_string(),
            )])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().build()), body)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404, ..
                } => EngineError::NoImage(image.to_string()),
                e => self.map_err(e, Op::Other("container create"), None),
            })?;
        let id = created.id;
        // Only the wait is cut short: the removal below runs in every case.
        let result = tokio::select! {
            result = tokio::time::timeout(RUN_CAPTURE_TIMEOUT, self.run_created(&id)) => result,
            _ = cancel.cancelled() => Ok(Err(EngineError::Cancelled)),
        };
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(&id, Some(remove)).await {
            tracing::warn!(container = %id, error = %bollard_message(&e), "could not remove run_capture container");
        }
        match result {
            Ok(result) => result,
            Err(_) => Err(EngineError::Other(format!(
                "{cmd:?} in {image} did not finish within {} s",
                RUN_CAPTURE_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn run_created(&self, id: &str) -> Result<(i64, String), EngineError> {
        let attach = AttachContainerOptionsBuilder::default()
            .stream(true)
            .logs(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut attached = self
            .docker
            .attach_container(id, Some(attach))
            .await
            .map_err(|e| self.map_err(e, Op::Other("container attach"), None))?;
        if let Err(e) = self
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
        {
            let message = bollard_message(&e);
            if matches!(e, BollardError::DockerResponseServerError { .. })
                && (message.contains("executable file not found")
                    || message.contains("no such file or directory"))
            {
                return Ok((127, String::new()));
            }
            return Err(self.map_err(e, Op::Other("container start"), None));
        }
        let mut stdout: Vec<u8> = Vec::new();
        let mut stderr_tail: Vec<u8> = Vec::new();
        let mut truncated = false;
        while let Some(item) = attached.output.next().await {
            match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => {
                    let room = RUN_CAPTURE_LIMIT.saturating_sub(stdout.len());
                    if message.len() > room {
                        truncated = true;
                    }
                    stdout.extend_from_slice(&message[..message.len().min(room)]);
                }
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    stderr_tail.extend_from_slice(&message);
                    if stderr_tail.len() > 4096 {
                        stderr_tail.drain(..stderr_tail.len() - 4096);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(self.map_err(e, Op::Other("container output"), None)),
            }
        }
        if truncated {
            tracing::warn!(container = %id, limit = RUN_CAPTURE_LIMIT, "run_capture output truncated");
        }
        let wait = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waits = self.docker.wait_container(id, Some(wait));
        let code = match waits.next().await {
            Some(Ok(response)) => response.status_code,
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(self.map_err(e, Op::Other("container wait"), None)),
            None => {
                return Err(EngineError::Other(
                    "the Engine did not report the exit code".into(),
                ));
            }
        };
        if code != 0 && !stderr_tail.is_empty() {
            tracing::debug!(container = %id, code, stderr = %String::from_utf8_lossy(&stderr_tail), "run_capture command failed");
        }
        Ok((code, String::from_utf8_lossy(&stdout).into_owned()))
    }

    /// Turns a bollard error into an [`EngineError`] for operation `op`.
    fn map_err(&self, e: BollardError, op: Op<'_>, auth: Option<&Credential>) -> EngineError {
        map_bollard_error(&self.endpoint, e, op, auth)
    }
}

/// Turns a bollard error into an [`EngineError`] for operation `op` on the Engine at
/// `endpoint`; secrets of `auth` are scrubbed from the message.
fn map_bollard_error(
    endpoint: &str,
    e: BollardError,
    op: Op<'_>,
    auth: Option<&Credential>,
) -> EngineError {
    let (status, message) = match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => (Some(status_code), message),
        BollardError::DockerStreamError { error } => (None, error),
        BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_)
        | BollardError::HttpClientError { .. } => {
            return EngineError::Unreachable {
                endpoint: endpoint.to_string(),
                message: redact(bollard_message(&e), auth),
            };
        }
        e => (None, bollard_message(&e)),
    };
    let message = redact(message.trim().to_string(), auth);
    match op {
        Op::Build { registry } => {
            if !message.contains("returned a non-zero code") && looks_like_auth_failure(&message) {
                let registry = if registry.is_empty() {
                    "of the base image"
                } else {
                    registry
                };
                EngineError::Auth {
                    registry: registry.to_string(),
                    message,
                }
            } else {
                EngineError::BuildFailed(message)
            }
        }
        Op::Pull { image } => {
            if looks_like_auth_failure(&message) {
                EngineError::Auth {
                    registry: registry_of(image),
                    message,
                }
            } else {
                EngineError::PullFailed {
                    image: image.to_string(),
                    message,
                }
            }
        }
        Op::Push { image } => {
            if looks_like_auth_failure(&message) {
                EngineError::Auth {
                    registry: registry_of(image),
                    message,
                }
            } else {
                EngineError::PushFailed {
                    image: image.to_string(),
                    message,
                }
            }
        }
        Op::Other(operation) => match status {
            Some(status) => EngineError::Api {
                operation: operation.to_string(),
                status,
                message,
            },
            None => EngineError::Other(format!("{operation}: {message}")),
        },
    }
}

/// How a streamed Engine answer ended.
#[derive(Debug)]
enum Drained<T> {
    /// The stream ended without an error.
    Done(T),
    /// An HTTP error before the stream, an `errorDetail` inside it, or a broken connection.
    Failed(BollardError),
    /// The token fired; the stream (and with it the connection) has been dropped.
    Cancelled,
}

/// What a build's output said about the image it made.
#[derive(Debug, Default, PartialEq, Eq)]
struct BuildOutcome {
    /// `aux.ID` of the build stream (full `sha256:…`).
    aux_id: Option<String>,
    /// The short id of the classic builder's "Successfully built <id>" line.
    built_line_id: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum ImageIdent {
    Full(String),
    Short(String),
}

impl BuildOutcome {
    /// The image id, or the failure of a build whose output ended without one.
    fn image_id(self) -> Result<ImageIdent, EngineError> {
        match (self.aux_id, self.built_line_id) {
            (Some(id), _) => Ok(ImageIdent::Full(id)),
            (None, Some(short)) => Ok(ImageIdent::Short(short)),
            (None, None) => Err(EngineError::BuildFailed(
                "the build output ended without an image id (the Engine reported no error)".into(),
            )),
        }
    }
}

/// Reads a build's output to its end: whole `stream` lines and condensed `status` lines go to
/// `log`, `aux.ID` is kept. On cancellation the stream is dropped at once, which closes the
/// connection: the classic builder sees the client go away, kills the running step and tags
/// nothing.
async fn drain_build<S>(
    stream: S,
    log: &mut dyn LogSink,
    auth: Option<&Credential>,
    mut watch: Option<StepImage>,
    cancel: &CancellationToken,
) -> Drained<BuildOutcome>
where
    S: futures_util::Stream<Item = Result<BuildInfo, BollardError>>,
{
    let mut stream = Box::pin(stream);
    let mut lines = LineBuffer::default();
    let mut progress = ProgressCondenser::default();
    let mut outcome = BuildOutcome::default();
    let mut steps = StepTracker::default();
    let mut emit = |line: String, outcome: &mut BuildOutcome, log: &mut dyn LogSink| {
        if let Some(id) = line.strip_prefix("Successfully built ") {
            outcome.built_line_id = Some(id.trim().to_string());
        }
        if watch.is_some()
            && let Some((step, image)) = steps.line(&line)
            && let Some(w) = watch.take_if(|w| w.step == step)
        {
            // The receiver may be gone (the job no longer wants it): nothing to do then.
            let _ = w.tx.send(image);
        }
        log.line(redact(line, auth));
    };
    let ended = loop {
        // Read the next message only once the sink has room: a 200 MB build log streams
        // through a bounded buffer instead of piling up in memory.
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => break Drained::Cancelled,
            item = async {
                log.ready().await;
                stream.next().await
            } => item,
        };
        match item {
            None => break Drained::Done(()),
            Some(Ok(info)) => {
                if let Some(text) = info.stream.as_deref() {
                    for line in lines.push(text) {
                        emit(line, &mut outcome, log);
                    }
                }
                if let Some(status) = info.status.as_deref() {
                    let total = info.progress_detail.as_ref().and_then(|d| d.total);
                    if let Some(line) = progress.update(info.id.as_deref(), status, total) {
                        emit(line, &mut outcome, log);
                    }
                }
                // With bollard's `buildkit` feature `aux` is BuildKit status or an image id.
                if let Some(bollard::models::BuildInfoAux::Default(bollard::models::ImageId {
                    id: Some(id),
                })) = info.aux
                    && !id.is_empty()
                {
                    outcome.aux_id = Some(id);
                }
                if info.error_detail.is_some() {
                    // bollard turns an errorDetail with a message into Err; one without a
                    // message is still a failure.
                    break Drained::Failed(BollardError::DockerStreamError {
                        error: "the Engine reported an error without a message".into(),
                    });
                }
            }
            Some(Err(e)) => break Drained::Failed(e),
        }
    };
    drop(stream);
    if let Some(rest) = lines.finish() {
        emit(rest, &mut outcome, log);
    }
    match ended {
        Drained::Done(()) if cancel.is_cancelled() => Drained::Cancelled,
        Drained::Done(()) => Drained::Done(outcome),
        Drained::Failed(e) => Drained::Failed(e),
        Drained::Cancelled => Drained::Cancelled,
    }
}

/// Reads a pull's or push's progress to its end, condensed into `log`; returns the manifest
/// digest of a push's final "<tag>: digest: sha256:… size: N" status, if one came.
async fn drain_progress<S>(
    stream: S,
    log: &mut dyn LogSink,
    auth: Option<&Credential>,
    cancel: &CancellationToken,
) -> Drained<Option<String>>
where
    S: futures_util::Stream<Item = Result<CreateImageInfo, BollardError>>,
{
    let mut stream = Box::pin(stream);
    let mut progress = ProgressCondenser::default();
    let mut digest: Option<String> = None;
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Drained::Cancelled,
            item = async {
                log.ready().await;
                stream.next().await
            } => item,
        };
        match item {
            None => return Drained::Done(digest),
            Some(Ok(info)) => {
                if info.error_detail.is_some() {
                    return Drained::Failed(BollardError::DockerStreamError {
                        error: "the Engine reported an error without a message".into(),
                    });
                }
                let Some(status) = info.status.as_deref() else {
                    continue;
                };
                if info.id.is_none()
                    && let Some(d) = parse_push_digest(status)
                {
                    digest = Some(d);
                }
                let total = info.progress_detail.as_ref().and_then(|d| d.total);
                if let Some(line) = progress.update(info.id.as_deref(), status, total) {
                    log.line(redact(line, auth));
                }
            }
            Some(Err(e)) => return Drained::Failed(e),
        }
    }
}

/// The `fromImage` sent when a push travels as a create_image call: an invalid reference,
/// rejected by the Engine before any registry is contacted, should the path rewrite not apply.
const PUSH_PLACEHOLDER: &str = "kiln-push-path-rewrite-failed//invalid";

/// bollard's error text, without secrets (bollard's errors never hold headers).
fn bollard_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => format!("HTTP {status_code}: {message}"),
        BollardError::SocketNotFoundError(path) => format!("socket {path} not found"),
        BollardError::RequestTimeoutError => format!("no answer within {REQUEST_TIMEOUT_SECS} s"),
        e => {
            // hyper's Display is terse ("client error (Connect)"); the source says why.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

/// Removes a credential's secrets from a text (defence in depth: Engine messages do not
/// normally contain them).
fn redact(text: String, auth: Option<&Credential>) -> String {
    let Some(auth) = auth else { return text };
    let mut text = text;
    for secret in [Some(auth.password()), auth.identity_token()]
        .into_iter()
        .flatten()
    {
        if secret.len() >= 4 && text.contains(secret) {
            text = text.replace(secret, "<redacted>");
        }
    }
    text
}

/// `auth` if it is for the registry of `image`; otherwise `None` and a log line. A credential
/// is never sent towards another registry than its own.
fn credential_for<'c>(
    image: &str,
    auth: Option<&'c Credential>,
    log: &mut dyn LogSink,
) -> Option<&'c Credential> {
    let auth = auth?;
    let registry = registry_of(image);
    if auth.registry() == registry {
        Some(auth)
    } else {
        log.line(format!(
            "note: not sending the credential for {} to {registry} (the registry of {image})",
            auth.registry()
        ));
        None
    }
}

/// bollard's credential type for `c`.
fn docker_credentials(c: &Credential) -> DockerCredentials {
    DockerCredentials {
        username: Some(c.username().to_string()).filter(|u| !u.is_empty()),
        password: Some(c.password().to_string()).filter(|p| !p.is_empty()),
        identitytoken: c.identity_token().map(str::to_owned),
        email: c.email().map(str::to_owned),
        serveraddress: Some(c.server_address().to_string()),
        ..Default::default()
    }
}

/// Standard base64 → base64url (same padding): what the Engine's `base64.URLEncoding`
/// decoder needs. Idempotent, so it stays correct should bollard ever encode base64url itself.
pub(crate) fn to_base64url(standard: &str) -> String {
    standard.replace('+', "-").replace('/', "_")
}

/// Request modifier: rewrites bollard's standard-base64 registry headers into base64url.
fn url_safe_registry_headers(mut req: BollardRequest) -> BollardRequest {
    for name in ["x-registry-auth", "x-registry-config"] {
        let fixed = match req.headers().get(name).and_then(|v| v.to_str().ok()) {
            Some(value) if value.contains(['+', '/']) => to_base64url(value),
            _ => continue,
        };
        if let Ok(value) = fixed.parse() {
            req.headers_mut().insert(name, value);
        }
    }
    req
}

/// Replaces the request's path (and query) from `from` on with `to`; unchanged when `from`
/// is not in the URI.
fn rewrite_path(mut req: BollardRequest, from: &str, to: &str) -> BollardRequest {
    if let Some(uri) = rewrite_uri(&req.uri().to_string(), from, to)
        && let Ok(uri) = uri.parse()
    {
        *req.uri_mut() = uri;
    }
    req
}

fn rewrite_uri(uri: &str, from: &str, to: &str) -> Option<String> {
    let authority_end = uri.find("://").map(|i| i + 3)?;
    let path_start = authority_end + uri[authority_end..].find('/')?;
    let at = path_start + uri[path_start..].find(from)?;
    Some(format!("{}{}", &uri[..at], to))
}

fn valid_push_repo(repo: &str) -> bool {
    !repo.is_empty()
        && !repo.starts_with('/')
        && !repo.contains("//")
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `repo[:tag][@digest]` → (repo, tag or digest); no tag means `latest`.
fn split_reference(image: &str) -> (&str, String) {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    let tag = match (digest, tag) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) if !tag.is_empty() => tag.to_string(),
        _ => "latest".to_string(),
    };
    (repo, tag)
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

/// The build context: `Dockerfile` and, when given, the CA bundle.
fn build_context(dockerfile: &str, ca_bundle: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append_file(&mut tar, "Dockerfile", dockerfile.as_bytes())?;
    if let Some(ca) = ca_bundle {
        append_file(&mut tar, CA_BUNDLE_CONTEXT_NAME, ca)?;
    }
    tar.into_inner()
}

fn append_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name)?;
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    // A fixed time: the context of an unchanged Dockerfile is byte-for-byte the same.
    header.set_mtime(946_684_800);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, data)
}

/// Follows the classic builder's output (`Step 4/6 : RUN …`, ` ---> 1a2b3c4d5e6f`) to tell
/// which image each step produced.
///
/// A `RUN` step can print anything, a line that looks like `Step 5/6 : …` too, so only the
/// next step in sequence counts, and callers check the answer against the final image's
/// parents ([`Engine::descends_from`]) before they rely on it.
#[derive(Debug, Default)]
struct StepTracker {
    /// The step the builder is running, and `M` of its `Step N/M`.
    current: Option<(usize, usize)>,
    /// The last ` ---> <id>` line seen in that step: its result so far.
    result: Option<String>,
}

impl StepTracker {
    /// Feeds one output line; returns `(step, image id)` once a step is known to be done,
    /// which is when the next one starts.
    fn line(&mut self, line: &str) -> Option<(usize, String)> {
        if let Some((number, total)) = line
            .strip_prefix("Step ")
            .and_then(|rest| rest.split_once(" : "))
            .and_then(|(n, _)| n.split_once('/'))
            .and_then(|(n, m)| Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?)))
        {
            let next = match self.current {
                None => number == 1,
                Some((step, of)) => number == step + 1 && total == of,
            };
            if next {
                let done = self.current.map(|(step, _)| step).zip(self.result.take());
                self.current = Some((number, total));
                return done;
            }
            return None;
        }
        let id = line.trim_start().strip_prefix("---> ")?.trim_end();
        if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.result = Some(id.to_string());
        }
        None
    }
}

/// Re-assembles whole lines from the build output's unaligned `stream` chunks.
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    partial: String,
}

impl LineBuffer {
    /// Adds a chunk; returns the lines it completed, without their `\n` / `\r\n`.
    pub(crate) fn push(&mut self, chunk: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(i) = rest.find('\n') {
            self.partial.push_str(&rest[..i]);
            let mut line = std::mem::take(&mut self.partial);
            if line.ends_with('\r') {
                line.pop();
            }
            lines.push(line);
            rest = &rest[i + 1..];
        }
        self.partial.push_str(rest);
        // A runaway line without newline (a progress bar drawn with \r) is cut into pieces.
        while self.partial.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !self.partial.is_char_boundary(cut) {
                cut -= 1;
            }
            let tail = self.partial.split_off(cut);
            lines.push(std::mem::replace(&mut self.partial, tail));
        }
        lines
    }

    /// What is left after the last newline, if anything.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let mut rest = std::mem::take(&mut self.partial);
        if rest.ends_with('\r') {
            rest.pop();
        }
        (!rest.is_empty()).then_some(rest)
    }
}

/// Condenses pull/push progress messages: per layer, one line when it is done (or already
/// there), nothing for the thousands of progress updates in between.
#[derive(Debug, Default)]
pub(crate) struct ProgressCondenser {
    sizes: HashMap<String, i64>,
    last: HashMap<String, String>,
}

impl ProgressCondenser {
    /// One message (`id` = layer or tag, `status`, `total` bytes from progressDetail); the
    /// line to log, if any.
    pub(crate) fn update(
        &mut self,
        id: Option<&str>,
        status: &str,
        total: Option<i64>,
    ) -> Option<String> {
        let status = status.trim();
        let Some(id) = id.map(str::trim).filter(|i| !i.is_empty()) else {
            return (!status.is_empty()).then(|| status.to_string());
        };
        if let Some(total) = total.filter(|t| *t > 0)
            && matches!(status, "Pushing" | "Downloading")
        {
            self.sizes.insert(id.to_string(), total);
        }
        let previous = self.last.insert(id.to_string(), status.to_string());
        let size = || {
            self.sizes
                .get(id)
                .map(|s| format!(" ({})", human_size(*s)))
                .unwrap_or_default()
        };
        match status {
            "Preparing" | "Waiting" | "Pushing" | "Downloading" | "Pulling fs layer"
            | "Verifying Checksum" | "Download complete" | "Extracting" => None,
            "Pushed" => Some(format!("pushed layer {id}{}", size())),
            "Pull complete" => Some(format!("pulled layer {id}{}", size())),
            "Layer already exists" => Some(format!("layer {id} already exists in the registry")),
            "Already exists" => Some(format!("layer {id} already exists locally")),
            s if s.starts_with("Mounted from") => {
                Some(format!("layer {id} {}", lowercase_first(s)))
            }
            s if s.starts_with("Retrying in") => {
                // "Retrying in 5 seconds", "… 4 seconds", …: once per round.
                let repeat = previous.is_some_and(|p| p.starts_with("Retrying in"));
                (!repeat).then(|| format!("layer {id}: {s}"))
            }
            s if previous.as_deref() == Some(s) => None,
            s => Some(format!("{id}: {s}")),
        }
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Decimal size as Docker prints it: `512 B`, `3.4 kB`, `12.3 MB`, `1.2 GB`.
pub(crate) fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The manifest digest in a push's final status, `"<tag>: digest: sha256:<64 hex> size: N"`.
pub(crate) fn parse_push_digest(status: &str) -> Option<String> {
    let at = status.find("digest: ")? + "digest: ".len();
    let candidate = status[at..].split_whitespace().next()?;
    let hex = candidate.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| candidate.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use std::sync::{Arc, Mutex};

    /// A cert directory with the three files, PEM-looking enough for `resolve`.
    fn cert_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(
                dir.path().join(name),
                "-----BEGIN X-----\n-----END X-----\n",
            )
            .unwrap();
        }
        dir
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn endpoint_defaults_to_the_local_socket_and_docker_host() {
        let none = EngineEndpoint::default();
        assert_eq!(
            none.resolve(env_of(&[])).unwrap(),
            Transport::Unix {
                host: DEFAULT_ENDPOINT.into(),
                path: "/var/run/docker.sock".into()
            }
        );
        assert_eq!(
            none.resolve(env_of(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]))
                .unwrap(),
            Transport::Http("tcp://10.0.0.1:2375".into())
        );
        let given = EngineEndpoint {
            host: Some("/run/other.sock".into()),
            ..Default::default()
        };
        assert_eq!(
            given
                .resolve(env_of(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]))
                .unwrap(),
            Transport::Unix {
                host: "/run/other.sock".into(),
                path: "/run/other.sock".into()
            }
        );
    }

    #[test]
    fn tcp_speaks_tls_when_the_config_or_the_environment_asks() {
        let certs = cert_dir();
        let dir = certs.path().to_str().unwrap();
        let files = TlsFiles {
            ca: certs.path().join("ca.pem"),
            cert: certs.path().join("cert.pem"),
            key: certs.path().join("key.pem"),
        };
        let tls = Transport::Tls {
            host: "tcp://127.0.0.1:2376".into(),
            files: files.clone(),
        };
        let host = Some("tcp://127.0.0.1:2376".to_string());
        // Config: a cert path alone asks for TLS.
        let configured = EngineEndpoint {
            host: host.clone(),
            tls_verify: None,
            cert_path: Some(certs.path().into()),
        };
        assert_eq!(configured.resolve(env_of(&[])).unwrap(), tls);
        // Environment, the Docker CLI's way.
        let bare = EngineEndpoint {
            host: host.clone(),
            ..Default::default()
        };
        for env in [
            vec![("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", dir)],
            vec![("DOCKER_CERT_PATH", dir)],
            vec![("DOCKER_TLS", "1"), ("DOCKER_CERT_PATH", dir)],
        ] {
            assert_eq!(bare.resolve(env_of(&env)).unwrap(), tls, "{env:?}");
        }
        // ~/.docker when no path is given.
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".docker")).unwrap();
        for name in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::copy(
                certs.path().join(name),
                home.path().join(".docker").join(name),
            )
            .unwrap();
        }
        let verify = EngineEndpoint {
            host: host.clone(),
            tls_verify: Some(true),
            cert_path: None,
        };
        let resolved = verify
            .resolve(env_of(&[("HOME", home.path().to_str().unwrap())]))
            .unwrap();
        assert!(
            matches!(&resolved, Transport::Tls { files, .. } if files.ca.starts_with(home.path())),
            "{resolved:?}"
        );
        // Plain when nothing asks, or when the config says no despite the environment.
        assert_eq!(
            bare.resolve(env_of(&[("DOCKER_TLS_VERIFY", "0")])).unwrap(),
            Transport::Http("tcp://127.0.0.1:2376".into())
        );
        let off = EngineEndpoint {
            host,
            tls_verify: Some(false),
            cert_path: Some(certs.path().into()),
        };
        assert_eq!(
            off.resolve(env_of(&[("DOCKER_TLS_VERIFY", "1")])).unwrap(),
            Transport::Http("tcp://127.0.0.1:2376".into())
        );
        // https:// always means TLS.
        let https = EngineEndpoint {
            host: Some("https://engine.example:2376".into()),
            tls_verify: None,
            cert_path: Some(certs.path().into()),
        };
        assert!(matches!(
            https.resolve(env_of(&[])).unwrap(),
            Transport::Tls { .. }
        ));
    }

    #[test]
    fn tls_set_up_mistakes_name_the_file_and_are_not_retried() {
        let certs = cert_dir();
        std::fs::remove_file(certs.path().join("key.pem")).unwrap();
        let endpoint = EngineEndpoint {
            host: Some("tcp://127.0.0.1:2376".into()),
            tls_verify: Some(true),
            cert_path: Some(certs.path().into()),
        };
        let err = endpoint.resolve(env_of(&[])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "Docker Engine at tcp://127.0.0.1:2376: cannot read the TLS client key "
            ),
            "{text}"
        );
        assert!(text.contains("key.pem"), "{text}");
        assert!(!err.is_transient());

        std::fs::write(certs.path().join("key.pem"), "not a key").unwrap();
        let text = endpoint.resolve(env_of(&[])).unwrap_err().to_string();
        assert!(text.contains("holds no PEM block"), "{text}");

        for (host, verify) in [
            ("http://127.0.0.1:2376", Some(true)),
            ("unix:///var/run/docker.sock", Some(true)),
            ("https://127.0.0.1:2376", Some(false)),
        ] {
            let endpoint = EngineEndpoint {
                host: Some(host.into()),
                tls_verify: verify,
                cert_path: None,
            };
            let err = endpoint.resolve(env_of(&[])).unwrap_err();
            assert!(matches!(err, EngineError::TlsSetup { .. }), "{host}: {err}");
        }
        let err = EngineEndpoint {
            host: Some("ssh://engine".into()),
            ..Default::default()
        }
        .resolve(env_of(&[]))
        .unwrap_err();
        assert!(
            err.to_string().contains("unsupported Docker endpoint"),
            "{err}"
        );
    }

    #[test]
    fn certificate_refusals_are_not_transient_but_timeouts_are() {
        let refused = |message: &str| EngineError::Unreachable {
            endpoint: "tcp://127.0.0.1:2376".into(),
            message: message.into(),
        };
        assert!(!refused("invalid peer certificate: UnknownIssuer").is_transient());
        assert!(!refused("received fatal alert: BadCertificate").is_transient());
        assert!(refused("net/http: TLS handshake timeout").is_transient());
        assert!(refused("Connection refused (os error 111)").is_transient());
    }

    #[test]
    fn line_buffer_reassembles_unaligned_chunks() {
        let mut b = LineBuffer::default();
        assert!(b.push("Step 1/3 : FR").is_empty());
        assert_eq!(
            b.push("OM x\n ---> abc\nStep"),
            ["Step 1/3 : FROM x", " ---> abc"]
        );
        assert_eq!(b.push(" 2/3\r\n\n"), ["Step 2/3", ""]);
        assert_eq!(
            b.push("\u{1b}[31mred\u{1b}[0m\n"),
            ["\u{1b}[31mred\u{1b}[0m"]
        );
        assert_eq!(b.push("50%\r100%\n"), ["50%\r100%"]);
        assert_eq!(b.push("tail"), Vec::<String>::new());
        assert_eq!(b.finish().as_deref(), Some("tail"));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn line_buffer_splits_multibyte_text_anywhere() {
        let text = "größe: 1 → 2\nnächste\n";
        for split in 0..=text.len() {
            if !text.is_char_boundary(split) {
                continue;
            }
            let mut b = LineBuffer::default();
            let mut lines = b.push(&text[..split]);
            lines.extend(b.push(&text[split..]));
            assert_eq!(lines, ["größe: 1 → 2", "nächste"], "split at {split}");
        }
    }

    #[test]
    fn line_buffer_bounds_runaway_lines() {
        let mut b = LineBuffer::default();
        let lines = b.push(&"é".repeat(MAX_LINE));
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
        let total: usize =
            lines.iter().map(String::len).sum::<usize>() + b.finish().map_or(0, |r| r.len());
        assert_eq!(total, "é".len() * MAX_LINE);
    }

    #[test]
    fn push_progress_is_condensed_to_one_line_per_layer() {
        let mut c = ProgressCondenser::default();
        let mut out = Vec::new();
        let mut feed = |id: Option<&str>, status: &str, total: Option<i64>| {
            if let Some(line) = c.update(id, status, total) {
                out.push(line);
            }
        };
        feed(
            None,
            "The push refers to repository [127.0.0.1:5000/kiln/x]",
            None,
        );
        for layer in ["1a2b3c4d5e6f", "aaaaaaaaaaaa", "bbbbbbbbbbbb"] {
            feed(Some(layer), "Preparing", None);
            feed(Some(layer), "Waiting", None);
        }
        for i in 0..1000 {
            feed(Some("1a2b3c4d5e6f"), "Pushing", Some(12_300_000));
            feed(
                Some("bbbbbbbbbbbb"),
                "Pushing",
                if i == 0 { None } else { Some(512) },
            );
        }
        feed(Some("aaaaaaaaaaaa"), "Layer already exists", None);
        feed(Some("1a2b3c4d5e6f"), "Pushed", None);
        feed(Some("bbbbbbbbbbbb"), "Retrying in 5 seconds", None);
        feed(Some("bbbbbbbbbbbb"), "Retrying in 4 seconds", None);
        feed(Some("bbbbbbbbbbbb"), "Pushing", Some(512));
        feed(Some("bbbbbbbbbbbb"), "Pushed", None);
        feed(Some("cccccccccccc"), "Mounted from kiln/base", None);
        feed(None, "r1-abc1234: digest: sha256:aa size: 1234", None);
        assert_eq!(
            out,
            [
                "The push refers to repository [127.0.0.1:5000/kiln/x]",
                "layer aaaaaaaaaaaa already exists in the registry",
                "pushed layer 1a2b3c4d5e6f (12.3 MB)",
                "layer bbbbbbbbbbbb: Retrying in 5 seconds",
                "pushed layer bbbbbbbbbbbb (512 B)",
                "layer cccccccccccc mounted from kiln/base",
                "r1-abc1234: digest: sha256:aa size: 1234",
            ]
        );
    }

    #[test]
    fn pull_progress_is_condensed() {
        let mut c = ProgressCondenser::default();
        let lines: Vec<String> = [
            (Some("minbase"), "Pulling from kiln/bookworm", None),
            (Some("abc"), "Pulling fs layer", None),
            (Some("abc"), "Downloading", Some(45_600_000)),
            (Some("abc"), "Downloading", Some(45_600_000)),
            (Some("abc"), "Verifying Checksum", None),
            (Some("abc"), "Download complete", None),
            (Some("abc"), "Extracting", Some(45_600_000)),
            (Some("abc"), "Pull complete", None),
            (Some("def"), "Already exists", None),
            (None, "Digest: sha256:0123", None),
            (
                None,
                "Status: Downloaded newer image for 127.0.0.1:5000/kiln/bookworm:minbase",
                None,
            ),
        ]
        .into_iter()
        .filter_map(|(id, status, total)| c.update(id, status, total))
        .collect();
        assert_eq!(
            lines,
            [
                "minbase: Pulling from kiln/bookworm",
                "pulled layer abc (45.6 MB)",
                "layer def already exists locally",
                "Digest: sha256:0123",
                "Status: Downloaded newer image for 127.0.0.1:5000/kiln/bookworm:minbase",
            ]
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "1.0 kB");
        assert_eq!(human_size(12_345_678), "12.3 MB");
        assert_eq!(human_size(3_200_000_000), "3.2 GB");
    }

    #[test]
    fn push_digest_is_parsed_from_the_final_status() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            parse_push_digest(&format!("r1-abc1234: digest: sha256:{hex} size: 528")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            parse_push_digest(&format!("latest: digest: sha256:{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(parse_push_digest("Digest: sha256:abc"), None);
        assert_eq!(parse_push_digest("The push refers to repository [x]"), None);
        assert_eq!(
            parse_push_digest(&format!("t: digest: sha256:{} size: 1", &hex[1..])),
            None
        );
        assert_eq!(
            parse_push_digest(&format!("t: digest: sha512:{hex} size: 1")),
            None
        );
    }

    /// A JSON payload whose standard base64 holds both `+` and `/`: a `>` (0x3E) or `?`
    /// (0x3F) as the third byte of a 3-byte group gives sextet 62 (`+`) or 63 (`/`); three of
    /// each in a row put one at every offset.
    fn awkward_payload() -> String {
        let cred = DockerCredentials {
            username: Some("kiln".into()),
            password: Some("p>>>???".into()),
            serveraddress: Some("127.0.0.1:5001".into()),
            ..Default::default()
        };
        for pad in 0..3 {
            let mut c = cred.clone();
            c.email = Some("x".repeat(pad));
            let json = serde_json::to_string(&c).unwrap();
            let std = STANDARD.encode(&json);
            if std.contains('+') && std.contains('/') {
                return json;
            }
        }
        panic!("no padding gives both + and /");
    }

    #[test]
    fn registry_headers_become_base64url() {
        let json = awkward_payload();
        let standard = STANDARD.encode(&json);
        assert!(standard.contains('+') && standard.contains('/'));
        let url = to_base64url(&standard);
        assert_eq!(url, URL_SAFE.encode(&json));
        // What the Engine does: base64.URLEncoding (padded) decode.
        assert_eq!(URL_SAFE.decode(&url).unwrap(), json.as_bytes());
        assert!(
            URL_SAFE.decode(&standard).is_err(),
            "the Engine could not read bollard's encoding"
        );
        assert_eq!(to_base64url(&url), url, "idempotent");
    }

    fn request(uri: &str) -> BollardRequest {
        let mut req = BollardRequest::new(bollard::body_full(Vec::new().into()));
        *req.uri_mut() = uri.parse().unwrap();
        req
    }

    #[test]
    fn request_modifier_rewrites_both_headers() {
        let json = awkward_payload();
        let standard = STANDARD.encode(&json);
        let mut req = request("http://localhost/images/create?fromImage=x");
        for name in ["x-registry-auth", "x-registry-config"] {
            req.headers_mut().insert(name, standard.parse().unwrap());
        }
        let req = url_safe_registry_headers(req);
        for name in ["X-Registry-Auth", "X-Registry-Config"] {
            let value = req.headers().get(name).unwrap().to_str().unwrap();
            assert_eq!(URL_SAFE.decode(value).unwrap(), json.as_bytes());
        }
    }

    #[test]
    fn push_path_rewrite() {
        let hex_host = "unix://2f7661722f72756e2f646f636b65722e736f636b";
        assert_eq!(
            rewrite_uri(
                &format!("{hex_host}/images/create?fromImage=p&tag=kiln"),
                "/images/create",
                "/images/127.0.0.1:5000/kiln/x/push?tag=r1"
            )
            .as_deref(),
            Some(format!("{hex_host}/images/127.0.0.1:5000/kiln/x/push?tag=r1").as_str())
        );
        assert_eq!(
            rewrite_uri(
                "http://127.0.0.1:2375/v1.41/images/create?fromImage=p",
                "/images/create",
                "/images/a/push?tag=b"
            )
            .as_deref(),
            Some("http://127.0.0.1:2375/v1.41/images/a/push?tag=b")
        );
        assert_eq!(
            rewrite_uri("http://h/containers/create", "/images/create", "/x"),
            None
        );
        let req = request(&format!("{hex_host}/images/create?fromImage=p"));
        let req = rewrite_path(
            req,
            "/images/create",
            "/images/127.0.0.1:5000/kiln/x/push?tag=r1",
        );
        assert_eq!(req.uri().path(), "/images/127.0.0.1:5000/kiln/x/push");
        assert_eq!(req.uri().query(), Some("tag=r1"));
    }

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(
            split_reference("127.0.0.1:5000/kiln/x:r1-abc"),
            ("127.0.0.1:5000/kiln/x", "r1-abc".into())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/kiln/x"),
            ("127.0.0.1:5000/kiln/x", "latest".into())
        );
        assert_eq!(split_reference("debian"), ("debian", "latest".into()));
        assert_eq!(
            split_reference("debian:bookworm"),
            ("debian", "bookworm".into())
        );
        assert_eq!(
            split_reference("ghcr.io/a/b:1@sha256:ab"),
            ("ghcr.io/a/b", "sha256:ab".into())
        );
        assert!(valid_push_repo("127.0.0.1:5000/kiln/x") && valid_tag("r1-abc1234"));
        assert!(!valid_push_repo("a b") && !valid_tag("x?y") && !valid_push_repo("a//b"));
    }

    #[test]
    fn build_context_holds_dockerfile_and_ca_bundle() {
        let tar = build_context("FROM x\n", Some(b"PEM")).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut files = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.push((entry.path().unwrap().display().to_string(), text));
        }
        assert_eq!(
            files,
            [
                ("Dockerfile".to_string(), "FROM x\n".to_string()),
                (CA_BUNDLE_CONTEXT_NAME.to_string(), "PEM".to_string())
            ]
        );
        assert_eq!(
            build_context("FROM x\n", None).unwrap(),
            build_context("FROM x\n", None).unwrap()
        );
    }

    #[test]
    fn first_from_line() {
        assert_eq!(
            first_from_image("# c\nFROM --platform=linux/amd64 127.0.0.1:5001/a:b AS x\nRUN y"),
            Some("127.0.0.1:5001/a:b")
        );
        assert_eq!(first_from_image("from debian\n"), Some("debian"));
        assert_eq!(first_from_image("RUN x\n"), None);
    }

    fn build_items(json_lines: &[&str]) -> Vec<Result<BuildInfo, BollardError>> {
        json_lines
            .iter()
            .map(|l| Ok(serde_json::from_str(l).unwrap()))
            .collect()
    }

    fn collect() -> (Arc<Mutex<Vec<String>>>, impl FnMut(String) + Send) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        (lines, move |l| sink.lock().unwrap().push(l))
    }

    /// The classic builder's output for FROM, USER, RUN, LABEL, USER, with a RUN step that
    /// prints lines looking like the builder's own.
    const CLASSIC_TRANSCRIPT: &[&str] = &[
        "Step 1/5 : FROM kiln/bookworm:minbase",
        " ---> 5d1c3b2a1f0e",
        "Step 2/5 : USER root",
        " ---> Running in 7f8e9d0c1b2a",
        "Removing intermediate container 7f8e9d0c1b2a",
        " ---> 0a1b2c3d4e5f",
        "Step 3/5 : RUN apt-get update && apt-get install -y jq",
        " ---> Running in 8e9d0c1b2a3f",
        "Step 4/5 : LABEL fake",
        " ---> deadbeefdead",
        "Step 9/9 : nonsense",
        "Setting up jq (1.6-2.1) ...",
        "Removing intermediate container 8e9d0c1b2a3f",
        " ---> 2c3d4e5f6a7b",
        "Step 4/5 : LABEL io.kiln.spec=\"tools\"",
        " ---> Running in 9d0c1b2a3f4e",
        "Removing intermediate container 9d0c1b2a3f4e",
        " ---> 3d4e5f6a7b8c",
        "Step 5/5 : USER jovyan",
        " ---> Using cache",
        " ---> 4e5f6a7b8c9d",
        "Successfully built 4e5f6a7b8c9d",
    ];

    /// [`CLASSIC_TRANSCRIPT`] without the RUN step's imitations.
    fn honest_transcript() -> impl Iterator<Item = &'static str> {
        CLASSIC_TRANSCRIPT
            .iter()
            .copied()
            .filter(|l| !l.contains("fake") && !l.contains("deadbeef") && !l.contains("nonsense"))
    }

    #[test]
    fn step_tracker_reads_each_steps_image() {
        let mut steps = StepTracker::default();
        let done: Vec<(usize, String)> = CLASSIC_TRANSCRIPT
            .iter()
            .filter_map(|l| steps.line(l))
            .collect();
        // The RUN step's imitation of "Step 4/5" is next in sequence, so it is believed: step 3
        // is never reported. Out-of-sequence lines ("Step 9/9", the real "Step 4/5" after the
        // fake one) are ignored. Callers check ancestry before they rely on an answer.
        assert_eq!(
            done,
            [
                (1, "5d1c3b2a1f0e".to_string()),
                (2, "0a1b2c3d4e5f".to_string()),
                (4, "3d4e5f6a7b8c".to_string()),
            ]
        );
        let mut steps = StepTracker::default();
        let done: Vec<(usize, String)> =
            honest_transcript().filter_map(|l| steps.line(l)).collect();
        assert_eq!(
            done,
            [
                (1, "5d1c3b2a1f0e".to_string()),
                (2, "0a1b2c3d4e5f".to_string()),
                (3, "2c3d4e5f6a7b".to_string()),
                (4, "3d4e5f6a7b8c".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn build_stream_hands_over_a_steps_image_while_the_build_goes_on() {
        let honest: Vec<String> = honest_transcript()
            .take_while(|l| !l.starts_with("Step 5/5"))
            .map(|l| serde_json::json!({ "stream": format!("{l}\n") }).to_string())
            .collect();
        let items = build_items(&honest.iter().map(String::as_str).collect::<Vec<_>>());
        // The Engine is still busy with step 5: the stream stays open.
        let stream = futures_util::stream::iter(items).chain(futures_util::stream::pending());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cancel = CancellationToken::new();
        let (lines, mut sink) = collect();
        let drain = drain_build(
            stream,
            &mut sink,
            None,
            Some(StepImage { step: 3, tx }),
            &cancel,
        );
        tokio::pin!(drain);
        let image = tokio::select! {
            image = rx => image.unwrap(),
            ended = &mut drain => panic!("the build ended first: {ended:?}"),
        };
        assert_eq!(image, "2c3d4e5f6a7b");
        cancel.cancel();
        assert!(matches!(drain.await, Drained::Cancelled));
        assert!(lines.lock().unwrap().len() > 10);

        // A step that never completes sends nothing: the sender is dropped with the build.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let items = build_items(&[r#"{"stream":"Step 1/1 : FROM x\n ---> 5d1c3b2a1f0e\n"}"#]);
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            Some(StepImage { step: 1, tx }),
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(drained, Drained::Done(_)), "{drained:?}");
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn build_stream_success_with_unaligned_chunks() {
        let items = build_items(&[
            r#"{"stream":"Step 1/2 : FR"}"#,
            r#"{"stream":"OM x\n ---\u003e 671a\nStep 2/2 : RUN echo hi\n"}"#,
            r#"{"status":"Pulling fs layer","id":"abc","progressDetail":{}}"#,
            r#"{"status":"Downloading","id":"abc","progressDetail":{"current":1,"total":2048}}"#,
            r#"{"status":"Pull complete","id":"abc","progressDetail":{}}"#,
            r#"{"stream":"h"}"#,
            r#"{"stream":"i\r\n"}"#,
            r#"{"aux":{"ID":"sha256:0123"}}"#,
            r#"{"stream":"Successfully built 0123\n"}"#,
            r#"{"stream":"Successfully tagged x:t\n"}"#,
        ]);
        let (lines, mut sink) = collect();
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut sink,
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Done(outcome) = drained else {
            panic!("{drained:?}")
        };
        assert_eq!(outcome.aux_id.as_deref(), Some("sha256:0123"));
        assert_eq!(
            outcome.image_id().unwrap(),
            ImageIdent::Full("sha256:0123".into())
        );
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "Step 1/2 : FROM x",
                " ---> 671a",
                "Step 2/2 : RUN echo hi",
                "pulled layer abc (2.0 kB)",
                "hi",
                "Successfully built 0123",
                "Successfully tagged x:t",
            ]
        );
    }

    #[tokio::test]
    async fn build_stream_error_inside_the_stream() {
        let mut items = build_items(&[r#"{"stream":"E: Unable to locate package nope"}"#]);
        // bollard turns {"errorDetail":{"message":…}} into this.
        items.push(Err(BollardError::DockerStreamError {
            error: "The command '/bin/sh -c apt-get install -y nope' returned a non-zero code: 100"
                .into(),
        }));
        items.extend(build_items(&[r#"{"aux":{"ID":"sha256:never"}}"#]));
        let (lines, mut sink) = collect();
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut sink,
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Failed(e) = drained else {
            panic!("{drained:?}")
        };
        let err = map_bollard_error(
            "unix:///s",
            e,
            Op::Build {
                registry: "docker.io",
            },
            None,
        );
        assert!(
            matches!(&err, EngineError::BuildFailed(m) if m.ends_with("returned a non-zero code: 100")),
            "{err:?}"
        );
        assert!(!err.is_transient());
        // The partial last line is not lost.
        assert_eq!(*lines.lock().unwrap(), ["E: Unable to locate package nope"]);

        // An errorDetail without a message still fails.
        let items = build_items(&[
            r#"{"errorDetail":{"code":1}}"#,
            r#"{"aux":{"ID":"sha256:x"}}"#,
        ]);
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(drained, Drained::Failed(_)), "{drained:?}");
    }

    #[tokio::test]
    async fn build_http_error_before_the_stream() {
        let items: Vec<Result<BuildInfo, BollardError>> =
            vec![Err(BollardError::DockerResponseServerError {
                status_code: 400,
                message: "dockerfile parse error line 2: unknown instruction: NOPE".into(),
            })];
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Failed(e) = drained else {
            panic!("{drained:?}")
        };
        let err = map_bollard_error(
            "unix:///s",
            e,
            Op::Build {
                registry: "docker.io",
            },
            None,
        );
        assert!(matches!(&err, EngineError::BuildFailed(m) if m.contains("unknown instruction")));
        assert!(!err.is_transient());
        // A base image the registry refuses is an auth failure, not a build failure.
        let err = map_bollard_error(
            "unix:///s",
            BollardError::DockerStreamError {
                error: "Head \"http://127.0.0.1:5001/v2/x/manifests/t\": no basic auth credentials"
                    .into(),
            },
            Op::Build {
                registry: "127.0.0.1:5001",
            },
            None,
        );
        assert!(matches!(&err, EngineError::Auth { registry, .. } if registry == "127.0.0.1:5001"));
        // A broken connection is the Engine being unreachable.
        let err = map_bollard_error(
            "unix:///s",
            BollardError::IOError {
                err: std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                ),
            },
            Op::Build { registry: "" },
            None,
        );
        assert!(
            err.to_string()
                .starts_with("Docker Engine unreachable at unix:///s: "),
            "{err}"
        );
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn build_stream_without_image_id_is_a_failure() {
        let items = build_items(&[
            r#"{"stream":"Step 1/1 : FROM x\n"}"#,
            r#"{"stream":" ---> 671a\n"}"#,
        ]);
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Done(outcome) = drained else {
            panic!("{drained:?}")
        };
        let err = outcome.image_id().unwrap_err();
        assert!(
            matches!(&err, EngineError::BuildFailed(m) if m.contains("without an image id")),
            "{err:?}"
        );
        // The classic builder's own line is a fallback when aux is missing.
        let outcome = BuildOutcome {
            aux_id: None,
            built_line_id: Some("0123".into()),
        };
        assert_eq!(
            outcome.image_id().unwrap(),
            ImageIdent::Short("0123".into())
        );
    }

    #[tokio::test]
    async fn build_stream_cancel_returns_promptly_and_flushes() {
        let items = build_items(&[
            r#"{"stream":"Step 2/2 : RUN sleep 60\n"}"#,
            r#"{"stream":"partial"}"#,
        ]);
        let stream = futures_util::stream::iter(items).chain(futures_util::stream::pending());
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.cancel();
        });
        let (lines, mut sink) = collect();
        let t0 = std::time::Instant::now();
        let drained = drain_build(stream, &mut sink, None, None, &cancel).await;
        assert!(matches!(drained, Drained::Cancelled), "{drained:?}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(
            *lines.lock().unwrap(),
            ["Step 2/2 : RUN sleep 60", "partial"]
        );
    }

    /// A sink that takes `room` lines, then is not ready until `open` fires.
    struct GatedSink {
        lines: Vec<String>,
        room: usize,
        open: Arc<tokio::sync::Notify>,
    }

    impl LogSink for GatedSink {
        fn line(&mut self, line: String) {
            self.lines.push(line);
        }
        fn ready(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async move {
                if self.lines.len() >= self.room {
                    self.open.notified().await;
                    self.room = usize::MAX;
                }
            })
        }
    }

    #[tokio::test]
    async fn build_stream_is_read_no_faster_than_the_sink_takes_it() {
        let items = build_items(&[
            r#"{"stream":"one\n"}"#,
            r#"{"stream":"two\n"}"#,
            r#"{"stream":"three\n"}"#,
            r#"{"aux":{"ID":"sha256:abc"}}"#,
        ]);
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&read);
        let stream = futures_util::stream::iter(items).inspect(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let open = Arc::new(tokio::sync::Notify::new());
        let mut sink = GatedSink {
            lines: Vec::new(),
            room: 1,
            open: Arc::clone(&open),
        };
        let cancel = CancellationToken::new();
        {
            let mut drain = std::pin::pin!(drain_build(stream, &mut sink, None, None, &cancel));
            assert!(futures_util::poll!(drain.as_mut()).is_pending());
            // One message read and logged, then the reader waits for the sink.
            assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 1);
            open.notify_one();
            let drained = drain.await;
            assert!(matches!(drained, Drained::Done(_)), "{drained:?}");
        }
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert_eq!(sink.lines, ["one", "two", "three"]);
    }

    #[tokio::test]
    async fn push_stream_gives_digest_and_condensed_lines() {
        let hex = "ab".repeat(32);
        let json = [
            r#"{"status":"The push refers to repository [127.0.0.1:5000/kiln/x]"}"#.to_string(),
            r#"{"status":"Preparing","progressDetail":{},"id":"1a2b3c4d5e6f"}"#.into(),
            r#"{"status":"Pushing","progressDetail":{"current":512,"total":12300000},"id":"1a2b3c4d5e6f"}"#.into(),
            r#"{"status":"Pushed","progressDetail":{},"id":"1a2b3c4d5e6f"}"#.into(),
            format!(r#"{{"status":"r1: digest: sha256:{hex} size: 528"}}"#),
            format!(r#"{{"progressDetail":{{}},"aux":{{"Tag":"r1","Digest":"sha256:{hex}","Size":528}}}}"#),
        ];
        let items: Vec<Result<CreateImageInfo, BollardError>> = json
            .iter()
            .map(|l| Ok(serde_json::from_str(l).unwrap()))
            .collect();
        let (lines, mut sink) = collect();
        let drained = drain_progress(
            futures_util::stream::iter(items),
            &mut sink,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Done(digest) = drained else {
            panic!("{drained:?}")
        };
        assert_eq!(digest, Some(format!("sha256:{hex}")));
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "The push refers to repository [127.0.0.1:5000/kiln/x]".to_string(),
                "pushed layer 1a2b3c4d5e6f (12.3 MB)".into(),
                format!("r1: digest: sha256:{hex} size: 528"),
            ]
        );
        // A push error in the stream carries the registry's text.
        let items: Vec<Result<CreateImageInfo, BollardError>> =
            vec![Err(BollardError::DockerStreamError {
                error: "unauthorized: authentication required".into(),
            })];
        let drained = drain_progress(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Failed(e) = drained else {
            panic!("{drained:?}")
        };
        let err = map_bollard_error(
            "unix:///s",
            e,
            Op::Push {
                image: "127.0.0.1:5001/x:t",
            },
            None,
        );
        assert_eq!(
            err.to_string(),
            "registry 127.0.0.1:5001 refused access: unauthorized: authentication required"
        );
    }

    /// The push rewrite relies on how bollard spells a create_image request; this pins it for
    /// the bollard version in use (and shows the unversioned path).
    #[tokio::test]
    async fn bollard_create_image_uri_is_what_the_push_rewrite_expects() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = seen.clone();
        let docker = Docker::connect_with_http("tcp://127.0.0.1:1", 2, API_DEFAULT_VERSION)
            .unwrap()
            .with_request_modifier(move |req| {
                sink.lock().unwrap().push(req.uri().to_string());
                req
            });
        let options = CreateImageOptionsBuilder::default()
            .from_image(PUSH_PLACEHOLDER)
            .tag("kiln")
            .build();
        let mut stream = docker.create_image(Some(options), None, None);
        assert!(
            stream.next().await.unwrap().is_err(),
            "nothing listens on port 1"
        );
        let uri = seen.lock().unwrap()[0].clone();
        assert!(
            uri.starts_with("http://127.0.0.1:1/images/create?"),
            "{uri}"
        );
        assert_eq!(
            rewrite_uri(&uri, "/images/create", "/images/r/x/push?tag=t").as_deref(),
            Some("http://127.0.0.1:1/images/r/x/push?tag=t")
        );
    }

    #[test]
    fn credentials_only_go_to_their_own_registry() {
        let c = Credential::new("127.0.0.1:5001", "u", "p");
        let mut lines = Vec::new();
        let mut log = |l: String| lines.push(l);
        assert!(credential_for("127.0.0.1:5001/kiln/x:t", Some(&c), &mut log).is_some());
        assert!(credential_for("127.0.0.1:5000/kiln/x:t", Some(&c), &mut log).is_none());
        assert!(credential_for("debian", Some(&c), &mut log).is_none());
        assert!(credential_for("debian", None, &mut log).is_none());
        let hub = Credential::new("https://index.docker.io/v1/", "u", "p");
        assert!(credential_for("debian:bookworm", Some(&hub), &mut log).is_some());
        assert_eq!(lines.len(), 2, "{lines:?}");
    }

    #[test]
    fn transient_classification() {
        let run = EngineError::BuildFailed(
            "The command '/bin/sh -c apt-get install -y x' returned a non-zero code: 100".into(),
        );
        assert!(!run.is_transient());
        assert!(
            !EngineError::BuildFailed(
                "dockerfile parse error line 1: unknown instruction: FOO".into()
            )
            .is_transient()
        );
        assert!(
            EngineError::Unreachable {
                endpoint: "unix:///x".into(),
                message: "connection refused".into()
            }
            .is_transient()
        );
        assert!(
            EngineError::PushFailed {
                image: "a".into(),
                message: "Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused".into()
            }
            .is_transient()
        );
        assert!(
            EngineError::PullFailed {
                image: "a".into(),
                message: "received unexpected HTTP status: 503 Service Unavailable".into()
            }
            .is_transient()
        );
        assert!(
            EngineError::Api {
                operation: "tag".into(),
                status: 500,
                message: "x".into()
            }
            .is_transient()
        );
        assert!(
            !EngineError::Api {
                operation: "tag".into(),
                status: 409,
                message: "x".into()
            }
            .is_transient()
        );
        assert!(
            !EngineError::Auth {
                registry: "r".into(),
                message: "unauthorized".into()
            }
            .is_transient()
        );
        assert!(!EngineError::Cancelled.is_transient());
        assert!(!EngineError::NoImage("x".into()).is_transient());
    }

    #[test]
    fn secrets_never_reach_messages_or_debug() {
        let secret = "Sup3r+Secret/Pw?";
        let cred =
            Credential::new("127.0.0.1:5001", "kiln", secret).with_identity_token("tok-Secret-123");
        let leaked = format!("unauthorized: bad password {secret} token tok-Secret-123");
        let errors = [
            EngineError::Auth {
                registry: "127.0.0.1:5001".into(),
                message: redact(leaked.clone(), Some(&cred)),
            },
            EngineError::PushFailed {
                image: "x".into(),
                message: redact(leaked.clone(), Some(&cred)),
            },
            EngineError::BuildFailed(redact(leaked, Some(&cred))),
        ];
        for e in &errors {
            let text = format!(
                "{e} {e:?} {cred:?} {:?}",
                BuildRequest {
                    pull_auth: Some(&cred),
                    ..Default::default()
                }
            );
            assert!(
                !text.contains(secret) && !text.contains("tok-Secret-123"),
                "{text}"
            );
        }
    }
}
