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

use super::health::{self, Health, PROBE_TIMEOUT, spawn_probe};
use super::placement::{Unplaced, WorkerLoad, place};
use super::worker_config::WorkerConfig;
use crate::builder::{Builder, Builders, Lease, Slot};
use crate::docker::{Engine, EngineEndpoint, EngineError};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// Written by the probe, and by a lease whose attempt found the worker gone.
    health: Arc<watch::Sender<Health>>,
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

/// What one worker has been doing since Kiln started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Load {
    running: usize,
    /// Leases taken (attempts placed here).
    builds: u64,
    /// Seconds leases were held, ended ones only.
    build_seconds: f64,
}

struct Inner {
    workers: Vec<Worker>,
    /// Per worker, same order as `workers`.
    loads: Mutex<Vec<Load>>,
    /// Woken when a slot is given back or a worker's health changes.
    changed: Notify,
}

/// One worker's state as shown by the API.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerStatus {
    pub name: String,
    pub kind: &'static str,
    pub endpoint: Option<String>,
    pub healthy: bool,
    pub error: Option<String>,
    pub capacity: usize,
    pub running: usize,
    /// Attempts placed on this worker since Kiln started.
    pub builds: u64,
    /// Seconds of ended attempts on this worker since Kiln started.
    pub build_seconds: f64,
    /// Since when it has been healthy or unhealthy (`None`: not probed yet).
    pub since: Option<std::time::SystemTime>,
}

/// The build workers as [`Builders`]. Cheap to clone (shared state).
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.inner.workers.iter().map(|w| &w.config.name))
            .finish()
    }
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
            let health = Arc::new(watch::Sender::new(Health::Unknown));
            spawn_probe(
                Arc::clone(&health),
                config.clone(),
                interval,
                PROBE_TIMEOUT,
                shutdown.clone(),
            );
            built.push(Worker {
                config: config.clone(),
                endpoint,
                engine: Mutex::new(None),
                health,
            });
        }
        let inner = Arc::new(Inner {
            loads: Mutex::new(vec![Load::default(); built.len()]),
            workers: built,
            changed: Notify::new(),
        });
        for worker in &inner.workers {
            let mut health = worker.health.subscribe();
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

    /// Waits until every worker has answered or failed its first probe (each probe is
    /// bounded by its timeout): a one-shot `kiln sync` must know whether anything can build
    /// before it queues jobs, where `kiln serve` would just let them wait.
    pub async fn first_probes(&self) {
        for worker in &self.inner.workers {
            let mut health = worker.health.subscribe();
            // Err only when the sender is gone, and the pool holds it.
            let _ = health.wait_for(|h| !matches!(h, Health::Unknown)).await;
        }
    }

    /// Every worker's name, health and load, in config order.
    pub fn status(&self) -> Vec<WorkerStatus> {
        let loads = self.loads_snapshot();
        self.inner
            .workers
            .iter()
            .zip(loads)
            .map(|(w, load)| {
                let health = w.health.borrow();
                WorkerStatus {
                    name: w.config.name.clone(),
                    kind: w.config.kind.as_str(),
                    endpoint: w.config.endpoint.clone(),
                    healthy: health.is_healthy(),
                    error: health.error().map(str::to_owned),
                    capacity: w.config.capacity,
                    running: load.running,
                    builds: load.builds,
                    build_seconds: load.build_seconds,
                    since: health.since(),
                }
            })
            .collect()
    }

    fn loads_snapshot(&self) -> Vec<Load> {
        self.inner.loads().clone()
    }

    /// Takes a slot on the spec's worker now, or says why none can be had.
    fn try_lease(&self, spec: &str) -> Result<Lease, Unplaced> {
        let mut counts = self.inner.loads();
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
                running: counts[i].running,
            })
            .collect();
        let mut forced = false;
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
                forced = true;
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
        counts[index].running += 1;
        counts[index].builds += 1;
        drop(counts);
        let slot = PoolSlot {
            inner: Arc::clone(&self.inner),
            index,
            started: Instant::now(),
            forced,
        };
        Ok(Lease::in_slot(engine, Box::new(slot)))
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
}

impl Inner {
    fn loads(&self) -> std::sync::MutexGuard<'_, Vec<Load>> {
        match self.loads.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// One taken slot of one worker; dropping it gives the slot back and wakes waiting leases.
struct PoolSlot {
    inner: Arc<Inner>,
    index: usize,
    started: Instant,
    /// Leased although the worker was unhealthy (every worker refused Kiln at set-up): its
    /// failure is the refusal the job must show, not a lost worker.
    forced: bool,
}

impl Slot for PoolSlot {
    fn worker(&self) -> &str {
        &self.inner.workers[self.index].config.name
    }

    fn recheck(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let worker = &self.inner.workers[self.index];
            let outcome = health::probe(&worker.config, PROBE_TIMEOUT).await;
            health::record(&worker.health, &worker.config.name, outcome.clone());
            if self.forced { Ok(()) } else { outcome }
        })
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        let mut loads = self.inner.loads();
        let load = &mut loads[self.index];
        load.running = load.running.saturating_sub(1);
        load.build_seconds += self.started.elapsed().as_secs_f64();
        drop(loads);
        self.inner.changed.notify_waiters();
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
        let mut health = pool.inner.workers[index].health.subscribe();
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
        let mut health = pool.inner.workers[0].health.subscribe();
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
