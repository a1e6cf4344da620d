//! How a registry credential travels to the Engine.
//!
//! bollard encodes `X-Registry-Auth` / `X-Registry-Config` with the *standard* base64
//! alphabet while the Engine decodes them as base64url (`base64.URLEncoding` in moby); a
//! payload whose encoding holds `+` or `/` is silently dropped by the Engine (an anonymous
//! pull/push follows). Every request passes through [`url_safe_registry_headers`]. A
//! credential is never sent towards another registry than its own ([`credential_for`]).

use super::LogSink;
use super::auth::{Credential, registry_of};
use bollard::BollardRequest;
use bollard::auth::DockerCredentials;

/// `auth` if it is for the registry of `image`; otherwise `None` and a log line. A credential
/// is never sent towards another registry than its own.
pub(super) fn credential_for<'c>(
    image: &str,
    auth: Option<&'c Credential>,
    log: &mut dyn LogSink,
) -> Option<&'c Credential> {
    let auth = auth?;
    let registry = registry_of(image);
    if auth.registry() == registry {
        Some(auth)
    } else {
        log.line(format!(
            "note: not sending the credential for {} to {registry} (the registry of {image})",
            auth.registry()
        ));
        None
    }
}

/// bollard's credential type for `c`.
pub(super) fn docker_credentials(c: &Credential) -> DockerCredentials {
    DockerCredentials {
        username: Some(c.username().to_string()).filter(|u| !u.is_empty()),
        password: Some(c.password().to_string()).filter(|p| !p.is_empty()),
        identitytoken: c.identity_token().map(str::to_owned),
        email: c.email().map(str::to_owned),
        serveraddress: Some(c.server_address().to_string()),
        ..Default::default()
    }
}

/// Standard base64 → base64url (same padding): what the Engine's `base64.URLEncoding`
/// decoder needs. Idempotent, so it stays correct should bollard ever encode base64url itself.
fn to_base64url(standard: &str) -> String {
    standard.replace('+', "-").replace('/', "_")
}

/// Request modifier: rewrites bollard's standard-base64 registry headers into base64url.
pub(super) fn url_safe_registry_headers(mut req: BollardRequest) -> BollardRequest {
    for name in ["x-registry-auth", "x-registry-config"] {
        let fixed = match req.headers().get(name).and_then(|v| v.to_str().ok()) {
            Some(value) if value.contains(['+', '/']) => to_base64url(value),
            _ => continue,
        };
        if let Ok(value) = fixed.parse() {
            req.headers_mut().insert(name, value);
        }
    }
    req
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    /// A JSON payload whose standard base64 holds both `+` and `/`: a `>` (0x3E) or `?`
    /// (0x3F) as the third byte of a 3-byte group gives sextet 62 (`+`) or 63 (`/`); three of
    /// each in a row put one at every offset.
    fn awkward_payload() -> String {
        let cred = DockerCredentials {
            username: Some("kiln".into()),
            password: Some("p>>>???".into()),
            serveraddress: Some("127.0.0.1:5001".into()),
            ..Default::default()
        };
        for pad in 0..3 {
            let mut c = cred.clone();
            c.email = Some("x".repeat(pad));
            let json = serde_json::to_string(&c).unwrap();
            let std = STANDARD.encode(&json);
            if std.contains('+') && std.contains('/') {
                return json;
            }
        }
        panic!("no padding gives both + and /");
    }

    #[test]
    fn registry_headers_become_base64url() {
        let json = awkward_payload();
        let standard = STANDARD.encode(&json);
        assert!(standard.contains('+') && standard.contains('/'));
        let url = to_base64url(&standard);
        assert_eq!(url, URL_SAFE.encode(&json));
        // What the Engine does: base64.URLEncoding (padded) decode.
        assert_eq!(URL_SAFE.decode(&url).unwrap(), json.as_bytes());
        assert!(
            URL_SAFE.decode(&standard).is_err(),
            "the Engine could not read bollard's encoding"
        );
        assert_eq!(to_base64url(&url), url, "idempotent");
    }

    pub(crate) fn request(uri: &str) -> BollardRequest {
        let mut req = BollardRequest::new(bollard::body_full(Vec::new().into()));
        *req.uri_mut() = uri.parse().unwrap();
        req
    }

    #[test]
    fn request_modifier_rewrites_both_headers() {
        let json = awkward_payload();
        let standard = STANDARD.encode(&json);
        let mut req = request("http://localhost/images/create?fromImage=x");
        for name in ["x-registry-auth", "x-registry-config"] {
            req.headers_mut().insert(name, standard.parse().unwrap());
        }
        let req = url_safe_registry_headers(req);
        for name in ["X-Registry-Auth", "X-Registry-Config"] {
            let value = req.headers().get(name).unwrap().to_str().unwrap();
            assert_eq!(URL_SAFE.decode(value).unwrap(), json.as_bytes());
        }
    }

    #[test]
    fn credentials_only_go_to_their_own_registry() {
        let c = Credential::new("127.0.0.1:5001", "u", "p");
        let mut lines = Vec::new();
        let mut log = |l: String| lines.push(l);
        assert!(credential_for("127.0.0.1:5001/kiln/x:t", Some(&c), &mut log).is_some());
        assert!(credential_for("127.0.0.1:5000/kiln/x:t", Some(&c), &mut log).is_none());
        assert!(credential_for("debian", Some(&c), &mut log).is_none());
        assert!(credential_for("debian", None, &mut log).is_none());
        let hub = Credential::new("https://index.docker.io/v1/", "u", "p");
        assert!(credential_for("debian:bookworm", Some(&hub), &mut log).is_some());
        assert_eq!(lines.len(), 2, "{lines:?}");
    }
}
