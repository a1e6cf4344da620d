//! One look at the repository: fetch, walk new commits, reconcile, store.
//!
//! This is the I/O shell around [`crate::reconcile`]: it gathers what git says (on a blocking
//! thread, since git2 is synchronous and its `Repository` is not `Sync`), turns each step into
//! observations of spec *names*, hands them to the pure reconcile function and applies the
//! plan to the store in one transaction together with the processed head. Running it twice on
//! the same head does nothing.
//!
//! Nothing here blocks an async worker thread: git runs on a blocking thread, and so does
//! reconcile (YAML parsing, validation, Dockerfile rendering: CPU work that takes seconds
//! for a 10,000-spec import); the store applies the plan on one of its own.

use crate::config::Config;
use crate::model::CommitMeta;
use crate::reconcile::{self, Observation, ObservedFile, ObservedStep, Settings, name_of_path};
use crate::repo::{FileChange, Oid, Repo, RepoError, RepoLocation, StepKind};
use crate::spec::SpecContext;
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SyncError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: git worker stopped: {0}")]
    Worker(String),
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub head: Option<String>,
    pub steps: usize,
    pub revisions: usize,
    pub jobs: Vec<u64>,
    pub cancelled: usize,
}

/// The repository and the store, and how to read one into the other.
pub struct Syncer {
    repo: Arc<Mutex<Repo>>,
    store: Store,
    branch: String,
    specs_dir: String,
    settings: Settings,
}

impl Syncer {
    pub fn new(config: &Config, store: Store) -> Result<Syncer, SyncError> {
        let location = RepoLocation::parse(&config.repo);
        let repo = Repo::open(&location, &config.data_dir)?;
        let spec_context = SpecContext {
            pull_secrets: Some(config.pull_secrets.keys().cloned().collect()),
        };
        Ok(Syncer {
            repo: Arc::new(Mutex::new(repo)),
            store,
            branch: config.branch.clone(),
            specs_dir: config.specs_dir.clone(),
            settings: Settings {
                spec_context,
                source_url: config.source_url.clone(),
            },
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Fetch (remote repositories), reconcile every new commit, record the outcome for
    /// `/healthz`. A failure keeps the last state and is reported, never half-applied.
    pub async fn sync_once(&self) -> Result<SyncOutcome, SyncError> {
        let started = crate::model::now();
        let result = self.pass().await;
        let mut status = self.store.sync_status().unwrap_or_default();
        status.last_attempt = Some(started);
        match &result {
            Ok(_) => {
                status.last_success = Some(started);
                status.error = None;
            }
            Err(e) => status.error = Some(e.to_string()),
        }
        if let Err(e) = self.store.set_sync_status(&status).await {
            tracing::warn!(error = %e, "could not record sync status");
        }
        result
    }

    async fn pass(&self) -> Result<SyncOutcome, SyncError> {
        let repo = Arc::clone(&self.repo);
        let store = self.store.clone();
        let (branch, specs_dir) = (self.branch.clone(), self.specs_dir.clone());
        let observed = tokio::task::spawn_blocking(
            move || -> Result<Option<(String, Vec<ObservedStep>)>, SyncError> {
                let repo = repo
                    .lock()
                    .map_err(|_| SyncError::Worker("git worker panicked earlier".into()))?;
                repo.fetch()?;
                let Some(head) = repo.branch_head(&branch)? else {
                    tracing::info!(branch = %branch, "branch does not exist yet; nothing to do");
                    return Ok(None);
                };
                let last = store.last_commit()?.and_then(|s| Oid::from_str(&s).ok());
                if last == Some(head) {
                    return Ok(Some((head.to_string(), Vec::new())));
                }
                let steps = repo.steps(last, head, &specs_dir)?;
                let observed = observe(&repo, &store, &steps)?;
                Ok(Some((head.to_string(), observed)))
            },
        )
        .await
        .map_err(|e| SyncError::Worker(e.to_string()))??;

        let Some((head, steps)) = observed else {
            return Ok(SyncOutcome::default());
        };
        if steps.is_empty() && self.store.last_commit()?.as_deref() == Some(head.as_str()) {
            return Ok(SyncOutcome {
                head: Some(head),
                ..SyncOutcome::default()
            });
        }
        let (store, settings) = (self.store.clone(), self.settings.clone());
        let step_count = steps.len();
        let plan =
            tokio::task::spawn_blocking(move || reconcile::reconcile(&store, &steps, &settings))
                .await
                .map_err(|e| SyncError::Worker(e.to_string()))??;
        let jobs = self.store.apply(&plan, &head).await?;
        let outcome = SyncOutcome {
            head: Some(head),
            steps: step_count,
            revisions: plan.revisions.len(),
            jobs,
            cancelled: plan.cancellations.len(),
        };
        if outcome.steps > 0 {
            tracing::info!(head = ?outcome.head, steps = outcome.steps, revisions = outcome.revisions, jobs = outcome.jobs.len(), cancelled = outcome.cancelled, "synced");
        }
        Ok(outcome)
    }
}

/// Turn git steps into observations of names: for every name a step touches, all files that
/// claim it after the step (siblings unchanged in this step are read at the step's commit).
/// Public for benchmarks that time this phase on its own.
pub fn observe(
    repo: &Repo,
    store: &Store,
    steps: &[crate::repo::Step],
) -> Result<Vec<ObservedStep>, SyncError> {
    let mut paths: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        if step.kind == StepKind::Rewrite {
            tracing::warn!(commit = %step.commit.sha, "history was rewritten; applying the net difference as one step");
        }
        let mut touched: BTreeMap<String, BTreeMap<String, Option<Vec<u8>>>> = BTreeMap::new();
        for change in &step.changes {
            let Some(name) = name_of_path(change.path()) else {
                continue;
            };
            let bytes = match change {
                FileChange::Upserted { bytes, .. } => Some(bytes.clone()),
                FileChange::Deleted { .. } => None,
            };
            touched
                .entry(name.to_string())
                .or_default()
                .insert(change.path().to_string(), bytes);
        }
        if step.snapshot {
            // The step lists what exists now, not what was deleted: every other known spec is gone.
            for record in store.specs() {
                let record = record?;
                if !record.deleted {
                    touched.entry(record.name).or_default();
                }
            }
            for (name, set) in &paths {
                if !set.is_empty() {
                    touched.entry(name.clone()).or_default();
                }
            }
        }
        let commit_id = Oid::from_str(&step.commit.sha).ok();
        let mut specs = Vec::with_capacity(touched.len());
        for (name, changes) in touched {
            let known = match paths.get_mut(&name) {
                Some(set) => set,
                None => paths
                    .entry(name.clone())
                    .or_insert(store.paths_of(&name)?.into_iter().collect()),
            };
            if step.snapshot {
                known.retain(|path| changes.contains_key(path));
            }
            for (path, bytes) in &changes {
                match bytes {
                    Some(_) => known.insert(path.clone()),
                    None => known.remove(path),
                };
            }
            let mut files = Vec::with_capacity(known.len());
            for path in known.iter() {
                let bytes = match changes.get(path) {
                    Some(Some(bytes)) => Some(bytes.clone()),
                    _ => match commit_id {
                        Some(id) => repo.file_at(id, path)?,
                        None => None,
                    },
                };
                if let Some(bytes) = bytes {
                    files.push(ObservedFile {
                        path: path.clone(),
                        bytes,
                    });
                }
            }
            specs.push(Observation { name, files });
        }
        let c = &step.commit;
        out.push(ObservedStep {
            commit: CommitMeta {
                sha: c.sha.clone(),
                author: c.author.clone(),
                committed_at: c.committed_at,
                subject: c.subject.clone(),
            },
            specs,
        });
    }
    Ok(out)
}
