//! Where the repository lives, and how to talk about a URL without leaking its credentials.
//!
//! Users may configure `https://user:token@host/org/specs.git`. The URL itself is needed to
//! fetch, but it must never reach a log line, an error message, the dashboard or a file Kiln
//! writes. Everything in this module that turns a location into text goes through [`redact`].

use std::fmt;
use std::path::PathBuf;

/// Where the specs repository lives, as configured.
///
/// A local repository is read in place (and can be watched for changes); a remote one is
/// mirrored into Kiln's data directory and fetched (see [`super::Repo::open`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoLocation {
    /// A repository on this machine: a work tree, its `.git` directory, or a bare repository.
    Local(PathBuf),
    /// A URL that libgit2 can fetch from: `file://`, `https://`, `http://`, `ssh://`, `git://`
    /// or the scp-like `user@host:path`. May hold credentials; display it only through
    /// [`RepoLocation`]'s `Display`, which redacts them.
    Remote(String),
}

impl RepoLocation {
    /// Classifies a configured repository string.
    ///
    /// `scheme://…` (any URL scheme: `file`, `https`, `http`, `ssh`, `git`, …) and the scp-like
    /// `user@host:path` form are [`RepoLocation::Remote`]; everything else is a local path.
    /// An unknown scheme is still treated as remote so that the error comes from the fetch
    /// ("unsupported URL protocol") rather than from a confusing "no such directory".
    /// A local path is taken as given (no `~` expansion, no search upwards).
    pub fn parse(s: &str) -> RepoLocation {
        if has_url_scheme(s) || is_scp_like(s) {
            RepoLocation::Remote(s.to_string())
        } else {
            RepoLocation::Local(PathBuf::from(s))
        }
    }

    /// True for [`RepoLocation::Remote`].
    pub fn is_remote(&self) -> bool {
        matches!(self, RepoLocation::Remote(_))
    }
}

/// Local paths as they are; URLs with their credentials replaced by `***`.
impl fmt::Display for RepoLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoLocation::Local(path) => write!(f, "{}", path.display()),
            RepoLocation::Remote(url) => f.write_str(&redact(url)),
        }
    }
}

/// `scheme://` with an RFC 3986 scheme (a letter, then letters, digits, `+`, `-`, `.`).
fn has_url_scheme(s: &str) -> bool {
    let Some(pos) = s.find("://") else {
        return false;
    };
    let scheme = &s[..pos];
    let mut chars = scheme.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// git's scp-like syntax `user@host:path`: a `:` before any `/`, with a user part. The user
/// part is required so that a local name containing a colon stays a path.
fn is_scp_like(s: &str) -> bool {
    let Some(colon) = s.find(':') else {
        return false;
    };
    let before = &s[..colon];
    if before.contains('/') || before.contains('\\') {
        return false;
    }
    match before.split_once('@') {
        Some((user, host)) => !user.is_empty() && !host.is_empty(),
        None => false,
    }
}

/// Replaces credentials in every `scheme://userinfo@host` found in `text`.
///
/// For `http`/`https` the whole userinfo is a secret (`https://TOKEN@host` is a common way to
/// pass a token), so it becomes `***`; for other schemes a bare user name (`ssh://git@host`)
/// is kept, and `user:password` becomes `***`. The userinfo is taken to end at the *last* `@`
/// of the whitespace-delimited token, so an unescaped `/` or `#` inside a password is still
/// covered; a path containing `@` is over-redacted, which is the safe direction.
pub fn redact(text: &str) -> String {
    rewrite_userinfo(text, |scheme, userinfo| {
        if is_http(scheme) || userinfo.contains(':') {
            Some("***".to_string())
        } else {
            Some(userinfo.to_string())
        }
    })
}

/// `url` with any credentials removed entirely (same rule as [`redact`]), suitable for
/// writing into the mirror's git config: the URL stays usable by a human who brings their own
/// credentials, and no secret is written to disk.
pub(crate) fn strip_credentials(url: &str) -> String {
    rewrite_userinfo(url, |scheme, userinfo| {
        if is_http(scheme) || userinfo.contains(':') {
            None
        } else {
            Some(userinfo.to_string())
        }
    })
}

fn is_http(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
}

/// Finds each `scheme://userinfo@` in `text` and replaces `userinfo@` by `new@` (or drops it
/// when `replace` returns `None`).
fn rewrite_userinfo(text: &str, replace: impl Fn(&str, &str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        // The scheme is the run of scheme characters right before "://".
        let scheme_start = head[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = &head[scheme_start..pos];
        out.push_str(head);
        let token_end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '<' | '>' | '`'))
            .unwrap_or(tail.len());
        let token = &tail[..token_end];
        let rest_start = match token.rfind('@') {
            Some(at) => {
                if let Some(new) = replace(scheme, &token[..at]) {
                    out.push_str(&new);
                    out.push('@');
                }
                at + 1
            }
            None => 0,
        };
        rest = &tail[rest_start..];
        // Copy the rest of the token (host and path) verbatim so that a "://" inside it is
        // not taken for a second URL.
        let copy_end = token_end - rest_start;
        out.push_str(&rest[..copy_end]);
        rest = &rest[copy_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_classifies_urls_scp_and_paths() {
        for remote in [
            "file:///srv/specs.git",
            "https://github.com/org/specs.git",
            "http://git.local/specs",
            "ssh://git@host:2222/org/specs.git",
            "git://host/specs",
            "git@github.com:org/specs.git",
            "deploy@git.example.com:specs",
        ] {
            assert!(
                RepoLocation::parse(remote).is_remote(),
                "{remote} should be remote"
            );
        }
        for local in [
            "/srv/specs",
            "./specs",
            "specs",
            "C:\\repos\\specs",
            "/tmp/a:b",
            "dir/user@host:x",
            ":odd",
        ] {
            assert_eq!(
                RepoLocation::parse(local),
                RepoLocation::Local(PathBuf::from(local)),
                "{local} should be local"
            );
        }
    }

    #[test]
    fn redact_hides_credentials_everywhere() {
        assert_eq!(
            redact("https://user:s3cret@host/org/r.git"),
            "https://***@host/org/r.git"
        );
        assert_eq!(
            redact("https://ghp_TOKEN@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(
            redact("failed to connect to 'https://u:p@h:1/x': refused; retry http://a:b@c/"),
            "failed to connect to 'https://***@h:1/x': refused; retry http://***@c/"
        );
        // A password with an unescaped '/' or '#' is still covered.
        assert_eq!(redact("https://u:pa/ss#w@h/r"), "https://***@h/r");
        assert_eq!(redact("ssh://git@host/r.git"), "ssh://git@host/r.git");
        assert_eq!(redact("ssh://git:pw@host/r.git"), "ssh://***@host/r.git");
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("file:///srv/x.git"), "file:///srv/x.git");
        assert_eq!(
            RepoLocation::parse("https://a:b@h/r").to_string(),
            "https://***@h/r"
        );
    }

    #[test]
    fn strip_credentials_removes_userinfo() {
        assert_eq!(
            strip_credentials("https://user:s3cret@host/r.git"),
            "https://host/r.git"
        );
        assert_eq!(strip_credentials("https://TOKEN@host/r"), "https://host/r");
        assert_eq!(strip_credentials("ssh://git@host/r"), "ssh://git@host/r");
        assert_eq!(strip_credentials("ssh://git:pw@host/r"), "ssh://host/r");
        assert_eq!(strip_credentials("git@host:r.git"), "git@host:r.git");
    }
}
