//! The git layer: a repository becomes an ordered list of [`Step`]s carrying the bytes of the
//! spec files each step changed.
//!
//! This module knows nothing about specs, YAML, the store or Docker. Its whole contract is
//! "which `*.yaml` / `*.yml` files under the specs folder changed at which commit, and what do
//! they hold now". Deciding whether a change *means* anything (a comment-only edit, an invalid
//! file) is the caller's job.
//!
//! # Why first-parent history
//!
//! Kiln follows one branch. On that branch, a merged pull request is one event: the merge
//! commit. Walking first-parent history ([`git2::Revwalk::simplify_first_parent`]) and diffing
//! every commit against its *first* parent turns a merge into one step holding everything the
//! pull request changed, and the work-in-progress commits of the feature branch (which never
//! were the state of the branch) produce no revisions. Revision numbers are therefore a pure
//! function of the branch's first-parent history.
//!
//! # Why the diff is narrowed to the specs folder
//!
//! The specs folder may be a small part of a large repository, or hold 10,000 specs. Each step
//! compares only the specs folder's subtree of the two commits, skips identical subtrees by id
//! and reads only the changed blobs, so the cost of a step follows the size of the change,
//! not the size of the repository. Listing whole trees per commit would make the first import
//! of a long history quadratic. (See the `diff` submodule for why this is done by hand rather than with
//! libgit2's `diff_tree_to_tree`.)
//!
//! # Why no rename detection
//!
//! A spec's name is its identity (the file stem must equal `name`), and names are immutable:
//! a renamed file is the deletion of one spec and the creation of another. Rename detection
//! (`find_similar`) would pair the two paths into one delta and hide exactly that, so it is
//! never used; a rename appears as [`FileChange::Deleted`] plus [`FileChange::Upserted`].
//!
//! # Steps, and the last processed commit
//!
//! [`Repo::steps`] returns only the commits that changed at least one spec file. A successful
//! return means every commit up to and including `to` was examined, so the caller records
//! `to` (which it passed in) as the last processed commit once it has applied the steps, even
//! when the list is empty. [`Repo::commit_info`] describes `to` if the caller wants more than
//! its id.
//!
//! When history was rewritten (`from` is not on `to`'s first-parent history, or is gone), the
//! intermediate commits cannot be replayed onto what the caller knows; a single
//! [`StepKind::Rewrite`] step carries the net difference instead. When `from` is gone there is
//! nothing to diff against: the step lists every spec file at `to` and is marked
//! [`Step::snapshot`], so the caller can delete what it knows and the listing lacks.
//!
//! # Threads
//!
//! Everything here is plain blocking code. [`Repo`] owns a [`git2::Repository`], which is
//! `Send` but not `Sync`: move the `Repo` into `tokio::task::spawn_blocking` (and back), or keep
//! it on one dedicated thread.

mod diff;
mod error;
mod location;
mod remote;

#[cfg(test)]
mod tests;

pub use error::{FetchFailure, RepoError};
pub use git2::Oid;
pub use location::{RepoLocation, redact};

use diff::{SpecsDir, TreeDiffer};
use error::git_message;
use git2::{Commit, ErrorCode, Repository, Sort, Tree};
use std::path::{Path, PathBuf};

/// Blobs up to this size (1 MiB) are read whole.
pub const MAX_FULL_READ: usize = 1024 * 1024;

/// Of a blob larger than [`MAX_FULL_READ`], only this many bytes (64 KiB + 1) are returned.
///
/// That is one byte more than the spec size limit (`spec::MAX_SPEC_BYTES`, 64 KiB), so a
/// truncated file is still refused for its size by validation, while a huge file committed by
/// mistake cannot make Kiln hold megabytes per step. Files between 64 KiB + 1 and 1 MiB are
/// returned whole (validation refuses them the same way).
pub const TRUNCATED_LEN: usize = 64 * 1024 + 1;

/// An opened repository: a local one read in place, or the bare mirror of a remote one.
pub struct Repo {
    repo: Repository,
    location: RepoLocation,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("location", &self.location.to_string())
            .field("git_dir", &self.repo.path())
            .finish()
    }
}

/// Who made a commit and what it says, as recorded with each revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full hex id (40 characters for SHA-1 repositories).
    pub sha: String,
    /// The author, `Name <email>`.
    pub author: String,
    /// Committer time, unix seconds (when the commit was made, not when it was authored).
    pub committed_at: i64,
    /// The first non-blank line of the message, trimmed.
    pub subject: String,
}

/// How a [`Step`] came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// One commit of the branch's first-parent history, diffed against its first parent.
    Commit,
    /// The net difference from the last processed commit's tree (or from an empty tree, if
    /// that commit no longer exists) to the new head's tree, because the intermediate history
    /// cannot be replayed: the branch was force-pushed or rewritten, or the last processed
    /// commit is reachable only through a second parent (a merge pushed with the previous tip
    /// as its second parent), or it was garbage-collected.
    Rewrite,
}

/// One step of history: the spec files that changed at one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Whether this is an ordinary commit or the net diff of rewritten history.
    pub kind: StepKind,
    /// The commit the state after this step belongs to (for a rewrite: the new head).
    pub commit: CommitInfo,
    /// The changed spec files, in git path order; at most one change per path. Empty only for
    /// a [`StepKind::Rewrite`] whose net difference touches no spec.
    pub changes: Vec<FileChange>,
    /// `true` only for a [`StepKind::Rewrite`] whose base commit no longer exists, so it was
    /// diffed against the empty tree: `changes` then lists every spec file at `commit` (all
    /// [`FileChange::Upserted`]) and holds no deletions, because what the base held is
    /// unknown. The caller must treat every spec it knows that is not listed as deleted.
    pub snapshot: bool,
}

/// A change to one spec file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// The file was added or its content changed (including comment-only edits, and a file
    /// that replaced a symlink or a submodule of the same name).
    Upserted {
        /// Repository-relative path with forward slashes, e.g. `specs/vision.yaml`.
        path: String,
        /// The file's bytes, capped at [`TRUNCATED_LEN`] for blobs over [`MAX_FULL_READ`].
        bytes: Vec<u8>,
    },
    /// The file was deleted (or replaced by a folder), or a spec-named symlink or submodule
    /// was removed.
    Deleted {
        /// Repository-relative path with forward slashes.
        path: String,
    },
    /// A spec-named entry that is not a regular file was added or changed (or replaced a
    /// file): a symlink or a submodule. Kiln never follows or reads it; the caller reports it
    /// rather than letting the spec vanish without a word.
    NotAFile {
        /// Repository-relative path with forward slashes.
        path: String,
        /// What is there instead of a file.
        what: NotAFile,
    },
}

impl FileChange {
    /// The repository-relative path this change is about.
    pub fn path(&self) -> &str {
        match self {
            FileChange::Upserted { path, .. }
            | FileChange::Deleted { path }
            | FileChange::NotAFile { path, .. } => path,
        }
    }
}

/// What a spec-named tree entry is when it is not a regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAFile {
    /// A symbolic link (mode 120000); `target` is what it points to, as stored in git.
    Symlink { target: String },
    /// A submodule (mode 160000) pinned at `commit`.
    Submodule { commit: String },
    /// Any other mode git does not normally write.
    Other { mode: i32 },
}

impl std::fmt::Display for NotAFile {
    /// `a symbolic link to `one.yaml``, `a git submodule (at commit 1a2b3c4)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAFile::Symlink { target } => write!(f, "a symbolic link to `{target}`"),
            NotAFile::Submodule { commit } => {
                write!(
                    f,
                    "a git submodule (at commit {})",
                    &commit[..commit.len().min(7)]
                )
            }
            NotAFile::Other { mode } => write!(f, "a tree entry of mode {mode:o}"),
        }
    }
}

/// What is at one path at one commit ([`Repo::entry_at`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file, its bytes capped like [`FileChange::Upserted`]'s.
    File(Vec<u8>),
    /// A symlink or a submodule.
    NotAFile(NotAFile),
}

/// A spec file as it is at one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecFile {
    /// Repository-relative path with forward slashes.
    pub path: String,
    /// The file's bytes, capped like [`FileChange::Upserted`]'s.
    pub bytes: Vec<u8>,
}

impl Repo {
    /// Opens the repository at `location`.
    ///
    /// * [`RepoLocation::Local`]: opened in place; the path may be a work tree, a work tree's
    ///   `.git` directory or a bare repository. Parent directories are not searched. `data_dir`
    ///   is not used.
    /// * [`RepoLocation::Remote`]: a bare mirror at `data_dir/mirror.git`, created on first use
    ///   (with `data_dir`) and opened afterwards. Creating it does not fetch: call
    ///   [`Repo::fetch`]. If the configured URL changed since the mirror was created, the
    ///   mirror is re-pointed and the next fetch replaces its branches.
    pub fn open(location: &RepoLocation, data_dir: &Path) -> Result<Repo, RepoError> {
        // libgit2 re-hashes every object it reads by default (SHA-1 with collision detection):
        // that was most of the time of a step in a 10,000-spec folder, whose tree object is
        // ~400 KB. Objects are verified when they enter the repository (fetch indexes and
        // checks packs); reading them back from local disk trusts the disk, as git itself does.
        static HASH_ON_READ: std::sync::Once = std::sync::Once::new();
        HASH_ON_READ.call_once(|| git2::opts::strict_hash_verification(false));
        let repo = match location {
            RepoLocation::Local(path) => Repository::open(path).map_err(|e| RepoError::Open {
                location: location.to_string(),
                message: git_message(&e),
            })?,
            RepoLocation::Remote(url) => remote::open_mirror(url, data_dir)?,
        };
        Ok(Repo {
            repo,
            location: location.clone(),
        })
    }

    /// The location this repository was opened from.
    pub fn location(&self) -> &RepoLocation {
        &self.location
    }

    /// The git directory: `.git` of a work tree, the bare repository itself, or the mirror.
    /// This is what a file watcher should watch (`HEAD`, `packed-refs`, `refs/`).
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }

    /// Remote: fetches every branch (`refs/heads/*`) from the origin into the mirror, forced
    /// and pruned, so that force-pushes and deleted branches are mirrored too. Local: nothing
    /// to do (the repository is read in place).
    ///
    /// Errors say what failed ([`FetchFailure`]: unreachable, authentication, certificate,
    /// not found) and never contain credentials embedded in the URL.
    pub fn fetch(&self) -> Result<(), RepoError> {
        match &self.location {
            RepoLocation::Local(_) => Ok(()),
            RepoLocation::Remote(url) => remote::fetch_mirror(&self.repo, url, self.repo.path()),
        }
    }

    /// The commit `refs/heads/<branch>` points at, or `None` if the branch does not exist
    /// (yet): an empty repository, a branch not pushed yet, or a mirror not fetched yet.
    pub fn branch_head(&self, branch: &str) -> Result<Option<Oid>, RepoError> {
        let refname = format!("refs/heads/{branch}");
        if branch.is_empty() || !git2::Reference::is_valid_name(&refname) {
            return Err(RepoError::InvalidBranch {
                branch: branch.to_string(),
            });
        }
        let reference = match self.repo.find_reference(&refname) {
            Ok(r) => r,
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(self.git_error(format!("reading branch {branch:?}"), &e)),
        };
        let commit = reference
            .peel_to_commit()
            .map_err(|e| self.git_error(format!("resolving branch {branch:?}"), &e))?;
        Ok(Some(commit.id()))
    }

    /// Author, time and subject of a commit.
    pub fn commit_info(&self, commit: Oid) -> Result<CommitInfo, RepoError> {
        Ok(commit_info(&self.find_commit(commit)?))
    }

    /// The steps that bring a reader who has processed `from` up to `to`, oldest first.
    ///
    /// * `from`: the last processed commit (exclusive); `None` imports history from the root.
    /// * `to`: the new head (inclusive).
    /// * `specs_dir`: the specs folder relative to the repository root (`""` or `"."` for the
    ///   whole repository). Only `*.yaml` / `*.yml` entries in it or below it count; a
    ///   symlink or submodule with such a name is never read or followed but reported as
    ///   [`FileChange::NotAFile`].
    ///
    /// Normally each commit of `to`'s first-parent history after `from` that changes at least
    /// one spec file is one [`StepKind::Commit`] step, diffed against its first parent (the
    /// root commit against the empty tree). Commits that change no spec file produce no step:
    /// after `Ok`, `to` counts as processed whatever the list holds. `from == to` gives an
    /// empty list.
    ///
    /// If `from` is not on `to`'s first-parent history (force-push, rebase, reset, or a merge
    /// that has `from` only as a second parent) or no longer exists, the result is exactly one
    /// [`StepKind::Rewrite`] step holding the net diff from `from`'s tree to `to`'s tree; it
    /// is returned even when that diff is empty, so the caller can log the rewrite. If `from`
    /// is gone, the diff is taken against an empty tree and the step is a
    /// [`Step::snapshot`]: specs the caller knows that it does not list are deleted.
    pub fn steps(
        &self,
        from: Option<Oid>,
        to: Oid,
        specs_dir: &str,
    ) -> Result<Vec<Step>, RepoError> {
        let dir = self.specs_dir(specs_dir)?;
        let to_commit = self.find_commit(to)?;
        let Some(from) = from else {
            return self.first_parent_steps(None, &to_commit, &dir);
        };
        if from == to {
            return Ok(Vec::new());
        }
        let from_commit = match self.repo.find_commit(from) {
            Ok(commit) => commit,
            Err(e) if e.code() == ErrorCode::NotFound => {
                tracing::warn!(
                    repo = %self.location,
                    from = %from,
                    to = %to,
                    "last processed commit no longer exists; diffing against an empty tree"
                );
                return Ok(vec![self.rewrite_step(None, &to_commit, &dir)?]);
            }
            Err(e) => return Err(self.git_error(format!("reading commit {from}"), &e)),
        };
        let descends = self.repo.graph_descendant_of(to, from).map_err(|e| {
            self.git_error(format!("checking whether {to} descends from {from}"), &e)
        })?;
        if !descends {
            tracing::warn!(
                repo = %self.location,
                from = %from,
                to = %to,
                "history was rewritten (last processed commit is not an ancestor of the head); \
                 diffing the two trees as one step"
            );
            return Ok(vec![self.rewrite_step(
                Some(&from_commit),
                &to_commit,
                &dir,
            )?]);
        }
        self.first_parent_steps(Some(&from_commit), &to_commit, &dir)
    }

    /// Every spec file in `commit`'s tree under `specs_dir`, in git path order: the full
    /// rescan used to check an import and for benchmarks. Same rules as [`Repo::steps`]
    /// (extensions, large blobs capped), regular files only: symlinks and submodules are not
    /// files ([`Repo::steps`] reports them as [`FileChange::NotAFile`]). A specs folder that
    /// does not exist at that commit yields an empty list.
    pub fn spec_files_at(&self, commit: Oid, specs_dir: &str) -> Result<Vec<SpecFile>, RepoError> {
        let dir = self.specs_dir(specs_dir)?;
        let commit = self.find_commit(commit)?;
        let tree = self.specs_tree(&commit, &dir)?;
        let changes = self
            .differ()?
            .diff(&dir, None, tree.as_ref())
            .map_err(|e| self.git_error(format!("listing spec files at {}", commit.id()), &e))?;
        Ok(changes
            .into_iter()
            .filter_map(|change| match change {
                FileChange::Upserted { path, bytes } => Some(SpecFile { path, bytes }),
                FileChange::Deleted { .. } | FileChange::NotAFile { .. } => None,
            })
            .collect())
    }

    /// The bytes of one file at `commit`: `path` is repository-relative with forward slashes
    /// (as in [`FileChange`]). `None` when nothing is there, or when it is not a regular file
    /// (a folder, a symlink, a submodule). Capped like [`FileChange::Upserted`]'s bytes. Used to
    /// read a file that a step did not change, e.g. another file claiming the same spec name.
    pub fn file_at(&self, commit: Oid, path: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let commit = self.find_commit(commit)?;
        let read = || -> Result<Option<Vec<u8>>, git2::Error> {
            let tree = commit.tree()?;
            let entry = match tree.get_path(Path::new(path)) {
                Ok(entry) => entry,
                Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if !diff::is_regular_file(&entry) {
                return Ok(None);
            }
            TreeDiffer::new(&self.repo)?.read_blob(entry.id()).map(Some)
        };
        read().map_err(|e| self.git_error(format!("reading {path:?} at {}", commit.id()), &e))
    }

    /// What is at `path` at `commit`: a regular file's bytes, or what the entry is when it is a
    /// symlink or a submodule. `None` when nothing is there or it is a folder. Used to read a
    /// file that a step did not change, e.g. another file claiming the same spec name, without
    /// losing a sibling that is a symlink.
    pub fn entry_at(&self, commit: Oid, path: &str) -> Result<Option<Entry>, RepoError> {
        let commit = self.find_commit(commit)?;
        let read = || -> Result<Option<Entry>, git2::Error> {
            let tree = commit.tree()?;
            let entry = match tree.get_path(Path::new(path)) {
                Ok(entry) => entry,
                Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let differ = TreeDiffer::new(&self.repo)?;
            if diff::is_regular_file(&entry) {
                differ.read_blob(entry.id()).map(|b| Some(Entry::File(b)))
            } else if diff::is_tree(&entry) {
                Ok(None)
            } else {
                differ.not_a_file(&entry).map(|w| Some(Entry::NotAFile(w)))
            }
        };
        read().map_err(|e| self.git_error(format!("reading {path:?} at {}", commit.id()), &e))
    }

    /// Walks `to`'s first-parent history after `from` (or from the root) and diffs each commit
    /// against its first parent. Falls back to one rewrite step when `from` is an ancestor of
    /// `to` but not on its first-parent line.
    fn first_parent_steps(
        &self,
        from: Option<&Commit<'_>>,
        to: &Commit<'_>,
        dir: &SpecsDir,
    ) -> Result<Vec<Step>, RepoError> {
        let walk_err = |e: git2::Error| {
            self.git_error(format!("walking first-parent history of {}", to.id()), &e)
        };
        let mut walk = self.repo.revwalk().map_err(walk_err)?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
            .map_err(walk_err)?;
        walk.simplify_first_parent().map_err(walk_err)?;
        walk.push(to.id()).map_err(walk_err)?;
        if let Some(from) = from {
            walk.hide(from.id()).map_err(walk_err)?;
        }
        let oids = walk.collect::<Result<Vec<Oid>, _>>().map_err(walk_err)?;

        let differ = self.differ()?;
        let mut steps = Vec::new();
        // The previous commit of the walk and its specs subtree. The walk yields each commit's
        // first parent right before it, so this is the parent, and its tree is carried over
        // instead of being read again (libgit2 does not cache trees over 4 KiB, and a folder
        // of 10,000 specs is a ~400 KB tree object).
        let mut previous: Option<(Oid, Option<Tree<'_>>)> = None;
        for (index, oid) in oids.iter().enumerate() {
            let commit = self.find_commit(*oid)?;
            let first_parent = commit.parent_ids().next();
            if index == 0
                && let Some(from) = from
            {
                if first_parent != Some(from.id()) {
                    tracing::warn!(
                        repo = %self.location,
                        from = %from.id(),
                        to = %to.id(),
                        "last processed commit is not on the first-parent history of the head \
                         (e.g. a merge pushed with it as second parent); diffing the two trees \
                         as one step"
                    );
                    return Ok(vec![self.rewrite_step(Some(from), to, dir)?]);
                }
                previous = Some((from.id(), self.specs_tree(from, dir)?));
            }
            let old = match (first_parent, previous.take()) {
                (None, _) => None,
                (Some(id), Some((prev, tree))) if prev == id => tree,
                (Some(id), _) => self.specs_tree(&self.find_commit(id)?, dir)?,
            };
            let new = self.specs_tree(&commit, dir)?;
            let changes = differ
                .diff(dir, old.as_ref(), new.as_ref())
                .map_err(|e| self.git_error(format!("diffing commit {oid}"), &e))?;
            if !changes.is_empty() {
                steps.push(Step {
                    kind: StepKind::Commit,
                    commit: commit_info(&commit),
                    changes,
                    snapshot: false,
                });
            }
            previous = Some((*oid, new));
        }
        Ok(steps)
    }

    /// One step from `from`'s tree (or the empty tree) to `to`'s tree.
    fn rewrite_step(
        &self,
        from: Option<&Commit<'_>>,
        to: &Commit<'_>,
        dir: &SpecsDir,
    ) -> Result<Step, RepoError> {
        let old = match from {
            Some(from) => self.specs_tree(from, dir)?,
            None => None,
        };
        let new = self.specs_tree(to, dir)?;
        let changes = self
            .differ()?
            .diff(dir, old.as_ref(), new.as_ref())
            .map_err(|e| {
                self.git_error(format!("diffing rewritten history up to {}", to.id()), &e)
            })?;
        Ok(Step {
            kind: StepKind::Rewrite,
            commit: commit_info(to),
            changes,
            snapshot: from.is_none(),
        })
    }

    /// The specs folder's subtree at `commit`, `None` when it does not exist there.
    fn specs_tree<'r>(
        &'r self,
        commit: &Commit<'r>,
        dir: &SpecsDir,
    ) -> Result<Option<Tree<'r>>, RepoError> {
        let read =
            || -> Result<Option<Tree<'r>>, git2::Error> { dir.subtree(&self.repo, commit.tree()?) };
        read().map_err(|e| self.git_error(format!("reading the tree of {}", commit.id()), &e))
    }

    fn specs_dir(&self, specs_dir: &str) -> Result<SpecsDir, RepoError> {
        SpecsDir::parse(specs_dir).map_err(|reason| RepoError::InvalidSpecsDir {
            specs_dir: specs_dir.to_string(),
            reason,
        })
    }

    fn differ(&self) -> Result<TreeDiffer<'_>, RepoError> {
        TreeDiffer::new(&self.repo)
            .map_err(|e| self.git_error("opening the object database".to_string(), &e))
    }

    fn find_commit(&self, id: Oid) -> Result<Commit<'_>, RepoError> {
        self.repo.find_commit(id).map_err(|e| {
            if e.code() == ErrorCode::NotFound {
                RepoError::CommitNotFound {
                    location: self.location.to_string(),
                    commit: id.to_string(),
                    message: git_message(&e),
                }
            } else {
                self.git_error(format!("reading commit {id}"), &e)
            }
        })
    }

    fn git_error(&self, action: String, err: &git2::Error) -> RepoError {
        RepoError::Git {
            location: self.location.to_string(),
            action,
            message: git_message(err),
        }
    }
}

/// [`CommitInfo`] of a commit; non-UTF-8 names and messages are decoded lossily.
fn commit_info(commit: &Commit<'_>) -> CommitInfo {
    let author = commit.author();
    let message = String::from_utf8_lossy(commit.message_bytes());
    CommitInfo {
        sha: commit.id().to_string(),
        author: format!(
            "{} <{}>",
            String::from_utf8_lossy(author.name_bytes()),
            String::from_utf8_lossy(author.email_bytes())
        ),
        committed_at: commit.time().seconds(),
        subject: message
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or_default()
            .to_string(),
    }
}

/// Where [`Repo::open`] keeps the bare mirror of a remote repository inside `data_dir`.
pub fn mirror_path(data_dir: &Path) -> PathBuf {
    data_dir.join(remote::MIRROR_DIR)
}
