//! The dashboard in a real browser: `kiln serve` on a scripted repository, driven through
//! chromedriver (Debian's `chromium`, headless).
//!
//! * `pages_navigation_escaping_and_headers` (no Docker needed): history imported with
//!   `kiln sync --no-build`, then job outcomes and logs written through the store API in this
//!   process (the log holds `<script>`, an `<img onerror>` and ANSI escapes), then
//!   `kiln serve --no-build` on that data dir. Checks the spec list (rows, statuses, image
//!   URLs, counts, filter, deleted toggle), navigation to a spec and a job, the log rendered as
//!   text with colours, no console errors, security headers, compression, static caching,
//!   `/metrics`, and saves screenshots of the three pages at 1280 and 390 px.
//! * `live_log_tail_follows_a_running_build` (Docker Engine + registry): a real build whose
//!   apt step prints lines for several seconds; the job page, opened while it runs, must show
//!   each line stored after the page loaded within 1 s without a reload, and end up with
//!   exactly the API's log.
//!
//! Screenshots go to `target/screenshots/`; `KILN_UPDATE_SCREENSHOTS=1` also refreshes
//! `docs/screenshots/` (the README's pictures).

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::{GitRepo, Server, engine_available, kiln};
use kiln::model::{InstalledPackage, InstalledPackages, JobStatus};
use kiln::store::{LogLine, Store};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn spec_yaml(name: &str, apt: &[&str]) -> String {
    let list: String = apt.iter().map(|p| format!("    {p}\n")).collect();
    format!(
        "# {name}: maintained by the platform team\nname: {name}\ndescription: Tools for {name}\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\npackages:\n  apt: |\n{list}"
    )
}

fn sync(repo: &GitRepo, data: &std::path::Path) {
    let (code, out, err) = kiln(&[
        "sync",
        "--no-build",
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ]);
    assert_eq!(code, 0, "kiln sync failed: {out}{err}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn lines(texts: &[&str]) -> Vec<LogLine> {
    texts
        .iter()
        .map(|t| LogLine {
            at_ms: now_ms(),
            text: t.to_string(),
        })
        .collect()
}

const XSS_LINE: &str = "\u{1b}[1;31m<script>alert(1)</script>\u{1b}[0m and <img src=x onerror=alert(2)> \u{1b}[32mgreen\u{1b}[0m\u{1b}[2K";
const XSS_TEXT: &str = "<script>alert(1)</script> and <img src=x onerror=alert(2)> green";

/// Write job outcomes and logs the way the workers would, through the store API.
async fn script_outcomes(data: &std::path::Path) -> (u64, u64, String) {
    let store = Store::open(data).expect("store opens (no server running yet)");
    let hello = store.jobs_of_spec("hello", 0, 10).unwrap();
    let web = store.jobs_of_spec("web-tools", 0, 10).unwrap();
    let mut ok = hello[0].clone();
    assert_eq!(ok.status, JobStatus::Queued, "{ok:?}");
    let t = kiln::model::now();
    let image = format!("127.0.0.1:5000/hello:r{}-{}", ok.revision, &ok.commit[..7]);
    ok.status = JobStatus::Running;
    ok.created_at = t - 100;
    ok.started_at = Some(t - 95);
    ok.attempts = 1;
    store.update_job(&ok).await.unwrap();
    store
        .append_log(
            ok.id,
            &lines(&[
                "kiln: building hello r2 on 127.0.0.1:5000/kiln/bookworm:minbase",
                "Step 1/6 : FROM 127.0.0.1:5000/kiln/bookworm:minbase",
                " ---> 3f1c2a9b8e7d",
                "Step 5/6 : RUN apt-get update  && apt-get install -y --no-install-recommends curl jq",
                "Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]",
                "\u{1b}[33mdebconf: delaying package configuration, since apt-utils is not installed\u{1b}[0m",
                "Setting up curl (7.88.1-10+deb12u8) ...",
                "Successfully built 9b1d7c2e4f60",
                "\u{1b}[32mkiln: pushed 127.0.0.1:5000/hello:latest\u{1b}[0m",
            ]),
        )
        .await
        .unwrap();
    ok.status = JobStatus::Succeeded;
    ok.finished_at = Some(t - 12);
    ok.updated_at = t - 12;
    ok.image = Some(image.clone());
    ok.image_digest =
        Some("sha256:4c7f1a0b8e2d3c5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f".into());
    store.update_job(&ok).await.unwrap();
    let pkg = |n: &str, v: &str| InstalledPackage {
        name: n.into(),
        version: v.into(),
    };
    store
        .set_installed(
            ok.id,
            &InstalledPackages {
                apt: vec![pkg("curl", "7.88.1-10+deb12u8"), pkg("jq", "1.6-2.1")],
                pip: Vec::new(),
                conda: Vec::new(),
            },
        )
        .await
        .unwrap();

    let mut bad = web[0].clone();
    bad.status = JobStatus::Running;
    bad.created_at = t - 42;
    bad.started_at = Some(t - 40);
    bad.attempts = 1;
    store.update_job(&bad).await.unwrap();
    store
        .append_log(
            bad.id,
            &lines(&[
                "kiln: building web-tools r1",
                "Step 5/6 : RUN apt-get update && apt-get install -y --no-install-recommends no-such-tool",
                XSS_LINE,
                "Reading package lists...",
                "\u{1b}[1;31mE: Unable to locate package no-such-tool\u{1b}[0m",
            ]),
        )
        .await
        .unwrap();
    bad.status = JobStatus::Failed;
    bad.finished_at = Some(t - 30);
    bad.updated_at = t - 30;
    bad.error = Some(
        "The command '/bin/sh -c apt-get update && apt-get install -y --no-install-recommends no-such-tool' returned a non-zero code: 100".into(),
    );
    store.update_job(&bad).await.unwrap();
    store.flush().await.unwrap();
    (ok.id, bad.id, image)
}

/// Fail on any console error the pages produced (script errors, CSP violations, 404s).
async fn assert_clean_console(b: &Browser, page: &str) {
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors on {page}: {errors:#?}");
}

async fn assert_no_alert(b: &Browser) {
    assert!(
        b.alert_text().await.is_none(),
        "an alert dialog is open: the log was executed as HTML"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_navigation_escaping_and_headers() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    let data = tmp.path().join("data");
    repo.write("specs/hello.yaml", &spec_yaml("hello", &["curl"]));
    repo.write(
        "specs/web-tools.yaml",
        &spec_yaml("web-tools", &["no-such-tool"]),
    );
    repo.write("specs/gone.yaml", &spec_yaml("gone", &["less"]));
    repo.write("specs/notebook.yaml", &spec_yaml("notebook", &["libgl1"]));
    repo.commit("Add hello, web-tools, gone and notebook");
    sync(&repo, &data);
    repo.write(
        "specs/broken.yaml",
        "name: broken\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\npackages:\n  apt:\n    - curl jq\n  npm: [left-pad]\n",
    );
    repo.commit("Add broken");
    repo.remove("specs/gone.yaml");
    repo.commit("Remove gone");
    repo.write("specs/hello.yaml", &spec_yaml("hello", &["curl", "jq"]));
    let hello_sha = repo.commit("hello: add jq");
    sync(&repo, &data);
    let (ok_id, bad_id, image) = script_outcomes(&data).await;

    let server = Server::start(&[
        "--no-build",
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--poll-interval",
        "3600",
    ])
    .await;
    let base = server.base.clone();

    // ---- the spec list --------------------------------------------------------------
    b.goto(&format!("{base}/")).await;
    let rows = b.count("table.specs tbody tr").await;
    assert_eq!(rows, 4, "four live specs; the deleted one is hidden");
    let table = b.text("table.specs tbody").await;
    assert!(!table.contains("gone"), "{table}");
    let row = |name: &str| format!("table.specs tbody tr:has(a[href='/specs/{name}'])");
    assert_eq!(
        b.text(&format!("{} .c-status", row("hello"))).await,
        "succeeded"
    );
    assert_eq!(
        b.text(&format!("{} .c-image code", row("hello"))).await,
        image
    );
    assert_eq!(
        b.text(&format!("{} .c-rev", row("hello"))).await,
        format!("r2 · {}", &hello_sha[..7])
    );
    assert_eq!(
        b.text(&format!("{} .c-status", row("web-tools"))).await,
        "failed"
    );
    assert_eq!(
        b.text(&format!("{} .c-status", row("broken"))).await,
        "invalid"
    );
    let chips: Vec<(String, String)> = serde_json::from_value(
        b.js("return Array.from(document.querySelectorAll('.chip')).map(c => [c.querySelector('.chip-label').textContent, c.querySelector('.chip-n').textContent]);")
            .await,
    )
    .unwrap();
    for (label, n) in [
        ("all", "4"),
        ("queued", "1"),
        ("succeeded", "1"),
        ("failed", "1"),
        ("invalid", "1"),
    ] {
        assert!(
            chips.contains(&(label.to_string(), n.to_string())),
            "{chips:?} lacks {label} {n}"
        );
    }
    // The script shows the copy button (hidden without JavaScript).
    assert_eq!(b.count("button.copy:not([hidden])").await, 1);
    // Relative time with the exact time on hover.
    let title = b
        .js("return document.querySelector('td.c-time time').title;")
        .await;
    assert!(title.as_str().unwrap().ends_with(" UTC"), "{title}");
    assert_clean_console(&b, "/").await;
    b.screenshot("specs-1280", 1280, 1400).await;
    b.screenshot("specs-390", 390, 2000).await;

    // Filter (a plain GET form: works without JavaScript too).
    b.js("document.querySelector('input[name=q]').value = 'WEB'; document.querySelector('form.filter').submit(); return 1;")
        .await;
    wait_for(|| async { b.url().await.query() == Some("q=WEB") }).await;
    assert_eq!(b.count("table.specs tbody tr").await, 1);
    assert!(b.text("table.specs tbody").await.contains("web-tools"));
    // Deleted specs behind the toggle.
    b.goto(&format!("{base}/")).await;
    b.click("a.toggle").await;
    wait_for(|| async { b.url().await.query() == Some("deleted=1") }).await;
    assert_eq!(b.count("table.specs tbody tr").await, 5);
    assert!(
        b.text(&format!("{} .c-name", row("gone")))
            .await
            .to_lowercase()
            .contains("deleted")
    );
    // A status chip filters.
    b.goto(&format!("{base}/?status=failed")).await;
    assert_eq!(b.count("table.specs tbody tr").await, 1);
    assert_clean_console(&b, "/ (filters)").await;

    // ---- navigation: list → spec → job ------------------------------------------------
    b.goto(&format!("{base}/")).await;
    b.click("table.specs a[href='/specs/hello']").await;
    wait_for(|| async { b.url().await.path() == "/specs/hello" }).await;
    assert!(b.text("h1").await.starts_with("hello"));
    let yaml = b.text(".code.numbered").await;
    assert!(
        yaml.contains("baseImage: 127.0.0.1:5000/kiln/bookworm:minbase"),
        "{yaml}"
    );
    assert!(b.text("dl.facts").await.contains("specs/hello.yaml"));
    let jobs = b.text("table.jobs tbody").await;
    assert!(
        jobs.contains(&format!("#{ok_id}")) && jobs.contains("succeeded"),
        "{jobs}"
    );
    assert!(
        jobs.contains("cancelled"),
        "r1's job was superseded: {jobs}"
    );
    assert!(
        jobs.contains(&format!("r2 · {}", &hello_sha[..7])),
        "{jobs}"
    );
    assert!(
        jobs.contains("hello: add jq"),
        "commit subject shown: {jobs}"
    );
    assert_clean_console(&b, "/specs/hello").await;
    b.screenshot("spec-1280", 1280, 1600).await;
    b.screenshot("spec-390", 390, 2600).await;

    b.click(&format!("table.jobs a[href='/jobs/{ok_id}']"))
        .await;
    wait_for(|| async { b.url().await.path() == format!("/jobs/{ok_id}") }).await;
    assert_eq!(b.text("#job-status").await, "succeeded");
    let facts = b.text("dl.facts").await;
    assert!(
        facts.contains(&image) && facts.contains("sha256:4c7f1a0b"),
        "{facts}"
    );
    assert!(facts.contains("took 1 min 23 s"), "{facts}");
    assert_eq!(b.count("#log-lines .l").await, 9);
    let packages = b.text("#packages").await;
    assert!(
        packages.contains("jq") && packages.contains("1.6-2.1"),
        "{packages}"
    );
    assert!(
        b.text("#dockerfile")
            .await
            .contains("FROM 127.0.0.1:5000/kiln/bookworm:minbase")
    );
    assert_clean_console(&b, "job page").await;

    // ---- the failed job: escaping and ANSI -------------------------------------------
    b.goto(&format!("{base}/jobs/{bad_id}")).await;
    assert_no_alert(&b).await;
    assert_eq!(b.text("#job-status").await, "failed");
    assert!(
        b.text(".error-box")
            .await
            .contains("returned a non-zero code: 100")
    );
    let line = b.text("#L3 .t").await;
    assert_eq!(line, XSS_TEXT, "the log line renders as text");
    let injected = b
        .js("return document.querySelectorAll('#log-lines script, #log-lines img, #log-lines [onerror]').length;")
        .await;
    assert_eq!(injected, 0, "no element came from the log");
    let classes = b
        .js("return Array.from(document.querySelectorAll('#L3 .t span')).map(s => s.className);")
        .await;
    assert_eq!(
        classes,
        serde_json::json!(["a-f1 a-bold", "a-f2"]),
        "ANSI colours as classes"
    );
    let red = b
        .js("return getComputedStyle(document.querySelector('#L5 .t span')).color;")
        .await;
    assert_eq!(red, "rgb(255, 107, 107)", "the error line is red");
    assert_clean_console(&b, "failed job page").await;
    b.screenshot("job-1280", 1280, 2000).await;
    b.screenshot("job-390", 390, 3200).await;

    // The invalid spec shows its errors with positions.
    b.goto(&format!("{base}/specs/broken")).await;
    let errors = b.text(".diags").await;
    assert!(
        errors.contains("broken.yaml:5:7") && errors.contains("one-package-per-line"),
        "{errors}"
    );
    assert!(errors.contains("unknown-key"), "{errors}");
    assert_clean_console(&b, "/specs/broken").await;
    // Unknown pages are HTML 404s.
    b.goto(&format!("{base}/specs/nope")).await;
    assert!(b.text(".empty").await.contains("No spec is named"));
    assert_no_alert(&b).await;

    // ---- HTTP: headers, compression, caching, metrics, SSE of a finished job ----------
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{base}/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let h = resp.headers();
    assert_eq!(h["content-encoding"], "gzip");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "same-origin");
    let html = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script/style"
    );
    let css = html
        .split("href=\"")
        .find_map(|s| s.strip_prefix("/static/app.css?v="))
        .and_then(|s| s.split('"').next())
        .expect("versioned css link");
    let resp = http
        .get(format!("{base}/static/app.css?v={css}"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(resp.headers()["content-encoding"], "br");
    for (path, method) in [
        ("/", "POST"),
        ("/jobs/1", "POST"),
        ("/specs/hello", "DELETE"),
    ] {
        let status = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 405, "{method} {path} changes nothing");
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expect in [
        "kiln_jobs{status=\"succeeded\"} 1",
        "kiln_jobs{status=\"failed\"} 1",
        "kiln_queue_length 1",
        "kiln_build_duration_seconds_bucket{outcome=\"succeeded\",le=\"120\"} 1",
        "kiln_build_duration_seconds_count{outcome=\"failed\"} 1",
        "kiln_last_sync_success_timestamp_seconds ",
        "kiln_sync_error 0",
        "kiln_webhooks_total{outcome=\"rejected\"} 0",
        "kiln_sync_passes_total{outcome=\"failed\"} 0",
    ] {
        assert!(
            metrics.contains(expect),
            "metrics lack {expect}:\n{metrics}"
        );
    }
    // A finished job's event stream replays from Last-Event-ID and ends by itself.
    let text = tokio::time::timeout(Duration::from_secs(10), async {
        http.get(format!("{base}/jobs/{bad_id}/events"))
            .header("last-event-id", "2")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
    .expect("the stream of a finished job ends");
    assert!(
        text.contains("id: 3\ndata: Reading package lists..."),
        "{text}"
    );
    assert!(text.contains("event: end\ndata: failed"), "{text}");
    assert!(!text.contains("<script>"), "{text}");

    // The queued job's stream stays open (nothing builds here)… until the server stops:
    // a graceful shutdown must end open streams instead of waiting for them.
    let queued = server.get("/api/v1/specs/notebook/jobs").await[0]["id"]
        .as_u64()
        .unwrap();
    let mut open = http
        .get(format!("{base}/jobs/{queued}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.headers()["content-type"], "text/event-stream");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), open.chunk())
            .await
            .is_err(),
        "a queued job's stream waits"
    );
    drop(b);
    let mut server = server;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.child().id().to_string()])
        .status();
    let stop = Instant::now();
    loop {
        if server.child().try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(10),
            "kiln serve did not stop within 10 s with an event stream open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rest = tokio::time::timeout(Duration::from_secs(5), open.chunk()).await;
    assert!(
        matches!(rest, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ended with the server"
    );
    eprintln!(
        "dashboard pages test took {:?} (shutdown with an open stream: {:?})",
        started.elapsed(),
        stop.elapsed()
    );
}

/// Poll an async condition for up to 5 s.
async fn wait_for<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(Instant::now() < deadline, "condition not met within 5 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Live tail against a real build

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_log_tail_follows_a_running_build() {
    if !engine_available() {
        return;
    }
    let Some(b) = Browser::start().await else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write("live-tail.yaml", &spec_yaml("live-tail", &["curl"]));
    repo.commit("Add live-tail");
    // A CA bundle that differs per run (a PEM comment line) sits in the build context before
    // the apt step, so Docker's layer cache cannot skip the slow part: the build really runs.
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    let ca = tmp.path().join("ca.crt");
    std::fs::write(&ca, format!("# kiln dashboard test {}\n{bundle}", now_ms())).unwrap();
    let config = tmp.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "registry = '127.0.0.1:5000'\nca_bundle = '{}'\n",
            ca.display()
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        &config.display().to_string(),
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &tmp.path().join("data").display().to_string(),
        "--poll-interval",
        "3600",
    ])
    .await;
    let base = server.base.clone();

    // Wait until the job runs and has printed something.
    let deadline = Instant::now() + Duration::from_secs(120);
    let job_id = loop {
        let jobs = reqwest::get(format!("{base}/api/v1/specs/live-tail/jobs")).await;
        if let Ok(resp) = jobs
            && let Ok(list) = resp.json::<Value>().await
            && let Some(job) = list.get(0)
        {
            let id = job["id"].as_u64().unwrap();
            let detail = server.get(&format!("/api/v1/jobs/{id}")).await;
            assert!(
                !["failed", "cancelled"].contains(&detail["status"].as_str().unwrap()),
                "the build failed early: {detail}"
            );
            if detail["status"] == "running" && detail["log_lines"].as_u64().unwrap() >= 3 {
                break id;
            }
            assert!(
                detail["status"] != "succeeded",
                "the build finished before the page could open"
            );
        }
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    b.goto(&format!("{base}/jobs/{job_id}")).await;
    // Record when each line arrives in the page (browser clock = this machine's clock).
    b.js("window.__seen = {}; const log = document.getElementById('log-lines');
          new MutationObserver(ms => { const t = Date.now(); for (const m of ms) for (const n of m.addedNodes)
            if (n.id) window.__seen[n.id.slice(1)] = t; }).observe(log, {childList: true}); return 1;")
        .await;
    let first_on_page = b
        .js("const l = document.querySelectorAll('#log-lines .l'); return l.length ? +l[0].id.slice(1) : 1;")
        .await
        .as_u64()
        .unwrap();
    let on_load = b.count("#log-lines .l").await as u64 + first_on_page - 1;
    assert!(
        b.js("return !!document.getElementById('log-lines').dataset.live;")
            .await
            == true,
        "the page of a running job is live"
    );

    // Watch the API: when each line is first seen stored.
    let mut stored_at: BTreeMap<u64, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = on_load;
    let mut shot = false;
    let status = loop {
        let detail = server.get(&format!("/api/v1/jobs/{job_id}")).await;
        let total = detail["log_lines"].as_u64().unwrap();
        let t = now_ms();
        for n in seen + 1..=total {
            stored_at.insert(n, t);
        }
        seen = seen.max(total);
        if !shot && stored_at.len() >= 40 {
            // Mid-build, lines streaming in: the README's picture of a live log.
            b.js("const l = document.getElementById('log-lines'); l.scrollTop = l.scrollHeight; return 1;")
                .await;
            b.screenshot("job-live-1280", 1280, 1300).await;
            shot = true;
        }
        let status = detail["status"].as_str().unwrap().to_string();
        if status != "running" && status != "queued" {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the build did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert_eq!(status, "succeeded", "the build succeeds");
    // The stream ends with the job; the badge follows.
    wait_for(|| async { b.text("#job-status").await == "succeeded" }).await;
    wait_for(|| async { b.text("#live-state").await.starts_with("finished") }).await;

    let seen_at: BTreeMap<String, i64> =
        serde_json::from_value(b.js("return window.__seen;").await).unwrap();
    assert!(
        stored_at.len() >= 5,
        "at least a few lines must arrive after the page loaded (got {})",
        stored_at.len()
    );
    let mut worst = 0;
    for (n, t_stored) in &stored_at {
        let t_page = seen_at
            .get(&n.to_string())
            .unwrap_or_else(|| panic!("line {n} (stored after the page loaded) never appeared"));
        let delay = t_page - t_stored;
        worst = worst.max(delay);
        assert!(
            delay <= 1000,
            "line {n} appeared {delay} ms after it was stored"
        );
    }
    // The page now holds exactly the API's log from its first line on, in order.
    let api_log = reqwest::get(format!("{base}/api/v1/jobs/{job_id}/log"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let api_lines: Vec<&str> = api_log.lines().collect();
    let page_lines: Vec<String> = serde_json::from_value(
        b.js("return Array.from(document.querySelectorAll('#log-lines .l .t')).map(e => e.textContent);")
            .await,
    )
    .unwrap();
    let from = first_on_page as usize - 1;
    assert_eq!(
        page_lines.len(),
        api_lines.len() - from,
        "no line lost or doubled"
    );
    for (i, (page, api)) in page_lines.iter().zip(&api_lines[from..]).enumerate() {
        let plain: String = strip_ansi(api);
        assert_eq!(page, &plain, "line {}", from + i + 1);
    }
    assert_clean_console(&b, "live job page").await;
    eprintln!(
        "live tail: {} lines arrived live, worst delay {worst} ms; test took {:?}",
        stored_at.len(),
        started.elapsed()
    );
    drop(b);
    server.stop();
}

/// What the page shows for a line: escapes removed, the text after the last `\r`.
fn strip_ansi(line: &str) -> String {
    let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}
