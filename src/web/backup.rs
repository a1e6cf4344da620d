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
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

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

pub(super) async fn backup(State(state): State<AppState>) -> Response {
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
    #[error("`{0}` is not an http(s)://host:port address of a running Kiln")]
    Url(String),
    #[error(transparent)]
    Http(#[from] crate::http_client::HttpError),
    #[error("Kiln at {addr} answered {status}: {body}")]
    Refused {
        addr: String,
        status: String,
        body: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the downloaded backup is not usable: {0}")]
    Check(#[from] crate::store::backup::BackupError),
}

/// Download a backup from the Kiln at `base` (`http(s)://host:port`; a path is ignored)
/// into `out`: written to `out.partial`, checked (format, schema, counts, checksum), then
/// renamed to `out`.
pub async fn download(base: &str, out: &Path) -> Result<BackupSummary, DownloadError> {
    use crate::http_client::{ClientOptions, HttpClient, body_text, classify};
    use tokio::io::AsyncWriteExt as _;
    let url = crate::http_client::parse_url(base)
        .and_then(|u| {
            u.join("/api/v1/backup")
                .map_err(|_| crate::http_client::HttpError::Url(base.to_string()))
        })
        .map_err(|_| DownloadError::Url(crate::repo::redact(base)))?;
    let addr = url.origin().ascii_serialization();
    let client = HttpClient::new(&ClientOptions {
        // A stalled server must not hang `kiln backup` forever; a long backup keeps sending.
        read_timeout: Some(Duration::from_secs(300)),
        ..ClientOptions::default()
    })?;
    let mut response = client
        .send(client.request(reqwest::Method::GET, url.clone()), None)
        .await?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let body = body_text(response, 4096).await.unwrap_or_default();
        return Err(DownloadError::Refused {
            addr,
            status: status.to_string(),
            body: body.trim().to_string(),
        });
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let write = |source| DownloadError::Write {
        path: partial.clone(),
        source,
    };
    let result = async {
        let mut file = tokio::fs::File::create(&partial).await.map_err(write)?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| classify(e, url.as_str(), None))?
        {
            file.write_all(&chunk).await.map_err(write)?;
        }
        file.sync_all().await.map_err(write)?;
        drop(file);
        let check = partial.clone();
        let summary = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&check)?;
            crate::store::backup::verify(BufReader::new(file))
        })
        .await
        .map_err(|e| write(io::Error::other(e.to_string())))??;
        tokio::fs::rename(&partial, out)
            .await
            .map_err(|source| DownloadError::Write {
                path: out.to_path_buf(),
                source,
            })?;
        Ok(summary)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tower::ServiceExt as _;

    fn state(dir: &Path) -> AppState {
        AppState::new(
            crate::store::Store::open(dir).unwrap(),
            super::super::AppInfo::default(),
            super::super::hooks::Webhooks::default(),
            Arc::default(),
            Arc::default(),
            tokio_util::sync::CancellationToken::new(),
        )
    }

    async fn get(state: AppState) -> (StatusCode, Bytes) {
        let response = super::super::router(state)
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
        let state = state(dir.path());
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

    /// `kiln backup --server`'s client against a server on a port of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn download_checks_and_keeps_the_backup_or_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(&dir.path().join("data"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = state.shutdown.clone();
        let server = tokio::spawn(super::super::serve(
            listener,
            state.clone(),
            shutdown.clone(),
        ));

        let out = dir.path().join("kiln.kbk");
        let summary = download(&base, &out).await.unwrap();
        assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
        assert!(!dir.path().join("kiln.kbk.partial").exists());

        // Refused while another backup runs: nothing is left behind.
        let busy = dir.path().join("busy.kbk");
        let running = state.backup_gate.clone().try_acquire_owned().unwrap();
        let e = download(&format!("{base}/ignored/path"), &busy)
            .await
            .unwrap_err();
        assert!(matches!(e, DownloadError::Refused { .. }), "{e}");
        assert!(
            e.to_string().contains("409") && e.to_string().contains("already running"),
            "{e}"
        );
        assert!(!busy.exists());
        drop(running);

        assert!(matches!(
            download("ftp://127.0.0.1/", &busy).await,
            Err(DownloadError::Url(_))
        ));
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
