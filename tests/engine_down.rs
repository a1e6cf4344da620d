//! The Engine stops while Kiln serves: it is the only build worker, so jobs wait in the queue
//! (they do not fail), the API keeps answering, and once the Engine is back they build. This stops the
//! real `dockerd` started by `scripts/dev-env.sh`, so it lives in its own test binary (cargo
//! runs test binaries one after another) and a guard restarts the Engine whatever happens.

mod common;

use common::{GitRepo, Server, engine_available, spec};
use std::process::Command;
use std::time::{Duration, Instant};

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Restarts the Engine when dropped, so a failing assertion never leaves it down.
struct RestartEngine;

impl RestartEngine {
    fn up() {
        let root = env!("CARGO_MANIFEST_DIR");
        let status = Command::new("bash")
            .arg(format!("{root}/scripts/dev-env.sh"))
            .arg("up")
            .status()
            .expect("dev-env.sh runs");
        assert!(status.success(), "scripts/dev-env.sh up failed");
    }
}

impl Drop for RestartEngine {
    fn drop(&mut self) {
        if !engine_answers() {
            RestartEngine::up();
        }
    }
}

fn stop_engine() {
    let pid = std::fs::read_to_string("/var/lib/kiln-env/run/dockerd.pid")
        .expect("dockerd was started by scripts/dev-env.sh");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.trim())
        .status()
        .unwrap();
    assert!(status.success());
    // Wait for the process itself to exit, not only the API: a new dockerd cannot start
    // while the old one still holds its pid file and data root.
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine_answers()
        || Command::new("kill")
            .arg("-0")
            .arg(pid.trim())
            .output()
            .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The tests of this binary run in parallel; the one that stops the Engine must not overlap
/// the one that needs it.
static ENGINE_IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn engine_down_keeps_jobs_queued_and_they_build_once_it_is_back() {
    let _engine = ENGINE_IN_USE.lock().await;
    if !engine_available() {
        return;
    }
    let _guard = RestartEngine;
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write("README.md", "images\n");
    repo.commit("empty");
    let data = tmp.path().join("data");
    let config = tmp.path().join("kiln.toml");
    std::fs::write(&config, "worker_probe_interval = 1\n").unwrap();
    let server = Server::start(&[
        "--config",
        &config.display().to_string(),
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--poll-interval",
        "1",
    ])
    .await;

    stop_engine();
    repo.write("down.yaml", &spec("down", &["jq"]));
    repo.commit("a spec while the Engine is down");
    let job = server
        .wait_for("down", 1, Duration::from_secs(60), |_| true)
        .await;
    // Every worker is down: the job waits for one (a bounded look, then the Engine returns).
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let now = server.job("down", 1).await.unwrap_or_else(|| job.clone());
        assert_eq!(
            now["status"], "queued",
            "waits while no worker answers: {now}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        server.get("/healthz").await["status"],
        "ok",
        "serving continues"
    );

    RestartEngine::up();
    let job = server.wait_done("down", 1, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    server.stop();
    let _ = Command::new("docker")
        .args(["rmi", "-f", "kiln/down:latest"])
        .output();
}

/// Kiln starts while its Engine does not answer (a socket path where nothing listens yet, so
/// the shared Engine stays up): the dashboard serves and the job waits `queued`; once the
/// socket appears (a symlink to the real Engine's) the job builds without a restart.
#[tokio::test]
async fn serve_starts_before_the_engine_and_builds_once_it_answers() {
    let _engine = ENGINE_IN_USE.lock().await;
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(
        "early.yaml",
        "name: early\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\n",
    );
    repo.commit("a spec");
    let socket = tmp.path().join("engine.sock");
    let config = tmp.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!("docker_host = 'unix://{}'\n", socket.display()),
    )
    .unwrap();
    let (repo_dir, data) = (
        repo.dir.display().to_string(),
        tmp.path().join("data").display().to_string(),
    );
    let server = Server::start(&[
        "--config",
        &config.display().to_string(),
        "--repo",
        &repo_dir,
        "--data-dir",
        &data,
    ])
    .await;
    let queued = server
        .wait_for("early", 1, Duration::from_secs(30), |job| {
            job["status"] == "queued"
        })
        .await;
    // A few retry rounds of the Engine wait (0.5, 1, 2 s) pass; the job must still wait.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let job = server.job("early", 1).await.unwrap();
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["id"], queued["id"]);
    assert_eq!(server.status("/healthz").await, 200);

    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    let job = server
        .wait_for("early", 1, Duration::from_secs(120), |job| {
            job["status"] == "succeeded" || job["status"] == "failed"
        })
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let image = job["image"].as_str().unwrap_or_default().to_string();
    server.stop();
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
}
