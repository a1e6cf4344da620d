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
//! It never holds more than one page of lines: history is read from the store in pages and
//! sent as the client takes them. New lines of a running build arrive through the store's
//! shared line broadcast ([`Store::subscribe_logs`]): every viewer renders the same `Arc`'d
//! batch, none decompresses the chunk again. A viewer that falls behind the broadcast (or
//! sees a gap) goes back to reading the store.

use super::AppState;
use super::ansi::line_to_html;
use crate::model::{JobId, JobStatus};
use crate::store::{LogBatch, Store, StoreEvent};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
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
    let lines = state.store.subscribe_logs();
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
        lines,
        live: false,
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
    /// Appended lines, shared by every viewer.
    lines: broadcast::Receiver<Arc<LogBatch>>,
    /// The last wait ended with lines from the broadcast: the store has nothing newer to
    /// read, so the next round skips the store reads.
    live: bool,
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
            if std::mem::take(&mut self.live) {
                // Caught up through the broadcast; status changes come as events.
                let wait = match self.final_since {
                    None => RECHECK,
                    Some(since) => GRACE.saturating_sub(since.elapsed()),
                };
                if !wait.is_zero() {
                    self.wait_for_change(wait).await;
                }
                continue;
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

    /// Queue the part of a broadcast batch this viewer has not sent. `false` when the batch
    /// starts after the next line to send (lines were missed: read the store).
    fn take_batch(&mut self, batch: &LogBatch) -> bool {
        if batch.first_line > self.next {
            return false;
        }
        let skip = (self.next - batch.first_line) as usize;
        for (n, line) in (batch.first_line..).zip(&batch.lines).skip(skip) {
            self.queue.push_back(
                Event::default()
                    .id(n.to_string())
                    .data(line_to_html(&line.text)),
            );
        }
        self.next = self.next.max(batch.end());
        true
    }

    /// Until an event about this job (or a missed one), the timeout, or shutdown. Lines of
    /// this job that arrive meanwhile are queued directly.
    async fn wait_for_change(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                batch = self.lines.recv() => match batch {
                    Ok(batch) if batch.job == self.id => {
                        if self.take_batch(&batch) {
                            self.live = true;
                        }
                        return;
                    }
                    Ok(_) => {}
                    // Fell behind (or the store is gone): the store has every line.
                    Err(_) => return,
                },
                event = self.events.recv() => match event {
                    // Log events are for lines this viewer gets from the line broadcast.
                    Ok(StoreEvent::Job { job, .. }) if job == self.id => return,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LogLine;

    fn tail(store: &Store, next: u64) -> Tail {
        Tail {
            store: store.clone(),
            id: 1,
            next,
            events: store.subscribe(),
            lines: store.subscribe_logs(),
            live: false,
            shutdown: CancellationToken::new(),
            queue: VecDeque::new(),
            status: JobStatus::Running,
            final_since: None,
            done: false,
        }
    }

    fn batch(job: JobId, first_line: u64, n: usize) -> LogBatch {
        LogBatch {
            job,
            first_line,
            lines: (0..n)
                .map(|i| LogLine {
                    at_ms: 0,
                    text: format!("l{i}"),
                })
                .collect(),
        }
    }

    #[test]
    fn a_broadcast_batch_is_taken_from_the_next_unsent_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut t = tail(&store, 5);
        // Lines 3..8: 3 and 4 were sent already.
        assert!(t.take_batch(&batch(1, 3, 5)));
        assert_eq!((t.queue.len(), t.next), (3, 8));
        // All sent before: nothing queued, still in step.
        assert!(t.take_batch(&batch(1, 6, 2)));
        assert_eq!((t.queue.len(), t.next), (3, 8));
        // Starts after line 8: lines were missed, the store must be read.
        assert!(!t.take_batch(&batch(1, 9, 2)));
        assert_eq!(t.next, 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_lines_reach_a_waiting_viewer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let line = |text: &str| LogLine {
            at_ms: 0,
            text: text.into(),
        };
        let mut plan = crate::reconcile::Plan::default();
        plan.jobs.push(crate::reconcile::NewJob {
            spec: "a".into(),
            revision: 1,
            commit: "c".into(),
            digest: "d".into(),
            plan: crate::model::JobPlan::Build,
            dockerfile: String::new(),
            cancelled: None,
        });
        assert_eq!(store.apply(&plan, "c").await.unwrap(), [1]);
        store.append_log(1, &[line("old")]).await.unwrap();
        let mut t = tail(&store, 0);
        t.status = JobStatus::Queued;
        // History from the store.
        assert!(t.next_event().await.is_some());
        assert_eq!(t.next, 1);
        let viewer = tokio::spawn(async move {
            let event = t.next_event().await;
            (event.is_some(), t.next)
        });
        store.append_log(1, &[line("new")]).await.unwrap();
        assert_eq!(viewer.await.unwrap(), (true, 2));
    }
}
