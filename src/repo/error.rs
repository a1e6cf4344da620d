//! Errors of the git layer.
//!
//! Every variant names what it was working on (the repository location, the branch, the
//! commit) so that a message in the log or the dashboard is actionable on its own. Messages
//! from libgit2 are kept as redacted text rather than as a `git2::Error` source: libgit2 puts
//! URLs into some of its messages, and a URL may carry credentials.

use super::location::redact;
use std::fmt;
use std::path::PathBuf;

/// What went wrong in the git layer.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The configured specs folder is not a plain relative path inside the repository.
    #[error("invalid specs folder {specs_dir:?}: {reason}")]
    InvalidSpecsDir {
        /// The folder as configured.
        specs_dir: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The branch name cannot be a git branch (`refs/heads/<branch>` is not a valid ref).
    #[error("invalid branch name {branch:?}")]
    InvalidBranch {
        /// The branch as configured.
        branch: String,
    },

    /// A local repository could not be opened (missing, not a repository, not readable, or
    /// owned by another user — libgit2 enforces git's `safe.directory` rule).
    #[error("cannot open git repository at {location}: {message}")]
    Open {
        /// The (redacted) location.
        location: String,
        /// What libgit2 said.
        message: String,
    },

    /// The bare mirror of a remote repository could not be created or opened.
    #[error("cannot prepare the mirror of {url} in {path}: {message}")]
    Mirror {
        /// The remote URL, credentials redacted.
        url: String,
        /// The mirror directory (`<data_dir>/mirror.git`).
        path: PathBuf,
        /// What failed.
        message: String,
    },

    /// Fetching from the remote failed.
    #[error("fetching {url} failed ({reason}): {message}")]
    Fetch {
        /// The remote URL, credentials redacted.
        url: String,
        /// The kind of failure, for metrics and for deciding whether to retry.
        reason: FetchFailure,
        /// What libgit2 said, credentials redacted.
        message: String,
    },

    /// A commit asked for does not exist in the repository (or is not a commit).
    #[error("commit {commit} not found in {location}: {message}")]
    CommitNotFound {
        /// The (redacted) location.
        location: String,
        /// Full hex id.
        commit: String,
        /// What libgit2 said.
        message: String,
    },

    /// Any other git failure; `action` says what Kiln was doing.
    #[error("git error in {location} while {action}: {message}")]
    Git {
        /// The (redacted) location.
        location: String,
        /// What was being done, e.g. "reading branch main" or "diffing 1a2b3c4".
        action: String,
        /// What libgit2 said, credentials redacted.
        message: String,
    },
}

/// Why a fetch failed, coarsely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchFailure {
    /// The host could not be resolved or reached, or the connection broke.
    Unreachable,
    /// Credentials were missing or rejected.
    Auth,
    /// The TLS certificate or the SSH host key could not be verified (for SSH: is the host
    /// in `~/.ssh/known_hosts`?).
    Certificate,
    /// The server answered but has no such repository.
    NotFound,
    /// Anything else (protocol errors, a corrupt pack, a full disk …).
    Other,
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FetchFailure::Unreachable => "remote unreachable",
            FetchFailure::Auth => "authentication failed",
            FetchFailure::Certificate => "certificate or host key not trusted",
            FetchFailure::NotFound => "repository not found",
            FetchFailure::Other => "error",
        })
    }
}

impl FetchFailure {
    /// Classifies a libgit2 fetch error.
    pub(crate) fn classify(err: &git2::Error) -> FetchFailure {
        use git2::{ErrorClass, ErrorCode};
        let msg = err.message().to_ascii_lowercase();
        if err.code() == ErrorCode::Auth
            || msg.contains("authentication")
            || msg.contains("credentials")
            || msg.contains("status code: 401")
            || msg.contains("status code: 403")
        {
            return FetchFailure::Auth;
        }
        if err.code() == ErrorCode::Certificate
            || msg.contains("certificate")
            || msg.contains("hostkey")
            || msg.contains("host key")
        {
            return FetchFailure::Certificate;
        }
        if msg.contains("status code: 404")
            || msg.contains("could not find repository")
            || msg.contains("repository not found")
            || msg.contains("does not appear to be a git repository")
        {
            return FetchFailure::NotFound;
        }
        if matches!(
            err.class(),
            ErrorClass::Net | ErrorClass::Os | ErrorClass::Ssh
        ) || msg.contains("failed to resolve")
            || msg.contains("failed to connect")
            || msg.contains("connection")
            || msg.contains("timed out")
        {
            return FetchFailure::Unreachable;
        }
        FetchFailure::Other
    }
}

/// The redacted text of a libgit2 error.
pub(crate) fn git_message(err: &git2::Error) -> String {
    redact(err.message())
}
