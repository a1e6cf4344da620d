//! BuildKit's solve status turned into the job log lines users expect.
//!
//! BuildKit does not print a log: it streams `StatusResponse` messages, each a batch of
//! vertex updates (a build step or an internal operation, with `started`, `completed`,
//! `cached` and `error`), transfer statuses (pulls, context uploads) and raw output chunks of
//! the steps' processes. This module renders them the way `docker build --progress=plain`
//! does, which is what people know from their terminal:
//!
//! ```text
//! #5 [stage-0 3/4] RUN apt-get update && apt-get install -y jq
//! #5 Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
//! #5 DONE 2.5s
//! #6 [stage-0 2/4] COPY kiln-ca-bundle.crt /usr/local/share/kiln/ca-bundle.crt
//! #6 CACHED
//! #7 [stage-0 4/4] RUN false
//! #7 ERROR: executor failed running [/bin/sh -c false]: exit code: 1
//! ```
//!
//! `#N` numbers vertexes in the order they first appear. Output chunks are not line aligned
//! and steps run in parallel, so each vertex has its own line buffer; a line longer than
//! [`MAX_LINE`] is emitted in pieces and a carriage-return progress bar keeps only what a
//! terminal would show last. Memory is bounded by the number of vertexes, never by the size
//! of the log: a line leaves as soon as its newline arrives; per vertex only its partial
//! line and the last [`TAIL_LINES`] (clipped) lines are kept, for the error message of a
//! failing step.
//!
//! Pure: no I/O, no clock (durations come from BuildKit's own timestamps).

use bollard::moby::buildkit::v1::{StatusResponse, Vertex};
use std::collections::{HashMap, VecDeque};

/// A line longer than this without a newline is emitted in pieces.
pub const MAX_LINE: usize = 64 * 1024;
/// How many of a vertex's last output lines are kept for its error message.
pub const TAIL_LINES: usize = 10;
/// How much of one kept tail line is kept.
const TAIL_LINE_CHARS: usize = 512;
/// How BuildKit names the vertex that reads a `cache_from` image's inline cache.
const CACHE_IMPORT: &str = "importing cache manifest from ";
/// The error BuildKit gives the steps it cancels because another one failed.
const CANCELED: &str = "context canceled";

/// The step that failed a build, for the job's error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `#N` and the vertex name, e.g. `#7 [stage-0 4/4] RUN false`.
    pub step: String,
    /// BuildKit's error text for the vertex.
    pub error: String,
    /// The step's last output lines (at most [`TAIL_LINES`]), oldest first.
    pub tail: Vec<String>,
}

impl Failure {
    /// One line naming the step and its error, for the job's `error` (the last output
    /// lines are in the log, in the summary after the failure).
    pub fn message(&self) -> String {
        format!("step {} failed: {}", self.step, self.error)
    }
}

/// What is known of one vertex.
#[derive(Debug, Default)]
struct Step {
    number: usize,
    name: String,
    /// The header line `#N name` has been emitted.
    announced: bool,
    /// `CACHED`, `DONE` or `ERROR` has been emitted.
    finished: bool,
    /// Output without its newline yet.
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

/// Turns BuildKit status messages into log lines; see the module documentation.
#[derive(Debug, Default)]
pub struct Progress {
    steps: HashMap<String, Step>,
    next_number: usize,
    failure: Option<Failure>,
    /// Transfer statuses already reported as done (by vertex and status id), so a repeated
    /// final status is not printed twice. Cleared with its vertex's completion.
    statuses_done: HashMap<String, Vec<String>>,
}

impl Progress {
    /// The lines one status message adds, in order: step starts, output, transfer results,
    /// then step ends (so a step's last output comes before its `DONE`).
    pub fn update(&mut self, status: &StatusResponse) -> Vec<String> {
        let mut out = Vec::new();
        for v in &status.vertexes {
            let step = self.step(&v.digest);
            if !v.name.is_empty() {
                step.name.clone_from(&v.name);
            }
            if v.started.is_some() || v.cached || v.completed.is_some() || !v.error.is_empty() {
                announce(step, &mut out);
            }
        }
        for log in &status.logs {
            let step = self.step(&log.vertex);
            announce(step, &mut out);
            push_output(step, &log.msg, &mut out);
        }
        for s in &status.statuses {
            if s.completed.is_none() || s.id.is_empty() {
                continue;
            }
            let done = self.statuses_done.entry(s.vertex.clone()).or_default();
            if done.contains(&s.id) {
                continue;
            }
            done.push(s.id.clone());
            let step = self.step(&s.vertex);
            announce(step, &mut out);
            let amount = match (s.current, s.total) {
                (c, t) if t > 0 => format!(" {} / {}", human_size(c), human_size(t)),
                (c, _) if c > 0 => format!(" {}", human_size(c)),
                _ => String::new(),
            };
            let took = duration(
                s.started.as_ref().map(|t| (t.seconds, t.nanos)),
                s.completed.as_ref().map(|t| (t.seconds, t.nanos)),
            )
            .map(|d| format!(" {d:.1}s"))
            .unwrap_or_default();
            out.push(format!("#{} {}{amount}{took} done", step.number, s.id));
        }
        for w in &status.warnings {
            let step = self.step(&w.vertex);
            announce(step, &mut out);
            out.push(format!(
                "#{} WARN: {}",
                step.number,
                String::from_utf8_lossy(&w.short).trim_end()
            ));
        }
        for v in &status.vertexes {
            self.finish_vertex(v, &mut out);
        }
        out
    }

    /// Flushes every step's unfinished line (the stream ended).
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut steps: Vec<&mut Step> = self.steps.values_mut().collect();
        steps.sort_by_key(|s| s.number);
        for step in steps {
            flush_partial(step, &mut out);
        }
        out
    }

    /// The step that failed, once one has: the first error other than the "context
    /// canceled" BuildKit gives the steps it stops because of it (that one is taken only
    /// when nothing else failed).
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    fn step(&mut self, digest: &str) -> &mut Step {
        let next = &mut self.next_number;
        self.steps.entry(digest.to_string()).or_insert_with(|| {
            *next += 1;
            Step {
                number: *next,
                ..Step::default()
            }
        })
    }

    fn finish_vertex(&mut self, v: &Vertex, out: &mut Vec<String>) {
        if v.completed.is_none() && !v.cached && v.error.is_empty() {
            return;
        }
        let step = self.step(&v.digest);
        if step.finished {
            return;
        }
        if v.cached {
            flush_partial(step, out);
            step.finished = true;
            out.push(format!("#{} CACHED", step.number));
            return;
        }
        if v.completed.is_none() {
            return;
        }
        flush_partial(step, out);
        step.finished = true;
        let number = step.number;
        if v.error.is_empty() {
            let took = duration(
                v.started.as_ref().map(|t| (t.seconds, t.nanos)),
                v.completed.as_ref().map(|t| (t.seconds, t.nanos)),
            )
            .unwrap_or(0.0);
            out.push(format!("#{number} DONE {took:.1}s"));
        } else if self.step(&v.digest).name.starts_with(CACHE_IMPORT) {
            // A cache source that is not there yet (the spec's first build) or not readable:
            // BuildKit builds without it, so this is no failure of the build.
            out.push(format!("#{number} not used: {}", v.error));
        } else {
            out.push(format!("#{number} ERROR: {}", v.error));
            let replaces = match &self.failure {
                None => true,
                Some(f) => f.error.contains(CANCELED) && !v.error.contains(CANCELED),
            };
            if replaces {
                let step = self.step(&v.digest);
                self.failure = Some(Failure {
                    step: format!("#{number} {}", step.name),
                    error: v.error.clone(),
                    tail: step.tail.iter().cloned().collect(),
                });
            }
        }
        let step = self.step(&v.digest);
        step.tail.clear();
        step.tail.shrink_to_fit();
        self.statuses_done.remove(&v.digest);
    }
}

fn announce(step: &mut Step, out: &mut Vec<String>) {
    if !step.announced {
        step.announced = true;
        out.push(
            format!("#{} {}", step.number, step.name)
                .trim_end()
                .to_string(),
        );
    }
}

/// Adds an output chunk to the step's line buffer; every whole line goes to `out`.
fn push_output(step: &mut Step, chunk: &[u8], out: &mut Vec<String>) {
    let mut rest = chunk;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        step.partial.extend_from_slice(&rest[..i]);
        rest = &rest[i + 1..];
        emit_partial(step, out);
    }
    step.partial.extend_from_slice(rest);
    while step.partial.len() >= MAX_LINE {
        // Cut before a UTF-8 continuation byte's character, so no piece holds half of one.
        let mut cut = MAX_LINE;
        while cut > MAX_LINE - 3 && step.partial.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
            cut -= 1;
        }
        let piece: Vec<u8> = step.partial.drain(..cut).collect();
        emit(step, &piece, out);
    }
}

fn flush_partial(step: &mut Step, out: &mut Vec<String>) {
    if !step.partial.is_empty() {
        emit_partial(step, out);
    }
}

fn emit_partial(step: &mut Step, out: &mut Vec<String>) {
    // `take` leaves an empty buffer: a long line's allocation does not stay.
    let line = std::mem::take(&mut step.partial);
    emit(step, &line, out);
}

/// One output line of a step: `\r`-overwritten text reduced to its last version.
fn emit(step: &mut Step, raw: &[u8], out: &mut Vec<String>) {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let shown = match raw.iter().rposition(|&b| b == b'\r') {
        Some(i) => &raw[i + 1..],
        None => raw,
    };
    let text = String::from_utf8_lossy(shown);
    if step.tail.len() == TAIL_LINES {
        step.tail.pop_front();
    }
    step.tail
        .push_back(text.chars().take(TAIL_LINE_CHARS).collect());
    out.push(format!("#{} {text}", step.number));
}

/// A protobuf timestamp as `(seconds, nanos)` (bollard does not re-export its type; its
/// fields are enough).
type Instant = (i64, i32);

/// Seconds from `start` to `end`, when both are known and in order.
fn duration(start: Option<Instant>, end: Option<Instant>) -> Option<f64> {
    let ((s_secs, s_nanos), (e_secs, e_nanos)) = (start?, end?);
    let secs = (e_secs - s_secs) as f64 + f64::from(e_nanos - s_nanos) / 1e9;
    (secs >= 0.0).then_some(secs)
}

/// `12.3MB`-style sizes, as BuildKit's plain progress prints them.
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
impl Progress {
    /// Bytes held for unfinished lines and error tails: what must stay bounded.
    fn retained_bytes(&self) -> usize {
        self.steps
            .values()
            .map(|s| s.partial.capacity() + s.tail.iter().map(String::len).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::moby::buildkit::v1::{VertexLog, VertexStatus};

    /// Sets a protobuf timestamp field to `secs.millis` after an arbitrary epoch (bollard
    /// does not re-export the type; inference names it).
    macro_rules! stamp {
        ($slot:expr, $secs:expr, $millis:expr) => {{
            let mut t = $slot.take().unwrap_or_default();
            t.seconds = 1_764_700_000 + $secs;
            t.nanos = $millis * 1_000_000;
            $slot = Some(t);
        }};
    }

    fn vertex(digest: &str, name: &str) -> Vertex {
        Vertex {
            digest: digest.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn started(mut v: Vertex, secs: i64, millis: i32) -> Vertex {
        stamp!(v.started, secs, millis);
        v
    }

    fn completed(mut v: Vertex, secs: i64, millis: i32) -> Vertex {
        stamp!(v.completed, secs, millis);
        v
    }

    fn log(digest: &str, msg: &str) -> VertexLog {
        VertexLog {
            vertex: digest.into(),
            stream: 1,
            msg: msg.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn status(vertexes: Vec<Vertex>, logs: Vec<VertexLog>) -> StatusResponse {
        StatusResponse {
            vertexes,
            logs,
            ..Default::default()
        }
    }

    const RUN: &str = "[stage-0 3/4] RUN apt-get update && apt-get install -y jq";

    /// The sequence Engine 20.10 sends for a build whose COPY is cached and whose RUN prints
    /// output in chunks that do not end at newlines.
    #[test]
    fn steps_output_cached_and_durations_read_like_plain_progress() {
        let mut p = Progress::default();
        let mut lines = Vec::new();
        let meta = vertex(
            "sha256:m",
            "[internal] load metadata for 127.0.0.1:5000/kiln/bookworm:minbase",
        );
        lines.extend(p.update(&status(vec![meta.clone()], vec![])));
        assert!(
            lines.is_empty(),
            "a vertex that has not started is not shown: {lines:?}"
        );
        lines.extend(p.update(&status(vec![started(meta.clone(), 0, 0)], vec![])));
        lines.extend(p.update(&status(vec![completed(started(meta, 0, 0), 0, 40)], vec![])));
        let copy = vertex(
            "sha256:c",
            "[stage-0 2/4] COPY kiln-ca-bundle.crt /usr/local/share/kiln/ca-bundle.crt",
        );
        let mut cached = completed(started(copy, 1, 0), 1, 0);
        cached.cached = true;
        lines.extend(p.update(&status(vec![cached], vec![])));
        let run = vertex("sha256:r", RUN);
        lines.extend(p.update(&status(
            vec![started(run.clone(), 1, 0)],
            vec![log("sha256:r", "Get:1 http://deb")],
        )));
        lines.extend(p.update(&status(
            vec![],
            vec![
                log("sha256:r", ".debian.org bookworm InRelease\nReading pa"),
                log("sha256:r", "ckage lists...\n"),
            ],
        )));
        lines.extend(p.update(&status(
            vec![completed(started(run, 1, 0), 3, 500)],
            vec![log("sha256:r", "Setting up jq")],
        )));
        assert_eq!(
            lines,
            [
                "#1 [internal] load metadata for 127.0.0.1:5000/kiln/bookworm:minbase",
                "#1 DONE 0.0s",
                "#2 [stage-0 2/4] COPY kiln-ca-bundle.crt /usr/local/share/kiln/ca-bundle.crt",
                "#2 CACHED",
                &format!("#3 {RUN}"),
                "#3 Get:1 http://deb.debian.org bookworm InRelease",
                "#3 Reading package lists...",
                "#3 Setting up jq",
                "#3 DONE 2.5s",
            ]
        );
        assert!(p.failure().is_none());
        assert!(p.finish().is_empty());
    }

    #[test]
    fn parallel_steps_keep_their_own_lines() {
        let mut p = Progress::default();
        let a = started(vertex("sha256:a", "[a 2/2] RUN x"), 0, 0);
        let b = started(vertex("sha256:b", "[b 2/2] RUN y"), 0, 0);
        let mut lines = p.update(&status(
            vec![a, b],
            vec![log("sha256:a", "from "), log("sha256:b", "other ")],
        ));
        lines.extend(p.update(&status(
            vec![],
            vec![log("sha256:b", "side\n"), log("sha256:a", "a\n")],
        )));
        assert_eq!(
            lines,
            [
                "#1 [a 2/2] RUN x",
                "#2 [b 2/2] RUN y",
                "#2 other side",
                "#1 from a"
            ]
        );
    }

    #[test]
    fn the_failing_step_is_named_with_its_error_and_last_lines() {
        let mut p = Progress::default();
        let run = started(vertex("sha256:f", "[stage-0 4/4] RUN false"), 0, 0);
        let other = started(vertex("sha256:o", "[other 2/2] RUN sleep 9"), 0, 0);
        p.update(&status(
            vec![run.clone(), other.clone()],
            vec![log("sha256:f", "E: Unable to locate package nope\n")],
        ));
        let mut failed = completed(run, 0, 300);
        failed.error = "executor failed running [/bin/sh -c false]: exit code: 1".into();
        let mut canceled = completed(other, 0, 300);
        canceled.error = "context canceled".into();
        // The canceled sibling is reported first; the real failure still wins.
        let lines = p.update(&status(vec![canceled, failed], vec![]));
        assert_eq!(
            lines,
            [
                "#2 ERROR: context canceled",
                "#1 ERROR: executor failed running [/bin/sh -c false]: exit code: 1",
            ]
        );
        let f = p.failure().unwrap();
        assert_eq!(f.step, "#1 [stage-0 4/4] RUN false");
        assert_eq!(f.tail, ["E: Unable to locate package nope"]);
        assert_eq!(
            f.message(),
            "step #1 [stage-0 4/4] RUN false failed: executor failed running [/bin/sh -c false]: exit code: 1"
        );
    }

    #[test]
    fn a_missing_cache_source_is_no_failure() {
        let mut p = Progress::default();
        let import = started(
            vertex(
                "sha256:c",
                "importing cache manifest from 127.0.0.1:5000/a:latest",
            ),
            0,
            0,
        );
        p.update(&status(vec![import.clone()], vec![]));
        let mut missing = completed(import, 0, 10);
        missing.error = "127.0.0.1:5000/a:latest: not found".into();
        let lines = p.update(&status(vec![missing], vec![]));
        assert_eq!(lines, ["#1 not used: 127.0.0.1:5000/a:latest: not found"]);
        assert_eq!(p.failure(), None);
    }

    #[test]
    fn transfers_are_reported_once_when_done() {
        let mut p = Progress::default();
        let pull = started(
            vertex("sha256:p", "[stage-0 1/2] FROM 127.0.0.1:5001/kiln/x:1"),
            0,
            0,
        );
        let mut s = VertexStatus {
            id: "sha256:layer".into(),
            vertex: "sha256:p".into(),
            current: 5_000_000,
            total: 27_100_000,
            ..Default::default()
        };
        let mut msg = status(vec![pull], vec![]);
        msg.statuses = vec![s.clone()];
        assert_eq!(
            p.update(&msg),
            ["#1 [stage-0 1/2] FROM 127.0.0.1:5001/kiln/x:1"]
        );
        s.current = 27_100_000;
        stamp!(s.started, 0, 0);
        stamp!(s.completed, 0, 400);
        let msg = StatusResponse {
            statuses: vec![s],
            ..Default::default()
        };
        assert_eq!(
            p.update(&msg),
            ["#1 sha256:layer 27.1MB / 27.1MB 0.4s done"]
        );
        assert!(p.update(&msg).is_empty());
    }

    #[test]
    fn carriage_returns_keep_the_last_version_and_long_lines_are_cut() {
        let mut p = Progress::default();
        let run = started(vertex("sha256:r", "[1/1] RUN pip"), 0, 0);
        let mut lines = p.update(&status(
            vec![run],
            vec![log("sha256:r", " 10%\r 50%\r100%\r\n")],
        ));
        assert_eq!(lines, ["#1 [1/1] RUN pip", "#1 100%"]);
        // A multibyte character straddling the cut stays whole.
        let long = format!("{}é{}", "x".repeat(MAX_LINE - 1), "y".repeat(10));
        lines = p.update(&status(vec![], vec![log("sha256:r", &long)]));
        assert_eq!(lines, [format!("#1 {}", "x".repeat(MAX_LINE - 1))]);
        assert_eq!(p.finish(), [format!("#1 é{}", "y".repeat(10))]);
    }

    #[test]
    fn a_huge_log_streams_through_bounded_memory() {
        let mut p = Progress::default();
        let run = started(vertex("sha256:r", "[1/1] RUN yes"), 0, 0);
        p.update(&status(vec![run], vec![]));
        // 40 MB of output in 16 KiB chunks that split lines anywhere, plus 1 MB without any
        // newline: nothing is held beyond the partial line and the short tail.
        let chunk: String = "0123456789abcdefghijklmnopqrstuvwxyz output line\n"
            .repeat(400)
            .chars()
            .take(16 * 1024)
            .collect();
        let mut emitted = 0usize;
        let mut max_retained = 0;
        for _ in 0..(40 << 20) / chunk.len() {
            emitted += p
                .update(&status(vec![], vec![log("sha256:r", &chunk)]))
                .len();
            max_retained = max_retained.max(p.retained_bytes());
        }
        let no_newline = "z".repeat(16 * 1024);
        for _ in 0..64 {
            emitted += p
                .update(&status(vec![], vec![log("sha256:r", &no_newline)]))
                .len();
            max_retained = max_retained.max(p.retained_bytes());
        }
        assert!(emitted > 800_000, "{emitted}");
        assert!(
            max_retained < 2 * MAX_LINE + TAIL_LINES * TAIL_LINE_CHARS + 8192,
            "{max_retained}"
        );
    }
}
