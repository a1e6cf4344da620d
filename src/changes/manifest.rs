//! The compressed size of a pushed image, read from the registry's manifest: the sum of the
//! layer sizes plus the config blob's size (the bytes a `docker pull` transfers).
//!
//! Why here and not through the Engine: Engine 20.10 answers `docker image inspect` with the
//! unpacked size only, and its distribution endpoint returns the manifest's descriptor, not
//! the manifest. So Kiln asks the registry itself, through its one HTTP client
//! ([`crate::http_client`]), with the push credential: HTTP Basic, and when the registry
//! answers 401 with a `Bearer` challenge (Docker Hub, GHCR, Harbor), a token from the realm it
//! names for `repository:NAME:pull`. Scheme: `https`; a loopback registry (`localhost`,
//! `127.0.0.0/8`, `[::1]` — the Docker Engine's default insecure registries) is tried over
//! `https` first and then over plain `http`, so credentials never go unencrypted to another
//! host. The password never appears in an error.

use crate::docker::auth::Credential;
use crate::http_client::{ClientOptions, HttpClient, HttpError, body_text};
use reqwest::{Method, StatusCode, Url, header};
use serde::Deserialize;
use std::time::Duration;
use thiserror::Error;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.manifest.v1+json";
const TIMEOUT: Duration = Duration::from_secs(30);
/// A single-image manifest is a few KiB; anything far larger is not one.
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("`{0}` is not a registry/name:tag reference")]
    Reference(String),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("registry {registry} answered {status} for the manifest of {name}")]
    Status {
        registry: String,
        name: String,
        status: u16,
    },
    #[error("the manifest of {name} is not a single-image manifest: {message}")]
    Shape { name: String, message: String },
}

#[derive(Deserialize)]
struct Descriptor {
    size: u64,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The compressed size a single-image manifest describes.
pub fn compressed_size(manifest_json: &str) -> Result<u64, String> {
    let m: Manifest = serde_json::from_str(manifest_json).map_err(|e| e.to_string())?;
    m.layers
        .iter()
        .try_fold(m.config.size, |sum, l| sum.checked_add(l.size))
        .ok_or_else(|| "sizes overflow".to_string())
}

/// `registry/name:tag` → (`registry`, `name`). Docker Hub's API host is `registry-1.docker.io`.
pub fn split_reference(image: &str) -> Option<(String, String)> {
    let (host, rest) = image.split_once('/')?;
    let name = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => rest,
    };
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    if host.is_empty() || name.is_empty() {
        return None;
    }
    let host = if host == "docker.io" || host == "index.docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    Some((host.to_string(), name.to_string()))
}

fn is_loopback(host: &str) -> bool {
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The parameters of a `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` challenge.
pub fn bearer_challenge(value: &str) -> Option<Vec<(String, String)>> {
    let rest = value.trim().strip_prefix("Bearer ")?;
    let mut params = Vec::new();
    let mut chars = rest.trim();
    while !chars.is_empty() {
        let (key, after) = chars.split_once('=')?;
        let after = after.trim_start();
        let (val, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, t)| (v, t))
        };
        params.push((
            key.trim().trim_start_matches(',').trim().to_string(),
            val.to_string(),
        ));
        chars = tail.trim_start_matches([',', ' ']);
    }
    Some(params)
}

/// Reads the manifest `digest` of `image`'s repository and returns its compressed size.
pub async fn fetch_compressed_size(
    image: &str,
    digest: &str,
    credential: Option<&Credential>,
) -> Result<u64, ManifestError> {
    let (registry, name) =
        split_reference(image).ok_or_else(|| ManifestError::Reference(image.to_string()))?;
    let client = HttpClient::new(&ClientOptions {
        read_timeout: Some(TIMEOUT),
        ..ClientOptions::default()
    })?;
    let schemes: &[&str] = if is_loopback(&registry) {
        &["https", "http"]
    } else {
        &["https"]
    };
    let mut last = None;
    for scheme in schemes {
        match fetch_from(&client, scheme, &registry, &name, digest, credential).await {
            Ok(size) => return Ok(size),
            Err(
                e @ ManifestError::Http(HttpError::Connect { .. } | HttpError::Transfer { .. }),
            ) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ManifestError::Reference(image.to_string())))
}

async fn fetch_from(
    client: &HttpClient,
    scheme: &str,
    registry: &str,
    name: &str,
    digest: &str,
    credential: Option<&Credential>,
) -> Result<u64, ManifestError> {
    let bad = || ManifestError::Reference(format!("{registry}/{name}@{digest}"));
    let url = Url::parse(&format!(
        "{scheme}://{registry}/v2/{name}/manifests/{digest}"
    ))
    .map_err(|_| bad())?;
    let basic = |req: reqwest::RequestBuilder| match credential {
        Some(c) => req.basic_auth(c.username(), Some(c.password())),
        None => req,
    };
    let request = || {
        client
            .request(Method::GET, url.clone())
            .header(header::ACCEPT, ACCEPT)
    };
    let mut response = client.send(basic(request()), Some(TIMEOUT)).await?;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(params) = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_challenge)
    {
        let token = bearer_token(client, &params, name, credential).await?;
        response = client
            .send(request().bearer_auth(token), Some(TIMEOUT))
            .await?;
    }
    let status = response.status();
    if !status.is_success() {
        return Err(ManifestError::Status {
            registry: registry.to_string(),
            name: name.to_string(),
            status: status.as_u16(),
        });
    }
    let body = body_text(response, MAX_BODY).await?;
    compressed_size(&body).map_err(|message| ManifestError::Shape {
        name: name.to_string(),
        message,
    })
}

/// A pull token from the challenge's realm (Docker's token protocol).
async fn bearer_token(
    client: &HttpClient,
    params: &[(String, String)],
    name: &str,
    credential: Option<&Credential>,
) -> Result<String, ManifestError> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let realm = get("realm").ok_or_else(|| ManifestError::Reference(name.to_string()))?;
    let mut url = crate::http_client::parse_url(realm)?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = get("service") {
            query.append_pair("service", service);
        }
        query.append_pair(
            "scope",
            get("scope").unwrap_or(&format!("repository:{name}:pull")),
        );
    }
    let mut request = client.request(Method::GET, url.clone());
    if let Some(c) = credential {
        request = request.basic_auth(c.username(), Some(c.password()));
    }
    let response = client.send(request, Some(TIMEOUT)).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(ManifestError::Status {
            registry: url.host_str().unwrap_or_default().to_string(),
            name: name.to_string(),
            status: status.as_u16(),
        });
    }
    #[derive(Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let body = body_text(response, MAX_BODY).await?;
    let token: Token = serde_json::from_str(&body).map_err(|e| ManifestError::Shape {
        name: name.to_string(),
        message: format!("token answer: {e}"),
    })?;
    token
        .token
        .or(token.access_token)
        .ok_or_else(|| ManifestError::Shape {
            name: name.to_string(),
            message: "the token answer holds no token".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_size_is_layers_plus_config() {
        let m = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,"digest":"sha256:a"},
            "layers":[{"mediaType":"x","size":29150000,"digest":"sha256:b"},{"mediaType":"x","size":3200,"digest":"sha256:c"}]}"#;
        assert_eq!(compressed_size(m), Ok(1469 + 29_150_000 + 3200));
        assert!(compressed_size(r#"{"manifests":[]}"#).is_err());
    }

    #[test]
    fn references_split_into_registry_and_repository() {
        assert_eq!(
            split_reference("127.0.0.1:5000/team/py:r2-abc1234"),
            Some(("127.0.0.1:5000".into(), "team/py".into()))
        );
        assert_eq!(
            split_reference("[::1]:5000/py"),
            Some(("[::1]:5000".into(), "py".into()))
        );
        assert_eq!(
            split_reference("docker.io/org/py:latest"),
            Some(("registry-1.docker.io".into(), "org/py".into()))
        );
        assert_eq!(split_reference("py:latest"), None);
    }

    #[test]
    fn only_loopback_registries_may_fall_back_to_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5001"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("10.0.0.5:5000"));
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let p = bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:org/py:pull""#,
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                (
                    "realm".to_string(),
                    "https://auth.docker.io/token".to_string()
                ),
                ("service".to_string(), "registry.docker.io".to_string()),
                ("scope".to_string(), "repository:org/py:pull".to_string()),
            ]
        );
        assert_eq!(bearer_challenge(r#"Basic realm="x""#), None);
    }
}
