//! One HTTP/1.1 connection of Kiln's own to the Engine: over its unix socket, plain TCP, or
//! TCP with mutual TLS (`ca.pem` to verify the Engine, `cert.pem` + `key.pem` to be
//! verified), the same three transports bollard speaks for every other call.
//!
//! Why Kiln opens connections itself here: a build with secrets needs a session that serves
//! them, and bollard 0.21.1 keeps the pieces for that (its secret provider, its upgraded
//! `/session` connection, its request builder) crate-private, while its public BuildKit path
//! (`grpc::driver::moby`) gives no progress stream. So the build's session
//! (`session_server.rs`) and its `/build` request (`build.rs`) go over connections made here,
//! with hyper 1 and tokio-rustls (ring, as bollard's own TLS).

use crate::docker::{EngineError, TlsFiles, Transport};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long Kiln waits for a connection (with its TLS handshake) and for the headers of an
/// answer: the 120 s bollard's client waits for every other Engine call. A build's stream
/// itself is not timed here (the job's `build_timeout` bounds it).
pub(crate) const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `future`, or an [`EngineError::Unreachable`] naming `what` after [`ANSWER_TIMEOUT`].
pub(crate) async fn within<T>(
    transport: &Transport,
    what: &str,
    future: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(
            transport,
            format!("{what}: no answer within {} s", ANSWER_TIMEOUT.as_secs()),
        )),
    }
}

/// A byte stream to the Engine, whichever transport carries it.
pub(crate) trait EngineIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> EngineIo for T {}

/// A request's sending half; the connection itself runs as a task of the caller's runtime.
pub(crate) type Sender = http1::SendRequest<Full<Bytes>>;

/// The `Host` header for requests on `transport`: the endpoint's `host:port`, or `docker`
/// for a unix socket (which has no host; the Docker CLI sends the same).
pub(crate) fn host_header(transport: &Transport) -> String {
    match transport {
        Transport::Unix { .. } => "docker".to_string(),
        Transport::Http(host) | Transport::Tls { host, .. } => authority(host).to_string(),
    }
}

/// `tcp://host:port/…` → `host:port`.
fn authority(host: &str) -> &str {
    let rest = host.split_once("://").map_or(host, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// The host part of `host:port` (`[::1]:2376` → `::1`), for the TLS server name.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn unreachable(transport: &Transport, message: impl std::fmt::Display) -> EngineError {
    EngineError::Unreachable {
        endpoint: transport.host().to_string(),
        message: message.to_string(),
    }
}

/// Opens a byte stream to the Engine.
pub(crate) async fn connect(transport: &Transport) -> Result<Box<dyn EngineIo>, EngineError> {
    match transport {
        Transport::Unix { path, .. } => {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    unreachable(transport, format!("socket {path} not found"))
                } else {
                    unreachable(transport, e)
                }
            })?;
            Ok(Box::new(stream))
        }
        Transport::Http(host) => {
            let stream = tokio::net::TcpStream::connect(authority(host))
                .await
                .map_err(|e| unreachable(transport, e))?;
            Ok(Box::new(stream))
        }
        Transport::Tls { host, files } => {
            let config = tls_config(files).map_err(|message| EngineError::TlsSetup {
                endpoint: host.clone(),
                message,
            })?;
            let authority = authority(host);
            let name = ServerName::try_from(host_name(authority).to_string()).map_err(|e| {
                EngineError::TlsSetup {
                    endpoint: host.clone(),
                    message: format!("{authority} is no TLS server name: {e}"),
                }
            })?;
            let tcp = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(|e| unreachable(transport, e))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(transport, format!("TLS handshake failed: {e}")))?;
            Ok(Box::new(tls))
        }
    }
}

/// A rustls client configuration from the Docker CLI's three files.
fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&files.ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read the TLS CA certificate {}: {e}",
                files.ca.display()
            )
        })?;
    if cas.is_empty() {
        return Err(format!(
            "the TLS CA certificate {} holds no certificate",
            files.ca.display()
        ));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| {
            format!(
                "the TLS CA certificate {} is unusable: {e}",
                files.ca.display()
            )
        })?;
    }
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read the TLS client certificate {}: {e}",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "the TLS client certificate {} holds no certificate",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "cannot read the TLS client key {}: {e}",
            files.key.display()
        )
    })?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("the TLS client certificate and key do not go together: {e}"))
}

/// Opens a connection and makes it an HTTP/1.1 client. The connection's driver is spawned on
/// the current runtime (with upgrades, for `/session`); the handle aborts it, which closes
/// the socket, so the Engine sees its client go.
pub(crate) async fn http1(
    transport: &Transport,
) -> Result<(Sender, tokio::task::JoinHandle<()>), EngineError> {
    let io = within(transport, "connecting", connect(transport)).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable(transport, hyper_message(&e)))?;
    let driver = tokio::spawn(async move {
        // Its errors reach the request that was in flight.
        let _ = conn.with_upgrades().await;
    });
    Ok((sender, driver))
}

/// hyper's own words are terse ("connection error"); its source says why.
pub(crate) fn hyper_message(e: &hyper::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_server_names_come_from_the_endpoint() {
        assert_eq!(authority("tcp://127.0.0.1:2376"), "127.0.0.1:2376");
        assert_eq!(
            authority("https://engine.example:2376/"),
            "engine.example:2376"
        );
        assert_eq!(host_name("127.0.0.1:2376"), "127.0.0.1");
        assert_eq!(host_name("[::1]:2376"), "::1");
        assert_eq!(host_name("engine.example"), "engine.example");
        let unix = Transport::Unix {
            host: "unix:///var/run/docker.sock".into(),
            path: "/var/run/docker.sock".into(),
        };
        assert_eq!(host_header(&unix), "docker");
        assert_eq!(
            host_header(&Transport::Http("tcp://10.0.0.1:2375".into())),
            "10.0.0.1:2375"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_and_named() {
        let transport = Transport::Unix {
            host: "unix:///nonexistent/kiln.sock".into(),
            path: "/nonexistent/kiln.sock".into(),
        };
        let Err(err) = connect(&transport).await else {
            panic!("connected to nothing");
        };
        assert!(matches!(err, EngineError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/kiln.sock"), "{err}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn unreadable_tls_files_are_a_set_up_error() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(
                dir.path().join(name),
                "-----BEGIN X-----\n-----END X-----\n",
            )
            .unwrap();
        }
        let transport = Transport::Tls {
            host: "tcp://127.0.0.1:1".into(),
            files: TlsFiles {
                ca: dir.path().join("ca.pem"),
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
            },
        };
        let Err(err) = connect(&transport).await else {
            panic!("connected with no usable certificate");
        };
        assert!(matches!(err, EngineError::TlsSetup { .. }), "{err}");
        assert!(!err.is_transient());
    }
}
