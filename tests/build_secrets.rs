//! Build secrets on the real Engine's embedded BuildKit (`kiln::buildkit::build` with
//! `secrets`): a `RUN --mount=type=secret` step reads the secret through Kiln's own session;
//! the value is in no layer of `docker save`, not in `docker history --no-trunc`, not in the
//! image config and not in the log; an id the build was not given fails its step with a clear
//! error; and the same works over the Engine's mutual-TLS TCP listener
//! (`tcp://127.0.0.1:2376`, dev-env's client files), and beside the credential of the
//! htpasswd registry (`127.0.0.1:5001`) that the same session gives for the `FROM`.
//!
//! The step proves it read the value without naming it: it compares the secret's SHA-256 with
//! the one the test computed, so the Dockerfile (which is in the history) holds no secret.
//! The search for the value in `docker save` is shown to work by a control image that does
//! write its marker into a layer.

mod common;

use common::log::Log;
use common::registry::{AUTH_REGISTRY, auth_only_base, auth_registry_login};
use common::{engine_available, nonce};
use kiln::buildkit::{BuildSecret, BuildkitRequest, build};
use kiln::docker::auth::Credential;
use kiln::docker::{EngineEndpoint, EngineError};
use sha2::{Digest, Sha256};
use std::process::Command;
use tokio_util::sync::CancellationToken;

const BASE: &str = "127.0.0.1:5000/kiln/bookworm:minbase";
const TLS_HOST: &str = "tcp://127.0.0.1:2376";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn docker(args: &[&str]) -> (bool, Vec<u8>) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    let mut all = out.stdout;
    all.extend_from_slice(&out.stderr);
    (out.status.success(), all)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A Dockerfile whose one step checks that the secret `id` holds the bytes hashing to
/// `sha256`, then prints `marker`.
fn checking_dockerfile(id: &str, sha256: &str, marker: &str) -> String {
    format!(
        "FROM {BASE}\n\
         RUN --mount=type=secret,id={id},target=/run/{id},required=true \
         sh -c 'test \"$(sha256sum < /run/{id} | cut -d\" \" -f1)\" = {sha256} && echo {marker}-ok'\n"
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Builds with a secret on `endpoint` and checks every place the value must not be.
async fn secret_build_leaves_no_trace(endpoint: &EngineEndpoint, what: &str) {
    let n = nonce();
    let value = format!("s3cret-value-{n}");
    let marker = format!("kiln-{what}-{n}");
    let dockerfile = checking_dockerfile("s1", &sha256_hex(value.as_bytes()), &marker);
    let tags = [format!("kiln-test/build-secret-{what}:{n}")];
    let secrets = [
        BuildSecret::new("s1", value.as_bytes()),
        BuildSecret::new("unused", "another-value"),
    ];
    let log = Log::default();
    let built = build(
        endpoint,
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            secrets: &secrets,
            ..Default::default()
        },
        &mut log.sink(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));
    let lines = log.lines();
    eprintln!("{what} log:\n{}", lines.join("\n"));
    assert!(built.image_id.starts_with("sha256:"), "{built:?}");
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(" {marker}-ok"))),
        "the step did not read the secret: {lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(&value)),
        "the value reached the log"
    );

    let (ok, saved) = docker(&["save", &tags[0]]);
    assert!(ok, "docker save: {}", String::from_utf8_lossy(&saved));
    assert!(
        saved.len() > 1024,
        "docker save wrote {} bytes",
        saved.len()
    );
    // Engine 20.10 saves layers as plain tars, so the value would be found as it is.
    assert!(
        !contains(&saved, &value),
        "the value is in a layer or the config"
    );
    let (ok, history) = docker(&["history", "--no-trunc", &tags[0]]);
    assert!(ok, "{}", String::from_utf8_lossy(&history));
    assert!(
        contains(&history, &marker),
        "{}",
        String::from_utf8_lossy(&history)
    );
    assert!(!contains(&history, &value), "the value is in the history");
    let (ok, config) = docker(&["image", "inspect", &tags[0]]);
    assert!(ok, "{}", String::from_utf8_lossy(&config));
    assert!(
        !contains(&config, &value),
        "the value is in the image config"
    );
    docker(&["rmi", &tags[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_mount_reads_the_secret_and_the_image_keeps_no_trace_of_it() {
    if !engine_available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    secret_build_leaves_no_trace(&EngineEndpoint::default(), "unix").await;

    // The control: a value written into a layer is found by the same search of `docker save`.
    let n = nonce();
    let written = format!("written-value-{n}");
    let tags = [format!("kiln-test/build-secret-control:{n}")];
    let dockerfile = format!("FROM {BASE}\nRUN printf %s {written} > /control\n");
    let log = Log::default();
    build(
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
    .unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));
    let (ok, saved) = docker(&["save", &tags[0]]);
    assert!(ok);
    let (_, history) = docker(&["history", "--no-trunc", &tags[0]]);
    docker(&["rmi", &tags[0]]);
    assert!(
        contains(&saved, &written),
        "the search of docker save finds nothing"
    );
    assert!(
        contains(&history, &written),
        "the search of the history finds nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_build_was_not_given_fails_its_step_clearly() {
    if !engine_available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let n = nonce();
    let marker = format!("kiln-missing-{n}");
    let dockerfile = checking_dockerfile("s2", &sha256_hex(b"whatever"), &marker);
    let tags = [format!("kiln-test/build-secret-missing:{n}")];
    let secrets = [BuildSecret::new("s1", "given-but-not-asked")];
    let log = Log::default();
    let err = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            secrets: &secrets,
            ..Default::default()
        },
        &mut log.sink(),
        &CancellationToken::new(),
    )
    .await
    .expect_err("a secret that was not given cannot be mounted");
    let text = err.to_string();
    eprintln!("error: {text}\nlog:\n{}", log.lines().join("\n"));
    assert!(matches!(err, EngineError::BuildFailed(_)), "{err:?}");
    assert!(!err.is_transient(), "{text}");
    assert!(
        text.contains("--mount=type=secret,id=s2"),
        "the step is named: {text}"
    );
    assert!(text.contains("s2"), "{text}");
    assert!(text.to_lowercase().contains("not found"), "{text}");
    assert!(
        !log.lines()
            .iter()
            .any(|l| l.ends_with(&format!(" {marker}-ok"))),
        "the step ran"
    );
    let (exists, _) = docker(&["image", "inspect", &tags[0]]);
    assert!(!exists, "a failed build tags nothing");

    // An id BuildKit would refuse is refused before anything is sent.
    let bad = [BuildSecret::new("a,b", "x")];
    let err = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            secrets: &bad,
            ..Default::default()
        },
        &mut Log::default().sink(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("not a BuildKit secret id"),
        "{err}"
    );
}

/// dev-env's client files for the Engine's mutual-TLS listener.
fn tls_client_dir() -> std::path::PathBuf {
    let dir = std::env::var("KILN_ENV_DIR").unwrap_or_else(|_| "/var/lib/kiln-env".into());
    std::path::PathBuf::from(dir).join("docker-tls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_a_build_over_the_mutual_tls_listener() {
    if !engine_available() {
        return;
    }
    let tls = tls_client_dir();
    assert!(
        tls.join("client/key.pem").exists(),
        "scripts/dev-env.sh up makes {}/client",
        tls.display()
    );
    let _serial = SERIAL.lock().await;
    let endpoint = EngineEndpoint {
        host: Some(TLS_HOST.into()),
        tls_verify: Some(true),
        cert_path: Some(tls.join("client")),
    };
    secret_build_leaves_no_trace(&endpoint, "tls").await;

    // Kiln verifies the Engine: a CA that did not sign it is refused, and not as transient.
    let untrusting = tempfile::tempdir().unwrap();
    std::fs::copy(
        tls.join("wrong-ca/ca.pem"),
        untrusting.path().join("ca.pem"),
    )
    .unwrap();
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(tls.join("client").join(name), untrusting.path().join(name)).unwrap();
    }
    let tags = [format!("kiln-test/build-secret-refused:{}", nonce())];
    let err = build(
        &EngineEndpoint {
            host: Some(TLS_HOST.into()),
            tls_verify: Some(true),
            cert_path: Some(untrusting.path().into()),
        },
        &BuildkitRequest {
            dockerfile: &format!("FROM {BASE}\nRUN true\n"),
            tags: &tags,
            ..Default::default()
        },
        &mut Log::default().sink(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, EngineError::Unreachable { .. }), "{err:?}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!err.is_transient(), "{text}");
}

/// One session serves both: the registry credential for a base that only the htpasswd
/// registry has, and the secret of the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_gives_the_registry_credential_and_the_secret() {
    if !engine_available() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let n = nonce();
    // An ENV-only child of the local base, pushed to the htpasswd registry and removed here,
    // so BuildKit must pull it with the session's credential.
    let base = auth_only_base("kiln-test/build-secret-auth-base");

    let value = format!("auth-and-secret-{n}");
    let marker = format!("kiln-auth-{n}");
    let dockerfile = checking_dockerfile("s1", &sha256_hex(value.as_bytes()), &marker).replacen(
        &format!("FROM {BASE}"),
        &format!("FROM {base}"),
        1,
    );
    let tags = [format!("kiln-test/build-secret-auth:{n}")];
    let secrets = [BuildSecret::new("s1", value.as_bytes())];
    let (user, password) = auth_registry_login();

    let anonymous = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            secrets: &secrets,
            ..Default::default()
        },
        &mut Log::default().sink(),
        &CancellationToken::new(),
    )
    .await
    .expect_err("no credential, no pull");
    assert!(
        matches!(&anonymous, EngineError::Auth { registry, .. } if registry == AUTH_REGISTRY),
        "{anonymous:?}"
    );

    let credentials = [Credential::new(AUTH_REGISTRY, &user, &password)];
    let log = Log::default();
    let built = build(
        &EngineEndpoint::default(),
        &BuildkitRequest {
            dockerfile: &dockerfile,
            tags: &tags,
            credentials: &credentials,
            secrets: &secrets,
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
        lines.iter().any(|l| l.ends_with(&format!(" {marker}-ok"))),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(&value) && !l.contains(&password)),
        "a secret reached the log"
    );
    let (_, history) = docker(&["history", "--no-trunc", &tags[0]]);
    assert!(!contains(&history, &value) && !contains(&history, &password));
    docker(&["rmi", &tags[0]]);
}
