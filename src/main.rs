//! The `kiln` command line: the only place that turns errors into exit codes and messages.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kiln::build::auth::RegistryAuths;
use kiln::build::dockerfile::{self, RenderOptions, RevisionInfo};
use kiln::build::engine::Engine;
use kiln::check::{self, Format};
use kiln::config::{Config, ConfigArgs};
use kiln::jobs::{BuildSettings, Workers};
use kiln::spec::{self, SpecContext};
use kiln::store::Store;
use kiln::sync::Syncer;
use kiln::web::{AppInfo, AppState};
use std::path::PathBuf;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn open(config: &Config) -> anyhow::Result<Syncer> {
    let store = Store::open(&config.data_dir)?;
    Ok(Syncer::new(config, store)?)
}

/// The worker pool, unless builds are off.
async fn workers(config: &Config, store: &Store) -> anyhow::Result<Option<Workers>> {
    if config.no_build {
        return Ok(None);
    }
    let engine = Engine::connect(config.docker_host.as_deref()).await?;
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
    let settings = BuildSettings {
        registry: config.registry.clone(),
        auths,
        pull_secrets: config.pull_secrets.clone(),
        ca_bundle,
        max_parallel: config.max_parallel_builds,
        timeout: config.build_timeout,
        source_url: config.source_url.clone(),
    };
    let workers = Workers::new(store.clone(), engine, settings);
    let recovered = workers.recover().await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "re-queued jobs left running by a previous process"
        );
    }
    Ok(Some(workers))
}

async fn sync(config: Config) -> anyhow::Result<ExitCode> {
    let syncer = open(&config)?;
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
    let syncer = Arc::new(open(&config)?);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let sync_trigger = Arc::new(tokio::sync::Notify::new());
    let state = AppState {
        store: syncer.store().clone(),
        inner: Arc::new(AppInfo {
            repo: config.repo.clone(),
            branch: config.branch.clone(),
            no_build: config.no_build,
        }),
        sync_trigger: Arc::clone(&sync_trigger),
        counters: Arc::default(),
        shutdown: shutdown.clone(),
    };
    tracing::info!(listen = %config.listen, repo = %kiln::repo::redact(&config.repo), "kiln serving");
    println!("Kiln dashboard and API: http://{}/", listener.local_addr()?);

    // Builds stop taking jobs on `shutdown`; running ones get the grace period.
    let builder = match workers(&config, syncer.store()).await? {
        Some(workers) => {
            let shutdown = shutdown.clone();
            Some(tokio::spawn(
                async move { workers.run_forever(shutdown).await },
            ))
        }
        None => None,
    };
    let poller = tokio::spawn(poll_loop(
        Arc::clone(&syncer),
        config.poll_interval,
        sync_trigger,
        shutdown.clone(),
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
    if let Some(builder) = builder {
        let _ = builder.await;
    }
    signals.abort();
    syncer.store().flush().await?;
    Ok(ExitCode::SUCCESS)
}

/// Look at the repository every `interval`, and at once when triggered.
async fn poll_loop(
    syncer: Arc<Syncer>,
    interval: std::time::Duration,
    trigger: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(e) = syncer.sync_once().await {
            tracing::error!(error = %e, "sync failed; keeping the last state");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
            _ = trigger.notified() => {}
        }
    }
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
