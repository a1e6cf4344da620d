//! Pull and push progress: thousands of Engine messages condensed into one line per layer.
//!
//! Shared by pull and push (and the pull of a `FROM` image inside a build). Also reads the
//! manifest digest from a push's final status line.

use super::LogSink;
use super::auth::Credential;
use super::error::redact;
use bollard::errors::Error as BollardError;
use bollard::models::CreateImageInfo;
use futures_util::StreamExt;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// How a streamed Engine answer ended.
#[derive(Debug)]
pub(super) enum Drained<T> {
    /// The stream ended without an error.
    Done(T),
    /// An HTTP error before the stream, an `errorDetail` inside it, or a broken connection.
    Failed(BollardError),
    /// The token fired; the stream (and with it the connection) has been dropped.
    Cancelled,
}

/// Reads a pull's or push's progress to its end, condensed into `log`; returns the manifest
/// digest of a push's final "<tag>: digest: sha256:… size: N" status, if one came.
pub(super) async fn drain_progress<S>(
    stream: S,
    log: &mut dyn LogSink,
    auth: Option<&Credential>,
    cancel: &CancellationToken,
) -> Drained<Option<String>>
where
    S: futures_util::Stream<Item = Result<CreateImageInfo, BollardError>>,
{
    let mut stream = Box::pin(stream);
    let mut progress = ProgressCondenser::default();
    let mut digest: Option<String> = None;
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Drained::Cancelled,
            item = async {
                log.ready().await;
                stream.next().await
            } => item,
        };
        match item {
            None => return Drained::Done(digest),
            Some(Ok(info)) => {
                if info.error_detail.is_some() {
                    return Drained::Failed(BollardError::DockerStreamError {
                        error: "the Engine reported an error without a message".into(),
                    });
                }
                let Some(status) = info.status.as_deref() else {
                    continue;
                };
                if info.id.is_none()
                    && let Some(d) = parse_push_digest(status)
                {
                    digest = Some(d);
                }
                let total = info.progress_detail.as_ref().and_then(|d| d.total);
                if let Some(line) = progress.update(info.id.as_deref(), status, total) {
                    log.line(redact(line, auth));
                }
            }
            Some(Err(e)) => return Drained::Failed(e),
        }
    }
}

/// Condenses pull/push progress messages: per layer, one line when it is done (or already
/// there), nothing for the thousands of progress updates in between.
#[derive(Debug, Default)]
pub(super) struct ProgressCondenser {
    sizes: HashMap<String, i64>,
    last: HashMap<String, String>,
}

impl ProgressCondenser {
    /// One message (`id` = layer or tag, `status`, `total` bytes from progressDetail); the
    /// line to log, if any.
    pub(crate) fn update(
        &mut self,
        id: Option<&str>,
        status: &str,
        total: Option<i64>,
    ) -> Option<String> {
        let status = status.trim();
        let Some(id) = id.map(str::trim).filter(|i| !i.is_empty()) else {
            return (!status.is_empty()).then(|| status.to_string());
        };
        if let Some(total) = total.filter(|t| *t > 0)
            && matches!(status, "Pushing" | "Downloading")
        {
            self.sizes.insert(id.to_string(), total);
        }
        let previous = self.last.insert(id.to_string(), status.to_string());
        let size = || {
            self.sizes
                .get(id)
                .map(|s| format!(" ({})", human_size(*s)))
                .unwrap_or_default()
        };
        match status {
            "Preparing" | "Waiting" | "Pushing" | "Downloading" | "Pulling fs layer"
            | "Verifying Checksum" | "Download complete" | "Extracting" => None,
            "Pushed" => Some(format!("pushed layer {id}{}", size())),
            "Pull complete" => Some(format!("pulled layer {id}{}", size())),
            "Layer already exists" => Some(format!("layer {id} already exists in the registry")),
            "Already exists" => Some(format!("layer {id} already exists locally")),
            s if s.starts_with("Mounted from") => {
                Some(format!("layer {id} {}", lowercase_first(s)))
            }
            s if s.starts_with("Retrying in") => {
                // "Retrying in 5 seconds", "… 4 seconds", …: once per round.
                let repeat = previous.is_some_and(|p| p.starts_with("Retrying in"));
                (!repeat).then(|| format!("layer {id}: {s}"))
            }
            s if previous.as_deref() == Some(s) => None,
            s => Some(format!("{id}: {s}")),
        }
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Decimal size as Docker prints it: `512 B`, `3.4 kB`, `12.3 MB`, `1.2 GB`.
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The manifest digest in a push's final status, `"<tag>: digest: sha256:<64 hex> size: N"`.
fn parse_push_digest(status: &str) -> Option<String> {
    let at = status.find("digest: ")? + "digest: ".len();
    let candidate = status[at..].split_whitespace().next()?;
    let hex = candidate.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| candidate.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::error::{Op, map_bollard_error};
    use crate::docker::lines::tests::collect;

    #[test]
    fn push_progress_is_condensed_to_one_line_per_layer() {
        let mut c = ProgressCondenser::default();
        let mut out = Vec::new();
        let mut feed = |id: Option<&str>, status: &str, total: Option<i64>| {
            if let Some(line) = c.update(id, status, total) {
                out.push(line);
            }
        };
        feed(
            None,
            "The push refers to repository [127.0.0.1:5000/kiln/x]",
            None,
        );
        for layer in ["1a2b3c4d5e6f", "aaaaaaaaaaaa", "bbbbbbbbbbbb"] {
            feed(Some(layer), "Preparing", None);
            feed(Some(layer), "Waiting", None);
        }
        for i in 0..1000 {
            feed(Some("1a2b3c4d5e6f"), "Pushing", Some(12_300_000));
            feed(
                Some("bbbbbbbbbbbb"),
                "Pushing",
                if i == 0 { None } else { Some(512) },
            );
        }
        feed(Some("aaaaaaaaaaaa"), "Layer already exists", None);
        feed(Some("1a2b3c4d5e6f"), "Pushed", None);
        feed(Some("bbbbbbbbbbbb"), "Retrying in 5 seconds", None);
        feed(Some("bbbbbbbbbbbb"), "Retrying in 4 seconds", None);
        feed(Some("bbbbbbbbbbbb"), "Pushing", Some(512));
        feed(Some("bbbbbbbbbbbb"), "Pushed", None);
        feed(Some("cccccccccccc"), "Mounted from kiln/base", None);
        feed(None, "r1-abc1234: digest: sha256:aa size: 1234", None);
        assert_eq!(
            out,
            [
                "The push refers to repository [127.0.0.1:5000/kiln/x]",
                "layer aaaaaaaaaaaa already exists in the registry",
                "pushed layer 1a2b3c4d5e6f (12.3 MB)",
                "layer bbbbbbbbbbbb: Retrying in 5 seconds",
                "pushed layer bbbbbbbbbbbb (512 B)",
                "layer cccccccccccc mounted from kiln/base",
                "r1-abc1234: digest: sha256:aa size: 1234",
            ]
        );
    }

    #[test]
    fn pull_progress_is_condensed() {
        let mut c = ProgressCondenser::default();
        let lines: Vec<String> = [
            (Some("minbase"), "Pulling from kiln/bookworm", None),
            (Some("abc"), "Pulling fs layer", None),
            (Some("abc"), "Downloading", Some(45_600_000)),
            (Some("abc"), "Downloading", Some(45_600_000)),
            (Some("abc"), "Verifying Checksum", None),
            (Some("abc"), "Download complete", None),
            (Some("abc"), "Extracting", Some(45_600_000)),
            (Some("abc"), "Pull complete", None),
            (Some("def"), "Already exists", None),
            (None, "Digest: sha256:0123", None),
            (
                None,
                "Status: Downloaded newer image for 127.0.0.1:5000/kiln/bookworm:minbase",
                None,
            ),
        ]
        .into_iter()
        .filter_map(|(id, status, total)| c.update(id, status, total))
        .collect();
        assert_eq!(
            lines,
            [
                "minbase: Pulling from kiln/bookworm",
                "pulled layer abc (45.6 MB)",
                "layer def already exists locally",
                "Digest: sha256:0123",
                "Status: Downloaded newer image for 127.0.0.1:5000/kiln/bookworm:minbase",
            ]
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "1.0 kB");
        assert_eq!(human_size(12_345_678), "12.3 MB");
        assert_eq!(human_size(3_200_000_000), "3.2 GB");
    }

    #[test]
    fn push_digest_is_parsed_from_the_final_status() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            parse_push_digest(&format!("r1-abc1234: digest: sha256:{hex} size: 528")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            parse_push_digest(&format!("latest: digest: sha256:{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(parse_push_digest("Digest: sha256:abc"), None);
        assert_eq!(parse_push_digest("The push refers to repository [x]"), None);
        assert_eq!(
            parse_push_digest(&format!("t: digest: sha256:{} size: 1", &hex[1..])),
            None
        );
        assert_eq!(
            parse_push_digest(&format!("t: digest: sha512:{hex} size: 1")),
            None
        );
    }

    #[tokio::test]
    async fn push_stream_gives_digest_and_condensed_lines() {
        let hex = "ab".repeat(32);
        let json = [
            r#"{"status":"The push refers to repository [127.0.0.1:5000/kiln/x]"}"#.to_string(),
            r#"{"status":"Preparing","progressDetail":{},"id":"1a2b3c4d5e6f"}"#.into(),
            r#"{"status":"Pushing","progressDetail":{"current":512,"total":12300000},"id":"1a2b3c4d5e6f"}"#.into(),
            r#"{"status":"Pushed","progressDetail":{},"id":"1a2b3c4d5e6f"}"#.into(),
            format!(r#"{{"status":"r1: digest: sha256:{hex} size: 528"}}"#),
            format!(r#"{{"progressDetail":{{}},"aux":{{"Tag":"r1","Digest":"sha256:{hex}","Size":528}}}}"#),
        ];
        let items: Vec<Result<CreateImageInfo, BollardError>> = json
            .iter()
            .map(|l| Ok(serde_json::from_str(l).unwrap()))
            .collect();
        let (lines, mut sink) = collect();
        let drained = drain_progress(
            futures_util::stream::iter(items),
            &mut sink,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Done(digest) = drained else {
            panic!("{drained:?}")
        };
        assert_eq!(digest, Some(format!("sha256:{hex}")));
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "The push refers to repository [127.0.0.1:5000/kiln/x]".to_string(),
                "pushed layer 1a2b3c4d5e6f (12.3 MB)".into(),
                format!("r1: digest: sha256:{hex} size: 528"),
            ]
        );
        // A push error in the stream carries the registry's text.
        let items: Vec<Result<CreateImageInfo, BollardError>> =
            vec![Err(BollardError::DockerStreamError {
                error: "unauthorized: authentication required".into(),
            })];
        let drained = drain_progress(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Failed(e) = drained else {
            panic!("{drained:?}")
        };
        let err = map_bollard_error(
            "unix:///s",
            e,
            Op::Push {
                image: "127.0.0.1:5001/x:t",
            },
            None,
        );
        assert_eq!(
            err.to_string(),
            "registry 127.0.0.1:5001 refused access: unauthorized: authentication required"
        );
    }
}
