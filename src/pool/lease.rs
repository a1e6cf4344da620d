//! The pool as the jobs' [`Builders`]: one Engine client per worker, `capacity` slots per
//! worker, the spec's worker chosen by [`placement`](super::placement) among the healthy ones
//! with a free slot, and a lease that gives its slot back when dropped.
//!
//! Why here and not in jobs: jobs only know the seam (`Builders::lease`), so one Engine or
//! many workers are the same to them; `max_parallel_builds` stays the jobs' global cap.
//! A lease that cannot be had yet (every worker down or full) waits — it is not an attempt —
//! and wakes when a slot is given back or a worker's health changes, or when cancelled.
//!
//! One exception: when no worker is healthy and every one of them refused Kiln at set-up (its
//! TLS certificate, which the next probe will refuse again), waiting would hide the mistake
//! forever. The lease then goes to the spec's worker anyway, so the attempt fails with the
//! Engine's own refusal in the job's error, as with a single Engine.

use super::health::{Health, PROBE_TIMEOUT, spawn_probe};
use super::placement::{Unplaced, WorkerLoad, place};
use super::worker_config::WorkerConfig;
use crate::builder::{Builder, Builders, Lease};
use crate::docker::{Engine, EngineEndpoint, EngineError};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How often a worker is probed when `worker_probe_interval` is not set.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);

struct Worker {
    config: WorkerConfig,
    endpoint: EngineEndpoint,
    /// The Engine client, made on the first lease (a worker that is down at start only
    /// stays unhealthy); bollard connects on first use.
    engine: Mutex<Option<Arc<dyn Builder>>>,
    health: watch::Receiver<Health>,
}

impl Worker {
    fn engine(&self) -> Result<Arc<dyn Builder>, EngineError> {
        let mut slot = match self.engine.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(engine) = slot.as_ref() {
            return Ok(Arc::clone(engine));
        }
        let engine: Arc<dyn Builder> = Arc::new(Engine::unverified(&self.endpoint)?);
        *slot = Some(Arc::clone(&engine));
        Ok(engine)
    }
}

struct Inner {
    workers: Vec<Worker>,
    /// Running builds per worker, same order as `workers`.
    running: Mutex<Vec<usize>>,
    /// Woken when a slot is given back or a worker's health changes.
    changed: Notify,
}

/// One worker's state as shown by the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    pub name: String,
    pub kind: &'static str,
    pub endpoint: Option<String>,
    pub healthy: bool,
    pub error: Option<String>,
    pub capacity: usize,
    pub running: usize,
}

/// The build workers as [`Builders`]. Cheap to clone (shared state).
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl WorkerPool {
    /// The pool of `workers`, each probed every `interval` until `shutdown`. Set-up mistakes
    /// (a bad endpoint, a missing TLS file named by the environment) fail here; a worker
    /// that does not answer only stays unhealthy. Needs a Tokio runtime (spawns the probes).
    pub fn new(
        workers: &[WorkerConfig],
        interval: Duration,
        shutdown: &CancellationToken,
    ) -> Result<WorkerPool, EngineError> {
        let mut built = Vec::with_capacity(workers.len());
        for config in workers {
            let endpoint = EngineEndpoint {
                host: config.endpoint.clone(),
                tls_verify: config.tls_verify,
                cert_path: config.cert_path.clone(),
            };
            endpoint.resolve(|name| std::env::var(name).ok())?;
            let (health, _task) =
                spawn_probe(config.clone(), interval, PROBE_TIMEOUT, shutdown.clone());
            built.push(Worker {
                config: config.clone(),
                endpoint,
                engine: Mutex::new(None),
                health,
            });
        }
        let inner = Arc::new(Inner {
            running: Mutex::new(vec![0; built.len()]),
            workers: built,
            changed: Notify::new(),
        });
        for worker in &inner.workers {
            let mut health = worker.health.clone();
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                while health.changed().await.is_ok() {
                    match weak.upgrade() {
                        Some(inner) => inner.changed.notify_waiters(),
                        None => return,
                    }
                }
            });
        }
        Ok(WorkerPool { inner })
    }

    /// The pool `config` describes: its `[[workers]]` (or the single Engine of the
    /// `docker_*` keys) probed every `worker_probe_interval`.
    pub fn from_config(
        config: &crate::config::Config,
        shutdown: &CancellationToken,
    ) -> Result<WorkerPool, EngineError> {
        WorkerPool::new(&config.workers, config.worker_probe_interval, shutdown)
    }

    /// Every worker's name, health and load, in config order.
    pub fn status(&self) -> Vec<WorkerStatus> {
        let running = self.running_snapshot();
        self.inner
            .workers
            .iter()
            .zip(running)
            .map(|(w, running)| {
                let health = w.health.borrow();
                WorkerStatus {
                    name: w.config.name.clone(),
                    kind: w.config.kind.as_str(),
                    endpoint: w.config.endpoint.clone(),
                    healthy: health.is_healthy(),
                    error: health.error().map(str::to_owned),
                    capacity: w.config.capacity,
                    running,
                }
            })
            .collect()
    }

    fn running_snapshot(&self) -> Vec<usize> {
        match self.inner.running.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Takes a slot on the spec's worker now, or says why none can be had.
    fn try_lease(&self, spec: &str) -> Result<Lease, Unplaced> {
        let mut running = match self.inner.running.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let healthy: Vec<bool> = self
            .inner
            .workers
            .iter()
            .map(|w| w.health.borrow().is_healthy())
            .collect();
        let loads: Vec<WorkerLoad<'_>> = self
            .inner
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| WorkerLoad {
                name: &w.config.name,
                healthy: healthy[i],
                capacity: w.config.capacity,
                running: running[i],
            })
            .collect();
        let index = match place(spec, &loads) {
            Ok(placed) => placed.index,
            Err(Unplaced::NoneHealthy) if self.all_refused() => {
                let anyway: Vec<WorkerLoad<'_>> = loads
                    .iter()
                    .map(|l| WorkerLoad {
                        healthy: true,
                        ..*l
                    })
                    .collect();
                place(spec, &anyway)?.index
            }
            Err(why) => return Err(why),
        };
        let engine = match self.inner.workers[index].engine() {
            Ok(engine) => engine,
            Err(error) => {
                // The probe said healthy a moment ago; the next probe will say otherwise.
                tracing::warn!(worker = %self.inner.workers[index].config.name, %error, "cannot reach build worker");
                return Err(Unplaced::NoneHealthy);
            }
        };
        running[index] += 1;
        drop(running);
        let inner = Arc::clone(&self.inner);
        Ok(Lease::returned_by(
            engine,
            Box::new(move || {
                let mut running = match inner.running.lock() {
                    Ok(r) => r,
                    Err(poisoned) => poisoned.into_inner(),
                };
                running[index] = running[index].saturating_sub(1);
                drop(running);
                inner.changed.notify_waiters();
            }),
        ))
    }

    /// Whether every worker's last probe was a set-up refusal (not "down").
    fn all_refused(&self) -> bool {
        self.inner.workers.iter().all(|w| {
            w.health
                .borrow()
                .error()
                .is_some_and(crate::docker::looks_like_tls_refusal)
        })
    }

    /// The worker name a lease's builder belongs to (for the job record).
    pub fn worker_names(&self) -> Vec<String> {
        self.inner
            .workers
            .iter()
            .map(|w| w.config.name.clone())
            .collect()
    }
}

impl Builders for WorkerPool {
    fn lease<'a>(
        &'a self,
        spec: &'a str,
        job: u64,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Lease, EngineError>> {
        Box::pin(async move {
            let mut logged: Option<Unplaced> = None;
            loop {
                // Registered before the check, so a release between check and wait wakes us.
                let notified = self.inner.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match self.try_lease(spec) {
                    Ok(lease) => return Ok(lease),
                    Err(why) => {
                        if logged != Some(why) {
                            tracing::info!(job, spec, reason = %why, "job waits for a build worker");
                            logged = Some(why);
                        }
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Err(EngineError::Cancelled),
                    _ = &mut notified => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::WorkerKind;

    fn worker(name: &str, endpoint: &str, capacity: usize) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            kind: WorkerKind::Docker,
            endpoint: Some(endpoint.into()),
            capacity,
            tls_verify: Some(false),
            cert_path: None,
        }
    }

    async fn wait_healthy(pool: &WorkerPool, name: &str) {
        let index = pool
            .inner
            .workers
            .iter()
            .position(|w| w.config.name == name)
            .expect("worker exists");
        let mut health = pool.inner.workers[index].health.clone();
        while !health.borrow_and_update().is_healthy() {
            health.changed().await.expect("probe runs");
        }
    }

    #[tokio::test]
    async fn a_down_worker_gets_no_lease_and_a_cancelled_wait_is_not_an_attempt() {
        let shutdown = CancellationToken::new();
        let pool = WorkerPool::new(
            &[worker("gone", "unix:///nonexistent/kiln-test.sock", 1)],
            Duration::from_secs(3600),
            &shutdown,
        )
        .expect("valid config");
        let mut health = pool.inner.workers[0].health.clone();
        while matches!(*health.borrow_and_update(), Health::Unknown) {
            health.changed().await.expect("probe runs");
        }
        assert!(matches!(pool.try_lease("a"), Err(Unplaced::NoneHealthy)));
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(matches!(
            pool.lease("a", 1, &cancel).await,
            Err(EngineError::Cancelled)
        ));
        assert!(!pool.status()[0].healthy);
        assert!(pool.status()[0].error.is_some());
        shutdown.cancel();
    }

    /// Needs the main Engine (scripts/dev-env.sh up).
    #[tokio::test]
    async fn slots_are_taken_and_given_back_on_the_local_engine() {
        let shutdown = CancellationToken::new();
        let pool = WorkerPool::new(
            &[worker("local", "unix:///var/run/docker.sock", 1)],
            Duration::from_secs(3600),
            &shutdown,
        )
        .expect("valid config");
        wait_healthy(&pool, "local").await;
        let cancel = CancellationToken::new();
        let lease = pool.lease("spec", 1, &cancel).await.expect("a free slot");
        assert_eq!(pool.status()[0].running, 1);
        assert!(matches!(pool.try_lease("spec"), Err(Unplaced::AllBusy)));
        // A waiting lease gets the slot once the first is dropped.
        let waiting = {
            let pool = pool.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { pool.lease("spec", 2, &cancel).await.map(|_| ()) })
        };
        drop(lease);
        waiting
            .await
            .expect("no panic")
            .expect("leased after release");
        assert_eq!(pool.status()[0].running, 0);
        shutdown.cancel();
    }
}
