//! Helpers shared by the integration tests: real git repositories in temp dirs, a real Kiln
//! (in-process on port 0, or a `kiln` process where a test needs one: [`server`]) and the
//! one rule for missing tools ([`tools`]).
#![allow(dead_code)]

pub mod log;
pub mod registry;
pub mod server;
pub mod tools;

pub use server::Server;
pub use tools::{Tool, have};

use std::path::{Path, PathBuf};
use std::process::Command;
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

/// Whether the Docker Engine answers (see [`tools`]: fails under CI, else SKIPPED).
pub fn engine_available() -> bool {
    have(Tool::Docker)
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

/// A base image no earlier build can have cached, however often the suites ran on this
/// Engine: an ENV-only child of `from` (no new layer, pushed to the open registry in well
/// under a second). A label would not do: BuildKit keys a `RUN` by the layers below it and
/// the command with its environment, so only the environment makes it new.
pub fn fresh_base(from: &str, name: &str) -> String {
    let base = format!("127.0.0.1:5000/kiln-test/fresh-base:{name}-{}", nonce());
    registry::push_env_child(from, &base, None);
    base
}

/// A value no other call in any test process returns: the process id and the clock in ns.
pub fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A spec whose build is slow (a compiler toolchain to download and unpack) and that no earlier
/// build can have cached: it starts `FROM` a [`fresh_base`].
pub fn slow_uncached_spec(name: &str) -> String {
    let base = fresh_base("127.0.0.1:5000/kiln/bookworm:minbase", name);
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
    while !run_step_started(&server.log(&running).await) {
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

/// A free port on 127.0.0.1, for helpers that are not Kiln (a registry, chromedriver, a
/// git daemon) and cannot be handed a bound socket. Kiln itself binds port 0 (see [`server`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a job log shows a `RUN` step under way: BuildKit's plain progress names each step
/// `#N [i/n] RUN …` when it starts.
pub fn run_step_started(log: &str) -> bool {
    log.lines()
        .any(|l| l.starts_with('#') && l.contains("] RUN "))
}

/// How many builds a job log shows starting: each names its first step
/// `#N [stage-0 1/n] FROM …`.
pub fn builds_started(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.starts_with('#')
                && l.split_once("] FROM ").is_some_and(|(head, _)| {
                    head.rsplit(['[', ' '])
                        .next()
                        .is_some_and(|step| step.starts_with("1/"))
                })
        })
        .count()
}
