//! What the base check knows in memory: the outcome of its last pass (for `/api/v1/status`
//! and `/metrics`) and the base updates waiting for the sync pass (the inbox).
//!
//! Kept in memory, not in sled: the status describes this process's loop, and the inbox is
//! re-filled by the next check after a restart (the check compares recorded digests, so a
//! lost update is found again).

use super::revision::BaseUpdate;
use crate::model::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The outcome of the last base check pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BaseCheckStatus {
    /// `base_check_interval` in seconds (0: checks are off).
    pub interval_secs: u64,
    pub last_attempt: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    /// Why the last pass failed (for some or all bases); `None` after a clean pass.
    pub error: Option<String>,
    /// When the next pass runs (after a failure: the backoff, at least `Retry-After`).
    pub next_check: Option<Timestamp>,
    /// Registry requests the last pass made.
    pub requests: usize,
    /// Specs whose base the last pass compared.
    pub checked: usize,
    /// Base-update revisions the last pass asked for.
    pub updates: usize,
    /// Specs shown "base outdated" after the last pass.
    pub outdated: usize,
    /// Spec → when its latest image's base digest was recorded (for the age metric).
    #[serde(skip)]
    pub recorded: BTreeMap<String, Timestamp>,
}

/// Shared between the check loop, the sync pass and the web side.
#[derive(Debug, Default)]
pub struct BaseMonitor {
    status: Mutex<BaseCheckStatus>,
    inbox: Mutex<Vec<BaseUpdate>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data: keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BaseMonitor {
    pub fn new(interval_secs: u64) -> Arc<BaseMonitor> {
        let monitor = BaseMonitor::default();
        lock(&monitor.status).interval_secs = interval_secs;
        Arc::new(monitor)
    }

    pub fn status(&self) -> BaseCheckStatus {
        lock(&self.status).clone()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut BaseCheckStatus)) {
        f(&mut lock(&self.status));
    }

    /// Queue updates for the next sync pass; a newer update of a spec replaces an older one.
    pub fn offer(&self, updates: Vec<BaseUpdate>) {
        let mut inbox = lock(&self.inbox);
        for update in updates {
            inbox.retain(|u| u.revision.spec != update.revision.spec);
            inbox.push(update);
        }
    }

    /// The waiting updates (left in place until [`BaseMonitor::consume`]).
    pub fn pending(&self) -> Vec<BaseUpdate> {
        lock(&self.inbox).clone()
    }

    /// Remove the updates a sync pass applied (or dropped), unless a newer one replaced them.
    pub fn consume(&self, taken: &[BaseUpdate]) {
        lock(&self.inbox).retain(|u| !taken.contains(u));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CommitMeta, Revision};

    fn update(spec: &str, to: &str) -> BaseUpdate {
        BaseUpdate {
            revision: Revision {
                spec: spec.into(),
                number: 1,
                commit: CommitMeta {
                    sha: "a".repeat(40),
                    author: String::new(),
                    committed_at: 0,
                    subject: String::new(),
                },
                path: format!("specs/{spec}.yaml"),
                digest: None,
                errors: vec![],
                yaml: String::new(),
            },
            from: "sha256:0".into(),
            to: to.into(),
        }
    }

    #[test]
    fn the_inbox_keeps_the_newest_update_per_spec_until_consumed() {
        let m = BaseMonitor::new(60);
        m.offer(vec![update("a", "sha256:1"), update("b", "sha256:1")]);
        let taken = m.pending();
        m.offer(vec![update("a", "sha256:2")]);
        m.consume(&taken);
        assert_eq!(m.pending(), vec![update("a", "sha256:2")]);
        assert_eq!(m.status().interval_secs, 60);
    }
}
