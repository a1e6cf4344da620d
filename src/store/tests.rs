use super::*;
use crate::model::{CommitMeta, JobPlan};
use crate::reconcile::{self, Observation, ObservedFile, ObservedStep, Settings};

/// Open a data dir that a handle dropped a moment ago may still hold: sled releases its
/// file lock only when its background flusher has stopped, shortly after the drop.
fn open_again(path: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

fn commit(n: u8) -> CommitMeta {
    CommitMeta {
        sha: format!("{n:02x}").repeat(20),
        author: "A <a@x>".into(),
        committed_at: 1_700_000_000 + i64::from(n),
        subject: format!("c{n}"),
    }
}

fn step(n: u8, name: &str, apt: &str) -> ObservedStep {
    let bytes = format!("name: {name}\nbaseImage: debian:bookworm\npackages:\n  apt: [{apt}]\n")
        .into_bytes();
    ObservedStep {
        commit: commit(n),
        specs: vec![Observation {
            name: name.into(),
            files: vec![ObservedFile {
                path: format!("{name}.yaml"),
                bytes,
                unreadable: None,
            }],
        }],
    }
}

async fn pass(store: &Store, steps: &[ObservedStep]) -> Vec<JobId> {
    let plan = reconcile::reconcile(store, steps, &Settings::default()).unwrap();
    let last = steps
        .last()
        .map(|s| s.commit.sha.clone())
        .unwrap_or_default();
    store.apply(&plan, &last).await.unwrap()
}

#[tokio::test]
async fn apply_records_everything_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_again(dir.path());
        let ids = pass(&store, &[step(1, "a", "curl"), step(2, "a", "jq")]).await;
        assert_eq!(ids.len(), 2);
        let jobs = store.jobs_of_spec("a", 0, 10).unwrap();
        assert_eq!(
            jobs.iter()
                .map(|j| (j.revision, j.status))
                .collect::<Vec<_>>(),
            vec![(2, JobStatus::Queued), (1, JobStatus::Cancelled)]
        );
        assert_eq!(jobs[1].error.as_deref(), Some("superseded by r2"));
        assert_eq!(store.active_jobs().unwrap().len(), 1);
        assert_eq!(store.spec("a").unwrap().unwrap().latest_job, Some(ids[1]));
        assert_eq!(store.paths_of("a").unwrap(), vec!["a.yaml"]);
    }
    let store = open_again(dir.path());
    assert_eq!(store.last_commit().unwrap(), Some(commit(2).sha));
    assert_eq!(store.revisions("a").unwrap().len(), 2);
    // Processing the same commits again creates nothing.
    let again = reconcile::reconcile(&store, &[step(2, "a", "jq")], &Settings::default()).unwrap();
    assert!(again.is_empty(), "{again:?}");
}

/// A record that cannot be read stops reconcile; it is never taken for "nothing stored"
/// (which would start the spec over at r1 and forget its running job).
#[tokio::test]
async fn an_unreadable_record_stops_reconcile_instead_of_renumbering() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_again(dir.path());
    pass(&store, &[step(1, "a", "curl")]).await;
    let good = store.specs.get("a").unwrap().unwrap();
    store.specs.insert("a", &[0xff, 0xff, 0xff][..]).unwrap();
    let err = reconcile::reconcile(&store, &[step(2, "a", "jq")], &Settings::default())
        .expect_err("a corrupt spec record must fail the pass");
    assert!(
        matches!(err, StoreError::Corrupt { tree: "specs", .. }),
        "{err}"
    );
    // Active jobs are read through the same fallible path.
    store.specs.insert("a", good).unwrap();
    let active = store.active.iter().keys().next().unwrap().unwrap();
    let job_id = &active[active.len() - 8..];
    store.jobs.insert(job_id, &[0xff][..]).unwrap();
    assert!(
        reconcile::reconcile(&store, &[step(2, "a", "jq")], &Settings::default()).is_err(),
        "a corrupt active job must fail the pass"
    );
}

#[tokio::test]
async fn a_second_open_fails_fast_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let err = Store::open(dir.path())
        .err()
        .expect("second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another Kiln process"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn new_job_supersedes_the_active_one_and_built_images_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_again(dir.path());
    let first = pass(&store, &[step(1, "a", "curl")]).await[0];
    let mut job = store.job(first).unwrap().unwrap();
    job.status = JobStatus::Succeeded;
    job.image = Some("reg/a:r1-0101010".into());
    store.update_job(&job).await.unwrap();
    assert_eq!(
        store.spec("a").unwrap().unwrap().latest_image.as_deref(),
        Some("reg/a:r1-0101010")
    );

    let second = pass(&store, &[step(2, "a", "jq")]).await[0];
    let third_plan =
        reconcile::reconcile(&store, &[step(3, "a", "curl")], &Settings::default()).unwrap();
    assert_eq!(third_plan.jobs[0].plan, JobPlan::Reuse { from: first });
    assert_eq!(third_plan.cancellations[0].job, second);
    store.apply(&third_plan, &commit(3).sha).await.unwrap();
    assert_eq!(
        store.job(second).unwrap().unwrap().status,
        JobStatus::Cancelled
    );
}

#[tokio::test]
async fn logs_append_in_order_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_again(dir.path());
    let mut events = store.subscribe();
    let lines: Vec<LogLine> = (0..250)
        .map(|i| LogLine {
            at_ms: i,
            text: format!("line {i}"),
        })
        .collect();
    assert_eq!(store.append_log(7, &lines[..100]).await.unwrap(), 100);
    assert_eq!(store.append_log(7, &lines[100..]).await.unwrap(), 250);
    store.append_log(8, &lines[..3]).await.unwrap();
    assert_eq!(store.log_len(7).unwrap(), 250);
    let page = store.log_lines(7, 240, 100).unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(
        page[0],
        (
            240,
            LogLine {
                at_ms: 240,
                text: "line 240".into()
            }
        )
    );
    assert_eq!(
        events.recv().await.unwrap(),
        StoreEvent::Log {
            job: 7,
            next_line: 100
        }
    );
    store.delete_log(7).unwrap();
    assert_eq!(store.log_len(7).unwrap(), 0);
    assert_eq!(store.log_len(8).unwrap(), 3);
}

fn numbered(range: std::ops::Range<i64>) -> Vec<LogLine> {
    range
        .map(|i| LogLine {
            at_ms: i,
            text: format!("line {i} {}", "x".repeat((i % 50) as usize)),
        })
        .collect()
}

/// Appends of every size (one line at a time as in a live build, odd sizes, batches larger
/// than a chunk, lines large enough to end a chunk by bytes) read back exactly, from any
/// offset and in any page size.
#[tokio::test]
async fn chunked_logs_read_back_exactly_across_chunk_borders() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_again(dir.path());
    let mut expected = Vec::new();
    let mut next = 0i64;
    for size in [1, 1, 1, 7, 993, 1, 2500, 13, 1000, 1] {
        let lines = numbered(next..next + size);
        next += size;
        let len = store.append_log(3, &lines).await.unwrap();
        expected.extend(lines);
        assert_eq!(len, expected.len() as u64);
        assert_eq!(store.log_len(3).unwrap(), len);
    }
    let big: Vec<LogLine> = (0..5)
        .map(|i| LogLine {
            at_ms: i,
            text: format!("{i}").repeat(60_000),
        })
        .collect();
    store.append_log(3, &big).await.unwrap();
    expected.extend(big);
    let total = expected.len() as u64;
    for from in [
        0u64,
        1,
        2,
        3,
        999,
        1000,
        1001,
        3499,
        3500,
        4512,
        total - 5,
        total - 1,
        total,
    ] {
        for limit in [1usize, 7, 1000, 2000, 10_000] {
            let page = store.log_lines(3, from, limit).unwrap();
            let want: Vec<(u64, LogLine)> = (from..)
                .zip(expected.iter().skip(from as usize).cloned())
                .take(limit)
                .collect();
            assert_eq!(page, want, "from {from} limit {limit}");
        }
    }
    // Far fewer keys than lines.
    assert!(
        store.logs.len() < expected.len() / 100,
        "{} keys",
        store.logs.len()
    );
    assert_eq!(store.log_lines(3, total + 10, 10).unwrap(), vec![]);
    assert_eq!(store.log_len(4).unwrap(), 0);
}

/// A schema-2 data dir (one key per log line in `logs`) opens as schema 3 with every line in
/// chunks, and the old tree gone.
#[tokio::test]
async fn schema_2_logs_are_migrated_into_chunks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert(SCHEMA, &2u32.to_be_bytes()).unwrap();
        let old = db.open_tree("logs").unwrap();
        for (job, count) in [(1u64, 2500i64), (2, 3), (9, 1)] {
            for line in numbered(0..count) {
                old.insert(
                    logs::key(job, line.at_ms as u64),
                    codec::encode(&line).unwrap(),
                )
                .unwrap();
            }
        }
        db.flush().unwrap();
    }
    let store = open_again(dir.path());
    assert_eq!(store.log_len(1).unwrap(), 2500);
    assert_eq!(store.log_len(2).unwrap(), 3);
    assert_eq!(store.log_len(9).unwrap(), 1);
    assert_eq!(
        store.log_lines(1, 0, 5000).unwrap(),
        (0u64..).zip(numbered(0..2500)).collect::<Vec<_>>()
    );
    assert_eq!(
        store.log_lines(2, 1, 10).unwrap(),
        (1u64..).zip(numbered(1..3)).collect::<Vec<_>>()
    );
    assert!(!store.db.tree_names().iter().any(|n| n.as_ref() == b"logs"));
    drop(store);
    // Opening again is a plain open of schema 3.
    let store = open_again(dir.path());
    assert_eq!(store.log_len(1).unwrap(), 2500);
}

#[tokio::test]
async fn schema_mismatch_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_again(dir.path());
        store.meta.insert(SCHEMA, &99u32.to_be_bytes()).unwrap();
        store.flush().await.unwrap();
    }
    let err = Store::open(dir.path()).err().expect("must refuse");
    let text = err.to_string();
    assert!(text.contains("schema version 99"), "{text}");
    assert!(
        text.contains(&format!("uses schema version {SCHEMA_VERSION}")),
        "{text}"
    );
    assert!(text.contains("downgrades are not supported"), "{text}");
    assert!(text.contains("docs/operations.md"), "{text}");

    // An older data dir: the advice is the upgrade path.
    {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open_again(dir.path());
            store.meta.insert(SCHEMA, &1u32.to_be_bytes()).unwrap();
            store.flush().await.unwrap();
        }
        let text = Store::open(dir.path())
            .err()
            .expect("must refuse")
            .to_string();
        assert!(text.contains("schema version 1,"), "{text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(
            text.contains("`kiln backup` with that old binary"),
            "{text}"
        );
        assert!(text.contains("empty --data-dir"), "{text}");
    }
}

#[tokio::test]
async fn an_interrupted_compaction_is_refused_not_replaced_by_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_again(dir.path()));
    std::fs::rename(dir.path().join(DB_DIR), dir.path().join(PRE_COMPACT_DIR)).unwrap();
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(
        matches!(err, StoreError::InterruptedCompaction { .. }),
        "{err}"
    );
    assert!(!dir.path().join(DB_DIR).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_job_updates_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_again(dir.path());
    let steps: Vec<ObservedStep> = (0..16u8)
        .map(|i| {
            let mut s = step(1, &format!("s{i}"), "curl");
            s.commit = commit(1);
            s
        })
        .collect();
    let all: Vec<_> = steps.iter().flat_map(|s| s.specs.clone()).collect();
    let ids = pass(
        &store,
        &[ObservedStep {
            commit: commit(1),
            specs: all,
        }],
    )
    .await;
    assert_eq!(ids.len(), 16);
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut job = store.job(id).unwrap().unwrap();
            for status in [JobStatus::Running, JobStatus::Succeeded] {
                job.status = status;
                job = store.update_job(&job).await.unwrap();
            }
        }));
    }
    let all = futures_util::future::join_all(tasks);
    tokio::time::timeout(std::time::Duration::from_secs(30), all)
        .await
        .expect("concurrent updates finish");
    for id in ids {
        assert_eq!(store.job(id).unwrap().unwrap().status, JobStatus::Succeeded);
    }
    assert!(store.active_jobs().unwrap().is_empty());
}

#[tokio::test]
async fn appended_lines_are_broadcast_once_numbered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_again(dir.path());
    let mut lines = store.subscribe_logs();
    store.append_log(3, &numbered(0..5)).await.unwrap();
    store.append_log(3, &numbered(5..7)).await.unwrap();
    let first = lines.recv().await.unwrap();
    assert_eq!((first.job, first.first_line, first.end()), (3, 0, 5));
    let second = lines.recv().await.unwrap();
    assert_eq!((second.first_line, second.end()), (5, 7));
    assert_eq!(second.lines, numbered(5..7));
    // Nothing appended, nothing sent.
    assert_eq!(store.append_log(3, &[]).await.unwrap(), 7);
    assert!(lines.try_recv().is_err());
}

/// `/healthz` reads the last commit and the sync status: they must not wait for sled, whose
/// transactions hold a lock every read waits for. A transaction is held open on another
/// thread while they are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_reads_do_not_wait_for_a_running_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_again(dir.path());
    pass(&store, &[step(1, "a", "curl")]).await;
    store
        .set_sync_status(&SyncStatus {
            last_attempt: Some(5),
            last_success: Some(5),
            error: None,
        })
        .await
        .unwrap();
    let (inside_tx, inside_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let meta = store.meta.clone();
        std::thread::spawn(move || {
            let release_rx = std::sync::Mutex::new(release_rx);
            meta.transaction(|tx| {
                tx.insert(b"held".as_slice(), b"1".as_slice())?;
                let _ = inside_tx.send(());
                let _ = release_rx.lock().map(|rx| rx.recv());
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .unwrap();
        })
    };
    inside_rx.recv().unwrap();
    assert_eq!(store.last_commit().unwrap(), Some(commit(1).sha));
    assert_eq!(store.sync_status().unwrap().last_success, Some(5));
    release_tx.send(()).unwrap();
    writer.join().unwrap();

    // And they survive a reopen (read back from sled at open).
    drop(store);
    let store = open_again(dir.path());
    assert_eq!(store.last_commit().unwrap(), Some(commit(1).sha));
    assert_eq!(store.sync_status().unwrap().last_attempt, Some(5));
}
