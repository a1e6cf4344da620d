//! `GET /api/v1/backup`: a backup of the running Kiln's store, streamed; and the client side
//! of `kiln backup --server`.
//!
//! Why an endpoint: sled is single-process, so while `kiln serve` runs no other process can
//! open the data dir; the serving process is the only one that can read it. The stream is the
//! format of `store::backup` (checksummed, with a trailer): a download that breaks off is
//! refused by restore as truncated, and `kiln backup` checks the file before keeping it.
//!
//! One backup at a time (a second request is a 409): a backup reads the whole store, and
//! several at once would only compete for the disk. Like the rest of the API it is read-only
//! and holds no secret; it does hold every log, so expose it where the API is exposed.

use super::AppState;
use crate::store::backup::BackupSummary;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/backup", get(backup))
}

/// Hands the backup writer's output to the response body, chunk by chunk. The channel is
/// bounded: a slow client slows the writer instead of filling memory.
struct ChannelWriter(mpsc::Sender<Result<Bytes, io::Error>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn backup(State(state): State<AppState>) -> Response {
    let Ok(permit) = state.backup_gate.clone().try_acquire_owned() else {
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": "a backup is already running; try again when it ends" })),
        )
            .into_response();
    };
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let errors = tx.clone();
        let result = store.write_backup(ChannelWriter(tx));
        // Released before the body ends (`errors` is the last sender), so a client that has
        // its whole backup can start the next one.
        drop(permit);
        match result {
            Ok(summary) => tracing::info!(
                bytes = summary.bytes,
                jobs = summary.jobs,
                log_lines = summary.log_lines,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "backup streamed"
            ),
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                // An error in the body aborts the response: the client sees a broken
                // download (and restore a truncated file), never a short "complete" one.
                let _ = errors.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let name = format!("kiln-backup-{}.kbk", crate::model::now());
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[derive(Debug, Error)]
pub enum DownloadError {
    #[error("`{0}` is not an http://host:port address of a running Kiln")]
    Url(String),
    #[error("cannot reach Kiln at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("Kiln at {addr} answered {status}: {body}")]
    Refused {
        addr: String,
        status: String,
        body: String,
    },
    #[error("download from {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the downloaded backup is not usable: {0}")]
    Check(#[from] crate::store::backup::BackupError),
}

/// Download a backup from the Kiln at `base` (`http://host:port`) into `out`: written to
/// `out.partial`, checked (format, schema, counts, checksum), then renamed to `out`.
/// Blocking.
pub fn download(base: &str, out: &Path) -> Result<BackupSummary, DownloadError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| DownloadError::Url(base.to_string()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(DownloadError::Url(base.to_string()));
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let connect = |source| DownloadError::Connect {
        addr: addr.clone(),
        source,
    };
    let io_err = |source| DownloadError::Io {
        addr: addr.clone(),
        source,
    };
    let mut stream = std::net::TcpStream::connect(&addr).map_err(connect)?;
    // A stalled server must not hang `kiln backup` forever; a long backup keeps sending.
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(io_err)?;
    // HTTP/1.0: the body is delimited by the connection closing, no chunked decoding.
    write!(
        stream,
        "GET /api/v1/backup HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: kiln-backup/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .map_err(io_err)?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(io_err)?;
    let status = status.trim().to_string();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io_err)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    if status.split(' ').nth(1) != Some("200") {
        let mut body = String::new();
        let _ = io::Read::read_to_string(&mut io::Read::take(reader, 4096), &mut body);
        return Err(DownloadError::Refused {
            addr,
            status,
            body: body.trim().to_string(),
        });
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let result = (|| {
        let mut file = std::fs::File::create(&partial).map_err(io_err)?;
        io::copy(&mut reader, &mut file).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        let summary = crate::store::backup::verify(BufReader::new(
            std::fs::File::open(&partial).map_err(io_err)?,
        ))?;
        std::fs::rename(&partial, out).map_err(io_err)?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tower::ServiceExt as _;

    fn state(dir: &Path, permits: usize) -> AppState {
        AppState {
            store: crate::store::Store::open(dir).unwrap(),
            inner: Arc::default(),
            sync_trigger: Arc::default(),
            counters: Arc::default(),
            webhooks: Arc::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            backup_gate: Arc::new(tokio::sync::Semaphore::new(permits)),
        }
    }

    async fn get(state: AppState) -> (StatusCode, Bytes) {
        let response = routes()
            .with_state(state)
            .oneshot(
                axum::http::Request::get("/api/v1/backup")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_endpoint_streams_a_valid_backup_and_refuses_a_second_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path(), 1);
        let (status, body) = get(state.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let summary = crate::store::backup::verify(&body[..]).unwrap();
        assert_eq!(summary.bytes, body.len() as u64);
        // The permit came back when that backup ended.
        assert_eq!(state.backup_gate.available_permits(), 1);

        // While one backup holds the permit, another is refused.
        let _running = state.backup_gate.clone().try_acquire_owned().unwrap();
        let (status, body) = get(state.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(String::from_utf8_lossy(&body).contains("already running"));
    }
}
