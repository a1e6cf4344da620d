//! A build's session: Kiln's gRPC server that the Engine's BuildKit calls back over an
//! upgraded `/session` connection.
//!
//! The protocol, as the Docker CLI speaks it: `POST /session` with `Connection: Upgrade`,
//! `Upgrade: h2c`, the session's id, name and shared key, and one
//! `X-Docker-Expose-Session-Grpc-Method` header per method the client serves; the Engine
//! answers `101 Switching Protocols` and from then on is the HTTP/2 *client* on that
//! connection, calling the methods of [`super::session_services`] whenever BuildKit needs a
//! credential or a secret. A `/build` with `session=ID` (sent after the session is open, on a
//! connection of its own) uses it. Methods not listed are never called, so the list says
//! exactly what the session serves.
//!
//! The server runs as a task of the build's own runtime (`session.rs`): it ends when the
//! build's runtime is dropped, and the Engine drops the session when the connection closes.

use super::engine_conn::{self, hyper_message};
use super::session_services::{METHODS, Services};
use crate::docker::{EngineError, Transport};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the session is called in the Engine (`docker buildx du` and the Engine's debug log
/// show it).
const SESSION_NAME: &str = "kiln";

/// The headers of the `/session` request besides `Host`.
pub(crate) fn session_headers(id: &str) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Connection", "Upgrade".to_string()),
        ("Upgrade", "h2c".to_string()),
        ("X-Docker-Expose-Session-Uuid", id.to_string()),
        ("X-Docker-Expose-Session-Name", SESSION_NAME.to_string()),
        // The key BuildKit shares local-directory caches under; Kiln sends its context as the
        // request body, never through the session, so one key for all builds is right.
        (
            "X-Docker-Expose-Session-Sharedkey",
            SESSION_NAME.to_string(),
        ),
    ];
    headers.extend(
        METHODS
            .iter()
            .map(|m| ("X-Docker-Expose-Session-Grpc-Method", m.to_string())),
    );
    headers
}

/// A running session. Dropping it stops the server and closes its connection.
pub(crate) struct Session {
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Opens session `id` on the Engine at `transport` and serves `services` on it. Returns once
/// the Engine has accepted the session, so a `/build` sent after it finds the session.
pub(crate) async fn start(
    transport: &Transport,
    id: &str,
    services: Services,
) -> Result<Session, EngineError> {
    let (mut sender, _driver) = engine_conn::http1(transport).await?;
    let mut request = Request::post("/session").header("Host", engine_conn::host_header(transport));
    for (name, value) in session_headers(id) {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|e| EngineError::Other(format!("cannot make the session request: {e}")))?;
    let unreachable = |message: String| EngineError::Unreachable {
        endpoint: transport.host().to_string(),
        message,
    };
    let response = engine_conn::within(transport, "opening the build session", async {
        sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(format!("opening the build session: {}", hyper_message(&e))))
    })
    .await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(EngineError::Api {
            operation: "session".into(),
            status,
            message: super::build_request::engine_message(&body),
        });
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| {
        unreachable(format!(
            "upgrading the build session: {}",
            hyper_message(&e)
        ))
    })?;
    let stream = SessionStream(TokioIo::new(upgraded));
    let server = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(services.health)
            .add_service(services.auth)
            .add_service(services.secrets)
            .serve_with_incoming(futures_util::stream::iter([Ok::<_, std::io::Error>(
                stream,
            )]))
            .await;
        if let Err(e) = served {
            tracing::debug!("build session ended: {e}");
        }
    });
    Ok(Session { server })
}

/// The upgraded connection as tonic's server takes it: a byte stream that can say where it
/// comes from (nowhere worth saying: it is the Engine).
struct SessionStream(TokioIo<hyper::upgrade::Upgraded>);

impl tonic::transport::server::Connected for SessionStream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SessionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_request_names_the_session_and_every_served_method() {
        let headers = session_headers("kiln-1-abc-0");
        let get = |name: &str| -> Vec<&str> {
            headers
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("Connection"), ["Upgrade"]);
        assert_eq!(get("Upgrade"), ["h2c"]);
        assert_eq!(get("X-Docker-Expose-Session-Uuid"), ["kiln-1-abc-0"]);
        assert_eq!(get("X-Docker-Expose-Session-Name"), ["kiln"]);
        assert_eq!(get("X-Docker-Expose-Session-Sharedkey"), ["kiln"]);
        assert_eq!(
            get("X-Docker-Expose-Session-Grpc-Method"),
            [
                "/grpc.health.v1.Health/Check",
                "/moby.filesync.v1.Auth/Credentials",
                "/moby.buildkit.secrets.v1.Secrets/GetSecret",
            ]
        );
        assert_eq!(headers.len(), 8);
    }
}
