//! Building a Dockerfile on the Engine: always with its embedded BuildKit.
//!
//! The classic builder is gone. Docker deprecated it (BuildKit is the default since Engine
//! 23), and it has none of what Kiln's Dockerfiles use: cache mounts for apt, pip and conda
//! (`RUN --mount=type=cache`), build secrets, cache export. Every Engine Kiln supports has
//! BuildKit (the API has carried it since Engine 18.09); [`crate::buildkit`] holds the build
//! itself, with the session that answers BuildKit's credential and secret requests. This file is the
//! Engine's side of it: a request in the Engine's terms, the registry credentials BuildKit
//! may ask for, and the spec's last image as the source of inline cache.

use super::auth::{Credential, registry_of};
use super::{Engine, EngineError, LogSink};
use crate::buildkit::{self, BuildSecret, BuildkitRequest};
use tokio_util::sync::CancellationToken;

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image id, `sha256:…`.
    pub image_id: String,
}

/// What to build. `Default` gives an empty request, so callers can write
/// `BuildRequest { dockerfile, tags, ..Default::default() }`.
#[derive(Clone, Copy, Default)]
pub struct BuildRequest<'a> {
    /// The Dockerfile text (the context holds it as `Dockerfile`).
    pub dockerfile: &'a str,
    /// A CA bundle, put into the context as [`crate::dockerfile::CA_BUNDLE_CONTEXT_NAME`].
    pub ca_bundle: Option<&'a [u8]>,
    /// Every tag to apply; the first is the build's `t`, the others are added after success.
    pub tags: &'a [String],
    /// Credential for the registry of the `FROM` image, handed to BuildKit through the
    /// session when it asks for that registry.
    pub pull_auth: Option<&'a Credential>,
    /// Network mode for `RUN` steps (`None`: the Engine's default bridge; `host` on machines
    /// where the bridge has no route out).
    pub network: Option<&'a str>,
    /// An image whose build cache this build may use (the spec's last pushed image, which
    /// carries its cache inline), with the credential of its registry.
    pub cache_from: Option<(&'a str, Option<&'a Credential>)>,
    /// Build secrets for `RUN --mount=type=secret,id=ID` steps, served by the build's session
    /// only (see [`crate::buildkit::BuildSecret`]).
    pub secrets: &'a [BuildSecret],
}

impl std::fmt::Debug for BuildRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("dockerfile_bytes", &self.dockerfile.len())
            .field("ca_bundle_bytes", &self.ca_bundle.map(<[u8]>::len))
            .field("tags", &self.tags)
            .field("pull_auth", &self.pull_auth)
            .field("network", &self.network)
            .field("cache_from", &self.cache_from)
            .field("secrets", &self.secrets)
            .finish()
    }
}

impl Engine {
    /// Builds `req` with the Engine's BuildKit; every line of its progress goes to `log`,
    /// with backpressure. The image writes its build cache inline, so a later build of the
    /// same spec on any Engine can take unchanged steps from the pushed image.
    pub async fn build(
        &self,
        req: &BuildRequest<'_>,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<BuiltImage, EngineError> {
        if let Some(c) = req.pull_auth
            && let Some(base) = crate::dockerfile::base_image(req.dockerfile)
            && c.registry() != registry_of(base)
        {
            // BuildKit asks for credentials by registry host: this one will not be asked for.
            log.line(format!(
                "note: the pull credential is for {} but the base image is on {}",
                c.registry(),
                registry_of(base)
            ));
        }
        let credentials = build_credentials(req);
        let cache_from: Vec<String> = req
            .cache_from
            .map(|(image, _)| image.to_string())
            .into_iter()
            .collect();
        let request = BuildkitRequest {
            dockerfile: req.dockerfile,
            ca_bundle: req.ca_bundle,
            tags: req.tags,
            credentials: &credentials,
            network: req.network,
            cache_from: &cache_from,
            inline_cache: true,
            secrets: req.secrets,
            ..BuildkitRequest::default()
        };
        buildkit::build_on(self.transport(), &request, log, cancel).await
    }
}

/// The credentials BuildKit may ask for: the base image's and the cache image's, one per
/// registry (the session answers each host with its own credential only).
fn build_credentials(req: &BuildRequest<'_>) -> Vec<Credential> {
    let mut credentials: Vec<Credential> = Vec::new();
    for c in req
        .pull_auth
        .into_iter()
        .chain(req.cache_from.and_then(|(_, auth)| auth))
    {
        if !credentials.iter().any(|k| k.registry() == c.registry()) {
            credentials.push(c.clone());
        }
    }
    credentials
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(registry: &str, user: &str) -> Credential {
        Credential::new(registry, user, "secret-password")
    }

    #[test]
    fn each_registry_gets_one_credential() {
        let base = credential("127.0.0.1:5001", "base");
        let same = credential("127.0.0.1:5001", "cache");
        let other = credential("127.0.0.1:5000", "cache");
        let req = BuildRequest {
            pull_auth: Some(&base),
            cache_from: Some(("127.0.0.1:5001/a:latest", Some(&same))),
            ..BuildRequest::default()
        };
        let got = build_credentials(&req);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].username(),
            "base",
            "the base image's credential wins"
        );
        let req = BuildRequest {
            pull_auth: Some(&base),
            cache_from: Some(("127.0.0.1:5000/a:latest", Some(&other))),
            ..BuildRequest::default()
        };
        assert_eq!(build_credentials(&req).len(), 2);
        assert!(build_credentials(&BuildRequest::default()).is_empty());
        assert!(!format!("{req:?}").contains("secret-password"));
    }
}
