//! Whether a worker answers: a probe of its endpoint on an interval, giving healthy, or
//! unhealthy with the error, each with the time it has been so.
//!
//! Placement gives no build to an unhealthy worker, and the API and dashboard show why it is
//! unhealthy. `since` changes only when the state does (a worker failing with a new error
//! text stays unhealthy since the first failure), so "down since 10:42" stays true while the
//! message follows the latest probe. Transitions are logged once, not every probe.
//!
//! A `docker` worker is pinged through the same endpoint and TLS resolution as Kiln's Engine
//! (`docker_host`, `docker_tls_verify`, `docker_cert_path`, with the Docker CLI's environment
//! as fallback): [`ping_engine`] is the one place where the pool reaches into the Docker
//! client. Every probe has a timeout of its own, shorter than bollard's 120 s
//! request timeout, so a worker that hangs is seen as unhealthy within one interval.

use crate::pool::worker_config::{WorkerConfig, WorkerKind};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default time between probes of one worker.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Default time a probe may take before the worker counts as unhealthy.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker's health as the last probe found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet: gets no build (a worker must answer once first).
    Unknown,
    Healthy {
        since: SystemTime,
    },
    Unhealthy {
        /// The last probe's error, e.g. the Engine's endpoint and "connection refused".
        error: String,
        since: SystemTime,
    },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy { .. })
    }

    /// The error of an unhealthy worker.
    pub fn error(&self) -> Option<&str> {
        match self {
            Health::Unhealthy { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Since when the worker has been in this state (`None` before the first probe).
    pub fn since(&self) -> Option<SystemTime> {
        match self {
            Health::Unknown => None,
            Health::Healthy { since } | Health::Unhealthy { since, .. } => Some(*since),
        }
    }

    /// The state after a probe that ended with `outcome` at `now`.
    pub fn after(&self, outcome: Result<(), String>, now: SystemTime) -> Health {
        match (self, outcome) {
            (Health::Healthy { since }, Ok(())) => Health::Healthy { since: *since },
            (_, Ok(())) => Health::Healthy { since: now },
            (Health::Unhealthy { since, .. }, Err(error)) => Health::Unhealthy {
                error,
                since: *since,
            },
            (_, Err(error)) => Health::Unhealthy { error, since: now },
        }
    }
}

/// One probe of `worker`, at most `timeout` long. `Err` holds what to show.
pub async fn probe(worker: &WorkerConfig, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match worker.kind {
            WorkerKind::Docker => ping_engine(worker).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "{}: no answer within {} s",
            endpoint_text(worker),
            timeout.as_secs_f64()
        )),
    }
}

/// The Docker Engine's `/_ping` through Kiln's own endpoint and TLS resolution. The only
/// place the pool touches the Docker client: re-point it when the client moves.
async fn ping_engine(worker: &WorkerConfig) -> Result<(), String> {
    use crate::docker::{Engine, EngineEndpoint};
    let endpoint = EngineEndpoint {
        host: worker.endpoint.clone(),
        tls_verify: worker.tls_verify,
        cert_path: worker.cert_path.clone(),
    };
    let engine = Engine::unverified(&endpoint).map_err(|e| e.to_string())?;
    engine.ping().await.map_err(|e| e.to_string())
}

fn endpoint_text(worker: &WorkerConfig) -> &str {
    worker
        .endpoint
        .as_deref()
        .unwrap_or("the default Docker endpoint")
}

/// Probes `worker` every `interval` until `shutdown`, folding each outcome into `tx`
/// (which starts at [`Health::Unknown`]; its receivers wake on every change). The caller
/// keeps `tx` so it can also [`record`] what it saw between probes (a worker lost in the
/// middle of a build).
pub fn spawn_probe(
    tx: Arc<watch::Sender<Health>>,
    worker: WorkerConfig,
    interval: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = probe(&worker, timeout) => outcome,
            };
            record(&tx, &worker.name, outcome);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// Folds one probe's `outcome` into `worker`'s health (logging a change once).
pub fn record(tx: &watch::Sender<Health>, worker: &str, outcome: Result<(), String>) {
    let now = SystemTime::now();
    tx.send_if_modified(|health| {
        let next = health.after(outcome, now);
        log_transition(worker, health, &next);
        let changed = next != *health;
        *health = next;
        changed
    });
}

fn log_transition(name: &str, before: &Health, after: &Health) {
    match (before, after) {
        (Health::Healthy { .. }, Health::Healthy { .. }) => {}
        (_, Health::Healthy { .. }) => tracing::info!(worker = name, "build worker is healthy"),
        (Health::Unhealthy { error: old, .. }, Health::Unhealthy { error, .. }) if old == error => {
        }
        (_, Health::Unhealthy { error, .. }) => {
            tracing::warn!(worker = name, %error, "build worker is unhealthy; it gets no builds")
        }
        (_, Health::Unknown) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn since_changes_only_when_the_state_does() {
        let h = Health::Unknown.after(Ok(()), at(1));
        assert_eq!(h, Health::Healthy { since: at(1) });
        let h = h.after(Ok(()), at(2));
        assert_eq!(h.since(), Some(at(1)));
        let h = h.after(Err("refused".into()), at(3));
        assert_eq!(
            h,
            Health::Unhealthy {
                error: "refused".into(),
                since: at(3)
            }
        );
        // A new error text is shown, the time it went down stays.
        let h = h.after(Err("timed out".into()), at(4));
        assert_eq!((h.error(), h.since()), (Some("timed out"), Some(at(3))));
        assert!(!h.is_healthy());
        let h = h.after(Ok(()), at(5));
        assert_eq!(h, Health::Healthy { since: at(5) });
        let h = Health::Unknown.after(Err("no".into()), at(6));
        assert_eq!(h.since(), Some(at(6)));
        assert!(!Health::Unknown.is_healthy());
    }

    /// The worker Engines of `scripts/dev-env.sh` (its workers.env), or `None` after saying
    /// SKIPPED (a failure when CI=true).
    fn dev_env_workers() -> Option<BTreeMap<String, String>> {
        let dir = std::env::var("KILN_ENV_DIR").unwrap_or_else(|_| "/var/lib/kiln-env".into());
        let path = PathBuf::from(dir).join("workers.env");
        let vars: Option<BTreeMap<String, String>> =
            std::fs::read_to_string(&path).ok().map(|text| {
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            });
        let usable = vars.filter(|v| v.get("KILN_WORKERS").is_some_and(|n| n != "0"));
        if usable.is_none() {
            assert!(
                // The same rule as tests/common/tools.rs `in_ci` (unit tests cannot import it).
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "CI=true but {} lists no worker Engines: run scripts/dev-env.sh up",
                path.display()
            );
            eprintln!(
                "\n*** SKIPPED: no worker Engines ({} missing; run scripts/dev-env.sh up) ***\n",
                path.display()
            );
        }
        usable
    }

    fn docker_worker(endpoint: &str, cert_path: Option<&str>) -> WorkerConfig {
        WorkerConfig {
            name: "w".into(),
            kind: WorkerKind::Docker,
            endpoint: Some(endpoint.into()),
            capacity: 1,
            tls_verify: cert_path.map(|_| true),
            cert_path: cert_path.map(PathBuf::from),
        }
    }

    #[tokio::test]
    async fn the_dev_env_workers_answer_over_unix_and_mutual_tls() {
        let Some(vars) = dev_env_workers() else {
            return;
        };
        let cert = &vars["KILN_WORKER_CERT_PATH"];
        let n: usize = vars["KILN_WORKERS"].parse().unwrap();
        for i in 1..=n {
            let unix = docker_worker(&vars[&format!("KILN_WORKER_{i}_UNIX")], None);
            let tcp = docker_worker(&vars[&format!("KILN_WORKER_{i}_TCP")], Some(cert));
            for w in [&unix, &tcp] {
                probe(w, PROBE_TIMEOUT)
                    .await
                    .unwrap_or_else(|e| panic!("worker {i} ({:?}): {e}", w.endpoint));
            }
            // The same port without a client certificate is refused, and says where.
            let plain = WorkerConfig {
                tls_verify: Some(false),
                ..docker_worker(&vars[&format!("KILN_WORKER_{i}_TCP")], None)
            };
            let err = probe(&plain, PROBE_TIMEOUT).await.unwrap_err();
            assert!(err.contains("127.0.0.1"), "{err}");
            // A client signed by another CA is refused too.
            let wrong = Path::new(cert).parent().unwrap().join("wrong-ca");
            let stranger = docker_worker(&vars[&format!("KILN_WORKER_{i}_TCP")], wrong.to_str());
            assert!(probe(&stranger, PROBE_TIMEOUT).await.is_err());
        }
    }

    #[tokio::test]
    async fn an_engine_that_is_not_there_is_unhealthy_with_its_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let gone = format!("unix://{}/docker.sock", dir.path().display());
        let err = probe(&docker_worker(&gone, None), PROBE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        // TLS files that are not there: unhealthy with the file named, no panic.
        let no_files = docker_worker("tcp://127.0.0.1:9", Some("/nonexistent/kiln-certs"));
        let err = probe(&no_files, PROBE_TIMEOUT).await.unwrap_err();
        assert!(err.contains("/nonexistent/kiln-certs"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_that_accepts_but_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let w = docker_worker(&format!("unix://{}", path.display()), None);
        let err = probe(&w, Duration::from_millis(300)).await.unwrap_err();
        assert!(err.contains("no answer within 0.3 s"), "{err}");
    }

    /// Runs `scripts/dev-env.sh ARGS`, failing the test with its output when it fails.
    async fn dev_env(args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-env.sh");
        let out = tokio::process::Command::new(&script)
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "dev-env.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the test's own worker Engine however the test ends.
    struct StopWorker(&'static str);
    impl Drop for StopWorker {
        fn drop(&mut self) {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-env.sh");
            let _ = std::process::Command::new(script)
                .args(["worker-stop", self.0])
                .output();
        }
    }

    /// Waits for `rx` to satisfy `pred`; a hang guard only (fails after minutes, asserts no
    /// speed).
    async fn wait_until(
        rx: &mut watch::Receiver<Health>,
        pred: impl Fn(&Health) -> bool,
    ) -> Health {
        tokio::time::timeout(Duration::from_secs(180), rx.wait_for(|h| pred(h)))
            .await
            .expect("the probe's state did not change for 3 minutes")
            .expect("the probe task ended")
            .clone()
    }

    #[tokio::test]
    async fn a_worker_killed_with_sigkill_turns_unhealthy_and_healthy_again_once_restarted() {
        if dev_env_workers().is_none() {
            return;
        }
        // A worker Engine of this test's own (index 50), so the shared ones are left alone.
        let _stop = StopWorker("50");
        dev_env(&["worker-start", "50"]).await;
        let shutdown = CancellationToken::new();
        let worker = WorkerConfig {
            name: "w50".into(),
            ..docker_worker("unix:///run/kiln-w50/docker.sock", None)
        };
        let tx = Arc::new(watch::Sender::new(Health::Unknown));
        let mut rx = tx.subscribe();
        let task = spawn_probe(
            tx,
            worker,
            Duration::from_millis(200),
            PROBE_TIMEOUT,
            shutdown.clone(),
        );
        assert!(
            wait_until(&mut rx, |h| *h != Health::Unknown)
                .await
                .is_healthy()
        );

        dev_env(&["worker-kill", "50"]).await;
        let down = wait_until(&mut rx, |h| !h.is_healthy()).await;
        let error = down.error().unwrap_or_default();
        assert!(
            error.contains("unix:///run/kiln-w50/docker.sock"),
            "{down:?}"
        );
        let went_down = down.since().unwrap();

        dev_env(&["worker-start", "50"]).await;
        let up = wait_until(&mut rx, Health::is_healthy).await;
        assert!(up.since().unwrap() >= went_down, "{up:?} after {down:?}");

        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_probe_task_publishes_health_and_stops_on_shutdown() {
        let Some(vars) = dev_env_workers() else {
            return;
        };
        let shutdown = CancellationToken::new();
        let tx = Arc::new(watch::Sender::new(Health::Unknown));
        let mut rx = tx.subscribe();
        let task = spawn_probe(
            tx,
            docker_worker(&vars["KILN_WORKER_1_UNIX"], None),
            Duration::from_millis(100),
            PROBE_TIMEOUT,
            shutdown.clone(),
        );
        let health = rx
            .wait_for(|h| *h != Health::Unknown)
            .await
            .unwrap()
            .clone();
        assert!(health.is_healthy(), "{health:?}");
        shutdown.cancel();
        task.await.unwrap();
    }
}
