//! A connection to one Docker Engine and the small image operations (tag, inspect, history,
//! remove) the other files build on.
//!
//! Paths are sent without an API version prefix (bollard joins an absolute path onto the
//! versioned URL), so the Engine answers in its own newest API version; the models are
//! lenient enough for 20.10 and newer. A controller may start while its Engine is down:
//! [`Engine::connect_when_ready`] waits with the shared backoff, [`Engine::unverified`]
//! skips the version negotiation.

use super::auth::Credential;
use super::endpoint::{EngineEndpoint, Transport};
use super::error::{EngineError, Op, bollard_message, map_bollard_error};
use super::headers::url_safe_registry_headers;
use super::reference::split_reference;
use crate::backoff::Backoff;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{RemoveImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::{API_DEFAULT_VERSION, Docker};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Seconds bollard waits for response headers (not for a whole streamed build or push).
pub(super) const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A connection to one Docker Engine (cheap to clone: one shared HTTP client).
#[derive(Clone, Debug)]
pub struct Engine {
    pub(super) docker: Docker,
    pub(super) endpoint: String,
    /// Where the Engine is and how to reach it, for the BuildKit builds that open their own
    /// connection on a runtime of their own (`crate::buildkit`).
    pub(super) transport: Transport,
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
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
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
                _ = tokio::time::sleep(backoff.failed()) => {}
            }
        }
    }

    /// A client for `endpoint` that has not talked to the Engine yet (no I/O besides reading
    /// the TLS files): for a controller that must start while its Engine is down. Requests
    /// fail with [`EngineError::Unreachable`] until the Engine answers; paths carry no API
    /// version, so nothing depends on the skipped negotiation.
    pub fn unverified(endpoint: &EngineEndpoint) -> Result<Engine, EngineError> {
        let transport = endpoint.resolve(|name| std::env::var(name).ok())?;
        let host = transport.host().to_owned();
        let docker = client(&transport)?;
        Ok(Engine {
            docker: docker.with_request_modifier(url_safe_registry_headers),
            endpoint: host,
            transport,
        })
    }

    /// The endpoint text, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How to reach the Engine (host and TLS material).
    pub fn transport(&self) -> &Transport {
        &self.transport
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

    /// The uncompressed size of `image_ref` as the Engine reports it (`docker image inspect`'s
    /// `Size`: every layer's unpacked bytes); `None` when the Engine does not have it.
    pub async fn image_size(&self, image_ref: &str) -> Result<Option<u64>, EngineError> {
        match self.docker.inspect_image(image_ref).await {
            Ok(inspect) => Ok(inspect.size.and_then(|s| u64::try_from(s).ok())),
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 400,
                ..
            }) => Ok(None),
            Err(e) => Err(self.map_err(e, Op::Other("image inspect"), None)),
        }
    }

    /// The registry digests (`name@sha256:…`) the Engine recorded for `image_ref` when it
    /// pulled or pushed it (`docker image inspect`'s `RepoDigests`); empty when it has none.
    pub async fn repo_digests(&self, image_ref: &str) -> Result<Vec<String>, EngineError> {
        match self.docker.inspect_image(image_ref).await {
            Ok(inspect) => Ok(inspect.repo_digests.unwrap_or_default()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 400,
                ..
            }) => Ok(Vec::new()),
            Err(e) => Err(self.map_err(e, Op::Other("image inspect"), None)),
        }
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

    /// Turns a bollard error into an [`EngineError`] for operation `op`.
    pub(super) fn map_err(
        &self,
        e: BollardError,
        op: Op<'_>,
        auth: Option<&Credential>,
    ) -> EngineError {
        map_bollard_error(&self.endpoint, e, op, auth)
    }
}

/// A bollard client for `transport` (no API version negotiation: bollard sends paths without
/// a version prefix, so the Engine answers in its own version). Also used by
/// `crate::buildkit`, whose builds each run on a runtime of their own.
pub(crate) fn client(transport: &Transport) -> Result<Docker, EngineError> {
    match transport {
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
        endpoint: transport.host().to_string(),
        message: bollard_message(&e),
    })
}
