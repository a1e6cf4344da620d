//! Retention: pruning old jobs so the store does not grow forever.
//!
//! Why a separate pass instead of deleting as jobs finish: retention is a policy the operator
//! changes (`log_retention_days`, `max_jobs_per_spec`), and a pass applies a new policy to the
//! whole history at once, on a stopped data dir (`kiln gc`) as well as in `kiln serve`.
//!
//! What a pass never prunes, whatever the policy says:
//! * a queued or running job (its worker still writes to it);
//! * a spec's `latest_job` (the spec list shows its status) and `latest_image_job` (the job
//!   that produced the image users pull — its record is what a re-use copies);
//! * the re-use source of a queued or running job.
//!
//! Pruning a job removes its record, its `jobs_by_spec` and `active` index entries, its
//! `built` entry (a later revert to that content is built again instead of re-used, and the
//! log says so), its installed-packages record and every log line. Revisions stay: they are
//! small and they are the history of the spec.
//!
//! Bounded work: records are removed in transactions of at most [`GcPolicy::batch`] jobs,
//! each holding the store's write lock only for that batch, and log lines are removed in
//! sled batches of [`LOG_BATCH`] chunks without the lock — a prune of a million lines never
//! holds one giant transaction or stops the builders for long. Log lines are removed by a
//! sweep over the `log_chunks` tree that deletes the log of every job without a record: it
//! covers the jobs this pass pruned and any a crashed pass left behind, and costs one seek
//! per job that has a log.
//!
//! The pass is blocking (sled is): call it from `spawn_blocking` in async code.

use super::codec::{decode, id_suffix, name_key};
use super::{Store, StoreError, StoreEvent};
use crate::model::{Job, JobId, JobPlan, SpecRecord, Timestamp};
use serde::Serialize;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use std::collections::HashSet;

/// Log chunks (up to 1,000 lines each) removed per sled batch.
pub const LOG_BATCH: usize = 4096;

/// What to keep. `None` limits keep everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Prune finished jobs that ended more than this many seconds ago.
    pub max_age_secs: Option<i64>,
    /// Keep at most this many jobs per spec, newest first (protected jobs are kept beyond it).
    pub max_jobs_per_spec: Option<usize>,
    /// Jobs removed per transaction.
    pub batch: usize,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            max_age_secs: None,
            max_jobs_per_spec: None,
            batch: 256,
        }
    }
}

impl GcPolicy {
    /// A policy from the config's `log_retention_days` and `max_jobs_per_spec`.
    pub fn new(retention_days: Option<u64>, max_jobs_per_spec: Option<usize>) -> GcPolicy {
        GcPolicy {
            max_age_secs: retention_days
                .map(|d| i64::try_from(d.saturating_mul(86_400)).unwrap_or(i64::MAX)),
            max_jobs_per_spec,
            ..GcPolicy::default()
        }
    }

    /// Whether the policy can prune anything at all.
    pub fn is_active(&self) -> bool {
        self.max_age_secs.is_some() || self.max_jobs_per_spec.is_some()
    }
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub specs_scanned: u64,
    pub jobs_scanned: u64,
    pub jobs_pruned: u64,
    /// Jobs the policy selected but a rule protects (active, latest, latest image, re-use source).
    pub jobs_protected: u64,
    pub log_lines_pruned: u64,
    pub installed_pruned: u64,
    pub built_entries_pruned: u64,
}

/// Why a job the policy selected is kept anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    Active,
    LatestJob,
    LatestImage,
    ReuseSource,
}

/// The decision for one job: `Ok(true)` prune, `Ok(false)` the policy keeps it,
/// `Err(p)` the policy would prune it but `p` protects it.
///
/// `position` is the job's place among its spec's jobs, newest = 0.
pub fn decide(
    job: &Job,
    position: usize,
    record: Option<&SpecRecord>,
    reuse_sources: &HashSet<JobId>,
    policy: &GcPolicy,
    now: Timestamp,
) -> Result<bool, Protection> {
    let over_count = policy.max_jobs_per_spec.is_some_and(|max| position >= max);
    let ended = job.finished_at.unwrap_or(job.updated_at);
    let too_old = job.status.is_final()
        && policy
            .max_age_secs
            .is_some_and(|age| now.saturating_sub(ended) > age);
    if !(over_count || too_old) {
        return Ok(false);
    }
    protection(job, record, reuse_sources).map_or(Ok(true), Err)
}

fn protection(
    job: &Job,
    record: Option<&SpecRecord>,
    reuse_sources: &HashSet<JobId>,
) -> Option<Protection> {
    if !job.status.is_final() {
        return Some(Protection::Active);
    }
    if let Some(record) = record {
        if record.latest_job == Some(job.id) {
            return Some(Protection::LatestJob);
        }
        if record.latest_image_job == Some(job.id) {
            return Some(Protection::LatestImage);
        }
    }
    if reuse_sources.contains(&job.id) {
        return Some(Protection::ReuseSource);
    }
    None
}

fn log_key(job: JobId, line: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..].copy_from_slice(&line.to_be_bytes());
    k
}

impl Store {
    /// One retention pass with `policy` at time `now` (Unix seconds). Blocking.
    pub fn gc(&self, policy: &GcPolicy, now: Timestamp) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        if policy.is_active() {
            let reuse_sources: HashSet<JobId> = self
                .active_jobs()?
                .into_iter()
                .filter_map(|j| match j.plan {
                    JobPlan::Reuse { from } => Some(from),
                    JobPlan::Build => None,
                })
                .collect();
            let mut doomed: Vec<JobId> = Vec::new();
            // Walk the `jobs_by_spec` index (not the spec records), so no job escapes the
            // policy because its spec record is missing.
            let mut by_spec: Vec<(String, Vec<JobId>)> = Vec::new();
            for key in self.jobs_by_spec.iter().keys() {
                let key = key?;
                let (Some(id), Some(name_len)) = (id_suffix(&key), key.len().checked_sub(9)) else {
                    continue;
                };
                let name = &key[..name_len];
                match by_spec.last_mut() {
                    Some((last, ids)) if last.as_bytes() == name => ids.push(id),
                    _ => by_spec.push((String::from_utf8_lossy(name).into_owned(), vec![id])),
                }
            }
            for (name, ids) in by_spec {
                report.specs_scanned += 1;
                let record = self.spec(&name)?;
                // Newest first: position 0 is the newest job.
                for (i, id) in ids.into_iter().rev().enumerate() {
                    let must_read = policy.max_age_secs.is_some()
                        || policy.max_jobs_per_spec.is_some_and(|max| i >= max);
                    if !must_read {
                        continue;
                    }
                    let Some(job) = self.job(id)? else { continue };
                    report.jobs_scanned += 1;
                    match decide(&job, i, record.as_ref(), &reuse_sources, policy, now) {
                        Ok(true) => doomed.push(id),
                        Ok(false) => {}
                        Err(_) => report.jobs_protected += 1,
                    }
                }
            }
            for chunk in doomed.chunks(policy.batch.max(1)) {
                let (pruned, installed, built) = self.prune_batch(chunk, &reuse_sources)?;
                report.jobs_pruned += pruned;
                report.installed_pruned += installed;
                report.built_entries_pruned += built;
            }
        }
        report.log_lines_pruned = self.sweep_orphan_logs()?;
        report.installed_pruned += self.sweep_orphan_installed()?;
        self.sweep_orphan_image_facts()?;
        self.db.flush()?;
        if report.jobs_pruned > 0 {
            let _ = self.events.send(StoreEvent::Pruned {
                jobs: report.jobs_pruned,
            });
        }
        Ok(report)
    }

    /// Remove the records of `ids` in one transaction under the write lock, re-checking each
    /// against the current spec record (a job may have become protected since the scan).
    fn prune_batch(
        &self,
        ids: &[JobId],
        reuse_sources: &HashSet<JobId>,
    ) -> Result<(u64, u64, u64), StoreError> {
        let _writing = self.writes.blocking_lock();
        let _mark = self.mark_writing();
        let trees = (
            &self.jobs,
            &self.jobs_by_spec,
            &self.active,
            &self.built,
            &self.installed,
            &self.specs,
        );
        let counts = trees.transaction(|(jobs, by_spec, active, built, installed, specs)| {
            let abort = ConflictableTransactionError::Abort;
            let (mut pruned, mut inst, mut blt) = (0u64, 0u64, 0u64);
            for &id in ids {
                let Some(bytes) = jobs.get(id.to_be_bytes())? else {
                    continue;
                };
                let job: Job = decode("jobs", &bytes).map_err(abort)?;
                let record: Option<SpecRecord> = specs
                    .get(job.spec.as_bytes())?
                    .map(|b| decode("specs", &b))
                    .transpose()
                    .map_err(abort)?;
                if protection(&job, record.as_ref(), reuse_sources).is_some() {
                    continue;
                }
                jobs.remove(&id.to_be_bytes())?;
                by_spec.remove(name_key(&job.spec, &id.to_be_bytes()))?;
                active.remove(name_key(&job.spec, &id.to_be_bytes()))?;
                if installed.remove(&id.to_be_bytes())?.is_some() {
                    inst += 1;
                }
                let built_key = name_key(&job.spec, job.digest.as_bytes());
                if built
                    .get(&built_key)?
                    .is_some_and(|v| v.as_ref() == id.to_be_bytes())
                {
                    built.remove(built_key)?;
                    blt += 1;
                }
                pruned += 1;
            }
            Ok((pruned, inst, blt))
        })?;
        Ok(counts)
    }

    /// Delete the log lines of every job that has no record; returns how many lines.
    fn sweep_orphan_logs(&self) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        let mut from: JobId = 0;
        loop {
            let Some(first) = self.logs.range(log_key(from, 0)..).keys().next() else {
                break;
            };
            let first = first?;
            let Some(job) = first
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                // A malformed key: remove it so the sweep can go on.
                self.logs.remove(&first)?;
                continue;
            };
            if self.jobs.get(job.to_be_bytes())?.is_none() {
                removed += self.delete_log_batched(job)?;
            }
            match job.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(removed)
    }

    /// Delete one job's log in sled batches of [`LOG_BATCH`] keys; returns how many lines.
    fn delete_log_batched(&self, job: JobId) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        loop {
            let chunks: Vec<(sled::IVec, sled::IVec)> = self
                .logs
                .scan_prefix(job.to_be_bytes())
                .take(LOG_BATCH)
                .collect::<Result<_, _>>()?;
            if chunks.is_empty() {
                return Ok(removed);
            }
            let mut batch = sled::Batch::default();
            for (k, v) in chunks {
                // A chunk without a header still goes; it counts as no lines.
                removed += super::logs::chunk_len(&v).unwrap_or(0);
                batch.remove(k);
            }
            self.logs.apply_batch(batch)?;
        }
    }

    /// Delete installed-package records of jobs that have no record.
    fn sweep_orphan_installed(&self) -> Result<u64, StoreError> {
        let mut orphans = Vec::new();
        for key in self.installed.iter().keys() {
            let key = key?;
            if self.jobs.get(&key)?.is_none() {
                orphans.push(key);
            }
        }
        let n = orphans.len() as u64;
        for key in orphans {
            self.installed.remove(key)?;
        }
        Ok(n)
    }
}

/// Bytes the files under `path` take on disk (allocated blocks, so holes punched or files
/// truncated by sled count as freed).
pub fn disk_usage(path: &std::path::Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(path)? {
            total += disk_usage(&entry?.path())?;
        }
        Ok(total)
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(meta.blocks() * 512)
        }
        #[cfg(not(unix))]
        Ok(meta.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CommitMeta;
    use crate::model::{InstalledPackages, JobStatus};
    use crate::reconcile::{self, NewJob, Observation, ObservedFile, ObservedStep, Plan, Settings};
    use crate::store::LogLine;

    const DAY: i64 = 86_400;

    fn job(id: JobId, status: JobStatus, finished_at: Option<Timestamp>) -> Job {
        Job {
            id,
            spec: "a".into(),
            revision: id,
            commit: "c".into(),
            digest: format!("d{id}"),
            plan: JobPlan::Build,
            status,
            image: None,
            image_digest: None,
            created_at: 0,
            updated_at: finished_at.unwrap_or(0),
            started_at: None,
            finished_at,
            error: None,
            reused_from: None,
            attempts: 1,
            pushed: Vec::new(),
            dockerfile: String::new(),
        }
    }

    fn record(latest_job: JobId, latest_image_job: Option<JobId>) -> SpecRecord {
        SpecRecord {
            name: "a".into(),
            path: "a.yaml".into(),
            revision: 1,
            content_key: "k".into(),
            valid: true,
            deleted: false,
            latest_job: Some(latest_job),
            latest_status: Some(JobStatus::Succeeded),
            latest_image: None,
            latest_image_job,
            updated_at: 0,
        }
    }

    #[test]
    fn a_running_or_queued_job_is_never_pruned() {
        let policy = GcPolicy::new(Some(1), Some(1));
        let now = 100 * DAY;
        let rec = record(99, None);
        let none = HashSet::new();
        for status in [JobStatus::Running, JobStatus::Queued] {
            let j = job(5, status, None);
            assert_eq!(
                decide(&j, 50, Some(&rec), &none, &policy, now),
                Err(Protection::Active)
            );
        }
        // The same job finished long ago is pruned.
        let j = job(5, JobStatus::Failed, Some(0));
        assert_eq!(decide(&j, 50, Some(&rec), &none, &policy, now), Ok(true));
    }

    #[test]
    fn the_latest_job_and_the_latest_image_job_are_kept() {
        let policy = GcPolicy::new(Some(1), Some(1));
        let now = 100 * DAY;
        let none = HashSet::new();
        let old = |id| job(id, JobStatus::Succeeded, Some(0));
        let rec = record(9, Some(3));
        assert_eq!(
            decide(&old(9), 0, Some(&rec), &none, &policy, now),
            Err(Protection::LatestJob)
        );
        assert_eq!(
            decide(&old(3), 6, Some(&rec), &none, &policy, now),
            Err(Protection::LatestImage)
        );
        let sources = HashSet::from([4]);
        assert_eq!(
            decide(&old(4), 5, Some(&rec), &sources, &policy, now),
            Err(Protection::ReuseSource)
        );
        assert_eq!(
            decide(&old(4), 5, Some(&rec), &none, &policy, now),
            Ok(true)
        );
    }

    #[test]
    fn both_limits_combine_as_either_one() {
        let policy = GcPolicy::new(Some(30), Some(10));
        let now = 100 * DAY;
        let rec = record(99, None);
        let none = HashSet::new();
        let recent = job(5, JobStatus::Succeeded, Some(now - DAY));
        let old = job(6, JobStatus::Succeeded, Some(now - 31 * DAY));
        // Within the count and recent: kept.
        assert_eq!(
            decide(&recent, 9, Some(&rec), &none, &policy, now),
            Ok(false)
        );
        // Within the count but too old: pruned.
        assert_eq!(decide(&old, 1, Some(&rec), &none, &policy, now), Ok(true));
        // Recent but over the count: pruned.
        assert_eq!(
            decide(&recent, 10, Some(&rec), &none, &policy, now),
            Ok(true)
        );
        // Exactly at the age limit is not older than it.
        let edge = job(7, JobStatus::Failed, Some(now - 30 * DAY));
        assert_eq!(decide(&edge, 1, Some(&rec), &none, &policy, now), Ok(false));
        // No limits: nothing is ever selected.
        let off = GcPolicy::default();
        assert!(!off.is_active());
        assert_eq!(decide(&old, 500, Some(&rec), &none, &off, now), Ok(false));
    }

    fn commit(n: u64) -> CommitMeta {
        CommitMeta {
            sha: format!("{n:040x}"),
            author: "A <a@x>".into(),
            committed_at: 1_700_000_000,
            subject: format!("c{n}"),
        }
    }

    /// `n` failed jobs of spec `a`, then one queued job from a real reconcile (the spec's
    /// latest), each with a 20-line log. Returns (the reconciled job, the extra job ids in creation order).
    async fn store_with_jobs(store: &Store, n: usize) -> (JobId, Vec<JobId>) {
        let mut extra = Plan::default();
        for i in 0..n {
            extra.jobs.push(NewJob {
                spec: "a".into(),
                revision: i as u64 + 1,
                commit: commit(1).sha,
                digest: format!("sha256:{i}"),
                plan: JobPlan::Build,
                dockerfile: "FROM x\n".into(),
                cancelled: None,
            });
        }
        let ids = store.apply(&extra, &commit(1).sha).await.unwrap();
        for &id in &ids {
            let mut j = store.job(id).unwrap().unwrap();
            j.status = JobStatus::Failed;
            j.finished_at = Some(1);
            store.update_job(&j).await.unwrap();
        }
        let step = ObservedStep {
            commit: commit(2),
            specs: vec![Observation {
                name: "a".into(),
                files: vec![ObservedFile {
                    path: "a.yaml".into(),
                    bytes: b"name: a\nbaseImage: debian:bookworm\n".to_vec(),
                    unreadable: None,
                }],
            }],
        };
        let plan = reconcile::reconcile(store, &[step], &Settings::default()).unwrap();
        let latest = store.apply(&plan, &commit(2).sha).await.unwrap()[0];
        for id in ids.iter().copied().chain([latest]) {
            let lines: Vec<LogLine> = (0..20)
                .map(|l| LogLine {
                    at_ms: l,
                    text: format!("job {id} line {l}"),
                })
                .collect();
            store.append_log(id, &lines).await.unwrap();
        }
        (latest, ids)
    }

    #[tokio::test]
    async fn a_pass_prunes_records_logs_and_indexes_and_keeps_the_protected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (latest, ids) = store_with_jobs(&store, 30).await;
        // An old job produced the image users pull: it must survive.
        let mut image_job = store.job(ids[2]).unwrap().unwrap();
        image_job.status = JobStatus::Succeeded;
        image_job.image = Some("reg/a:r3-0000000".into());
        store.update_job(&image_job).await.unwrap();
        store
            .set_installed(ids[2], &InstalledPackages::default())
            .await
            .unwrap();
        let mut built = store.job(ids[3]).unwrap().unwrap();
        built.status = JobStatus::Succeeded;
        built.image = Some("reg/a:r4".into());
        store.update_job(&built).await.unwrap();
        let record = store.spec("a").unwrap().unwrap();
        assert_eq!(record.latest_image_job, Some(ids[3]));
        store
            .set_installed(ids[3], &InstalledPackages::default())
            .await
            .unwrap();
        // ids[3] is now the image job; ids[2] (an older image, its `built` entry still
        // pointing at it) is plain history.
        let policy = GcPolicy {
            max_jobs_per_spec: Some(5),
            batch: 7,
            ..GcPolicy::default()
        };
        let s = store.clone();
        let report = tokio::task::spawn_blocking(move || s.gc(&policy, 0))
            .await
            .unwrap()
            .unwrap();
        // 31 jobs, 5 newest kept, the latest image job kept beyond the limit.
        assert_eq!(report.jobs_pruned, 31 - 5 - 1, "{report:?}");
        assert_eq!(report.jobs_protected, 1);
        assert_eq!(report.log_lines_pruned, 25 * 20);
        assert_eq!(report.installed_pruned, 1);
        assert_eq!(
            report.built_entries_pruned, 1,
            "ids[2]'s image is forgotten"
        );
        let kept: Vec<JobId> = store
            .jobs_of_spec("a", 0, 100)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        let mut expected: Vec<JobId> = vec![latest];
        expected.extend(ids.iter().rev().take(4));
        expected.push(ids[3]);
        assert_eq!(kept, expected);
        assert!(store.job(ids[2]).unwrap().is_none());
        assert_eq!(store.log_len(ids[2]).unwrap(), 0);
        assert!(store.installed(ids[2]).unwrap().is_none());
        // Kept jobs are intact, logs and all.
        assert_eq!(store.log_len(ids[3]).unwrap(), 20);
        assert_eq!(
            store.log_lines(latest, 19, 1).unwrap()[0].1.text,
            format!("job {latest} line 19")
        );
        assert!(store.installed(ids[3]).unwrap().is_some());
        assert_eq!(store.active_jobs().unwrap()[0].id, latest);
        // A second pass finds nothing more.
        let s = store.clone();
        let again = tokio::task::spawn_blocking(move || s.gc(&policy_of(5), 0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.jobs_pruned, 0);
        assert_eq!(again.log_lines_pruned, 0);
    }

    fn policy_of(max: usize) -> GcPolicy {
        GcPolicy {
            max_jobs_per_spec: Some(max),
            ..GcPolicy::default()
        }
    }

    #[tokio::test]
    async fn the_built_index_forgets_pruned_images_and_orphan_logs_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, ids) = store_with_jobs(&store, 4).await;
        // ids[0] built an image; a newer one (ids[1]) is the latest image.
        for &id in &ids[..2] {
            let mut j = store.job(id).unwrap().unwrap();
            j.status = JobStatus::Succeeded;
            j.image = Some(format!("reg/a:{id}"));
            store.update_job(&j).await.unwrap();
        }
        assert_eq!(store.view_built("a", "sha256:0").unwrap(), Some(ids[0]));
        // Log lines of a job that has no record (a crashed pass, a late writer).
        store
            .append_log(
                9_999,
                &[LogLine {
                    at_ms: 0,
                    text: "stray".into(),
                }],
            )
            .await
            .unwrap();
        let s = store.clone();
        let report = tokio::task::spawn_blocking(move || s.gc(&policy_of(1), 0))
            .await
            .unwrap()
            .unwrap();
        // ids[0], ids[2], ids[3] pruned (ids[1] is the latest image, the reconciled job is
        // the latest job).
        assert_eq!(report.jobs_pruned, 3, "{report:?}");
        assert_eq!(report.built_entries_pruned, 1);
        assert_eq!(report.log_lines_pruned, 3 * 20 + 1);
        assert_eq!(store.view_built("a", "sha256:0").unwrap(), None);
        assert_eq!(store.view_built("a", "sha256:1").unwrap(), Some(ids[1]));
        assert_eq!(store.log_len(9_999).unwrap(), 0);
    }

    #[tokio::test]
    async fn an_inactive_policy_prunes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, ids) = store_with_jobs(&store, 10).await;
        let s = store.clone();
        let report = tokio::task::spawn_blocking(move || s.gc(&GcPolicy::default(), i64::MAX))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report, GcReport::default());
        assert_eq!(store.job_count_of_spec("a"), ids.len() + 1);
    }
}
