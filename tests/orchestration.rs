//! Build orchestration against the real Engine and registries (docs/design.md §3–4): newest commit
//! wins, nothing is built or pushed twice, nothing is lost or left `running` when Kiln is
//! killed, transient registry failures are retried and then reported.

mod common;

use common::{
    GitRepo, Server, builds_started, engine_available, free_port, run_step_started,
    slow_uncached_spec, spec, sync, wait_until_building,
};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path, registry: &str, extra: &str) -> String {
    let path = dir.join("kiln.toml");
    std::fs::write(
        &path,
        format!("registry = '{registry}'\nretry_backoff = 1\n{extra}"),
    )
    .unwrap();
    path.display().to_string()
}

async fn manifest_digest(registry: &str, name: &str, tag: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .head(format!("http://{registry}/v2/{name}/manifests/{tag}"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[tokio::test]
async fn three_commits_at_once_build_once_and_a_revert_is_reused() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("orch-three");
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    for apt in [&["jq"][..], &["jq", "less"], &["jq", "file"]] {
        repo.write(&format!("{name}.yaml"), &spec(&name, apt));
        repo.commit("edit");
    }
    let cfg = config(tmp.path(), "127.0.0.1:5000", "");
    let data = tmp.path().join("data");
    let (code, out) = sync(&cfg, &repo.dir, &data);
    assert_eq!(code, 0, "{out}");

    // Revert to r1's content: a re-use, not a build.
    repo.write(&format!("{name}.yaml"), &spec(&name, &["jq"]));
    repo.commit("revert to jq only");
    let (code, out) = sync(&cfg, &repo.dir, &data);
    assert_eq!(code, 0, "{out}");

    let server = Server::observe(&repo.dir, &data).await;
    let all = server.jobs(&name).await;
    let status = |rev: u64| {
        all.iter()
            .find(|j| j["revision"] == rev)
            .map(|j| j["status"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(status(1).as_deref(), Some("cancelled"));
    assert_eq!(status(2).as_deref(), Some("cancelled"));
    assert_eq!(status(3).as_deref(), Some("succeeded"));
    let r3 = server.job(&name, 3).await.unwrap();
    let r4 = server.job(&name, 4).await.unwrap();
    // r4 has r1's content; r1 was never built (cancelled), so r4 is a build. A fifth commit
    // reverting to r3's content must be a re-use of r3.
    assert_eq!(r4["status"], "succeeded", "{}", server.log(&r4).await);
    server.stop();

    repo.write(&format!("{name}.yaml"), &spec(&name, &["jq", "file"]));
    let r5_sha = repo.commit("back to jq + file");
    let (code, out) = sync(&cfg, &repo.dir, &data);
    assert_eq!(code, 0, "{out}");
    let server = Server::observe(&repo.dir, &data).await;
    let r5 = server.job(&name, 5).await.unwrap();
    let log = server.log(&r5).await;
    assert_eq!(r5["status"], "reused", "{log}");
    assert_eq!(r5["reused_from"], r3["id"]);
    assert!(log.contains("re-using"), "{log}");
    assert_eq!(builds_started(&log), 0, "a re-use does not build: {log}");
    let r3_digest = manifest_digest(
        "127.0.0.1:5000",
        &name,
        &format!("r3-{}", &r3["commit"].as_str().unwrap()[..7]),
    )
    .await;
    let r5_digest = manifest_digest("127.0.0.1:5000", &name, &format!("r5-{}", &r5_sha[..7])).await;
    assert!(r3_digest.is_some());
    assert_eq!(
        r3_digest, r5_digest,
        "the re-used tag points at the same image"
    );
    assert_eq!(r5["digest"].as_str(), r5_digest.as_deref());
    let packages = server
        .get(&format!("/api/v1/jobs/{}/packages", r3["id"]))
        .await;
    assert!(
        packages["apt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "jq"),
        "{packages}"
    );
    assert!(packages["pip"].as_array().unwrap().is_empty());
    server.stop();
}

#[tokio::test]
async fn a_commit_during_a_build_stops_it_and_builds_the_new_one() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("orch-stop");
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    // A slow first revision: a compiler toolchain takes a while to download and unpack.
    repo.write(&format!("{name}.yaml"), &slow_uncached_spec(&name));
    let first = repo.commit("slow build");
    let cfg = config(tmp.path(), "127.0.0.1:5000", "");
    let data = tmp.path().join("data");
    let server = Server::start(&[
        "--config",
        &cfg,
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--poll-interval",
        "1",
    ])
    .await;
    wait_until_building(&server, &name).await;
    repo.write(&format!("{name}.yaml"), &spec(&name, &["jq"]));
    repo.commit("never mind, jq is enough");
    let seen = server
        .wait_for(&name, 2, Duration::from_secs(30), |_| true)
        .await;
    let noticed = Instant::now();
    let stopped = server
        .wait_for(&name, 1, Duration::from_secs(30), |j| {
            j["status"] == "cancelled"
        })
        .await;
    eprintln!(
        "running build stopped {:?} after the new revision appeared",
        noticed.elapsed()
    );
    assert_eq!(stopped["error"], "superseded by r2");
    // The store says `cancelled` at once; the worker's last line follows when its build ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = server.log(&stopped).await;
    while !log.contains("kiln: cancelled: superseded by r2") {
        assert!(
            Instant::now() < deadline,
            "the worker never logged the cancellation: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = server.log(&stopped).await;
    }
    assert!(run_step_started(&log), "the partial log is kept");
    let r2 = server
        .wait_for(&name, 2, Duration::from_secs(180), |j| {
            j["status"] == "succeeded" || j["status"] == "failed"
        })
        .await;
    assert_eq!(r2["status"], "succeeded", "{}", server.log(&r2).await);
    assert_eq!(
        manifest_digest("127.0.0.1:5000", &name, &format!("r1-{}", &first[..7])).await,
        None,
        "the stopped build pushed nothing"
    );
    assert!(seen["id"].as_u64() > stopped["id"].as_u64());
    server.stop();
}

/// A private registry this test may stop and start (the shared ones stay up).
struct Registry {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Registry {
    fn start(dir: &Path, port: u16) -> Registry {
        let mut registry = Registry {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        let config = self.dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{}\n",
                self.dir.join("storage").display(),
                self.port
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's docker-registry is installed by scripts/dev-env.sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_registry_that_is_down_is_retried_then_reported_and_recovery_pushes() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let registry_addr = format!("127.0.0.1:{port}");
    let mut registry = Registry::start(tmp.path(), port);
    registry.stop();

    let name = unique("orch-push");
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(&format!("{name}.yaml"), &spec(&name, &["jq"]));
    repo.commit("a spec while the registry is down");
    let cfg = config(tmp.path(), &registry_addr, "max_attempts = 3\n");
    let data = tmp.path().join("data");
    let (code, out) = sync(&cfg, &repo.dir, &data);
    assert_eq!(code, 1, "{out}");

    registry.spawn();
    repo.write(&format!("{name}.yaml"), &spec(&name, &["jq", "less"]));
    let second = repo.commit("registry is back");
    let (code, out) = sync(&cfg, &repo.dir, &data);
    assert_eq!(code, 0, "{out}");

    let server = Server::observe(&repo.dir, &data).await;
    let failed = server.job(&name, 1).await.unwrap();
    let log = server.log(&failed).await;
    assert_eq!(failed["status"], "failed", "{log}");
    assert_eq!(failed["attempts"], 3);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{failed}"
    );
    assert_eq!(log.matches("; retrying in").count(), 2, "{log}");
    assert!(log.contains("attempt 3/3"), "{log}");
    assert_eq!(
        builds_started(&log),
        1,
        "the image is built once, only the push is retried: {log}"
    );
    let ok = server.job(&name, 2).await.unwrap();
    assert_eq!(ok["status"], "succeeded", "{}", server.log(&ok).await);
    assert!(
        manifest_digest(&registry_addr, &name, &format!("r2-{}", &second[..7]))
            .await
            .is_some()
    );
    server.stop();
}

#[tokio::test]
async fn kill_nine_during_builds_loses_nothing_and_pushes_nothing_twice() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let names = [unique("orch-kill-a"), unique("orch-kill-b")];
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(
        &format!("{}.yaml", names[0]),
        &spec(&names[0], &["jq", "file", "less", "procps"]),
    );
    repo.write(
        &format!("{}.yaml", names[1]),
        &spec(&names[1], &["curl", "ca-certificates", "xz-utils"]),
    );
    repo.commit("two specs");
    let cfg = config(tmp.path(), "127.0.0.1:5000", "");
    let data = tmp.path().join("data");
    let args = [
        "--config",
        &cfg,
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--poll-interval",
        "1",
    ];
    let args: Vec<&str> = args.to_vec();

    // Deterministic "random" moments: a tiny LCG seeded by the process id.
    let mut seed = u64::from(std::process::id()) | 1;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % 4000
    };
    let mut seen_logs: Vec<(u64, String)> = Vec::new();
    for round in 0..5 {
        let mut server = Server::start(&args).await;
        tokio::time::sleep(Duration::from_millis(300 + next())).await;
        // What the store acknowledged before the kill.
        for name in &names {
            for job in server.jobs(name).await {
                seen_logs.push((job["id"].as_u64().unwrap(), server.log(&job).await));
            }
        }
        let _ = server.child().kill(); // SIGKILL: no shutdown, no flush beyond what was acknowledged
        let _ = server.child().wait();
        eprintln!("round {round}: killed");
    }

    // A last start runs everything to the end.
    let server = Server::start(&args).await;
    for name in &names {
        let done = server
            .wait_for(name, 1, Duration::from_secs(300), |j| {
                j["status"] != "running" && j["status"] != "queued"
            })
            .await;
        assert_eq!(done["status"], "succeeded", "{}", server.log(&done).await);
    }
    for name in &names {
        for job in server.jobs(name).await {
            let log = server.log(&job).await;
            assert_ne!(job["status"], "running");
            // Every line stored before a kill is still there, in order, as a prefix.
            for (id, before) in seen_logs
                .iter()
                .filter(|(id, _)| Some(*id) == job["id"].as_u64())
            {
                assert!(log.starts_with(before.as_str()), "job {id} lost log lines");
            }
            // A tag is pushed to completion at most once.
            for tag in [format!("{name}:r1-"), format!("{name}:latest")] {
                let completed = log
                    .lines()
                    .filter(|l| l.starts_with("kiln: pushed ") && l.contains(&tag))
                    .count();
                assert!(completed <= 1, "{tag} pushed {completed} times:\n{log}");
            }
        }
    }
    server.stop();
}

#[tokio::test]
async fn a_build_over_its_timeout_fails_and_stops() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("orch-timeout");
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(&format!("{name}.yaml"), &slow_uncached_spec(&name));
    repo.commit("slow");
    let path = tmp.path().join("kiln.toml");
    std::fs::write(&path, "build_timeout = 3\nmax_attempts = 1\n").unwrap();
    let data = tmp.path().join("data");
    let (code, out) = sync(&path.display().to_string(), &repo.dir, &data);
    assert_eq!(code, 1, "{out}");
    let server = Server::observe(&repo.dir, &data).await;
    let job = server.job(&name, 1).await.unwrap();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"], "timed out after 3 s");
    server.stop();
    let (_, images) = {
        let out = Command::new("docker")
            .args(["images", "-q", &format!("kiln/{name}")])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(
        images.trim().is_empty(),
        "a timed-out build leaves no image"
    );
}

#[tokio::test]
async fn sigterm_lets_builds_finish_within_the_grace_then_requeues_them() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("orch-term");
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(&format!("{name}.yaml"), &slow_uncached_spec(&name));
    repo.commit("slow");
    let cfg = config(tmp.path(), "127.0.0.1:5000", "shutdown_grace = 1\n");
    let data = tmp.path().join("data");
    let args = [
        "--config",
        &cfg,
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--poll-interval",
        "1",
    ];
    let mut server = Server::start(&args).await;
    wait_until_building(&server, &name).await;
    let asked = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(server.child().id().to_string())
        .status()
        .unwrap();
    let status = loop {
        if let Some(status) = server.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "kiln serve did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "exit status {status:?}");
    drop(server);

    // The interrupted job went back to the queue, with a log line saying why …
    let observer = Server::observe(&repo.dir, &data).await;
    let job = observer.job(&name, 1).await.unwrap();
    assert_eq!(job["status"], "queued", "{job}");
    assert!(
        observer
            .log(&job)
            .await
            .contains("stopped by a shutdown of Kiln; re-queued")
    );
    observer.stop();
    // … and the next start builds it.
    let server = Server::start(&args).await;
    let done = server
        .wait_for(&name, 1, Duration::from_secs(300), |j| {
            j["status"] == "succeeded" || j["status"] == "failed"
        })
        .await;
    assert_eq!(done["status"], "succeeded", "{}", server.log(&done).await);
    assert_eq!(done["attempts"], 2);
    server.stop();
}
