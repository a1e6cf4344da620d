//! A running Kiln for tests, reached over HTTP like any client would.
//!
//! * [`Server::in_process`]: `kiln::serve::serve` on a listener this helper binds to
//!   127.0.0.1:0, on a runtime and thread of its own (so it works the same under any test
//!   runtime flavor); dropping the server cancels its shutdown token and waits for it.
//! * [`Server::start`]: a `kiln serve` child process, for tests that signal or kill the
//!   process. It is told `--listen 127.0.0.1:0` and the test reads the address Kiln bound
//!   from the line it prints on stdout — no port is picked first and released (a race).

use clap::Parser;
use kiln::config::{Config, ConfigArgs};
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What `kiln serve` prints once it listens.
const READY: &str = "Kiln dashboard and API: http://";

/// The `kiln serve` arguments, parsed exactly as the binary parses them.
#[derive(Parser)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long)]
    listen: Option<String>,
}

enum Running {
    Child(Child),
    InProcess {
        shutdown: CancellationToken,
        thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    },
}

/// A running Kiln: stopped (in-process) or killed (child) on drop.
pub struct Server {
    pub base: String,
    running: Running,
    /// The child's stderr (its log), for child servers.
    log: Option<std::path::PathBuf>,
}

impl Server {
    /// `kiln serve ARGS` in this process, on 127.0.0.1:0.
    pub async fn in_process(args: &[&str]) -> Server {
        let parsed =
            ServeArgs::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("serve arguments {args:?}: {e}"));
        let config = Config::resolve(&parsed.config, Some("127.0.0.1:0".into()))
            .unwrap_or_else(|e| panic!("config from {args:?}: {e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                kiln::serve::serve(listener, config, token)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let server = Server {
            base: format!("http://{addr}"),
            running: Running::InProcess {
                shutdown,
                thread: Some(thread),
            },
            log: None,
        };
        server.wait_healthy(String::new).await;
        server
    }

    /// `kiln serve ARGS --listen 127.0.0.1:0` as a child process.
    pub async fn start(args: &[&str]) -> Server {
        let log = tempfile::Builder::new()
            .prefix("kiln-serve-")
            .suffix(".log")
            .tempfile()
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let mut child = Command::new(super::kiln_bin())
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("KILN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("kiln serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address line, then keeps draining stdout so the child never blocks on it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix(READY)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim_end_matches('/').to_string());
                }
            }
        });
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        // The sender is dropped without a value when the child exits first.
        let addr = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("kiln serve exited before listening; log: {}", read_log()));
        let server = Server {
            base: format!("http://{addr}"),
            running: Running::Child(child),
            log: Some(log.clone()),
        };
        server.wait_healthy(read_log).await;
        server
    }

    /// `kiln serve --no-build` on an existing data dir: looks at what a run left behind.
    pub async fn observe(repo: &Path, data: &Path) -> Server {
        let (repo, data) = (repo.display().to_string(), data.display().to_string());
        Server::in_process(&[
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

    async fn wait_healthy(&self, log: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = reqwest::get(format!("{}/healthz", self.base)).await
                && resp.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kiln serve did not answer; log: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What a child server logged so far (empty for an in-process server).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The child process (panics for an in-process server).
    pub fn child(&mut self) -> &mut Child {
        match &mut self.running {
            Running::Child(child) => child,
            Running::InProcess { .. } => panic!("an in-process Kiln has no child process"),
        }
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

    /// Wait (bounded) until the job of `revision` has succeeded or failed.
    pub async fn wait_done(&self, spec: &str, revision: u64, limit: Duration) -> serde_json::Value {
        self.wait_for(spec, revision, limit, |j| {
            ["succeeded", "failed"].contains(&j["status"].as_str().unwrap_or(""))
        })
        .await
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

    /// The body of `GET path` as text, whatever the status (a dashboard page, `/metrics`).
    pub async fn text(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn status(&self, path: &str) -> u16 {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A graceful stop: SIGTERM and wait (child), or cancel and wait (in-process).
    pub fn stop(mut self) {
        match &mut self.running {
            Running::Child(child) => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let _ = child.wait();
            }
            Running::InProcess { .. } => self.stop_in_process(),
        }
    }

    fn stop_in_process(&mut self) {
        if let Running::InProcess { shutdown, thread } = &mut self.running {
            shutdown.cancel();
            if let Some(thread) = thread.take() {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if !std::thread::panicking() => panic!("kiln serve failed: {e}"),
                    Ok(Err(_)) => {}
                    Err(_) if !std::thread::panicking() => panic!("kiln serve panicked"),
                    Err(_) => {}
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::InProcess { .. } => self.stop_in_process(),
        }
    }
}
