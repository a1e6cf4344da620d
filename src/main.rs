//! The `kiln` command line: parses arguments, calls the library, prints, and is the only
//! place that turns errors into exit codes and messages. Command bodies live in
//! `kiln::commands` and `kiln::serve`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kiln::check::{self, Format};
use kiln::commands::{self, Rendered};
use kiln::config::{Config, ConfigArgs, DataDirArgs, RetentionArgs};
use kiln::dockerfile::RenderOptions;
use kiln::spec::SpecContext;
use kiln::web::hooks::{self, Secret};
use std::path::PathBuf;
use std::process::ExitCode;
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
        /// Kiln's config: `pullSecret` and `sources` entries must then name configured ones.
        #[arg(long)]
        config: Option<PathBuf>,
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
        /// Kiln's config, for the spec's package sources.
        #[arg(long)]
        config: Option<PathBuf>,
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
        Command::Check {
            paths,
            format,
            config,
        } => {
            let files = check::collect_files(&paths)?;
            let ctx = match config {
                Some(path) => kiln::config::spec_context(&path)?,
                None => SpecContext::default(),
            };
            let report = check::check_files(&files, &ctx)?;
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
            config,
        } => {
            let sources = match config {
                Some(path) => kiln::config::spec_context(&path)?
                    .sources
                    .unwrap_or_default(),
                None => Default::default(),
            };
            let options = RenderOptions {
                base_user,
                ca_bundle,
                sources,
            };
            match commands::render(&file, &options)? {
                Rendered::Dockerfile(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Rendered::Invalid(diagnostics) => {
                    for d in &diagnostics {
                        eprintln!("{d}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Schema => {
            println!("{}", kiln::spec::schema::spec_schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config, listen } => {
            let config = Config::resolve(&config, listen)?;
            runtime()?.block_on(serve(config))
        }
        Command::Sync { config } => {
            let config = Config::resolve(&config, None)?;
            let report = runtime()?.block_on(kiln::serve::sync_once(&config))?;
            let outcome = &report.outcome;
            println!(
                "synced {}: {} step(s), {} revision(s), {} job(s), {} cancelled",
                outcome.head.as_deref().unwrap_or("(no branch)"),
                outcome.steps,
                outcome.revisions,
                outcome.jobs.len(),
                outcome.cancelled
            );
            match report.failed {
                Some(failed) if !failed.is_empty() => {
                    println!("{} job(s) failed: {failed:?}", failed.len());
                    Ok(ExitCode::from(1))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
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
        } => {
            print!("{}", commands::gc(&data, &retention, compact)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { out, data, server } => {
            print!("{}", commands::backup(&out, &data, server)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { input, data_dir } => {
            print!("{}", commands::restore(&input, &data_dir)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Bind, say where (the port `listen` gave, or the one the system picked for port 0: tests
/// and scripts read this line), run until SIGINT/SIGTERM.
async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let listener = kiln::serve::bind(&config).await?;
    let addr = listener.local_addr()?;
    println!("Kiln dashboard and API: http://{addr}/");
    let shutdown = CancellationToken::new();
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            kiln::serve::wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        })
    };
    let served = kiln::serve::serve(listener, config, shutdown).await;
    signals.abort();
    served?;
    Ok(ExitCode::SUCCESS)
}
