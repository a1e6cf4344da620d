//! Image tests: the spec's `tests:` commands, run in the built image before anything is pushed.
//!
//! Why here and not in the Dockerfile: a `RUN` test would run with the build's network and
//! leave a layer behind; a test must see the image exactly as users will start it, offline.
//! So each command runs with `/bin/sh -c` in a throw-away container of the built image
//! (entrypoint replaced, `--network none`, the container removed in every case; see
//! [`crate::docker::run`]), one after the other, each within `image_test_timeout`. Its
//! output (stdout and stderr, merged) goes to the job log. The first failing command fails the
//! job: nothing is pushed, so `latest` and the catalogue stay on the previous image.
//!
//! The commands come from the revision's committed YAML (the job records only the digest),
//! and `tests:` is part of the digest, so a re-used image has passed the same tests already.

use crate::builder::Builder;
use crate::docker::EngineError;
use crate::docker::LogSink;
use crate::jobs::JobError;
use crate::model::Job;
use crate::spec::{SpecContext, parse_spec};
use crate::store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default time limit of one test command (`image_test_timeout` in the config).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The `tests:` of the revision `job` builds; empty when the spec has none.
pub fn tests_of(store: &Store, job: &Job) -> Result<Vec<String>, JobError> {
    let Some(revision) = store.revision(&job.spec, job.revision)? else {
        return Ok(vec![]);
    };
    let parsed = parse_spec(
        &revision.path,
        revision.yaml.as_bytes(),
        &SpecContext::default(),
    );
    Ok(parsed.spec.map(|s| s.tests).unwrap_or_default())
}

/// How one test ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed { code: i64 },
    TimedOut,
}

/// Runs every test in `image`, logging each command, its output and its result. Returns the
/// error that fails the job at the first test that does not pass.
pub async fn run_all(
    b: &dyn Builder,
    image: &str,
    tests: &[String],
    timeout: Duration,
    log: &mut dyn LogSink,
    cancel: &CancellationToken,
) -> Result<(), JobError> {
    if tests.is_empty() {
        return Ok(());
    }
    let total = tests.len();
    for (i, command) in tests.iter().enumerate() {
        let n = i + 1;
        log.line(format!("kiln: image test {n}/{total}: {command}"));
        let (outcome, output) = run_one(b, image, command, timeout, cancel).await?;
        for line in output.lines() {
            log.line(format!("  {line}"));
        }
        match outcome {
            Outcome::Passed => log.line(format!("kiln: image test {n}/{total} passed")),
            Outcome::Failed { code } => {
                let message = format!(
                    "image test {n}/{total} failed with exit code {code}: {command}; nothing was pushed"
                );
                log.line(format!("kiln: {message}"));
                return Err(JobError::Setup(message));
            }
            Outcome::TimedOut => {
                let message = format!(
                    "image test {n}/{total} did not finish within {} s: {command}; nothing was pushed",
                    timeout.as_secs()
                );
                log.line(format!("kiln: {message}"));
                return Err(JobError::Setup(message));
            }
        }
    }
    log.line(format!("kiln: all {total} image tests passed"));
    Ok(())
}

/// One command, stderr merged into stdout. A timeout cancels the run (which removes the
/// container) and is waited for, so no container outlives the test.
pub async fn run_one(
    b: &dyn Builder,
    image: &str,
    command: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(Outcome, String), JobError> {
    let script = format!("exec 2>&1\n{command}");
    let argv = ["/bin/sh", "-c", script.as_str()];
    let child = cancel.child_token();
    let run = b.run_capture(image, &argv, &child);
    tokio::pin!(run);
    let (result, timed_out) = tokio::select! {
        result = &mut run => (result, false),
        _ = tokio::time::sleep(timeout) => {
            child.cancel();
            ((&mut run).await, true)
        }
    };
    match result {
        Ok((0, out)) => Ok((Outcome::Passed, out)),
        Ok((code, out)) => Ok((Outcome::Failed { code }, out)),
        Err(EngineError::Cancelled) if timed_out && !cancel.is_cancelled() => {
            Ok((Outcome::TimedOut, String::new()))
        }
        Err(e) => Err(e.into()),
    }
}
