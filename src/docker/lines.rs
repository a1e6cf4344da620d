//! Whole log lines out of the Engine's byte stream, and where they go.
//!
//! [`LogSink`] is the caller's side of every Engine stream (BuildKit's progress, pulls,
//! pushes), with backpressure, so a slow store slows the reading of the Engine's stream
//! instead of buffering without bound. (BuildKit's output chunks are re-assembled into lines
//! per step by `crate::buildkit::progress`.)

use std::future::Future;
use std::pin::Pin;

/// Where the Engine layer puts log lines, one whole line per call.
///
/// [`LogSink::ready`] is the backpressure: the build, pull and push loops await it after each
/// Engine message, so a sink that cannot keep up (a store writing to disk) slows the reading
/// of the Engine's stream instead of buffering lines without bound. A closure is a sink that
/// is always ready.
pub trait LogSink: Send {
    /// Takes one line; never blocks.
    fn line(&mut self, line: String);
    /// Resolves once the sink can take more lines without growing past its bound.
    fn ready(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

impl<F: FnMut(String) + Send> LogSink for F {
    fn line(&mut self, line: String) {
        self(line)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    /// A sink that keeps every line, for tests.
    pub(crate) fn collect() -> (Arc<Mutex<Vec<String>>>, impl FnMut(String) + Send) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        (lines, move |l| sink.lock().unwrap().push(l))
    }
}
