//! The build worker each job's latest attempt was placed on, in a tree of its own
//! (`job_workers`, job id → worker name).
//!
//! Why not a field of `Job`: the job record's layout is part of the store's schema, and the
//! worker is only known once the pool has placed an attempt (a queued job has none). Kept
//! apart, the API and the dashboard join it in; an attempt that moves to another worker (its
//! first worker was lost) overwrites it. A pruned job's entry stays (a few bytes) like its
//! pushed digest.

use super::{Store, StoreError};
use crate::model::JobId;

const TREE: &str = "job_workers";

impl Store {
    fn job_workers_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// The worker `job`'s latest attempt ran on (`None`: never placed).
    pub fn job_worker(&self, job: JobId) -> Result<Option<String>, StoreError> {
        Ok(self
            .job_workers_tree()?
            .get(job.to_be_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records that `job`'s current attempt runs on `worker`.
    pub fn put_job_worker(&self, job: JobId, worker: &str) -> Result<(), StoreError> {
        self.job_workers_tree()?
            .insert(job.to_be_bytes(), worker.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_attempts_worker_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.job_worker(7).unwrap(), None);
        store.put_job_worker(7, "w1").unwrap();
        store.put_job_worker(7, "w2").unwrap();
        assert_eq!(store.job_worker(7).unwrap().as_deref(), Some("w2"));
        assert_eq!(store.job_worker(8).unwrap(), None);
    }
}
