//! Kiln's own outgoing HTTP: one client (`reqwest` over `rustls`) for every request Kiln
//! makes as a client — `kiln notify` (a signed webhook to a running Kiln), `kiln backup
//! --server` (a backup streamed from a running Kiln), and what later needs to speak to a
//! registry or a catalogue. Docker Engine traffic is not here: `bollard` has its own.
//!
//! Why one module: URL checks, TLS trust, timeouts, redirects and error messages are decided
//! once. `http://` and `https://` both work; TLS trusts the system's certificates (or the
//! file named by `SSL_CERT_FILE`, or the directory in `SSL_CERT_DIR`, as OpenSSL does) plus
//! a CA file given in [`ClientOptions::ca_file`]. Certificates are always verified.
//!
//! Errors never carry a URL's user info (URLs with one are refused: secrets go in headers or
//! files, never in an address that ends up in logs and shell history).

use reqwest::{Method, RequestBuilder, Response, Url};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// How a client is set up. `Default`: no extra CA, connect timeout 10 s, no overall timeout,
/// no redirects.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// PEM file of CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Time to set up TCP (and TLS).
    pub connect_timeout: Duration,
    /// Longest silence while reading a response (a long download keeps going as long as
    /// bytes arrive); `None`: no limit.
    pub read_timeout: Option<Duration>,
    /// How many redirects to follow. Kiln's own endpoints never redirect, so by default a
    /// redirect is an answer like any other and not followed.
    pub redirects: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: None,
            redirects: 0,
        }
    }
}

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("`{0}` is not an http:// or https:// URL with a host (and no user info)")]
    Url(String),
    #[error("cannot read CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate: {message}")]
    CaPem { path: PathBuf, message: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("talking to {url}: {message}")]
    Transfer { url: String, message: String },
}

/// Checks a URL Kiln is asked to talk to: `http` or `https`, a host, no user info.
pub fn parse_url(text: &str) -> Result<Url, HttpError> {
    let bad = || HttpError::Url(crate::repo::redact(text));
    let url = Url::parse(text.trim()).map_err(|_| bad())?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none();
    if ok { Ok(url) } else { Err(bad()) }
}

/// An error and its causes on one line (`reqwest` keeps the useful part — "connection
/// refused", "invalid peer certificate: UnknownIssuer" — in the source chain).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The client. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    pub fn new(options: &ClientOptions) -> Result<HttpClient, HttpError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .redirect(match options.redirects {
                0 => reqwest::redirect::Policy::none(),
                n => reqwest::redirect::Policy::limited(n),
            });
        if let Some(timeout) = options.read_timeout {
            builder = builder.read_timeout(timeout);
        }
        if let Some(path) = &options.ca_file {
            for cert in read_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let inner = builder.build().map_err(|e| HttpError::Setup(chain(&e)))?;
        Ok(HttpClient { inner })
    }

    /// A request to `url`; send it with [`HttpClient::send`].
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.inner.request(method, url)
    }

    /// Sends `request`, with `timeout` for the whole exchange up to the response head (the
    /// body is read by the caller), and turns failures into [`HttpError`]s.
    pub async fn send(
        &self,
        request: RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<Response, HttpError> {
        let request = match timeout {
            Some(t) => request.timeout(t),
            None => request,
        }
        .build()
        .map_err(|e| HttpError::Setup(chain(&e.without_url())))?;
        let url = request.url().to_string();
        let exchange = self.inner.execute(request);
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .map_err(|_| HttpError::Timeout {
                    url: url.clone(),
                    timeout: t,
                })?,
            None => exchange.await,
        };
        result.map_err(|e| classify(e, &url, timeout))
    }
}

/// What went wrong with a request, said in Kiln's words.
pub fn classify(error: reqwest::Error, url: &str, timeout: Option<Duration>) -> HttpError {
    let url = url.to_string();
    if error.is_timeout() {
        return HttpError::Timeout {
            url,
            timeout: timeout.unwrap_or_default(),
        };
    }
    let connect = error.is_connect();
    let message = chain(&error.without_url());
    if connect {
        HttpError::Connect { url, message }
    } else {
        HttpError::Transfer { url, message }
    }
}

/// Up to `limit` bytes of a response body as text (an error page, a JSON answer); the rest
/// is dropped unread.
pub async fn body_text(mut response: Response, limit: usize) -> Result<String, HttpError> {
    let url = response.url().to_string();
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())])
            }
            Ok(None) => break,
            Err(e) => return Err(classify(e, &url, None)),
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpError> {
    let pem = std::fs::read(path).map_err(|source| HttpError::CaFile {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| HttpError::CaPem {
        path: path.to_path_buf(),
        message: chain(&e),
    })?;
    if certs.is_empty() {
        return Err(HttpError::CaPem {
            path: path.to_path_buf(),
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;

    #[test]
    fn urls_kiln_talks_to() {
        for good in [
            "http://127.0.0.1:8080",
            "https://kiln.internal/hooks/generic",
            "HTTP://[::1]:9/x",
        ] {
            assert!(parse_url(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@host/",
            "https://token@host/",
            "http://h:port/",
            "kiln:8080",
            "/hooks/generic",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        // A refused URL's user info never reaches the message.
        let e = parse_url("ftp://user:hunter2@host/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    /// A TLS listener on 127.0.0.1:0 with a fresh self-signed certificate for `localhost`,
    /// answering every request `200 ok`; returns its port and the certificate's PEM.
    async fn tls_server() -> (u16, String) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = key.cert.pem();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, pem)
    }

    #[tokio::test]
    async fn https_with_a_ca_file_and_refused_without() {
        let (port, pem) = tls_server().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pem).unwrap();
        let url = parse_url(&format!("https://localhost:{port}/")).unwrap();

        let trusting = HttpClient::new(&ClientOptions {
            ca_file: Some(ca),
            ..ClientOptions::default()
        })
        .unwrap();
        let timeout = Some(Duration::from_secs(20));
        let response = trusting
            .send(trusting.request(Method::GET, url.clone()), timeout)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(body_text(response, 1024).await.unwrap(), "ok");

        // The same server, not trusted: the handshake fails and says why.
        let plain = HttpClient::new(&ClientOptions::default()).unwrap();
        let e = plain
            .send(plain.request(Method::GET, url), timeout)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("certificate"), "{e}");

        let missing = ClientOptions {
            ca_file: Some(dir.path().join("nope.pem")),
            ..ClientOptions::default()
        };
        assert!(matches!(
            HttpClient::new(&missing),
            Err(HttpError::CaFile { .. })
        ));
    }
}
