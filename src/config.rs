//! One [`Config`] from three layers: built-in defaults < `kiln.toml` < `KILN_*` environment
//! variables and command-line flags (clap reads both; a flag beats its variable).
//!
//! The file never holds secrets: registry credentials live in a docker `config.json`
//! (`docker_config`), and `pull_secrets` only maps credential names used by specs to the
//! registry entries in that file. Webhook secrets likewise: the config holds only the *paths*
//! of secret files (`webhook_secret_file`, per provider `[webhook_secret_files]`); the secret
//! itself is read from that file, or from `KILN_WEBHOOK_SECRET`, by `web::hooks` at start-up.
//! Package sources too (`[sources.NAME]`, validated by `crate::sources::config`): their
//! tables name credential files, which are read when a build starts.

use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no repository given: pass --repo PATH|URL, set KILN_REPO, or set `repo` in kiln.toml")]
    NoRepo,
    #[error("invalid listen address `{0}`")]
    Listen(String),
    #[error("`{key}` must be at least 1 (leave it unset to keep everything)")]
    ZeroLimit { key: &'static str },
    #[error(transparent)]
    Workers(#[from] crate::pool::WorkerConfigError),
}

/// Flags shared by `kiln serve` and `kiln sync`; each also settable as `KILN_*` and in the file.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Config file (TOML). Default: ./kiln.toml when it exists.
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// The specs repository: a local path (bare repo or work tree), or a file://, https:// or ssh:// URL.
    #[arg(long, env = "KILN_REPO")]
    pub repo: Option<String>,
    /// Branch to follow [default: main].
    #[arg(long, env = "KILN_BRANCH")]
    pub branch: Option<String>,
    /// Folder of the repository holding the specs [default: .].
    #[arg(long, env = "KILN_SPECS_DIR")]
    pub specs_dir: Option<String>,
    /// Where Kiln keeps its store and mirror [default: ./.kiln].
    #[arg(long, env = "KILN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Registry to push to, e.g. 127.0.0.1:5000 (without one, images stay in the local Engine).
    #[arg(long, env = "KILN_REGISTRY")]
    pub registry: Option<String>,
    /// Observe only: record revisions and jobs, build nothing.
    #[arg(long, env = "KILN_NO_BUILD")]
    pub no_build: bool,
    /// Seconds between looks at the repository [default: 60].
    #[arg(long, env = "KILN_POLL_INTERVAL")]
    pub poll_interval: Option<u64>,
    /// Do not watch a local repository's refs with inotify & co.; poll only.
    #[arg(long, env = "KILN_NO_WATCH")]
    pub no_watch: bool,
    /// File holding the webhook secret (for every provider without its own).
    #[arg(long, env = "KILN_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// Retention flags (`kiln serve`, `kiln sync`, `kiln gc`); each also `KILN_*` and a file key.
#[derive(Args, Debug, Clone, Default)]
pub struct RetentionArgs {
    /// Prune finished jobs (record, log, packages) that ended more than N days ago [default: keep forever].
    #[arg(long, env = "KILN_LOG_RETENTION_DAYS")]
    pub log_retention_days: Option<u64>,
    /// Keep at most N jobs per spec, newest first [default: no limit].
    #[arg(long, env = "KILN_MAX_JOBS_PER_SPEC")]
    pub max_jobs_per_spec: Option<usize>,
    /// Seconds between retention passes in `kiln serve` [default: 3600].
    #[arg(long, env = "KILN_GC_INTERVAL")]
    pub gc_interval: Option<u64>,
}

/// Flags of the commands that work on a data dir without a repository (`gc`, `backup`).
#[derive(Args, Debug, Clone, Default)]
pub struct DataDirArgs {
    /// Config file (TOML). Default: ./kiln.toml when it exists.
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kiln's data dir [default: ./.kiln].
    #[arg(long, env = "KILN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// When and what retention passes prune (`store::GcPolicy` is built from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// `None`: finished jobs are kept whatever their age.
    pub log_retention_days: Option<u64>,
    /// `None`: no limit on the number of jobs per spec.
    pub max_jobs_per_spec: Option<usize>,
    /// Time between passes in `kiln serve`.
    pub gc_interval: Duration,
}

impl Retention {
    fn resolve(args: &RetentionArgs, file: &ConfigFile) -> Result<Retention, ConfigError> {
        let days = args.log_retention_days.or(file.log_retention_days);
        let max = args.max_jobs_per_spec.or(file.max_jobs_per_spec);
        if days == Some(0) {
            return Err(ConfigError::ZeroLimit {
                key: "log_retention_days",
            });
        }
        if max == Some(0) {
            return Err(ConfigError::ZeroLimit {
                key: "max_jobs_per_spec",
            });
        }
        Ok(Retention {
            log_retention_days: days,
            max_jobs_per_spec: max,
            gc_interval: Duration::from_secs(
                args.gc_interval.or(file.gc_interval).unwrap_or(3600).max(1),
            ),
        })
    }
}

/// What the data-dir commands need: the data dir, where a running Kiln listens, retention.
#[derive(Clone, Debug)]
pub struct DataDirConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    pub retention: Retention,
    /// sled's page cache in MiB (`store_cache_mb`).
    pub store_cache_mb: u64,
}

/// sled's page cache when `store_cache_mb` is not set: small enough for a 512 MiB VM (sled's
/// own default, 1 GiB, let `kiln serve` grow to ~900 MiB RSS after one read of a 200 MB log).
pub const DEFAULT_STORE_CACHE_MB: u64 = 64;

/// The file layer. Unknown keys are errors, so a typo never silently falls back to a default.
/// Its JSON Schema lists the accepted keys ([`file_keys`]).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    repo: Option<String>,
    branch: Option<String>,
    specs_dir: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    registry: Option<String>,
    no_build: Option<bool>,
    poll_interval: Option<u64>,
    docker_host: Option<String>,
    docker_tls_verify: Option<bool>,
    docker_cert_path: Option<PathBuf>,
    docker_config: Option<PathBuf>,
    #[serde(default)]
    pull_secrets: BTreeMap<String, String>,
    ca_bundle: Option<PathBuf>,
    max_parallel_builds: Option<usize>,
    /// Seconds between health probes of each build worker (default 10).
    worker_probe_interval: Option<u64>,
    build_timeout: Option<u64>,
    image_test_timeout: Option<u64>,
    max_attempts: Option<u32>,
    retry_backoff: Option<u64>,
    shutdown_grace: Option<u64>,
    source_url: Option<String>,
    commit_url: Option<String>,
    repo_web_url: Option<String>,
    watch: Option<bool>,
    webhook_secret_file: Option<PathBuf>,
    /// Seconds between base image checks (default 21600; 0 = off).
    base_check_interval: Option<u64>,
    /// Rebuild a spec when its base tag moves, unless the spec says `rebuildOnBaseUpdate`.
    rebuild_on_base_update: Option<bool>,
    #[serde(default)]
    webhook_secret_files: BTreeMap<String, PathBuf>,
    log_retention_days: Option<u64>,
    max_jobs_per_spec: Option<usize>,
    gc_interval: Option<u64>,
    /// The build workers (`[[workers]]` tables); none = the single Engine above.
    #[serde(default)]
    workers: Vec<crate::pool::worker_config::WorkerTable>,
    /// The file this layer was read from, for error messages (not a key).
    #[serde(skip)]
    path: Option<PathBuf>,
    store_cache_mb: Option<u64>,
    /// Private package sources (`[sources.NAME]` tables), see `crate::sources`.
    #[serde(default)]
    sources: BTreeMap<String, crate::sources::SourceTable>,
    /// The build's network: `default`, `host`, or a network name.
    build_network: Option<String>,
}

/// Everything a Kiln process needs to know, resolved.
#[derive(Clone, Debug)]
pub struct Config {
    pub repo: String,
    pub branch: String,
    pub specs_dir: String,
    pub data_dir: PathBuf,
    pub listen: String,
    pub registry: Option<String>,
    pub no_build: bool,
    pub poll_interval: Duration,
    /// How often each build worker is probed (`worker_probe_interval`, default 10 s).
    pub worker_probe_interval: Duration,
    /// Engine endpoint; `None` = `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
    /// Speak mutual TLS to a `tcp://` Engine; `None` = as `DOCKER_TLS_VERIFY` says.
    pub docker_tls_verify: Option<bool>,
    /// Directory with the Engine's TLS client files `ca.pem`, `cert.pem`, `key.pem`;
    /// `None` = `DOCKER_CERT_PATH`, else `~/.docker`.
    pub docker_cert_path: Option<PathBuf>,
    /// docker `config.json` with registry credentials.
    pub docker_config: Option<PathBuf>,
    /// Credential names usable as `pullSecret` → registry host in `docker_config`.
    pub pull_secrets: BTreeMap<String, String>,
    pub ca_bundle: Option<PathBuf>,
    pub max_parallel_builds: usize,
    pub build_timeout: Duration,
    /// Time limit of each of a spec's `tests:` commands.
    pub image_test_timeout: Duration,
    /// Attempts per job when the Engine or registry fails transiently.
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt.
    pub retry_backoff: Duration,
    /// How long running builds may finish after SIGTERM before they are stopped and re-queued.
    pub shutdown_grace: Duration,
    /// Repository URL written into image labels.
    pub source_url: String,
    /// Link template for commits on the dashboard, `{sha}` replaced.
    pub commit_url: Option<String>,
    /// Web view of the repository for links to spec files: a base URL (`…/blob/BRANCH/PATH`
    /// is appended) or a template with `{path}` and `{branch}`.
    pub repo_web_url: Option<String>,
    /// Watch a local repository's refs for changes (polling stays as a safety net).
    pub watch: bool,
    /// File with the webhook secret shared by every provider (`KILN_WEBHOOK_SECRET` beats it).
    pub webhook_secret_file: Option<PathBuf>,
    /// Per-provider secret files (`github`, `gitlab`, `gitea`, `generic`), beating the shared one.
    pub webhook_secret_files: BTreeMap<String, PathBuf>,
    /// Job retention (`log_retention_days`, `max_jobs_per_spec`, `gc_interval`).
    pub retention: Retention,
    /// The build workers: the `[[workers]]` tables, else one worker from the `docker_*` keys.
    pub workers: Vec<crate::pool::WorkerConfig>,
    /// sled's page cache in MiB (`store_cache_mb`, at least 1).
    pub store_cache_mb: u64,
    /// The `[sources.NAME]` tables, validated.
    pub sources: std::sync::Arc<crate::sources::Sources>,
    /// Network of the builds' RUN steps (`build_network`); `None` = the Engine's default.
    pub build_network: Option<String>,
    /// How often the base check asks registries where base tags point (zero: off).
    pub base_check_interval: Duration,
    /// Default of the specs' `rebuildOnBaseUpdate`.
    pub rebuild_on_base_update: bool,
}

impl Config {
    /// Resolve flags/env over the file over defaults. `listen` comes from `serve` only.
    pub fn resolve(args: &ConfigArgs, listen: Option<String>) -> Result<Config, ConfigError> {
        Self::merge(args, listen, load(args.config.as_deref())?)
    }

    /// The settings of the data-dir commands, which need no repository.
    pub fn resolve_data_dir(
        args: &DataDirArgs,
        retention: &RetentionArgs,
    ) -> Result<DataDirConfig, ConfigError> {
        let file = load(args.config.as_deref())?;
        let listen = file
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        Ok(DataDirConfig {
            retention: Retention::resolve(retention, &file)?,
            store_cache_mb: store_cache_mb(&file),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(".kiln")),
            listen,
        })
    }

    /// Parse a config file's text (used by tests of the documented example).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.path = Some(path.to_path_buf());
        Self::merge(&ConfigArgs::default(), None, file)
    }

    fn merge(
        args: &ConfigArgs,
        listen: Option<String>,
        file: ConfigFile,
    ) -> Result<Config, ConfigError> {
        let retention = Retention::resolve(&args.retention, &file)?;
        let store_cache_mb = store_cache_mb(&file);
        let (sources, build_network) = (sources_of(&file)?, build_network_of(&file)?);
        let repo = args.repo.clone().or(file.repo).ok_or(ConfigError::NoRepo)?;
        let listen = listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Listen(listen));
        }
        let max_parallel_builds = file.max_parallel_builds.unwrap_or(2).max(1);
        let workers = crate::pool::worker_config::resolve(
            &file.workers,
            &crate::pool::worker_config::SingleEngine {
                docker_host: file.docker_host.clone(),
                docker_tls_verify: file.docker_tls_verify,
                docker_cert_path: file.docker_cert_path.clone(),
                max_parallel_builds,
            },
            file.path.as_deref().unwrap_or(Path::new("kiln.toml")),
        )?;
        Ok(Config {
            source_url: file.source_url.unwrap_or_else(|| source_url_of(&repo)),
            repo,
            branch: args
                .branch
                .clone()
                .or(file.branch)
                .unwrap_or_else(|| "main".into()),
            specs_dir: args
                .specs_dir
                .clone()
                .or(file.specs_dir)
                .unwrap_or_else(|| ".".into()),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(".kiln")),
            listen,
            registry: args
                .registry
                .clone()
                .or(file.registry)
                .filter(|r| !r.is_empty()),
            no_build: args.no_build || file.no_build.unwrap_or(false),
            poll_interval: Duration::from_secs(
                args.poll_interval
                    .or(file.poll_interval)
                    .unwrap_or(60)
                    .max(1),
            ),
            worker_probe_interval: Duration::from_secs(
                file.worker_probe_interval.unwrap_or(10).max(1),
            ),
            docker_host: file.docker_host,
            docker_tls_verify: file.docker_tls_verify,
            docker_cert_path: file.docker_cert_path,
            docker_config: file.docker_config,
            pull_secrets: file.pull_secrets,
            ca_bundle: file.ca_bundle,
            max_parallel_builds,
            build_timeout: Duration::from_secs(file.build_timeout.unwrap_or(3600)),
            image_test_timeout: Duration::from_secs(file.image_test_timeout.unwrap_or(300).max(1)),
            max_attempts: file.max_attempts.unwrap_or(3).max(1),
            retry_backoff: Duration::from_secs(file.retry_backoff.unwrap_or(2)),
            shutdown_grace: Duration::from_secs(file.shutdown_grace.unwrap_or(30)),
            commit_url: file.commit_url,
            repo_web_url: file.repo_web_url,
            watch: !args.no_watch && file.watch.unwrap_or(true),
            webhook_secret_file: args
                .webhook_secret_file
                .clone()
                .or(file.webhook_secret_file),
            webhook_secret_files: file.webhook_secret_files,
            retention,
            workers,
            store_cache_mb,
            sources,
            build_network,
            base_check_interval: Duration::from_secs(file.base_check_interval.unwrap_or(21600)),
            rebuild_on_base_update: file.rebuild_on_base_update.unwrap_or(true),
        })
    }
}

/// What `kiln check --config FILE` validates specs against: the names of the configured
/// pull secrets and sources (the file needs no `repo` for it).
pub fn spec_context(path: &Path) -> Result<crate::spec::SpecContext, ConfigError> {
    let file = read_file(path)?;
    Ok(crate::spec::SpecContext {
        pull_secrets: Some(file.pull_secrets.keys().cloned().collect()),
        sources: Some(sources_of(&file)?),
    })
}

fn sources_of(file: &ConfigFile) -> Result<std::sync::Arc<crate::sources::Sources>, ConfigError> {
    crate::sources::Sources::from_tables(&file.sources)
        .map(std::sync::Arc::new)
        .map_err(|e| ConfigError::Parse {
            path: file
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("kiln.toml")),
            message: e.to_string(),
        })
}

/// `build_network`: `default` (or unset) is the Engine's default network.
fn build_network_of(file: &ConfigFile) -> Result<Option<String>, ConfigError> {
    match file.build_network.as_deref().map(str::trim) {
        None | Some("default") => Ok(None),
        Some(name) if crate::sources::config::valid_name(name) => Ok(Some(name.to_string())),
        Some(other) => Err(ConfigError::Parse {
            path: file
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("kiln.toml")),
            message: format!(
                "`build_network` = {other:?}: use \"default\", \"host\" or a Docker network name"
            ),
        }),
    }
}

fn store_cache_mb(file: &ConfigFile) -> u64 {
    file.store_cache_mb.unwrap_or(DEFAULT_STORE_CACHE_MB).max(1)
}

impl Config {
    /// How the store is opened: the page cache from `store_cache_mb`.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions::with_cache_mb(self.store_cache_mb)
    }
}

impl DataDirConfig {
    /// How the store is opened: the page cache from `store_cache_mb`.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions::with_cache_mb(self.store_cache_mb)
    }
}

/// Every top-level key `kiln.toml` accepts, sorted (the reference `deploy/kiln.toml` is checked
/// against it).
pub fn file_keys() -> Vec<String> {
    let schema = schemars::schema_for!(ConfigFile);
    let mut keys: Vec<String> = schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// The repository as a URL for image labels: URLs as they are (credentials removed), local
/// paths as absolute `file://` URLs.
fn source_url_of(repo: &str) -> String {
    if repo.contains("://") || repo.contains('@') {
        return crate::repo::redact(repo);
    }
    let path = Path::new(repo);
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", absolute.display())
}

/// The file layer: `path`, else ./kiln.toml when it exists, else nothing.
fn load(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
    match path {
        Some(path) => read_file(path),
        None if Path::new("kiln.toml").exists() => read_file(Path::new("kiln.toml")),
        None => Ok(ConfigFile::default()),
    }
}

fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    file.path = Some(path.to_path_buf());
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file: ConfigFile =
            toml::from_str("repo = '/srv/a.git'\nbranch = 'prod'\npoll_interval = 5\n").unwrap();
        let args = ConfigArgs {
            branch: Some("main".into()),
            ..ConfigArgs::default()
        };
        let config = Config::merge(&args, None, file).unwrap();
        assert_eq!(config.repo, "/srv/a.git");
        assert_eq!(config.branch, "main");
        assert_eq!(config.poll_interval, Duration::from_secs(5));
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.max_parallel_builds, 2);
    }

    #[test]
    fn retention_keys_default_to_keeping_everything_and_refuse_zero() {
        let config = Config::from_toml("repo = 'x'\n", Path::new("kiln.toml")).unwrap();
        assert_eq!(
            config.retention,
            Retention {
                log_retention_days: None,
                max_jobs_per_spec: None,
                gc_interval: Duration::from_secs(3600),
            }
        );
        let config = Config::from_toml(
            "repo = 'x'\nlog_retention_days = 90\nmax_jobs_per_spec = 50\ngc_interval = 600\n",
            Path::new("kiln.toml"),
        )
        .unwrap();
        assert_eq!(config.retention.log_retention_days, Some(90));
        assert_eq!(config.retention.max_jobs_per_spec, Some(50));
        assert_eq!(config.retention.gc_interval, Duration::from_secs(600));
        let err = Config::from_toml(
            "repo = 'x'\nmax_jobs_per_spec = 0\n",
            Path::new("kiln.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_jobs_per_spec"), "{err}");
        // A flag beats the file.
        let file: ConfigFile = toml::from_str("repo = 'x'\nmax_jobs_per_spec = 50\n").unwrap();
        let args = ConfigArgs {
            retention: RetentionArgs {
                max_jobs_per_spec: Some(7),
                ..RetentionArgs::default()
            },
            ..ConfigArgs::default()
        };
        let config = Config::merge(&args, None, file).unwrap();
        assert_eq!(config.retention.max_jobs_per_spec, Some(7));
    }

    #[test]
    fn unknown_keys_and_missing_repo_are_errors() {
        let err =
            Config::from_toml("repo = 'x'\nbrnach = 'main'\n", Path::new("kiln.toml")).unwrap_err();
        assert!(err.to_string().contains("brnach"), "{err}");
        let err = Config::from_toml("branch = 'main'\n", Path::new("kiln.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::NoRepo));
    }

    #[test]
    fn workers_tables_or_the_single_engine() {
        let config = Config::from_toml(
            "repo = 'x'\ndocker_host = 'unix:///e.sock'\nmax_parallel_builds = 3\n",
            Path::new("kiln.toml"),
        )
        .unwrap();
        assert_eq!(config.workers.len(), 1);
        assert_eq!(
            config.workers[0].endpoint.as_deref(),
            Some("unix:///e.sock")
        );
        assert_eq!(config.workers[0].capacity, 3);
        let text = "repo = 'x'\n[[workers]]\nname = 'w1'\nkind = 'docker'\nendpoint = 'tcp://127.0.0.1:2377'\n\
                    [[workers]]\nname = 'w1'\nkind = 'docker'\nendpoint = 'tcp://127.0.0.1:2378'\n";
        let err = Config::from_toml(text, Path::new("/etc/kiln/kiln.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /etc/kiln/kiln.toml: [[workers]] table 2 (name \"w1\"): `name` must be unique: an earlier [[workers]] table has the same name"
        );
    }

    #[test]
    fn file_keys_are_the_keys_the_file_accepts() {
        let keys = file_keys();
        assert!(keys.len() > 20, "{keys:?}");
        for key in [
            "repo",
            "shutdown_grace",
            "pull_secrets",
            "webhook_secret_files",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        // Every listed key is accepted by the parser, and nothing else is.
        for key in &keys {
            let value = match key.as_str() {
                "pull_secrets" | "webhook_secret_files" | "sources" => "{}",
                "workers" => "[]",
                _ => "0",
            };
            let err = toml::from_str::<ConfigFile>(&format!("{key} = {value}\n"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.contains("unknown field"), "{key}: {err}");
        }
        let err = toml::from_str::<ConfigFile>("not_a_key = 0\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn sources_and_build_network() {
        let config = Config::from_toml(
            "repo = 'x'\nbuild_network = 'host'\n[sources.pypi]\nkind = 'pip'\nurl = 'http://127.0.0.1:8081/simple/'\n",
            Path::new("kiln.toml"),
        )
        .unwrap();
        assert_eq!(config.build_network.as_deref(), Some("host"));
        assert!(config.sources.get("pypi").is_some());
        let config = Config::from_toml(
            "repo = 'x'\nbuild_network = 'default'\n",
            Path::new("kiln.toml"),
        )
        .unwrap();
        assert_eq!(config.build_network, None);
        let err = Config::from_toml(
            "repo = 'x'\nbuild_network = 'a b'\n",
            Path::new("kiln.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("build_network"), "{err}");
        let err = Config::from_toml(
            "repo = 'x'\n[sources.pypi]\nkind = 'pip'\nurl = 'https://u:p@x/'\n",
            Path::new("/etc/kiln/kiln.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "config file /etc/kiln/kiln.toml: [sources.pypi] `url`: the URL holds a user name"
            ),
            "{err}"
        );
    }
}
