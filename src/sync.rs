//! One look at the repository: fetch, walk new commits, reconcile, store.
//!
//! This is the I/O shell around [`crate::reconcile`]: it gathers what git says (on a blocking
//! thread, since git2 is synchronous and its `Repository` is not `Sync`), turns each step into
//! observations of spec *names*, hands them to the pure reconcile function and applies the
//! plan to the store in one transaction together with the processed head. Running it twice on
//! the same head does nothing.
//!
//! Base updates the base check found (`base/`) join the next pass: they are added to the
//! plan after reconcile and applied in the same transaction (a commit of the same spec wins).
//!
//! Nothing here blocks an async worker thread: git runs on a blocking thread, and so does
//! reconcile (YAML parsing, validation, Dockerfile rendering: CPU work that takes seconds
//! for a 10,000-spec import); the store applies the plan on one of its own.

use crate::config::Config;
use crate::model::CommitMeta;
use crate::reconcile::{self, Observation, ObservedFile, ObservedStep, Settings, name_of_path};
use crate::repo::{Entry, FileChange, Oid, Repo, RepoError, RepoLocation, StepKind};
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
    /// Base updates the base check found, waiting for this pass (see `base/`).
    base: Arc<crate::base::BaseMonitor>,
}

impl Syncer {
    pub fn new(config: &Config, store: Store) -> Result<Syncer, SyncError> {
        let location = RepoLocation::parse(&config.repo);
        let repo = Repo::open(&location, &config.data_dir)?;
        let spec_context = SpecContext {
            pull_secrets: Some(config.pull_secrets.keys().cloned().collect()),
            sources: Some(config.sources.clone()),
        };
        Ok(Syncer {
            repo: Arc::new(Mutex::new(repo)),
            store,
            branch: config.branch.clone(),
            specs_dir: config.specs_dir.clone(),
            settings: Settings {
                spec_context,
                source_url: config.source_url.clone(),
                ca_bundle: config.ca_bundle.is_some(),
            },
            base: crate::base::BaseMonitor::new(config.base_check_interval.as_secs()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The base check's state, shared with this pass (its inbox of base updates).
    pub fn base_monitor(&self) -> Arc<crate::base::BaseMonitor> {
        Arc::clone(&self.base)
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
        let updates = self.base.pending();
        if steps.is_empty()
            && updates.is_empty()
            && self.store.last_commit()?.as_deref() == Some(head.as_str())
        {
            return Ok(SyncOutcome {
                head: Some(head),
                ..SyncOutcome::default()
            });
        }
        let (store, settings) = (self.store.clone(), self.settings.clone());
        let step_count = steps.len();
        let taken = updates.clone();
        let plan = tokio::task::spawn_blocking(move || {
            let mut plan = reconcile::reconcile(&store, &steps, &settings)?;
            // Base updates on the same path: one transaction, commits win (see base/revision.rs).
            crate::base::revision::add(&store, &mut plan, &updates, &settings)?;
            Ok::<_, StoreError>(plan)
        })
        .await
        .map_err(|e| SyncError::Worker(e.to_string()))??;
        let jobs = self.store.apply(&plan, &head).await?;
        self.store.put_listings(&plan.listings)?;
        self.base.consume(&taken);
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
/// A spec-named symlink or submodule claims its name too, as a file Kiln will not read: it
/// becomes an invalid revision with an `unreadable-file` error, shown like any other.
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
        let mut touched: BTreeMap<String, BTreeMap<String, Option<Entry>>> = BTreeMap::new();
        for change in &step.changes {
            let Some(name) = name_of_path(change.path()) else {
                continue;
            };
            let bytes = match change {
                FileChange::Upserted { bytes, .. } => Some(Entry::File(bytes.clone())),
                FileChange::NotAFile { what, .. } => Some(Entry::NotAFile(what.clone())),
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
                let entry = match changes.get(path) {
                    Some(Some(entry)) => Some(entry.clone()),
                    _ => match commit_id {
                        Some(id) => repo.entry_at(id, path)?,
                        None => None,
                    },
                };
                match entry {
                    Some(Entry::File(bytes)) => files.push(ObservedFile {
                        path: path.clone(),
                        bytes,
                        unreadable: None,
                    }),
                    Some(Entry::NotAFile(what)) => files.push(ObservedFile {
                        path: path.clone(),
                        bytes: Vec::new(),
                        unreadable: Some(format!(
                            "is {what}; Kiln reads only regular files and never follows links \
                             or submodules, so this is never built: commit the file itself"
                        )),
                    }),
                    None => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Rule;
    use std::path::Path;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    fn head(repo: &Repo) -> Oid {
        repo.branch_head("main").unwrap().unwrap()
    }

    /// One pass of the sync path without a Docker Engine: git steps → observations →
    /// reconcile → store, as [`Syncer::sync_once`] does it.
    async fn pass(repo: &Repo, store: &Store, from: Option<Oid>) -> Oid {
        let to = head(repo);
        let steps = repo.steps(from, to, "specs").unwrap();
        let observed = observe(repo, store, &steps).unwrap();
        let plan = reconcile::reconcile(store, &observed, &Settings::default()).unwrap();
        store.apply(&plan, &to.to_string()).await.unwrap();
        to
    }

    #[tokio::test]
    async fn a_symlinked_spec_is_an_invalid_revision_not_a_silence() {
        let work = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let dir = work.path();
        git(dir, &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(dir.join("specs")).unwrap();
        std::fs::write(
            dir.join("specs/one.yaml"),
            "name: one\nbaseImage: debian:bookworm\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("one.yaml", dir.join("specs/two.yaml")).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "one and a link"]);

        let repo = Repo::open(&RepoLocation::Local(dir.to_path_buf()), data.path()).unwrap();
        let store = Store::open(&data.path().join("store")).unwrap();
        let c1 = pass(&repo, &store, None).await;

        let two = store
            .spec("two")
            .unwrap()
            .expect("the symlink is a spec record");
        assert!(!two.valid && !two.deleted);
        let revision = store.revision("two", 1).unwrap().unwrap();
        assert_eq!(revision.errors.len(), 1, "{:?}", revision.errors);
        let error = &revision.errors[0];
        assert_eq!(
            (error.rule, error.path.as_str()),
            (Rule::UnreadableFile, "specs/two.yaml")
        );
        assert!(
            error.message.contains("symbolic link to `one.yaml`"),
            "{}",
            error.message
        );
        assert!(store.spec("one").unwrap().unwrap().valid);

        // A second file claiming `two` is read beside the unchanged link: both are reported.
        std::fs::create_dir_all(dir.join("specs/team")).unwrap();
        std::fs::write(
            dir.join("specs/team/two.yaml"),
            "name: two\nbaseImage: debian:bookworm\n",
        )
        .unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "a real two beside the link"]);
        let c2 = pass(&repo, &store, Some(c1)).await;
        let revision = store.revision("two", 2).unwrap().unwrap();
        let rules: Vec<(Rule, &str)> = revision
            .errors
            .iter()
            .map(|d| (d.rule, d.path.as_str()))
            .collect();
        assert!(
            rules.contains(&(Rule::UnreadableFile, "specs/two.yaml")),
            "{rules:?}"
        );

        // The link replaced by nothing: `two` is the file in team/ alone, and valid.
        std::fs::remove_file(dir.join("specs/two.yaml")).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "link gone"]);
        pass(&repo, &store, Some(c2)).await;
        let two = store.spec("two").unwrap().unwrap();
        assert!(two.valid, "{two:?}");
        assert_eq!(two.path, "specs/team/two.yaml");
    }
}
