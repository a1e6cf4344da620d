//! The image catalogue end to end: a running Kiln (in process) builds real images on the main
//! Engine and pushes them to the open registry; `/api/v1/catalog` lists them pinned by digest;
//! PyPI's real `jupyterhub`, `jupyterhub-kubespawner` and `dockerspawner` take that list
//! through `deploy/jupyterhub/kiln_catalog.py` (KubeSpawner's own profile loading applies the
//! image; DockerSpawner's own check accepts it); a failing image test fails its job, pushes
//! nothing and leaves the catalogue on the previous image; with Kiln stopped the callables
//! still answer with the last good list.
//!
//! The Python side runs in a venv holding those packages: `KILN_JUPYTERHUB_VENV`, else
//! `~/.cache/kiln/jupyterhub-venv` (scripts/test-all.sh creates it with pinned versions).

mod common;

use common::{GitRepo, Server, engine_available};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const REGISTRY: &str = "127.0.0.1:5000";
const BASE: &str = "127.0.0.1:5000/kiln/bookworm:minbase";

fn venv_python() -> Option<PathBuf> {
    common::tools::venv_python(
        "KILN_JUPYTERHUB_VENV",
        "jupyterhub-venv",
        "import jupyterhub, kubespawner, dockerspawner",
    )
}

/// The spawners' view of the catalogue (tests/jupyterhub/spawners.py), as JSON.
fn spawners(python: &Path, url: &str, cache: &Path, slug: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jupyterhub/spawners.py");
    let out = Command::new(python)
        .arg(&script)
        .args([url, &cache.display().to_string(), slug, slug])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "spawners.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("spawners.py printed {stdout}: {e}"))
}

async fn catalog(server: &Server) -> Value {
    server.get("/api/v1/catalog").await
}

fn entry<'a>(catalog: &'a Value, name: &str) -> Option<&'a Value> {
    catalog["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

async fn wait_catalog(server: &Server, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = catalog(server).await;
        if ok(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "catalogue never showed {what}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn manifest_status(name: &str, reference: &str) -> u16 {
    reqwest::Client::new()
        .head(format!("http://{REGISTRY}/v2/{name}/manifests/{reference}"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn spec_text(name: &str, display: &str, catalog: &str, tests: &[&str]) -> String {
    let tests: String = if tests.is_empty() {
        String::new()
    } else {
        let list: String = tests.iter().map(|t| format!("  - {t}\n")).collect();
        format!("tests:\n{list}")
    };
    format!(
        "name: {name}\ndisplayName: {display}\ndescription: made by tests/catalog.rs\nbaseImage: {BASE}\n{catalog}{tests}"
    )
}

#[tokio::test]
async fn spawners_read_the_catalogue_and_a_failing_image_test_pushes_nothing() {
    if !engine_available() {
        return;
    }
    let Some(python) = venv_python() else {
        return;
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (nb, phys, hidden) = (
        format!("cat-nb-{nonce}"),
        format!("cat-phys-{nonce}"),
        format!("cat-hidden-{nonce}"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(
        &format!("specs/{nb}.yaml"),
        &spec_text(
            &nb,
            "Notebook",
            "catalog:\n  default: true\n",
            &["test -d /etc", "echo kiln-image-test-ran"],
        ),
    );
    repo.write(
        &format!("specs/{phys}.yaml"),
        &spec_text(&phys, "Physics", "catalog:\n  groups: [physics]\n", &[]),
    );
    repo.write(
        &format!("specs/{hidden}.yaml"),
        &spec_text(&hidden, "Hidden", "catalog:\n  hidden: true\n", &[]),
    );
    repo.commit("three specs");
    let config = tmp.path().join("kiln.toml");
    std::fs::write(&config, format!("registry = '{REGISTRY}'\n")).unwrap();
    let server = Server::in_process(&[
        "--config",
        &config.display().to_string(),
        "--repo",
        &repo.dir.display().to_string(),
        "--specs-dir",
        "specs",
        "--data-dir",
        &tmp.path().join("data").display().to_string(),
        "--poll-interval",
        "3600",
    ])
    .await;
    for name in [&nb, &phys, &hidden] {
        let job = server
            .wait_for(name, 1, Duration::from_secs(600), |j| {
                j["status"] != "queued" && j["status"] != "running"
            })
            .await;
        assert_eq!(
            job["status"],
            "succeeded",
            "{job}\n{}",
            server.log(&job).await
        );
    }
    let nb_r1 = server.job(&nb, 1).await.unwrap();
    let log = server.log(&nb_r1).await;
    assert!(
        log.contains("kiln: image test 2/2: echo kiln-image-test-ran"),
        "{log}"
    );
    assert!(log.contains("  kiln-image-test-ran"), "{log}");
    assert!(log.contains("kiln: all 2 image tests passed"), "{log}");

    // The catalogue: the listed specs, pinned by the digest the registry has.
    let c = catalog(&server).await;
    assert!(
        entry(&c, &hidden).is_none(),
        "hidden is built, not listed: {c}"
    );
    let e = entry(&c, &nb).unwrap_or_else(|| panic!("{nb} listed: {c}"));
    let digest = nb_r1["digest"].as_str().unwrap();
    assert_eq!(e["image_digest_ref"], format!("{REGISTRY}/{nb}@{digest}"));
    assert_eq!(e["image"], nb_r1["image"]);
    assert_eq!(e["display_name"], "Notebook");
    assert_eq!(e["description"], "made by tests/catalog.rs");
    assert_eq!(
        (e["revision"].as_u64(), e["default"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(e["commit"], nb_r1["commit"]);
    assert!(e["built_at"].is_string(), "{e}");
    assert_eq!(
        entry(&c, &phys).unwrap()["groups"],
        serde_json::json!(["physics"])
    );
    assert_eq!(manifest_status(&nb, digest).await, 200);
    let nb_ref = e["image_digest_ref"].as_str().unwrap().to_string();

    // The real spawners take the list.
    let live = spawners(&python, &server.base, &cache, &nb);
    assert_eq!(live["kubespawner_image"], nb_ref.as_str(), "{live}");
    let slugs: Vec<&str> = live["nonmember_slugs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        slugs.contains(&nb.as_str()) && !slugs.contains(&phys.as_str()),
        "{live}"
    );
    assert!(!slugs.contains(&hidden.as_str()), "{live}");
    let member: Vec<&str> = live["member_slugs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(member.contains(&phys.as_str()), "{live}");
    assert_eq!(live["dockerspawner_checked"], nb_ref.as_str(), "{live}");
    assert_eq!(
        live["dockerspawner_allowed"]["Notebook"],
        nb_ref.as_str(),
        "{live}"
    );

    // A display-name edit builds nothing; the catalogue shows the committed value.
    repo.write(
        &format!("specs/{nb}.yaml"),
        &spec_text(
            &nb,
            "Notebook 2026",
            "catalog:\n  default: true\n",
            &["test -d /etc", "echo kiln-image-test-ran"],
        ),
    );
    repo.commit("rename the notebook");
    wait_catalog(&server, "the new display name", |c| {
        entry(c, &nb).is_some_and(|e| e["display_name"] == "Notebook 2026")
    })
    .await;
    assert_eq!(
        server.jobs(&nb).await.len(),
        1,
        "a display name builds nothing"
    );
    let page = reqwest::get(format!("{}/specs/{nb}", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Notebook 2026"), "{page}");
    assert!(page.contains("listed, the default"), "{page}");
    assert!(
        page.contains("<code>echo kiln-image-test-ran</code>"),
        "{page}"
    );

    // A failing test: r2 fails with the test's output in its log, nothing pushed, the
    // catalogue stays on r1.
    repo.write(
        &format!("specs/{nb}.yaml"),
        &spec_text(
            &nb,
            "Notebook 2026",
            "catalog:\n  default: true\n",
            &["echo kiln-failing-test-output; exit 3"],
        ),
    );
    let r2_sha = repo.commit("a test that fails");
    let r2 = server
        .wait_for(&nb, 2, Duration::from_secs(600), |j| {
            j["status"] != "queued" && j["status"] != "running"
        })
        .await;
    let r2_log = server.log(&r2).await;
    assert_eq!(r2["status"], "failed", "{r2}\n{r2_log}");
    assert!(r2_log.contains("  kiln-failing-test-output"), "{r2_log}");
    assert!(
        r2_log.contains("kiln: image test 1/1 failed with exit code 3"),
        "{r2_log}"
    );
    assert!(!r2_log.contains("kiln: pushing"), "{r2_log}");
    assert_eq!(
        manifest_status(&nb, &format!("r2-{}", &r2_sha[..7])).await,
        404,
        "no r2 tag"
    );
    let latest = reqwest::Client::new()
        .head(format!("http://{REGISTRY}/v2/{nb}/manifests/latest"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        latest
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()),
        Some(digest),
        "latest stays on r1"
    );
    let c = catalog(&server).await;
    let e = entry(&c, &nb).unwrap();
    assert_eq!(e["image_digest_ref"], nb_ref.as_str(), "{c}");
    assert_eq!(e["revision"], 1);
    let good = spawners(&python, &server.base, &cache, &nb);

    // Kiln stopped: the callables answer with the last good list.
    server.stop();
    let down = spawners(&python, "http://127.0.0.1:9", &cache, &nb);
    assert_eq!(down["kubespawner_image"], nb_ref.as_str(), "{down}");
    // Different URL, same cache files: what was cached from the live Kiln comes back.
    assert_eq!(down["profiles"], good["profiles"]);
    // DockerSpawner calls its callable synchronously, so inside the hub's loop the snippet
    // answers from the cache and refreshes it in a thread: the refresh of the `good` run put
    // the renamed entry into the cache file.
    assert_eq!(
        down["dockerspawner_allowed"]["Notebook 2026"],
        nb_ref.as_str(),
        "{down}"
    );

    for name in [&nb, &phys, &hidden] {
        let images = Command::new("docker")
            .args([
                "images",
                "-q",
                "--filter",
                &format!("reference={REGISTRY}/{name}"),
            ])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&images.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rmi", "-f", id]).output();
        }
    }
}

/// An image test that outlives its limit counts as failed, and its container is gone; one
/// without network cannot reach even the registry next door; stderr reaches the log.
#[tokio::test]
async fn image_tests_are_offline_bounded_and_capture_stderr() {
    use kiln::builder::Builder;
    use kiln::image_tests::{Outcome, run_one};
    if !engine_available() {
        return;
    }
    let engine = kiln::docker::Engine::connect(None)
        .await
        .expect("the main Engine answers");
    let builder: &dyn Builder = &engine;
    let cancel = tokio_util::sync::CancellationToken::new();
    let pulled = Command::new("docker")
        .args(["pull", "-q", BASE])
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{pulled:?}");

    let (outcome, out) = run_one(
        builder,
        BASE,
        "echo to-stderr >&2; exit 4",
        Duration::from_secs(120),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Failed { code: 4 });
    assert!(out.contains("to-stderr"), "{out:?}");

    // No network: not even the registry on the host's loopback (the container has its own).
    let (outcome, out) = run_one(
        builder,
        BASE,
        "cat /sys/class/net/*/operstate; ls /sys/class/net",
        Duration::from_secs(120),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Passed);
    assert_eq!(
        out.split_whitespace()
            .filter(|i| *i != "unknown")
            .collect::<Vec<_>>(),
        ["lo"],
        "{out:?}"
    );

    let (outcome, _) = run_one(builder, BASE, "sleep 600", Duration::from_secs(1), &cancel)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::TimedOut);
    let left = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=io.kiln.run-capture",
            "--filter",
            &format!("ancestor={BASE}"),
            "--filter",
            "status=running",
        ])
        .output()
        .unwrap();
    // Other suites may run their own short listings at the same moment; none is a `sleep 600`.
    let running = String::from_utf8_lossy(&left.stdout).to_string();
    for id in running.split_whitespace() {
        let cmd = Command::new("docker")
            .args(["inspect", "--format", "{{json .Args}}", id])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&cmd.stdout).contains("sleep 600"),
            "the timed-out container {id} still runs"
        );
    }
}
