//! Commits become revisions and jobs exactly as docs/design.md §3 says: a scripted history in a real
//! git repository, one `kiln sync --no-build` process per phase (so every phase is also a
//! restart), and every assertion made through the JSON API of a running `kiln serve`. The same
//! script runs against a local work tree and against a `file://` mirror.

mod common;

use common::{GitRepo, Server, kiln, spec};
use serde_json::Value;
use std::collections::BTreeMap;

/// Which repository Kiln reads.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Local,
    Mirror,
}

struct Scenario {
    repo: GitRepo,
    bare: std::path::PathBuf,
    data: std::path::PathBuf,
    mode: Mode,
}

impl Scenario {
    fn repo_arg(&self) -> String {
        match self.mode {
            Mode::Local => self.repo.dir.display().to_string(),
            Mode::Mirror => format!("file://{}", self.bare.display()),
        }
    }

    /// Publish (mirror mode: force-push to the bare repo) and run one `kiln sync` pass.
    fn sync(&self) -> String {
        if self.mode == Mode::Mirror {
            self.repo.git(&[
                "push",
                "-q",
                "--force",
                &self.bare.display().to_string(),
                "main",
            ]);
        }
        let (code, out, err) = kiln(&[
            "sync",
            "--no-build",
            "--repo",
            &self.repo_arg(),
            "--data-dir",
            &self.data.display().to_string(),
        ]);
        assert_eq!(code, 0, "kiln sync failed: {out}{err}");
        out
    }
}

fn by_revision(jobs: &Value) -> BTreeMap<u64, (String, Option<String>)> {
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["revision"].as_u64().unwrap(),
                (
                    j["status"].as_str().unwrap().to_string(),
                    j["error"].as_str().map(str::to_string),
                ),
            )
        })
        .collect()
}

fn revision_numbers(spec: &Value) -> Vec<u64> {
    spec["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_u64().unwrap())
        .collect()
}

fn revision(spec: &Value, n: u64) -> &Value {
    spec["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["number"] == n)
        .unwrap()
}

async fn scripted_history(mode: Mode) {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Scenario {
        repo: GitRepo::init(&tmp.path().join("work")),
        bare: tmp.path().join("images.git"),
        data: tmp.path().join("data"),
        mode,
    };
    if mode == Mode::Mirror {
        s.repo.git(&[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &s.bare.display().to_string(),
        ]);
    }
    let r = &mut s.repo;

    // P1: three specs, plus a README that is not a spec.
    r.write("README.md", "images\n");
    r.write("a.yaml", &spec("a", &["curl"]));
    r.write("b.yaml", &spec("b", &["jq"]));
    r.write("c.yaml", &spec("c", &["git"]));
    let c1 = r.commit("add a, b, c");
    s.sync();

    // P2: edit a; comment-only edit of b (no revision).
    let r = &mut s.repo;
    r.write("a.yaml", &spec("a", &["curl", "less"]));
    r.commit("a: add less");
    r.write("b.yaml", &format!("# JSON tools\n{}", spec("b", &["jq"])));
    r.commit("b: comment");
    s.sync();

    // P3: rename c.yaml → d.yaml (a delete plus a create).
    let r = &mut s.repo;
    r.git(&["mv", "c.yaml", "d.yaml"]);
    r.write("d.yaml", &spec("d", &["git"]));
    let rename = r.commit("rename c to d");
    s.sync();

    // P4: delete a, then re-add it with its r2 content.
    let r = &mut s.repo;
    r.remove("a.yaml");
    let delete_a = r.commit("drop a");
    s.sync();
    let r = &mut s.repo;
    r.write("a.yaml", &spec("a", &["curl", "less"]));
    r.commit("bring a back");
    s.sync();

    // P5: edit b and revert it in one push.
    let r = &mut s.repo;
    r.write("b.yaml", &spec("b", &["jq", "wget"]));
    r.commit("b: add wget");
    r.write("b.yaml", &spec("b", &["jq"]));
    r.commit("Revert b: add wget");
    s.sync();

    // P6: a merge commit of a branch touching b and d: one step.
    let r = &mut s.repo;
    r.git(&["checkout", "-q", "-b", "feature"]);
    r.write("b.yaml", &spec("b", &["jq", "tree"]));
    r.commit("b: add tree");
    r.write("d.yaml", &spec("d", &["git", "make"]));
    r.commit("d: add make");
    r.git(&["checkout", "-q", "main"]);
    r.tick();
    r.git(&["merge", "-q", "--no-ff", "-m", "Merge feature", "feature"]);
    let merge = r.head();
    s.sync();

    // P7: an invalid edit, then its fix.
    let r = &mut s.repo;
    r.write("d.yaml", "name: d\nbaseImage: 127.0.0.1:5000/kiln/bookworm:minbase\npackages:\n  apt: |\n    git make\n");
    r.commit("d: oops");
    s.sync();
    let r = &mut s.repo;
    r.write("d.yaml", &spec("d", &["git", "make", "zip"]));
    r.commit("d: fix");
    s.sync();

    // P8: two commits, seen by Kiln, then dropped by a force-push.
    let r = &mut s.repo;
    r.write("a.yaml", &spec("a", &["curl", "less", "htop"]));
    r.commit("a: htop");
    r.write("b.yaml", &spec("b", &["jq", "tree", "file"]));
    r.commit("b: file");
    s.sync();
    let r = &mut s.repo;
    r.git(&["reset", "-q", "--hard", "HEAD~2"]);
    r.write("a.yaml", &spec("a", &["curl", "less", "vim"]));
    let rewritten = r.commit("a: vim instead");
    s.sync();

    // A pass with nothing new changes nothing.
    assert!(s.sync().contains("0 step(s), 0 revision(s), 0 job(s)"));

    let server = Server::in_process(&[
        "--no-build",
        "--repo",
        &s.repo_arg(),
        "--data-dir",
        &s.data.display().to_string(),
        "--poll-interval",
        "3600",
    ])
    .await;

    // The spec list.
    let specs = server.get("/api/v1/specs").await;
    let summary: BTreeMap<String, (String, bool, u64)> = specs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                (
                    s["status"].as_str().unwrap().into(),
                    s["deleted"].as_bool().unwrap(),
                    s["revision"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(summary["a"], ("queued".into(), false, 5));
    assert_eq!(summary["b"], ("queued".into(), false, 6));
    assert!(summary["c"].1, "c was renamed away");
    assert_eq!(summary["d"], ("queued".into(), false, 4));
    assert_eq!(summary.len(), 4);

    // a: r1 add, r2 edit, (deleted), r3 re-added, r4 htop (dropped later), r5 vim after rewrite.
    let a = server.get("/api/v1/specs/a").await;
    assert_eq!(revision_numbers(&a), vec![1, 2, 3, 4, 5]);
    assert_eq!(revision(&a, 1)["commit"], c1.as_str());
    assert_eq!(
        revision(&a, 2)["digest"],
        revision(&a, 3)["digest"],
        "re-created with the same content"
    );
    assert_eq!(revision(&a, 5)["commit"], rewritten.as_str());
    assert_eq!(revision(&a, 1)["author"], "Ada Admin <ada@example.com>");
    let a_jobs = by_revision(&server.get("/api/v1/specs/a/jobs").await);
    assert_eq!(
        a_jobs[&1],
        ("cancelled".into(), Some("superseded by r2".into()))
    );
    assert_eq!(
        a_jobs[&2],
        (
            "cancelled".into(),
            Some(format!("spec deleted in {}", &delete_a[..7]))
        )
    );
    assert_eq!(a_jobs[&3].1.as_deref(), Some("superseded by r4"));
    assert_eq!(
        a_jobs[&4],
        ("cancelled".into(), Some("superseded by r5".into()))
    );
    assert_eq!(a_jobs[&5], ("queued".into(), None));

    // b: the comment edit made no revision; edit+revert in one pass: r2 cancelled, r3 built,
    // r3 has r1's digest; merge → r4; r5 dropped by the force-push; r6 = r4's content again.
    let b = server.get("/api/v1/specs/b").await;
    assert_eq!(revision_numbers(&b), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(revision(&b, 3)["digest"], revision(&b, 1)["digest"]);
    assert_eq!(revision(&b, 4)["commit"], merge.as_str());
    assert_eq!(revision(&b, 6)["digest"], revision(&b, 4)["digest"]);
    assert_eq!(revision(&b, 6)["commit"], rewritten.as_str());
    let b_jobs = by_revision(&server.get("/api/v1/specs/b/jobs").await);
    assert_eq!(
        b_jobs[&1],
        ("cancelled".into(), Some("superseded by r3".into()))
    );
    assert_eq!(
        b_jobs[&2],
        ("cancelled".into(), Some("superseded by r3".into()))
    );
    assert_eq!(
        b_jobs[&5],
        ("cancelled".into(), Some("superseded by r6".into()))
    );
    assert_eq!(b_jobs[&6].0, "queued");
    assert_eq!(b_jobs.len(), 6);

    // c: one revision, its job cancelled by the deletion.
    let c_jobs = by_revision(&server.get("/api/v1/specs/c/jobs").await);
    assert_eq!(
        c_jobs[&1],
        (
            "cancelled".into(),
            Some(format!("spec deleted in {}", &rename[..7]))
        )
    );

    // d: created by the rename, merged (same commit as b r4), invalid r3 without a job, fixed r4.
    let d = server.get("/api/v1/specs/d").await;
    assert_eq!(revision_numbers(&d), vec![1, 2, 3, 4]);
    assert_eq!(revision(&d, 1)["commit"], rename.as_str());
    assert_eq!(revision(&d, 2)["commit"], merge.as_str());
    let invalid = revision(&d, 3);
    assert_eq!(invalid["valid"], false);
    assert_eq!(invalid["errors"][0]["rule"], "one-package-per-line");
    assert_eq!(invalid["errors"][0]["line"], 5);
    assert_eq!(invalid["errors"][0]["column"], 5);
    assert_eq!(invalid["digest"], Value::Null);
    let d_jobs = by_revision(&server.get("/api/v1/specs/d/jobs").await);
    assert!(!d_jobs.contains_key(&3), "an invalid revision gets no job");
    assert_eq!(
        d_jobs[&2],
        ("cancelled".into(), Some("superseded by r4".into()))
    );
    assert_eq!(d_jobs[&4].0, "queued");

    // A job with its spec snapshot and Dockerfile; 404s are JSON.
    let job_id = server.get("/api/v1/specs/d/jobs").await[0]["id"]
        .as_u64()
        .unwrap();
    let job = server.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert!(job["spec_yaml"].as_str().unwrap().contains("zip"));
    assert!(
        job["dockerfile"].as_str().unwrap().contains("'zip' \\")
            || job["dockerfile"].as_str().unwrap().contains("zip \\")
    );
    assert_eq!(server.status("/api/v1/specs/nope").await, 404);
    assert_eq!(server.status("/api/v1/jobs/999999").await, 404);
    assert_eq!(server.status("/api/v1/jobs/abc").await, 404);
    let health = server.get("/healthz").await;
    assert_eq!(health["status"], "ok");
    server.stop();
}

#[tokio::test]
async fn scripted_history_local_path() {
    scripted_history(Mode::Local).await;
}

#[tokio::test]
async fn scripted_history_file_url_mirror() {
    scripted_history(Mode::Mirror).await;
}
