//! The pool on real Engines: the two worker Engines `scripts/dev-env.sh` starts (w1, w2, each
//! its own dockerd with its own data root). A worker whose dockerd is killed with `kill -9`
//! in the middle of a build costs an attempt, not the job; with every worker down, jobs wait
//! queued and say why. These tests stop and kill the worker Engines, so they run one at a
//! time (a mutex) and a guard starts every worker again whatever happens. The main Engine is
//! not touched.

mod common;

use common::tools::in_ci;
use common::{GitRepo, Server, slow_uncached_spec, spec, wait_until_building};
use kiln::pool::placement::{self, WorkerLoad};
use std::process::Command;
use std::time::{Duration, Instant};

static WORKERS_IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dev_env(args: &[&str]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("bash")
        .arg(format!("{root}/scripts/dev-env.sh"))
        .args(args)
        .status()
        .expect("dev-env.sh runs");
    assert!(status.success(), "scripts/dev-env.sh {args:?} failed");
}

fn workers_available() -> bool {
    let up = (1..=2).all(|n| {
        std::path::Path::new(&format!("/run/kiln-w{n}/docker.sock")).exists()
            && Command::new("docker")
                .args(["-H", &format!("unix:///run/kiln-w{n}/docker.sock"), "info"])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    if !up && in_ci() {
        panic!("the worker Engines are not running: run `bash scripts/dev-env.sh up`");
    }
    up
}

/// Starts every worker Engine again when dropped.
struct RestartWorkers;

impl Drop for RestartWorkers {
    fn drop(&mut self) {
        for n in ["1", "2"] {
            let sock = format!("unix:///run/kiln-w{n}/docker.sock");
            let answers = Command::new("docker")
                .args(["-H", &sock, "info"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !answers {
                dev_env(&["worker-start", n]);
            }
        }
    }
}

/// The worker Engines for one test: the lock that runs this file's tests one at a time, and
/// a guard that starts every worker again when the test ends, however it ends. `None` when
/// the workers are not up (outside CI; under `CI=true` that fails instead).
async fn take_workers() -> Option<(tokio::sync::MutexGuard<'static, ()>, RestartWorkers)> {
    let lock = WORKERS_IN_USE.lock().await;
    if !workers_available() {
        return None;
    }
    Some((lock, RestartWorkers))
}

/// A worker of the pool tests: its name and endpoint. `w0` is the main Engine (the tests here
/// never stop it), `w1` and `w2` the worker Engines of `scripts/dev-env.sh`.
fn worker(n: u32) -> (String, String) {
    let endpoint = if n == 0 {
        "unix:///var/run/docker.sock".to_string()
    } else {
        format!("unix:///run/kiln-w{n}/docker.sock")
    };
    (format!("w{n}"), endpoint)
}

/// kiln.toml in `dir` with one `[[workers]]` table of `capacity` per worker in `workers`,
/// probed every second, and the `extra` top-level keys.
fn workers_config(dir: &std::path::Path, workers: &[u32], capacity: usize, extra: &str) -> String {
    let path = dir.join("kiln.toml");
    let mut text = format!("worker_probe_interval = 1\nretry_backoff = 1\n{extra}");
    for (name, endpoint) in workers.iter().map(|&n| worker(n)) {
        text.push_str(&format!(
            "\n[[workers]]\nname = \"{name}\"\nkind = \"docker\"\nendpoint = \"{endpoint}\"\ncapacity = {capacity}\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// kiln.toml with the two worker Engines, one build each.
fn pool_config(dir: &std::path::Path) -> String {
    workers_config(dir, &[1, 2], 1, "max_parallel_builds = 2\n")
}

/// An empty spec repository in `dir` and `kiln serve` on it with [`pool_config`].
async fn pool_server(dir: &std::path::Path) -> (GitRepo, Server) {
    let mut repo = GitRepo::init(&dir.join("repo"));
    repo.write("README.md", "images\n");
    repo.commit("empty");
    let server = serve_with(dir, &repo, &pool_config(dir)).await;
    (repo, server)
}

/// `kiln serve` on `repo` with the config file `config` and the data dir in `dir`.
async fn serve_with(dir: &std::path::Path, repo: &GitRepo, config: &str) -> Server {
    Server::start(&[
        "--config",
        config,
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--poll-interval",
        "1",
    ])
    .await
}

async fn worker_health(server: &Server, name: &str) -> bool {
    let workers = server.get("/api/v1/workers").await;
    workers
        .as_array()
        .expect("a list")
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("{name} listed: {workers}"))["healthy"]
        .as_bool()
        .expect("healthy is a bool")
}

async fn wait_health(server: &Server, name: &str, healthy: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker_health(server, name).await != healthy {
        assert!(
            Instant::now() < deadline,
            "{name} never got healthy={healthy}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_killed_worker_costs_an_attempt_and_the_job_builds_on_the_other() {
    let Some(_workers) = take_workers().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut repo, server) = pool_server(tmp.path()).await;
    wait_health(&server, "w1", true).await;
    wait_health(&server, "w2", true).await;

    repo.write("failover.yaml", &slow_uncached_spec("failover"));
    repo.commit("a slow spec");
    wait_until_building(&server, "failover").await;
    let job = server.job("failover", 1).await.expect("the job");
    let first = job["worker"]
        .as_str()
        .expect("placed on a worker")
        .to_string();
    let other = if first == "w1" { "w2" } else { "w1" };
    let before = server.log(&job).await;
    dev_env(&["worker-kill", &first[1..]]);

    let done = server
        .wait_done("failover", 1, Duration::from_secs(600))
        .await;
    let log = server.log(&done).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{log}");
    assert_eq!(done["worker"], other, "the retry went to the other worker");
    assert_eq!(done["attempts"], 2, "{done}");
    assert!(
        log.contains(&format!("worker {first} lost: ")),
        "the attempt's failure names the lost worker:\n{log}"
    );
    assert!(
        log.contains("attempt 2/3: spec failover r1")
            && log.contains(&format!("on worker {other}")),
        "{log}"
    );
    // No stored line is lost: what the first attempt printed is still the log's beginning.
    assert!(
        log.starts_with(before.trim_end()),
        "the first attempt's lines are kept"
    );
    assert!(
        !worker_health(&server, &first).await,
        "the killed worker is shown unhealthy"
    );
    let status = server.get("/api/v1/status").await;
    assert_eq!(status["workers"]["healthy"], 1, "{status}");

    dev_env(&["worker-start", &first[1..]]);
    wait_health(&server, &first, true).await;
    server.stop();
}

#[tokio::test]
async fn with_every_worker_down_jobs_wait_queued_with_the_reason_then_build() {
    let Some(_workers) = take_workers().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut repo, server) = pool_server(tmp.path()).await;
    dev_env(&["worker-stop", "1"]);
    dev_env(&["worker-stop", "2"]);
    wait_health(&server, "w1", false).await;
    wait_health(&server, "w2", false).await;

    repo.write("waits.yaml", &spec("waits", &["jq"]));
    repo.commit("a spec while every worker is down");
    server
        .wait_for("waits", 1, Duration::from_secs(60), |_| true)
        .await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let job = server.job("waits", 1).await.expect("the job");
        assert_eq!(
            job["status"], "queued",
            "waits while no worker answers: {job}"
        );
        assert!(job["worker"].is_null(), "not placed: {job}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = server.get("/api/v1/status").await;
    let reason = status["workers"]["waiting_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("a reason: {status}"));
    assert!(
        reason.contains("w1: ") && reason.contains("w2: "),
        "{reason}"
    );
    let page = server.text("/").await;
    assert!(page.contains("Builds wait:"), "the dashboard says why");
    let workers_page = server.text("/workers").await;
    assert!(workers_page.contains("unhealthy"), "{workers_page}");

    dev_env(&["worker-start", "2"]);
    let job = server.wait_done("waits", 1, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["worker"], "w2", "{job}");
    let metrics = server.text("/metrics").await;
    assert!(
        metrics.contains("kiln_worker_up{worker=\"w2\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_worker_builds_total{worker=\"w2\"} 1"),
        "{metrics}"
    );
    server.stop();
}

/// Where placement puts `spec` among the healthy, idle workers `names`.
fn first_choice(spec: &str, names: &[String]) -> String {
    let loads: Vec<WorkerLoad<'_>> = names
        .iter()
        .map(|name| WorkerLoad {
            name,
            healthy: true,
            capacity: 9,
            running: 0,
        })
        .collect();
    names[placement::rank(spec, &loads)[0]].clone()
}

/// A spec without packages (it builds in a second): `FROM`, Kiln's labels, and `tests`
/// commands, which are part of its digest, so each new list is a new revision.
fn bare_spec(name: &str, tests: &[&str]) -> String {
    let mut text = format!("name: {name}\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\n");
    if !tests.is_empty() {
        text.push_str("tests:\n");
        for t in tests {
            text.push_str(&format!("  - {t}\n"));
        }
    }
    text
}

/// Waits for r`revision` of every spec and returns each one's worker, checking it succeeded.
async fn workers_of(server: &Server, specs: &[String], revision: u64) -> Vec<String> {
    let mut out = Vec::new();
    for spec in specs {
        let job = server
            .wait_done(spec, revision, Duration::from_secs(300))
            .await;
        assert_eq!(
            job["status"],
            "succeeded",
            "{job}\n{}",
            server.log(&job).await
        );
        out.push(job["worker"].as_str().expect("a worker").to_string());
    }
    out
}

#[tokio::test]
async fn nine_specs_on_three_workers_stick_and_removing_one_moves_only_its_specs() {
    let Some(_workers) = take_workers().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let specs: Vec<String> = (1..=9).map(|i| format!("sticky-{i}")).collect();
    let three: Vec<String> = [0, 1, 2].map(|n| worker(n).0).to_vec();
    let expected: Vec<String> = specs.iter().map(|s| first_choice(s, &three)).collect();
    for w in &three {
        assert!(
            expected.contains(w),
            "the spec names must give every worker a spec: {expected:?}"
        );
    }
    // Capacity 9 per worker and at most 3 builds at once: a worker is never full, so every
    // build goes to its spec's first choice.
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    for spec in &specs {
        repo.write(&format!("{spec}.yaml"), &bare_spec(spec, &[]));
    }
    repo.commit("nine specs");
    let config = workers_config(tmp.path(), &[0, 1, 2], 9, "max_parallel_builds = 3\n");
    let server = serve_with(tmp.path(), &repo, &config).await;
    assert_eq!(
        workers_of(&server, &specs, 1).await,
        expected,
        "r1 placement"
    );

    // A rebuild of every spec (a new revision each) goes where its first build went.
    for spec in &specs {
        repo.write(&format!("{spec}.yaml"), &bare_spec(spec, &["true"]));
    }
    repo.commit("a test for each");
    assert_eq!(workers_of(&server, &specs, 2).await, expected, "r2 stays");
    server.stop();

    // Without w2, only w2's specs move: each to its own next choice, the others stay.
    let two: Vec<String> = three[..2].to_vec();
    let config = workers_config(tmp.path(), &[0, 1], 9, "max_parallel_builds = 3\n");
    let server = serve_with(tmp.path(), &repo, &config).await;
    for spec in &specs {
        repo.write(
            &format!("{spec}.yaml"),
            &bare_spec(spec, &["true", "test -d /"]),
        );
    }
    repo.commit("another test for each");
    let after = workers_of(&server, &specs, 3).await;
    for (i, spec) in specs.iter().enumerate() {
        if expected[i] == "w2" {
            assert_eq!(after[i], first_choice(spec, &two), "{spec} moved off w2");
        } else {
            assert_eq!(after[i], expected[i], "{spec} stayed on its worker");
        }
    }
    server.stop();
}

#[tokio::test]
async fn a_cold_worker_rebuilds_a_known_spec_from_the_registry_cache() {
    let Some(_workers) = take_workers().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A base of this run's own: no Engine has its apt or pip step cached from earlier runs.
    let base = common::fresh_base("127.0.0.1:5000/kiln/bookworm-python:minbase", "cold-worker");
    let spec = |tests: &str| {
        format!(
            "name: coldcache\nbaseImage: {base}\npackages:\n  apt: [jq]\n  pip: [six==1.16.0]\n{tests}"
        )
    };
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write("coldcache.yaml", &spec(""));
    repo.commit("a spec");
    let extra = "registry = '127.0.0.1:5000/kiln-test-cold'\nca_bundle = '/etc/ssl/certs/ca-certificates.crt'\nmax_parallel_builds = 1\n";
    let server = serve_with(
        tmp.path(),
        &repo,
        &workers_config(tmp.path(), &[1], 1, extra),
    )
    .await;
    let first = server
        .wait_done("coldcache", 1, Duration::from_secs(600))
        .await;
    let first_log = server.log(&first).await;
    assert_eq!(first["status"], "succeeded", "{first}\n{first_log}");
    assert_eq!(first["worker"], "w1");
    server.stop();

    // w2 starts from an empty data root: no image, no layer, no cache mount.
    dev_env(&["worker-reset", "2"]);
    let server = serve_with(
        tmp.path(),
        &repo,
        &workers_config(tmp.path(), &[2], 1, extra),
    )
    .await;
    wait_health(&server, "w2", true).await;
    repo.write(
        "coldcache.yaml",
        &spec("tests:\n  - python3 -c 'import six'\n"),
    );
    repo.commit("a test: new labels, same packages");
    let second = server
        .wait_done("coldcache", 2, Duration::from_secs(600))
        .await;
    let log = server.log(&second).await;
    assert_eq!(second["status"], "succeeded", "{second}\n{log}");
    assert_eq!(second["worker"], "w2", "{second}");
    let step_of = |what: &str| {
        log.lines()
            .find(|l| l.starts_with('#') && l.contains("] RUN ") && l.contains(what))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no RUN step with {what}:\n{log}"))
            .to_string()
    };
    for what in ["apt-get", "pip"] {
        let step = step_of(what);
        assert!(
            log.lines().any(|l| l == format!("{step} CACHED")),
            "the {what} step came from the registry's cache:\n{log}"
        );
    }
    assert!(
        log.contains("cache-from") || log.contains("importing cache"),
        "the log says where the cache came from:\n{log}"
    );
    server.stop();
}

#[tokio::test]
async fn kiln_sync_builds_on_the_pool_and_fails_at_once_when_no_worker_answers() {
    let Some(_workers) = take_workers().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write("synced.yaml", &bare_spec("synced", &[]));
    repo.commit("a spec");
    let data = tmp.path().join("data");
    let (code, out) = common::sync(&pool_config(tmp.path()), &repo.dir, &data);
    assert_eq!(code, 0, "{out}");
    let server = Server::observe(&repo.dir, &data).await;
    let job = server.job("synced", 1).await.expect("the job");
    assert_eq!(job["status"], "succeeded", "{job}");
    let pool: Vec<String> = [1, 2].map(|n| worker(n).0).to_vec();
    assert_eq!(
        job["worker"],
        first_choice("synced", &pool).as_str(),
        "{job}"
    );
    drop(server);

    // A pool where nothing answers: the pass says so at once instead of queueing forever.
    let dead = tmp.path().join("dead");
    std::fs::create_dir_all(&dead).unwrap();
    let config = dead.join("kiln.toml");
    std::fs::write(
        &config,
        "[[workers]]\nname = \"gone\"\nkind = \"docker\"\nendpoint = \"unix:///run/kiln-no-such-worker.sock\"\n",
    )
    .unwrap();
    repo.write("synced.yaml", &bare_spec("synced", &["true"]));
    repo.commit("a change");
    let (code, out) = common::sync(&config.display().to_string(), &repo.dir, &data);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("no build worker answers") && out.contains("gone: "),
        "{out}"
    );
}
