//! Kiln's records in sled: the only module that sees sled.
//!
//! Trees (docs/design.md §6; keys big-endian so sled's byte order is numeric order):
//!
//! | tree           | key                        | value                         |
//! |----------------|----------------------------|-------------------------------|
//! | `specs`        | name                       | [`SpecRecord`]                |
//! | `revisions`    | name `\0` number           | [`Revision`]                  |
//! | `jobs`         | job id                     | [`Job`]                       |
//! | `jobs_by_spec` | name `\0` job id           | ()                            |
//! | `active`       | name `\0` job id           | () — queued or running jobs   |
//! | `built`        | name `\0` digest           | job id that produced an image |
//! | `paths`        | name                       | files claiming the name       |
//! | `log_chunks`   | job id ++ first line number | zstd chunk of [`LogLine`]s (see `logs.rs`) |
//! | `installed`    | job id                     | packages found in the image   |
//! | `meta`         | `schema_version`, `last_commit`, `sync` | …                |
//!
//! Records are encoded with postcard (compact, no bincode: RUSTSEC-2025-0141). A reconcile plan
//! is applied in one multi-tree transaction together with the last processed commit, so a
//! crash either keeps a whole pass or none of it, and re-processing is harmless. Every job
//! state change and every log batch is followed by `flush_async`, so what was acknowledged
//! survives `kill -9`.
//!
//! Submodules: `logs` (paged log lines), `gc` (retention passes), `backup` (backup, restore,
//! compaction), `codec` (encoding, keys), `summary` (what `/healthz` reads without sled).
//!
//! Blocking and async: sled and zstd are synchronous, and sled 0.34 transactions and batches
//! take a process-wide write lock that every read waits for. The `async fn` writes
//! ([`Store::apply`], [`Store::update_job`], [`Store::append_log`]) therefore run their sled
//! work on a blocking thread, and mark the store as [`Store::writing`] meanwhile so that
//! in-memory views can answer from their previous value instead of queueing behind the lock.
//! The plain `fn` reads are for blocking threads (or small point reads); full scans from async
//! code go through [`Store::all_specs`].

pub mod backup;
pub mod base_digests;
mod codec;
pub mod deb_architectures;
pub mod gc;
pub mod image_digests;
pub mod image_sizes;
pub mod job_workers;
pub mod listings;
mod logs;
mod summary;

pub use gc::{GcPolicy, GcReport};
pub use logs::{LogBatch, LogLine};
pub use summary::WriteMark;

use crate::model::{
    InstalledPackages, Job, JobId, JobStatus, Revision, SpecRecord, Timestamp, now,
};
use crate::reconcile::{Plan, StateView};
use codec::{decode, encode, name_key, name_prefix};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::broadcast;

/// Bump when a record layout changes; `open` migrates the versions it knows (2 → 3) and
/// refuses any other.
/// 2: `SpecRecord.latest_status` / `latest_image_job`, `Job.pushed`, the `installed` tree.
/// 3: logs in compressed chunks (`log_chunks`) instead of one key per line (`logs`).
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "data dir {path} is in use by another Kiln process (sled holds an exclusive lock); stop it or use another --data-dir"
    )]
    Locked { path: PathBuf },
    #[error(
        "data dir {path} has store schema version {found}, this Kiln ({kiln}) uses schema version {expected}. {hint} See docs/operations.md, \"Upgrading\"."
    )]
    SchemaMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
        kiln: &'static str,
        hint: &'static str,
    },
    #[error(
        "data dir {path} holds `db.pre-compact` but no `db`: a `kiln gc --compact` was interrupted. Rename `db.pre-compact` back to `db` (it is the complete store before compaction) and run it again"
    )]
    InterruptedCompaction { path: PathBuf },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree `{tree}`: {message}")]
    Corrupt { tree: &'static str, message: String },
    #[error("internal error: store worker stopped: {0}")]
    Worker(String),
}

/// How to open the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache in bytes.
    pub cache_bytes: u64,
}

impl StoreOptions {
    pub fn with_cache_mb(mb: u64) -> StoreOptions {
        StoreOptions {
            cache_bytes: mb.max(1) * 1024 * 1024,
        }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions::with_cache_mb(crate::config::DEFAULT_STORE_CACHE_MB)
    }
}

/// Run blocking store work off the async worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// What changed, for live views (SSE log tails, dashboards).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// New log lines up to (excluding) `next_line`.
    Log { job: JobId, next_line: u64 },
    /// A job was created or changed state.
    Job { job: JobId, status: JobStatus },
    /// A reconcile pass was applied.
    Synced,
    /// A retention pass removed this many jobs.
    Pruned { jobs: u64 },
}

/// The outcome of the last sync attempt, for `/healthz` and the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    specs: sled::Tree,
    revisions: sled::Tree,
    jobs: sled::Tree,
    jobs_by_spec: sled::Tree,
    active: sled::Tree,
    built: sled::Tree,
    paths: sled::Tree,
    logs: sled::Tree,
    installed: sled::Tree,
    meta: sled::Tree,
    events: broadcast::Sender<StoreEvent>,
    /// Appended log lines, shared: live log viewers take them from here instead of each
    /// decompressing the chunk again. A channel of its own, so that caches that drain
    /// `events` only on requests never hold log text.
    lines: broadcast::Sender<Arc<LogBatch>>,
    /// Last processed commit and sync status, kept in memory (see `summary.rs`).
    summary: Arc<summary::Summary>,
    /// One writing transaction at a time: Kiln has one writer process, and serializing its
    /// multi-tree transactions (plan applies, job updates) avoids sled retry storms and a hang
    /// seen with many concurrent `update_job` calls.
    writes: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The sled database inside a data dir; a compaction parks the old one at `PRE_COMPACT_DIR`.
const DB_DIR: &str = "db";
const PRE_COMPACT_DIR: &str = "db.pre-compact";
const LAST_COMMIT: &[u8] = b"last_commit";
const SCHEMA: &[u8] = b"schema_version";
const SYNC: &[u8] = b"sync";
const NEXT_JOB_ID: &[u8] = b"next_job_id";
/// Batches of appended log lines a live viewer may fall behind before it re-reads the store.
const LINE_EVENTS: usize = 64;

impl Store {
    /// Open (or create) the store in `dir` with the default options.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, &StoreOptions::default())
    }

    /// Open (or create) the store in `dir`. Fails at once, not after a hang, when another
    /// process holds the data dir. sled's page cache is `options.cache_bytes`: its own
    /// default (1 GiB) lets a process grow to hundreds of MB after reading or writing one
    /// large log; logs are read in pages, so a small cache costs little.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let path = dir.join(DB_DIR);
        if !path.exists() && dir.join(PRE_COMPACT_DIR).exists() {
            return Err(StoreError::InterruptedCompaction {
                path: dir.to_path_buf(),
            });
        }
        let db = sled::Config::new()
            .cache_capacity(options.cache_bytes)
            .path(&path)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked {
                        path: dir.to_path_buf(),
                    }
                }
                other => StoreError::Sled(other),
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get(SCHEMA)? {
            None => {
                meta.insert(SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(found) => {
                let found = u32::from_be_bytes(found.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt {
                        tree: "meta",
                        message: "schema_version".into(),
                    }
                })?);
                if found == 2 {
                    // Logs move from one key per line to chunks; nothing else changed.
                    let old = db.open_tree("logs")?;
                    let lines = logs::migrate_line_logs(&old, &db.open_tree("log_chunks")?)?;
                    db.flush()?;
                    drop(old);
                    db.drop_tree("logs")?;
                    meta.insert(SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                    db.flush()?;
                    tracing::info!(
                        lines,
                        "store migrated from schema 2 to 3 (logs in compressed chunks)"
                    );
                } else if found != SCHEMA_VERSION {
                    let hint = if found > SCHEMA_VERSION {
                        "A newer Kiln wrote it and downgrades are not supported: run that Kiln version (or a newer one). Backups are version-checked too: a backup restores only into a Kiln with the same schema version."
                    } else {
                        "An older Kiln wrote it and this Kiln migrates only from schema 2. Either keep running the Kiln version that wrote it, or: stop it, take a `kiln backup` with that old binary (it restores only with a Kiln of that schema), move the data dir aside and start this Kiln on an empty --data-dir. Revisions are re-imported from git and the newest revision of each spec is built again; old job logs stay readable with the old binary and the backup."
                    };
                    return Err(StoreError::SchemaMismatch {
                        path: dir.to_path_buf(),
                        found,
                        expected: SCHEMA_VERSION,
                        kiln: concat!("kiln ", env!("CARGO_PKG_VERSION")),
                        hint,
                    });
                }
            }
        }
        let (events, _) = broadcast::channel(1024);
        let (lines, _) = broadcast::channel(LINE_EVENTS);
        let last_commit = meta
            .get(LAST_COMMIT)?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let sync = match meta.get(SYNC)? {
            Some(v) => decode("meta", &v)?,
            None => SyncStatus::default(),
        };
        Ok(Store {
            lines,
            summary: Arc::new(summary::Summary::new(last_commit, sync)),
            specs: db.open_tree("specs")?,
            revisions: db.open_tree("revisions")?,
            jobs: db.open_tree("jobs")?,
            jobs_by_spec: db.open_tree("jobs_by_spec")?,
            active: db.open_tree("active")?,
            built: db.open_tree("built")?,
            paths: db.open_tree("paths")?,
            logs: db.open_tree("log_chunks")?,
            installed: db.open_tree("installed")?,
            meta,
            db,
            events,
            writes: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Live notifications of changes.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Live appended log lines (see [`LogBatch`]).
    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogBatch>> {
        self.lines.subscribe()
    }

    /// The last processed commit, from memory: never waits for sled (this Kiln is the only
    /// writer, and [`Store::apply`] updates it with the record).
    pub fn last_commit(&self) -> Result<Option<String>, StoreError> {
        Ok(self.summary.last_commit())
    }

    /// The outcome of the last sync attempt, from memory (see [`Store::last_commit`]).
    pub fn sync_status(&self) -> Result<SyncStatus, StoreError> {
        Ok(self.summary.sync())
    }

    /// Record a sync outcome (in memory at once, in sled on a blocking thread).
    pub async fn set_sync_status(&self, status: &SyncStatus) -> Result<(), StoreError> {
        self.summary.set_sync(status.clone());
        let (meta, value) = (self.meta.clone(), encode(status)?);
        blocking(move || {
            meta.insert(SYNC, value)?;
            Ok(())
        })
        .await
    }

    /// True while a sled write (transaction or batch) runs: reads may wait for it.
    pub fn writing(&self) -> bool {
        self.summary.writing()
    }

    /// Mark the store as writing until the mark is dropped (for writes done outside the
    /// store's own `async fn`s, and for tests of views that must not wait for a write).
    pub fn mark_writing(&self) -> WriteMark {
        self.summary.mark_writing()
    }

    /// Every spec record, ordered by name, read on a blocking thread (a full scan).
    pub async fn all_specs(&self) -> Result<Vec<SpecRecord>, StoreError> {
        let store = self.clone();
        blocking(move || store.specs().collect()).await
    }

    // ---- reads ----

    pub fn spec(&self, name: &str) -> Result<Option<SpecRecord>, StoreError> {
        self.specs
            .get(name.as_bytes())?
            .map(|v| decode("specs", &v))
            .transpose()
    }

    /// Every spec record, ordered by name.
    pub fn specs(&self) -> impl Iterator<Item = Result<SpecRecord, StoreError>> + '_ {
        self.specs.iter().values().map(|v| decode("specs", &v?))
    }

    /// Number of specs. sled counts by scanning the tree: not for hot paths.
    pub fn spec_count(&self) -> usize {
        self.specs.len()
    }

    /// Revisions of a spec, oldest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<Revision>, StoreError> {
        self.revisions
            .scan_prefix(name_prefix(name))
            .values()
            .map(|v| decode("revisions", &v?))
            .collect()
    }

    pub fn revision(&self, name: &str, number: u64) -> Result<Option<Revision>, StoreError> {
        self.revisions
            .get(name_key(name, &number.to_be_bytes()))?
            .map(|v| decode("revisions", &v))
            .transpose()
    }

    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.jobs
            .get(id.to_be_bytes())?
            .map(|v| decode("jobs", &v))
            .transpose()
    }

    /// Jobs of a spec, newest first, `skip` then at most `limit`.
    pub fn jobs_of_spec(
        &self,
        name: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for key in self
            .jobs_by_spec
            .scan_prefix(name_prefix(name))
            .keys()
            .rev()
            .skip(skip)
            .take(limit)
        {
            let key = key?;
            let id = codec::id_suffix(&key).ok_or(StoreError::Corrupt {
                tree: "jobs_by_spec",
                message: "short key".into(),
            })?;
            if let Some(job) = self.job(id)? {
                out.push(job);
            }
        }
        Ok(out)
    }

    pub fn job_count_of_spec(&self, name: &str) -> usize {
        self.jobs_by_spec.scan_prefix(name_prefix(name)).count()
    }

    /// Every queued or running job, oldest first (the build queue order).
    pub fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut ids: Vec<JobId> = Vec::new();
        for key in self.active.iter().keys() {
            if let Some(id) = codec::id_suffix(&key?) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(job) = self.job(id)? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// Files currently claiming a name.
    pub fn paths_of(&self, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(match self.paths.get(name.as_bytes())? {
            Some(v) => decode("paths", &v)?,
            None => Vec::new(),
        })
    }

    /// All jobs, any order-independent aggregate (metrics): counts per status.
    pub fn job_counts(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        let mut counts = [0u64; 6];
        for value in self.jobs.iter().values() {
            let job: Job = decode("jobs", &value?)?;
            counts[JobStatus::ALL
                .iter()
                .position(|s| *s == job.status)
                .unwrap_or(0)] += 1;
        }
        Ok(JobStatus::ALL.iter().copied().zip(counts).collect())
    }

    // ---- writes ----

    /// Apply a reconcile plan and record `commit` as processed, atomically. Returns the ids of
    /// the jobs created, in plan order.
    pub async fn apply(&self, plan: &Plan, commit: &str) -> Result<Vec<JobId>, StoreError> {
        let _writing = self.writes.lock().await;
        let (store, owned, commit_owned) = (self.clone(), plan.clone(), commit.to_string());
        let created = blocking(move || {
            let _mark = store.mark_writing();
            store.apply_blocking(&owned, &commit_owned)
        })
        .await?;
        self.summary.set_last_commit(commit.to_string());
        self.db.flush_async().await?;
        for (id, new) in created.iter().zip(&plan.jobs) {
            let status = if new.cancelled.is_some() {
                JobStatus::Cancelled
            } else {
                JobStatus::Queued
            };
            let _ = self.events.send(StoreEvent::Job { job: *id, status });
        }
        for cancel in &plan.cancellations {
            let _ = self.events.send(StoreEvent::Job {
                job: cancel.job,
                status: JobStatus::Cancelled,
            });
        }
        let _ = self.events.send(StoreEvent::Synced);
        Ok(created)
    }

    /// The transaction of [`Store::apply`]; the caller holds `writes`.
    fn apply_blocking(&self, plan: &Plan, commit: &str) -> Result<Vec<JobId>, StoreError> {
        let at = now();
        let causes_tree = self.db.open_tree(base_digests::CAUSES)?;
        let trees = (
            &self.specs,
            &self.revisions,
            &self.jobs,
            &self.jobs_by_spec,
            &self.active,
            &self.paths,
            &self.meta,
            &causes_tree,
        );
        let created = trees.transaction(
            |(specs, revisions, jobs, jobs_by_spec, active, paths, meta, causes)| {
                let abort = ConflictableTransactionError::Abort;
                let mut created = Vec::with_capacity(plan.jobs.len());
                let mut records = plan.specs.clone();
                for rev in &plan.revisions {
                    revisions.insert(
                        name_key(&rev.spec, &rev.number.to_be_bytes()),
                        encode(rev).map_err(abort)?,
                    )?;
                }
                for (spec, number, cause) in &plan.causes {
                    causes.insert(
                        name_key(spec, &number.to_be_bytes()),
                        encode(cause).map_err(abort)?,
                    )?;
                }
                for new in &plan.jobs {
                    // Our own counter, in the same transaction: ids stay dense (sled's
                    // generate_id jumps by millions after every restart).
                    let id = match meta.get(NEXT_JOB_ID)? {
                        Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(1),
                        None => 1,
                    };
                    meta.insert(NEXT_JOB_ID, &(id + 1).to_be_bytes())?;
                    let status = if new.cancelled.is_some() {
                        JobStatus::Cancelled
                    } else {
                        JobStatus::Queued
                    };
                    let job = Job {
                        id,
                        spec: new.spec.clone(),
                        revision: new.revision,
                        commit: new.commit.clone(),
                        digest: new.digest.clone(),
                        plan: new.plan.clone(),
                        status,
                        image: None,
                        image_digest: None,
                        created_at: at,
                        updated_at: at,
                        started_at: None,
                        finished_at: if status.is_final() { Some(at) } else { None },
                        error: new.cancelled.clone(),
                        reused_from: None,
                        attempts: 0,
                        pushed: Vec::new(),
                        dockerfile: new.dockerfile.clone(),
                    };
                    jobs.insert(&id.to_be_bytes(), encode(&job).map_err(abort)?)?;
                    jobs_by_spec.insert(name_key(&new.spec, &id.to_be_bytes()), &[])?;
                    if !status.is_final() {
                        active.insert(name_key(&new.spec, &id.to_be_bytes()), &[])?;
                    }
                    if let Some(record) = records.get_mut(&new.spec) {
                        record.latest_job = Some(id);
                        record.latest_status = Some(status);
                    }
                    created.push(id);
                }
                for cancel in &plan.cancellations {
                    let Some(bytes) = jobs.get(cancel.job.to_be_bytes())? else {
                        continue;
                    };
                    let mut job: Job = decode("jobs", &bytes).map_err(abort)?;
                    if job.status.is_final() {
                        continue;
                    }
                    job.status = JobStatus::Cancelled;
                    job.error = Some(cancel.reason.clone());
                    job.updated_at = at;
                    job.finished_at = Some(at);
                    jobs.insert(&cancel.job.to_be_bytes(), encode(&job).map_err(abort)?)?;
                    active.remove(name_key(&job.spec, &job.id.to_be_bytes()))?;
                    let record = match records.get_mut(&job.spec) {
                        Some(record) => Some(record),
                        None => match specs.get(job.spec.as_bytes())? {
                            Some(bytes) => {
                                let record: SpecRecord = decode("specs", &bytes).map_err(abort)?;
                                Some(records.entry(job.spec.clone()).or_insert(record))
                            }
                            None => None,
                        },
                    };
                    if let Some(record) = record.filter(|r| r.latest_job == Some(job.id)) {
                        record.latest_status = Some(JobStatus::Cancelled);
                    }
                }
                for (name, record) in &records {
                    specs.insert(name.as_bytes(), encode(record).map_err(abort)?)?;
                }
                for (name, new_paths) in &plan.spec_paths {
                    if new_paths.is_empty() {
                        paths.remove(name.as_bytes())?;
                    } else {
                        paths.insert(name.as_bytes(), encode(new_paths).map_err(abort)?)?;
                    }
                }
                meta.insert(LAST_COMMIT, commit.as_bytes())?;
                Ok(created)
            },
        )?;
        Ok(created)
    }

    /// Record a job's new state (from the builder). Keeps the active set, the built-image
    /// index and the spec's latest image in step, then flushes.
    pub async fn update_job(&self, job: &Job) -> Result<Job, StoreError> {
        let _writing = self.writes.lock().await;
        let (store, owned) = (self.clone(), job.clone());
        let stored = blocking(move || {
            let _mark = store.mark_writing();
            store.update_job_blocking(&owned)
        })
        .await?;
        self.db.flush_async().await?;
        let _ = self.events.send(StoreEvent::Job {
            job: stored.id,
            status: stored.status,
        });
        Ok(stored)
    }

    /// The transaction of [`Store::update_job`]; the caller holds `writes`.
    fn update_job_blocking(&self, job: &Job) -> Result<Job, StoreError> {
        let trees = (&self.jobs, &self.active, &self.built, &self.specs);
        let stored = trees.transaction(|(jobs, active, built, specs)| {
            let abort = ConflictableTransactionError::Abort;
            let mut job = job.clone();
            // A cancellation (superseded, spec deleted) is final: a worker that has not noticed
            // it yet must not resurrect the job by writing `running`.
            if let Some(bytes) = jobs.get(job.id.to_be_bytes())? {
                let current: Job = decode("jobs", &bytes).map_err(abort)?;
                if current.status == JobStatus::Cancelled && job.status != JobStatus::Cancelled {
                    job.status = JobStatus::Cancelled;
                    job.error = current.error.clone();
                    job.finished_at = job.finished_at.or(current.finished_at);
                }
            }
            jobs.insert(&job.id.to_be_bytes(), encode(&job).map_err(abort)?)?;
            let key = name_key(&job.spec, &job.id.to_be_bytes());
            if job.status.is_final() {
                active.remove(key)?;
            } else {
                active.insert(key, &[])?;
            }
            if job.status.has_image() {
                built.insert(
                    name_key(&job.spec, job.digest.as_bytes()),
                    &job.id.to_be_bytes(),
                )?;
            }
            if let Some(bytes) = specs.get(job.spec.as_bytes())? {
                let mut record: SpecRecord = decode("specs", &bytes).map_err(abort)?;
                let mut changed = false;
                if record.latest_job == Some(job.id) && record.latest_status != Some(job.status) {
                    record.latest_status = Some(job.status);
                    changed = true;
                }
                // An older job finishing late never replaces a newer image.
                if job.status.has_image()
                    && record
                        .latest_image_job
                        .is_none_or(|newest| job.id >= newest)
                {
                    record.latest_image = job.image.clone();
                    record.latest_image_job = Some(job.id);
                    changed = true;
                }
                if changed {
                    specs.insert(job.spec.as_bytes(), encode(&record).map_err(abort)?)?;
                }
            }
            Ok(job)
        })?;
        Ok(stored)
    }

    /// Installed packages recorded for a job.
    pub fn installed(&self, job: JobId) -> Result<Option<InstalledPackages>, StoreError> {
        self.installed
            .get(job.to_be_bytes())?
            .map(|v| decode("installed", &v))
            .transpose()
    }

    pub async fn set_installed(
        &self,
        job: JobId,
        packages: &InstalledPackages,
    ) -> Result<(), StoreError> {
        let (installed, value) = (self.installed.clone(), encode(packages)?);
        blocking(move || {
            installed.insert(job.to_be_bytes(), value)?;
            Ok(())
        })
        .await?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Jobs a dead process left `running` go back to `queued`, each with a log line saying
    /// why. Returns how many.
    pub async fn requeue_interrupted(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        let store = self.clone();
        for mut job in blocking(move || store.active_jobs()).await? {
            if job.status != JobStatus::Running {
                continue;
            }
            job.status = JobStatus::Queued;
            job.updated_at = now();
            self.update_job(&job).await?;
            let text = format!(
                "kiln: the process running attempt {} stopped before the job finished; re-queued",
                job.attempts
            );
            self.append_log(
                job.id,
                &[LogLine {
                    at_ms: now() * 1000,
                    text,
                }],
            )
            .await?;
            count += 1;
        }
        Ok(count)
    }

    /// Forget a built image (it vanished from the Engine and the registry).
    pub fn forget_built(&self, name: &str, digest: &str) -> Result<(), StoreError> {
        self.built.remove(name_key(name, digest.as_bytes()))?;
        Ok(())
    }

    fn view_built(&self, name: &str, digest: &str) -> Result<Option<JobId>, StoreError> {
        Ok(self
            .built
            .get(name_key(name, digest.as_bytes()))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    fn view_active(&self, name: &str) -> Result<Vec<(JobId, u64)>, StoreError> {
        let mut out = Vec::new();
        for key in self.active.scan_prefix(name_prefix(name)).keys() {
            if let Some(id) = codec::id_suffix(&key?)
                && let Some(job) = self.job(id)?
            {
                out.push((id, job.revision));
            }
        }
        Ok(out)
    }
}

/// The store as reconcile sees it. A read error fails the pass (nothing is applied; the next
/// pass tries again) — it must never look like "nothing stored".
impl StateView for Store {
    type Error = StoreError;
    fn spec(&self, name: &str) -> Result<Option<SpecRecord>, StoreError> {
        Store::spec(self, name)
    }
    fn active_jobs(&self, name: &str) -> Result<Vec<(JobId, u64)>, StoreError> {
        self.view_active(name)
    }
    fn built_job(&self, name: &str, digest: &str) -> Result<Option<JobId>, StoreError> {
        self.view_built(name, digest)
    }
}

#[cfg(test)]
mod tests;
