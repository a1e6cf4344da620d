//! The Docker Engine layer against the real Engine and the two local registries that
//! `scripts/dev-env.sh` sets up (127.0.0.1:5000 open, 127.0.0.1:5001 with htpasswd auth).
//!
//! Without an Engine every test prints "SKIPPED: no Docker Engine" and passes, unless `CI=true`,
//! where it fails. Image names carry the test name and the process id; every image a test
//! creates is removed again (also when it fails), and manifests pushed to the registries are
//! deleted through the registry API.

use kiln::docker::auth::{Credential, RegistryAuths};
use kiln::docker::{BuildRequest, Engine, EngineEndpoint, EngineError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BASE: &str = "127.0.0.1:5000/kiln/bookworm:minbase";
const PY_BASE: &str = "127.0.0.1:5000/kiln/bookworm-python:minbase";
const OPEN_REGISTRY: &str = "127.0.0.1:5000";
const AUTH_REGISTRY: &str = "127.0.0.1:5001";
const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

mod common;

/// Says loudly that `test` did not run (`what` is missing), or fails under CI: the one rule in
/// `tests/common/tools.rs`.
fn skip(test: &str, what: &str, why: &str) {
    common::tools::missing(what, &format!("{test}: {why}"), "run scripts/dev-env.sh up");
}

/// A connected Engine, or `None` after printing SKIPPED (panics instead when CI=true).
async fn engine(test: &str) -> Option<Engine> {
    match Engine::connect(None).await {
        Ok(engine) => match engine.ping().await {
            Ok(()) => Some(engine),
            Err(e) => {
                skip(test, "no Docker Engine", &e.to_string());
                None
            }
        },
        Err(e) => {
            skip(test, "no Docker Engine", &e.to_string());
            None
        }
    }
}

macro_rules! engine_or_skip {
    ($test:expr) => {
        match engine($test).await {
            Some(engine) => engine,
            None => return,
        }
    };
}

/// The generated credentials of the auth registry (dev-env's `registry-auth.env`).
fn auth_registry_login() -> Option<(String, String)> {
    let dir = std::env::var("KILN_ENV_DIR").unwrap_or_else(|_| "/var/lib/kiln-env".into());
    let text = std::fs::read_to_string(format!("{dir}/registry-auth.env")).ok()?;
    let mut user = None;
    let mut password = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("KILN_TEST_REGISTRY_USER=") {
            user = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("KILN_TEST_REGISTRY_PASSWORD=") {
            password = Some(v.trim().to_string());
        }
    }
    Some((user?, password?))
}

fn docker_config_path() -> std::path::PathBuf {
    let dir = std::env::var("KILN_ENV_DIR").unwrap_or_else(|_| "/var/lib/kiln-env".into());
    std::path::PathBuf::from(dir).join("docker-config/config.json")
}

/// `kiln-test/<test>-<pid>` under `registry` (or local when `None`).
fn repo(registry: Option<&str>, test: &str) -> String {
    let name = format!("kiln-test/{test}-{}", std::process::id());
    match registry {
        Some(r) => format!("{r}/{name}"),
        None => name,
    }
}

/// Collects log lines; cheap to clone into the callback.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn sink(&self) -> impl FnMut(String) + Send + 'static {
        let lines = self.0.clone();
        move |line| lines.lock().unwrap().push(line)
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn text(&self) -> String {
        self.lines().join("\n")
    }
}

/// A manifest pushed by a test, deleted through the registry API afterwards.
struct PushedManifest {
    registry: String,
    repository: String,
    digest: String,
    login: Option<(String, String)>,
}

/// Removes local images and registry manifests when dropped (also on panic).
#[derive(Default)]
struct Cleanup {
    images: Vec<String>,
    manifests: Vec<PushedManifest>,
}

impl Cleanup {
    fn image(&mut self, r: &str) {
        self.images.push(r.to_string());
    }
    fn manifest(&mut self, image_ref: &str, digest: &str, login: Option<(String, String)>) {
        let (registry, rest) = image_ref.split_once('/').unwrap();
        let repository = rest.rsplit_once(':').map_or(rest, |(r, _)| r);
        self.manifests.push(PushedManifest {
            registry: registry.into(),
            repository: repository.into(),
            digest: digest.into(),
            login,
        });
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let images = std::mem::take(&mut self.images);
        let manifests = std::mem::take(&mut self.manifests);
        // Drop cannot await: a short-lived runtime on its own thread does the work.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(engine) = Engine::connect(None).await {
                    for image in images.iter().rev() {
                        if let Err(e) = engine.remove_image(image).await {
                            eprintln!("cleanup: cannot remove {image}: {e}");
                        }
                    }
                }
                let client = reqwest::Client::new();
                for m in manifests {
                    let url = format!(
                        "http://{}/v2/{}/manifests/{}",
                        m.registry, m.repository, m.digest
                    );
                    let login = m.login;
                    let mut req = client.delete(url);
                    if let Some((u, p)) = login {
                        req = req.basic_auth(u, Some(p));
                    }
                    let _ = req.send().await;
                }
            });
        })
        .join();
    }
}

/// Whether a build log holds `text` as a line of a step's output (BuildKit's plain progress
/// prefixes each with its step, `#5 text`).
fn has_output_line(lines: &[String], text: &str) -> bool {
    lines.iter().any(|l| {
        l.split_once(' ')
            .is_some_and(|(step, rest)| step.starts_with('#') && rest == text)
    })
}

/// `what` made unique to this run, so a RUN that echoes it is never a cached step.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{what}-{}-{nanos}", std::process::id())
}

fn dockerfile(from: &str, body: &str) -> String {
    format!("FROM {from}\n{body}\n")
}

async fn build(
    engine: &Engine,
    dockerfile: &str,
    tags: &[String],
    pull_auth: Option<&Credential>,
    log: &Log,
) -> Result<String, EngineError> {
    let req = BuildRequest {
        dockerfile,
        tags,
        pull_auth,
        ..Default::default()
    };
    let mut sink = log.sink();
    engine
        .build(&req, &mut sink, &CancellationToken::new())
        .await
        .map(|b| b.image_id)
}

/// A trivial build: whole lines reach the log, every tag is applied, the base's user is root,
/// an image with a USER reports it, and run_capture sees the image's files.
#[tokio::test]
async fn trivial_build_logs_whole_lines_and_applies_all_tags() {
    let test = "trivial";
    let engine = engine_or_skip!(test);
    let mut cleanup = Cleanup::default();
    let log = Log::default();
    let base_user = engine
        .prepare_base(BASE, None, &mut log.sink())
        .await
        .unwrap();
    assert_eq!(base_user, None, "the minbase image runs as root");

    let name = repo(None, test);
    let tags = vec![format!("{name}:r1-abc1234"), format!("{name}:latest")];
    tags.iter().for_each(|t| cleanup.image(t));
    let hello = unique("hello-from-kiln");
    let text = dockerfile(
        BASE,
        &format!("RUN echo {hello} && printf 'no newline at the end'\nUSER nobody"),
    );
    let id = build(&engine, &text, &tags, None, &log).await.unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    for tag in &tags {
        assert_eq!(
            engine.image_id(tag).await.unwrap().as_deref(),
            Some(id.as_str())
        );
    }
    let lines = log.lines();
    assert!(has_output_line(&lines, &hello), "{lines:#?}");
    assert!(
        has_output_line(&lines, "no newline at the end"),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("[output clipped")),
        "the Engine clips step output: dockerd needs BUILDKIT_STEP_LOG_MAX_SIZE/SPEED raised \
         (docs/operations.md): {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('#') && l.contains("1/2] FROM ")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('#') && l.contains(&format!("writing image {id}"))),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains('\n') && !l.ends_with('\r')),
        "{lines:#?}"
    );

    // prepare_base on a present image with a USER: no pull, its user.
    let log2 = Log::default();
    let user = engine
        .prepare_base(&tags[0], None, &mut log2.sink())
        .await
        .unwrap();
    assert_eq!(user.as_deref(), Some("nobody"));
    assert!(!log2.text().contains("pulling"), "{}", log2.text());

    let (code, out) = engine
        .run_capture(
            &tags[0],
            &["cat", "/etc/debian_version"],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("12."), "{out:?}");
}

/// An apt install (network from RUN steps), then the package list through run_capture.
#[tokio::test]
async fn apt_build_installs_jq() {
    let test = "apt-jq";
    let engine = engine_or_skip!(test);
    let mut cleanup = Cleanup::default();
    let log = Log::default();
    let tags = vec![format!("{}:t", repo(None, test))];
    cleanup.image(&tags[0]);
    let text = dockerfile(
        BASE,
        "ARG DEBIAN_FRONTEND=noninteractive\n\
         RUN apt-get update && apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*",
    );
    build(&engine, &text, &tags, None, &log)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    let (code, out) = engine
        .run_capture(
            &tags[0],
            &["dpkg-query", "-W", "-f=${Package}=${Version}\\n"],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("jq=")), "{out}");
    let (code, out) = engine
        .run_capture(&tags[0], &["jq", "-n", "1+2"], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (0, "3"));
}

/// pip behind the TLS-inspecting proxy: works only with the host's CA bundle in the context.
#[tokio::test]
async fn pip_build_with_ca_bundle_installs_six() {
    let test = "pip-six";
    let engine = engine_or_skip!(test);
    let mut cleanup = Cleanup::default();
    let log = Log::default();
    let ca = std::fs::read("/etc/ssl/certs/ca-certificates.crt").expect("host CA bundle");
    let tags = vec![format!("{}:t", repo(None, test))];
    cleanup.image(&tags[0]);
    let text = format!(
        "FROM {PY_BASE}\n\
         COPY {ctx} /usr/local/share/kiln/ca-bundle.crt\n\
         RUN PIP_CERT=/usr/local/share/kiln/ca-bundle.crt SSL_CERT_FILE=/usr/local/share/kiln/ca-bundle.crt \
         PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
         python3 -m pip install --no-cache-dir six==1.16.0\n",
        ctx = kiln::dockerfile::CA_BUNDLE_CONTEXT_NAME
    );
    let req = BuildRequest {
        dockerfile: &text,
        ca_bundle: Some(&ca),
        tags: &tags,
        ..Default::default()
    };
    engine
        .build(&req, &mut log.sink(), &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    let (code, out) = engine
        .run_capture(
            &tags[0],
            &["python3", "-c", "import six; print(six.__version__)"],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (0, "1.16.0"));
    let (code, out) = engine
        .run_capture(
            &tags[0],
            &["python3", "-m", "pip", "list", "--format=freeze"],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "six==1.16.0"), "{out}");
}

/// A failing RUN: the error carries the Engine's text, the output before it is logged, it
/// is not transient, and nothing is tagged.
#[tokio::test]
async fn failed_run_reports_the_engine_text() {
    let test = "failed-run";
    let engine = engine_or_skip!(test);
    let mut cleanup = Cleanup::default();
    let log = Log::default();
    let tags = vec![format!("{}:t", repo(None, test))];
    cleanup.image(&tags[0]);
    let text = dockerfile(BASE, "RUN apt-get install -y no-such-package-kiln");
    let err = build(&engine, &text, &tags, None, &log).await.unwrap_err();
    let message = err.to_string();
    eprintln!("{message}\nlog:\n{}", log.text());
    assert!(matches!(err, EngineError::BuildFailed(_)), "{err:?}");
    assert!(
        message.contains("RUN apt-get install -y no-such-package-kiln failed")
            && message.contains("exit code: 100"),
        "{message}"
    );
    assert!(!err.is_transient());
    assert!(
        log.text()
            .contains("Unable to locate package no-such-package-kiln"),
        "{}",
        log.text()
    );
    assert_eq!(engine.image_id(&tags[0]).await.unwrap(), None);
}

/// A Dockerfile the Engine cannot parse fails before any stream (HTTP 400), not transient.
#[tokio::test]
async fn bad_dockerfile_fails_before_the_stream() {
    let test = "bad-dockerfile";
    let engine = engine_or_skip!(test);
    let log = Log::default();
    let tags = vec![format!("{}:t", repo(None, test))];
    let text = dockerfile(BASE, "NOSUCHINSTRUCTION x");
    let err = build(&engine, &text, &tags, None, &log).await.unwrap_err();
    assert!(matches!(err, EngineError::BuildFailed(_)), "{err:?}");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("unknown instruction"),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(engine.image_id(&tags[0]).await.unwrap(), None);
}

/// Push to the open registry: condensed progress, and the digest we return is the one the
/// registry serves for the tag.
#[tokio::test]
async fn push_returns_the_registry_digest() {
    let test = "push";
    let engine = engine_or_skip!(test);
    let mut cleanup = Cleanup::default();
    let log = Log::default();
    let name = repo(Some(OPEN_REGISTRY), test);
    let tags = vec![format!("{name}:r1-abc1234"), format!("{name}:latest")];
    tags.iter().for_each(|t| cleanup.image(t));
    // A fresh layer, so at least one layer is really uploaded.
    let nonce = format!("{}-{:?}", std::process::id(), Instant::now());
    let text = dockerfile(
        BASE,
        &format!("RUN head -c 300000 /dev/urandom > /noise && echo '{nonce}' > /nonce"),
    );
    build(&engine, &text, &tags, None, &log).await.unwrap();

    let push_log = Log::default();
    let t0 = Instant::now();
    let digest = engine
        .push(
            &tags[0],
            None,
            &mut push_log.sink(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", push_log.text()));
    eprintln!("push took {:?}", t0.elapsed());
    cleanup.manifest(&tags[0], &digest, None);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    let lines = push_log.lines();
    eprintln!("push log:\n{}", push_log.text());
    assert!(
        lines[0].starts_with("The push refers to repository [127.0.0.1:5000/kiln-test/push-"),
        "{lines:#?}"
    );
    let pushed: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("pushed layer "))
        .collect();
    assert!(!pushed.is_empty(), "{lines:#?}");
    assert!(
        pushed
            .iter()
            .any(|l| l.ends_with(" kB)") || l.ends_with(" MB)")),
        "{lines:#?}"
    );
    assert!(lines.len() <= 10, "progress is condensed: {lines:#?}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains(&format!("r1-abc1234: digest: {digest} size: ")),
        "{lines:#?}"
    );

    let response = reqwest::Client::new()
        .get(format!(
            "http://{OPEN_REGISTRY}/v2/{}/manifests/r1-abc1234",
            name.strip_prefix("127.0.0.1:5000/").unwrap()
        ))
        .header("Accept", MANIFEST_V2)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let served = response.headers()["Docker-Content-Digest"]
        .to_str()
        .unwrap();
    assert_eq!(served, digest);

    // The second tag pushes nothing new: every layer already exists.
    let again = Log::default();
    let digest2 = engine
        .push(&tags[1], None, &mut again.sink(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(digest2, digest, "same image, same manifest");
    assert!(
        again
            .lines()
            .iter()
            .any(|l| l.ends_with("already exists in the registry")),
        "{:#?}",
        again.lines()
    );
}

/// A registry nobody listens on: a push error with the Engine's text, transient.
#[tokio::test]
async fn push_to_unreachable_registry_is_transient() {
    let test = "push-unreachable";
    let engine = engine_or_skip!(test);
    let mut cleanup = Cleanup::default();
    let target = format!("{}:t", repo(Some("127.0.0.1:5999"), test));
    engine.tag(BASE, &target).await.unwrap();
    cleanup.image(&target);
    let log = Log::default();
    let err = engine
        .push(&target, None, &mut log.sink(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::PushFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(err.is_transient(), "{err}");
}

/// The auth registry: push and pull (explicit and inside a build) fail without or with wrong
/// credentials and succeed with the real ones. The credential used for pulls carries an
/// e-mail (ignored by the registry) that makes its standard base64 hold `+` and `/`: it
/// authenticates only because the headers are sent as base64url. The password never shows
/// up in a log line, an error or Debug output.
#[tokio::test]
async fn auth_registry_push_pull_and_build() {
    let test = "auth";
    let engine = engine_or_skip!(test);
    let Some((user, password)) = auth_registry_login() else {
        skip(
            test,
            "no registry credentials",
            "no /var/lib/kiln-env/registry-auth.env (run scripts/dev-env.sh)",
        );
        return;
    };
    let mut cleanup = Cleanup::default();
    let mut seen: Vec<String> = Vec::new();

    // The docker config dev-env wrote, read by RegistryAuths.
    let auths = RegistryAuths::load(&docker_config_path()).unwrap();
    let from_config = auths
        .for_registry(AUTH_REGISTRY)
        .expect("config.json holds the auth registry")
        .clone();
    assert_eq!(from_config.username(), user);
    // `>>>???` puts a `>` (sextet 62, `+`) and a `?` (63, `/`) at every offset mod 3.
    let awkward =
        Credential::new(AUTH_REGISTRY, &user, &password).with_email("kiln>>>???@example.com");
    let wrong = Credential::new(AUTH_REGISTRY, &user, "not-the-password");
    seen.push(format!("{from_config:?} {awkward:?} {auths:?}"));

    let image = format!("{}:base", repo(Some(AUTH_REGISTRY), test));
    engine.tag(BASE, &image).await.unwrap();
    cleanup.image(&image);

    // Push: refused without credentials, accepted with them.
    let log = Log::default();
    let err = engine
        .push(&image, None, &mut log.sink(), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Auth { .. }), "{err:?}");
    assert!(!err.is_transient());
    seen.push(format!("{err} {err:?}"));
    let digest = engine
        .push(
            &image,
            Some(&from_config),
            &mut log.sink(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    cleanup.manifest(&image, &digest, Some((user.clone(), password.clone())));

    // Explicit pull (prepare_base) of an image that is not local.
    assert!(engine.remove_image(&image).await.unwrap());
    for bad in [None, Some(&wrong)] {
        let err = engine
            .prepare_base(&image, bad, &mut log.sink())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::Auth { registry, .. } if registry == AUTH_REGISTRY),
            "{err:?}"
        );
        assert!(!err.is_transient());
        seen.push(format!("{err} {err:?}"));
    }
    let user_of_base = engine
        .prepare_base(&image, Some(&awkward), &mut log.sink())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    assert_eq!(user_of_base, None);
    assert!(engine.image_id(&image).await.unwrap().is_some());
    assert!(
        log.lines()
            .iter()
            .any(|l| l.starts_with("Status: Downloaded newer image for")),
        "{}",
        log.text()
    );

    // Pull inside a build (X-Registry-Config).
    assert!(engine.remove_image(&image).await.unwrap());
    let tags = vec![format!("{}:built", repo(None, test))];
    cleanup.image(&tags[0]);
    let marker = unique("built-on-auth-base");
    let text = dockerfile(&image, &format!("RUN echo {marker}"));
    let err = build(&engine, &text, &tags, None, &log).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::Auth { registry, .. } if registry == AUTH_REGISTRY),
        "{err:?}"
    );
    seen.push(format!("{err} {err:?}"));
    build(&engine, &text, &tags, Some(&awkward), &log)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    assert!(has_output_line(&log.lines(), &marker));

    seen.extend(log.lines());
    eprintln!("errors and log:\n{}", seen.join("\n"));
    for text in &seen {
        assert!(!text.contains(&password), "password leaked: {text}");
    }
}

#[tokio::test]
async fn run_capture_exit_codes_and_limits() {
    let test = "run-capture";
    let engine = engine_or_skip!(test);
    let (code, out) = engine
        .run_capture(
            BASE,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (3, "out\n"));
    let (code, _) = engine
        .run_capture(BASE, &["no-such-program-kiln"], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(code, 127);
    let (code, out) = engine
        .run_capture(
            BASE,
            &["head", "-c", "5000000", "/dev/zero"],
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(out.len(), kiln::docker::RUN_CAPTURE_LIMIT);
    let err = engine
        .run_capture(
            "kiln-test/no-such-image:nope",
            &["true"],
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NoImage(_)), "{err:?}");

    // A cancelled job stops waiting at once, and the container is removed all the same.
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        later.cancel();
    });
    let started = Instant::now();
    let err = engine
        .run_capture(BASE, &["sleep", "31.25"], &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let left = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            "label=io.kiln.run-capture",
            "--format",
            "{{.Command}}",
        ])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains("31.25"),
        "the cancelled container is still there: {left}"
    );
}

/// dev-env's TLS listener of the same Engine, and its client files (DOCKER_CERT_PATH layout).
const TLS_HOST: &str = "tcp://127.0.0.1:2376";

fn tls_dir() -> std::path::PathBuf {
    let dir = std::env::var("KILN_ENV_DIR").unwrap_or_else(|_| "/var/lib/kiln-env".into());
    std::path::PathBuf::from(dir).join("docker-tls")
}

/// A cert directory made of dev-env's files: `ca` from one directory, `cert`+`key` from another.
fn cert_dir_of(ca_from: &str, client_from: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = tls_dir();
    std::fs::copy(src.join(ca_from).join("ca.pem"), dir.path().join("ca.pem")).unwrap();
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(src.join(client_from).join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn tls_endpoint(cert_path: &std::path::Path) -> EngineEndpoint {
    EngineEndpoint {
        host: Some(TLS_HOST.into()),
        tls_verify: Some(true),
        cert_path: Some(cert_path.into()),
    }
}

/// The same Engine over TCP with mutual TLS: a build through it lands in the Engine; a client
/// that does not trust the Engine's certificate, a client whose certificate the Engine does
/// not trust, and a plain-HTTP client are all refused, and not as "try again later".
#[tokio::test]
async fn tls_endpoint_builds_and_refuses_strangers() {
    let test = "tls";
    let unix = engine_or_skip!(test);
    if !tls_dir().join("client/key.pem").exists() {
        skip(
            test,
            "no TLS listener",
            "scripts/dev-env.sh up makes docker-tls/",
        );
        return;
    }
    let mut cleanup = Cleanup::default();
    let good = cert_dir_of("client", "client");
    let engine = Engine::connect_to(&tls_endpoint(good.path()))
        .await
        .unwrap_or_else(|e| panic!("TLS connect: {e}"));
    assert_eq!(engine.endpoint(), TLS_HOST);
    engine.ping().await.unwrap();

    let name = repo(None, test);
    let tags = vec![format!("{name}:r1-abc1234")];
    cleanup.image(&tags[0]);
    let log = Log::default();
    let marker = unique("over-tls");
    let text = dockerfile(BASE, &format!("LABEL kiln.test=tls\nRUN echo {marker}"));
    let id = build(&engine, &text, &tags, None, &log).await.unwrap();
    assert!(has_output_line(&log.lines(), &marker), "{}", log.text());
    assert_eq!(
        unix.image_id(&tags[0]).await.unwrap().as_deref(),
        Some(id.as_str())
    );

    // Kiln does not trust the Engine (ca.pem of another CA).
    let untrusting = cert_dir_of("wrong-ca", "client");
    let err = Engine::connect_to(&tls_endpoint(untrusting.path()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("Docker Engine unreachable at {TLS_HOST}: ")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!err.is_transient(), "{text}");

    // The Engine does not trust Kiln (client certificate of another CA).
    let stranger = cert_dir_of("client", "wrong-ca");
    let err = Engine::connect_to(&tls_endpoint(stranger.path()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("Docker Engine unreachable at {TLS_HOST}: ")),
        "{text}"
    );
    assert!(!err.is_transient(), "{text}");

    // Plain HTTP to the TLS port.
    let plain = EngineEndpoint {
        host: Some(TLS_HOST.into()),
        tls_verify: Some(false),
        cert_path: None,
    };
    assert!(Engine::connect_to(&plain).await.is_err());
}

/// Endpoints that do not answer, and TLS set-up mistakes — no Engine needed.
#[tokio::test]
async fn unreachable_endpoints_are_named_and_transient() {
    for endpoint in ["unix:///nonexistent/kiln.sock", "tcp://127.0.0.1:1"] {
        let err = Engine::connect(Some(endpoint)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("Docker Engine unreachable at {endpoint}: ")),
            "{text}"
        );
        assert!(err.is_transient());
    }
    let missing = tempfile::tempdir().unwrap();
    let err = Engine::connect_to(&tls_endpoint(missing.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::TlsSetup { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert!(!err.is_transient());
}
