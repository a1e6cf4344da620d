//! Every BuildKit build on a thread and a Tokio runtime of its own.
//!
//! Why: a BuildKit build needs a session, a gRPC server on the client side that the Engine
//! calls back (over an upgraded `/session` connection) for registry credentials and
//! secrets (`session_server.rs`). It runs as spawned tasks (the tonic server, hyper's
//! connection drivers), and the Engine keeps a session open for as long as its client does,
//! so a task left behind would keep a connection (a file descriptor) for the life of the
//! process. Here the build runs in a `current_thread` runtime on its own thread; when the
//! build ends the runtime is dropped, which drops every task the build spawned and closes
//! every connection it opened (the Docker client for inspect and tag is created inside the
//! runtime too, so no pooled connection of it outlives it either).
//!
//! Log lines cross to the caller through a bounded channel: a caller whose log sink is slow
//! makes the build thread wait, so a huge build log never piles up in memory.

use crate::docker::{EngineError, LogSink};
use std::future::Future;
use tokio::sync::mpsc;

/// How many batches of lines may wait between the build thread and the caller.
const BATCHES_IN_FLIGHT: usize = 8;

/// The build thread's end of the log channel.
pub(crate) struct LineSender {
    tx: mpsc::Sender<Vec<String>>,
}

impl LineSender {
    /// Sends a batch of lines, waiting while the caller is behind. `false` when the caller
    /// has gone away (its future was dropped): the build should stop then.
    pub(crate) async fn send(&self, lines: Vec<String>) -> bool {
        if lines.is_empty() {
            return !self.tx.is_closed();
        }
        self.tx.send(lines).await.is_ok()
    }
}

/// Runs the future `work` makes on a new thread with its own runtime, passing every line it
/// sends to `log` (awaiting [`LogSink::ready`] between batches), and returns its result
/// once the thread, its runtime and everything spawned on it are gone.
pub(crate) async fn isolated<T, F, Fut>(
    name: &str,
    work: F,
    log: &mut dyn LogSink,
) -> Result<T, EngineError>
where
    T: Send + 'static,
    F: FnOnce(LineSender) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, EngineError>> + 'static,
{
    let (tx, mut rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| EngineError::Other(format!("cannot start a build runtime: {e}")))?;
            let result = runtime.block_on(work(LineSender { tx }));
            // Ends the session server and every connection of this build.
            drop(runtime);
            result
        })
        .map_err(|e| EngineError::Other(format!("cannot start a build thread: {e}")))?;
    while let Some(batch) = rx.recv().await {
        for line in batch {
            log.line(line);
        }
        log.ready().await;
    }
    // The channel closes when the work is done and its runtime dropped; the join is short.
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| EngineError::Other(format!("the build thread was lost: {e}")))?
        .unwrap_or_else(|_| Err(EngineError::Other("the build thread panicked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn lines_arrive_in_order_and_the_result_comes_back() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let mut sink = move |line: String| sink_seen.lock().unwrap().push(line);
        let result = isolated(
            "test-build",
            |lines| async move {
                for i in 0..100 {
                    assert!(lines.send(vec![format!("a{i}"), format!("b{i}")]).await);
                }
                Ok(42)
            },
            &mut sink,
        )
        .await;
        assert_eq!(result.unwrap(), 42);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 200);
        assert_eq!(seen[0], "a0");
        assert_eq!(seen[199], "b99");
    }

    #[tokio::test]
    async fn tasks_spawned_by_the_work_end_with_it() {
        // A task like the session server: spawned, never joined, would run forever.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let mut sink = |_line: String| {};
        let result = isolated(
            "test-build",
            move |_lines| async move {
                tokio::spawn(async move {
                    let _keep = alive_tx;
                    std::future::pending::<()>().await;
                });
                Ok(())
            },
            &mut sink,
        )
        .await;
        assert!(result.is_ok());
        // The sender inside the spawned task was dropped with the runtime.
        assert!(alive_rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn an_error_of_the_work_is_returned() {
        let mut sink = |_line: String| {};
        let result: Result<(), _> = isolated(
            "test-build",
            |_lines| async { Err(EngineError::Cancelled) },
            &mut sink,
        )
        .await;
        assert!(matches!(result, Err(EngineError::Cancelled)));
    }
}
