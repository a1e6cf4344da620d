//! Whole log lines out of the Engine's byte stream, and where they go.
//!
//! Build output `stream` chunks are not line aligned (bollard hands them over as the Engine
//! wrote them): [`LineBuffer`] re-assembles lines and cuts runaway ones. [`LogSink`] is the
//! caller's side, with backpressure, so a slow store slows the reading of the Engine's stream
//! instead of buffering without bound.

use std::future::Future;
use std::pin::Pin;

/// A line longer than this without a newline is emitted in pieces.
const MAX_LINE: usize = 64 * 1024;

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

/// Re-assembles whole lines from the build output's unaligned `stream` chunks.
#[derive(Debug, Default)]
pub(super) struct LineBuffer {
    partial: String,
}

impl LineBuffer {
    /// Adds a chunk; returns the lines it completed, without their `\n` / `\r\n`.
    pub(crate) fn push(&mut self, chunk: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(i) = rest.find('\n') {
            self.partial.push_str(&rest[..i]);
            let mut line = std::mem::take(&mut self.partial);
            if line.ends_with('\r') {
                line.pop();
            }
            lines.push(line);
            rest = &rest[i + 1..];
        }
        self.partial.push_str(rest);
        // A runaway line without newline (a progress bar drawn with \r) is cut into pieces.
        while self.partial.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !self.partial.is_char_boundary(cut) {
                cut -= 1;
            }
            let tail = self.partial.split_off(cut);
            lines.push(std::mem::replace(&mut self.partial, tail));
        }
        lines
    }

    /// What is left after the last newline, if anything.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let mut rest = std::mem::take(&mut self.partial);
        if rest.ends_with('\r') {
            rest.pop();
        }
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn line_buffer_reassembles_unaligned_chunks() {
        let mut b = LineBuffer::default();
        assert!(b.push("Step 1/3 : FR").is_empty());
        assert_eq!(
            b.push("OM x\n ---> abc\nStep"),
            ["Step 1/3 : FROM x", " ---> abc"]
        );
        assert_eq!(b.push(" 2/3\r\n\n"), ["Step 2/3", ""]);
        assert_eq!(
            b.push("\u{1b}[31mred\u{1b}[0m\n"),
            ["\u{1b}[31mred\u{1b}[0m"]
        );
        assert_eq!(b.push("50%\r100%\n"), ["50%\r100%"]);
        assert_eq!(b.push("tail"), Vec::<String>::new());
        assert_eq!(b.finish().as_deref(), Some("tail"));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn line_buffer_splits_multibyte_text_anywhere() {
        let text = "größe: 1 → 2\nnächste\n";
        for split in 0..=text.len() {
            if !text.is_char_boundary(split) {
                continue;
            }
            let mut b = LineBuffer::default();
            let mut lines = b.push(&text[..split]);
            lines.extend(b.push(&text[split..]));
            assert_eq!(lines, ["größe: 1 → 2", "nächste"], "split at {split}");
        }
    }

    #[test]
    fn line_buffer_bounds_runaway_lines() {
        let mut b = LineBuffer::default();
        let lines = b.push(&"é".repeat(MAX_LINE));
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE));
        let total: usize =
            lines.iter().map(String::len).sum::<usize>() + b.finish().map_or(0, |r| r.len());
        assert_eq!(total, "é".len() * MAX_LINE);
    }

    pub(crate) fn collect() -> (Arc<Mutex<Vec<String>>>, impl FnMut(String) + Send) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        (lines, move |l| sink.lock().unwrap().push(l))
    }
}
