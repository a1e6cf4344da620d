//! Build jobs: take queued jobs from the store, run them through the Docker Engine, record
//! every log line and the outcome.
//!
//! This is where the store (what to do) meets the Engine (how): the Engine layer knows nothing
//! of jobs, the store knows nothing of Docker. A job runs as: mark `running` → resolve the
//! base image's credential (`pullSecret`) and user → render the final Dockerfile → build
//! (or, for a re-use, retag the earlier image) → push every tag → `succeeded` / `reused` /
//! `failed`. Log lines stream through a channel to one writer task that appends them to the
//! store in batches with timestamps, so the Engine's stream never waits on disk.
//!
//! A job that the store marks `cancelled` while it runs (superseded by a newer revision) has
//! its token cancelled: the Engine request is dropped, the build stops, nothing is pushed.

use crate::build::auth::{Credential, RegistryAuths, registry_of};
use crate::build::dockerfile::{self, RenderOptions, RevisionInfo};
use crate::build::engine::{BuildRequest, Engine, EngineError};
use crate::model::{Job, JobId, JobPlan, JobStatus, now, rfc3339};
use crate::spec::{self, SpecContext};
use crate::store::{LogLine, Store, StoreError, StoreEvent};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum JobError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
}

/// What the workers need besides the store and the Engine.
#[derive(Clone, Debug, Default)]
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
    /// Repository URL for the source label.
    pub source_url: String,
}

impl BuildSettings {
    /// `registry/name:rN-sha7`, or `kiln/name:rN-sha7` without a registry.
    pub fn image_repo(&self, spec: &str) -> String {
        match &self.registry {
            Some(registry) => format!("{}/{spec}", registry.trim_end_matches('/')),
            None => format!("kiln/{spec}"),
        }
    }

    fn tags(&self, job: &Job) -> Vec<String> {
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

/// The worker pool.
#[derive(Clone)]
pub struct Workers {
    store: Store,
    engine: Engine,
    settings: Arc<BuildSettings>,
    running: Arc<Mutex<HashMap<JobId, (String, CancellationToken)>>>,
}

impl Workers {
    pub fn new(store: Store, engine: Engine, settings: BuildSettings) -> Workers {
        Workers {
            store,
            engine,
            settings: Arc::new(settings),
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Jobs a dead process left `running` go back to the queue, with a log line saying why.
    pub async fn recover(&self) -> Result<usize, JobError> {
        let mut recovered = 0;
        for mut job in self.store.active_jobs()? {
            if job.status == JobStatus::Running {
                job.status = JobStatus::Queued;
                job.updated_at = now();
                self.store.update_job(&job).await?;
                let line = format!(
                    "kiln: the process running attempt {} stopped before the job finished; re-queued",
                    job.attempts
                );
                self.store
                    .append_log(
                        job.id,
                        &[LogLine {
                            at_ms: now_ms(),
                            text: line,
                        }],
                    )
                    .await?;
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// Start every queued job that may start now (pool size, one running job per spec).
    /// Returns the handles of the jobs started.
    fn start_ready(&self) -> Result<Vec<tokio::task::JoinHandle<()>>, JobError> {
        let mut handles = Vec::new();
        let queued = self.store.active_jobs()?;
        let mut running = self
            .running
            .lock()
            .map_err(|_| JobError::Setup("worker state poisoned".into()))?;
        let busy: HashSet<String> = running.values().map(|(spec, _)| spec.clone()).collect();
        let mut busy = busy;
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
            handles.push(tokio::spawn(async move {
                let id = job.id;
                if let Err(e) = me.run(job, token).await {
                    tracing::error!(job = id, error = %e, "job bookkeeping failed");
                }
                if let Ok(mut running) = me.running.lock() {
                    running.remove(&id);
                }
            }));
        }
        Ok(handles)
    }

    /// Cancel running jobs the store no longer wants (superseded, spec deleted).
    fn cancel_unwanted(&self, job: JobId) {
        if let Ok(running) = self.running.lock()
            && let Some((_, token)) = running.get(&job)
        {
            token.cancel();
        }
    }

    /// Run until nothing is queued or running (`kiln sync`). Returns the ids of failed jobs.
    pub async fn drain(&self) -> Result<Vec<JobId>, JobError> {
        let mut events = self.store.subscribe();
        let mut started: Vec<JobId> = Vec::new();
        loop {
            for handle in self.start_ready()? {
                drop(handle);
            }
            let (running_now, ids): (usize, Vec<JobId>) = match self.running.lock() {
                Ok(r) => (r.len(), r.keys().copied().collect()),
                Err(_) => return Err(JobError::Setup("worker state poisoned".into())),
            };
            started.extend(ids);
            if running_now == 0 {
                break;
            }
            if let Ok(StoreEvent::Job {
                job,
                status: JobStatus::Cancelled,
            }) = tokio::time::timeout(Duration::from_millis(200), events.recv())
                .await
                .unwrap_or(Ok(StoreEvent::Synced))
            {
                self.cancel_unwanted(job);
            }
        }
        started.sort_unstable();
        started.dedup();
        let mut failed = Vec::new();
        for id in started {
            if self
                .store
                .job(id)?
                .is_some_and(|j| j.status == JobStatus::Failed)
            {
                failed.push(id);
            }
        }
        Ok(failed)
    }

    /// Run forever: start jobs when they are queued, stop the ones cancelled meanwhile.
    pub async fn run_forever(&self, shutdown: CancellationToken) {
        let mut events = self.store.subscribe();
        loop {
            if let Err(e) = self.start_ready() {
                tracing::error!(error = %e, "cannot start jobs");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Ok(StoreEvent::Job { job, status: JobStatus::Cancelled }) => self.cancel_unwanted(job),
                    Ok(_) => {}
                    Err(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        if let Ok(running) = self.running.lock() {
            for (_, token) in running.values() {
                token.cancel();
            }
        }
    }

    async fn run(&self, mut job: Job, cancel: CancellationToken) -> Result<(), JobError> {
        job.status = JobStatus::Running;
        job.attempts += 1;
        job.started_at = Some(now());
        job.updated_at = now();
        job.error = None;
        self.store.update_job(&job).await?;

        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(write_log(self.store.clone(), job.id, rx));
        let mut log = move |line: String| {
            let _ = tx.send(line);
        };
        log(format!(
            "kiln: job {} attempt {}: spec {} r{} at {}",
            job.id, job.attempts, job.spec, job.revision, job.commit
        ));

        let outcome = tokio::time::timeout(
            self.settings.timeout,
            self.produce(&mut job, &mut log, &cancel),
        )
        .await;
        let outcome = match outcome {
            Ok(result) => result,
            Err(_) => {
                cancel.cancel();
                Err(JobError::Setup(format!(
                    "timed out after {}",
                    humanize(self.settings.timeout)
                )))
            }
        };
        // The store may have cancelled the job meanwhile; that verdict stands.
        let stored = self.store.job(job.id)?;
        let cancelled_reason = stored
            .as_ref()
            .filter(|j| j.status == JobStatus::Cancelled)
            .and_then(|j| j.error.clone());
        match (outcome, cancelled_reason) {
            (_, Some(reason)) => {
                log(format!("kiln: cancelled: {reason}"));
                job.status = JobStatus::Cancelled;
                job.error = Some(reason);
            }
            (Ok(status), None) => {
                log(format!(
                    "kiln: {status}: {}",
                    job.image.as_deref().unwrap_or("")
                ));
                job.status = status;
            }
            (Err(e), None) => {
                let message = match &e {
                    JobError::Engine(EngineError::Cancelled) => "cancelled".to_string(),
                    other => other.to_string(),
                };
                log(format!("kiln: failed: {message}"));
                job.status = JobStatus::Failed;
                job.error = Some(message);
            }
        }
        drop(log);
        let _ = writer.await;
        job.finished_at = Some(now());
        job.updated_at = now();
        self.store.update_job(&job).await?;
        Ok(())
    }

    /// Build or re-use, then push. Returns the final status.
    async fn produce(
        &self,
        job: &mut Job,
        log: &mut (dyn FnMut(String) + Send),
        cancel: &CancellationToken,
    ) -> Result<JobStatus, JobError> {
        let tags = self.settings.tags(job);
        if let JobPlan::Reuse { from } = job.plan
            && let Some(status) = self.reuse(job, from, &tags, log, cancel).await?
        {
            return Ok(status);
        }
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
                let credential = self.settings.auths.for_registry(host).ok_or_else(|| JobError::Setup(format!("pull secret `{name}`: the docker config has no credential for registry {host}")))?;
                Some(credential)
            }
        };
        // Always refresh the base: the registry checks the credential on every build (a base
        // cached in the Engine must not let a spec without access use it) and a moved tag is
        // picked up. A base that only exists locally is used as it is.
        log(format!("kiln: pulling base image {}", spec.base_image));
        match self.engine.pull(&spec.base_image, pull_auth, log).await {
            Ok(()) => {}
            Err(e @ EngineError::Auth { .. }) => return Err(e.into()),
            Err(e) if self.engine.image_id(&spec.base_image).await?.is_some() => {
                log(format!(
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
        self.store.update_job(job).await?;

        log(format!("kiln: building {}", tags[0]));
        let request = BuildRequest {
            dockerfile: &job.dockerfile,
            ca_bundle: self.settings.ca_bundle.as_deref(),
            tags: &tags,
            pull_auth,
            network: None,
        };
        let built = self.engine.build(&request, log, cancel).await?;
        log(format!("kiln: built image {}", built.image_id));
        job.image = Some(tags[0].clone());
        job.image_digest = Some(built.image_id.clone());
        self.push_all(job, &tags, log, cancel).await?;
        Ok(JobStatus::Succeeded)
    }

    /// Retag the image of job `from`; `None` when it vanished (then a real build follows).
    async fn reuse(
        &self,
        job: &mut Job,
        from: JobId,
        tags: &[String],
        log: &mut (dyn FnMut(String) + Send),
        cancel: &CancellationToken,
    ) -> Result<Option<JobStatus>, JobError> {
        let source = self.store.job(from)?.and_then(|j| j.image);
        let present = match &source {
            Some(image) => self.engine.image_id(image).await?.is_some(),
            None => false,
        };
        let Some(source) = source.filter(|_| present) else {
            log(format!(
                "kiln: the image of job {from} is no longer in the Engine; building instead of re-using"
            ));
            if let Some(from_job) = self.store.job(from)? {
                self.store.forget_built(&from_job.spec, &from_job.digest)?;
            }
            return Ok(None);
        };
        log(format!(
            "kiln: same content as job {from}: re-using {source}"
        ));
        for tag in tags {
            self.engine.tag(&source, tag).await?;
        }
        job.image = Some(tags[0].clone());
        job.image_digest = self.engine.image_id(&source).await?;
        job.reused_from = Some(from);
        self.push_all(job, tags, log, cancel).await?;
        Ok(Some(JobStatus::Reused))
    }

    async fn push_all(
        &self,
        job: &mut Job,
        tags: &[String],
        log: &mut (dyn FnMut(String) + Send),
        cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        if self.settings.registry.is_none() {
            log(format!(
                "kiln: no registry configured; the image stays in the local Engine as {}",
                tags[0]
            ));
            return Ok(());
        }
        for (i, tag) in tags.iter().enumerate() {
            log(format!("kiln: pushing {tag}"));
            let digest = self
                .engine
                .push(tag, self.settings.push_credential(tag), log, cancel)
                .await?;
            log(format!("kiln: pushed {tag}, digest {digest}"));
            if i == 0 {
                job.image_digest = Some(digest);
            }
        }
        Ok(())
    }
}

/// Drain log lines from the channel into the store in batches.
async fn write_log(store: Store, job: JobId, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut batch: Vec<LogLine> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(LogLine {
            at_ms: now_ms(),
            text: first,
        });
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(line) => batch.push(LogLine {
                    at_ms: now_ms(),
                    text: line,
                }),
                Err(_) => break,
            }
        }
        if let Err(e) = store.append_log(job, &batch).await {
            tracing::error!(job, error = %e, "cannot store log lines");
        }
        batch.clear();
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}
