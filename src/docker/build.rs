//! Building a Dockerfile with the classic builder and streaming its output.
//!
//! A build fails on three channels (HTTP error before the stream, `errorDetail` inside it, a
//! stream that ends without an image id); all three become [`EngineError`]s. The output is
//! read only as fast as the log sink takes it, and the builder's `Step N/M` lines tell which
//! image each step made ([`StepImage`]), so the package listing can start before the
//! metadata-only steps are done.

use super::auth::{Credential, registry_of};
use super::context::build_context;
use super::error::{EngineError, Op, redact};
use super::headers::docker_credentials;
use super::lines::LineBuffer;
use super::progress::{Drained, ProgressCondenser};
use super::{Engine, LogSink};
use bollard::errors::Error as BollardError;
use bollard::models::BuildInfo;
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion};
use futures_util::StreamExt;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image id, `sha256:…`.
    pub image_id: String,
}

/// A request for the image one build step produced, handed over while the build goes on.
///
/// Kiln uses it to look inside an image before the builder has finished the metadata-only
/// steps (`LABEL`, `USER`) that follow the last `RUN`: they change no file, so the listing
/// of installed packages can run in parallel with them.
#[derive(Debug)]
pub struct StepImage {
    /// 1-based step number, counted like the classic builder's `Step N/M`.
    pub step: usize,
    /// Receives the step's image id (short form, as the builder prints it) when the next step
    /// starts. Dropped unsent when the build ends first, fails, or is not a classic build.
    pub tx: tokio::sync::oneshot::Sender<String>,
}

/// What to build. `Default` gives an empty request, so callers can write
/// `BuildRequest { dockerfile, tags, ..Default::default() }`.
#[derive(Clone, Copy, Default)]
pub struct BuildRequest<'a> {
    /// The Dockerfile text (the context holds it as `Dockerfile`).
    pub dockerfile: &'a str,
    /// A CA bundle, put into the context as [`CA_BUNDLE_CONTEXT_NAME`].
    pub ca_bundle: Option<&'a [u8]>,
    /// Every tag to apply; the first is the build's `t`, the others are added after success.
    pub tags: &'a [String],
    /// Credential for the registry of the `FROM` image (sent as `X-Registry-Config`).
    pub pull_auth: Option<&'a Credential>,
    /// Network mode for `RUN` steps (`None`: the Engine's default bridge; `host` on machines
    /// where the bridge has no route out).
    pub network: Option<&'a str>,
}

impl std::fmt::Debug for BuildRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("dockerfile_bytes", &self.dockerfile.len())
            .field("ca_bundle_bytes", &self.ca_bundle.map(<[u8]>::len))
            .field("tags", &self.tags)
            .field("pull_auth", &self.pull_auth)
            .field("network", &self.network)
            .finish()
    }
}

/// What a build's output said about the image it made.
#[derive(Debug, Default, PartialEq, Eq)]
struct BuildOutcome {
    /// `aux.ID` of the build stream (full `sha256:…`).
    aux_id: Option<String>,
    /// The short id of the classic builder's "Successfully built <id>" line.
    built_line_id: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum ImageIdent {
    Full(String),
    Short(String),
}

impl BuildOutcome {
    /// The image id, or the failure of a build whose output ended without one.
    fn image_id(self) -> Result<ImageIdent, EngineError> {
        match (self.aux_id, self.built_line_id) {
            (Some(id), _) => Ok(ImageIdent::Full(id)),
            (None, Some(short)) => Ok(ImageIdent::Short(short)),
            (None, None) => Err(EngineError::BuildFailed(
                "the build output ended without an image id (the Engine reported no error)".into(),
            )),
        }
    }
}

/// Reads a build's output to its end: whole `stream` lines and condensed `status` lines go to
/// `log`, `aux.ID` is kept. On cancellation the stream is dropped at once, which closes the
/// connection: the classic builder sees the client go away, kills the running step and tags
/// nothing.
async fn drain_build<S>(
    stream: S,
    log: &mut dyn LogSink,
    auth: Option<&Credential>,
    mut watch: Option<StepImage>,
    cancel: &CancellationToken,
) -> Drained<BuildOutcome>
where
    S: futures_util::Stream<Item = Result<BuildInfo, BollardError>>,
{
    let mut stream = Box::pin(stream);
    let mut lines = LineBuffer::default();
    let mut progress = ProgressCondenser::default();
    let mut outcome = BuildOutcome::default();
    let mut steps = StepTracker::default();
    let mut emit = |line: String, outcome: &mut BuildOutcome, log: &mut dyn LogSink| {
        if let Some(id) = line.strip_prefix("Successfully built ") {
            outcome.built_line_id = Some(id.trim().to_string());
        }
        if watch.is_some()
            && let Some((step, image)) = steps.line(&line)
            && let Some(w) = watch.take_if(|w| w.step == step)
        {
            // The receiver may be gone (the job no longer wants it): nothing to do then.
            let _ = w.tx.send(image);
        }
        log.line(redact(line, auth));
    };
    let ended = loop {
        // Read the next message only once the sink has room: a 200 MB build log streams
        // through a bounded buffer instead of piling up in memory.
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => break Drained::Cancelled,
            item = async {
                log.ready().await;
                stream.next().await
            } => item,
        };
        match item {
            None => break Drained::Done(()),
            Some(Ok(info)) => {
                if let Some(text) = info.stream.as_deref() {
                    for line in lines.push(text) {
                        emit(line, &mut outcome, log);
                    }
                }
                if let Some(status) = info.status.as_deref() {
                    let total = info.progress_detail.as_ref().and_then(|d| d.total);
                    if let Some(line) = progress.update(info.id.as_deref(), status, total) {
                        emit(line, &mut outcome, log);
                    }
                }
                // With bollard's `buildkit` feature `aux` is BuildKit status or an image id.
                if let Some(bollard::models::BuildInfoAux::Default(bollard::models::ImageId {
                    id: Some(id),
                })) = info.aux
                    && !id.is_empty()
                {
                    outcome.aux_id = Some(id);
                }
                if info.error_detail.is_some() {
                    // bollard turns an errorDetail with a message into Err; one without a
                    // message is still a failure.
                    break Drained::Failed(BollardError::DockerStreamError {
                        error: "the Engine reported an error without a message".into(),
                    });
                }
            }
            Some(Err(e)) => break Drained::Failed(e),
        }
    };
    drop(stream);
    if let Some(rest) = lines.finish() {
        emit(rest, &mut outcome, log);
    }
    match ended {
        Drained::Done(()) if cancel.is_cancelled() => Drained::Cancelled,
        Drained::Done(()) => Drained::Done(outcome),
        Drained::Failed(e) => Drained::Failed(e),
        Drained::Cancelled => Drained::Cancelled,
    }
}

/// Follows the classic builder's output (`Step 4/6 : RUN …`, ` ---> 1a2b3c4d5e6f`) to tell
/// which image each step produced.
///
/// A `RUN` step can print anything, a line that looks like `Step 5/6 : …` too, so only the
/// next step in sequence counts, and callers check the answer against the final image's
/// parents ([`Engine::descends_from`]) before they rely on it.
#[derive(Debug, Default)]
struct StepTracker {
    /// The step the builder is running, and `M` of its `Step N/M`.
    current: Option<(usize, usize)>,
    /// The last ` ---> <id>` line seen in that step: its result so far.
    result: Option<String>,
}

impl StepTracker {
    /// Feeds one output line; returns `(step, image id)` once a step is known to be done,
    /// which is when the next one starts.
    fn line(&mut self, line: &str) -> Option<(usize, String)> {
        if let Some((number, total)) = line
            .strip_prefix("Step ")
            .and_then(|rest| rest.split_once(" : "))
            .and_then(|(n, _)| n.split_once('/'))
            .and_then(|(n, m)| Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?)))
        {
            let next = match self.current {
                None => number == 1,
                Some((step, of)) => number == step + 1 && total == of,
            };
            if next {
                let done = self.current.map(|(step, _)| step).zip(self.result.take());
                self.current = Some((number, total));
                return done;
            }
            return None;
        }
        let id = line.trim_start().strip_prefix("---> ")?.trim_end();
        if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.result = Some(id.to_string());
        }
        None
    }
}

impl Engine {
    /// Builds `req` with the classic builder (no BuildKit) from an in-memory context.
    ///
    /// Every whole line of the build output goes to `log` (trailing `\r\n` removed, ANSI kept),
    /// pull progress of the `FROM` image condensed to one line per layer. Fails with the
    /// Engine's text on an HTTP error, on an `errorDetail` in the stream, and when the stream
    /// ends without an image id. When `cancel` fires the request is dropped, which closes the
    /// connection and makes the Engine stop the build; [`EngineError::Cancelled`] follows.
    ///
    /// With `watch`, the image of step `watch.step` is sent as soon as the builder moves past
    /// it, while the build goes on.
    pub async fn build(
        &self,
        req: &BuildRequest<'_>,
        watch: Option<StepImage>,
        log: &mut dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<BuiltImage, EngineError> {
        let Some(first_tag) = req.tags.first() else {
            return Err(EngineError::Other("a build needs at least one tag".into()));
        };
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let context = build_context(req.dockerfile, req.ca_bundle)
            .map_err(|e| EngineError::Other(format!("cannot assemble the build context: {e}")))?;
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(first_tag)
            .rm(true)
            .forcerm(true)
            .version(BuilderVersion::BuilderV1);
        if let Some(network) = req.network.filter(|n| !n.is_empty()) {
            options = options.networkmode(network);
        }
        let credentials = req
            .pull_auth
            .map(|c| HashMap::from([(c.server_address().to_string(), docker_credentials(c))]));
        let from_registry = crate::dockerfile::base_image(req.dockerfile)
            .map(registry_of)
            .unwrap_or_default();
        if let Some(c) = req.pull_auth
            && !from_registry.is_empty()
            && c.registry() != from_registry
        {
            // X-Registry-Config is keyed by registry: the Engine will not use it for this FROM.
            log.line(format!(
                "note: the pull credential is for {} but the base image is on {from_registry}",
                c.registry()
            ));
        }
        let op = Op::Build {
            registry: &from_registry,
        };

        let stream = self.docker.build_image(
            options.build(),
            credentials,
            Some(bollard::body_full(context.into())),
        );
        let outcome = match drain_build(stream, log, req.pull_auth, watch, cancel).await {
            Drained::Done(outcome) => outcome,
            Drained::Failed(e) => return Err(self.map_err(e, op, req.pull_auth)),
            Drained::Cancelled => return Err(EngineError::Cancelled),
        };
        let image_id = match outcome.image_id()? {
            ImageIdent::Full(id) => id,
            ImageIdent::Short(short) => self.image_id(&short).await?.unwrap_or(short),
        };
        // The first tag was applied by the build; check it really points at the image.
        match self.image_id(first_tag).await? {
            Some(id) if id == image_id => {}
            Some(id) => {
                return Err(EngineError::BuildFailed(format!(
                    "the build reported image {image_id} but {first_tag} points at {id}"
                )));
            }
            None => {
                return Err(EngineError::BuildFailed(format!(
                    "the build did not tag {first_tag}"
                )));
            }
        }
        for tag in &req.tags[1..] {
            self.tag(&image_id, tag).await?;
        }
        Ok(BuiltImage { image_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::error::map_bollard_error;
    use crate::docker::lines::tests::collect;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::time::Duration;

    fn build_items(json_lines: &[&str]) -> Vec<Result<BuildInfo, BollardError>> {
        json_lines
            .iter()
            .map(|l| Ok(serde_json::from_str(l).unwrap()))
            .collect()
    }

    /// The classic builder's output for FROM, USER, RUN, LABEL, USER, with a RUN step that
    /// prints lines looking like the builder's own.
    const CLASSIC_TRANSCRIPT: &[&str] = &[
        "Step 1/5 : FROM kiln/bookworm:minbase",
        " ---> 5d1c3b2a1f0e",
        "Step 2/5 : USER root",
        " ---> Running in 7f8e9d0c1b2a",
        "Removing intermediate container 7f8e9d0c1b2a",
        " ---> 0a1b2c3d4e5f",
        "Step 3/5 : RUN apt-get update && apt-get install -y jq",
        " ---> Running in 8e9d0c1b2a3f",
        "Step 4/5 : LABEL fake",
        " ---> deadbeefdead",
        "Step 9/9 : nonsense",
        "Setting up jq (1.6-2.1) ...",
        "Removing intermediate container 8e9d0c1b2a3f",
        " ---> 2c3d4e5f6a7b",
        "Step 4/5 : LABEL io.kiln.spec=\"tools\"",
        " ---> Running in 9d0c1b2a3f4e",
        "Removing intermediate container 9d0c1b2a3f4e",
        " ---> 3d4e5f6a7b8c",
        "Step 5/5 : USER jovyan",
        " ---> Using cache",
        " ---> 4e5f6a7b8c9d",
        "Successfully built 4e5f6a7b8c9d",
    ];

    /// [`CLASSIC_TRANSCRIPT`] without the RUN step's imitations.
    fn honest_transcript() -> impl Iterator<Item = &'static str> {
        CLASSIC_TRANSCRIPT
            .iter()
            .copied()
            .filter(|l| !l.contains("fake") && !l.contains("deadbeef") && !l.contains("nonsense"))
    }

    #[test]
    fn step_tracker_reads_each_steps_image() {
        let mut steps = StepTracker::default();
        let done: Vec<(usize, String)> = CLASSIC_TRANSCRIPT
            .iter()
            .filter_map(|l| steps.line(l))
            .collect();
        // The RUN step's imitation of "Step 4/5" is next in sequence, so it is believed: step 3
        // is never reported. Out-of-sequence lines ("Step 9/9", the real "Step 4/5" after the
        // fake one) are ignored. Callers check ancestry before they rely on an answer.
        assert_eq!(
            done,
            [
                (1, "5d1c3b2a1f0e".to_string()),
                (2, "0a1b2c3d4e5f".to_string()),
                (4, "3d4e5f6a7b8c".to_string()),
            ]
        );
        let mut steps = StepTracker::default();
        let done: Vec<(usize, String)> =
            honest_transcript().filter_map(|l| steps.line(l)).collect();
        assert_eq!(
            done,
            [
                (1, "5d1c3b2a1f0e".to_string()),
                (2, "0a1b2c3d4e5f".to_string()),
                (3, "2c3d4e5f6a7b".to_string()),
                (4, "3d4e5f6a7b8c".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn build_stream_hands_over_a_steps_image_while_the_build_goes_on() {
        let honest: Vec<String> = honest_transcript()
            .take_while(|l| !l.starts_with("Step 5/5"))
            .map(|l| serde_json::json!({ "stream": format!("{l}\n") }).to_string())
            .collect();
        let items = build_items(&honest.iter().map(String::as_str).collect::<Vec<_>>());
        // The Engine is still busy with step 5: the stream stays open.
        let stream = futures_util::stream::iter(items).chain(futures_util::stream::pending());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cancel = CancellationToken::new();
        let (lines, mut sink) = collect();
        let drain = drain_build(
            stream,
            &mut sink,
            None,
            Some(StepImage { step: 3, tx }),
            &cancel,
        );
        tokio::pin!(drain);
        let image = tokio::select! {
            image = rx => image.unwrap(),
            ended = &mut drain => panic!("the build ended first: {ended:?}"),
        };
        assert_eq!(image, "2c3d4e5f6a7b");
        cancel.cancel();
        assert!(matches!(drain.await, Drained::Cancelled));
        assert!(lines.lock().unwrap().len() > 10);

        // A step that never completes sends nothing: the sender is dropped with the build.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let items = build_items(&[r#"{"stream":"Step 1/1 : FROM x\n ---> 5d1c3b2a1f0e\n"}"#]);
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            Some(StepImage { step: 1, tx }),
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(drained, Drained::Done(_)), "{drained:?}");
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn build_stream_success_with_unaligned_chunks() {
        let items = build_items(&[
            r#"{"stream":"Step 1/2 : FR"}"#,
            r#"{"stream":"OM x\n ---\u003e 671a\nStep 2/2 : RUN echo hi\n"}"#,
            r#"{"status":"Pulling fs layer","id":"abc","progressDetail":{}}"#,
            r#"{"status":"Downloading","id":"abc","progressDetail":{"current":1,"total":2048}}"#,
            r#"{"status":"Pull complete","id":"abc","progressDetail":{}}"#,
            r#"{"stream":"h"}"#,
            r#"{"stream":"i\r\n"}"#,
            r#"{"aux":{"ID":"sha256:0123"}}"#,
            r#"{"stream":"Successfully built 0123\n"}"#,
            r#"{"stream":"Successfully tagged x:t\n"}"#,
        ]);
        let (lines, mut sink) = collect();
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut sink,
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Done(outcome) = drained else {
            panic!("{drained:?}")
        };
        assert_eq!(outcome.aux_id.as_deref(), Some("sha256:0123"));
        assert_eq!(
            outcome.image_id().unwrap(),
            ImageIdent::Full("sha256:0123".into())
        );
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "Step 1/2 : FROM x",
                " ---> 671a",
                "Step 2/2 : RUN echo hi",
                "pulled layer abc (2.0 kB)",
                "hi",
                "Successfully built 0123",
                "Successfully tagged x:t",
            ]
        );
    }

    #[tokio::test]
    async fn build_stream_error_inside_the_stream() {
        let mut items = build_items(&[r#"{"stream":"E: Unable to locate package nope"}"#]);
        // bollard turns {"errorDetail":{"message":…}} into this.
        items.push(Err(BollardError::DockerStreamError {
            error: "The command '/bin/sh -c apt-get install -y nope' returned a non-zero code: 100"
                .into(),
        }));
        items.extend(build_items(&[r#"{"aux":{"ID":"sha256:never"}}"#]));
        let (lines, mut sink) = collect();
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut sink,
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Failed(e) = drained else {
            panic!("{drained:?}")
        };
        let err = map_bollard_error(
            "unix:///s",
            e,
            Op::Build {
                registry: "docker.io",
            },
            None,
        );
        assert!(
            matches!(&err, EngineError::BuildFailed(m) if m.ends_with("returned a non-zero code: 100")),
            "{err:?}"
        );
        assert!(!err.is_transient());
        // The partial last line is not lost.
        assert_eq!(*lines.lock().unwrap(), ["E: Unable to locate package nope"]);

        // An errorDetail without a message still fails.
        let items = build_items(&[
            r#"{"errorDetail":{"code":1}}"#,
            r#"{"aux":{"ID":"sha256:x"}}"#,
        ]);
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(drained, Drained::Failed(_)), "{drained:?}");
    }

    #[tokio::test]
    async fn build_http_error_before_the_stream() {
        let items: Vec<Result<BuildInfo, BollardError>> =
            vec![Err(BollardError::DockerResponseServerError {
                status_code: 400,
                message: "dockerfile parse error line 2: unknown instruction: NOPE".into(),
            })];
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Failed(e) = drained else {
            panic!("{drained:?}")
        };
        let err = map_bollard_error(
            "unix:///s",
            e,
            Op::Build {
                registry: "docker.io",
            },
            None,
        );
        assert!(matches!(&err, EngineError::BuildFailed(m) if m.contains("unknown instruction")));
        assert!(!err.is_transient());
        // A base image the registry refuses is an auth failure, not a build failure.
        let err = map_bollard_error(
            "unix:///s",
            BollardError::DockerStreamError {
                error: "Head \"http://127.0.0.1:5001/v2/x/manifests/t\": no basic auth credentials"
                    .into(),
            },
            Op::Build {
                registry: "127.0.0.1:5001",
            },
            None,
        );
        assert!(matches!(&err, EngineError::Auth { registry, .. } if registry == "127.0.0.1:5001"));
        // A broken connection is the Engine being unreachable.
        let err = map_bollard_error(
            "unix:///s",
            BollardError::IOError {
                err: std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                ),
            },
            Op::Build { registry: "" },
            None,
        );
        assert!(
            err.to_string()
                .starts_with("Docker Engine unreachable at unix:///s: "),
            "{err}"
        );
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn build_stream_without_image_id_is_a_failure() {
        let items = build_items(&[
            r#"{"stream":"Step 1/1 : FROM x\n"}"#,
            r#"{"stream":" ---> 671a\n"}"#,
        ]);
        let drained = drain_build(
            futures_util::stream::iter(items),
            &mut |_| {},
            None,
            None,
            &CancellationToken::new(),
        )
        .await;
        let Drained::Done(outcome) = drained else {
            panic!("{drained:?}")
        };
        let err = outcome.image_id().unwrap_err();
        assert!(
            matches!(&err, EngineError::BuildFailed(m) if m.contains("without an image id")),
            "{err:?}"
        );
        // The classic builder's own line is a fallback when aux is missing.
        let outcome = BuildOutcome {
            aux_id: None,
            built_line_id: Some("0123".into()),
        };
        assert_eq!(
            outcome.image_id().unwrap(),
            ImageIdent::Short("0123".into())
        );
    }

    #[tokio::test]
    async fn build_stream_cancel_returns_promptly_and_flushes() {
        let items = build_items(&[
            r#"{"stream":"Step 2/2 : RUN sleep 60\n"}"#,
            r#"{"stream":"partial"}"#,
        ]);
        let stream = futures_util::stream::iter(items).chain(futures_util::stream::pending());
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.cancel();
        });
        let (lines, mut sink) = collect();
        let t0 = std::time::Instant::now();
        let drained = drain_build(stream, &mut sink, None, None, &cancel).await;
        assert!(matches!(drained, Drained::Cancelled), "{drained:?}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(
            *lines.lock().unwrap(),
            ["Step 2/2 : RUN sleep 60", "partial"]
        );
    }

    /// A sink that takes `room` lines, then is not ready until `open` fires.
    struct GatedSink {
        lines: Vec<String>,
        room: usize,
        open: Arc<tokio::sync::Notify>,
    }

    impl LogSink for GatedSink {
        fn line(&mut self, line: String) {
            self.lines.push(line);
        }
        fn ready(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async move {
                if self.lines.len() >= self.room {
                    self.open.notified().await;
                    self.room = usize::MAX;
                }
            })
        }
    }

    #[tokio::test]
    async fn build_stream_is_read_no_faster_than_the_sink_takes_it() {
        let items = build_items(&[
            r#"{"stream":"one\n"}"#,
            r#"{"stream":"two\n"}"#,
            r#"{"stream":"three\n"}"#,
            r#"{"aux":{"ID":"sha256:abc"}}"#,
        ]);
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&read);
        let stream = futures_util::stream::iter(items).inspect(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let open = Arc::new(tokio::sync::Notify::new());
        let mut sink = GatedSink {
            lines: Vec::new(),
            room: 1,
            open: Arc::clone(&open),
        };
        let cancel = CancellationToken::new();
        {
            let mut drain = std::pin::pin!(drain_build(stream, &mut sink, None, None, &cancel));
            assert!(futures_util::poll!(drain.as_mut()).is_pending());
            // One message read and logged, then the reader waits for the sink.
            assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 1);
            open.notify_one();
            let drained = drain.await;
            assert!(matches!(drained, Drained::Done(_)), "{drained:?}");
        }
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert_eq!(sink.lines, ["one", "two", "three"]);
    }
}
