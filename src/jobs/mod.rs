//! Build jobs: take queued jobs from the store, run them through the Docker Engine, record
//! every log line and the outcome.
//!
//! This is where the store (what to do) meets the Engine (how): the Engine layer knows nothing
//! of jobs, the store knows nothing of Docker. A job runs as: mark `running` → resolve the
//! base image's credential (`pullSecret`), refresh the base and read its user → render the
//! final Dockerfile → build (or, for a re-use, retag the earlier image) → push every tag →
//! `succeeded` / `reused` / `failed`. What is inside the image is listed by one throw-away
//! container that runs beside the build's last steps and the push, so it adds no time to a job
//! that pushes: it starts from the image of the last step that writes files while the builder
//! still writes the labels (or from the finished image). Log lines
//! stream through a bounded hand-off to one writer task that appends them to the store in
//! batches with timestamps.
//!
//! What makes it trustworthy:
//!
//! * **Newest wins.** A job the store marks `cancelled` while it runs (superseded, spec
//!   deleted) has its token cancelled: the Engine request is dropped, the build stops, nothing
//!   more is pushed. The store never lets a worker overwrite a cancellation.
//! * **Nothing twice.** Tags already pushed are recorded on the job (`pushed`) and skipped by a
//!   retry or after a restart; an image already built for the job's tag is not rebuilt.
//! * **Transient failures retry.** An unreachable Engine or registry, a 5xx, a broken
//!   connection: retried with exponential backoff up to `max_attempts`, each attempt logged. A
//!   failing `RUN` is not transient and fails at once.
//! * **Bounded.** A per-job timeout stops the build ("timed out after …"); on shutdown running
//!   builds get a grace period, then are stopped and re-queued for the next start.

mod log_sink;

use crate::build::auth::{Credential, RegistryAuths, registry_of};
use crate::build::dockerfile::{self, RenderOptions, RevisionInfo};
use crate::build::engine::{BuildRequest, Engine, EngineError, LogSink, StepImage};
use crate::model::{
    InstalledPackage, InstalledPackages, Job, JobId, JobPlan, JobStatus, now, rfc3339,
};
use crate::spec::{self, SpecContext};
use crate::store::{Store, StoreError, StoreEvent};
use log_sink::JobLog;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// What is inside an image, or the log line that says why it could not be listed.
type Listing = Result<InstalledPackages, String>;

/// The image a job's build made (or an earlier attempt of it).
struct Built {
    /// `sha256:…`
    image_id: String,
    /// Where its files became final, when metadata-only steps followed (a fresh build).
    final_files: Option<dockerfile::FinalFiles>,
}

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
}

impl JobError {
    fn is_transient(&self) -> bool {
        matches!(self, JobError::Engine(e) if e.is_transient())
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
    /// Attempts per job for transient failures.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt.
    pub retry_backoff: Duration,
    /// How long running builds may go on after a shutdown request.
    pub shutdown_grace: Duration,
    /// Repository URL for the source label.
    pub source_url: String,
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
            max_attempts: 3,
            retry_backoff: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            source_url: String::new(),
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

    fn push_credential(&self, image: &str) -> Option<&Credential> {
        self.auths.for_registry(&registry_of(image))
    }
}

/// How one attempt ended.
enum Attempt {
    Done(JobStatus),
    Failed(JobError),
}

/// The worker pool.
#[derive(Clone)]
pub struct Workers {
    store: Store,
    engine: Engine,
    settings: Arc<BuildSettings>,
    running: Arc<Mutex<HashMap<JobId, (String, CancellationToken)>>>,
    /// Set on shutdown: stopped builds go back to the queue instead of failing.
    stopping: Arc<AtomicBool>,
}

impl Workers {
    pub fn new(store: Store, engine: Engine, settings: BuildSettings) -> Workers {
        Workers {
            store,
            engine,
            settings: Arc::new(settings),
            running: Arc::new(Mutex::new(HashMap::new())),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    fn running_count(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Start every queued job that may start now: oldest first, at most `max_parallel` at a
    /// time, at most one per spec.
    fn start_ready(&self) -> Result<(), JobError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let queued = self.store.active_jobs()?;
        let mut running = self
            .running
            .lock()
            .map_err(|_| JobError::Setup("worker state poisoned".into()))?;
        let mut busy: HashSet<String> = running.values().map(|(spec, _)| spec.clone()).collect();
        for job in queued.into_iter().filter(|j| j.status == JobStatus::Queued) {
            if running.len() >= self.settings.max_parallel.max(1) {
                break;
            }
            if busy.contains(&job.spec) || running.contains_key(&job.id) {
                continue;
            }
            let token = CancellationToken::new();
            running.insert(job.id, (job.spec.clone(), token.clone()));
            busy.insert(job.spec.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let id = job.id;
                if let Err(e) = me.run(job, token).await {
                    tracing::error!(job = id, error = %e, "job bookkeeping failed");
                }
                if let Ok(mut running) = me.running.lock() {
                    running.remove(&id);
                }
            });
        }
        Ok(())
    }

    /// Stop a running job the store no longer wants (superseded, spec deleted).
    fn cancel_running(&self, job: JobId) {
        if let Ok(running) = self.running.lock()
            && let Some((_, token)) = running.get(&job)
        {
            token.cancel();
        }
    }

    /// Run until nothing is queued or running (`kiln sync`). Returns the ids of failed jobs
    /// among those this call ran.
    pub async fn drain(&self) -> Result<Vec<JobId>, JobError> {
        let mut events = self.store.subscribe();
        let mut seen: HashSet<JobId> = HashSet::new();
        loop {
            self.start_ready()?;
            if let Ok(running) = self.running.lock() {
                seen.extend(running.keys().copied());
            }
            if self.running_count() == 0
                && !self
                    .store
                    .active_jobs()?
                    .iter()
                    .any(|j| j.status == JobStatus::Queued)
            {
                break;
            }
            if let Ok(Ok(StoreEvent::Job {
                job,
                status: JobStatus::Cancelled,
            })) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await
            {
                self.cancel_running(job);
            }
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
        loop {
            if let Err(e) = self.start_ready() {
                tracing::error!(error = %e, "cannot start jobs");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => {
                    if let Ok(StoreEvent::Job { job, status: JobStatus::Cancelled }) = event {
                        self.cancel_running(job);
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        if self.running_count() > 0 {
            tracing::info!(running = self.running_count(), grace = ?self.settings.shutdown_grace, "waiting for running builds");
        }
        while self.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Ok(running) = self.running.lock() {
            for (_, token) in running.values() {
                token.cancel();
            }
        }
        // The stopped jobs record themselves as re-queued; wait for that bookkeeping.
        let bookkeeping = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.running_count() > 0 && tokio::time::Instant::now() < bookkeeping {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run(&self, mut job: Job, cancel: CancellationToken) -> Result<(), JobError> {
        let (mut log, writer) = JobLog::start(self.store.clone(), job.id);

        let outcome = loop {
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
                "kiln: job {} attempt {}/{}: spec {} r{} at {} ({})",
                job.id,
                job.attempts,
                self.settings.max_attempts,
                job.spec,
                job.revision,
                job.commit,
                match job.plan {
                    JobPlan::Build => "build".to_string(),
                    JobPlan::Reuse { from } => format!("re-use of job {from}"),
                }
            ));
            let attempt = tokio::time::timeout(
                self.settings.timeout,
                self.produce(&mut job, &mut log, &cancel),
            )
            .await;
            let attempt = match attempt {
                Ok(Ok(status)) => Attempt::Done(status),
                Ok(Err(e)) => Attempt::Failed(e),
                Err(_) => Attempt::Failed(JobError::TimedOut(humanize(self.settings.timeout))),
            };
            match attempt {
                Attempt::Failed(e)
                    if e.is_transient()
                        && job.attempts < self.settings.max_attempts
                        && !cancel.is_cancelled() =>
                {
                    let delay = self.settings.retry_backoff
                        * 2u32.saturating_pow(job.attempts.saturating_sub(1));
                    log.line(format!(
                        "kiln: attempt {} failed ({e}); retrying in {}",
                        job.attempts,
                        humanize(delay)
                    ));
                    tokio::select! {
                        _ = cancel.cancelled() => break Attempt::Failed(JobError::Engine(EngineError::Cancelled)),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                other => break other,
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
            (Attempt::Failed(JobError::Engine(EngineError::Cancelled)), None)
                if self.stopping.load(Ordering::SeqCst) =>
            {
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
                let message = e.to_string();
                log.line(format!("kiln: failed: {message}"));
                job.status = JobStatus::Failed;
                job.error = Some(message);
            }
        }
        log.close().await;
        let _ = writer.await;
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
        job: &mut Job,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<JobStatus, JobError> {
        let tags = self.settings.tags(job);
        if let JobPlan::Reuse { from } = job.plan
            && let Some(status) = self.reuse(job, from, &tags, log, cancel).await?
        {
            return Ok(status);
        }
        // The listing runs beside the rest of the job: it starts from the image of the last
        // step that writes files (sent by the build while the builder writes the labels) or,
        // failing that, from the finished image, and it overlaps the push.
        let (step_tx, step_rx) = tokio::sync::oneshot::channel();
        let (built_tx, built_rx) = tokio::sync::oneshot::channel();
        let build_and_push = async {
            // An earlier attempt (or a killed process) may have built the image already.
            let built = if job.attempts > 1
                && job.image.as_deref() == Some(tags[0].as_str())
                && let Some(id) = self.engine.image_id(&tags[0]).await?
            {
                log.line(format!(
                    "kiln: {} was built by an earlier attempt ({id}); not building again",
                    tags[0]
                ));
                for tag in &tags[1..] {
                    self.engine.tag(&tags[0], tag).await?;
                }
                // No build to hand over a step's image: the listing starts now.
                drop(step_tx);
                Built {
                    image_id: id,
                    final_files: None,
                }
            } else {
                self.build(job, &tags, step_tx, log, cancel).await?
            };
            // Unsent (the build failed) the sender is dropped and the listing gives up.
            let _ = built_tx.send(built);
            self.push_all(job, &tags, log, cancel).await
        };
        let (pushed, listing) = tokio::join!(
            build_and_push,
            self.list_alongside(step_rx, built_rx, cancel)
        );
        pushed?;
        if let Some((listing, note)) = listing {
            if listing.is_ok() {
                log.line(note);
            }
            self.record_installed(job, listing, log).await;
        }
        Ok(JobStatus::Succeeded)
    }

    /// Lists what is inside the image a job builds, as early as possible and beside the build
    /// and push: from the image of the last step that writes files as soon as the build hands
    /// it over, used once the finished image is known to descend from it (build output can
    /// imitate the builder's step lines); else from the finished image. `None` when the build
    /// failed. The second value is the log line that says which image was read.
    async fn list_alongside(
        &self,
        step_image: tokio::sync::oneshot::Receiver<String>,
        built: tokio::sync::oneshot::Receiver<Built>,
        cancel: &CancellationToken,
    ) -> Option<(Listing, String)> {
        let early = match step_image.await {
            Ok(image) => Some((self.list_installed(&image, cancel).await, image)),
            Err(_) => None,
        };
        let built = built.await.ok()?;
        if let (Some((listing, image)), Some(f)) = (early, built.final_files) {
            if let Ok(true) = self
                .engine
                .descends_from(&built.image_id, &image, f.metadata_steps_after)
                .await
            {
                let note = format!(
                    "kiln: listed the installed packages during the build, from {image} (step {}, the last that writes files)",
                    f.step
                );
                return Some((listing, note));
            }
            let listing = self.list_installed(&built.image_id, cancel).await;
            let note = format!(
                "kiln: {image} is not the image of step {} of this build; listed the finished image",
                f.step
            );
            return Some((listing, note));
        }
        let note = format!("kiln: listed the installed packages of {}", built.image_id);
        Some((self.list_installed(&built.image_id, cancel).await, note))
    }

    /// Builds the image. Sends the image of the last step that writes files on `step_image`
    /// as soon as the builder moves past it (when metadata-only steps follow it).
    async fn build(
        &self,
        job: &mut Job,
        tags: &[String],
        step_image: tokio::sync::oneshot::Sender<String>,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<Built, JobError> {
        let revision = self
            .store
            .revision(&job.spec, job.revision)?
            .ok_or_else(|| {
                JobError::Setup(format!(
                    "revision r{} of {} is not in the store",
                    job.revision, job.spec
                ))
            })?;
        let parsed = spec::parse_spec(
            &revision.path,
            revision.yaml.as_bytes(),
            &SpecContext::default(),
        );
        let spec = parsed
            .spec
            .ok_or_else(|| JobError::Setup("the revision is not a valid spec".into()))?;
        let pull_auth = match &spec.pull_secret {
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
        // Always refresh the base: the registry checks the credential on every build (a base
        // cached in the Engine must not let a spec without access use it) and a moved tag is
        // picked up. A base that only exists locally is used as it is.
        log.line(format!("kiln: pulling base image {}", spec.base_image));
        match self.engine.pull(&spec.base_image, pull_auth, log).await {
            Ok(()) => {}
            Err(e @ EngineError::Auth { .. }) => return Err(e.into()),
            Err(e @ EngineError::Unreachable { .. }) => return Err(e.into()),
            Err(e) if self.engine.image_id(&spec.base_image).await?.is_some() => {
                log.line(format!(
                    "kiln: could not refresh the base image ({e}); using the copy in the Engine"
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let base_user = self
            .engine
            .prepare_base(&spec.base_image, pull_auth, log)
            .await?;
        let info = RevisionInfo {
            commit: job.commit.clone(),
            source: self.settings.source_url.clone(),
            created: rfc3339(revision.commit.committed_at),
            revision: job.revision,
            digest: job.digest.clone(),
        };
        let options = RenderOptions {
            base_user,
            ca_bundle: self.settings.ca_bundle.is_some(),
        };
        job.dockerfile = dockerfile::render(&spec, &info, &options);
        *job = self.store.update_job(job).await?;

        log.line(format!("kiln: building {}", tags[0]));
        let request = BuildRequest {
            dockerfile: &job.dockerfile,
            ca_bundle: self.settings.ca_bundle.as_deref(),
            tags,
            pull_auth,
            network: None,
        };
        let final_files =
            dockerfile::final_files(&job.dockerfile).filter(|f| f.metadata_steps_after > 0);
        let watch = final_files.map(|f| StepImage {
            step: f.step,
            tx: step_image,
        });
        let built = self.engine.build(&request, watch, log, cancel).await?;
        log.line(format!("kiln: built image {}", built.image_id));
        job.image = Some(tags[0].clone());
        job.image_digest = Some(built.image_id.clone());
        *job = self.store.update_job(job).await?;
        Ok(Built {
            image_id: built.image_id,
            final_files,
        })
    }

    /// Retag the image of job `from`; `None` when it vanished from the Engine and the registry
    /// (then a real build follows).
    async fn reuse(
        &self,
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
        if self.engine.image_id(&source).await?.is_none() {
            log.line(format!(
                "kiln: {source} is not in the Engine; pulling it from the registry"
            ));
            if let Err(e) = self
                .engine
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
            self.engine.tag(&source, tag).await?;
        }
        job.image = Some(tags[0].clone());
        job.image_digest = from_job.image_digest.clone();
        job.reused_from = Some(from);
        *job = self.store.update_job(job).await?;
        self.push_all(job, tags, log, cancel).await?;
        self.record_installed_from(job, from).await;
        Ok(Some(JobStatus::Reused))
    }

    async fn push_all(
        &self,
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
            let digest = self
                .engine
                .push(tag, self.settings.push_credential(tag), log, cancel)
                .await?;
            log.line(format!("kiln: pushed {tag}, digest {digest}"));
            if i == 0 {
                job.image_digest = Some(digest);
            }
            job.pushed.push(tag.clone());
            *job = self.store.update_job(job).await?;
        }
        Ok(())
    }

    /// Lists what is inside the image (apt, pip, conda), or says why it could not. Touches
    /// neither the job nor its log, so it runs while the image is pushed.
    async fn list_installed(&self, image: &str, cancel: &CancellationToken) -> Listing {
        // One container for all three listings; a manager the image lacks lists nothing. pip's
        // list comes from importlib.metadata (what `pip list` reads, first of a name on
        // sys.path wins) because starting pip itself costs ~0.8 s per build; `pip list` is
        // the fallback for Pythons older than 3.8.
        const SCRIPT: &str = "dpkg-query -W -f='${Package}\\t${Version}\\n' 2>/dev/null; echo '--kiln-pip--'; \
            python3 -c 'import importlib.metadata as m\nseen = set()\nfor d in m.distributions():\n    n = d.metadata[\"Name\"]\n    k = (n or \"\").lower().replace(\"_\", \"-\").replace(\".\", \"-\")\n    if n and k not in seen:\n        seen.add(k)\n        print(n + \"==\" + d.version)' 2>/dev/null \
            || python3 -m pip list --format=freeze --disable-pip-version-check 2>/dev/null; echo '--kiln-conda--'; \
            command -v conda >/dev/null 2>&1 && conda list --export 2>/dev/null; exit 0";
        match self
            .engine
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
