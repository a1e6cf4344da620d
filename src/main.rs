//! The `kiln` command line: the only place that turns errors into exit codes and messages.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kiln::build::dockerfile::{self, RenderOptions, RevisionInfo};
use kiln::check::{self, Format};
use kiln::spec::{self, SpecContext};
use std::path::PathBuf;
use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    }
}
