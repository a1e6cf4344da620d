//! The `kiln` command line: the only place that turns errors into exit codes and messages.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kiln::check::{self, Format};
use kiln::config::{Config, ConfigArgs, DataDirArgs, Retention, RetentionArgs};
use kiln::docker::auth::RegistryAuths;
use kiln::docker::{Engine, EngineEndpoint};
use kiln::dockerfile::{self, RenderOptions, RevisionInfo};
use kiln::jobs::{BuildSettings, Workers};
use kiln::spec::{self, SpecContext};
use kiln::store::{GcPolicy, Store, StoreError};
use kiln::sync::Syncer;
use kiln::web::hooks::{self, Secret, Webhooks};
use kiln::web::{AppInfo, AppState, Counters};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Kiln: a GitOps image builder. Image specs committed to git become built, pushed images.
#[derive(Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate spec files (for pull-request CI and pre-commit hooks).
    ///
    /// Exit status: 0 when every spec is valid, 1 when any problem was found, 2 on usage or
    /// I/O errors.
    Check {
        /// Spec files or folders (searched recursively for *.yaml and *.yml).
        #[arg(default_value = ".")]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the Dockerfile a spec would build (with placeholder revision values).
    Render {
        /// The spec file.
        file: PathBuf,
        /// The base image's user to restore at the end (normally inspected from the image).
        #[arg(long)]
        base_user: Option<String>,
        /// Render as if a custom CA bundle were configured.
        #[arg(long)]
        ca_bundle: bool,
    },
    /// Print the JSON Schema of the spec format, for editors.
    Schema,
    /// Run the controller: follow the repository, record revisions and jobs, serve the API.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "KILN_LISTEN")]
        listen: Option<String>,
    },
    /// One pass: fetch, reconcile every new commit, exit. Exit status 1 if any job failed.
    Sync {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Tell a running Kiln to fetch now: one signed generic webhook (for git hooks).
    ///
    /// Exit status: 0 when Kiln accepted it, 1 when Kiln refused it, 2 when it could not be
    /// sent (usage, secret file, network).
    Notify {
        /// Kiln's address, e.g. http://kiln.internal:8080 (the path defaults to /hooks/generic).
        #[arg(long, env = "KILN_URL")]
        url: String,
        /// File holding the webhook secret (or set KILN_WEBHOOK_SECRET).
        #[arg(long, env = "KILN_WEBHOOK_SECRET_FILE")]
        secret_file: Option<PathBuf>,
        /// A ref that changed (repeatable); Kiln ignores pushes that miss its branch.
        #[arg(long = "ref", value_name = "REF")]
        refs: Vec<String>,
        /// Seconds to wait for Kiln's answer.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// One retention pass on a stopped data dir: prune old jobs and their logs, print a report.
    ///
    /// `kiln serve` runs the same pass every `gc_interval`; this is for a stopped Kiln, and for
    /// `--compact`, which needs the data dir to itself.
    Gc {
        #[command(flatten)]
        data: DataDirArgs,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Then rewrite the store into fresh files, giving freed space back to the file system
        /// (sled keeps it for reuse otherwise). Needs free space for one copy of what is kept.
        #[arg(long)]
        compact: bool,
    },
    /// Write a backup of the store to OUT; works while `kiln serve` runs.
    ///
    /// Opens the data dir when no Kiln runs on it; when one does (it holds sled's lock), asks
    /// it over HTTP (`GET /api/v1/backup`) at `--server`, or at the config's `listen`.
    Backup {
        /// The backup file to write (written to OUT.partial, checked, then renamed).
        out: PathBuf,
        #[command(flatten)]
        data: DataDirArgs,
        /// A running Kiln to ask, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        server: Option<String>,
    },
    /// Restore a backup into an empty (or new) data dir, then start `kiln serve` on it.
    Restore {
        /// The backup file.
        input: PathBuf,
        /// The data dir to create; must be empty or not exist.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: journald, `docker logs` and log files get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kiln: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { paths, format } => {
            let files = check::collect_files(&paths)?;
            let report = check::check_files(&files, &SpecContext::default())?;
            print!("{}", check::render_report(&report, format));
            Ok(if report.diagnostics.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Render {
            file,
            base_user,
            ca_bundle,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let parsed =
                spec::parse_spec(&file.display().to_string(), &bytes, &SpecContext::default());
            let (Some(spec), Some(digest)) = (parsed.spec, parsed.digest) else {
                for d in &parsed.diagnostics {
                    eprintln!("{d}");
                }
                return Ok(ExitCode::from(1));
            };
            let options = RenderOptions {
                base_user,
                ca_bundle,
            };
            print!(
                "{}",
                dockerfile::render(&spec, &RevisionInfo::placeholder(&digest), &options)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!("{}", spec::schema::spec_schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config, listen } => {
            let config = Config::resolve(&config, listen)?;
            runtime()?.block_on(serve(config))
        }
        Command::Sync { config } => {
            let config = Config::resolve(&config, None)?;
            runtime()?.block_on(sync(config))
        }
        Command::Notify {
            url,
            secret_file,
            refs,
            timeout,
        } => {
            let secret = match (std::env::var("KILN_WEBHOOK_SECRET").ok(), secret_file) {
                (_, Some(path)) => Secret::from_file(&path)?,
                (Some(value), None) => {
                    Secret::new(value.as_bytes()).context("KILN_WEBHOOK_SECRET is set but empty")?
                }
                (None, None) => anyhow::bail!("give --secret-file FILE or set KILN_WEBHOOK_SECRET"),
            };
            let timeout = std::time::Duration::from_secs(timeout.max(1));
            let answer = runtime()?.block_on(hooks::notify(&url, &secret, &refs, timeout))?;
            let line = format!("{} {}: {}", answer.status, answer.reason, answer.body);
            if answer.is_success() {
                println!("kiln notify: {line}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("kiln notify: refused: {line}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Gc {
            data,
            retention,
            compact,
        } => gc(&data, &retention, compact),
        Command::Backup { out, data, server } => backup(&out, &data, server),
        Command::Restore { input, data_dir } => restore(&input, &data_dir),
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `kiln gc`: one pass, then optionally a compaction. Blocking, outside any runtime.
fn gc(data: &DataDirArgs, retention: &RetentionArgs, compact: bool) -> anyhow::Result<ExitCode> {
    let config = Config::resolve_data_dir(data, retention)?;
    let dir = &config.data_dir;
    if !dir.join("db").exists() {
        anyhow::bail!("no Kiln store in {}", dir.display());
    }
    let policy = policy(&config.retention);
    let before = kiln::store::gc::disk_usage(dir)?;
    let store = Store::open(dir)?;
    if !policy.is_active() {
        println!(
            "kiln gc: no retention configured (log_retention_days, max_jobs_per_spec): only leftovers are removed"
        );
    }
    let started = std::time::Instant::now();
    let report = store.gc(&policy, kiln::model::now())?;
    let elapsed = started.elapsed();
    drop(store);
    println!(
        "kiln gc: {} job(s) pruned ({} scanned, {} protected), {} log line(s), {} installed-package record(s), {} built-image entr(y/ies) removed in {} ms",
        report.jobs_pruned,
        report.jobs_scanned,
        report.jobs_protected,
        report.log_lines_pruned,
        report.installed_pruned,
        report.built_entries_pruned,
        elapsed.as_millis()
    );
    let after = kiln::store::gc::disk_usage(dir)?;
    println!(
        "data dir: {} before, {} after on disk",
        megabytes(before),
        megabytes(after)
    );
    if compact {
        let started = std::time::Instant::now();
        let done = kiln::store::backup::compact(dir)?;
        println!(
            "compacted: {} -> {} in {} ms ({} records kept)",
            megabytes(done.before_bytes),
            megabytes(done.after_bytes),
            started.elapsed().as_millis(),
            done.records
        );
    } else if report.jobs_pruned > 0 {
        println!(
            "sled keeps freed space for its own reuse; `kiln gc --compact` gives it back to the file system"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln backup`: directly when the data dir is free, else through the running Kiln.
fn backup(out: &Path, data: &DataDirArgs, server: Option<String>) -> anyhow::Result<ExitCode> {
    let config = Config::resolve_data_dir(data, &RetentionArgs::default())?;
    let started = std::time::Instant::now();
    let (summary, via) = match server {
        Some(url) => (
            runtime()?.block_on(kiln::web::backup::download(&url, out))?,
            url,
        ),
        None => {
            let dir = &config.data_dir;
            if !dir.join("db").exists() {
                anyhow::bail!("no Kiln store in {}", dir.display());
            }
            match Store::open(dir) {
                Ok(store) => (backup_direct(&store, out)?, dir.display().to_string()),
                Err(StoreError::Locked { .. }) => {
                    let url = local_url(&config.listen);
                    let summary = runtime()?.block_on(kiln::web::backup::download(&url, out)).with_context(|| {
                        format!(
                            "{} is in use by a running Kiln, which was asked at {url} (set --server if it listens elsewhere)",
                            dir.display()
                        )
                    })?;
                    (summary, url)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    println!(
        "kiln backup: {} from {via}: {} job(s), {} log line(s), {} record(s), {}, sha256 {} in {} ms",
        out.display(),
        summary.jobs,
        summary.log_lines,
        summary.records,
        megabytes(summary.bytes),
        summary.sha256,
        started.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn backup_direct(store: &Store, out: &Path) -> anyhow::Result<kiln::store::backup::BackupSummary> {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let written = store.write_backup(&file).and_then(|_| {
        file.sync_all()?;
        kiln::store::backup::verify(std::io::BufReader::new(std::fs::File::open(&partial)?))
    });
    match written {
        Ok(summary) => {
            std::fs::rename(&partial, out)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.into())
        }
    }
}

/// Where to reach a Kiln that listens on `listen` from this machine.
fn local_url(listen: &str) -> String {
    let listen = listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{listen}")
}

fn restore(input: &Path, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let file =
        std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let summary = kiln::store::backup::restore(std::io::BufReader::new(file), data_dir)
        .with_context(|| format!("cannot restore {}", input.display()))?;
    println!(
        "kiln restore: {} into {}: {} job(s), {} log line(s), {} record(s), written by kiln {} at {} in {} ms",
        input.display(),
        data_dir.display(),
        summary.jobs,
        summary.log_lines,
        summary.records,
        summary.kiln_version,
        kiln::model::rfc3339(summary.created_at),
        started.elapsed().as_millis()
    );
    println!(
        "jobs that were running when the backup was taken are re-queued when `kiln serve` starts on it"
    );
    Ok(ExitCode::SUCCESS)
}

fn policy(retention: &Retention) -> GcPolicy {
    GcPolicy::new(retention.log_retention_days, retention.max_jobs_per_spec)
}

/// Retention passes in `kiln serve`: the first shortly after start, then every `gc_interval`.
async fn gc_loop(
    store: Store,
    retention: Retention,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let policy = policy(&retention);
    if !policy.is_active() {
        return;
    }
    let mut delay = retention
        .gc_interval
        .min(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = retention.gc_interval;
        let (store, policy) = (store.clone(), policy.clone());
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || store.gc(&policy, kiln::model::now())).await {
            Ok(Ok(report)) => {
                counters.gc_passes.fetch_add(1, Relaxed);
                counters
                    .gc_jobs_pruned
                    .fetch_add(report.jobs_pruned, Relaxed);
                counters
                    .gc_log_lines_pruned
                    .fetch_add(report.log_lines_pruned, Relaxed);
                tracing::info!(
                    jobs_pruned = report.jobs_pruned,
                    log_lines_pruned = report.log_lines_pruned,
                    jobs_protected = report.jobs_protected,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention pass"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "retention pass failed; next one in gc_interval")
            }
            Err(e) => tracing::warn!(error = %e, "retention pass panicked"),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn open(config: &Config) -> anyhow::Result<Syncer> {
    let store = Store::open(&config.data_dir)?;
    // Jobs never stay `running` after a restart: a dead process left them, they go back.
    let recovered = store.requeue_interrupted().await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "re-queued jobs left running by a previous process"
        );
    }
    Ok(Syncer::new(config, store)?)
}

/// Where the Engine is, from the config (unset fields fall back to `DOCKER_*` variables).
fn engine_endpoint(config: &Config) -> EngineEndpoint {
    EngineEndpoint {
        host: config.docker_host.clone(),
        tls_verify: config.docker_tls_verify,
        cert_path: config.docker_cert_path.clone(),
    }
}

/// What every build needs besides the Engine: registry, credentials, CA bundle, limits.
fn build_settings(config: &Config) -> anyhow::Result<BuildSettings> {
    let auths = match config
        .docker_config
        .clone()
        .or_else(RegistryAuths::default_path)
    {
        Some(path) => RegistryAuths::load(&path)?,
        None => RegistryAuths::empty(),
    };
    let ca_bundle = match &config.ca_bundle {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read ca_bundle {}", path.display()))?,
        ),
        None => None,
    };
    Ok(BuildSettings {
        registry: config.registry.clone(),
        auths,
        pull_secrets: config.pull_secrets.clone(),
        ca_bundle,
        max_parallel: config.max_parallel_builds,
        timeout: config.build_timeout,
        max_attempts: config.max_attempts,
        retry_backoff: config.retry_backoff,
        shutdown_grace: config.shutdown_grace,
        source_url: config.source_url.clone(),
    })
}

/// The worker pool for a one-shot `kiln sync`, unless builds are off: an Engine that does
/// not answer fails the command at once (the jobs stay queued for the next run).
async fn workers(config: &Config, store: &Store) -> anyhow::Result<Option<Workers>> {
    if config.no_build {
        return Ok(None);
    }
    let engine = Engine::connect_to(&engine_endpoint(config)).await?;
    Ok(Some(Workers::new(
        store.clone(),
        engine,
        build_settings(config)?,
    )))
}

async fn sync(config: Config) -> anyhow::Result<ExitCode> {
    let syncer = open(&config).await?;
    let workers = workers(&config, syncer.store()).await?;
    let outcome = syncer.sync_once().await?;
    println!(
        "synced {}: {} step(s), {} revision(s), {} job(s), {} cancelled",
        outcome.head.as_deref().unwrap_or("(no branch)"),
        outcome.steps,
        outcome.revisions,
        outcome.jobs.len(),
        outcome.cancelled
    );
    if let Some(workers) = workers {
        let failed = workers.drain().await?;
        if !failed.is_empty() {
            println!("{} job(s) failed: {failed:?}", failed.len());
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let syncer = Arc::new(open(&config).await?);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let sync_trigger = Arc::new(tokio::sync::Notify::new());
    let webhooks = Webhooks::load(
        &config,
        std::env::var("KILN_WEBHOOK_SECRET").ok().as_deref(),
    )?;
    // Local repositories are watched (polling stays as the safety net); remote ones are fetched.
    let watcher = if config.watch {
        let location = kiln::repo::RepoLocation::parse(&config.repo);
        kiln::watch::RefWatcher::for_location(&location, &config.branch, Arc::clone(&sync_trigger))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot watch the repository; polling only");
                None
            })
    } else {
        None
    };
    let counters = Arc::new(Counters::default());
    let state = AppState::new(
        syncer.store().clone(),
        AppInfo {
            repo: config.repo.clone(),
            branch: config.branch.clone(),
            no_build: config.no_build,
            poll_interval_secs: config.poll_interval.as_secs(),
            watching: watcher.as_ref().map(|w| w.git_dir().display().to_string()),
            commit_url: config.commit_url.clone(),
            repo_web_url: config.repo_web_url.clone(),
        },
        webhooks,
        Arc::clone(&sync_trigger),
        Arc::clone(&counters),
        shutdown.clone(),
    );
    tracing::info!(listen = %config.listen, repo = %kiln::repo::redact(&config.repo), "kiln serving");
    println!("Kiln dashboard and API: http://{}/", listener.local_addr()?);

    // Builds stop taking jobs on `shutdown`; running ones get the grace period.
    // Set-up mistakes (a missing TLS file, an unreadable ca_bundle) stop the start; an Engine
    // that does not answer yet does not: the dashboard serves and jobs wait for it.
    let builder = if config.no_build {
        None
    } else {
        let settings = build_settings(&config)?;
        let endpoint = engine_endpoint(&config);
        endpoint.resolve(|name| std::env::var(name).ok())?;
        let (store, shutdown) = (syncer.store().clone(), shutdown.clone());
        Some(tokio::spawn(async move {
            if let Some(engine) = Engine::connect_when_ready(&endpoint, &shutdown).await {
                Workers::new(store, engine, settings)
                    .run_forever(shutdown)
                    .await
            }
        }))
    };
    let retention = tokio::spawn(gc_loop(
        syncer.store().clone(),
        config.retention.clone(),
        Arc::clone(&counters),
        shutdown.clone(),
    ));
    let poller = tokio::spawn(kiln::watch::sync_loop(
        Arc::clone(&syncer),
        config.poll_interval,
        sync_trigger,
        shutdown.clone(),
        move |result| {
            use std::sync::atomic::Ordering::Relaxed;
            counters.sync_passes.fetch_add(1, Relaxed);
            if result.is_err() {
                counters.sync_failures.fetch_add(1, Relaxed);
            }
        },
    ));
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        })
    };
    kiln::web::serve(listener, state, shutdown.clone()).await?;
    shutdown.cancel();
    let _ = poller.await;
    let _ = retention.await;
    drop(watcher);
    if let Some(builder) = builder {
        let _ = builder.await;
    }
    signals.abort();
    syncer.store().flush().await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
