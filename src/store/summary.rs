//! What `/healthz` and `/api/v1/status` read, kept in memory: the last processed commit and
//! the last sync outcome, and whether a sled write is running.
//!
//! Why: sled 0.34 runs transactions and batches under a process-wide write lock (its
//! concurrency control) that every read — even a one-key `get` — waits for. Reading these two
//! values from sled made `/healthz` take 83–822 ms while a 10,000-spec import or a big log
//! write ran. This Kiln is the store's only writer, so memory is authoritative once loaded at
//! open: [`Store::apply`](super::Store::apply) and
//! [`Store::set_sync_status`](super::Store::set_sync_status) update it beside the record.
//!
//! The writing counter lets in-memory views (the dashboard's spec index) answer from their
//! previous value while a write holds the lock, instead of queueing behind it.

use super::SyncStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub(super) struct Summary {
    state: RwLock<State>,
    writing: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct State {
    last_commit: Option<String>,
    sync: SyncStatus,
}

/// A running write, counted until dropped.
#[derive(Debug)]
pub struct WriteMark(Arc<AtomicUsize>);

impl Drop for WriteMark {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Summary {
    pub(super) fn new(last_commit: Option<String>, sync: SyncStatus) -> Summary {
        Summary {
            state: RwLock::new(State { last_commit, sync }),
            writing: Arc::default(),
        }
    }

    // A poisoned lock only means a writer panicked between two plain assignments: the value
    // is still whole, so it is used as it is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn last_commit(&self) -> Option<String> {
        self.read().last_commit.clone()
    }

    pub(super) fn set_last_commit(&self, commit: String) {
        self.write().last_commit = Some(commit);
    }

    pub(super) fn sync(&self) -> SyncStatus {
        self.read().sync.clone()
    }

    pub(super) fn set_sync(&self, status: SyncStatus) {
        self.write().sync = status;
    }

    pub(super) fn writing(&self) -> bool {
        self.writing.load(Ordering::SeqCst) > 0
    }

    pub(super) fn mark_writing(&self) -> WriteMark {
        self.writing.fetch_add(1, Ordering::SeqCst);
        WriteMark(Arc::clone(&self.writing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_count_until_dropped() {
        let summary = Summary::default();
        assert!(!summary.writing());
        let a = summary.mark_writing();
        let b = summary.mark_writing();
        drop(a);
        assert!(summary.writing());
        drop(b);
        assert!(!summary.writing());
    }

    #[test]
    fn values_are_read_back() {
        let summary = Summary::new(Some("c1".into()), SyncStatus::default());
        summary.set_last_commit("c2".into());
        summary.set_sync(SyncStatus {
            error: Some("e".into()),
            ..SyncStatus::default()
        });
        assert_eq!(summary.last_commit().as_deref(), Some("c2"));
        assert_eq!(summary.sync().error.as_deref(), Some("e"));
    }
}
