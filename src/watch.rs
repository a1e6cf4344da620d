//! Change sources → one stream of "look again" triggers, and the loop that looks.
//!
//! Every source ends in the same place: `Notify::notify_one` on the sync trigger. A
//! [`tokio::sync::Notify`] holds at most one pending permit, so any number of triggers that
//! arrive while a pass runs (or while one is already pending) become exactly one more pass.
//!
//! * [`RefWatcher`]: a local repository (a bare repository on the git server, or a work tree)
//!   is watched with `notify` (inotify on Linux). Only the git directory is watched —
//!   non-recursively for `HEAD` and `packed-refs`, `refs/heads/` recursively (`refs/` itself
//!   flat: tags, remotes and a mirror's thousands of `refs/pull/*` folders cost no watches) —
//!   never the work tree, so an uncommitted edit (or `git add`, which writes `index`)
//!   triggers nothing.
//!   Events are hints: the sync pass re-reads the branch with git2, so a spurious trigger costs
//!   one cheap look and a missed detail cannot corrupt anything. `*.lock` files are ignored
//!   (git writes `refs/heads/main.lock` and renames it over `refs/heads/main`, so the rename
//!   is the moment the new value is readable). Single files are never watched (an atomic
//!   rename replaces the inode a file watch would hold); the directories holding them are.
//!   On an overflow (`Flag::Rescan`) or a watcher error, a full look is triggered.
//! * Webhooks (`web::hooks`) and `kiln notify` trigger from the network.
//! * [`sync_loop`] also looks every `poll_interval` — the safety net for filesystems where
//!   file events are unreliable (NFS, SMB/CIFS, some container bind mounts, FUSE) and the
//!   only source for a remote repository without webhooks. A failing pass (unreachable host,
//!   rejected credentials) keeps the last state and is retried with exponential backoff from
//!   one second up to `poll_interval`, reset by the first success.
//!
//! # Debounce
//!
//! The watcher debounces on the leading edge *and* the trailing edge with a 50 ms window: the
//! first relevant event triggers at once (a commit is seen in about a millisecond), further
//! events within the window are folded into one trigger at its end, so a `git gc` that
//! rewrites `packed-refs` and deletes a hundred loose refs costs two passes, and the final
//! state is always looked at. (`notify-debouncer-mini` is trailing-edge only — every commit
//! would wait the whole window — and drops the `Rescan` flag.)

use crate::backoff::Backoff;
use crate::repo::{Repo, RepoError, RepoLocation};
use crate::sync::{SyncError, SyncOutcome, Syncer};
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Events closer together than this are folded into one trigger (after the first).
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The first retry after a failed pass; doubled per failure up to the poll interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum WatchError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("cannot watch {path}: {message}")]
    Watch { path: PathBuf, message: String },
}

/// Watches a local repository's refs; dropping it stops watching.
pub struct RefWatcher {
    _watcher: RecommendedWatcher,
    git_dir: PathBuf,
}

impl std::fmt::Debug for RefWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefWatcher")
            .field("git_dir", &self.git_dir)
            .finish()
    }
}

/// Which paths mean "the followed branch may have moved".
#[derive(Clone, Debug)]
struct RefPaths {
    /// `<git dir>/HEAD`.
    head: PathBuf,
    /// `<common dir>/packed-refs`.
    packed_refs: PathBuf,
    /// `<common dir>/refs`.
    refs: PathBuf,
    /// `heads/<branch>` split into components, e.g. `["heads", "feature", "x"]`.
    branch_components: Vec<String>,
}

impl RefPaths {
    fn new(git_dir: &Path, common_dir: &Path, branch: &str) -> RefPaths {
        let mut branch_components = vec!["heads".to_string()];
        branch_components.extend(branch.split('/').map(str::to_string));
        RefPaths {
            head: git_dir.join("HEAD"),
            packed_refs: common_dir.join("packed-refs"),
            refs: common_dir.join("refs"),
            branch_components,
        }
    }

    /// Whether an event on `path` may mean the branch moved.
    fn is_relevant(&self, path: &Path) -> bool {
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".lock"))
        {
            return false;
        }
        if path == self.head || path == self.packed_refs {
            return true;
        }
        let Ok(rest) = path.strip_prefix(&self.refs) else {
            return false;
        };
        let parts: Vec<&str> = rest
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        // The branch's ref file itself, or a folder on the way to it (`refs/`, `refs/heads`,
        // `refs/heads/feature` for `feature/x`): a folder created or removed may carry the
        // ref with it before a watch on it exists.
        parts.len() <= self.branch_components.len()
            && parts
                .iter()
                .zip(&self.branch_components)
                .all(|(a, b)| *a == b.as_str())
    }
}

/// Whether an event kind can change what a file holds (opening or reading cannot; the sync
/// pass itself reads these files, and must not trigger itself).
fn kind_may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

impl RefWatcher {
    /// Starts watching if `location` is a local repository; `Ok(None)` for a remote one
    /// (which is fetched, not watched).
    pub fn for_location(
        location: &RepoLocation,
        branch: &str,
        trigger: Arc<Notify>,
    ) -> Result<Option<RefWatcher>, WatchError> {
        match location {
            RepoLocation::Remote(_) => Ok(None),
            RepoLocation::Local(_) => {
                // `data_dir` is not used for a local repository.
                let repo = Repo::open(location, Path::new("."))?;
                Self::start(repo.git_dir(), branch, trigger).map(Some)
            }
        }
    }

    /// Watches the git directory `git_dir` for moves of `refs/heads/<branch>`.
    pub fn start(
        git_dir: &Path,
        branch: &str,
        trigger: Arc<Notify>,
    ) -> Result<RefWatcher, WatchError> {
        let fail = |path: &Path, e: &dyn std::fmt::Display| WatchError::Watch {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let git_dir = git_dir.canonicalize().map_err(|e| fail(git_dir, &e))?;
        let common_dir = common_dir(&git_dir);
        let paths = RefPaths::new(&git_dir, &common_dir, branch);

        let (tx, rx) = mpsc::channel::<notify::Result<Event>>();
        let mut watcher = notify::recommended_watcher(tx).map_err(|e| fail(&git_dir, &e))?;
        watcher
            .watch(&git_dir, RecursiveMode::NonRecursive)
            .map_err(|e| fail(&git_dir, &e))?;
        if common_dir != git_dir {
            watcher
                .watch(&common_dir, RecursiveMode::NonRecursive)
                .map_err(|e| fail(&common_dir, &e))?;
        }
        // Branches live under refs/heads: watched recursively (nested names like feature/x),
        // refs/ itself flat. Tags, remotes and `refs/pull/*` of a big mirror cost no watches.
        let heads = paths.refs.join("heads");
        if heads.is_dir() {
            for (dir, mode) in [
                (&paths.refs, RecursiveMode::NonRecursive),
                (&heads, RecursiveMode::Recursive),
            ] {
                watcher.watch(dir, mode).map_err(|e| fail(dir, &e))?;
            }
        } else {
            watcher
                .watch(&paths.refs, RecursiveMode::Recursive)
                .map_err(|e| fail(&paths.refs, &e))?;
        }

        let dir = git_dir.clone();
        std::thread::Builder::new()
            .name("kiln-watch".into())
            .spawn(move || debounce_loop(rx, paths, trigger, &dir))
            .map_err(|e| fail(&git_dir, &e))?;
        tracing::info!(git_dir = %git_dir.display(), branch, "watching the repository's refs");
        Ok(RefWatcher {
            _watcher: watcher,
            git_dir,
        })
    }

    /// The (canonical) git directory being watched.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }
}

/// A linked work tree keeps its refs in the main repository's git dir, named by `commondir`.
fn common_dir(git_dir: &Path) -> PathBuf {
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(text) => {
            let dir = git_dir.join(text.trim());
            dir.canonicalize().unwrap_or(dir)
        }
        Err(_) => git_dir.to_path_buf(),
    }
}

/// Turns raw events into triggers: at once for the first, then at most one per [`DEBOUNCE`],
/// always one after the last. Ends when the watcher (the sender) is dropped.
fn debounce_loop(
    rx: mpsc::Receiver<notify::Result<Event>>,
    paths: RefPaths,
    trigger: Arc<Notify>,
    git_dir: &Path,
) {
    let mut last_fire: Option<Instant> = None;
    let mut pending = false;
    loop {
        let received = if pending {
            let due = last_fire.map_or(Instant::now(), |t| t + DEBOUNCE);
            rx.recv_timeout(due.saturating_duration_since(Instant::now()))
        } else {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        let wanted = match received {
            Ok(Ok(event)) if event.need_rescan() => {
                tracing::warn!(git_dir = %git_dir.display(), "file events were lost; looking again");
                true
            }
            Ok(Ok(event)) => {
                kind_may_change(&event.kind) && event.paths.iter().any(|p| paths.is_relevant(p))
            }
            Ok(Err(error)) => {
                tracing::warn!(git_dir = %git_dir.display(), %error, "file watcher error; looking again");
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                pending = false;
                last_fire = Some(Instant::now());
                trigger.notify_one();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if !wanted {
            continue;
        }
        let now = Instant::now();
        if last_fire.is_none_or(|t| now.duration_since(t) >= DEBOUNCE) {
            last_fire = Some(now);
            pending = false;
            tracing::debug!("ref change seen; looking");
            trigger.notify_one();
        } else {
            pending = true;
        }
    }
}

/// Looks at the repository now, then every `poll_interval` (after a failure: with backoff),
/// and at once whenever `trigger` is notified, until `shutdown`. `on_pass` sees every result
/// (for counters).
pub async fn sync_loop(
    syncer: Arc<Syncer>,
    poll_interval: Duration,
    trigger: Arc<Notify>,
    shutdown: CancellationToken,
    mut on_pass: impl FnMut(&Result<SyncOutcome, SyncError>) + Send,
) {
    let mut backoff = Backoff::new(FIRST_RETRY, poll_interval);
    loop {
        let result = syncer.sync_once().await;
        on_pass(&result);
        let wait = match &result {
            Ok(_) => {
                let failures = backoff.succeeded();
                if failures > 0 {
                    tracing::info!(failures, "sync recovered");
                }
                poll_interval
            }
            Err(e) => {
                let wait = backoff.failed();
                tracing::error!(
                    error = %e,
                    failures = backoff.failures(),
                    retry_in_s = wait.as_secs_f64(),
                    "sync failed; keeping the last state"
                );
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(branch: &str) -> RefPaths {
        RefPaths::new(Path::new("/r/.git"), Path::new("/r/.git"), branch)
    }

    #[test]
    fn only_the_branch_head_packed_refs_and_their_folders_are_relevant() {
        let p = paths("main");
        for yes in [
            "/r/.git/HEAD",
            "/r/.git/packed-refs",
            "/r/.git/refs/heads/main",
            "/r/.git/refs/heads",
            "/r/.git/refs",
        ] {
            assert!(p.is_relevant(Path::new(yes)), "{yes}");
        }
        for no in [
            "/r/.git/refs/heads/main.lock",
            "/r/.git/packed-refs.lock",
            "/r/.git/HEAD.lock",
            "/r/.git/index",
            "/r/.git/index.lock",
            "/r/.git/ORIG_HEAD",
            "/r/.git/FETCH_HEAD",
            "/r/.git/logs/HEAD",
            "/r/.git/refs/heads/dev",
            "/r/.git/refs/heads/main2",
            "/r/.git/refs/tags/v1",
            "/r/.git/refs/remotes/origin/main",
            "/r/specs/a.yaml",
        ] {
            assert!(!p.is_relevant(Path::new(no)), "{no}");
        }
        let nested = paths("feature/x");
        assert!(nested.is_relevant(Path::new("/r/.git/refs/heads/feature/x")));
        assert!(nested.is_relevant(Path::new("/r/.git/refs/heads/feature")));
        assert!(!nested.is_relevant(Path::new("/r/.git/refs/heads/feature/y")));
        assert!(!nested.is_relevant(Path::new("/r/.git/refs/heads/feature/x/y")));
    }

    #[test]
    fn reads_do_not_count_as_changes() {
        assert!(!kind_may_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!kind_may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(kind_may_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(kind_may_change(&EventKind::Create(
            notify::event::CreateKind::File
        )));
        assert!(kind_may_change(&EventKind::Remove(
            notify::event::RemoveKind::Any
        )));
    }

    /// A real watcher on a real git dir: a ref written the way git writes it (lock + rename)
    /// triggers; the index, a lock file and reads do not.
    #[test]
    fn a_renamed_ref_triggers_and_other_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let git_dir = repo.path().to_path_buf();
        std::fs::create_dir_all(git_dir.join("refs/heads")).unwrap();
        let trigger = Arc::new(Notify::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let watcher = RefWatcher::start(&git_dir, "main", Arc::clone(&trigger)).unwrap();
        let fired = |t: &Arc<Notify>, ms: u64| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(ms), t.notified())
                    .await
                    .is_ok()
            })
        };
        // Noise: the index, a lock file, reading the HEAD.
        std::fs::write(git_dir.join("index"), b"x").unwrap();
        std::fs::write(git_dir.join("refs/heads/main.lock"), b"0000\n").unwrap();
        let _ = std::fs::read(git_dir.join("HEAD")).unwrap();
        std::fs::write(git_dir.join("refs/heads/dev"), b"0000\n").unwrap();
        assert!(!fired(&trigger, 300), "noise triggered a look");
        // The ref moves: rename of the lock over the ref.
        std::fs::rename(
            git_dir.join("refs/heads/main.lock"),
            git_dir.join("refs/heads/main"),
        )
        .unwrap();
        assert!(fired(&trigger, 5000), "a moved ref did not trigger");
        // packed-refs rewritten (git gc): one more trigger.
        std::fs::write(git_dir.join("packed-refs.lock"), b"# pack-refs\n").unwrap();
        std::fs::rename(
            git_dir.join("packed-refs.lock"),
            git_dir.join("packed-refs"),
        )
        .unwrap();
        assert!(fired(&trigger, 5000), "packed-refs did not trigger");
        drop(watcher);
    }
}
