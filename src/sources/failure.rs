//! Recognising, in a build's log, that one of the job's sources refused the credential or did
//! not answer.
//!
//! A failing RUN fails a job at once, so without this a wrong password would read as "no
//! matching distribution found" and a mirror that is down for a minute would fail the job.
//! The lines are the package managers' own (checked against pip 23 and apt 2.6):
//!
//! * pip (from its verbose log, which the pip step prints when it ends):
//!   `Could not fetch URL http://…/simple/pkg/: 403 Client Error: Forbidden for url: …` and
//!   `Could not fetch URL …: connection error: … Connection refused …`;
//!   pip's own `… 401 Client Error: Unauthorized for url: …` for a file download;
//! * apt: `E: Failed to fetch http://…/InRelease  401  Unauthorized [IP: …]` and
//!   `… Could not connect to …`, `Temporary failure resolving …`, `Connection timed out`.
//!
//! A line counts only when a URL in it belongs to one of the job's sources (compared
//! without userinfo, on a path boundary), so a 401 from some other host is not blamed on a
//! source. A refusal outranks an unanswered request.

use super::config::Source;
use thiserror::Error;

/// A source's failure, as the job reports it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SourceFailure {
    #[error("source {0} refused the credential (HTTP {1})")]
    Refused(String, u16),
    #[error("source {0} did not answer")]
    Unreachable(String),
}

impl SourceFailure {
    /// Whether trying again may help: a source that did not answer may answer later; one
    /// that refused the credential refuses it again.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceFailure::Unreachable(_))
    }

    fn outranks(&self, other: &SourceFailure) -> bool {
        !self.is_transient() && other.is_transient()
    }

    /// Keeps the more telling of `current` and `new`.
    pub fn merge(current: Option<SourceFailure>, new: SourceFailure) -> SourceFailure {
        match current {
            Some(old) if !new.outranks(&old) => old,
            _ => new,
        }
    }
}

const FETCH_LINES: [&str; 4] = [
    "Could not fetch URL",
    "Failed to fetch",
    "Client Error:",
    "HTTP error",
];
const UNANSWERED: [&str; 7] = [
    "connection error",
    "Could not connect",
    "Connection refused",
    "Temporary failure resolving",
    "Could not resolve",
    "Connection timed out",
    "Failed to establish a new connection",
];

/// The failure `line` reports for one of `sources`, if it reports one.
pub fn recognise(line: &str, sources: &[Source]) -> Option<SourceFailure> {
    if sources.is_empty() || !FETCH_LINES.iter().any(|m| line.contains(m)) {
        return None;
    }
    let bare: Vec<String> = urls_in(line).map(without_userinfo).collect();
    // Below a source's URL first; else the same origin (pypiserver, devpi and Artifactory
    // serve the files outside the `/simple/` path the index URL names).
    let source = sources
        .iter()
        .find(|s| s.urls().any(|u| bare.iter().any(|b| belongs_to(b, u))))
        .or_else(|| {
            sources.iter().find(|s| {
                s.urls()
                    .any(|u| bare.iter().any(|b| origin(b) == origin(u)))
            })
        })?;
    if let Some(code) = status_in(line) {
        return Some(SourceFailure::Refused(source.name.clone(), code));
    }
    UNANSWERED
        .iter()
        .any(|m| line.contains(m))
        .then(|| SourceFailure::Unreachable(source.name.clone()))
}

/// `401` or `403` as a word of its own.
fn status_in(line: &str) -> Option<u16> {
    line.split(|c: char| !c.is_ascii_digit())
        .find_map(|word| match word {
            "401" => Some(401),
            "403" => Some(403),
            _ => None,
        })
        .filter(|_| {
            ["Unauthorized", "Forbidden", "Client Error", "HTTP error"]
                .iter()
                .any(|m| line.contains(m))
        })
}

fn urls_in(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '(' | ')' | '<' | '>'))
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|w| w.trim_end_matches([':', ',', ';', '.']))
}

fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// `scheme://host[:port]`.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    &url[..end]
}

/// Whether `url` is `base` or below it.
fn belongs_to(url: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    url.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::{AuthFiles, SourceKind};

    fn source(name: &str, url: &str) -> Source {
        Source {
            name: name.into(),
            kind: SourceKind::Pip,
            url: url.into(),
            extra_urls: vec![],
            auth: AuthFiles::None,
            default: false,
            apt: None,
        }
    }

    fn sources() -> Vec<Source> {
        vec![
            source("internal-pypi", "http://127.0.0.1:18081/simple/"),
            source("corp-apt", "http://127.0.0.1:18082/debian/"),
        ]
    }

    #[test]
    fn pip_and_apt_refusals_name_the_source() {
        let cases = [
            (
                "#9 1.2 2026-12-03T06:48:22,253 Could not fetch URL http://alice:****@127.0.0.1:18081/simple/kilnprivate/: 403 Client Error: Forbidden for url: http://127.0.0.1:18081/simple/kilnprivate/ - skipping",
                "internal-pypi",
                403,
            ),
            (
                "ERROR: HTTP error 401 while getting http://127.0.0.1:18081/packages/k-1.0-py3-none-any.whl",
                "internal-pypi",
                401,
            ),
            (
                "401 Client Error: Unauthorized for url: http://127.0.0.1:18081/packages/k.whl",
                "internal-pypi",
                401,
            ),
            (
                "#5 1.355 E: Failed to fetch http://127.0.0.1:18082/debian/dists/bookworm/InRelease  401  Unauthorized [IP: 127.0.0.1 18082]",
                "corp-apt",
                401,
            ),
        ];
        for (line, name, code) in cases {
            assert_eq!(
                recognise(line, &sources()),
                Some(SourceFailure::Refused(name.into(), code)),
                "{line}"
            );
        }
        assert_eq!(
            SourceFailure::Refused("internal-pypi".into(), 401).to_string(),
            "source internal-pypi refused the credential (HTTP 401)"
        );
    }

    #[test]
    fn unanswered_requests_are_transient() {
        let pip = "Could not fetch URL http://127.0.0.1:18081/simple/k/: connection error: HTTPConnectionPool(host='127.0.0.1', port=18081): Max retries exceeded (Caused by NewConnectionError('… [Errno 111] Connection refused')) - skipping";
        let apt = "W: Failed to fetch http://127.0.0.1:18082/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:18082 (127.0.0.1). - connect (111: Connection refused)";
        for line in [pip, apt] {
            let failure = recognise(line, &sources()).unwrap();
            assert!(failure.is_transient(), "{line}");
        }
        assert_eq!(
            SourceFailure::merge(
                Some(SourceFailure::Unreachable("a".into())),
                SourceFailure::Refused("b".into(), 401)
            ),
            SourceFailure::Refused("b".into(), 401)
        );
        assert_eq!(
            SourceFailure::merge(
                Some(SourceFailure::Refused("b".into(), 401)),
                SourceFailure::Unreachable("a".into())
            ),
            SourceFailure::Refused("b".into(), 401)
        );
    }

    #[test]
    fn other_hosts_and_other_lines_are_not_blamed_on_a_source() {
        for line in [
            "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  401  Unauthorized",
            "Could not fetch URL http://127.0.0.1:18083/simple/k/: 403 Client Error: Forbidden",
            "http://127.0.0.1:18081/simple/ 401 in an unrelated line",
            "Could not fetch URL http://127.0.0.1:18081/simple/k/: 404 Client Error: Not Found",
        ] {
            assert_eq!(recognise(line, &sources()), None, "{line}");
        }
    }
}
