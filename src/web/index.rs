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
//! log events do not. A stale cache is rebuilt once, on a blocking thread.
//!
//! Stale while writing: sled 0.34 makes every read wait while a transaction or batch runs
//! (a 10,000-spec import, a big log batch). A stale cache that has a previous value answers
//! with it while the store is [writing](Store::writing) or while another request is already
//! rebuilding, so `/` never queues behind a write; the first request after the write
//! rebuilds. Only a cache without any value yet waits.

use super::AppInfo;
use super::format::{When, encode};
use crate::model::{JobStatus, Timestamp};
use crate::store::{Store, StoreError, StoreEvent};
use axum::body::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
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

/// One spec, as the list shows it, with its display strings computed once per rebuild.
#[derive(Clone, Debug)]
pub struct SpecRow {
    pub name: String,
    /// Lower-case name and path, for the filter.
    pub haystack: String,
    pub href: String,
    pub status: SpecStatus,
    pub job_href: Option<String>,
    pub image: Option<String>,
    pub revision: u64,
    /// Short SHA of the current revision's commit, and its link.
    pub commit: Option<String>,
    pub commit_href: Option<String>,
    pub updated_at: Timestamp,
    pub updated_iso: String,
    pub updated_exact: String,
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

    fn build(store: &Store, info: &AppInfo) -> Result<SpecIndex, StoreError> {
        let mut index = SpecIndex {
            rows: Vec::new(),
            ..SpecIndex::default()
        };
        for record in store.specs() {
            let record = record?;
            // The spec record carries its newest job's status: no job record is read.
            let status = if !record.valid {
                SpecStatus::Invalid
            } else {
                record
                    .latest_status
                    .map_or(SpecStatus::None, SpecStatus::Job)
            };
            let commit = store
                .revision(&record.name, record.revision)?
                .map(|r| r.commit.sha);
            if record.deleted {
                index.deleted += 1;
            } else {
                index.live += 1;
                index.counts[status.slot()] += 1;
            }
            let when = When::at_now(record.updated_at, record.updated_at);
            index.rows.push(SpecRow {
                haystack: format!("{}\n{}", record.name, record.path).to_lowercase(),
                href: format!("/specs/{}", encode(&record.name)),
                status,
                job_href: record.latest_job.map(|id| format!("/jobs/{id}")),
                image: record.latest_image,
                revision: record.revision,
                commit_href: commit.as_deref().and_then(|c| info.commit_href(c)),
                commit: commit.map(|c| c.get(..7).unwrap_or(&c).to_string()),
                updated_at: record.updated_at,
                updated_iso: when.iso,
                updated_exact: when.exact,
                deleted: record.deleted,
                name: record.name,
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
    fn build(store: &Store, _info: &AppInfo) -> Result<JobStats, StoreError> {
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
    build: fn(&Store, &AppInfo) -> Result<T, StoreError>,
    info: Arc<AppInfo>,
}

impl<T: Send + Sync + 'static> Cached<T> {
    fn new(
        store: &Store,
        info: &Arc<AppInfo>,
        build: fn(&Store, &AppInfo) -> Result<T, StoreError>,
    ) -> Self {
        Cached {
            events: Mutex::new(store.subscribe()),
            stale: AtomicBool::new(true),
            current: RwLock::new(None),
            rebuild: tokio::sync::Mutex::new(()),
            build,
            info: Arc::clone(info),
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
        self.previous()
    }

    /// The last value built, fresh or not.
    fn previous(&self) -> Option<Arc<T>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// The current value, rebuilt first when the store changed — or, while the store is
    /// writing or another request rebuilds, the previous value (see the module doc).
    pub async fn get(&self, store: &Store) -> Result<Arc<T>, StoreError> {
        self.note_changes();
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        if store.writing()
            && let Some(previous) = self.previous()
        {
            return Ok(previous);
        }
        let _one_rebuild = match self.rebuild.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.previous() {
                Some(previous) => return Ok(previous),
                None => self.rebuild.lock().await,
            },
        };
        self.note_changes();
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        // Cleared before reading, so a change during the rebuild marks it stale again.
        self.stale.store(false, Ordering::SeqCst);
        let build = self.build;
        let store = store.clone();
        let info = Arc::clone(&self.info);
        let built = tokio::task::spawn_blocking(move || build(&store, &info))
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

/// Rendered spec-list pages, kept for at most [`PAGE_TTL`] and only while the index they were
/// rendered from is current: a burst of requests for the same page renders it once, and no
/// status is ever shown older than the store's last change event. (Relative times may lag by
/// up to the TTL.)
pub struct PageCache {
    entries: Mutex<HashMap<String, (Instant, usize, Bytes)>>,
}

/// How long a rendered spec-list page is re-used.
pub const PAGE_TTL: Duration = Duration::from_secs(1);
const PAGE_CACHE_ENTRIES: usize = 256;

impl PageCache {
    /// The page for `key` rendered from `index`, if fresh.
    pub fn get(&self, key: &str, index: &Arc<SpecIndex>) -> Option<Bytes> {
        let entries = self.entries.lock().ok()?;
        let (at, from, body) = entries.get(key)?;
        (*from == Arc::as_ptr(index) as usize && at.elapsed() < PAGE_TTL).then(|| body.clone())
    }

    pub fn put(&self, key: String, index: &Arc<SpecIndex>, body: Bytes) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= PAGE_CACHE_ENTRIES {
                entries.retain(|_, (at, _, _)| at.elapsed() < PAGE_TTL);
                if entries.len() >= PAGE_CACHE_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(key, (Instant::now(), Arc::as_ptr(index) as usize, body));
        }
    }
}

/// The caches a router shares.
pub struct Caches {
    pub specs: Cached<SpecIndex>,
    pub jobs: Cached<JobStats>,
    pub pages: PageCache,
}

impl Caches {
    pub fn new(store: &Store, info: &Arc<AppInfo>) -> Arc<Caches> {
        Arc::new(Caches {
            specs: Cached::new(store, info, SpecIndex::build),
            jobs: Cached::new(store, info, JobStats::build),
            pages: PageCache {
                entries: Mutex::new(HashMap::new()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CommitMeta, JobPlan, Revision, SpecRecord};
    use crate::reconcile::{NewJob, Plan};

    fn plan(names: &[&str]) -> Plan {
        let mut plan = Plan::default();
        for name in names {
            plan.revisions.push(Revision {
                spec: name.to_string(),
                number: 1,
                commit: CommitMeta {
                    sha: "0123456789abcdef".into(),
                    author: "a".into(),
                    committed_at: 0,
                    subject: "s".into(),
                },
                path: format!("{name}.yaml"),
                digest: Some("d".into()),
                errors: Vec::new(),
                yaml: String::new(),
            });
            plan.jobs.push(NewJob {
                spec: name.to_string(),
                revision: 1,
                commit: "0123456789abcdef".into(),
                digest: "d".into(),
                plan: JobPlan::Build,
                dockerfile: String::new(),
                cancelled: None,
            });
            plan.specs.insert(
                name.to_string(),
                SpecRecord {
                    name: name.to_string(),
                    path: format!("{name}.yaml"),
                    revision: 1,
                    content_key: "d".into(),
                    valid: true,
                    deleted: false,
                    latest_job: None,
                    latest_status: None,
                    latest_image: None,
                    latest_image_job: None,
                    updated_at: 0,
                },
            );
        }
        plan
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn index_follows_store_events_and_ignores_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let info = Arc::new(AppInfo::default());
        let caches = Caches::new(&store, &info);
        let empty = caches.specs.get(&store).await.unwrap();
        assert!(empty.rows.is_empty());

        let ids = store.apply(&plan(&["b", "a"]), "c1").await.unwrap();
        let index = caches.specs.get(&store).await.unwrap();
        assert_eq!(
            index
                .rows
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(index.count(SpecStatus::Job(JobStatus::Queued)), 2);
        assert_eq!(index.rows[0].commit.as_deref(), Some("0123456"));

        // Log lines do not invalidate; a job change does.
        store
            .append_log(
                ids[0],
                &[crate::store::LogLine {
                    at_ms: 0,
                    text: "x".into(),
                }],
            )
            .await
            .unwrap();
        assert!(Arc::ptr_eq(
            &index,
            &caches.specs.get(&store).await.unwrap()
        ));
        let mut job = store.job(ids[0]).unwrap().unwrap();
        job.status = JobStatus::Failed;
        store.update_job(&job).await.unwrap();
        let index = caches.specs.get(&store).await.unwrap();
        assert_eq!(index.count(SpecStatus::Job(JobStatus::Failed)), 1);
        let stats = caches.jobs.get(&store).await.unwrap();
        assert_eq!(
            stats.by_status[JobStatus::ALL
                .iter()
                .position(|s| *s == JobStatus::Failed)
                .unwrap()],
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_index_answers_with_the_previous_value_while_the_store_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let info = Arc::new(AppInfo::default());
        let caches = Caches::new(&store, &info);
        store.apply(&plan(&["a"]), "c1").await.unwrap();
        let before = caches.specs.get(&store).await.unwrap();
        assert_eq!(before.rows.len(), 1);

        store.apply(&plan(&["b"]), "c2").await.unwrap();
        let writing = store.mark_writing();
        // Stale (a Synced event arrived) but a write runs: the previous value, at once.
        let during = caches.specs.get(&store).await.unwrap();
        assert!(Arc::ptr_eq(&before, &during));
        drop(writing);
        // The write is over: the first request rebuilds.
        let after = caches.specs.get(&store).await.unwrap();
        assert_eq!(
            after
                .rows
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_cache_builds_even_while_the_store_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply(&plan(&["a"]), "c1").await.unwrap();
        let caches = Caches::new(&store, &Arc::new(AppInfo::default()));
        let _writing = store.mark_writing();
        let index = caches.specs.get(&store).await.unwrap();
        assert_eq!(index.rows.len(), 1);
    }
}
