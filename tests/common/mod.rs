//! Helpers shared by the integration tests: real git repositories in temp dirs and a real
//! `kiln` process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A git work tree with a scripted author and clock, on branch `main`.
pub struct GitRepo {
    pub dir: PathBuf,
    clock: i64,
}

impl GitRepo {
    pub fn init(dir: &Path) -> GitRepo {
        std::fs::create_dir_all(dir).unwrap();
        let repo = GitRepo {
            dir: dir.to_path_buf(),
            clock: 1_760_000_000,
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn git(&self, args: &[&str]) -> String {
        let date = format!("@{} +0000", self.clock);
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_AUTHOR_NAME", "Ada Admin")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada Admin")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn write(&self, path: &str, text: &str) {
        let full = self.dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }

    pub fn remove(&self, path: &str) {
        self.git(&["rm", "-q", path]);
    }

    /// Stage everything and commit; returns the new commit's SHA.
    pub fn commit(&mut self, message: &str) -> String {
        self.clock += 60;
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn tick(&mut self) {
        self.clock += 60;
    }
}

/// Whether the Docker Engine answers. With `CI=true` a missing Engine fails the test; outside
/// CI the test is skipped with a loud message.
pub fn engine_available() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but no Docker Engine answers: run scripts/dev-env.sh"
        );
        eprintln!("SKIPPED: no Docker Engine (run scripts/dev-env.sh up)");
    }
    ok
}

/// A tool a test needs is missing: with `CI=true` that fails the test (the CI script installs
/// the tool), elsewhere the test is skipped with a loud message.
pub fn missing_tool(what: &str, install: &str) {
    assert!(
        std::env::var("CI").map(|v| v != "true").unwrap_or(true),
        "CI=true but {what} is missing: {install}"
    );
    eprintln!("\n*** SKIPPED: {what} is missing ({install}) ***\n");
}

/// A spec file with the given apt packages on the local base image.
pub fn spec(name: &str, apt: &[&str]) -> String {
    spec_on(name, "127.0.0.1:5000/kiln/bookworm:minbase", apt)
}

/// A spec file with the given apt packages on `base`.
pub fn spec_on(name: &str, base: &str, apt: &[&str]) -> String {
    let list: String = apt.iter().map(|p| format!("    - {p}\n")).collect();
    format!("name: {name}\nbaseImage: {base}\npackages:\n  apt:\n{list}")
}

/// A spec whose build is slow (a compiler toolchain to download and unpack) and that no earlier
/// build can have cached, however often the suites ran on this Engine: it starts `FROM` a base
/// of its own, a LABEL-only child of the local bookworm image (no new layer, pushed to the open
/// registry in well under a second), so the classic builder's cache, keyed by parent image and
/// instruction, cannot match its `RUN`.
pub fn slow_uncached_spec(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = format!("127.0.0.1:5000/kiln-test/fresh-base:{name}-{nanos}");
    let dockerfile =
        format!("FROM 127.0.0.1:5000/kiln/bookworm:minbase\nLABEL io.kiln.test.nonce=\"{base}\"\n");
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", &base, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker build runs");
    std::io::Write::write_all(&mut build.stdin.take().unwrap(), dockerfile.as_bytes()).unwrap();
    assert!(build.wait().unwrap().success(), "docker build of {base}");
    let pushed = Command::new("docker")
        .args(["push", "-q", &base])
        .output()
        .unwrap();
    assert!(pushed.status.success(), "docker push {base}: {pushed:?}");
    spec_on(name, &base, &["gcc", "g++", "make", "perl"])
}

/// Wait until r1 of `spec` runs and its build is really under way in the Engine.
pub async fn wait_until_building(server: &Server, spec: &str) {
    let running = server
        .wait_for(spec, 1, Duration::from_secs(60), |j| {
            j["status"] == "running"
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.log(&running).await.contains("Step 3/") {
        assert!(Instant::now() < deadline, "the build never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// Run `kiln ARGS` to completion; returns (exit code, stdout, stderr).
pub fn kiln(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kiln_bin())
        .args(args)
        .env("KILN_LOG", "warn")
        .output()
        .expect("kiln runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One `kiln sync` pass (builds on) with a config file; returns (exit code, stdout+stderr).
pub fn sync(config: &str, repo: &Path, data: &Path) -> (i32, String) {
    let (code, out, err) = kiln(&[
        "sync",
        "--config",
        config,
        "--repo",
        &repo.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ]);
    (code, format!("{out}{err}"))
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `kiln serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub async fn start(args: &[&str]) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("kiln-serve-{port}.log"));
        let child = Command::new(kiln_bin())
            .arg("serve")
            .args(args)
            .args(["--listen", &listen])
            .env("KILN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("kiln serve starts");
        let server = Server {
            child,
            base: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = reqwest::get(format!("{}/healthz", server.base)).await
                && resp.status().is_success()
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "kiln serve did not answer; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kiln serve --no-build` on an existing data dir: looks at what a run left behind.
    pub async fn observe(repo: &Path, data: &Path) -> Server {
        let (repo, data) = (repo.display().to_string(), data.display().to_string());
        Server::start(&[
            "--no-build",
            "--repo",
            &repo,
            "--data-dir",
            &data,
            "--poll-interval",
            "3600",
        ])
        .await
    }

    /// The jobs of a spec, newest first; empty while the spec is unknown.
    pub async fn jobs(&self, spec: &str) -> Vec<serde_json::Value> {
        match reqwest::get(format!("{}/api/v1/specs/{spec}/jobs", self.base)).await {
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The job of one revision of a spec.
    pub async fn job(&self, spec: &str, revision: u64) -> Option<serde_json::Value> {
        self.jobs(spec)
            .await
            .into_iter()
            .find(|j| j["revision"] == revision)
    }

    /// Wait (bounded) until the job of `revision` satisfies `ok`.
    pub async fn wait_for(
        &self,
        spec: &str,
        revision: u64,
        limit: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(job) = self.job(spec, revision).await
                && ok(&job)
            {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "r{revision} of {spec} never got there: {:?}",
                self.jobs(spec).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A job's whole log as text.
    pub async fn log(&self, job: &serde_json::Value) -> String {
        reqwest::get(format!("{}/api/v1/jobs/{}/log", self.base, job["id"]))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let resp = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn status(&self, path: &str) -> u16 {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
