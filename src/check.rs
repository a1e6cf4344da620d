//! `kiln check`: validate spec files on disk, for pull-request CI and pre-commit hooks.
//!
//! Files are read one by one and only their diagnostics are kept, so checking 10,000 specs
//! needs memory for the diagnostics, not for the specs.

use crate::spec::{self, Diagnostic, ParsedSpec, SpecContext};
use serde::Serialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a YAML file (expected *.yaml or *.yml)")]
    NotYaml { path: PathBuf },
}

/// The outcome of checking a set of files.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub files: usize,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn invalid_files(&self) -> usize {
        let mut paths: Vec<&str> = self.diagnostics.iter().map(|d| d.path.as_str()).collect();
        paths.dedup();
        paths.len()
    }
}

fn is_spec_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The spec files named by `paths`: files as given, folders searched recursively (hidden
/// folders such as `.git` skipped), sorted for stable output.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CheckError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| CheckError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let walker = walkdir::WalkDir::new(path)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| {
                    e.depth() == 0 || !e.file_name().to_str().is_some_and(|n| n.starts_with('.'))
                });
            for entry in walker {
                let entry = entry.map_err(|e| CheckError::Io {
                    path: e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| path.clone()),
                    source: e
                        .into_io_error()
                        .unwrap_or_else(|| std::io::Error::other("file system loop")),
                })?;
                if entry.file_type().is_file() && is_spec_file(entry.path()) {
                    files.push(entry.into_path());
                }
            }
        } else if is_spec_file(path) {
            files.push(path.clone());
        } else {
            return Err(CheckError::NotYaml { path: path.clone() });
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Check every file; duplicate names are detected across the whole set.
pub fn check_files(files: &[PathBuf], ctx: &SpecContext) -> Result<Report, CheckError> {
    // Files are independent until the duplicate-name check: parse them on every core.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    let mut parsed: Vec<ParsedSpec> = Vec::with_capacity(files.len());
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || check_part(part, ctx)))
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(part) => parsed.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok::<(), CheckError>(())
    })?;
    spec::check_duplicate_names(&mut parsed);
    let diagnostics = parsed.into_iter().flat_map(|p| p.diagnostics).collect();
    Ok(Report {
        files: files.len(),
        diagnostics,
    })
}

fn check_part(files: &[PathBuf], ctx: &SpecContext) -> Result<Vec<ParsedSpec>, CheckError> {
    let mut parsed = Vec::with_capacity(files.len());
    for path in files {
        let bytes = read_limited(path)?;
        let mut one = spec::parse_spec(&path.display().to_string(), &bytes, ctx);
        // Keep only what the report needs: the name (for duplicates) and the diagnostics.
        one.spec = None;
        parsed.push(one);
    }
    Ok(parsed)
}

/// Read at most one byte more than the spec limit: a huge file is refused without loading it.
fn read_limited(path: &Path) -> Result<Vec<u8>, CheckError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| CheckError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(spec::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CheckError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// How `kiln check` prints its findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `path:line:col: error[rule]: message`, then a summary line.
    Text,
    /// A JSON array of {path, line, column, rule, message}.
    Json,
    /// GitHub Actions workflow commands (`::error file=…`), shown inline on pull requests.
    Github,
}

pub fn render_report(report: &Report, format: Format) -> String {
    match format {
        Format::Text => {
            let mut out: String = report
                .diagnostics
                .iter()
                .map(|d| format!("{d}\n"))
                .collect();
            if report.diagnostics.is_empty() {
                out.push_str(&format!(
                    "checked {} spec file(s): all valid\n",
                    report.files
                ));
            } else {
                out.push_str(&format!(
                    "checked {} spec file(s): {} problem(s) in {} file(s)\n",
                    report.files,
                    report.diagnostics.len(),
                    report.invalid_files()
                ));
            }
            out
        }
        Format::Json => {
            serde_json::to_string_pretty(&report.diagnostics).unwrap_or_else(|_| "[]".into()) + "\n"
        }
        Format::Github => report
            .diagnostics
            .iter()
            .map(|d| {
                format!(
                    "::error file={},line={},col={},title={}::{}\n",
                    github_escape_property(&d.path),
                    d.line,
                    d.column,
                    d.rule,
                    github_escape_data(&d.message)
                )
            })
            .collect(),
    }
}

fn github_escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn github_escape_property(s: &str) -> String {
    github_escape_data(s)
        .replace(':', "%3A")
        .replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_github_formats() {
        let report = Report {
            files: 2,
            diagnostics: vec![Diagnostic {
                path: "specs/a,b.yaml".into(),
                line: 3,
                column: 5,
                rule: spec::Rule::OnePackagePerLine,
                message: "100% wrong".into(),
            }],
        };
        assert_eq!(
            render_report(&report, Format::Text),
            "specs/a,b.yaml:3:5: error[one-package-per-line]: 100% wrong\nchecked 2 spec file(s): 1 problem(s) in 1 file(s)\n"
        );
        assert_eq!(
            render_report(&report, Format::Github),
            "::error file=specs/a%2Cb.yaml,line=3,col=5,title=one-package-per-line::100%25 wrong\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_report(&report, Format::Json)).unwrap();
        assert_eq!(json[0]["rule"], "one-package-per-line");
        assert_eq!(json[0]["column"], 5);
    }
}
