//! The pool on real Engines: the two worker Engines `scripts/dev-env.sh` starts (w1, w2, each
//! its own dockerd with its own data root). A worker whose dockerd is killed with `kill -9`
//! in the middle of a build costs an attempt, not the job; with every worker down, jobs wait
//! queued and say why. These tests stop and kill the worker Engines, so they run one at a
//! time (a mutex) and a guard starts every worker again whatever happens. The main Engine is
//! not touched.

mod common;

use common::tools::in_ci;
use common::{GitRepo, Server, slow_uncached_spec, spec, wait_until_building};
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

/// kiln.toml with the two worker Engines (unix sockets), probed every second.
fn pool_config(dir: &std::path::Path) -> String {
    let path = dir.join("kiln.toml");
    let mut text =
        String::from("worker_probe_interval = 1\nretry_backoff = 1\nmax_parallel_builds = 2\n");
    for n in 1..=2 {
        text.push_str(&format!(
            "\n[[workers]]\nname = \"w{n}\"\nkind = \"docker\"\nendpoint = \"unix:///run/kiln-w{n}/docker.sock\"\ncapacity = 1\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// An empty spec repository in `dir` and `kiln serve` on it with [`pool_config`].
async fn pool_server(dir: &std::path::Path) -> (GitRepo, Server) {
    let mut repo = GitRepo::init(&dir.join("repo"));
    repo.write("README.md", "images\n");
    repo.commit("empty");
    let server = Server::start(&[
        "--config",
        &pool_config(dir),
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--poll-interval",
        "1",
    ])
    .await;
    (repo, server)
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
    let _one = WORKERS_IN_USE.lock().await;
    if !workers_available() {
        return;
    }
    let _guard = RestartWorkers;
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
    let _one = WORKERS_IN_USE.lock().await;
    if !workers_available() {
        return;
    }
    let _guard = RestartWorkers;
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
    let page = reqwest::get(format!("{}/", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Builds wait:"), "the dashboard says why");
    let workers_page = reqwest::get(format!("{}/workers", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(workers_page.contains("unhealthy"), "{workers_page}");

    dev_env(&["worker-start", "2"]);
    let job = server.wait_done("waits", 1, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["worker"], "w2", "{job}");
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
