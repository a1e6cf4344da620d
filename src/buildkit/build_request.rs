//! The Engine's `/build` request as Kiln sends it itself, and its answer read back.
//!
//! bollard's `build_image` always opens a session of its own for a BuildKit build, and two
//! sessions of one id would race in the Engine's session manager; a build whose session
//! serves secrets (`session_server.rs`) therefore sends `/build` itself. The query carries
//! what Kiln set through bollard's options before: `version=2` (BuildKit) and `session`, `t`,
//! `dockerfile`, `buildargs` / `labels` (JSON objects), `networkmode`, `cachefrom` (a JSON
//! array), `rm` and `forcerm`. The body is the context tar. No `X-Registry-Config` header
//! goes with it: BuildKit asks the session for credentials, host by host.
//!
//! The answer is the Engine's JSON-lines stream; each line is a `bollard::models::BuildInfo`
//! (its `aux` is BuildKit's `StatusResponse`, or the image id at the end), so
//! `progress.rs` reads it as it read bollard's stream. Chunks are not line aligned: bytes
//! wait in [`JsonLines`] until their newline comes.

use bollard::models::BuildInfo;
use std::collections::BTreeMap;

/// What goes into the query of one `/build`.
pub(crate) struct BuildQuery<'a> {
    pub(crate) session: &'a str,
    pub(crate) tag: &'a str,
    pub(crate) build_args: &'a BTreeMap<String, String>,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) network: Option<&'a str>,
    pub(crate) cache_from: &'a [String],
}

impl BuildQuery<'_> {
    /// The path and query of the request, `/build?…`.
    pub(crate) fn path(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("version", "2")
            .append_pair("session", self.session)
            .append_pair("t", self.tag)
            .append_pair("dockerfile", "Dockerfile")
            .append_pair("rm", "1")
            .append_pair("forcerm", "1")
            .append_pair("buildargs", &json(self.build_args))
            .append_pair("labels", &json(self.labels));
        if let Some(network) = self.network {
            q.append_pair("networkmode", network);
        }
        if !self.cache_from.is_empty() {
            q.append_pair("cachefrom", &json(self.cache_from));
        }
        format!("/build?{}", q.finish())
    }
}

/// serde_json of the shapes the query holds: a map of strings or a list of strings, which
/// cannot fail to serialize.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The Engine's words from an error body (`{"message": "…"}`), else the body as text.
pub(crate) fn engine_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

/// One line of the answer: the build message, and its error (the Engine writes a failure
/// as `error` beside `errorDetail`; `BuildInfo` keeps only the second).
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) info: BuildInfo,
    pub(crate) error: Option<String>,
}

/// Whole JSON lines out of unaligned chunks.
#[derive(Default)]
pub(crate) struct JsonLines {
    pending: Vec<u8>,
}

impl JsonLines {
    /// The messages completed by `chunk`.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<Result<Message, String>> {
        self.pending.extend_from_slice(chunk);
        let Some(last_newline) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.pending.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.pending, rest);
        complete.split(|b| *b == b'\n').filter_map(decode).collect()
    }

    /// A last message without its newline, when the stream ends.
    pub(crate) fn finish(&mut self) -> Option<Result<Message, String>> {
        let rest = std::mem::take(&mut self.pending);
        decode(&rest)
    }
}

fn decode(line: &[u8]) -> Option<Result<Message, String>> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Error {
        error: Option<String>,
    }
    let unreadable = |e: serde_json::Error| {
        format!(
            "the Engine sent a build message Kiln cannot read ({e}): {}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        )
    };
    let info: BuildInfo = match serde_json::from_slice(line) {
        Ok(info) => info,
        Err(e) => return Some(Err(unreadable(e))),
    };
    let error = serde_json::from_slice::<Error>(line)
        .ok()
        .and_then(|e| e.error)
        .or_else(|| info.error_detail.as_ref().and_then(|d| d.message.clone()));
    Some(Ok(Message { info, error }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{BuildInfoAux, ImageId};

    fn query_of(path: &str) -> Vec<(String, String)> {
        let (_, query) = path.split_once('?').unwrap();
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn the_query_carries_every_option_kiln_sets() {
        let args = BTreeMap::from([
            ("BUILDKIT_INLINE_CACHE".to_string(), "1".to_string()),
            ("A".to_string(), "x y&z".to_string()),
        ]);
        let labels = BTreeMap::from([("io.kiln.job".to_string(), "7".to_string())]);
        let cache = ["127.0.0.1:5000/kiln/a:latest".to_string()];
        let path = BuildQuery {
            session: "kiln-1-2-3",
            tag: "127.0.0.1:5000/kiln/a:r1-abc",
            build_args: &args,
            labels: &labels,
            network: Some("host"),
            cache_from: &cache,
        }
        .path();
        assert!(
            path.starts_with("/build?version=2&session=kiln-1-2-3&"),
            "{path}"
        );
        let q = query_of(&path);
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("t"), Some("127.0.0.1:5000/kiln/a:r1-abc"));
        assert_eq!(get("dockerfile"), Some("Dockerfile"));
        assert_eq!(get("rm"), Some("1"));
        assert_eq!(get("forcerm"), Some("1"));
        assert_eq!(get("networkmode"), Some("host"));
        assert_eq!(
            get("buildargs"),
            Some(r#"{"A":"x y&z","BUILDKIT_INLINE_CACHE":"1"}"#)
        );
        assert_eq!(get("labels"), Some(r#"{"io.kiln.job":"7"}"#));
        assert_eq!(
            get("cachefrom"),
            Some(r#"["127.0.0.1:5000/kiln/a:latest"]"#)
        );

        let empty = BTreeMap::new();
        let path = BuildQuery {
            session: "s",
            tag: "t",
            build_args: &empty,
            labels: &empty,
            network: None,
            cache_from: &[],
        }
        .path();
        let q = query_of(&path);
        assert!(
            !q.iter()
                .any(|(k, _)| k == "networkmode" || k == "cachefrom"),
            "{q:?}"
        );
        assert!(q.contains(&("buildargs".into(), "{}".into())), "{q:?}");
    }

    #[test]
    fn lines_are_decoded_only_when_whole() {
        let mut lines = JsonLines::default();
        assert!(lines.push(br#"{"stream":"Step "#).is_empty());
        let got = lines.push(b"1\"}\r\n{\"aux\":{\"ID\":\"sha256:ab\"}}\n{\"err");
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].as_ref().unwrap().info.stream.as_deref(),
            Some("Step 1")
        );
        assert!(
            matches!(
                &got[1].as_ref().unwrap().info.aux,
                Some(BuildInfoAux::Default(ImageId { id: Some(id) })) if id == "sha256:ab"
            ),
            "{got:?}"
        );
        assert!(
            lines
                .push(br#"or":"boom","errorDetail":{"message":"boom"}}"#)
                .is_empty()
        );
        let last = lines.finish().unwrap().unwrap();
        assert_eq!(last.error.as_deref(), Some("boom"));
        assert!(lines.finish().is_none());
        let detail_only = lines.push(b"{\"errorDetail\":{\"message\":\"bad\"}}\n");
        assert_eq!(
            detail_only[0].as_ref().unwrap().error.as_deref(),
            Some("bad")
        );
        let bad = lines.push(b"not json\n");
        assert!(bad[0].as_ref().unwrap_err().contains("not json"), "{bad:?}");
    }

    #[test]
    fn buildkit_status_decodes_from_its_base64_aux() {
        use bollard::moby::buildkit::v1::{StatusResponse, Vertex};
        use prost::Message as _;
        let status = StatusResponse {
            vertexes: vec![Vertex {
                digest: "sha256:a".into(),
                name: "[1/2] FROM x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let aux = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            status.encode_to_vec(),
        );
        let line = format!("{{\"id\":\"moby.buildkit.trace\",\"aux\":\"{aux}\"}}\n");
        let got = JsonLines::default().push(line.as_bytes());
        match &got[0] {
            Ok(Message {
                info:
                    BuildInfo {
                        aux: Some(BuildInfoAux::BuildKit(s)),
                        ..
                    },
                error: None,
            }) => assert_eq!(s.vertexes[0].name, "[1/2] FROM x"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn engine_errors_are_read_from_their_json() {
        assert_eq!(
            engine_message(br#"{"message":"dockerfile parse error line 1"}"#),
            "dockerfile parse error line 1"
        );
        assert_eq!(engine_message(b" plain text \n"), "plain text");
    }
}
