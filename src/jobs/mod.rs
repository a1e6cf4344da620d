//! Build jobs: take queued jobs from the store, run them through a builder, record every log
//! line and the outcome.
//!
//! This is where the store (what to do) meets the builder (how): the builder layer knows
//! nothing of jobs, the store knows nothing of Docker. Jobs hold the seam
//! ([`crate::builder::Builders`]), never a concrete Engine, and lease one builder per attempt.
//! A job runs as: mark `running` → lease a builder → resolve the base image's credential (the
//! `pullSecret` the recorded Dockerfile names), refresh the base and read its user → the
//! Dockerfile reconcile rendered and stored with the job, with the base's own `USER` restored
//! at the end → build (or, for a re-use, retag the earlier image) → push every tag →
//! `succeeded` / `reused` / `failed`. What is inside the image is listed by one throw-away
//! container that runs beside the build's last steps and the push, so it adds no time to a job
//! that pushes: it starts from the image of the last step that writes files while the builder
//! still writes the labels (or from the finished image). Log lines stream through a bounded
//! hand-off to one writer task that appends them to the store in batches with timestamps.
//!
//! What makes it trustworthy:
//!
//! * **Newest wins.** A job the store marks `cancelled` while it runs (superseded, spec
//!   deleted) has its token cancelled: the builder request is dropped, the build stops,
//!   nothing more is pushed. The store never lets a worker overwrite a cancellation.
//! * **Nothing twice.** Tags already pushed are recorded on the job (`pushed`) and skipped by a
//!   retry or after a restart; an image already built for the job's tag is not rebuilt.
//! * **Transient failures retry.** An unreachable builder or registry, a 5xx, a broken
//!   connection: retried with exponential backoff up to `max_attempts`, each attempt logged. A
//!   failing `RUN` is not transient and fails at once. The decision is the pure
//!   [`attempt::decide`].
//! * **Bounded.** A per-job timeout stops the build ("timed out after …"); on shutdown running
//!   builds get a grace period, then are stopped and re-queued for the next start.
//! * **Event-driven.** One loop owns the running jobs (a `JoinSet`): it wakes on store events
//!   (a job queued or cancelled, a sync applied) and on a job's end, never on a timer.

pub mod attempt;
mod log_sink;

use crate::builder::{Builder, Builders};
use crate::docker::auth::{Credential, RegistryAuths, registry_of};
use crate::docker::{BuildRequest, EngineError, LogSink};
use crate::dockerfile;
use crate::model::{InstalledPackage, InstalledPackages, Job, JobId, JobPlan, JobStatus, now};
use crate::store::{Store, StoreError, StoreEvent};
use attempt::{AttemptPolicy, Decision, FailureKind, MAX_RETRY_DELAY};
use log_sink::JobLog;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What is inside an image, or the log line that says why it could not be listed.
type Listing = Result<InstalledPackages, String>;

#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
    #[error("timed out after {0}")]
    TimedOut(String),
    /// The attempt failed and its worker no longer answers: the next attempt goes elsewhere.
    #[error("worker {worker} lost: {why} (the attempt ended with: {attempt})")]
    WorkerLost {
        worker: String,
        why: String,
        attempt: String,
    },
    /// A package source refused the credential or did not answer (`crate::sources`).
    #[error(transparent)]
    Source(#[from] crate::sources::SourceFailure),
    /// A package source's credential or key could not be read.
    #[error(transparent)]
    SourceSetup(#[from] crate::sources::SourceError),
}

impl JobError {
    fn is_transient(&self) -> bool {
        match self {
            JobError::Engine(e) => e.is_transient(),
            JobError::WorkerLost { .. } => true,
            JobError::Source(f) => f.is_transient(),
            _ => false,
        }
    }
}

/// What the workers need besides the store and the Engine.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    /// Registry to push to (`127.0.0.1:5000`); `None`: images stay in the local Engine.
    pub registry: Option<String>,
    /// Credentials from the docker config.json.
    pub auths: RegistryAuths,
    /// `pullSecret` name → registry host whose credential it means.
    pub pull_secrets: BTreeMap<String, String>,
    /// CA bundle bytes injected into builds.
    pub ca_bundle: Option<Vec<u8>>,
    pub max_parallel: usize,
    pub timeout: Duration,
    /// Time limit of each image test (`tests:` in the spec).
    pub image_test_timeout: Duration,
    /// Attempts per job for transient failures.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, at most [`MAX_RETRY_DELAY`].
    pub retry_backoff: Duration,
    /// How long running builds may go on after a shutdown request.
    pub shutdown_grace: Duration,
    /// Repository URL for the source label.
    pub source_url: String,
    /// The package sources (`[sources.NAME]`) and the running jobs' redaction.
    pub sources: crate::sources::JobSources,
    /// Network of the RUN steps (`build_network`); `None`: the Engine's default.
    pub build_network: Option<String>,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            registry: None,
            auths: RegistryAuths::empty(),
            pull_secrets: BTreeMap::new(),
            ca_bundle: None,
            max_parallel: 2,
            timeout: Duration::from_secs(3600),
            image_test_timeout: crate::image_tests::DEFAULT_TIMEOUT,
            max_attempts: 3,
            retry_backoff: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            source_url: String::new(),
            sources: Default::default(),
            build_network: None,
        }
    }
}

impl BuildSettings {
    /// `registry/name`, or `kiln/name` without a registry.
    pub fn image_repo(&self, spec: &str) -> String {
        match &self.registry {
            Some(registry) => format!("{}/{spec}", registry.trim_end_matches('/')),
            None => format!("kiln/{spec}"),
        }
    }

    /// `repo:rN-sha7` and `repo:latest`.
    pub fn tags(&self, job: &Job) -> Vec<String> {
        let repo = self.image_repo(&job.spec);
        let sha7 = job.commit.get(..7).unwrap_or(&job.commit);
        vec![
            format!("{repo}:r{}-{sha7}", job.revision),
            format!("{repo}:latest"),
        ]
    }

    /// The attempt policy these settings configure.
    pub fn attempt_policy(&self) -> AttemptPolicy {
        AttemptPolicy {
            max_attempts: self.max_attempts,
            first_delay: self.retry_backoff,
            max_delay: MAX_RETRY_DELAY,
        }
    }

    fn push_credential(&self, image: &str) -> Option<&Credential> {
        self.auths.for_registry(&registry_of(image))
    }
}

/// How one attempt ended.
enum Attempt {
    Done(JobStatus),
    Failed(JobError),
    /// Stopped by Kiln's shutdown: back to the queue for the next start.
    Requeue,
}

/// Longest wait, after the shutdown grace, for stopped jobs to record themselves re-queued.
const BOOKKEEPING: Duration = Duration::from_secs(10);

/// The worker pool.
#[derive(Clone)]
pub struct Workers {
    store: Store,
    builders: Arc<dyn Builders>,
    settings: Arc<BuildSettings>,
    /// Cancelled once the shutdown grace is over: every running attempt's token is a child of
    /// it, so one call stops them all, and a stopped job goes back to the queue.
    stop: CancellationToken,
}

/// The jobs one scheduling loop ([`Workers::drain`], [`Workers::run_forever`]) started and
/// has not yet seen finish. Owned by that loop alone: no lock, and a finished task is known
/// from [`JoinSet::join_next_with_id`], not by polling.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<JobId>,
    /// Spec and cancellation token of each running job.
    jobs: HashMap<JobId, (String, CancellationToken)>,
    /// Which job a task runs, for a task that panicked.
    task_jobs: HashMap<tokio::task::Id, JobId>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn busy(&self, spec: &str) -> bool {
        self.jobs.values().any(|(s, _)| s == spec)
    }

    fn cancel(&self, job: JobId) {
        if let Some((_, token)) = self.jobs.get(&job) {
            token.cancel();
        }
    }

    /// Waits for the next job to finish and forgets it; `None` when none runs.
    async fn next_finished(&mut self) -> Option<JobId> {
        let done = self.tasks.join_next_with_id().await?;
        let (task, job) = match done {
            Ok((task, job)) => (task, Some(job)),
            Err(e) => {
                tracing::error!(error = %e, "a job task ended abnormally");
                (e.id(), None)
            }
        };
        let job = job.or_else(|| self.task_jobs.get(&task).copied());
        self.task_jobs.remove(&task);
        if let Some(job) = job {
            self.jobs.remove(&job);
        }
        job
    }

    /// Waits until every job has finished.
    async fn finish_all(&mut self) {
        while !self.tasks.is_empty() {
            self.next_finished().await;
        }
    }
}

/// What a store event asks of the scheduling loop.
enum Wake {
    /// Nothing (log lines, retention passes).
    Nothing,
    /// Jobs may have been queued or freed: look at the queue.
    Look,
    /// Events were lost: look at the queue and at the running jobs' states.
    Recheck,
}

impl Workers {
    /// Workers that take their builders from `builders` (one Docker Engine today).
    pub fn new(
        store: Store,
        builders: impl Builders + 'static,
        settings: BuildSettings,
    ) -> Workers {
        Workers {
            store,
            builders: Arc::new(builders),
            settings: Arc::new(settings),
            stop: CancellationToken::new(),
        }
    }

    /// Start every queued job that may start now: oldest first, at most `max_parallel` at a
    /// time, at most one per spec.
    fn start_ready(&self, inflight: &mut InFlight) -> Result<(), JobError> {
        if self.stop.is_cancelled() {
            return Ok(());
        }
        let queued = self.store.active_jobs()?;
        for job in queued.into_iter().filter(|j| j.status == JobStatus::Queued) {
            if inflight.len() >= self.settings.max_parallel.max(1) {
                break;
            }
            if inflight.busy(&job.spec) || inflight.jobs.contains_key(&job.id) {
                continue;
            }
            let token = self.stop.child_token();
            let (id, spec) = (job.id, job.spec.clone());
            let me = self.clone();
            let run_token = token.clone();
            let task = inflight.tasks.spawn(async move {
                if let Err(e) = me.run(job, run_token).await {
                    tracing::error!(job = id, error = %e, "job bookkeeping failed");
                }
                id
            });
            inflight.task_jobs.insert(task.id(), id);
            inflight.jobs.insert(id, (spec, token));
        }
        Ok(())
    }

    /// Stops the running jobs a store event (or, after lost events, the store) says are
    /// cancelled, and tells the loop whether to look at the queue.
    fn on_event(
        &self,
        event: Result<StoreEvent, broadcast::error::RecvError>,
        inflight: &InFlight,
    ) -> Wake {
        match event {
            Ok(StoreEvent::Job {
                job,
                status: JobStatus::Cancelled,
            }) => {
                inflight.cancel(job);
                Wake::Look
            }
            Ok(StoreEvent::Job { .. } | StoreEvent::Synced) => Wake::Look,
            Ok(StoreEvent::Log { .. } | StoreEvent::Pruned { .. }) => Wake::Nothing,
            Err(broadcast::error::RecvError::Lagged(_)) => Wake::Recheck,
            // The store (and with it the sender) lives as long as the workers.
            Err(broadcast::error::RecvError::Closed) => Wake::Nothing,
        }
    }

    /// After lost events: cancel the running jobs the store has cancelled meanwhile.
    fn recheck(&self, inflight: &InFlight) -> Result<(), JobError> {
        for id in inflight.jobs.keys() {
            if self
                .store
                .job(*id)?
                .is_some_and(|j| j.status == JobStatus::Cancelled)
            {
                inflight.cancel(*id);
            }
        }
        Ok(())
    }

    /// Run until nothing is queued or running (`kiln sync`). Returns the ids of failed jobs
    /// among those this call ran.
    pub async fn drain(&self) -> Result<Vec<JobId>, JobError> {
        let mut events = self.store.subscribe();
        let mut inflight = InFlight::default();
        let mut seen: HashSet<JobId> = HashSet::new();
        let mut look = true;
        loop {
            if look {
                self.start_ready(&mut inflight)?;
                seen.extend(inflight.jobs.keys().copied());
                if inflight.len() == 0
                    && !self
                        .store
                        .active_jobs()?
                        .iter()
                        .any(|j| j.status == JobStatus::Queued)
                {
                    break;
                }
            }
            look = tokio::select! {
                event = events.recv() => match self.on_event(event, &inflight) {
                    Wake::Nothing => false,
                    Wake::Look => true,
                    Wake::Recheck => {
                        self.recheck(&inflight)?;
                        true
                    }
                },
                Some(_) = inflight.next_finished() => true,
            };
        }
        let mut failed = Vec::new();
        for id in seen {
            if self
                .store
                .job(id)?
                .is_some_and(|j| j.status == JobStatus::Failed)
            {
                failed.push(id);
            }
        }
        failed.sort_unstable();
        Ok(failed)
    }

    /// Run until `shutdown`: start jobs as they are queued, stop the ones cancelled meanwhile.
    /// On shutdown, running builds get the grace period, then are stopped and re-queued.
    pub async fn run_forever(&self, shutdown: CancellationToken) {
        let mut events = self.store.subscribe();
        let mut inflight = InFlight::default();
        let mut look = true;
        loop {
            if look && let Err(e) = self.start_ready(&mut inflight) {
                tracing::error!(error = %e, "cannot start jobs");
            }
            look = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match self.on_event(event, &inflight) {
                    Wake::Nothing => false,
                    Wake::Look => true,
                    Wake::Recheck => {
                        if let Err(e) = self.recheck(&inflight) {
                            tracing::error!(error = %e, "cannot read running jobs");
                        }
                        true
                    }
                },
                Some(_) = inflight.next_finished() => true,
            };
        }
        if inflight.len() > 0 {
            tracing::info!(running = inflight.len(), grace = ?self.settings.shutdown_grace, "waiting for running builds");
        }
        if tokio::time::timeout(self.settings.shutdown_grace, inflight.finish_all())
            .await
            .is_ok()
        {
            return;
        }
        self.stop.cancel();
        // The stopped jobs record themselves as re-queued; wait for that bookkeeping.
        if tokio::time::timeout(BOOKKEEPING, inflight.finish_all())
            .await
            .is_err()
        {
            tracing::warn!(
                running = inflight.len(),
                "stopped jobs did not finish their bookkeeping"
            );
        }
    }

    /// What a failed attempt's error means for the attempt policy.
    fn failure_kind(&self, e: &JobError, cancel: &CancellationToken) -> FailureKind {
        match e {
            JobError::Engine(EngineError::Cancelled) if self.stop.is_cancelled() => {
                FailureKind::Stopped
            }
            _ if cancel.is_cancelled() => FailureKind::Permanent,
            JobError::Source(f) if !f.is_transient() => FailureKind::SourceRefused,
            e if e.is_transient() => FailureKind::Transient,
            _ => FailureKind::Permanent,
        }
    }

    /// One attempt on a leased builder: the job produced within the timeout.
    async fn attempt(
        &self,
        builder: &dyn Builder,
        job: &mut Job,
        log: &mut JobLog,
        cancel: &CancellationToken,
    ) -> Attempt {
        let produced = tokio::time::timeout(
            self.settings.timeout,
            self.produce(builder, job, log, cancel),
        )
        .await;
        match produced {
            Ok(Ok(status)) => Attempt::Done(status),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(_) => Attempt::Failed(JobError::TimedOut(humanize(self.settings.timeout))),
        }
    }

    async fn run(&self, mut job: Job, cancel: CancellationToken) -> Result<(), JobError> {
        let (mut log, writer) = JobLog::start(
            self.store.clone(),
            job.id,
            self.settings.sources.redactor(job.id),
        );
        let policy = self.settings.attempt_policy();

        let outcome = loop {
            // A builder first: waiting for one (every worker down or full) is not an
            // attempt, and the job stays queued meanwhile.
            let lease = match self.builders.lease(&job.spec, job.id, &cancel).await {
                Ok(lease) => lease,
                Err(e) => {
                    let e = JobError::from(e);
                    break match self.failure_kind(&e, &cancel) {
                        FailureKind::Stopped => Attempt::Requeue,
                        _ => Attempt::Failed(e),
                    };
                }
            };
            if let Some(worker) = lease.worker() {
                self.store.put_job_worker(job.id, worker)?;
            }
            job.status = JobStatus::Running;
            job.attempts += 1;
            job.started_at = Some(now());
            job.updated_at = now();
            job.error = None;
            job = self.store.update_job(&job).await?;
            if job.status == JobStatus::Cancelled {
                break Attempt::Failed(JobError::Engine(EngineError::Cancelled));
            }
            log.line(format!(
                "kiln: job {} attempt {}/{}: spec {} r{} at {} ({}){}",
                job.id,
                job.attempts,
                self.settings.max_attempts,
                job.spec,
                job.revision,
                job.commit,
                match job.plan {
                    JobPlan::Build => "build".to_string(),
                    JobPlan::Reuse { from } => format!("re-use of job {from}"),
                },
                lease
                    .worker()
                    .map(|w| format!(" on worker {w}"))
                    .unwrap_or_default()
            ));
            let attempted = self
                .attempt(lease.builder(), &mut job, &mut log, &cancel)
                .await;
            let e = match attempted {
                Attempt::Failed(e) => e,
                other => break other,
            };
            // A failed RUN whose log shows a source refusing or not answering fails for that.
            let source_failure = self.settings.sources.take_failure(job.id);
            let e = match (e, source_failure) {
                (JobError::Engine(EngineError::BuildFailed(_)), Some(f)) => JobError::Source(f),
                (e, _) => e,
            };
            // A failure on a worker that is gone is the worker's, not the build's: the
            // worker is marked unhealthy and the retry placed on another one.
            let e = match (&e, lease.worker()) {
                (JobError::Engine(EngineError::Cancelled), _) | (_, None) => e,
                (_, Some(worker)) => match lease.recheck().await {
                    Ok(()) => e,
                    Err(why) => JobError::WorkerLost {
                        worker: worker.to_string(),
                        why,
                        attempt: e.to_string(),
                    },
                },
            };
            // The slot goes back before any wait for a retry.
            drop(lease);
            match attempt::decide(self.failure_kind(&e, &cancel), job.attempts, &policy) {
                Decision::Retry { after } => {
                    log.line(format!(
                        "kiln: attempt {} failed ({e}); retrying in {}",
                        job.attempts,
                        humanize(after)
                    ));
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            let cancelled = JobError::Engine(EngineError::Cancelled);
                            break match self.failure_kind(&cancelled, &cancel) {
                                FailureKind::Stopped => Attempt::Requeue,
                                _ => Attempt::Failed(cancelled),
                            };
                        }
                        _ = tokio::time::sleep(after) => {}
                    }
                }
                Decision::Requeue => break Attempt::Requeue,
                Decision::Fail => break Attempt::Failed(e),
            }
        };

        // The store may have cancelled the job meanwhile; that verdict stands.
        let cancelled_reason = self
            .store
            .job(job.id)?
            .filter(|j| j.status == JobStatus::Cancelled)
            .and_then(|j| j.error);
        match (outcome, cancelled_reason) {
            (_, Some(reason)) => {
                log.line(format!("kiln: cancelled: {reason}"));
                job.status = JobStatus::Cancelled;
                job.error = Some(reason);
            }
            (Attempt::Requeue, None) => {
                log.line(
                    "kiln: stopped by a shutdown of Kiln; re-queued for the next start".into(),
                );
                job.status = JobStatus::Queued;
            }
            (Attempt::Done(status), None) => {
                log.line(format!(
                    "kiln: {status}: {}",
                    job.image.as_deref().unwrap_or("")
                ));
                job.status = status;
            }
            (Attempt::Failed(e), None) => {
                let message = log.redact(&e.to_string());
                log.line(format!("kiln: failed: {message}"));
                job.status = JobStatus::Failed;
                job.error = Some(message);
            }
        }
        log.close().await;
        let _ = writer.await;
        self.settings.sources.finish(job.id);
        if job.status.is_final() {
            job.finished_at = Some(now());
        }
        job.updated_at = now();
        self.store.update_job(&job).await?;
        Ok(())
    }

    /// Build or re-use, then push and look inside. Returns the final status.
    async fn produce(
        &self,
        b: &dyn Builder,
        job: &mut Job,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<JobStatus, JobError> {
        let tags = self.settings.tags(job);
        if let JobPlan::Reuse { from } = job.plan
            && let Some(status) = self.reuse(b, job, from, &tags, log, cancel).await?
        {
            return Ok(status);
        }
        // The listing runs in the finished image beside the push.
        let (built_tx, built_rx) = tokio::sync::oneshot::channel();
        let build_and_push = async {
            // An earlier attempt (or a killed process) may have built the image already.
            let image_id = if job.attempts > 1
                && job.image.as_deref() == Some(tags[0].as_str())
                && let Some(id) = b.image_id(&tags[0]).await?
            {
                log.line(format!(
                    "kiln: {} was built by an earlier attempt ({id}); not building again",
                    tags[0]
                ));
                for tag in &tags[1..] {
                    b.tag(&tags[0], tag).await?;
                }
                id
            } else {
                self.build(b, job, &tags, log, cancel).await?
            };
            // Unsent (the build failed) the sender is dropped and the listing gives up.
            let _ = built_tx.send(image_id);
            // Between built and pushed: a failing image test fails the job, nothing is pushed.
            let tests = crate::image_tests::tests_of(&self.store, job)?;
            crate::image_tests::run_all(
                b,
                &tags[0],
                &tests,
                self.settings.image_test_timeout,
                log,
                cancel,
            )
            .await?;
            self.push_all(b, job, &tags, log, cancel).await
        };
        let (pushed, listing) = tokio::join!(build_and_push, async {
            let image_id = built_rx.await.ok()?;
            let listing = self.list_installed(b, &image_id, cancel).await;
            Some((listing, image_id))
        });
        pushed?;
        self.record_sizes(b, job, &tags[0], log, cancel).await;
        if let Some((listing, image_id)) = listing {
            if listing.is_ok() {
                log.line(format!("kiln: listed the installed packages of {image_id}"));
            }
            self.record_installed(job, listing, log).await;
        }
        Ok(JobStatus::Succeeded)
    }

    /// Builds the image and returns its id.
    async fn build(
        &self,
        b: &dyn Builder,
        job: &mut Job,
        tags: &[String],
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, JobError> {
        // Reconcile rendered the Dockerfile once and stored it with the job; it names the base
        // image and the `pullSecret`. Only the base image's own USER is added here, after the
        // base has been inspected (an earlier attempt's USER line is replaced, not repeated).
        let base_image = dockerfile::base_image(&job.dockerfile)
            .ok_or_else(|| JobError::Setup("the recorded Dockerfile has no FROM line".into()))?
            .to_string();
        let pull_auth = match dockerfile::pull_secret(&job.dockerfile) {
            None => None,
            Some(name) => {
                let host = self.settings.pull_secrets.get(name).ok_or_else(|| {
                    JobError::Setup(format!("pull secret `{name}` is not configured in Kiln"))
                })?;
                let credential = self
                    .settings
                    .auths
                    .for_registry(host)
                    .ok_or_else(|| JobError::Setup(format!("pull secret `{name}`: the docker config has no credential for registry {host}")))?;
                Some(credential)
            }
        };
        let ca_bundle = match (
            dockerfile::uses_ca_bundle(&job.dockerfile),
            self.settings.ca_bundle.as_deref(),
        ) {
            (true, Some(ca)) => Some(ca),
            (true, None) => {
                return Err(JobError::Setup(
                    "the revision was rendered with a CA bundle, but ca_bundle is no longer configured"
                        .into(),
                ));
            }
            (false, Some(_)) => {
                log.line(
                    "kiln: this revision was rendered without the CA bundle (ca_bundle was configured later); building it as rendered".into(),
                );
                None
            }
            (false, None) => None,
        };
        // Always refresh the base: the registry checks the credential on every build (a base
        // cached in the builder must not let a spec without access use it) and a moved tag is
        // picked up. A base that only exists locally is used as it is.
        log.line(format!("kiln: pulling base image {base_image}"));
        let base_user = b.refresh_base(&base_image, pull_auth, log).await?;
        let base_digest =
            crate::base::record::base_pulled(&self.store, b, job.id, &base_image, log).await;
        let final_dockerfile = dockerfile::with_base_labels(
            &dockerfile::for_base(&job.dockerfile, base_user.as_deref()),
            &base_image,
            base_digest.as_deref(),
        );
        if final_dockerfile != job.dockerfile {
            job.dockerfile = final_dockerfile;
            *job = self.store.update_job(job).await?;
        }

        log.line(format!("kiln: building {}", tags[0]));
        // The spec's `latest` in the registry carries the cache of its last build inline: any
        // builder, even one that never built this spec, can take its unchanged steps from it.
        let cache_from = self
            .settings
            .registry
            .is_some()
            .then(|| {
                tags.last()
                    .map(|t| (t.as_str(), self.settings.push_credential(t)))
            })
            .flatten();
        // The sources' secrets, read now (a rotated password is used); the log hides them.
        let secrets: Vec<crate::buildkit::BuildSecret> = (self
            .settings
            .sources
            .secrets(job.id, &job.dockerfile)?
            .into_iter())
        .map(Into::into)
        .collect();
        let request = BuildRequest {
            dockerfile: &job.dockerfile,
            ca_bundle,
            tags,
            pull_auth,
            network: self.settings.build_network.as_deref(),
            cache_from,
            secrets: &secrets,
        };
        let built = b.build(&request, log, cancel).await?;
        log.line(format!("kiln: built image {}", built.image_id));
        job.image = Some(tags[0].clone());
        job.image_digest = Some(built.image_id.clone());
        *job = self.store.update_job(job).await?;
        Ok(built.image_id)
    }

    /// Retag the image of job `from`; `None` when it vanished from the Engine and the registry
    /// (then a real build follows).
    async fn reuse(
        &self,
        b: &dyn Builder,
        job: &mut Job,
        from: JobId,
        tags: &[String],
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<Option<JobStatus>, JobError> {
        let Some(from_job) = self.store.job(from)? else {
            log.line(format!(
                "kiln: job {from} is gone; building instead of re-using"
            ));
            return Ok(None);
        };
        let Some(source) = from_job.image.clone() else {
            log.line(format!(
                "kiln: job {from} recorded no image; building instead of re-using"
            ));
            return Ok(None);
        };
        if b.image_id(&source).await?.is_none() {
            log.line(format!(
                "kiln: {source} is not in the Engine; pulling it from the registry"
            ));
            if let Err(e) = b
                .pull(&source, self.settings.push_credential(&source), log)
                .await
            {
                log.line(format!(
                    "kiln: the image of job {from} is gone from the Engine and the registry ({e}); building instead of re-using"
                ));
                self.store.forget_built(&from_job.spec, &from_job.digest)?;
                job.plan = JobPlan::Build;
                return Ok(None);
            }
        }
        log.line(format!(
            "kiln: same content as job {from}: re-using {source}"
        ));
        for tag in tags {
            b.tag(&source, tag).await?;
        }
        job.image = Some(tags[0].clone());
        job.image_digest = from_job.image_digest.clone();
        job.reused_from = Some(from);
        *job = self.store.update_job(job).await?;
        self.push_all(b, job, tags, log, cancel).await?;
        self.record_installed_from(job, from).await;
        self.record_sizes(b, job, &tags[0], log, cancel).await;
        Ok(Some(JobStatus::Reused))
    }

    async fn push_all(
        &self,
        b: &dyn Builder,
        job: &mut Job,
        tags: &[String],
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        if self.settings.registry.is_none() {
            log.line(format!(
                "kiln: no registry configured; the image stays in the local Engine as {}",
                tags[0]
            ));
            return Ok(());
        }
        for (i, tag) in tags.iter().enumerate() {
            if job.pushed.contains(tag) {
                log.line(format!(
                    "kiln: {tag} was pushed by an earlier attempt; not pushing again"
                ));
                continue;
            }
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled.into());
            }
            log.line(format!("kiln: pushing {tag}"));
            let digest = b
                .push(tag, self.settings.push_credential(tag), log, cancel)
                .await?;
            log.line(format!("kiln: pushed {tag}, digest {digest}"));
            if i == 0 {
                self.store.put_pushed_digest(job.id, &digest)?;
                job.image_digest = Some(digest);
            }
            job.pushed.push(tag.clone());
            *job = self.store.update_job(job).await?;
        }
        Ok(())
    }

    /// Lists what is inside the image (apt, pip, conda), or says why it could not. Touches
    /// neither the job nor its log, so it runs while the image is pushed.
    async fn list_installed(
        &self,
        b: &dyn Builder,
        image: &str,
        cancel: &CancellationToken,
    ) -> Listing {
        // One container for all three listings; a manager the image lacks lists nothing. pip's
        // list comes from importlib.metadata (what `pip list` reads, first of a name on
        // sys.path wins) because starting pip itself costs ~0.8 s per build; `pip list` is
        // the fallback for Pythons older than 3.8.
        const SCRIPT: &str = "dpkg-query -W -f='${Package}\\t${Version}\\n' 2>/dev/null; echo '--kiln-pip--'; \
            python3 -c 'import importlib.metadata as m\nseen = set()\nfor d in m.distributions():\n    n = d.metadata[\"Name\"]\n    k = (n or \"\").lower().replace(\"_\", \"-\").replace(\".\", \"-\")\n    if n and k not in seen:\n        seen.add(k)\n        print(n + \"==\" + d.version)' 2>/dev/null \
            || python3 -m pip list --format=freeze --disable-pip-version-check 2>/dev/null; echo '--kiln-conda--'; \
            command -v conda >/dev/null 2>&1 && conda list --export 2>/dev/null; exit 0";
        match b
            .run_capture(image, &["/bin/sh", "-c", SCRIPT], cancel)
            .await
        {
            Ok((0, out)) => {
                let (apt, rest) = out
                    .split_once("--kiln-pip--\n")
                    .unwrap_or((out.as_str(), ""));
                let (pip, conda) = rest.split_once("--kiln-conda--\n").unwrap_or((rest, ""));
                Ok(InstalledPackages {
                    apt: parse_listing("apt", apt),
                    pip: parse_listing("pip", pip),
                    conda: parse_listing("conda", conda),
                })
            }
            Ok((code, _)) => Err(format!(
                "kiln: listing the installed packages exited with {code}"
            )),
            Err(e) => Err(format!("kiln: could not list the installed packages: {e}")),
        }
    }

    /// Stores a listing with the job. A listing that failed is logged, never fails the job:
    /// the image is built and pushed already.
    async fn record_installed(&self, job: &Job, listing: Listing, log: &mut dyn LogSink) {
        let packages = match listing {
            Ok(packages) => packages,
            Err(message) => {
                log.line(message);
                return;
            }
        };
        log.line(format!(
            "kiln: inside the image: {} apt, {} pip, {} conda packages",
            packages.apt.len(),
            packages.pip.len(),
            packages.conda.len()
        ));
        if let Err(e) = self.store.set_installed(job.id, &packages).await {
            tracing::warn!(job = job.id, error = %e, "cannot store installed packages");
        }
    }

    /// The image's sizes, for its changes and the catalogue (`changes/record.rs`).
    async fn record_sizes(
        &self,
        b: &dyn Builder,
        job: &Job,
        tag: &str,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) {
        let digest = self.store.pushed_digest(job.id).ok().flatten();
        let credential = self.settings.push_credential(tag);
        let pushed = digest.as_deref().map(|d| (d, credential));
        crate::changes::record::record_sizes(&self.store, b, job, tag, pushed, log, cancel).await;
    }

    async fn record_installed_from(&self, job: &Job, from: JobId) {
        if let Ok(Some(packages)) = self.store.installed(from)
            && let Err(e) = self.store.set_installed(job.id, &packages).await
        {
            tracing::warn!(job = job.id, error = %e, "cannot store installed packages");
        }
    }
}

/// `dpkg-query` (`name\tversion`), `pip list --format=freeze` (`name==version`) and
/// `conda list --export` (`name=version=build`) lines into packages.
fn parse_listing(manager: &str, text: &str) -> Vec<InstalledPackage> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let (name, version) = match manager {
                "apt" => line.split_once('\t')?,
                "pip" => line.split_once("==").or_else(|| line.split_once(" @ "))?,
                _ => {
                    let mut parts = line.splitn(3, '=');
                    (parts.next()?, parts.next()?)
                }
            };
            Some(InstalledPackage {
                name: name.trim().to_string(),
                version: version.trim().to_string(),
            })
        })
        .collect()
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else if secs > 0 {
        format!("{secs} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real Engine client for an address where nothing listens: every request fails as
    /// unreachable (transient), with no Docker involved.
    fn unreachable_engine() -> crate::docker::Engine {
        let endpoint = crate::docker::EngineEndpoint {
            host: Some("tcp://127.0.0.1:1".into()),
            tls_verify: Some(false),
            ..Default::default()
        };
        crate::docker::Engine::unverified(&endpoint).unwrap()
    }

    fn new_job(spec: &str, revision: u64) -> crate::reconcile::NewJob {
        crate::reconcile::NewJob {
            spec: spec.into(),
            revision,
            commit: format!("{revision:0>40}"),
            digest: format!("sha256:{spec}{revision}"),
            plan: JobPlan::Build,
            dockerfile: format!("FROM 127.0.0.1:1/{spec}:latest\nRUN true\n"),
            cancelled: None,
        }
    }

    /// The scheduling loop end to end without Docker: every queued job runs (one per spec at a
    /// time), transient failures are retried per the attempt policy, the loop ends when
    /// nothing is queued or running, and the failed jobs are reported.
    #[tokio::test]
    async fn drain_runs_every_job_to_its_end_and_retries_transient_failures() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plan = crate::reconcile::Plan {
            jobs: vec![new_job("a", 1), new_job("b", 1), new_job("c", 1)],
            ..Default::default()
        };
        let ids = store.apply(&plan, &"1".repeat(40)).await.unwrap();
        assert_eq!(ids.len(), 3);
        let settings = BuildSettings {
            max_parallel: 2,
            max_attempts: 2,
            retry_backoff: Duration::from_millis(1),
            ..BuildSettings::default()
        };
        let workers = Workers::new(store.clone(), unreachable_engine(), settings);
        let failed = workers.drain().await.unwrap();
        assert_eq!(failed, ids);
        for id in ids {
            let job = store.job(id).unwrap().unwrap();
            assert_eq!(job.status, JobStatus::Failed);
            assert_eq!(job.attempts, 2, "one retry after a transient failure");
            assert!(
                job.error.as_deref().unwrap_or("").contains("unreachable"),
                "{:?}",
                job.error
            );
            let log: Vec<String> = store
                .log_lines(id, 0, 100)
                .unwrap()
                .into_iter()
                .map(|(_, l)| l.text)
                .collect();
            assert!(
                log.iter().any(|l| l.starts_with("kiln: attempt 1 failed (")
                    && l.ends_with("retrying in 1 ms")),
                "{log:?}"
            );
            assert!(
                log.iter().any(|l| l.starts_with("kiln: failed: ")),
                "{log:?}"
            );
        }
        assert!(store.active_jobs().unwrap().is_empty());
    }

    /// A job the store cancels while it waits for its next attempt stops at once (the store
    /// event reaches its token; no timer is involved) and keeps the store's verdict.
    #[tokio::test]
    async fn a_store_cancellation_stops_a_job_waiting_to_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plan = crate::reconcile::Plan {
            jobs: vec![new_job("a", 1)],
            ..Default::default()
        };
        let id = store.apply(&plan, &"1".repeat(40)).await.unwrap()[0];
        let settings = BuildSettings {
            max_attempts: 3,
            retry_backoff: Duration::from_secs(3600),
            ..BuildSettings::default()
        };
        let mut events = store.subscribe();
        let workers = Workers::new(store.clone(), unreachable_engine(), settings);
        let drain = tokio::spawn(async move { workers.drain().await });
        // Wait (on store events) until the job logs its wait for attempt 2: an hour, capped.
        loop {
            if let Ok(StoreEvent::Log { .. }) = events.recv().await
                && store
                    .log_lines(id, 0, 100)
                    .unwrap()
                    .iter()
                    .any(|(_, l)| l.text.ends_with("retrying in 5 min"))
            {
                break;
            }
        }
        let cancel = crate::reconcile::Plan {
            cancellations: vec![crate::reconcile::Cancellation {
                job: id,
                reason: "superseded by r2".into(),
            }],
            ..Default::default()
        };
        store.apply(&cancel, &"2".repeat(40)).await.unwrap();
        assert_eq!(drain.await.unwrap().unwrap(), Vec::<JobId>::new());
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.error.as_deref(), Some("superseded by r2"));
        assert_eq!(job.attempts, 1);
    }

    #[test]
    fn listings_parse() {
        let apt = parse_listing("apt", "adduser\t3.134\nlibc6\t2.36-9+deb12u9\n");
        assert_eq!(
            apt[1],
            InstalledPackage {
                name: "libc6".into(),
                version: "2.36-9+deb12u9".into()
            }
        );
        let pip = parse_listing("pip", "six==1.16.0\npip==23.0.1\n");
        assert_eq!(
            pip[0],
            InstalledPackage {
                name: "six".into(),
                version: "1.16.0".into()
            }
        );
        let conda = parse_listing(
            "conda",
            "# This file may be used to create an environment\nnumpy=1.17.5=py38h95a1406_0\n",
        );
        assert_eq!(
            conda,
            vec![InstalledPackage {
                name: "numpy".into(),
                version: "1.17.5".into()
            }]
        );
    }

    #[test]
    fn tags_follow_the_naming_scheme() {
        let settings = BuildSettings {
            registry: Some("127.0.0.1:5000/".into()),
            ..BuildSettings::default()
        };
        let job = Job {
            id: 1,
            spec: "tools".into(),
            revision: 3,
            commit: "1a2b3c4d5e6f".into(),
            digest: "sha256:x".into(),
            plan: JobPlan::Build,
            status: JobStatus::Queued,
            image: None,
            image_digest: None,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            error: None,
            reused_from: None,
            attempts: 0,
            pushed: vec![],
            dockerfile: String::new(),
        };
        assert_eq!(
            settings.tags(&job),
            vec![
                "127.0.0.1:5000/tools:r3-1a2b3c4",
                "127.0.0.1:5000/tools:latest"
            ]
        );
        assert_eq!(
            BuildSettings::default().tags(&job)[0],
            "kiln/tools:r3-1a2b3c4"
        );
        assert_eq!(humanize(Duration::from_secs(3600)), "60 min");
        assert_eq!(humanize(Duration::from_millis(250)), "250 ms");
    }
}
