//! The one redaction function: what is stored of a job's log and error never shows a
//! credential or a URL's userinfo.
//!
//! pip and apt print URLs in their errors (pip masks the password as `****` but keeps the
//! user name; apt prints what it was given), and any tool may echo a value it read. So every
//! line is cleaned twice before it is stored: each known secret value of the job (and its
//! percent-encoded form) becomes `***`, and the userinfo of every `scheme://user:pass@host`
//! becomes `***@`. The second rule needs no knowledge of the job, so it also covers URLs
//! whose credential Kiln never saw.

use std::borrow::Cow;

/// What replaces a secret.
pub const MASK: &str = "***";

/// `line` without any of `secrets` and without URL userinfo.
pub fn redact<'a>(line: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out: Cow<'a, str> = Cow::Borrowed(line);
    // Longest first, so a secret that contains another is masked whole. A job's list is kept
    // in that order ([`by_length`]), so a log line costs no sorting; any other list is sorted
    // here.
    let owned_order;
    let ordered: &[String] = if secrets.is_sorted_by_key(|s| std::cmp::Reverse(s.len())) {
        secrets
    } else {
        owned_order = by_length(secrets.to_vec());
        &owned_order
    };
    for secret in ordered.iter().filter(|s| !s.is_empty()) {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    match strip_userinfo(&out) {
        Some(stripped) => Cow::Owned(stripped),
        None => out,
    }
}

/// `secrets` longest first, each once: the order [`redact`] masks them in.
pub fn by_length(mut secrets: Vec<String>) -> Vec<String> {
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

/// `Some(text)` with every URL's userinfo masked, `None` when there was none. Not
/// `repo::redact`: that one keeps an ssh user (`git@host`) and takes a token's last `@`
/// (a typed password may hold `/`), while a log line needs every scheme's userinfo masked and
/// an `@` past the authority (`?q=a@b`, `pkg@1.0`) left alone.
fn strip_userinfo(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, query, fragment, whitespace or a quote.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | ')') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) if authority[..at] != *MASK => {
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(line: &str, secrets: &[&str]) -> String {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        redact(line, &secrets).into_owned()
    }

    #[test]
    fn userinfo_is_masked_in_every_url() {
        assert_eq!(
            r(
                "Looking in indexes: http://alice:****@127.0.0.1:8081/simple/",
                &[]
            ),
            "Looking in indexes: http://***@127.0.0.1:8081/simple/"
        );
        assert_eq!(
            r("a https://u:p@x/y and 'ftp://t@h' end", &[]),
            "a https://***@x/y and 'ftp://***@h' end"
        );
        assert_eq!(
            r("https://x/?q=a@b", &[]),
            "https://x/?q=a@b",
            "@ after the path"
        );
        assert_eq!(r("no url: a@b", &[]), "no url: a@b");
        assert_eq!(r("scheme://host:1", &[]), "scheme://host:1");
        assert!(matches!(redact("plain line", &[]), Cow::Borrowed(_)));
    }

    #[test]
    fn known_values_are_masked_anywhere() {
        assert_eq!(
            r(
                "password Ap7:pass and Ap7%3Apass",
                &["Ap7:pass", "Ap7%3Apass"]
            ),
            "password *** and ***"
        );
        assert_eq!(
            r("tok tok-123-long", &["tok-123", "tok-123-long"]),
            "tok ***"
        );
        assert_eq!(
            r(
                "E: Failed to fetch http://deb:s3cret@127.0.0.1:1/x  401  Unauthorized",
                &["s3cret"]
            ),
            "E: Failed to fetch http://***@127.0.0.1:1/x  401  Unauthorized"
        );
        assert_eq!(r("x", &[""]), "x", "an empty value masks nothing");
    }
}
