//! In-memory views of the whole store that pages and `/metrics` need on every request, kept
//! fresh by the store's change events instead of being recomputed per request.
//!
//! * [`SpecIndex`]: one small row per spec (status of its newest job, image, revision …), so
//!   the spec list filters and pages 10,000 specs in memory and counts statuses without
//!   touching sled.
//! * [`JobStats`]: jobs per status and the build-duration histogram for `/metrics`.
//!
//! Each cache holds a broadcast receiver. A request first drains it without waiting: a `Job`
//! or `Synced` event (or a lagged receiver, which may have missed one) marks the cache stale,
//! log events do not. A stale cache is rebuilt once, on a blocking thread, while concurrent
//! requests wait for that one rebuild.

use crate::model::{JobId, JobStatus, Timestamp};
use crate::store::{Store, StoreError, StoreEvent};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::broadcast::{self, error::TryRecvError};

/// What the list shows as a spec's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecStatus {
    Job(JobStatus),
    Invalid,
    /// Valid, but no job was ever created for it.
    None,
}

impl SpecStatus {
    pub const ALL: [SpecStatus; 8] = [
        SpecStatus::Job(JobStatus::Queued),
        SpecStatus::Job(JobStatus::Running),
        SpecStatus::Job(JobStatus::Succeeded),
        SpecStatus::Job(JobStatus::Reused),
        SpecStatus::Job(JobStatus::Failed),
        SpecStatus::Job(JobStatus::Cancelled),
        SpecStatus::Invalid,
        SpecStatus::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpecStatus::Job(s) => s.as_str(),
            SpecStatus::Invalid => "invalid",
            SpecStatus::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<SpecStatus> {
        SpecStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn slot(self) -> usize {
        SpecStatus::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(SpecStatus::ALL.len() - 1)
    }
}

/// One spec, as the list shows it.
#[derive(Clone, Debug)]
pub struct SpecRow {
    pub name: String,
    /// Lower-case name and path, for the filter.
    pub haystack: String,
    pub status: SpecStatus,
    pub image: Option<String>,
    pub revision: u64,
    /// Commit of the current revision.
    pub commit: Option<String>,
    pub latest_job: Option<JobId>,
    pub updated_at: Timestamp,
    pub deleted: bool,
}

/// Every spec, ordered by name, with counts.
#[derive(Debug, Default)]
pub struct SpecIndex {
    pub rows: Vec<SpecRow>,
    /// Live (not deleted) specs per status, in [`SpecStatus::ALL`] order.
    pub counts: [usize; 8],
    pub live: usize,
    pub deleted: usize,
}

impl SpecIndex {
    pub fn count(&self, status: SpecStatus) -> usize {
        self.counts[status.slot()]
    }

    fn build(store: &Store) -> Result<SpecIndex, StoreError> {
        let mut index = SpecIndex {
            rows: Vec::with_capacity(store.spec_count()),
            ..SpecIndex::default()
        };
        for record in store.specs() {
            let record = record?;
            let job = match record.latest_job {
                Some(id) => store.job(id)?,
                None => None,
            };
            let status = if !record.valid {
                SpecStatus::Invalid
            } else {
                match &job {
                    Some(job) => SpecStatus::Job(job.status),
                    None => SpecStatus::None,
                }
            };
            let commit = match &job {
                Some(job) if job.revision == record.revision => Some(job.commit.clone()),
                _ => store
                    .revision(&record.name, record.revision)?
                    .map(|r| r.commit.sha),
            };
            if record.deleted {
                index.deleted += 1;
            } else {
                index.live += 1;
                index.counts[status.slot()] += 1;
            }
            index.rows.push(SpecRow {
                haystack: format!("{}\n{}", record.name, record.path).to_lowercase(),
                name: record.name,
                status,
                image: record.latest_image,
                revision: record.revision,
                commit,
                latest_job: record.latest_job,
                updated_at: record.updated_at,
                deleted: record.deleted,
            });
        }
        Ok(index)
    }
}

/// Jobs per status and build durations, for `/metrics`.
#[derive(Debug, Default)]
pub struct JobStats {
    /// In [`JobStatus::ALL`] order.
    pub by_status: [u64; 6],
    /// Finished builds (not re-uses): (outcome, seconds from start to finish).
    pub durations: Vec<(JobStatus, f64)>,
}

impl JobStats {
    fn build(store: &Store) -> Result<JobStats, StoreError> {
        let mut stats = JobStats::default();
        // Every job belongs to exactly one spec record (deleted specs keep theirs).
        for record in store.specs() {
            let record = record?;
            for job in store.jobs_of_spec(&record.name, 0, usize::MAX)? {
                if let Some(i) = JobStatus::ALL.iter().position(|s| *s == job.status) {
                    stats.by_status[i] += 1;
                }
                if matches!(job.status, JobStatus::Succeeded | JobStatus::Failed)
                    && job.reused_from.is_none()
                    && let (Some(start), Some(end)) = (job.started_at, job.finished_at)
                {
                    stats
                        .durations
                        .push((job.status, (end - start).max(0) as f64));
                }
            }
        }
        Ok(stats)
    }
}

/// A value rebuilt from the store when a relevant change event arrives.
pub struct Cached<T> {
    events: Mutex<broadcast::Receiver<StoreEvent>>,
    stale: AtomicBool,
    current: RwLock<Option<Arc<T>>>,
    rebuild: tokio::sync::Mutex<()>,
    build: fn(&Store) -> Result<T, StoreError>,
}

impl<T: Send + Sync + 'static> Cached<T> {
    fn new(store: &Store, build: fn(&Store) -> Result<T, StoreError>) -> Self {
        Cached {
            events: Mutex::new(store.subscribe()),
            stale: AtomicBool::new(true),
            current: RwLock::new(None),
            rebuild: tokio::sync::Mutex::new(()),
            build,
        }
    }

    /// Drain pending events without waiting; mark stale on any that matters.
    fn note_changes(&self) {
        let Ok(mut rx) = self.events.lock() else {
            self.stale.store(true, Ordering::SeqCst);
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(StoreEvent::Log { .. }) => {}
                Ok(_) | Err(TryRecvError::Lagged(_)) => self.stale.store(true, Ordering::SeqCst),
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
            }
        }
    }

    fn fresh(&self) -> Option<Arc<T>> {
        if self.stale.load(Ordering::SeqCst) {
            return None;
        }
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// The current value, rebuilt first when the store changed.
    pub async fn get(&self, store: &Store) -> Result<Arc<T>, StoreError> {
        self.note_changes();
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let _one_rebuild = self.rebuild.lock().await;
        self.note_changes();
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        // Cleared before reading, so a change during the rebuild marks it stale again.
        self.stale.store(false, Ordering::SeqCst);
        let build = self.build;
        let store = store.clone();
        let built = tokio::task::spawn_blocking(move || build(&store))
            .await
            .map_err(|e| StoreError::Corrupt {
                tree: "index",
                message: format!("index rebuild panicked: {e}"),
            })
            .and_then(|r| r);
        match built {
            Ok(value) => {
                let value = Arc::new(value);
                if let Ok(mut current) = self.current.write() {
                    *current = Some(Arc::clone(&value));
                }
                Ok(value)
            }
            Err(e) => {
                self.stale.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// The caches a router shares.
pub struct Caches {
    pub specs: Cached<SpecIndex>,
    pub jobs: Cached<JobStats>,
}

impl Caches {
    pub fn new(store: &Store) -> Arc<Caches> {
        Arc::new(Caches {
            specs: Cached::new(store, SpecIndex::build),
            jobs: Cached::new(store, JobStats::build),
        })
    }
}
