//! The Docker Engine as a [`Builder`]: every method is the Engine's own, plus the base-image
//! refresh rule; and one Engine as [`Builders`]: it serves every job at once, so each lease is
//! the Engine itself, given at once.

use super::{Builder, Builders, Lease};
use crate::docker::auth::Credential;
use crate::docker::{BuildRequest, BuiltImage, Engine, EngineError, LogSink};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Builder for Engine {
    fn name(&self) -> &str {
        self.endpoint()
    }

    fn refresh_base<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a Credential>,
        log: &'a mut dyn LogSink,
    ) -> BoxFuture<'a, Result<Option<String>, EngineError>> {
        Box::pin(async move {
            match Engine::pull(self, image, auth, log).await {
                Ok(()) => {}
                // A refused credential must not fall back to a copy the Engine has cached.
                Err(e @ EngineError::Auth { .. }) => return Err(e),
                Err(e @ EngineError::Unreachable { .. }) => return Err(e),
                Err(e) if Engine::image_id(self, image).await?.is_some() => {
                    log.line(format!(
                        "kiln: could not refresh the base image ({e}); using the copy in the Engine"
                    ));
                }
                Err(e) => return Err(e),
            }
            self.prepare_base(image, auth, log).await
        })
    }

    fn pull<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a Credential>,
        log: &'a mut dyn LogSink,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(Engine::pull(self, image, auth, log))
    }

    fn build<'a>(
        &'a self,
        req: &'a BuildRequest<'a>,
        log: &'a mut dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<BuiltImage, EngineError>> {
        Box::pin(Engine::build(self, req, log, cancel))
    }

    fn tag<'a>(
        &'a self,
        source: &'a str,
        target: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(Engine::tag(self, source, target))
    }

    fn push<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a Credential>,
        log: &'a mut dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(Engine::push(self, image, auth, log, cancel))
    }

    fn image_id<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, EngineError>> {
        Box::pin(Engine::image_id(self, image))
    }

    fn image_size<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<u64>, EngineError>> {
        Box::pin(Engine::image_size(self, image))
    }

    fn repo_digests<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, EngineError>> {
        Box::pin(Engine::repo_digests(self, image))
    }

    fn run_capture<'a>(
        &'a self,
        image: &'a str,
        cmd: &'a [&'a str],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(i64, String), EngineError>> {
        Box::pin(Engine::run_capture(self, image, cmd, cancel))
    }
}

impl Builders for Engine {
    fn lease<'a>(
        &'a self,
        _spec: &'a str,
        _job: u64,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Lease, EngineError>> {
        Box::pin(async move {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            Ok(Lease::shared(Arc::new(self.clone())))
        })
    }
}
