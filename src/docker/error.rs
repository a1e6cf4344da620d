//! What can go wrong talking to the Engine, and which failures are worth another attempt.
//!
//! bollard reports one error type for everything; this module turns it into an
//! [`EngineError`] named for the operation (build, pull, push, other) with every registry
//! secret scrubbed, and classifies it ([`EngineError::is_transient`]) from the Engine's own
//! words. The attempt policy (`crate::jobs::attempt`) decides on that kind alone, so it is kept
//! apart from the I/O.

use super::auth::{Credential, registry_of};
use super::engine::REQUEST_TIMEOUT_SECS;
use bollard::errors::Error as BollardError;

/// What can go wrong talking to the Engine. Messages never contain registry passwords.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The Engine did not answer (socket missing, connection refused or reset, timeout).
    #[error("Docker Engine unreachable at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    /// The build failed: a bad Dockerfile, a failed `RUN` (the Engine's text, e.g. "The command
    /// '/bin/sh -c …' returned a non-zero code: 100"), or a base image that could not be pulled.
    #[error("build failed: {0}")]
    BuildFailed(String),
    #[error("pull of {image} failed: {message}")]
    PullFailed { image: String, message: String },
    #[error("push of {image} failed: {message}")]
    PushFailed { image: String, message: String },
    /// The registry refused access (no or wrong credentials, or no permission).
    #[error("registry {registry} refused access: {message}")]
    Auth { registry: String, message: String },
    /// The TLS set-up for the endpoint is incomplete or contradictory (a missing `ca.pem`,
    /// `tls_verify` on an `http://` endpoint): fixing the configuration is the only cure.
    #[error("Docker Engine at {endpoint}: {message}")]
    TlsSetup { endpoint: String, message: String },
    /// The operation was cancelled through its token.
    #[error("cancelled")]
    Cancelled,
    /// The image is not in the Engine.
    #[error("no such image: {0}")]
    NoImage(String),
    /// Any other error status from the Engine.
    #[error("Docker Engine error (HTTP {status}) during {operation}: {message}")]
    Api {
        operation: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// Whether trying again later may succeed: the Engine or a registry was unreachable, a
    /// connection broke, a registry answered 5xx or "too many requests". A failed `RUN`, a bad
    /// Dockerfile, a refused credential, a missing image or a cancellation are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            // A certificate the Engine or Kiln refuses will be refused again.
            EngineError::Unreachable { message, .. } => !looks_like_tls_refusal(message),
            EngineError::BuildFailed(message) => {
                !message.contains("returned a non-zero code") && looks_transient(message)
            }
            EngineError::PullFailed { message, .. } | EngineError::PushFailed { message, .. } => {
                looks_transient(message)
            }
            EngineError::Api {
                status, message, ..
            } => *status >= 500 || looks_transient(message),
            EngineError::Other(message) => looks_transient(message),
            EngineError::Auth { .. }
            | EngineError::TlsSetup { .. }
            | EngineError::Cancelled
            | EngineError::NoImage(_) => false,
        }
    }
}

/// A TLS handshake that failed on a certificate (rustls' and Go's words): not network trouble.
/// The pool reads a worker's probe error with it: a refused certificate will be refused again.
pub(crate) fn looks_like_tls_refusal(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "bad certificate",
        "handshake failure",
    ]
    .iter()
    .any(|p| message.contains(p))
        && !message.contains("tls handshake timeout")
}

/// Network trouble and overloaded registries, as the Engine words them.
fn looks_transient(message: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "connection refused",
        "connection reset",
        "broken pipe",
        "i/o timeout",
        "timeout exceeded",
        "tls handshake timeout",
        "context deadline exceeded",
        "no such host",
        "server misbehaving",
        "temporary failure in name resolution",
        "network is unreachable",
        "no route to host",
        "unexpected eof",
        "500 internal server error",
        "502 bad gateway",
        "503 service unavailable",
        "504 gateway",
        "toomanyrequests",
        "too many requests",
    ];
    let lower = message.to_ascii_lowercase();
    PATTERNS.iter().any(|p| lower.contains(p)) || lower.trim_end().ends_with(": eof")
}

/// A registry's refusal, as the Engine words it.
fn looks_like_auth_failure(message: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "access denied",
        "requested access to the resource is denied",
        "denied:",
        "incorrect username or password",
        "401 unauthorized",
        "403 forbidden",
    ];
    let lower = message.to_ascii_lowercase();
    PATTERNS.iter().any(|p| lower.contains(p))
}

/// Which Engine operation an error came from, to name it well.
#[derive(Clone, Copy)]
pub(super) enum Op<'a> {
    Pull { image: &'a str },
    Push { image: &'a str },
    Other(&'a str),
}

/// Turns a bollard error into an [`EngineError`] for operation `op` on the Engine at
/// `endpoint`; secrets of `auth` are scrubbed from the message.
pub(super) fn map_bollard_error(
    endpoint: &str,
    e: BollardError,
    op: Op<'_>,
    auth: Option<&Credential>,
) -> EngineError {
    let (status, message) = match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => (Some(status_code), message),
        BollardError::DockerStreamError { error } => (None, error),
        BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_)
        | BollardError::HttpClientError { .. } => {
            return EngineError::Unreachable {
                endpoint: endpoint.to_string(),
                message: redact(bollard_message(&e), auth),
            };
        }
        e => (None, bollard_message(&e)),
    };
    let message = redact(message.trim().to_string(), auth);
    match op {
        Op::Pull { image } => {
            if looks_like_auth_failure(&message) {
                EngineError::Auth {
                    registry: registry_of(image),
                    message,
                }
            } else {
                EngineError::PullFailed {
                    image: image.to_string(),
                    message,
                }
            }
        }
        Op::Push { image } => {
            if looks_like_auth_failure(&message) {
                EngineError::Auth {
                    registry: registry_of(image),
                    message,
                }
            } else {
                EngineError::PushFailed {
                    image: image.to_string(),
                    message,
                }
            }
        }
        Op::Other(operation) => match status {
            Some(status) => EngineError::Api {
                operation: operation.to_string(),
                status,
                message,
            },
            None => EngineError::Other(format!("{operation}: {message}")),
        },
    }
}

/// bollard's error text, without secrets (bollard's errors never hold headers).
pub(crate) fn bollard_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => format!("HTTP {status_code}: {message}"),
        BollardError::SocketNotFoundError(path) => format!("socket {path} not found"),
        BollardError::RequestTimeoutError => format!("no answer within {REQUEST_TIMEOUT_SECS} s"),
        e => {
            // hyper's Display is terse ("client error (Connect)"); the source says why.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

/// Removes a credential's secrets from a text (defence in depth: Engine messages do not
/// normally contain them).
pub(super) fn redact(text: String, auth: Option<&Credential>) -> String {
    let Some(auth) = auth else { return text };
    let mut text = text;
    for secret in [Some(auth.password()), auth.identity_token()]
        .into_iter()
        .flatten()
    {
        if secret.len() >= 4 && text.contains(secret) {
            text = text.replace(secret, "<redacted>");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::BuildRequest;

    #[test]
    fn certificate_refusals_are_not_transient_but_timeouts_are() {
        let refused = |message: &str| EngineError::Unreachable {
            endpoint: "tcp://127.0.0.1:2376".into(),
            message: message.into(),
        };
        assert!(!refused("invalid peer certificate: UnknownIssuer").is_transient());
        assert!(!refused("received fatal alert: BadCertificate").is_transient());
        assert!(refused("net/http: TLS handshake timeout").is_transient());
        assert!(refused("Connection refused (os error 111)").is_transient());
    }

    #[test]
    fn transient_classification() {
        let run = EngineError::BuildFailed(
            "The command '/bin/sh -c apt-get install -y x' returned a non-zero code: 100".into(),
        );
        assert!(!run.is_transient());
        assert!(
            !EngineError::BuildFailed(
                "dockerfile parse error line 1: unknown instruction: FOO".into()
            )
            .is_transient()
        );
        assert!(
            EngineError::Unreachable {
                endpoint: "unix:///x".into(),
                message: "connection refused".into()
            }
            .is_transient()
        );
        assert!(
            EngineError::PushFailed {
                image: "a".into(),
                message: "Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused".into()
            }
            .is_transient()
        );
        assert!(
            EngineError::PullFailed {
                image: "a".into(),
                message: "received unexpected HTTP status: 503 Service Unavailable".into()
            }
            .is_transient()
        );
        assert!(
            EngineError::Api {
                operation: "tag".into(),
                status: 500,
                message: "x".into()
            }
            .is_transient()
        );
        assert!(
            !EngineError::Api {
                operation: "tag".into(),
                status: 409,
                message: "x".into()
            }
            .is_transient()
        );
        assert!(
            !EngineError::Auth {
                registry: "r".into(),
                message: "unauthorized".into()
            }
            .is_transient()
        );
        assert!(!EngineError::Cancelled.is_transient());
        assert!(!EngineError::NoImage("x".into()).is_transient());
    }

    #[test]
    fn secrets_never_reach_messages_or_debug() {
        let secret = "Sup3r+Secret/Pw?";
        let cred =
            Credential::new("127.0.0.1:5001", "kiln", secret).with_identity_token("tok-Secret-123");
        let leaked = format!("unauthorized: bad password {secret} token tok-Secret-123");
        let errors = [
            EngineError::Auth {
                registry: "127.0.0.1:5001".into(),
                message: redact(leaked.clone(), Some(&cred)),
            },
            EngineError::PushFailed {
                image: "x".into(),
                message: redact(leaked.clone(), Some(&cred)),
            },
            EngineError::BuildFailed(redact(leaked, Some(&cred))),
        ];
        for e in &errors {
            let text = format!(
                "{e} {e:?} {cred:?} {:?}",
                BuildRequest {
                    pull_auth: Some(&cred),
                    ..Default::default()
                }
            );
            assert!(
                !text.contains(secret) && !text.contains("tok-Secret-123"),
                "{text}"
            );
        }
    }
}
