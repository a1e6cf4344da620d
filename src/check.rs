//! `kiln check`: validate spec files on disk, for pull-request CI and pre-commit hooks.
//!
//! Files are read one by one and only their diagnostics are kept, so checking 10,000 specs
//! needs memory for the diagnostics, not for the specs.
//!
//! What Kiln will not read is reported, never skipped: a symlink or a submodule in the specs
//! folder (git stores a link or a commit id there, and Kiln's sync reads only regular files,
//! so such a spec would never be built), and a spec file that cannot be opened or read. Each
//! is a diagnostic with the rule `unreadable-file`, as the dashboard shows it after a sync.

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

/// A git submodule's work tree: a folder holding a `.git` file (or folder).
fn is_submodule(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(".git")).is_ok()
}

/// Whether a submodule's work tree holds spec files, which Kiln would never read.
fn holds_spec_files(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !e.file_name().to_str().is_some_and(|n| n.starts_with('.'))
        })
        .filter_map(Result::ok)
        .any(|e| !e.file_type().is_dir() && is_spec_file(e.path()))
}

/// The spec files named by `paths`: files as given, folders searched recursively (hidden
/// folders such as `.git` skipped), sorted for stable output. Symlinks with a spec name and
/// submodules are listed too (never followed): [`check_files`] reports them.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CheckError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::symlink_metadata(path).map_err(|source| CheckError::Io {
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
            let mut walker = walker;
            while let Some(entry) = walker.next() {
                let entry = entry.map_err(|e| CheckError::Io {
                    path: e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| path.clone()),
                    source: e
                        .into_io_error()
                        .unwrap_or_else(|| std::io::Error::other("file system loop")),
                })?;
                let kind = entry.file_type();
                if kind.is_dir() {
                    // Kiln reads the repository's own tree; a submodule's files are not in it.
                    if entry.depth() > 0 && is_submodule(entry.path()) {
                        walker.skip_current_dir();
                        if is_spec_file(entry.path()) || holds_spec_files(entry.path()) {
                            files.push(entry.into_path());
                        }
                    }
                } else if is_spec_file(entry.path())
                    || (kind.is_symlink()
                        && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir())
                        && holds_spec_files(entry.path()))
                {
                    files.push(entry.into_path());
                }
            }
        } else if is_spec_file(path) {
            files.push(path.clone());
        } else if meta.file_type().is_symlink() && std::fs::metadata(path).is_ok_and(|m| m.is_dir())
        {
            // A symlinked folder named on the command line: the user asked for it.
            files.extend(collect_files(&[path.join(".")])?);
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
        let shown = path.display().to_string();
        let mut one = match read_spec(path) {
            Ok(bytes) => spec::validate_spec(&shown, &bytes, ctx),
            Err(reason) => spec::unreadable_spec(&shown, &reason),
        };
        // Keep only what the report needs: the name (for duplicates) and the diagnostics.
        one.spec = None;
        parsed.push(one);
    }
    Ok(parsed)
}

/// The bytes of a spec file, or why Kiln will not read it. Reads at most one byte more than
/// the spec limit: a huge file is refused without loading it. Symlinks are never followed:
/// git stores the link, not the file it points to, so the sync would not read it either.
fn read_spec(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| format!(" to `{}`", t.display()))
            .unwrap_or_default();
        return Err(format!(
            "is a symbolic link{target}; Kiln reads only regular files and never follows links \
             (git stores the link, not what it points to), so this is never built: commit the \
             file itself"
        ));
    }
    if kind.is_dir() {
        return Err(
            "is a git submodule; Kiln reads only this repository's own files, so the specs in \
             it would never be built: commit them into this repository"
                .to_string(),
        );
    }
    if !kind.is_file() {
        return Err("is not a regular file; Kiln reads only regular files".to_string());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be opened: {e}"))?;
    let mut bytes = Vec::new();
    file.take(spec::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
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

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// (file name relative to `root`, rule, message) of each diagnostic.
    fn findings(root: &Path, report: &Report) -> Vec<(String, spec::Rule, String)> {
        let prefix = format!("{}/", root.display());
        report
            .diagnostics
            .iter()
            .map(|d| {
                let path = d.path.strip_prefix(&prefix).unwrap_or(&d.path).to_string();
                (path, d.rule, d.message.clone())
            })
            .collect()
    }

    #[test]
    fn what_kiln_will_not_read_is_reported_with_file_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "one.yaml", "name: one\nbaseImage: debian:bookworm\n");
        std::os::unix::fs::symlink("one.yaml", root.join("two.yaml")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/kiln", root.join("dangling.yml")).unwrap();
        // A submodule's work tree (a `.git` file inside) holding a spec.
        write(root, "vendor/.git", "gitdir: ../.git/modules/vendor\n");
        write(
            root,
            "vendor/three.yaml",
            "name: three\nbaseImage: debian\n",
        );
        // A symlinked folder of specs, and a named pipe with a spec name.
        write(root, "real/four.yaml", "name: four\nbaseImage: debian\n");
        std::os::unix::fs::symlink("real", root.join("linked")).unwrap();
        let fifo = root.join("pipe.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        let has_fifo = made.is_ok_and(|s| s.success());

        let files = collect_files(&[root.to_path_buf()]).unwrap();
        let report = check_files(&files, &SpecContext::default()).unwrap();
        let found = findings(root, &report);
        let unreadable: Vec<&str> = found
            .iter()
            .filter(|(_, rule, _)| *rule == spec::Rule::UnreadableFile)
            .map(|(path, _, _)| path.as_str())
            .collect();
        let mut expected = vec!["dangling.yml", "linked", "two.yaml", "vendor"];
        if has_fifo {
            expected.insert(2, "pipe.yaml");
        }
        assert_eq!(unreadable, expected, "{found:#?}");
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        let message = |name: &str| {
            found
                .iter()
                .find(|(path, _, _)| path == name)
                .map(|(_, _, m)| m.clone())
                .unwrap()
        };
        assert!(message("two.yaml").contains("symbolic link to `one.yaml`"));
        assert!(message("vendor").contains("git submodule"));
        // The file the link points to is checked as itself; the submodule's spec is not read.
        assert!(files.iter().any(|f| f.ends_with("one.yaml")));
        assert!(!files.iter().any(|f| f.ends_with("three.yaml")));

        // Named on the command line, a symlinked spec is reported too.
        let report = check_files(
            &collect_files(&[root.join("two.yaml")]).unwrap(),
            &SpecContext::default(),
        )
        .unwrap();
        assert_eq!(report.diagnostics[0].rule, spec::Rule::UnreadableFile);
    }

    /// With Kiln's config at hand (`kiln check --config`), `sources:` must name configured
    /// sources; a conda source also answers to its name as a channel. Each problem names the
    /// file, the line and the rule.
    #[test]
    fn sources_are_checked_against_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let config = root.join("kiln.toml");
        std::fs::write(
            &config,
            "[sources.internal-conda]\nkind = 'conda'\nurl = 'https://conda.corp.example/internal'\ntoken_file = '/etc/kiln/conda-token'\n\
             [sources.internal-pypi]\nkind = 'pip'\nurl = 'https://pypi.corp.example/simple/'\n",
        )
        .unwrap();
        write(
            root,
            "good.yaml",
            "name: good\nbaseImage: debian\nsources: [internal-pypi]\npackages:\n  conda: ['internal-conda::numpy']\n  pip: [six]\n",
        );
        write(
            root,
            "typo.yaml",
            "name: typo\nbaseImage: debian\nsources:\n  - internal-cond\n",
        );
        let files = collect_files(&[root.to_path_buf()]).unwrap();
        let ctx = crate::config::spec_context(&config).unwrap();
        let report = check_files(&files, &ctx).unwrap();
        let text = render_report(&report, Format::Text);
        let line = text.lines().next().unwrap();
        assert!(line.ends_with("typo.yaml:4:5: error[unknown-source]: source `internal-cond` is not configured in Kiln; did you mean `internal-conda`?"), "{text}");
        assert_eq!(report.diagnostics.len(), 1, "{text}");
        // Without a config only the shape is checked.
        assert!(
            check_files(&files, &SpecContext::default())
                .unwrap()
                .diagnostics
                .is_empty()
        );
    }
}
