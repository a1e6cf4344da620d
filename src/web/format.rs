//! How the dashboard writes times, durations, counts and URL parts. Shared by the pages and
//! by the spec index (which computes each row's strings once per rebuild), so it sits beside
//! both instead of inside either.

use crate::model::{Timestamp, now};
use std::fmt::Write as _;
use time::OffsetDateTime;

/// A point in time, three ways.
pub struct When {
    /// RFC 3339, for `<time datetime>` (the script keeps the relative text current).
    pub iso: String,
    /// `2026-11-23 15:39:34 UTC`, shown on hover.
    pub exact: String,
    /// `5 min ago`.
    pub rel: String,
}

impl When {
    pub fn at(ts: Timestamp) -> When {
        When::at_now(ts, now())
    }

    pub fn at_now(ts: Timestamp, now: Timestamp) -> When {
        let t = OffsetDateTime::from_unix_timestamp(ts).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let exact = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        When {
            iso: crate::model::rfc3339(ts),
            rel: relative(now - ts, &exact),
            exact,
        }
    }
}

/// `just now`, `42 s ago`, `5 min ago`, `3 h ago`, `2 days ago`, then the date.
pub fn relative(ago: i64, exact: &str) -> String {
    match ago {
        i64::MIN..=-60 => exact[..10].to_string(),
        -59..=4 => "just now".into(),
        5..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        86_400..=2_591_999 => {
            let d = ago / 86_400;
            format!("{d} day{} ago", if d == 1 { "" } else { "s" })
        }
        _ => exact[..10].to_string(),
    }
}

/// `1 h 2 min`, `3 min 4 s`, `12 s`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// `10,000`
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Percent-encode for a URL query value or path segment.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The first 7 characters of a commit SHA.
pub fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_and_numbers() {
        let w = When::at_now(1_700_000_000, 1_700_000_000 + 125);
        assert_eq!(w.rel, "2 min ago");
        assert_eq!(w.exact, "2023-11-14 22:13:20 UTC");
        assert_eq!(When::at_now(0, 2).rel, "just now");
        assert_eq!(When::at_now(0, 86_400 * 3).rel, "3 days ago");
        assert_eq!(When::at_now(0, 86_400 * 40).rel, "1970-01-01");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(duration(3725), "1 h 2 min");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(short("0123456789"), "0123456");
    }
}
