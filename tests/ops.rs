//! Operations: retention (`kiln gc`), backup and restore, against real `kiln` processes.
//! The backup taken during a running build needs the Docker Engine and the registry of
//! `scripts/dev-env.sh` (with `CI=true` a missing Engine fails it).

mod common;

use common::{
    GitRepo, Server, engine_available, kiln, run_step_started, slow_uncached_spec, spec,
    wait_until_building,
};
use kiln::model::{JobPlan, JobStatus};
use kiln::reconcile::{NewJob, Plan};
use kiln::store::{LogLine, Store};
use std::path::Path;
use std::time::{Duration, Instant};

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// A repository with one spec, synced without building: a real spec record and one queued
/// job, as `kiln serve` would leave them.
fn synced_repo(dir: &Path, name: &str) -> GitRepo {
    let mut repo = GitRepo::init(&dir.join("repo"));
    repo.write(&format!("{name}.yaml"), &spec(name, &["jq"]));
    repo.commit("add");
    let (code, out, err) = kiln(&[
        "sync",
        "--no-build",
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &dir.join("data").display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    repo
}

fn new_job(name: &str, revision: u64, cancelled: bool) -> NewJob {
    NewJob {
        spec: name.into(),
        revision,
        commit: format!("{revision:040x}"),
        digest: format!("sha256:{revision:064x}"),
        plan: JobPlan::Build,
        dockerfile: "FROM scratch\n".into(),
        cancelled: cancelled.then(|| "superseded".into()),
    }
}

fn log_text(job: u64, line: u64) -> String {
    format!(
        "job {job} line {line}: Unpacking libfoo-dev (1.2.{line}) over (1.2.{line}) {}",
        "·".repeat(60)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_prunes_a_thousand_jobs_and_their_logs_and_compaction_shrinks_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "gc-history";
    let repo = synced_repo(tmp.path(), name);
    let data = tmp.path().join("data");
    const OLD: u64 = 1_200;
    const KEEP: usize = 50;
    const LINES: u64 = 60;

    // History as a long-lived Kiln accumulates it: one old job that produced the image users
    // still pull, then 1,200 finished jobs, each with a log.
    let (image_job, history) = {
        let store = Store::open(&data).unwrap();
        let head = store.last_commit().unwrap().unwrap();
        let image_job = store
            .apply(
                &Plan {
                    jobs: vec![new_job(name, 1000, false)],
                    ..Plan::default()
                },
                &head,
            )
            .await
            .unwrap()[0];
        let mut job = store.job(image_job).unwrap().unwrap();
        job.status = JobStatus::Succeeded;
        job.image = Some(format!("127.0.0.1:5000/{name}:r1000-0000000"));
        job.finished_at = Some(job.created_at);
        store.update_job(&job).await.unwrap();
        let plan = Plan {
            jobs: (0..OLD).map(|i| new_job(name, 2000 + i, true)).collect(),
            ..Plan::default()
        };
        let history = store.apply(&plan, &head).await.unwrap();
        for &id in history.iter().chain([&image_job]) {
            let lines: Vec<LogLine> = (0..LINES)
                .map(|l| LogLine {
                    at_ms: l as i64,
                    text: log_text(id, l),
                })
                .collect();
            store.append_log(id, &lines).await.unwrap();
        }
        store.flush().await.unwrap();
        (image_job, history)
    };
    let total_jobs = OLD as usize + 2; // + the reconciled (queued) job + the image job
    let before = kiln::store::gc::disk_usage(&data).unwrap();

    let data_arg = data.display().to_string();
    let started = Instant::now();
    let (code, out, err) = kiln(&[
        "gc",
        "--data-dir",
        &data_arg,
        "--max-jobs-per-spec",
        &KEEP.to_string(),
    ]);
    let gc_ms = started.elapsed().as_millis();
    assert_eq!(code, 0, "{out}{err}");
    // Beyond the 50 newest, two are protected: the image job and the spec's latest job (the
    // queued one from the sync, older than the history added after it).
    let pruned = total_jobs - KEEP - 2;
    assert!(
        out.contains(&format!("{pruned} job(s) pruned")),
        "expected {pruned} pruned: {out}"
    );
    assert!(pruned >= 1_000);
    assert!(
        out.contains(&format!("{} log line(s)", pruned as u64 * LINES)),
        "{out}"
    );
    let after_gc = kiln::store::gc::disk_usage(&data).unwrap();

    let started = Instant::now();
    let (code, out2, err) = kiln(&[
        "gc",
        "--data-dir",
        &data_arg,
        "--max-jobs-per-spec",
        &KEEP.to_string(),
        "--compact",
    ]);
    let compact_ms = started.elapsed().as_millis();
    assert_eq!(code, 0, "{out2}{err}");
    assert!(
        out2.contains("0 job(s) pruned"),
        "a second pass finds nothing: {out2}"
    );
    let after_compact = kiln::store::gc::disk_usage(&data).unwrap();
    eprintln!(
        "gc of {pruned} jobs / {} log lines: {gc_ms} ms (process); data dir {:.1} MB -> {:.1} MB after gc, {:.1} MB after --compact ({compact_ms} ms)\n{out}{out2}",
        pruned as u64 * LINES,
        mb(before),
        mb(after_gc),
        mb(after_compact)
    );
    assert!(
        after_compact < before / 2,
        "compaction gives the pruned space back: {before} -> {after_compact}"
    );

    // What a user sees afterwards.
    let server = Server::observe(&repo.dir, &data).await;
    let jobs = server.jobs(name).await;
    assert_eq!(jobs.len(), KEEP + 2, "{} jobs kept", jobs.len());
    let ids: Vec<u64> = jobs.iter().map(|j| j["id"].as_u64().unwrap()).collect();
    assert!(ids.contains(&image_job), "the latest image's job is kept");
    assert!(
        jobs.iter().any(|j| j["status"] == "queued"),
        "the spec's latest (queued) job is kept"
    );
    let spec = server.get(&format!("/api/v1/specs/{name}")).await;
    assert_eq!(
        spec["image"],
        format!("127.0.0.1:5000/{name}:r1000-0000000")
    );
    // The newest history jobs are intact, logs and all.
    for &id in history.iter().rev().take(KEEP) {
        assert!(ids.contains(&id), "job {id} kept");
    }
    let newest = history[history.len() - 1];
    let log = reqwest::get(format!("{}/api/v1/jobs/{newest}/log", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expected: String = (0..LINES).map(|l| log_text(newest, l) + "\n").collect();
    assert_eq!(log, expected);
    let log = reqwest::get(format!("{}/api/v1/jobs/{image_job}/log", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(log.lines().count() as u64, LINES);
    // Pruned jobs are gone, logs included.
    for &id in &history[..history.len() - KEEP] {
        assert!(!ids.contains(&id));
    }
    for id in [history[0], history[500], history[history.len() - KEEP - 1]] {
        assert_eq!(server.status(&format!("/api/v1/jobs/{id}")).await, 404);
        assert_eq!(server.status(&format!("/api/v1/jobs/{id}/log")).await, 404);
    }
    server.stop();
    let store = Store::open(&data).unwrap();
    assert_eq!(store.log_len(history[0]).unwrap(), 0);
    assert!(store.log_lines(history[0], 0, 10).unwrap().is_empty());
}

#[tokio::test]
async fn backup_of_a_stopped_data_dir_restores_and_bad_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "ops-backup";
    let repo = synced_repo(tmp.path(), name);
    let data = tmp.path().join("data");
    let file = tmp.path().join("kiln.kbk");
    let (code, out, err) = kiln(&[
        "backup",
        &file.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 job(s)"), "{out}");
    let bytes = std::fs::read(&file).unwrap();

    // Truncated: an interrupted copy.
    let cut = tmp.path().join("cut.kbk");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let target = tmp.path().join("from-cut");
    let (code, out, err) = kiln(&[
        "restore",
        &cut.display().to_string(),
        "--data-dir",
        &target.display().to_string(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("truncated"), "{err}");
    assert!(
        !target.join("db").exists(),
        "nothing restored from a truncated file"
    );

    // Into a data dir that is in use or has content.
    let (code, _, err) = kiln(&[
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("is not empty"), "{err}");

    // A good restore serves the same thing.
    let restored = tmp.path().join("restored");
    let (code, out, err) = kiln(&[
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &restored.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let a = Server::observe(&repo.dir, &data).await;
    let b = Server::observe(&repo.dir, &restored).await;
    assert_eq!(a.get("/api/v1/specs").await, b.get("/api/v1/specs").await);
    assert_eq!(a.jobs(name).await, b.jobs(name).await);
    a.stop();
    b.stop();
}

#[tokio::test]
async fn a_backup_taken_during_a_running_build_restores_into_a_fresh_kiln() {
    if !engine_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fast = unique("ops-fast");
    let slow = unique("ops-slow");
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(&format!("{fast}.yaml"), &spec(&fast, &["jq"]));
    repo.write(&format!("{slow}.yaml"), &slow_uncached_spec(&slow));
    repo.commit("two images");
    let cfg = tmp.path().join("kiln.toml");
    std::fs::write(&cfg, "registry = '127.0.0.1:5000'\n").unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&[
        "--config",
        &cfg.display().to_string(),
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--poll-interval",
        "3600",
    ])
    .await;
    let done = server
        .wait_for(&fast, 1, Duration::from_secs(300), |j| {
            j["status"] == "succeeded" || j["status"] == "failed"
        })
        .await;
    assert_eq!(done["status"], "succeeded", "{}", server.log(&done).await);
    wait_until_building(&server, &slow).await;

    // The data dir is locked by the running Kiln: `kiln backup` asks it at the config's
    // `listen` address.
    let ops_cfg = tmp.path().join("ops.toml");
    std::fs::write(
        &ops_cfg,
        format!(
            "data_dir = '{}'\nlisten = '{}'\n",
            data.display(),
            server.base.trim_start_matches("http://")
        ),
    )
    .unwrap();
    let file = tmp.path().join("during-build.kbk");
    let started = Instant::now();
    let (code, out, err) = kiln(&[
        "backup",
        &file.display().to_string(),
        "--config",
        &ops_cfg.display().to_string(),
    ]);
    let backup_ms = started.elapsed().as_millis();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&server.base), "went through the server: {out}");
    let during = server.job(&slow, 1).await.unwrap();
    assert_eq!(during["status"], "running", "the build was still running");
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!("backup during a build: {size} bytes in {backup_ms} ms: {out}");

    // What the running Kiln serves now, for the jobs that will not change any more.
    let specs_before = server.get("/api/v1/specs").await;
    let fast_jobs = server.jobs(&fast).await;
    let fast_log = server.log(&fast_jobs[0]).await;
    let slow_log_later = server.log(&during).await;
    drop(server);

    let restored = tmp.path().join("restored");
    let (code, out, err) = kiln(&[
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &restored.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let fresh = Server::observe(&repo.dir, &restored).await;
    let specs_after = fresh.get("/api/v1/specs").await;
    let names = |v: &serde_json::Value| -> Vec<(String, String, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["path"].as_str().unwrap().to_string(),
                    s["revision"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(names(&specs_after), names(&specs_before));
    let fast_after = specs_after
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == fast.as_str())
        .unwrap();
    let fast_before = specs_before
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == fast.as_str())
        .unwrap();
    assert_eq!(fast_after, fast_before);
    assert_eq!(fresh.jobs(&fast).await, fast_jobs);
    assert_eq!(fresh.log(&fast_jobs[0]).await, fast_log);
    assert_eq!(
        fresh
            .status(&format!("/api/v1/jobs/{}/packages", fast_jobs[0]["id"]))
            .await,
        200
    );
    // The interrupted build: re-queued at start, its log a prefix of what the first Kiln
    // had logged by the end, plus the line saying why.
    let slow_job = fresh.job(&slow, 1).await.unwrap();
    assert_eq!(slow_job["status"], "queued", "{slow_job}");
    assert_eq!(slow_job["id"], during["id"]);
    let slow_log = fresh.log(&slow_job).await;
    let (logged, last) = slow_log
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", slow_log.trim_end()));
    assert!(last.contains("re-queued"), "{last}");
    assert!(
        slow_log_later.starts_with(logged),
        "restored log is a prefix of the original"
    );
    assert!(
        run_step_started(logged),
        "lines logged before the backup are kept"
    );
    fresh.stop();
}

#[tokio::test]
async fn serve_runs_a_retention_pass_soon_after_start_and_counts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "ops-serve-gc";
    let repo = synced_repo(tmp.path(), name);
    let data = tmp.path().join("data");
    {
        let store = Store::open(&data).unwrap();
        let head = store.last_commit().unwrap().unwrap();
        let plan = Plan {
            jobs: (0..200).map(|i| new_job(name, 10 + i, true)).collect(),
            ..Plan::default()
        };
        store.apply(&plan, &head).await.unwrap();
        store.flush().await.unwrap();
    }
    let server = Server::start(&[
        "--no-build",
        "--repo",
        &repo.dir.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
        "--poll-interval",
        "3600",
        "--max-jobs-per-spec",
        "10",
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let text = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("kiln_gc_passes_total 1") {
            break text;
        }
        assert!(Instant::now() < deadline, "no retention pass: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // 201 jobs: the 10 newest and the spec's latest (queued) job stay.
    assert!(
        metrics.contains("kiln_gc_pruned_total{what=\"jobs\"} 190"),
        "{metrics}"
    );
    assert_eq!(server.jobs(name).await.len(), 11);
    assert!(
        metrics.contains("kiln_jobs{status=\"cancelled\"} 10"),
        "{metrics}"
    );
    server.stop();
}
