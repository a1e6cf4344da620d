//! Pushing a tag to its registry, with a condensed per-layer log and the manifest digest.
//!
//! bollard's `push_image` decodes the Engine's messages into a type without the layer `id`,
//! so a condensed per-layer log is impossible with it. The push is sent through
//! `create_image` (whose message type keeps `id`) with the request path rewritten to the push
//! endpoint; should the rewrite ever not apply, the Engine gets a pull of an invalid
//! reference, which it rejects before any network access.

use super::auth::Credential;
use super::error::{EngineError, Op};
use super::headers::{credential_for, docker_credentials, url_safe_registry_headers};
use super::progress::{Drained, drain_progress};
use super::reference::{split_reference, valid_push_repo, valid_tag};
use super::{Engine, LogSink};
use bollard::BollardRequest;
use bollard::query_parameters::CreateImageOptionsBuilder;
use tokio_util::sync::CancellationToken;

/// The `fromImage` sent when a push travels as a create_image call: an invalid reference,
/// rejected by the Engine before any registry is contacted, should the path rewrite not apply.
const PUSH_PLACEHOLDER: &str = "kiln-push-path-rewrite-failed//invalid";

/// Replaces the request's path (and query) from `from` on with `to`; unchanged when `from`
/// is not in the URI.
fn rewrite_path(mut req: BollardRequest, from: &str, to: &str) -> BollardRequest {
    if let Some(uri) = rewrite_uri(&req.uri().to_string(), from, to)
        && let Ok(uri) = uri.parse()
    {
        *req.uri_mut() = uri;
    }
    req
}

fn rewrite_uri(uri: &str, from: &str, to: &str) -> Option<String> {
    let authority_end = uri.find("://").map(|i| i + 3)?;
    let path_start = authority_end + uri[authority_end..].find('/')?;
    let at = path_start + uri[path_start..].find(from)?;
    Some(format!("{}{}", &uri[..at], to))
}

impl Engine {
    /// Pushes `image_ref` (`repo[:tag]`, default `latest`) with `auth`, and returns the
    /// manifest digest `sha256:…` the registry stored.
    ///
    /// The log gets "The push refers to repository […]", one line per layer when it is pushed,
    /// already exists, or is mounted (e.g. "pushed layer 1a2b3c4d5e6f (12.3 MB)"), and the
    /// final "tag: digest: sha256:… size: N" line.
    pub async fn push(
        &self,
        image_ref: &str,
        auth: Option<&Credential>,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, EngineError> {
        let failed = |message: String| EngineError::PushFailed {
            image: image_ref.to_string(),
            message,
        };
        if image_ref.contains('@') {
            return Err(failed(
                "a digest reference cannot be pushed; give repo:tag".into(),
            ));
        }
        let (repo, tag) = split_reference(image_ref);
        if !valid_push_repo(repo) || !valid_tag(&tag) {
            return Err(failed("not a valid image reference".into()));
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        // bollard's push_image drops each message's layer `id`; create_image's message type
        // keeps it. So the push goes out as a create_image call whose path is rewritten to
        // the push endpoint. Should the rewrite ever not apply, the Engine gets a pull of an
        // invalid reference, which it rejects before any network access.
        let push_path = format!("/images/{repo}/push?tag={tag}");
        let docker = self.docker.clone().with_request_modifier(move |req| {
            url_safe_registry_headers(rewrite_path(req, "/images/create", &push_path))
        });
        let options = CreateImageOptionsBuilder::default()
            .from_image(PUSH_PLACEHOLDER)
            .tag("kiln")
            .build();
        let auth = credential_for(image_ref, auth, log);
        // The Engine wants an X-Registry-Auth header on every push, even an empty one.
        let credentials = Some(auth.map(docker_credentials).unwrap_or_default());
        let stream = docker.create_image(Some(options), None, credentials);
        match drain_progress(stream, log, auth, cancel).await {
            Drained::Done(Some(digest)) => Ok(digest),
            Drained::Done(None) => Err(failed(
                "the push ended without a manifest digest (the Engine reported no error)".into(),
            )),
            Drained::Failed(e) => Err(self.map_err(e, Op::Push { image: image_ref }, auth)),
            Drained::Cancelled => Err(EngineError::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::headers::tests::request;
    use bollard::{API_DEFAULT_VERSION, Docker};
    use futures_util::StreamExt;
    use std::sync::{Arc, Mutex};

    #[test]
    fn push_path_rewrite() {
        let hex_host = "unix://2f7661722f72756e2f646f636b65722e736f636b";
        assert_eq!(
            rewrite_uri(
                &format!("{hex_host}/images/create?fromImage=p&tag=kiln"),
                "/images/create",
                "/images/127.0.0.1:5000/kiln/x/push?tag=r1"
            )
            .as_deref(),
            Some(format!("{hex_host}/images/127.0.0.1:5000/kiln/x/push?tag=r1").as_str())
        );
        assert_eq!(
            rewrite_uri(
                "http://127.0.0.1:2375/v1.41/images/create?fromImage=p",
                "/images/create",
                "/images/a/push?tag=b"
            )
            .as_deref(),
            Some("http://127.0.0.1:2375/v1.41/images/a/push?tag=b")
        );
        assert_eq!(
            rewrite_uri("http://h/containers/create", "/images/create", "/x"),
            None
        );
        let req = request(&format!("{hex_host}/images/create?fromImage=p"));
        let req = rewrite_path(
            req,
            "/images/create",
            "/images/127.0.0.1:5000/kiln/x/push?tag=r1",
        );
        assert_eq!(req.uri().path(), "/images/127.0.0.1:5000/kiln/x/push");
        assert_eq!(req.uri().query(), Some("tag=r1"));
    }

    /// The push rewrite relies on how bollard spells a create_image request; this pins it for
    /// the bollard version in use (and shows the unversioned path).
    #[tokio::test]
    async fn bollard_create_image_uri_is_what_the_push_rewrite_expects() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = seen.clone();
        let docker = Docker::connect_with_http("tcp://127.0.0.1:1", 2, API_DEFAULT_VERSION)
            .unwrap()
            .with_request_modifier(move |req| {
                sink.lock().unwrap().push(req.uri().to_string());
                req
            });
        let options = CreateImageOptionsBuilder::default()
            .from_image(PUSH_PLACEHOLDER)
            .tag("kiln")
            .build();
        let mut stream = docker.create_image(Some(options), None, None);
        assert!(
            stream.next().await.unwrap().is_err(),
            "nothing listens on port 1"
        );
        let uri = seen.lock().unwrap()[0].clone();
        assert!(
            uri.starts_with("http://127.0.0.1:1/images/create?"),
            "{uri}"
        );
        assert_eq!(
            rewrite_uri(&uri, "/images/create", "/images/r/x/push?tag=t").as_deref(),
            Some("http://127.0.0.1:1/images/r/x/push?tag=t")
        );
    }
}
