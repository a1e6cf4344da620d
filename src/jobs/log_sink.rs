//! A job's log on its way to the store, with a bound on what waits in memory.
//!
//! The Engine can print far faster than sled can store and flush (a `RUN` that prints 200 MB
//! does it in seconds). An unbounded hand-off kept every unwritten line in memory, so RSS
//! grew with the log. Here lines go to the writer task through a *bounded* channel; while it
//! is full they wait in [`JobLog`]'s own buffer, and once that buffer is full
//! [`LogSink::ready`] — which the Engine layer awaits before it reads the next message of the
//! build stream — blocks. The backpressure reaches the Engine's HTTP stream, and memory stays
//! at a few MiB whatever the log size. When the writer keeps up, every line is handed over at
//! once, so the dashboard's live tail sees it without delay.
//!
//! Every line is cleaned by the job's [`Redactor`] before it is buffered (this is where log
//! lines are stored, so nothing upstream can forget it): no source credential and no URL
//! userinfo reaches the store, the live tail or the API (`crate::sources::redact`).

use crate::docker::LogSink;
use crate::model::JobId;
use crate::sources::job::Redactor;
use crate::store::{LogLine, Store};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines stored (and flushed) per store write at most.
const WRITE_BATCH_LINES: usize = 1000;
/// `ready` blocks once this many lines or bytes wait in the sink's own buffer.
const PENDING_LINES: usize = 1000;
const PENDING_BYTES: usize = 1 << 20;
/// Hand-offs in flight to the writer (each at most about one pending buffer).
const CHANNEL_CAPACITY: usize = 4;

/// The [`LogSink`] of one job run: timestamps each line when it is produced.
pub(super) struct JobLog {
    tx: mpsc::Sender<Vec<LogLine>>,
    pending: Pending,
    redactor: Redactor,
}

/// Lines produced while the channel was full.
#[derive(Default)]
struct Pending {
    lines: Vec<LogLine>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, text: String) {
        self.bytes += text.len();
        self.lines.push(LogLine {
            at_ms: now_ms(),
            text,
        });
    }

    fn take(&mut self) -> Vec<LogLine> {
        self.bytes = 0;
        std::mem::take(&mut self.lines)
    }

    fn full(&self) -> bool {
        self.lines.len() >= PENDING_LINES || self.bytes >= PENDING_BYTES
    }
}

impl JobLog {
    /// A sink for `job`, and the task writing its lines to the store (ends after
    /// [`JobLog::close`]).
    pub(super) fn start(store: Store, job: JobId, redactor: Redactor) -> (JobLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let writer = tokio::spawn(write(store, job, rx));
        let log = JobLog {
            tx,
            pending: Pending::default(),
            redactor,
        };
        (log, writer)
    }

    /// `text` (an error message) cleaned as the log's lines are.
    pub(super) fn redact(&self, text: &str) -> String {
        self.redactor.clean(text)
    }

    /// Hands over what is still pending and closes the channel; the writer then stores the
    /// rest and ends.
    pub(super) async fn close(mut self) {
        if !self.pending.lines.is_empty() {
            let _ = self.tx.send(self.pending.take()).await;
        }
    }
}

impl LogSink for JobLog {
    fn line(&mut self, text: String) {
        self.pending.push(self.redactor.line(text));
        if let Ok(permit) = self.tx.try_reserve() {
            permit.send(self.pending.take());
        }
    }

    fn ready(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        if !self.pending.full() {
            return Box::pin(std::future::ready(()));
        }
        Box::pin(async move {
            match self.tx.reserve().await {
                Ok(permit) => permit.send(self.pending.take()),
                // The writer is gone (the runtime shuts down): nothing can be stored.
                Err(_) => {
                    self.pending.take();
                }
            }
        })
    }
}

/// Stores the lines as they come, merging what is queued into writes of up to
/// [`WRITE_BATCH_LINES`] lines.
async fn write(store: Store, job: JobId, mut rx: mpsc::Receiver<Vec<LogLine>>) {
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < WRITE_BATCH_LINES {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        if let Err(e) = store.append_log(job, &batch).await {
            tracing::error!(job, error = %e, "cannot store log lines");
        }
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn sink() -> (JobLog, mpsc::Receiver<Vec<LogLine>>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let log = JobLog {
            tx,
            pending: Pending::default(),
            redactor: Redactor::default(),
        };
        (log, rx)
    }

    #[tokio::test]
    async fn lines_are_handed_over_at_once_while_the_writer_keeps_up() {
        let (mut log, mut rx) = sink();
        log.line("first".into());
        let got = rx.try_recv().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "first");
        assert!(got[0].at_ms > 0);
        assert!(log.ready().now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_stalled_writer_stops_the_reader_after_a_bounded_buffer() {
        let (mut log, mut rx) = sink();
        let mut produced = 0;
        // Nobody reads `rx`: the channel fills, then the pending buffer.
        loop {
            if log.ready().now_or_never().is_none() {
                break;
            }
            log.line(format!("line {produced}"));
            produced += 1;
            assert!(
                produced <= CHANNEL_CAPACITY + PENDING_LINES,
                "never blocked"
            );
        }
        assert_eq!(produced, CHANNEL_CAPACITY + PENDING_LINES);
        // Byte bound too: a few huge lines block as well.
        let (mut big, _rx2) = sink();
        for _ in 0..CHANNEL_CAPACITY {
            big.line(String::new());
        }
        big.line("x".repeat(PENDING_BYTES));
        assert!(big.ready().now_or_never().is_none());

        // The writer reads one hand-off: the reader may go on, and nothing was lost or reordered.
        let first = rx.recv().await.unwrap();
        log.ready().await;
        log.close().await;
        let mut all: Vec<String> = first.into_iter().map(|l| l.text).collect();
        while let Some(more) = rx.recv().await {
            all.extend(more.into_iter().map(|l| l.text));
        }
        let expected: Vec<String> = (0..produced).map(|i| format!("line {i}")).collect();
        assert_eq!(all, expected);
    }

    #[tokio::test]
    async fn stored_lines_carry_no_url_userinfo() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (mut log, writer) = JobLog::start(store.clone(), 3, Redactor::default());
        log.line("Looking in indexes: http://alice:****@127.0.0.1:8081/simple/".into());
        assert_eq!(
            log.redact("https://u:hunter2@x/ failed"),
            "https://***@x/ failed"
        );
        log.close().await;
        writer.await.unwrap();
        let lines = store.log_lines(3, 0, 10).unwrap();
        assert_eq!(
            lines[0].1.text,
            "Looking in indexes: http://***@127.0.0.1:8081/simple/"
        );
    }

    #[tokio::test]
    async fn every_line_reaches_the_store_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (mut log, writer) = JobLog::start(store.clone(), 7, Redactor::default());
        for i in 0..25_000 {
            log.ready().await;
            log.line(format!("line {i}"));
        }
        log.close().await;
        writer.await.unwrap();
        assert_eq!(store.log_len(7).unwrap(), 25_000);
        let lines = store.log_lines(7, 24_990, 100).unwrap();
        let texts: Vec<&str> = lines.iter().map(|(_, l)| l.text.as_str()).collect();
        assert_eq!(texts.first().copied(), Some("line 24990"));
        assert_eq!(texts.last().copied(), Some("line 24999"));
    }
}
