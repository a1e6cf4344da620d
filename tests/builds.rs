//! Real builds (docs/design.md §3–4): `kiln sync` against the real Docker Engine and registries that
//! `scripts/dev-env.sh` starts, then the outcome checked through Kiln's API, the registry's
//! HTTP API and the Engine itself. With `CI=true` a missing Engine fails these tests.

mod common;

use common::{GitRepo, Server, engine_available, fresh_base, sync};
use std::path::Path;
use std::process::Command;

const ENV_DIR: &str = "/var/lib/kiln-env";

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

fn registry_auth() -> (String, String) {
    let text = std::fs::read_to_string(format!("{ENV_DIR}/registry-auth.env"))
        .expect("dev-env.sh wrote registry-auth.env");
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap()
            .trim_matches('\'')
            .trim_matches('"')
            .to_string()
    };
    (
        get("KILN_TEST_REGISTRY_USER"),
        get("KILN_TEST_REGISTRY_PASSWORD"),
    )
}

fn write_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("kiln.toml");
    std::fs::write(&path, extra).unwrap();
    path.display().to_string()
}

async fn job_of(server: &Server, spec: &str) -> serde_json::Value {
    server.get(&format!("/api/v1/specs/{spec}/jobs")).await[0].clone()
}

#[tokio::test]
async fn apt_and_pip_build_push_label_and_run_and_a_failing_run_fails_alone() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write("pytools.yaml", "name: pytools\nbaseImage: 127.0.0.1:5000/kiln/bookworm-python:minbase\npackages:\n  apt: [curl, jq]\n  pip: [six==1.16.0]\n");
    repo.write("broken.yaml", "name: broken\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\npackages:\n  apt: [no-such-package-kiln]\n");
    let sha = repo.commit("two specs");
    let config = write_config(
        tmp.path(),
        "registry = '127.0.0.1:5000'\nca_bundle = '/etc/ssl/certs/ca-certificates.crt'\n",
    );
    let data = tmp.path().join("data");
    let (code, out) = sync(&config, &repo.dir, &data);
    assert_eq!(code, 1, "one job fails, so sync exits 1: {out}");

    let server = Server::observe(&repo.dir, &data).await;
    let job = job_of(&server, "pytools").await;
    let log = server.log(&job).await;
    assert_eq!(job["status"], "succeeded", "{job}\n{log}");
    let tag = format!("r1-{}", &sha[..7]);
    let image = format!("127.0.0.1:5000/pytools:{tag}");
    assert_eq!(job["image"], image.as_str());
    assert!(
        log.contains("kiln: pushing 127.0.0.1:5000/pytools:"),
        "{log}"
    );
    // pip ran in this build, or its step came from the builder's cache of an earlier one.
    let pip_step = log
        .lines()
        .find(|l| l.contains("] RUN ") && l.contains("pip install") && l.contains("six==1.16.0"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pip step in the log: {log}"));
    assert!(
        log.contains("Successfully installed six-1.16.0")
            || log.lines().any(|l| l == format!("{pip_step} CACHED")),
        "{log}"
    );

    // The registry has the tag, with the digest Kiln recorded.
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:5000/v2/pytools/manifests/{tag}"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let digest = resp.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(job["digest"], digest.as_str());
    let latest = reqwest::Client::new()
        .head("http://127.0.0.1:5000/v2/pytools/manifests/latest")
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(latest.status().as_u16(), 200);

    // It runs, and carries the labels.
    let (ok, out) = docker(&[
        "run",
        "--rm",
        &image,
        "python3",
        "-c",
        "import six; print(six.__version__)",
    ]);
    assert!(ok && out.contains("1.16.0"), "{out}");
    let (ok, out) = docker(&["run", "--rm", &image, "jq", "--version"]);
    assert!(ok && out.contains("jq-1.6"), "{out}");
    let (_, labels) = docker(&["inspect", "--format", "{{json .Config.Labels}}", &image]);
    let labels: serde_json::Value = serde_json::from_str(labels.trim()).unwrap();
    assert_eq!(labels["org.opencontainers.image.revision"], sha.as_str());
    assert_eq!(labels["io.kiln.spec"], "pytools");
    assert_eq!(labels["io.kiln.revision"], "1");
    assert!(
        labels["io.kiln.digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // The same log with each line's receive time, like `docker logs --timestamps`.
    let timed = reqwest::get(format!(
        "{}/api/v1/jobs/{}/log?timestamps=true",
        server.base, job["id"]
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let mut previous = String::new();
    let untimed: Vec<&str> = timed
        .lines()
        .map(|line| {
            let (at, text) = line.split_once(' ').unwrap_or((line, ""));
            assert!(
                at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
                "{line}"
            );
            assert!(*at >= *previous, "times go forward: {previous} then {at}");
            previous = at.to_string();
            text
        })
        .collect();
    assert_eq!(untimed, log.lines().collect::<Vec<_>>());

    // What is inside, as Kiln recorded it from the finished image, listed beside the push.
    assert!(
        log.lines()
            .any(|l| l.starts_with("kiln: listed the installed packages of sha256:")),
        "{log}"
    );
    let packages = server
        .get(&format!("/api/v1/jobs/{}/packages", job["id"]))
        .await;
    let has = |manager: &str, name: &str, version: Option<&str>| {
        packages[manager].as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["name"] == name && version.is_none_or(|v| p["version"] == v))
        })
    };
    assert!(has("pip", "six", Some("1.16.0")), "{packages}");
    assert!(has("pip", "pip", None), "{packages}");
    assert!(
        has("apt", "jq", None) && has("apt", "curl", None),
        "{packages}"
    );
    assert_eq!(packages["conda"], serde_json::json!([]), "{packages}");

    // The failing RUN: failed, the apt error in the log and in `error`.
    let broken = job_of(&server, "broken").await;
    let broken_log = server.log(&broken).await;
    assert_eq!(broken["status"], "failed");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("returned a non-zero code"),
        "{broken}"
    );
    assert!(
        broken_log.contains("Unable to locate package no-such-package-kiln"),
        "{broken_log}"
    );
    server.stop();
    let _ = docker(&["rmi", "-f", &image, "127.0.0.1:5000/pytools:latest"]);
}

#[tokio::test]
async fn pip_without_the_ca_bundle_fails_with_the_tls_error_in_the_log() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    // A version no other test installs (tests/changes.rs builds 3.6 and 3.7), so no wheel
    // of it is in the builder's pip cache and pip must ask the index.
    repo.write("noca.yaml", "name: noca\nbaseImage: 127.0.0.1:5000/kiln/bookworm-python:minbase\npackages:\n  pip: [idna==3.4]\n");
    repo.commit("pip without CA");
    let config = write_config(tmp.path(), "");
    let data = tmp.path().join("data");
    let (code, out) = sync(&config, &repo.dir, &data);
    assert_eq!(code, 1, "{out}");
    let server = Server::observe(&repo.dir, &data).await;
    let job = job_of(&server, "noca").await;
    let log = server.log(&job).await;
    assert_eq!(job["status"], "failed");
    assert!(log.contains("CERTIFICATE_VERIFY_FAILED"), "{log}");
    server.stop();
}

#[tokio::test]
async fn pull_secret_gives_access_to_the_auth_registry_and_never_leaks() {
    if !engine_available() {
        return;
    }
    let (user, password) = registry_auth();
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    let base = "127.0.0.1:5001/kiln/bookworm:minbase";
    repo.write(
        "a-nosecret.yaml",
        &format!("name: a-nosecret\nbaseImage: {base}\npackages:\n  apt: [jq]\n"),
    );
    repo.write(
        "b-secret.yaml",
        &format!("name: b-secret\nbaseImage: {base}\npullSecret: corp\npackages:\n  apt: [jq]\n"),
    );
    repo.commit("specs on the private base");
    // One build at a time, and no copy of the base in the Engine: every pull asks the registry.
    let _ = docker(&["rmi", base]);
    let good = format!("{ENV_DIR}/docker-config/config.json");
    let config = write_config(
        tmp.path(),
        &format!(
            "max_parallel_builds = 1\ndocker_config = '{good}'\n[pull_secrets]\ncorp = '127.0.0.1:5001'\n"
        ),
    );
    let data = tmp.path().join("data");
    let (code, out) = sync(&config, &repo.dir, &data);
    assert_eq!(code, 1, "{out}");

    // A wrong password for the same secret.
    let wrong_dir = tmp.path().join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    let wrong_auth = base64_encode(&format!("{user}:not-the-password"));
    std::fs::write(
        wrong_dir.join("config.json"),
        format!("{{\"auths\":{{\"127.0.0.1:5001\":{{\"auth\":\"{wrong_auth}\"}}}}}}"),
    )
    .unwrap();
    let mut repo2 = GitRepo::init(&tmp.path().join("repo2"));
    repo2.write(
        "c-wrong.yaml",
        &format!("name: c-wrong\nbaseImage: {base}\npullSecret: corp\npackages:\n  apt: [jq]\n"),
    );
    repo2.commit("wrong credential");
    let _ = docker(&["rmi", base]);
    let config2 = tmp.path().join("kiln2.toml");
    std::fs::write(
        &config2,
        format!(
            "docker_config = '{}'\n[pull_secrets]\ncorp = '127.0.0.1:5001'\n",
            wrong_dir.join("config.json").display()
        ),
    )
    .unwrap();
    let data2 = tmp.path().join("data2");
    let (code, out) = sync(&config2.display().to_string(), &repo2.dir, &data2);
    assert_eq!(code, 1, "{out}");

    let server = Server::observe(&repo.dir, &data).await;
    let none = job_of(&server, "a-nosecret").await;
    assert_eq!(none["status"], "failed");
    let message = none["error"].as_str().unwrap().to_lowercase();
    assert!(
        message.contains("refused access")
            || message.contains("no basic auth")
            || message.contains("unauthorized"),
        "{none}"
    );
    let secret = job_of(&server, "b-secret").await;
    assert_eq!(
        secret["status"],
        "succeeded",
        "{}",
        server.log(&secret).await
    );
    let mut api_text = server.get("/api/v1/specs").await.to_string();
    for j in [&none, &secret] {
        api_text.push_str(&server.log(j).await);
        api_text.push_str(
            &server
                .get(&format!("/api/v1/jobs/{}", j["id"]))
                .await
                .to_string(),
        );
    }
    server.stop();
    let server2 = Server::observe(&repo2.dir, &data2).await;
    let wrong = job_of(&server2, "c-wrong").await;
    assert_eq!(wrong["status"], "failed");
    assert!(
        wrong["error"].as_str().unwrap().contains("refused access"),
        "{wrong}"
    );
    api_text.push_str(&server2.log(&wrong).await);
    server2.stop();

    // The password is nowhere: not in the API output, logs, or any byte of the data dirs.
    assert!(
        !api_text.contains(&password),
        "password leaked into the API"
    );
    for dir in [&data, &data2] {
        for entry in walkdir::WalkDir::new(dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
        {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes
                    .windows(password.len())
                    .any(|w| w == password.as_bytes()),
                "password found in {}",
                entry.path().display()
            );
        }
    }
    let _ = docker(&["rmi", "-f", "kiln/b-secret:latest"]);
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `docker_host` + `docker_cert_path` in kiln.toml: the build goes through the Engine's mutual
/// TLS listener (dev-env's tcp://127.0.0.1:2376) and pushes. With a client certificate the
/// Engine does not trust, `kiln sync` stops at once naming the Engine and the refusal, and
/// under `kiln serve` the job fails with the refusal in `error`, not retried.
#[tokio::test]
async fn builds_through_a_tls_engine_endpoint() {
    if !engine_available() {
        return;
    }
    let tls = Path::new(ENV_DIR).join("docker-tls");
    assert!(
        tls.join("client/key.pem").exists(),
        "scripts/dev-env.sh up makes {}",
        tls.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(
        "overtls.yaml",
        "name: overtls\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\n",
    );
    repo.commit("a spec without packages");
    let config = write_config(
        tmp.path(),
        &format!(
            "registry = '127.0.0.1:5000'\ndocker_host = 'tcp://127.0.0.1:2376'\ndocker_cert_path = '{}'\n",
            tls.join("client").display()
        ),
    );
    let data = tmp.path().join("data");
    let (code, out) = sync(&config, &repo.dir, &data);
    assert_eq!(code, 0, "{out}");
    let server = Server::observe(&repo.dir, &data).await;
    let job = job_of(&server, "overtls").await;
    let log = server.log(&job).await;
    assert_eq!(job["status"], "succeeded", "{job}\n{log}");
    let image = job["image"].as_str().unwrap().to_string();
    server.stop();
    let (ok, out) = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
    assert!(ok, "{out}");

    // A client certificate from a CA the Engine does not know.
    let stranger = tmp.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    std::fs::copy(tls.join("client/ca.pem"), stranger.join("ca.pem")).unwrap();
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(tls.join("wrong-ca").join(name), stranger.join(name)).unwrap();
    }
    repo.write(
        "overtls.yaml",
        "name: overtls\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\npackages:\n  apt: [jq]\n",
    );
    repo.commit("second revision");
    let config = write_config(
        tmp.path(),
        &format!(
            "registry = '127.0.0.1:5000'\ndocker_host = 'tcp://127.0.0.1:2376'\ndocker_cert_path = '{}'\nretry_backoff = 1\n",
            stranger.display()
        ),
    );
    // `kiln sync` is one-shot: it stops at once, naming the Engine and the refusal.
    let (code, out) = sync(&config, &repo.dir, &data);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("Docker Engine unreachable at tcp://127.0.0.1:2376: ")
            && out.contains("BadCertificate"),
        "{out}"
    );
    // `kiln serve` keeps serving; the job fails with the refusal, after one attempt.
    let server = Server::start(&[
        "--config",
        &config,
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ])
    .await;
    let job = server
        .wait_for("overtls", 2, std::time::Duration::from_secs(60), |job| {
            job["status"] == "failed" || job["status"] == "succeeded"
        })
        .await;
    let log = server.log(&job).await;
    assert_eq!(job["status"], "failed", "{job}\n{log}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("Docker Engine unreachable at tcp://127.0.0.1:2376: "),
        "{job}"
    );
    assert!(
        log.contains("attempt 1/3") && !log.contains("attempt 2/3"),
        "a refused certificate is not retried:\n{log}"
    );
    assert!(log.contains("BadCertificate"), "{log}");
    server.stop();
    let _ = docker(&["rmi", "-f", &image, "127.0.0.1:5000/overtls:latest"]);
}

/// BuildKit's cache mounts: an edit of the pip list runs pip again, which takes the wheel it
/// downloaded before from the builder's pip cache and downloads only the new one; apt's step
/// comes from the layer cache; nothing of the package caches is in the image.
#[tokio::test]
async fn a_pip_edit_downloads_only_what_is_new_and_no_cache_is_in_the_image() {
    if !engine_available() {
        return;
    }
    // A base of this run's own, so neither build's pip step can come from the layer cache.
    let base = fresh_base("127.0.0.1:5000/kiln/bookworm-python:minbase", "pip-cache");
    let spec = |pip: &str| {
        format!("name: pipcache\nbaseImage: {base}\npackages:\n  apt: [jq]\n  pip: [{pip}]\n")
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write("pipcache.yaml", &spec("six==1.16.0"));
    repo.commit("six");
    let config = write_config(
        tmp.path(),
        "registry = '127.0.0.1:5000'\nca_bundle = '/etc/ssl/certs/ca-certificates.crt'\n",
    );
    let data = tmp.path().join("data");
    let (code, out) = sync(&config, &repo.dir, &data);
    assert_eq!(code, 0, "{out}");
    repo.write("pipcache.yaml", &spec("six==1.16.0, idna==3.7"));
    repo.commit("idna");
    let (code, out) = sync(&config, &repo.dir, &data);
    assert_eq!(code, 0, "{out}");

    let server = Server::observe(&repo.dir, &data).await;
    let job = job_of(&server, "pipcache").await;
    let log = server.log(&job).await;
    assert_eq!(job["revision"], 2, "{job}");
    assert_eq!(job["status"], "succeeded", "{job}\n{log}");
    let step_of = |what: &str| {
        log.lines()
            .find(|l| l.starts_with('#') && l.contains("] RUN ") && l.contains(what))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no step with {what}: {log}"))
            .to_string()
    };
    let apt = step_of("apt-get");
    assert!(log.lines().any(|l| l == format!("{apt} CACHED")), "{log}");
    // six, fetched for r1 (or by an earlier run on this Engine), is installed from the
    // builder's wheel cache without a download; idna, new in r2, was fetched unless an
    // earlier run left it there too.
    assert!(
        log.lines()
            .any(|l| l.contains("Processing /var/cache/kiln/pip/wheels/six-1.16.0-")),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("Downloading six-")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("Successfully installed idna-3.7 six-1.16.0")),
        "{log}"
    );
    let first = server.job("pipcache", 1).await.unwrap();
    let first_log = server.log(&first).await;
    assert!(
        first_log
            .lines()
            .any(|l| l.contains("Successfully installed six-1.16.0")),
        "{first_log}"
    );

    // The package caches added nothing to the image: the files under them are the base's.
    let image = job["image"].as_str().unwrap();
    let cache_files = |image: &str| {
        let (ok, listing) = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            "find /var/cache/kiln /var/cache/apt /var/lib/apt/lists -type f 2>/dev/null | sort",
        ]);
        assert!(ok, "{listing}");
        listing
    };
    assert_eq!(
        cache_files(image),
        cache_files(&base),
        "caches in the image"
    );
    let (ok, out) = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "python3",
        "-c",
        "import idna, six",
    ]);
    assert!(ok, "{out}");
    docker(&["rmi", image]);
    docker(&["rmi", &base]);
}
