//! Base images that move, end to end against real registries: the open one on 127.0.0.1:5000,
//! the htpasswd one on 127.0.0.1:5001 (the pull-secret path), and a registry of this test's
//! own (Debian's `docker-registry`, as scripts/dev-env.sh runs them) on a free port, whose
//! access log counts the manifest requests and which the test stops and starts by PID.
//!
//! * A tag pushed anew under a spec's base → a `base-update` revision at the same commit is
//!   built and pushed, on the new digest, with the base labels; an unchanged base → nothing;
//!   an opted-out spec (`rebuildOnBaseUpdate: false`) → "base outdated", nothing built.
//! * 200 specs on 3 bases (and one by digest) → 3 manifest requests in a pass, none for the
//!   digest; the registry down → the reason on `/api/v1/status`, no revision; back up → the
//!   next check records the moved base.

mod common;

use common::{GitRepo, Server, engine_available, nonce};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const ENV_DIR: &str = "/var/lib/kiln-env";
const MINBASE: &str = "127.0.0.1:5000/kiln/bookworm:minbase";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ENV-only child of the minimal base pushed as `tag` (with `config`, a docker config dir,
/// for the registry with credentials); returns the pushed manifest digest.
fn push_base(tag: &str, config: Option<&str>) -> String {
    common::registry::push_env_child(MINBASE, tag, config.map(std::path::Path::new))
}

async fn status(server: &Server) -> Value {
    server.get("/api/v1/status").await
}

/// Wait (bounded) until the base check status satisfies `ok`.
async fn wait_status(server: &Server, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(server).await;
        if ok(&s["base_check"]) {
            return s["base_check"].clone();
        }
        assert!(Instant::now() < deadline, "{what}: never; status {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A registry of this test's own on a free port: `docker-registry serve`, stopped by PID.
struct TestRegistry {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl TestRegistry {
    fn start(dir: &Path) -> TestRegistry {
        let port = common::free_port();
        let mut r = TestRegistry {
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        r.up();
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    fn up(&mut self) {
        let config = self.dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n",
                self.dir.join("data").display(),
                self.port
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian's docker-registry package) runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "test registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it by its PID (SIGKILL: it is down at once, as a crashed registry would be).
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Manifest requests (any method) so far, per repository path fragment.
    fn manifest_requests(&self, repo: &str) -> usize {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("] \"") && l.contains(&format!("/v2/{repo}/manifests/")))
            .count()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.down();
    }
}

fn have_registry_binary() -> bool {
    let ok = Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::tools::missing(
            "docker-registry",
            "not on PATH",
            "apt-get install docker-registry (scripts/dev-env.sh installs it)",
        );
    }
    ok
}

#[tokio::test]
async fn a_moved_tag_is_rebuilt_an_unchanged_one_is_not_and_an_opted_out_spec_is_only_outdated() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let n = nonce();
    let moving = format!("127.0.0.1:5000/kiln-test/base-moves:m-{n}");
    let steady = format!("127.0.0.1:5000/kiln-test/base-moves:s-{n}");
    let private = format!("127.0.0.1:5001/kiln-test/base-moves:p-{n}");
    let docker_config = format!("{ENV_DIR}/docker-config");
    let first = push_base(&moving, None);
    let steady_digest = push_base(&steady, None);
    let private_first = push_base(&private, Some(&docker_config));

    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(
        "bu-moving.yaml",
        &format!("name: bu-moving\nbaseImage: {moving}\n"),
    );
    repo.write(
        "bu-optout.yaml",
        &format!("name: bu-optout\nbaseImage: {moving}\nrebuildOnBaseUpdate: false\n"),
    );
    repo.write(
        "bu-steady.yaml",
        &format!("name: bu-steady\nbaseImage: {steady}\n"),
    );
    repo.write(
        "bu-private.yaml",
        &format!("name: bu-private\nbaseImage: {private}\npullSecret: corp\n"),
    );
    let commit = repo.commit("four specs on moving bases");
    let config = tmp.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "registry = '127.0.0.1:5000'\nbase_check_interval = 2\nmax_parallel_builds = 2\n\
             docker_config = '{docker_config}/config.json'\n[pull_secrets]\ncorp = '127.0.0.1:5001'\n"
        ),
    )
    .unwrap();
    let server = Server::in_process(&[
        "--config",
        &config.display().to_string(),
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &tmp.path().join("data").display().to_string(),
    ])
    .await;
    let limit = Duration::from_secs(300);
    for spec in ["bu-moving", "bu-optout", "bu-steady", "bu-private"] {
        let job = server.wait_done(spec, 1, limit).await;
        assert_eq!(
            job["status"],
            "succeeded",
            "{job}\n{}",
            server.log(&job).await
        );
    }
    let r1 = server.job("bu-moving", 1).await.unwrap();
    assert_eq!(r1["base_digest"], first.as_str(), "{r1}");
    assert_eq!(r1["base"]["reference"], moving.as_str());
    let p1 = server.job("bu-private", 1).await.unwrap();
    assert_eq!(p1["base_digest"], private_first.as_str(), "{p1}");
    // The labels name the base and its digest.
    let image = r1["image"].as_str().unwrap().to_string();
    let labels = docker(&[
        "image",
        "inspect",
        &image,
        "--format",
        "{{json .Config.Labels}}",
    ]);
    let labels: Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(
        labels["org.opencontainers.image.base.name"],
        moving.as_str()
    );
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        first.as_str()
    );

    // The checks so far found every base where the builds found them.
    wait_status(&server, "a clean check", |b| {
        b["last_success"].is_string() && b["error"].is_null()
    })
    .await;
    let spec = server.get("/api/v1/specs/bu-moving").await;
    assert_eq!(spec["revision"], 1, "{spec}");
    assert!(spec["base_outdated"].is_null(), "{spec}");

    // The platform team re-pushes both tags.
    let second = push_base(&moving, None);
    let private_second = push_base(&private, Some(&docker_config));
    assert_ne!(first, second);
    let r2 = server.wait_done("bu-moving", 2, limit).await;
    assert_eq!(r2["status"], "succeeded", "{r2}\n{}", server.log(&r2).await);
    assert_eq!(r2["commit"], commit.as_str(), "same commit, new revision");
    assert_eq!(r2["base_digest"], second.as_str(), "{r2}");
    let pushed = r2["image"].as_str().unwrap().to_string();
    let labels = docker(&[
        "image",
        "inspect",
        &pushed,
        "--format",
        "{{json .Config.Labels}}",
    ]);
    assert!(labels.contains(&second), "{labels}");
    let spec = server.get("/api/v1/specs/bu-moving").await;
    let rev2 = &spec["revisions"][1];
    assert_eq!(rev2["cause"], "base-update", "{spec}");
    assert_eq!(spec["revisions"][0]["cause"], "commit");
    let text = rev2["cause_text"].as_str().unwrap();
    assert!(
        text.starts_with("base image updated: ")
            && text.contains(&second[..19])
            && text.contains(&first[..19]),
        "{text}"
    );
    let p2 = server.wait_done("bu-private", 2, limit).await;
    assert_eq!(p2["status"], "succeeded", "{p2}\n{}", server.log(&p2).await);
    assert_eq!(p2["base_digest"], private_second.as_str());

    // The opted-out spec is outdated and builds nothing; the steady one is left alone.
    let deadline = Instant::now() + limit;
    let optout = loop {
        let s = server.get("/api/v1/specs/bu-optout").await;
        if s["base_outdated"].is_object() {
            break s;
        }
        assert!(Instant::now() < deadline, "bu-optout never outdated: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        optout["base_outdated"]["current"],
        second.as_str(),
        "{optout}"
    );
    assert_eq!(optout["base_outdated"]["built_on"], first.as_str());
    // Two more checks after that: still nothing built for it or for the steady spec.
    let seen = status(&server).await["base_check"]["last_attempt"].clone();
    wait_status(&server, "a later check", |b| b["last_attempt"] != seen).await;
    let seen = status(&server).await["base_check"]["last_attempt"].clone();
    wait_status(&server, "another check", |b| b["last_attempt"] != seen).await;
    for name in ["bu-optout", "bu-steady"] {
        let s = server.get(&format!("/api/v1/specs/{name}")).await;
        assert_eq!(s["revision"], 1, "{s}");
        assert_eq!(server.jobs(name).await.len(), 1, "{name}");
    }
    let steady_spec = server.get("/api/v1/specs/bu-steady").await;
    assert!(steady_spec["base_outdated"].is_null(), "{steady_spec}");
    assert_eq!(
        server.job("bu-steady", 1).await.unwrap()["base_digest"],
        steady_digest.as_str()
    );
    // The moving spec is current again once its rebuild landed.
    let s = server.get("/api/v1/specs/bu-moving").await;
    assert!(s["base_outdated"].is_null(), "{s}");

    // Dashboard and metrics.
    let html = server.text("/").await;
    assert!(html.contains("base outdated since"), "spec list");
    let page = server.text("/specs/bu-optout").await;
    assert!(page.contains("Base outdated since"), "spec page");
    let page = server.text("/specs/bu-moving").await;
    assert!(
        page.contains(&second) && page.contains(&first),
        "base digests per job"
    );
    assert!(
        page.contains("base image updated: "),
        "cause on the dashboard"
    );
    let metrics = server.text("/metrics").await;
    assert!(metrics.contains("kiln_bases_outdated 1"), "{metrics}");
    assert!(
        metrics.contains("kiln_base_digest_age_seconds{spec=\"bu-moving\"}"),
        "{metrics}"
    );

    drop(server);
    for tag in [&moving, &steady, &private] {
        let _ = Command::new("docker").args(["rmi", tag]).output();
    }
    for image in [&image, &pushed] {
        let _ = Command::new("docker").args(["rmi", image]).output();
    }
}

#[test]
fn kiln_check_knows_rebuild_on_base_update() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("name: good\nbaseImage: {MINBASE}\nrebuildOnBaseUpdate: false\n"),
    )
    .unwrap();
    let (code, out, err) = common::kiln(&["check", &good.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("name: bad\nbaseImage: {MINBASE}\nrebuildOnBaseUpdate: weekly\n"),
    )
    .unwrap();
    let (code, out, err) = common::kiln(&["check", &bad.display().to_string()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains(":3:22: error[wrong-type]: `rebuildOnBaseUpdate` must be `true` or `false`"),
        "{out}{err}"
    );
}

#[tokio::test]
async fn one_request_per_base_for_200_specs_and_a_registry_down_then_back() {
    if !engine_available() || !have_registry_binary() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg_dir = tmp.path().join("registry");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let mut registry = TestRegistry::start(&reg_dir);
    let host = registry.host();
    let bases: Vec<String> = (1..=3).map(|i| format!("{host}/base{i}:t")).collect();
    let digests: Vec<String> = bases.iter().map(|b| push_base(b, None)).collect();
    let pinned_tag = format!("{host}/pinned:t");
    let pinned = format!("{host}/pinned@{}", push_base(&pinned_tag, None));

    // 200 specs on the 3 bases, and one by digest.
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    for i in 0..200 {
        repo.write(
            &format!("s{i:03}.yaml"),
            &format!("name: s{i:03}\nbaseImage: {}\n", bases[i % 3]),
        );
    }
    repo.write(
        "pinned.yaml",
        &format!("name: pinned\nbaseImage: {pinned}\n"),
    );
    repo.commit("201 specs");
    let data = tmp.path().join("data");

    // Record them as built on the bases as they are now. Building 201 images is not what this
    // test is about: `kiln sync --no-build` records the specs and their jobs, and the store's
    // own API marks each job succeeded with the base digest a build would have recorded (the
    // first test covers the recording by real builds).
    let config = tmp.path().join("kiln.toml");
    std::fs::write(&config, "no_build = true\nbase_check_interval = 0\n").unwrap();
    let (code, out) = common::sync(&config.display().to_string(), &repo.dir, &data);
    assert_eq!(code, 0, "{out}");
    {
        let store = kiln::store::Store::open(&data).unwrap();
        for record in store.specs().collect::<Result<Vec<_>, _>>().unwrap() {
            let mut job = store.job(record.latest_job.unwrap()).unwrap().unwrap();
            job.status = kiln::model::JobStatus::Succeeded;
            job.image = Some(format!("127.0.0.1:5000/{}:r1", record.name));
            job.finished_at = Some(kiln::model::now());
            store.update_job(&job).await.unwrap();
            let base = kiln::dockerfile::base_image(&job.dockerfile)
                .unwrap()
                .to_string();
            let digest = match bases.iter().position(|b| *b == base) {
                Some(i) => digests[i].clone(),
                None => base.split_once('@').unwrap().1.to_string(),
            };
            let record = kiln::store::base_digests::BaseDigest {
                reference: base,
                digest,
                recorded_at: kiln::model::now(),
            };
            store.put_base_digest(job.id, &record).unwrap();
        }
        store.flush().await.unwrap();
    }

    // One pass (the interval is long: only the pass at start runs).
    let before: Vec<usize> = (1..=3)
        .map(|i| registry.manifest_requests(&format!("base{i}")))
        .collect();
    let pinned_before = registry.manifest_requests("pinned");
    let serve = |interval: u64| {
        std::fs::write(
            &config,
            format!("no_build = true\nbase_check_interval = {interval}\n"),
        )
        .unwrap();
        let (config, repo, data) = (
            config.display().to_string(),
            repo.dir.display().to_string(),
            data.display().to_string(),
        );
        async move {
            Server::in_process(&["--config", &config, "--repo", &repo, "--data-dir", &data]).await
        }
    };
    let server = serve(3600).await;
    let check = wait_status(&server, "the first check", |b| {
        b["last_attempt"].is_string()
    })
    .await;
    assert!(check["error"].is_null(), "{check}");
    assert_eq!(check["requests"], 3, "{check}");
    assert_eq!(check["checked"], 200, "{check}");
    for i in 1..=3 {
        assert_eq!(
            registry.manifest_requests(&format!("base{i}")) - before[i - 1],
            1,
            "one manifest request for base{i}"
        );
    }
    assert_eq!(
        registry.manifest_requests("pinned"),
        pinned_before,
        "a digest is never checked"
    );
    assert_eq!(server.get("/api/v1/specs/s000").await["revision"], 1);
    drop(server);

    // The registry goes down: the check says so, nothing is recorded.
    registry.down();
    let server = serve(1).await;
    let down = wait_status(&server, "the failed check", |b| b["error"].is_string()).await;
    let error = down["error"].as_str().unwrap();
    assert!(
        error.contains("unreachable") && error.contains(&host),
        "{error}"
    );
    assert_eq!(
        status(&server).await["status"],
        "ok",
        "the sync itself is fine"
    );
    for name in ["s000", "s001", "s002"] {
        assert_eq!(
            server.get(&format!("/api/v1/specs/{name}")).await["revision"],
            1
        );
    }
    // Back, and base1 moved meanwhile: the next check catches up.
    registry.up();
    let moved = push_base(&bases[0], None);
    wait_status(&server, "a clean check after the outage", |b| {
        b["error"].is_null() && b["last_success"].is_string()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = server.get("/api/v1/specs/s000").await;
        if s["revision"] == 2 {
            assert_eq!(s["revisions"][1]["cause"], "base-update", "{s}");
            assert!(
                s["revisions"][1]["cause_text"]
                    .as_str()
                    .unwrap()
                    .contains(&moved[..19])
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "s000 never got its base update: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Only the specs on the moved base got a revision.
    assert_eq!(server.get("/api/v1/specs/s001").await["revision"], 1);
    assert_eq!(server.get("/api/v1/specs/pinned").await["revision"], 1);
    drop(server);
    registry.down();
    for tag in bases.iter().chain([&pinned_tag]) {
        let _ = Command::new("docker").args(["rmi", tag]).output();
    }
}
