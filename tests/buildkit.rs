//! Builds on the real Engine's embedded BuildKit (`kiln::buildkit::build`): step starts, RUN
//! output and `CACHED` in the log, a failing RUN named in the error, credentials of the
//! htpasswd registry reaching a `FROM` through the session, cancellation stopping the solve,
//! and no file descriptor left behind by a build's session.
//!
//! The tests take one lock so that they build one at a time: the descriptor count of this
//! process is only meaningful while no other build of it runs (and the machine is small).

mod common;

use common::log::Log;
use common::registry::{AUTH_REGISTRY, auth_only_base, auth_registry_login};
use common::{engine_available, nonce};
use kiln::buildkit::{BuildkitRequest, build};
use kiln::docker::auth::Credential;
use kiln::docker::{EngineEndpoint, EngineError};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BASE: &str = "127.0.0.1:5000/kiln/bookworm:minbase";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_logs_steps_output_and_cached_and_leaks_no_descriptors() {
    if !engine_available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let n = nonce();
    let dockerfile = format!(
        "FROM {BASE}\nRUN echo kiln-out-{n} && echo second line\nLABEL io.kiln.test.nonce=\"{n}\"\n"
    );
    let tags = [
        format!("kiln-test/buildkit-small:{n}"),
        format!("kiln-test/buildkit-small:{n}-b"),
    ];
    let req = BuildkitRequest {
        dockerfile: &dockerfile,
        tags: &tags,
        ..Default::default()
    };
    let endpoint = EngineEndpoint::default();
    let fds_before = open_fds();

    let first = Log::default();
    let built = build(
        &endpoint,
        &req,
        &mut first.sink(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:#?}", first.lines()));
    assert!(built.image_id.starts_with("sha256:"), "{built:?}");
    eprintln!("first build's log:\n{}", first.lines().join("\n"));
    let run = first
        .step_number(&format!("RUN echo kiln-out-{n}"))
        .unwrap_or_else(|| panic!("no step start for the RUN: {:#?}", first.lines()));
    let lines = first.lines();
    assert!(
        // LABEL is no BuildKit step: FROM is 1/2, the RUN 2/2.
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{run} ")) && l.contains("2/2] RUN echo kiln-out")),
        "{lines:#?}"
    );
    assert!(lines.contains(&format!("{run} kiln-out-{n}")), "{lines:#?}");
    assert!(lines.contains(&format!("{run} second line")), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{run} DONE ")) && l.ends_with('s')),
        "{lines:#?}"
    );
    for tag in &tags {
        let (ok, id) = docker(&["image", "inspect", "--format", "{{.Id}}", tag]);
        assert!(ok, "{tag}: {id}");
        assert_eq!(id.trim(), built.image_id);
    }

    let second = Log::default();
    let again = build(
        &endpoint,
        &req,
        &mut second.sink(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:#?}", second.lines()));
    assert_eq!(again, built);
    let run = second
        .step_number(&format!("RUN echo kiln-out-{n}"))
        .unwrap();
    assert!(
        second.lines().contains(&format!("{run} CACHED")),
        "{:#?}",
        second.lines()
    );

    // Each build's session and connections ended with it (a few build threads' worth of
    // slack for the test harness's own descriptors).
    // Closing is asynchronous on the Engine's side: look for up to 5 s.
    let mut fds_after = open_fds();
    for _ in 0..50 {
        if fds_after <= fds_before + 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        fds_after = open_fds();
    }
    assert!(
        fds_after <= fds_before + 2,
        "descriptors before {fds_before}, after two builds {fds_after}"
    );
    for tag in &tags {
        docker(&["rmi", tag]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_names_its_step() {
    if !engine_available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let n = nonce();
    let dockerfile = format!("FROM {BASE}\nRUN echo before-{n} && exit 3\nLABEL x=y\n");
    let tags = [format!("kiln-test/buildkit-fail:{n}")];
    let log = Log::default();
    let err = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            ..Default::default()
        },
        &mut log.sink(),
        &CancellationToken::new(),
    )
    .await
    .expect_err("the RUN fails");
    let text = err.to_string();
    eprintln!("error: {text}\nlog:\n{}", log.lines().join("\n"));
    assert!(matches!(err, EngineError::BuildFailed(_)), "{err:?}");
    assert!(
        text.contains(&format!("RUN echo before-{n} && exit 3")),
        "{text}"
    );
    assert!(text.contains("exit code: 3"), "{text}");
    assert!(!err.is_transient(), "{text}");
    let run = log.step_number(&format!("RUN echo before-{n}")).unwrap();
    let lines = log.lines();
    assert!(lines.contains(&format!("{run} before-{n}")), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{run} ERROR: "))),
        "{lines:#?}"
    );
    let (exists, _) = docker(&["image", "inspect", &tags[0]]);
    assert!(!exists, "a failed build tags nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_a_from_on_the_htpasswd_registry_through_the_session() {
    if !engine_available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let n = nonce();
    // A base that exists only on the htpasswd registry: pushed from here, then removed locally,
    // so BuildKit must pull it and ask the session for the login.
    let base = auth_only_base("kiln-test/buildkit-auth-base");

    let dockerfile = format!("FROM {base}\nRUN echo pulled-{n}\n");
    let tags = [format!("kiln-test/buildkit-auth:{n}")];
    let (user, password) = auth_registry_login();

    let anonymous = Log::default();
    let refused = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            ..Default::default()
        },
        &mut anonymous.sink(),
        &CancellationToken::new(),
    )
    .await
    .expect_err("no credential, no pull");
    assert!(
        matches!(&refused, EngineError::Auth { registry, .. } if registry == AUTH_REGISTRY),
        "{refused:?}"
    );

    // A credential for another registry is not sent to this one.
    let elsewhere = [Credential::new("127.0.0.1:5999", &user, &password)];
    let wrong = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            credentials: &elsewhere,
            ..Default::default()
        },
        &mut Log::default().sink(),
        &CancellationToken::new(),
    )
    .await;
    assert!(matches!(wrong, Err(EngineError::Auth { .. })), "{wrong:?}");

    let credentials = [Credential::new(AUTH_REGISTRY, &user, &password)];
    let log = Log::default();
    let built = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            credentials: &credentials,
            ..Default::default()
        },
        &mut log.sink(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));
    assert!(built.image_id.starts_with("sha256:"));
    let lines = log.lines();
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(" pulled-{n}"))),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(&password)),
        "the password reached the log"
    );
    let (_, history) = docker(&["history", "--no-trunc", &tags[0]]);
    assert!(
        !history.contains(&password),
        "the password reached the image history"
    );
    docker(&["rmi", &tags[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_running_step() {
    if !engine_available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let n = nonce();
    let marker = format!("sleeping-{n}");
    let dockerfile = format!("FROM {BASE}\nRUN echo {marker} && sleep 60\n");
    let tags = [format!("kiln-test/buildkit-cancel:{n}")];
    let log = Log::default();
    let cancel = CancellationToken::new();
    let task = {
        let (dockerfile, tags, log, cancel) = (
            dockerfile.clone(),
            tags.clone(),
            log.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            build(
                &EngineEndpoint::default(),
                &BuildkitRequest {
                    dockerfile: &dockerfile,
                    tags: &tags,
                    ..Default::default()
                },
                &mut log.sink(),
                &cancel,
            )
            .await
        })
    };
    // The step runs once its echo has come through.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log
        .lines()
        .iter()
        .any(|l| l.ends_with(&format!(" {marker}")))
    {
        assert!(
            Instant::now() < deadline,
            "the step never ran: {:#?}",
            log.lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let running = || {
        Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(running(), "the step's process is visible while it runs");
    let started = Instant::now();
    cancel.cancel();
    let result = task.await.unwrap();
    assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    // The solve stops: the step's `sleep 60` is gone long before it would have ended.
    while running() {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the cancelled step is still running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (exists, _) = docker(&["image", "inspect", &tags[0]]);
    assert!(!exists, "a cancelled build tags nothing");
}
