//! The bare mirror of a remote repository: creating it, and fetching into it.
//!
//! The mirror lives at `<data_dir>/mirror.git`. Its `origin` remote is recorded with the URL
//! *stripped of credentials* and the refspec `+refs/heads/*:refs/heads/*`, so a human can
//! inspect it with plain git and no secret is ever written to disk. Fetches use an in-memory
//! (anonymous) remote with the configured URL and the same refspec, forced and pruned: the
//! mirror's branches are exactly the remote's branches after every fetch, including
//! force-pushes and deletions. Tags are not fetched; Kiln follows a branch.

use super::error::{FetchFailure, RepoError, git_message};
use super::location::{redact, strip_credentials};
use git2::{
    AutotagOption, Cred, CredentialType, FetchOptions, FetchPrune, ProxyOptions, RemoteCallbacks,
    Repository, RepositoryInitOptions,
};
use std::path::{Path, PathBuf};

/// The refspec that makes the mirror's branches follow the remote's branches.
pub(crate) const MIRROR_REFSPEC: &str = "+refs/heads/*:refs/heads/*";

/// Name of the mirror directory inside the data directory.
pub(crate) const MIRROR_DIR: &str = "mirror.git";

/// How many times libgit2 may ask for credentials in one fetch before Kiln gives up. libgit2
/// asks again after every rejection; without a limit a rejected credential loops forever.
const MAX_CREDENTIAL_ATTEMPTS: usize = 6;

/// Opens the mirror of `url` under `data_dir`, creating it on first use.
pub(crate) fn open_mirror(url: &str, data_dir: &Path) -> Result<Repository, RepoError> {
    let path = data_dir.join(MIRROR_DIR);
    let fail = |message: String| RepoError::Mirror {
        url: redact(url),
        path: path.clone(),
        message,
    };
    let is_empty_dir = |p: &Path| {
        std::fs::read_dir(p)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false)
    };
    let repo = if !path.exists() || is_empty_dir(&path) {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", data_dir.display())))?;
        let mut opts = RepositoryInitOptions::new();
        opts.bare(true).mkpath(true);
        let repo = Repository::init_opts(&path, &opts).map_err(|e| fail(git_message(&e)))?;
        tracing::info!(mirror = %path.display(), url = %redact(url), "created bare mirror");
        repo
    } else {
        Repository::open_bare(&path).map_err(|e| {
            fail(format!(
                "{} (the directory exists but is not a bare git repository; remove it to \
                 start a fresh mirror)",
                git_message(&e)
            ))
        })?
    };
    ensure_origin(&repo, url).map_err(|e| fail(git_message(&e)))?;
    Ok(repo)
}

/// Makes the mirror's `origin` point at `url` (credentials stripped) with the mirror refspec.
fn ensure_origin(repo: &Repository, url: &str) -> Result<(), git2::Error> {
    let stored_url = strip_credentials(url);
    match repo.find_remote("origin") {
        Ok(remote) => {
            if remote.url_bytes() != stored_url.as_bytes() {
                tracing::warn!(
                    old = %redact(&String::from_utf8_lossy(remote.url_bytes())),
                    new = %redact(url),
                    "the mirror's origin URL changed; the next fetch replaces all branches"
                );
                repo.remote_set_url("origin", &stored_url)?;
            }
            let refspecs = remote.fetch_refspecs()?;
            if !refspecs
                .iter()
                .any(|r| matches!(r, Ok(Some(s)) if s == MIRROR_REFSPEC))
            {
                repo.remote_add_fetch("origin", MIRROR_REFSPEC)?;
            }
            Ok(())
        }
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            repo.remote_with_fetch("origin", &stored_url, MIRROR_REFSPEC)?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Fetches every branch of `url` into `repo`, forced and pruned.
pub(crate) fn fetch_mirror(repo: &Repository, url: &str, mirror: &Path) -> Result<(), RepoError> {
    let fail = |err: git2::Error| RepoError::Fetch {
        url: redact(url),
        reason: FetchFailure::classify(&err),
        message: git_message(&err),
    };
    let mut remote = repo.remote_anonymous(url).map_err(fail)?;
    let mut proxy = ProxyOptions::new();
    proxy.auto();
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(credential_callbacks())
        .proxy_options(proxy)
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    let started = std::time::Instant::now();
    remote
        .fetch(&[MIRROR_REFSPEC], Some(&mut opts), None)
        .map_err(fail)?;
    let stats = remote.stats();
    tracing::debug!(
        url = %redact(url),
        mirror = %mirror.display(),
        received_objects = stats.received_objects(),
        received_bytes = stats.received_bytes(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fetched"
    );
    Ok(())
}

/// Credentials, tried in order as libgit2 asks for them:
///
/// * user name: the one in the URL, else `git`;
/// * SSH: the ssh-agent, then `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` (without passphrase);
/// * user/password (HTTPS): credentials in the URL are used by libgit2 itself; otherwise git's
///   configured credential helpers (`credential.helper`);
/// * Negotiate/NTLM: the platform default.
///
/// Nothing here logs or returns a secret. After [`MAX_CREDENTIAL_ATTEMPTS`] the fetch fails
/// with an authentication error instead of looping.
fn credential_callbacks() -> RemoteCallbacks<'static> {
    let mut attempts = 0usize;
    let mut ssh_candidates: Option<Vec<SshCandidate>> = None;
    let mut helper_tried = false;
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(move |url, username_from_url, allowed| {
        attempts += 1;
        if attempts > MAX_CREDENTIAL_ATTEMPTS {
            return Err(git2::Error::new(
                git2::ErrorCode::Auth,
                git2::ErrorClass::Net,
                "authentication failed: every available credential was rejected",
            ));
        }
        let user = username_from_url.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            let candidates = ssh_candidates.get_or_insert_with(ssh_key_candidates);
            while let Some(candidate) = candidates.pop() {
                let cred = match &candidate {
                    SshCandidate::Agent => Cred::ssh_key_from_agent(user),
                    SshCandidate::Key(path) => Cred::ssh_key(user, None, path, None),
                };
                if let Ok(cred) = cred {
                    return Ok(cred);
                }
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) && !helper_tried {
            helper_tried = true;
            if let Ok(config) = git2::Config::open_default()
                && let Ok(cred) = Cred::credential_helper(&config, url, username_from_url)
            {
                return Ok(cred);
            }
        }
        if allowed.contains(CredentialType::DEFAULT) {
            return Cred::default();
        }
        Err(git2::Error::new(
            git2::ErrorCode::Auth,
            git2::ErrorClass::Net,
            "authentication required but no usable credentials: put them in the URL, an \
             ssh-agent, ~/.ssh/id_ed25519|id_ecdsa|id_rsa, or a git credential helper",
        ))
    });
    callbacks
}

enum SshCandidate {
    Agent,
    Key(PathBuf),
}

/// SSH credentials to try, in reverse order (the list is popped from the end).
fn ssh_key_candidates() -> Vec<SshCandidate> {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        let ssh = PathBuf::from(home).join(".ssh");
        for name in ["id_rsa", "id_ecdsa", "id_ed25519"] {
            let key = ssh.join(name);
            if key.is_file() {
                candidates.push(SshCandidate::Key(key));
            }
        }
    }
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        candidates.push(SshCandidate::Agent);
    }
    candidates
}
