//! The builder seam: what a job needs from whatever builds its image.
//!
//! Jobs do not know which kind of builder they talk to. They ask [`Builders`] for a
//! [`Lease`] on one builder for each attempt, and talk to it through [`Builder`]: refresh the
//! base image, pull, build, tag, push, inspect, and run the package listing. Today there is one
//! kind, the Docker Engine (`engine.rs`), and one Engine serves every job at once, so its
//! lease is immediate. The next kind, a pool of BuildKit workers, implements [`Builders`] by
//! handing out one free worker per job and taking it back when the [`Lease`] is dropped; the
//! job code does not change.
//!
//! The methods return boxed futures so both traits stay object-safe: a pool can mix kinds of
//! builders behind `Arc<dyn Builder>`, and the boxing costs nothing next to a build. Errors
//! are [`EngineError`]s: their kinds (transient or not, cancelled) are what the attempt
//! policy decides on, whatever builder produced them.

mod engine;

use crate::docker::auth::Credential;
use crate::docker::{BuildRequest, BuiltImage, EngineError, LogSink};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One builder: a Docker Engine today, a BuildKit worker next.
pub trait Builder: Send + Sync {
    /// Where it is, for log lines (`unix:///var/run/docker.sock`).
    fn name(&self) -> &str;

    /// Refreshes the base image of a build (a registry checks `auth` on every build, a moved
    /// tag is picked up) and returns its own `USER` (`None`: root). A base that only this
    /// builder has, or one whose refresh failed for a reason other than access or an
    /// unreachable builder, is used as it is, with a log line.
    fn refresh_base<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a Credential>,
        log: &'a mut dyn LogSink,
    ) -> BoxFuture<'a, Result<Option<String>, EngineError>>;

    /// Pulls `image` with `auth` (an earlier job's image, for a re-use).
    fn pull<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a Credential>,
        log: &'a mut dyn LogSink,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Builds `req` on BuildKit.
    fn build<'a>(
        &'a self,
        req: &'a BuildRequest<'a>,
        log: &'a mut dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<BuiltImage, EngineError>>;

    /// Tags the image `source` as `target`.
    fn tag<'a>(
        &'a self,
        source: &'a str,
        target: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Pushes `image` and returns the manifest digest the registry stored.
    fn push<'a>(
        &'a self,
        image: &'a str,
        auth: Option<&'a Credential>,
        log: &'a mut dyn LogSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<String, EngineError>>;

    /// The id of `image` if this builder has it.
    fn image_id<'a>(&'a self, image: &'a str)
    -> BoxFuture<'a, Result<Option<String>, EngineError>>;

    /// The uncompressed size of `image` in bytes, if this builder has it and can tell (the
    /// default: it cannot; the job's changes then show no uncompressed size).
    fn image_size<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<Option<u64>, EngineError>> {
        let _ = image;
        Box::pin(async { Ok(None) })
    }

    /// The registry digests (`name@sha256:…`) this builder recorded for `image` when it
    /// pulled it (the default: none known; the job then records no base digest).
    fn repo_digests<'a>(
        &'a self,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, EngineError>> {
        let _ = image;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Runs `cmd` in a throw-away container of `image` without network; exit code and stdout.
    fn run_capture<'a>(
        &'a self,
        image: &'a str,
        cmd: &'a [&'a str],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(i64, String), EngineError>>;
}

/// Where jobs get a builder from: one per attempt of a job.
pub trait Builders: Send + Sync {
    /// A builder for one attempt of job `job` of spec `spec`; waits while none is free and
    /// fails with [`EngineError::Cancelled`] when `cancel` fires first.
    fn lease<'a>(
        &'a self,
        spec: &'a str,
        job: u64,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Lease, EngineError>>;
}

/// A builder lent to one job attempt. Dropping it gives the builder back (through its
/// [`Slot`], when a pool lent it; a single shared builder needs nothing).
pub struct Lease {
    builder: Arc<dyn Builder>,
    slot: Option<Box<dyn Slot>>,
}

/// A pool's side of a lease: which worker lent the builder, and whether that worker still
/// answers. Dropping the slot gives it back to the pool.
pub trait Slot: Send + Sync {
    /// The worker's name (`w1`), kept on the job.
    fn worker(&self) -> &str;

    /// Asks the worker now whether it is still there, after an attempt on it failed. `Err`
    /// holds why not (the pool has then marked it unhealthy, so the next lease goes
    /// elsewhere).
    fn recheck(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl Lease {
    /// A lease on a builder that serves every job at once: nothing to give back.
    pub fn shared(builder: Arc<dyn Builder>) -> Lease {
        Lease {
            builder,
            slot: None,
        }
    }

    /// A lease on one of a pool's slots; the slot goes back when the lease is dropped.
    pub fn in_slot(builder: Arc<dyn Builder>, slot: Box<dyn Slot>) -> Lease {
        Lease {
            builder,
            slot: Some(slot),
        }
    }

    pub fn builder(&self) -> &dyn Builder {
        self.builder.as_ref()
    }

    /// The name of the worker that lent the builder (`None`: not from a pool).
    pub fn worker(&self) -> Option<&str> {
        self.slot.as_deref().map(Slot::worker)
    }

    /// Whether the lending worker still answers (always, for a shared builder).
    pub async fn recheck(&self) -> Result<(), String> {
        match self.slot.as_deref() {
            Some(slot) => slot.recheck().await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("builder", &self.builder.name())
            .field("worker", &self.worker())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::{Engine, EngineEndpoint};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real Engine client that has not connected (nothing listens on port 1): a lease needs
    /// no Docker to be made.
    fn unconnected() -> Engine {
        let endpoint = EngineEndpoint {
            host: Some("tcp://127.0.0.1:1".into()),
            tls_verify: Some(false),
            ..EngineEndpoint::default()
        };
        Engine::unverified(&endpoint).unwrap()
    }

    fn engine() -> Arc<dyn Builder> {
        Arc::new(unconnected())
    }

    /// A slot that counts how often it was given back.
    struct CountingSlot(Arc<AtomicUsize>);

    impl Slot for CountingSlot {
        fn worker(&self) -> &str {
            "w1"
        }
        fn recheck(&self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Err("w1: connection refused".to_string()) })
        }
    }

    impl Drop for CountingSlot {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_slot_lease_gives_its_slot_back_once_and_names_its_worker() {
        let returned = Arc::new(AtomicUsize::new(0));
        let lease = Lease::in_slot(engine(), Box::new(CountingSlot(returned.clone())));
        assert_eq!(lease.builder().name(), "tcp://127.0.0.1:1");
        assert_eq!(lease.worker(), Some("w1"));
        assert!(format!("{lease:?}").contains("w1"));
        assert_eq!(lease.recheck().await, Err("w1: connection refused".into()));
        drop(lease);
        assert_eq!(returned.load(Ordering::SeqCst), 1);
        let shared = Lease::shared(engine());
        assert_eq!(shared.worker(), None);
        assert_eq!(shared.recheck().await, Ok(()));
        drop(shared);
        assert_eq!(returned.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn one_engine_lends_itself_to_every_job_at_once() {
        let engine = unconnected();
        let cancel = CancellationToken::new();
        let a = engine.lease("a", 1, &cancel).await.unwrap();
        let b = engine.lease("b", 2, &cancel).await.unwrap();
        assert_eq!(a.builder().name(), b.builder().name());
        cancel.cancel();
        assert!(matches!(
            engine.lease("c", 3, &cancel).await,
            Err(EngineError::Cancelled)
        ));
    }
}
