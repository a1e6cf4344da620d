//! Triggers (docs/design.md §5): a local repository is watched, so a commit becomes a job without
//! polling; a remote one is fetched on every signed webhook, and survives being unreachable;
//! the git hooks in `deploy/hooks/` work in real repositories.
//!
//! Every server here runs with `--no-build` (no Docker needed) and, unless a test is about
//! polling, with a poll interval of an hour: whatever happens within the test was triggered.
//! Waits are bounded; no test asserts a latency (the `#[ignore]`d benchmark at the end
//! measures them, see `scripts/bench-triggers.sh`).

mod common;

use common::{GitRepo, Server, kiln, kiln_bin, spec};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "s3cr3t-Kiln-hook-value";
const NO_POLL: &str = "3600";

// ---- helpers ----

/// Poll `probe` every 20 ms until it returns `Some`, for at most `secs` seconds.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn jobs(server: &Server, name: &str) -> Vec<Value> {
    let resp = reqwest::get(format!("{}/api/v1/specs/{name}/jobs", server.base))
        .await
        .unwrap();
    if resp.status() == 404 {
        return Vec::new();
    }
    resp.json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn wait_jobs(server: &Server, name: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} job(s) of {name}"), 20, || async {
        let jobs = jobs(server, name).await;
        (jobs.len() >= n).then_some(jobs)
    })
    .await
}

async fn status(server: &Server) -> Value {
    server.get("/api/v1/status").await
}

async fn passes(server: &Server) -> u64 {
    status(server).await["sync"]["passes"].as_u64().unwrap()
}

/// Passes, once no pass has started for `quiet` (a triggered pass may still be on its way).
async fn settled_passes(server: &Server, quiet: Duration) -> u64 {
    let mut last = passes(server).await;
    loop {
        tokio::time::sleep(quiet).await;
        let now = passes(server).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

async fn last_commit(server: &Server) -> Option<String> {
    server.get("/healthz").await["last_commit"]
        .as_str()
        .map(str::to_string)
}

fn server_log(server: &Server) -> String {
    server.log_text()
}

fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signed webhook as each provider sends it; `secret` may be wrong on purpose.
fn signed(provider: &str, secret: &str, body: &str, timestamp: i64) -> Vec<(String, String)> {
    let h = |k: &str, v: String| (k.to_string(), v);
    match provider {
        "github" => vec![
            h("X-GitHub-Event", "push".into()),
            h(
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(secret, &[body.as_bytes()])),
            ),
        ],
        "gitea" => vec![
            h("X-Gitea-Event", "push".into()),
            h("X-Gitea-Signature", hmac_hex(secret, &[body.as_bytes()])),
        ],
        "gitlab" => vec![
            h("X-Gitlab-Event", "Push Hook".into()),
            h("X-Gitlab-Token", secret.into()),
        ],
        "generic" => vec![
            h("X-Kiln-Timestamp", timestamp.to_string()),
            h(
                "X-Kiln-Signature",
                format!(
                    "sha256={}",
                    hmac_hex(secret, &[timestamp.to_string().as_bytes(), body.as_bytes()])
                ),
            ),
        ],
        other => panic!("unknown provider {other}"),
    }
}

async fn post_hook(
    client: &reqwest::Client,
    server: &Server,
    provider: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, Value) {
    let mut req = client
        .post(format!("{}/hooks/{provider}", server.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn push_body(branch: &str, tag: &str) -> String {
    serde_json::json!({ "ref": format!("refs/heads/{branch}"), "after": tag }).to_string()
}

/// A work tree whose `main` is pushed to a bare repository (the "git server").
struct Remote {
    _tmp: tempfile::TempDir,
    work: GitRepo,
    bare: PathBuf,
    data: PathBuf,
    secret_file: PathBuf,
}

impl Remote {
    fn new() -> Remote {
        let tmp = tempfile::tempdir().unwrap();
        let work = GitRepo::init(&tmp.path().join("work"));
        let bare = tmp.path().join("server/specs.git");
        std::fs::create_dir_all(&bare).unwrap();
        work.git(&[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &bare.display().to_string(),
        ]);
        let secret_file = tmp.path().join("webhook-secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        Remote {
            data: tmp.path().join("data"),
            _tmp: tmp,
            work,
            bare,
            secret_file,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn commit_and_push(&mut self, path: &str, text: &str, message: &str) -> String {
        self.work.write(path, text);
        let sha = self.work.commit(message);
        self.push();
        sha
    }

    fn push(&self) {
        self.work.git(&[
            "push",
            "-q",
            "--force",
            &self.bare.display().to_string(),
            "main",
        ]);
    }

    /// A child process: tests read its log (`server_log`).
    async fn serve(&self, poll: &str) -> Server {
        Server::start(&[
            "--repo",
            &self.url(),
            "--data-dir",
            &self.data.display().to_string(),
            "--no-build",
            "--poll-interval",
            poll,
            "--webhook-secret-file",
            &self.secret_file.display().to_string(),
        ])
        .await
    }
}

/// `git` without the success assertion (for commands expected to fail), in `dir`.
fn git_raw(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Ada Admin")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Admin")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap()
}

// ---- local repositories: the watcher ----

/// A work tree read in place: commits, a fast-forward merge, `git gc`, a rewritten history —
/// each becomes a job with polling off; staging an edit does not even cause a look.
#[tokio::test]
async fn local_work_tree_commits_become_jobs_without_polling() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("work"));
    repo.write("specs/app.yaml", &spec("app", &["curl"]));
    repo.commit("app r1");
    let server = Server::in_process(&[
        "--repo",
        &repo.dir.display().to_string(),
        "--specs-dir",
        "specs",
        "--data-dir",
        &tmp.path().join("data").display().to_string(),
        "--no-build",
        "--poll-interval",
        NO_POLL,
    ])
    .await;
    wait_jobs(&server, "app", 1).await;
    let st = status(&server).await;
    assert!(
        st["triggers"]["watch"].as_str().unwrap().ends_with(".git"),
        "{st}"
    );

    // A commit.
    repo.write("specs/app.yaml", &spec("app", &["curl", "jq"]));
    let r2 = repo.commit("app r2");
    let jobs = wait_jobs(&server, "app", 2).await;
    assert_eq!(jobs[0]["commit"], r2.as_str());

    // An uncommitted edit, even staged, is not a revision — and is not even looked at.
    let before = settled_passes(&server, Duration::from_millis(300)).await;
    repo.write("specs/app.yaml", &spec("app", &["curl", "jq", "git"]));
    repo.git(&["add", "-A"]);
    repo.write("specs/other.yaml", &spec("other", &["curl"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        passes(&server).await,
        before,
        "the work tree or index triggered a look"
    );
    assert_eq!(crate::jobs(&server, "app").await.len(), 2);
    let r3 = repo.commit("app r3 + other");
    wait_jobs(&server, "other", 1).await;
    assert_eq!(wait_jobs(&server, "app", 3).await[0]["commit"], r3.as_str());

    // A fast-forward merge of a feature branch: commits on the branch trigger nothing useful,
    // the merge moves main.
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write(
        "specs/app.yaml",
        &spec("app", &["curl", "jq", "git", "make"]),
    );
    repo.commit("feature work");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(crate::jobs(&server, "app").await.len(), 3);
    repo.git(&["checkout", "-q", "main"]);
    repo.git(&["merge", "-q", "--ff-only", "feature"]);
    let merged = repo.head();
    assert_eq!(
        wait_jobs(&server, "app", 4).await[0]["commit"],
        merged.as_str()
    );

    // git gc packs the refs (the loose ref file disappears); the next commit is still seen.
    repo.git(&["gc", "-q"]);
    assert!(!repo.dir.join(".git/refs/heads/main").exists());
    assert!(
        std::fs::read_to_string(repo.dir.join(".git/packed-refs"))
            .unwrap()
            .contains(&merged)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(crate::jobs(&server, "app").await.len(), 4, "gc made a job");
    repo.write("specs/app.yaml", &spec("app", &["curl"]));
    let after_gc = repo.commit("after gc");
    assert_eq!(
        wait_jobs(&server, "app", 5).await[0]["commit"],
        after_gc.as_str()
    );

    // Rewritten history (what a force-push does to a branch): reset and commit anew. (The
    // reset alone may already be seen as a rewrite, so count on the newest job only.)
    repo.git(&["reset", "-q", "--hard", "HEAD~2"]);
    repo.write("specs/app.yaml", &spec("app", &["wget"]));
    let rewritten = repo.commit("rewritten");
    wait_for("a job for the rewritten head", 20, || async {
        let jobs = crate::jobs(&server, "app").await;
        (jobs[0]["commit"] == rewritten.as_str()).then_some(())
    })
    .await;
    assert_eq!(
        last_commit(&server).await.as_deref(),
        Some(rewritten.as_str())
    );
    assert_eq!(status(&server).await["sync"]["failures"], 0);
}

/// A bare repository on the git server, read in place: pushes and force-pushes are seen.
#[tokio::test]
async fn local_bare_repository_sees_pushes_and_force_pushes() {
    let mut remote = Remote::new();
    remote.commit_and_push("web.yaml", &spec("web", &["curl"]), "web r1");
    let server = Server::in_process(&[
        "--repo",
        &remote.bare.display().to_string(),
        "--data-dir",
        &remote.data.display().to_string(),
        "--no-build",
        "--poll-interval",
        NO_POLL,
    ])
    .await;
    wait_jobs(&server, "web", 1).await;

    let r2 = remote.commit_and_push("web.yaml", &spec("web", &["curl", "jq"]), "web r2");
    assert_eq!(wait_jobs(&server, "web", 2).await[0]["commit"], r2.as_str());

    // Amend and force-push: the old head is gone from the branch.
    remote
        .work
        .write("web.yaml", &spec("web", &["curl", "jq", "git"]));
    remote.work.tick();
    remote.work.git(&["add", "-A"]);
    remote
        .work
        .git(&["commit", "-q", "--amend", "-m", "web r2, amended"]);
    let amended = remote.work.head();
    remote.push();
    assert_eq!(
        wait_jobs(&server, "web", 3).await[0]["commit"],
        amended.as_str()
    );
    assert_eq!(
        last_commit(&server).await.as_deref(),
        Some(amended.as_str())
    );

    // The server packs its refs (git gc on the server), then takes another push.
    remote
        .work
        .git(&["--git-dir", &remote.bare.display().to_string(), "gc", "-q"]);
    let r4 = remote.commit_and_push("web.yaml", &spec("web", &["wget"]), "web r4");
    assert_eq!(wait_jobs(&server, "web", 4).await[0]["commit"], r4.as_str());
}

// ---- remote repositories: webhooks ----

/// For every provider: a bad, missing, stale or replayed proof is a 401 and fetches nothing;
/// a good one fetches and the new commit becomes a job.
#[tokio::test]
async fn webhooks_of_every_provider_fetch_only_when_signed() {
    let mut remote = Remote::new();
    remote.commit_and_push("base.yaml", &spec("base", &["curl"]), "base");
    let server = remote.serve(NO_POLL).await;
    wait_jobs(&server, "base", 1).await;
    let client = reqwest::Client::new();

    for provider in ["github", "gitlab", "gitea", "generic"] {
        let name = format!("from-{provider}");
        let head = remote.commit_and_push(
            &format!("{name}.yaml"),
            &spec(&name, &["curl"]),
            &format!("{provider} commit"),
        );
        let body = push_body("main", &head);
        let before = settled_passes(&server, Duration::from_millis(300)).await;

        // Missing proof, wrong secret, and (generic) a stale timestamp: 401.
        let now = unix_now();
        let mut refused = vec![
            ("missing", Vec::new()),
            (
                "wrong secret",
                signed(provider, "not-the-secret", &body, now),
            ),
        ];
        if provider == "generic" {
            refused.push(("stale", signed(provider, SECRET, &body, now - 301)));
            refused.push(("future", signed(provider, SECRET, &body, now + 301)));
            // Signed correctly, but the timestamp header was changed afterwards.
            let mut moved = signed(provider, SECRET, &body, now - 400);
            moved[0].1 = now.to_string();
            refused.push(("moved timestamp", moved));
        }
        if provider != "gitlab" {
            // Signed for another body.
            refused.push((
                "other body",
                signed(provider, SECRET, &push_body("main", "x"), now),
            ));
        }
        for (what, headers) in &refused {
            let (code, answer) = post_hook(&client, &server, provider, headers, &body).await;
            assert_eq!(code, 401, "{provider} {what}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            passes(&server).await,
            before,
            "{provider}: a refused webhook fetched"
        );
        assert!(crate::jobs(&server, &name).await.is_empty());

        // A push to another branch is acknowledged and ignored.
        let other = push_body("dev", &head);
        let (code, answer) = post_hook(
            &client,
            &server,
            provider,
            &signed(provider, SECRET, &other, unix_now()),
            &other,
        )
        .await;
        assert_eq!(
            (code, answer["status"].as_str()),
            (202, Some("ignored")),
            "{answer}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            passes(&server).await,
            before,
            "{provider}: another branch fetched"
        );

        // The good one.
        let good = signed(provider, SECRET, &body, unix_now());
        let (code, answer) = post_hook(&client, &server, provider, &good, &body).await;
        assert_eq!(
            (code, answer["status"].as_str()),
            (202, Some("queued")),
            "{answer}"
        );
        let jobs = wait_jobs(&server, &name, 1).await;
        assert_eq!(jobs[0]["commit"], head.as_str());
        let after = settled_passes(&server, Duration::from_millis(300)).await;
        assert!(after > before);

        // The same delivery again: a replay (GitLab's static token cannot tell one).
        if provider != "gitlab" {
            let (code, answer) = post_hook(&client, &server, provider, &good, &body).await;
            assert_eq!(code, 401, "{provider} replay: {answer}");
            assert!(answer["error"].as_str().unwrap().contains("replay"));
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert_eq!(passes(&server).await, after, "{provider}: a replay fetched");
        }
    }

    // GitHub's ping, and other events, fetch nothing.
    let ping = "{\"zen\":\"Keep it logically awesome.\"}";
    let mut headers = signed("github", SECRET, ping, 0);
    headers[0].1 = "ping".into();
    let (code, answer) = post_hook(&client, &server, "github", &headers, ping).await;
    assert_eq!((code, answer["status"].as_str()), (200, Some("pong")));

    // Bodies over 1 MiB are refused before anything else.
    let huge = "x".repeat(1024 * 1024 + 1);
    let (code, _) = post_hook(
        &client,
        &server,
        "generic",
        &signed("generic", SECRET, &huge, unix_now()),
        &huge,
    )
    .await;
    assert_eq!(code, 413);

    // GET is not a webhook.
    assert_eq!(server.status("/hooks/generic").await, 405);

    let st = status(&server).await;
    assert!(st["webhooks"]["accepted"].as_u64().unwrap() >= 8, "{st}");
    assert!(st["webhooks"]["rejected"].as_u64().unwrap() >= 14, "{st}");
    assert_eq!(
        st["triggers"]["webhooks"],
        serde_json::json!(["github", "gitlab", "gitea", "generic"])
    );
    assert!(st["triggers"]["watch"].is_null(), "{st}");
    // Never logged, never served.
    let log = server_log(&server);
    assert!(log.contains("webhook rejected"), "rejections are logged");
    assert!(!log.contains(SECRET), "the secret reached the log");
    for path in ["/api/v1/status", "/healthz", "/api/v1/specs"] {
        let text = reqwest::get(format!("{}{path}", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(SECRET), "{path} shows the secret");
    }
}

/// Without a secret, the webhook routes are off.
#[tokio::test]
async fn webhooks_without_a_secret_are_disabled() {
    let mut remote = Remote::new();
    remote.commit_and_push("a.yaml", &spec("a", &["curl"]), "a");
    let server = Server::in_process(&[
        "--repo",
        &remote.url(),
        "--data-dir",
        &remote.data.display().to_string(),
        "--no-build",
        "--poll-interval",
        NO_POLL,
    ])
    .await;
    let body = push_body("main", "x");
    let (code, answer) = post_hook(
        &reqwest::Client::new(),
        &server,
        "generic",
        &signed("generic", SECRET, &body, unix_now()),
        &body,
    )
    .await;
    assert_eq!(code, 404, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("not enabled"),
        "{answer}"
    );
}

/// 1,000 signed webhooks in a burst: every one is answered, the server stays responsive,
/// and they cost a handful of fetches (one per second of burst at most, plus one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_webhooks_costs_a_handful_of_fetches() {
    let mut remote = Remote::new();
    remote.commit_and_push("a.yaml", &spec("a", &["curl"]), "a");
    let server = remote.serve(NO_POLL).await;
    wait_jobs(&server, "a", 1).await;
    let head = remote.commit_and_push("b.yaml", &spec("b", &["curl"]), "b");
    let before = settled_passes(&server, Duration::from_millis(300)).await;

    let client = reqwest::Client::new();
    let base = server.base.clone();
    // /healthz is asked continuously while the burst runs.
    let bursting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let health = {
        let (client, base, bursting) = (client.clone(), base.clone(), bursting.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            while answered == 0 || bursting.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let resp = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.get(format!("{base}/healthz")).send(),
                )
                .await
                .expect("/healthz answers during the burst")
                .unwrap();
                assert!(resp.status().is_success());
                slowest = slowest.max(t.elapsed());
                answered += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (answered, slowest)
        })
    };
    let started = Instant::now();
    let senders: Vec<_> = (0..32)
        .map(|worker| {
            let (client, base, head) = (client.clone(), base.clone(), head.clone());
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in (worker..1000).step_by(32) {
                    let body = serde_json::json!({
                        "ref": "refs/heads/main", "after": head, "delivery": i
                    })
                    .to_string();
                    let ts = unix_now();
                    let sig = hmac_hex(SECRET, &[ts.to_string().as_bytes(), body.as_bytes()]);
                    let resp = client
                        .post(format!("{base}/hooks/generic"))
                        .header("X-Kiln-Timestamp", ts.to_string())
                        .header("X-Kiln-Signature", format!("sha256={sig}"))
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    codes.push(resp.status().as_u16());
                }
                codes
            })
        })
        .collect();
    let mut codes = Vec::new();
    for s in senders {
        codes.extend(s.await.unwrap());
    }
    let burst = started.elapsed();
    bursting.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(codes.len(), 1000);
    assert!(codes.iter().all(|&c| c == 202), "not all accepted");
    let (answered, slowest) = health.await.unwrap();

    let jobs = wait_jobs(&server, "b", 1).await;
    assert_eq!(jobs[0]["commit"], head.as_str());
    let after = settled_passes(&server, Duration::from_millis(1500)).await;
    let fetches = after - before;
    let bound = burst.as_secs() + 3;
    println!(
        "1000 webhooks in {burst:?}: {fetches} fetch(es); /healthz answered {answered} times, slowest {slowest:?}"
    );
    assert!(
        (1..=bound).contains(&fetches),
        "{fetches} fetches for a burst of {burst:?} (bound {bound})"
    );
    let st = status(&server).await;
    assert_eq!(st["webhooks"]["accepted"], 1000);
}

// ---- remote repositories: unreachable and back ----

/// The remote disappears: the error shows on /healthz and /api/v1/status, the API keeps
/// serving the last state, retries continue; when it is back, every commit made meanwhile
/// becomes a revision.
#[tokio::test]
async fn unreachable_remote_shows_the_error_and_catches_up() {
    let mut remote = Remote::new();
    let first = remote.commit_and_push("svc.yaml", &spec("svc", &["curl"]), "svc r1");
    let server = remote.serve("1").await;
    wait_jobs(&server, "svc", 1).await;

    let moved = remote.bare.with_file_name("moved.git");
    std::fs::rename(&remote.bare, &moved).unwrap();
    let health = wait_for("the fetch error on /healthz", 20, || async {
        let h = server.get("/healthz").await;
        h["sync_error"].is_string().then_some(h)
    })
    .await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["last_commit"], first.as_str());
    let st = status(&server).await;
    assert_eq!(st["status"], "degraded");
    assert!(st["sync"]["error"].is_string(), "{st}");
    // Serving continues, with the last state.
    let specs = server.get("/api/v1/specs").await;
    assert_eq!(specs.as_array().unwrap().len(), 1);

    // Commits land on the (moved) server meanwhile.
    let mut made = vec![first];
    let mut apt = vec!["curl"];
    for (i, pkg) in ["jq", "git", "make"].into_iter().enumerate() {
        apt.push(pkg);
        remote.work.write("svc.yaml", &spec("svc", &apt));
        made.push(remote.work.commit(&format!("svc r{}", i + 2)));
        remote
            .work
            .git(&["push", "-q", &moved.display().to_string(), "main"]);
    }
    // Retries keep failing (with backoff) while it is away.
    let failures = wait_for("more failed retries", 20, || async {
        let f = status(&server).await["sync"]["failures"].as_u64().unwrap();
        (f >= 3).then_some(f)
    })
    .await;
    assert!(failures >= 3);

    std::fs::rename(&moved, &remote.bare).unwrap();
    let head = made.last().unwrap().clone();
    wait_for("recovery", 20, || async {
        let h = server.get("/healthz").await;
        (h["sync_error"].is_null() && h["last_commit"] == head.as_str()).then_some(())
    })
    .await;
    let svc = server.get("/api/v1/specs/svc").await;
    let commits: Vec<&str> = svc["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["commit"].as_str().unwrap())
        .collect();
    assert_eq!(
        commits,
        made.iter().map(String::as_str).collect::<Vec<_>>(),
        "every commit made while unreachable is a revision"
    );
    assert_eq!(status(&server).await["status"], "ok");
}

/// The same over the network: a `git daemon` that stops (connection refused) and comes back.
#[tokio::test]
async fn git_daemon_down_and_back() {
    if !common::have(common::Tool::GitDaemon) {
        return;
    }
    let Some(git_daemon) = common::tools::git_daemon() else {
        return;
    };
    let mut remote = Remote::new();
    remote.commit_and_push("net.yaml", &spec("net", &["curl"]), "net r1");
    let port = common::free_port();
    let base_path = remote.bare.parent().unwrap().to_path_buf();
    // The daemon binary itself: killing a `git daemon` wrapper would orphan it.
    let start_daemon = || {
        Daemon(
            Command::new(&git_daemon)
                .args([
                    "--reuseaddr",
                    "--export-all",
                    "--listen=127.0.0.1",
                    &format!("--port={port}"),
                    &format!("--base-path={}", base_path.display()),
                    &base_path.display().to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut daemon = start_daemon();
    let url = format!("git://127.0.0.1:{port}/specs.git");
    // Wait for the daemon to listen.
    wait_for("git daemon", 10, || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    let server = Server::in_process(&[
        "--repo",
        &url,
        "--data-dir",
        &remote.data.display().to_string(),
        "--no-build",
        "--poll-interval",
        "1",
    ])
    .await;
    wait_jobs(&server, "net", 1).await;

    daemon.stop();
    let error = wait_for("the fetch error", 20, || async {
        let h = server.get("/healthz").await;
        h["sync_error"].as_str().map(str::to_string)
    })
    .await;
    assert!(error.contains(&url), "{error}");
    let r2 = remote.commit_and_push("net.yaml", &spec("net", &["curl", "jq"]), "net r2");
    let r3 = remote.commit_and_push("net.yaml", &spec("net", &["jq"]), "net r3");
    assert_eq!(server.status("/api/v1/specs/net").await, 200);

    let _daemon = start_daemon();
    wait_for("recovery", 30, || async {
        let h = server.get("/healthz").await;
        (h["sync_error"].is_null() && h["last_commit"] == r3.as_str()).then_some(())
    })
    .await;
    let svc = server.get("/api/v1/specs/net").await;
    let commits: Vec<&str> = svc["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["commit"].as_str().unwrap())
        .collect();
    assert_eq!(&commits[1..], [r2.as_str(), r3.as_str()]);
}

/// A child process killed when dropped (also when a test panics).
struct Daemon(std::process::Child);

impl Daemon {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- git hooks and kiln notify ----

fn install_post_receive(bare: &Path, url: &str, secret_file: &Path) {
    let hook = bare.join("hooks/post-receive");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/hooks/post-receive"),
        &hook,
    )
    .unwrap();
    for (key, value) in [
        ("kiln.url", url.to_string()),
        ("kiln.secretFile", secret_file.display().to_string()),
        ("kiln.bin", kiln_bin().to_string()),
    ] {
        let out = git_raw(bare, &["config", key, &value]);
        assert!(out.status.success());
    }
}

/// `deploy/hooks/post-receive` in a real bare repository: `git push` → job, no polling.
#[tokio::test]
async fn post_receive_hook_turns_a_push_into_a_job() {
    let mut remote = Remote::new();
    remote.commit_and_push("hooked.yaml", &spec("hooked", &["curl"]), "r1");
    let server = remote.serve(NO_POLL).await;
    wait_jobs(&server, "hooked", 1).await;
    install_post_receive(&remote.bare, &server.base, &remote.secret_file);

    remote
        .work
        .write("hooked.yaml", &spec("hooked", &["curl", "jq"]));
    let r2 = remote.work.commit("r2");
    let out = git_raw(
        &remote.work.dir,
        &["push", &remote.bare.display().to_string(), "main"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("could not notify"), "{stderr}");
    let jobs = wait_jobs(&server, "hooked", 2).await;
    assert_eq!(jobs[0]["commit"], r2.as_str());

    // A wrong secret on the git server: the push stands, with a warning; nothing fetched.
    let wrong = remote.bare.with_file_name("wrong-secret");
    std::fs::write(&wrong, "nope\n").unwrap();
    git_raw(
        &remote.bare,
        &["config", "kiln.secretFile", &wrong.display().to_string()],
    );
    let before = settled_passes(&server, Duration::from_millis(300)).await;
    remote.work.write("hooked.yaml", &spec("hooked", &["wget"]));
    remote.work.commit("r3");
    let out = git_raw(
        &remote.work.dir,
        &["push", &remote.bare.display().to_string(), "main"],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not notify Kiln"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(passes(&server).await, before);
    assert_eq!(crate::jobs(&server, "hooked").await.len(), 2);
}

/// `kiln notify`: exit 0 when accepted, 1 when refused, 2 when it cannot be sent.
#[tokio::test]
async fn kiln_notify_exit_codes() {
    let mut remote = Remote::new();
    remote.commit_and_push("n.yaml", &spec("n", &["curl"]), "n");
    let server = remote.serve(NO_POLL).await;
    let secret = remote.secret_file.display().to_string();
    let url = server.base.clone();
    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            kiln(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let args = |url: &str, secret: &str, more: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["notify", "--url", url, "--secret-file", secret]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(more.iter().map(|s| s.to_string()));
        v
    };
    let (code, out, err) = run(args(&url, &secret, &["--ref", "refs/heads/main"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("202"), "{out}");

    let wrong = remote.data.with_file_name("wrong");
    std::fs::write(&wrong, "wrong").unwrap();
    let (code, _, err) = run(args(&url, &wrong.display().to_string(), &[]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains(SECRET));

    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let (code, _, err) = run(args(&closed, &secret, &[])).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    let (code, _, err) = run(args("ftp://127.0.0.1:1/", &secret, &[])).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("http://"), "{err}");
}

/// A TLS-terminating proxy on 127.0.0.1:0 in front of `backend` (`host:port`), with a fresh
/// self-signed certificate for `localhost` (rcgen), as a reverse proxy would put Kiln behind
/// https. Returns the proxy's port and the certificate (PEM).
async fn tls_proxy(backend: String) -> (u16, String) {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![key.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });
    (port, key.cert.pem())
}

/// `kiln notify` to an `https://` Kiln: through a real TLS listener in front of `kiln serve`,
/// trusted through `SSL_CERT_FILE`, the webhook is accepted and the push becomes a job; not
/// trusted, nothing is sent and the error says why.
#[tokio::test]
async fn kiln_notify_over_https() {
    let mut remote = Remote::new();
    remote.commit_and_push("a.yaml", &spec("a", &["curl"]), "a");
    let server = remote.serve(NO_POLL).await;
    wait_jobs(&server, "a", 1).await;
    let backend = server.base.trim_start_matches("http://").to_string();
    let (port, pem) = tls_proxy(backend).await;
    let ca = remote.data.with_file_name("proxy-ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url = format!("https://localhost:{port}");
    let secret = remote.secret_file.clone();
    let notify = move |trust: Option<PathBuf>| {
        let (url, secret) = (url.clone(), secret.clone());
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(kiln_bin());
            cmd.args(["notify", "--url", &url, "--ref", "refs/heads/main"])
                .arg("--secret-file")
                .arg(&secret)
                .env("KILN_LOG", "warn")
                .env_remove("SSL_CERT_DIR");
            match trust {
                Some(ca) => cmd.env("SSL_CERT_FILE", ca),
                None => cmd.env_remove("SSL_CERT_FILE"),
            };
            let out = cmd.output().expect("kiln notify runs");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };

    // Not trusted: refused before anything is sent.
    let (code, out, err) = notify(None).await.unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("certificate"), "{err}");

    remote.commit_and_push("b.yaml", &spec("b", &["curl"]), "b");
    let (code, out, err) = notify(Some(ca)).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("202"), "{out}");
    // No polling: only the webhook that came through TLS can have fetched `b`.
    wait_jobs(&server, "b", 1).await;
}

/// `deploy/hooks/pre-commit` checks the staged specs (not the work tree) and refuses the
/// commit on any problem.
#[test]
fn pre_commit_hook_checks_staged_specs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("work"));
    let hook = repo.dir.join(".git/hooks/pre-commit");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/hooks/pre-commit"),
        &hook,
    )
    .unwrap();
    repo.git(&["config", "kiln.bin", kiln_bin()]);
    repo.git(&["config", "kiln.specsDir", "specs"]);
    let commit = |repo: &GitRepo| git_raw(&repo.dir, &["commit", "-q", "-m", "try"]);

    // Valid specs commit; YAML outside the specs folder is not a spec.
    repo.write("specs/ok.yaml", &spec("ok", &["curl"]));
    repo.write(".ci/pipeline.yml", "stages: [test]\n");
    repo.commit("valid");

    // An invalid staged spec is refused, with path:line:col.
    repo.write(
        "specs/bad.yaml",
        "name: bad\nbaseImage: debian:12\nextra: 1\n",
    );
    repo.git(&["add", "-A"]);
    let out = commit(&repo);
    assert!(!out.status.success(), "an invalid spec was committed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("specs/bad.yaml:3:1"), "{text}");
    assert!(text.contains("unknown-key"), "{text}");

    // Fixed in the work tree but not staged: still refused (the staged content counts).
    repo.write("specs/bad.yaml", "name: bad\nbaseImage: debian:12\n");
    assert!(!commit(&repo).status.success());
    // Staged: accepted.
    repo.git(&["add", "-A"]);
    let out = commit(&repo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The reverse: broken in the work tree, valid when staged → accepted.
    repo.write("specs/ok.yaml", &spec("ok", &["curl", "jq"]));
    repo.git(&["add", "-A"]);
    repo.write("specs/ok.yaml", "name: [broken\n");
    let out = commit(&repo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- the benchmark (run by scripts/bench-triggers.sh) ----

struct Latencies {
    label: String,
    /// From `git commit` returning (with a push: including the push).
    samples: Vec<Duration>,
    /// From `git commit` starting: adds git's own time.
    from_start: Vec<Duration>,
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

impl Latencies {
    fn row(&self) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        let s = &self.samples;
        format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} |",
            self.label,
            s.len(),
            ms(percentile(s, 50.0)),
            ms(percentile(s, 90.0)),
            ms(percentile(s, 99.0)),
            ms(*s.iter().max().unwrap()),
            ms(percentile(&self.from_start, 50.0)),
            ms(percentile(&self.from_start, 99.0)),
        )
    }
}

/// A deterministic spread of pauses between commits, so that commits land at every phase
/// of a poll interval.
fn pause(i: usize, min_ms: u64, spread_ms: u64) -> Duration {
    let x = (i as u64).wrapping_mul(2_654_435_761) % 1000;
    Duration::from_millis(min_ms + x * spread_ms / 1000)
}

/// Commit (and push, with `push_to`) `n` times; after each commit returns, poll the API every
/// millisecond until the new job is listed.
async fn measure(
    label: &str,
    repo: &mut GitRepo,
    push_to: Option<&Path>,
    server: &Server,
    n: usize,
    pauses: (u64, u64),
) -> Latencies {
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/specs/bench/jobs?limit=1", server.base);
    let count = |client: &reqwest::Client| {
        let url = url.clone();
        let client = client.clone();
        async move {
            let jobs: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            jobs.as_array()
                .and_then(|a| a.first())
                .and_then(|j| j["revision"].as_u64())
                .unwrap_or(0)
        }
    };
    let mut revision = count(&client).await;
    let mut samples = Vec::with_capacity(n);
    let mut from_start = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep(pause(i, pauses.0, pauses.1)).await;
        let pkgs: Vec<String> = (0..=i % 7).map(|k| format!("pkg{k}-{i}")).collect();
        let refs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
        repo.write("bench.yaml", &spec("bench", &refs));
        let started = Instant::now();
        repo.commit(&format!("bench {i}"));
        // From `git commit` returning; with a push, from the push starting (it includes the
        // transfer, the ref update on the server and the hook).
        let done = Instant::now();
        if let Some(bare) = push_to {
            repo.git(&["push", "-q", &bare.display().to_string(), "main"]);
        }
        let deadline = done + Duration::from_secs(30);
        loop {
            let now = count(&client).await;
            if now > revision {
                revision = now;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: commit {i} never became a job"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(done.elapsed());
        from_start.push(started.elapsed());
    }
    Latencies {
        label: label.to_string(),
        samples,
        from_start,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run scripts/bench-triggers.sh"]
async fn bench_commit_to_job_latency() {
    let n: usize = std::env::var("BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let out = std::env::var("BENCH_OUT").unwrap_or("/tmp/bench-triggers-section.md".into());
    let mut rows = Vec::new();

    // Local work tree, watched (polling every hour: never, within the run).
    for (label, extra, poll) in [
        ("local work tree, notify watcher", None, NO_POLL),
        (
            "local work tree, polling only (1 s)",
            Some("--no-watch"),
            "1",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut repo = GitRepo::init(&tmp.path().join("work"));
        repo.write("bench.yaml", &spec("bench", &["curl"]));
        repo.commit("bench start");
        let data = tmp.path().join("data").display().to_string();
        let work = repo.dir.display().to_string();
        let mut args = vec![
            "--repo",
            work.as_str(),
            "--data-dir",
            data.as_str(),
            "--no-build",
            "--poll-interval",
            poll,
        ];
        args.extend(extra);
        let server = Server::in_process(&args).await;
        wait_jobs(&server, "bench", 1).await;
        let lat = measure(label, &mut repo, None, &server, n, (0, 1000)).await;
        println!("{}", lat.row());
        rows.push(lat.row());
        server.stop();
    }

    // Remote (file:// mirror) told by the post-receive hook → kiln notify → webhook.
    {
        let mut remote = Remote::new();
        remote.commit_and_push("bench.yaml", &spec("bench", &["curl"]), "bench start");
        let server = remote.serve(NO_POLL).await;
        wait_jobs(&server, "bench", 1).await;
        install_post_receive(&remote.bare, &server.base, &remote.secret_file);
        let label = "remote mirror, post-receive hook → webhook (pushes ≥ 1.1 s apart)";
        let bare = remote.bare.clone();
        let lat = measure(
            label,
            &mut remote.work,
            Some(&bare),
            &server,
            n,
            (1100, 500),
        )
        .await;
        println!("{}", lat.row());
        rows.push(lat.row());
        server.stop();
    }

    let table = format!(
        "| trigger | commits | p50 ms | p90 ms | p99 ms | max ms | from commit start: p50 / p99 ms |\n|---|---|---|---|---|---|---|\n{}\n",
        rows.join("\n")
    );
    std::fs::write(&out, &table).unwrap();
    println!("{table}");
}
