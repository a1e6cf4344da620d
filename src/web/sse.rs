//! `/jobs/{id}/events`: a job's log, live, as Server-Sent Events.
//!
//! * one `message` event per log line: `id` = the line's number (0-based, as stored), `data` =
//!   the line as safe HTML (escaped, ANSI colours as classes — the same rendering as the page);
//! * `status` when the job changes state, and `end` (data: the final status) when it is over,
//!   after which the stream closes;
//! * starts after `Last-Event-ID` (a reconnecting `EventSource` sends it) or at `?from=N`, or
//!   at the current end of the log;
//! * keep-alive comments every 15 s; the stream ends on the server's shutdown token, so a
//!   graceful shutdown never waits on an open tab.
//!
//! It never holds more than one page of lines: lines are read from the store in pages and
//! sent as the client takes them.

use super::AppState;
use super::ansi::line_to_html;
use crate::model::{JobId, JobStatus};
use crate::store::{Store, StoreEvent};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Lines read from the store at a time.
const BATCH: usize = 500;
/// After a job reaches a final state, how long the stream waits for the last lines the
/// builder may still be writing before it says `end`.
const GRACE: Duration = Duration::from_millis(1500);
/// How often the stream looks at the store even without events (a safety net).
const RECHECK: Duration = Duration::from_secs(5);

#[derive(Deserialize, Default)]
pub struct From {
    from: Option<u64>,
}

pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<From>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<JobId>() else {
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    };
    // Subscribe before the first read, so no line written in between is missed.
    let events = state.store.subscribe();
    let job = match state.store.job(id) {
        Ok(Some(job)) => job,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such job").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let next = match (last_event, query.from) {
        (Some(last), _) => last + 1,
        (None, Some(from)) => from,
        (None, None) => state.store.log_len(id).unwrap_or(0),
    };
    let tail = Tail {
        store: state.store.clone(),
        id,
        next,
        events,
        shutdown: state.shutdown.clone(),
        queue: VecDeque::new(),
        status: job.status,
        final_since: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        tail.next_event()
            .await
            .map(|event| (Ok::<_, Infallible>(event), tail))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct Tail {
    store: Store,
    id: JobId,
    /// Number of the next line to send.
    next: u64,
    events: broadcast::Receiver<StoreEvent>,
    shutdown: CancellationToken,
    queue: VecDeque<Event>,
    /// The status the client was last told (or saw on the page).
    status: JobStatus,
    /// When the job was first seen final.
    final_since: Option<Instant>,
    done: bool,
}

impl Tail {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done || self.shutdown.is_cancelled() {
                return None;
            }
            // More lines stored?
            match self.store.log_lines(self.id, self.next, BATCH) {
                Ok(lines) if !lines.is_empty() => {
                    for (n, line) in lines {
                        self.queue.push_back(
                            Event::default()
                                .id(n.to_string())
                                .data(line_to_html(&line.text)),
                        );
                        self.next = n + 1;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = self.id, error = %e, "log tail read failed");
                    return None;
                }
            }
            // Caught up: has the job changed?
            let (status, settled) = match self.store.job(self.id) {
                // A job that finished a while ago has written its last line.
                Ok(Some(job)) => (
                    job.status,
                    job.finished_at
                        .is_some_and(|f| crate::model::now() - f > GRACE.as_secs() as i64 + 1),
                ),
                _ => return None,
            };
            if status != self.status {
                self.status = status;
                self.queue
                    .push_back(Event::default().event("status").data(status.as_str()));
            }
            let wait = if status.is_final() {
                let since = *self.final_since.get_or_insert_with(Instant::now);
                let left = GRACE.saturating_sub(since.elapsed());
                if left.is_zero() || settled {
                    self.queue
                        .push_back(Event::default().event("end").data(status.as_str()));
                    self.done = true;
                    continue;
                }
                left
            } else {
                RECHECK
            };
            if !self.queue.is_empty() {
                continue;
            }
            self.wait_for_change(wait).await;
        }
    }

    /// Until an event about this job (or a missed one), the timeout, or shutdown.
    async fn wait_for_change(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                event = self.events.recv() => match event {
                    Ok(StoreEvent::Log { job, .. } | StoreEvent::Job { job, .. }) if job == self.id => return,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => {
                        self.done = true;
                        return;
                    }
                },
            }
        }
    }
}
