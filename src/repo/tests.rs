//! Tests against real repositories built with the `git` command line in temporary directories.

use super::*;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// A work tree on branch `main` with deterministic identities and commit times.
struct Fixture {
    dir: TempDir,
    clock: Cell<i64>,
}

impl Fixture {
    fn new() -> Fixture {
        let fixture = Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            clock: Cell::new(1_700_000_000),
        };
        std::fs::create_dir_all(fixture.work()).unwrap();
        fixture.git(&["init", "-q", "-b", "main"]);
        fixture
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Runs git in the work tree; panics with stderr on failure; returns trimmed stdout.
    fn git(&self, args: &[&str]) -> String {
        git_in(&self.work(), args, &self.clock)
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.work().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.work().join(rel)).unwrap();
    }

    /// Stages everything and commits; returns the new commit.
    fn commit(&self, message: &str) -> Oid {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    fn head(&self) -> Oid {
        oid(&self.git(&["rev-parse", "HEAD"]))
    }

    fn open(&self) -> Repo {
        open_local(&self.work())
    }
}

fn git_in(dir: &Path, args: &[&str], clock: &Cell<i64>) -> String {
    clock.set(clock.get() + 60);
    let date = format!("@{} +0000", clock.get());
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Ada Admin")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Kiln Test")
        .env("GIT_COMMITTER_EMAIL", "ci@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn oid(hex: &str) -> Oid {
    Oid::from_str(hex).expect("hex oid")
}

fn open_local(path: &Path) -> Repo {
    let unused = tempfile::tempdir().unwrap();
    Repo::open(&RepoLocation::Local(path.to_path_buf()), unused.path()).expect("open")
}

fn up(path: &str, content: &str) -> FileChange {
    FileChange::Upserted {
        path: path.to_string(),
        bytes: content.as_bytes().to_vec(),
    }
}

fn del(path: &str) -> FileChange {
    FileChange::Deleted {
        path: path.to_string(),
    }
}

/// (kind, sha, changes) of each step, for compact assertions.
fn summary(steps: &[Step]) -> Vec<(StepKind, String, Vec<FileChange>)> {
    steps
        .iter()
        .map(|s| (s.kind, s.commit.sha.clone(), s.changes.clone()))
        .collect()
}

const A1: &str = "name: a\nbaseImage: debian:12\n";
const A2: &str = "name: a\nbaseImage: debian:13\n";
const B1: &str = "name: b\nbaseImage: alpine:3\n";
const C1: &str = "name: c\nbaseImage: ubuntu:24.04\n";

#[test]
fn add_edit_delete_rename_in_order() {
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    f.write("specs/b.yml", B1);
    let c1 = f.commit("Add a and b\n\nWith a body.");
    f.write("specs/a.yaml", A2);
    let c2 = f.commit("Bump a");
    f.remove("specs/b.yml");
    let c3 = f.commit("Drop b");
    f.git(&["mv", "specs/a.yaml", "specs/c.yaml"]);
    let c4 = f.commit("Rename a to c");

    let repo = f.open();
    let steps = repo.steps(None, c4, "specs").unwrap();
    assert_eq!(
        summary(&steps),
        vec![
            (
                StepKind::Commit,
                c1.to_string(),
                vec![up("specs/a.yaml", A1), up("specs/b.yml", B1)]
            ),
            (
                StepKind::Commit,
                c2.to_string(),
                vec![up("specs/a.yaml", A2)]
            ),
            (StepKind::Commit, c3.to_string(), vec![del("specs/b.yml")]),
            // A rename is a deletion plus a creation: names are immutable.
            (
                StepKind::Commit,
                c4.to_string(),
                vec![del("specs/a.yaml"), up("specs/c.yaml", A2)]
            ),
        ]
    );

    let first = &steps[0].commit;
    assert_eq!(first.sha.len(), 40);
    assert_eq!(first.author, "Ada Admin <ada@example.com>");
    assert_eq!(first.subject, "Add a and b");
    let committed_at = f.git(&["log", "-1", "--format=%ct", &c1.to_string()]);
    assert_eq!(first.committed_at.to_string(), committed_at);
    assert_eq!(repo.commit_info(c1).unwrap(), *first);

    // Incremental: from c2 (exclusive) to c4 (inclusive).
    let later = repo.steps(Some(c2), c4, "specs").unwrap();
    assert_eq!(
        later
            .iter()
            .map(|s| s.commit.sha.as_str())
            .collect::<Vec<_>>(),
        vec![c3.to_string(), c4.to_string()]
    );
    assert!(repo.steps(Some(c4), c4, "specs").unwrap().is_empty());
}

#[test]
fn comment_only_edit_is_still_a_change() {
    let f = Fixture::new();
    f.write("a.yaml", A1);
    let c1 = f.commit("a");
    let commented = format!("# owned by the vision team\n{A1}");
    f.write("a.yaml", &commented);
    let c2 = f.commit("comment");
    let steps = f.open().steps(Some(c1), c2, "").unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].changes, vec![up("a.yaml", &commented)]);
}

#[test]
fn files_outside_specs_dir_and_non_yaml_are_ignored() {
    let f = Fixture::new();
    f.write("README.md", "hello");
    f.write("other/x.yaml", A1);
    f.write("specs-old/y.yaml", A1);
    f.write("specs/notes.txt", "not a spec");
    f.write("specs/Upper.YAML", "case matters");
    f.write("specs/team/deep.yaml", B1);
    let c1 = f.commit("layout");
    f.write("README.md", "hello again");
    f.write("other/x.yaml", A2);
    f.write("specs/notes.txt", "still not a spec");
    let c2 = f.commit("outside only");

    let repo = f.open();
    for dir in ["specs", "./specs/", "specs/", "./specs"] {
        let steps = repo.steps(None, c2, dir).unwrap();
        assert_eq!(
            summary(&steps),
            vec![(
                StepKind::Commit,
                c1.to_string(),
                vec![up("specs/team/deep.yaml", B1)]
            )],
            "specs_dir {dir:?}"
        );
    }
    assert!(repo.steps(Some(c1), c2, "specs").unwrap().is_empty());

    // The whole repository.
    for dir in ["", "."] {
        let steps = repo.steps(None, c2, dir).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[0].changes,
            vec![
                up("other/x.yaml", A1),
                up("specs-old/y.yaml", A1),
                up("specs/team/deep.yaml", B1)
            ]
        );
        assert_eq!(steps[1].changes, vec![up("other/x.yaml", A2)]);
    }

    // A folder that does not exist (yet) has no specs.
    assert!(repo.steps(None, c2, "nope").unwrap().is_empty());
    assert!(repo.spec_files_at(c2, "nope").unwrap().is_empty());
}

#[test]
fn specs_folder_created_later() {
    let f = Fixture::new();
    f.write("README.md", "x");
    f.commit("init");
    f.write("specs/a.yaml", A1);
    let c2 = f.commit("first spec");
    let steps = f.open().steps(None, c2, "specs").unwrap();
    assert_eq!(
        summary(&steps),
        vec![(
            StepKind::Commit,
            c2.to_string(),
            vec![up("specs/a.yaml", A1)]
        )]
    );
}

#[test]
fn merge_commit_is_one_step_on_first_parent_history() {
    let f = Fixture::new();
    f.write("specs/base.yaml", A1);
    let base = f.commit("base");
    f.git(&["checkout", "-q", "-b", "feature"]);
    f.write("specs/a.yaml", A1);
    f.commit("wip a");
    f.write("specs/b.yaml", B1);
    f.commit("wip b");
    f.git(&["checkout", "-q", "main"]);
    f.write("docs.md", "unrelated");
    let side = f.commit("docs on main");
    f.git(&[
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "Merge pull request #1",
        "feature",
    ]);
    let merge = f.head();

    let repo = f.open();
    assert_eq!(repo.branch_head("main").unwrap(), Some(merge));
    let steps = repo.steps(Some(base), merge, "specs").unwrap();
    // "docs on main" touches no spec: no step. The feature's commits are not on the
    // first-parent history: only the merge, with both files.
    assert_eq!(
        summary(&steps),
        vec![(
            StepKind::Commit,
            merge.to_string(),
            vec![up("specs/a.yaml", A1), up("specs/b.yaml", B1)]
        )]
    );
    assert_eq!(steps[0].commit.subject, "Merge pull request #1");
    // Same from the root.
    let all = repo.steps(None, merge, "specs").unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].commit.sha, merge.to_string());
    assert!(repo.steps(Some(base), side, "specs").unwrap().is_empty());
}

#[test]
fn merge_with_last_processed_as_second_parent_is_a_net_step() {
    // A `git pull` (merge) on a stale clone, then push: the new head is a merge whose FIRST
    // parent is the developer's commit and whose SECOND parent is the old tip.
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    let base = f.commit("base");
    f.git(&["checkout", "-q", "-b", "local"]);
    f.write("specs/c.yaml", C1);
    f.commit("developer adds c");
    f.git(&["checkout", "-q", "main"]);
    f.write("specs/b.yaml", B1);
    let processed = f.commit("someone adds b");
    f.git(&["checkout", "-q", "local"]);
    f.git(&["merge", "-q", "--no-ff", "-m", "Merge branch main", "main"]);
    let merge = f.head();
    f.git(&["checkout", "-q", "main"]);
    f.git(&["merge", "-q", "--ff-only", "local"]);

    let repo = f.open();
    let steps = repo.steps(Some(processed), merge, "specs").unwrap();
    // Replaying "developer adds c" (diffed against base) on top of `processed` would be
    // wrong; the net diff is exactly what the push brought.
    assert_eq!(
        summary(&steps),
        vec![(
            StepKind::Rewrite,
            merge.to_string(),
            vec![up("specs/c.yaml", C1)]
        )]
    );
    assert_eq!(repo.steps(Some(base), merge, "specs").unwrap().len(), 2);
}

#[test]
fn force_push_is_one_rewrite_step_with_the_net_diff() {
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    let c1 = f.commit("a1");
    f.write("specs/a.yaml", A2);
    f.write("specs/b.yaml", B1);
    let c2 = f.commit("a2 and b");
    f.git(&["reset", "-q", "--hard", &c1.to_string()]);
    f.write("specs/c.yaml", C1);
    let c3 = f.commit("c instead");

    let repo = f.open();
    let steps = repo.steps(Some(c2), c3, "specs").unwrap();
    assert_eq!(
        summary(&steps),
        vec![(
            StepKind::Rewrite,
            c3.to_string(),
            vec![
                up("specs/a.yaml", A1),
                del("specs/b.yaml"),
                up("specs/c.yaml", C1)
            ]
        )]
    );
    assert_eq!(steps[0].commit.subject, "c instead");
    assert!(!steps[0].snapshot);

    // Reset backwards without new commits: still a rewrite.
    let back = repo.steps(Some(c2), c1, "specs").unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].kind, StepKind::Rewrite);

    // A rewrite that changes no spec is still reported (the caller logs it).
    f.git(&["reset", "-q", "--hard", &c2.to_string()]);
    f.git(&["commit", "-q", "--amend", "-m", "a2 and b, reworded"]);
    let amended = f.head();
    let steps = repo.steps(Some(c2), amended, "specs").unwrap();
    assert_eq!(
        summary(&steps),
        vec![(StepKind::Rewrite, amended.to_string(), vec![])]
    );
}

#[test]
fn vanished_from_commit_is_a_rewrite_against_the_empty_tree() {
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    let c1 = f.commit("a1");
    f.write("specs/b.yaml", B1);
    let c2 = f.commit("b");
    f.git(&["reset", "-q", "--hard", &c1.to_string()]);
    f.write("specs/c.yaml", C1);
    let c3 = f.commit("c");
    f.git(&["reflog", "expire", "--expire=now", "--all"]);
    f.git(&["gc", "-q", "--prune=now"]);

    let repo = f.open();
    assert!(matches!(
        repo.commit_info(c2),
        Err(RepoError::CommitNotFound { .. })
    ));
    let expected = vec![(
        StepKind::Rewrite,
        c3.to_string(),
        vec![up("specs/a.yaml", A1), up("specs/c.yaml", C1)],
    )];
    let steps = repo.steps(Some(c2), c3, "specs").unwrap();
    assert_eq!(summary(&steps), expected);
    // b.yaml is gone too, but nothing can say so: the step is a full listing instead.
    assert!(steps[0].snapshot);
    // An id that never existed behaves the same.
    let never = oid("0123456789abcdef0123456789abcdef01234567");
    assert_eq!(
        summary(&repo.steps(Some(never), c3, "specs").unwrap()),
        expected
    );
}

#[test]
fn unknown_to_commit_is_an_error_naming_it() {
    let f = Fixture::new();
    f.write("a.yaml", A1);
    f.commit("a");
    let never = oid("0123456789abcdef0123456789abcdef01234567");
    let err = f.open().steps(None, never, "").unwrap_err();
    assert!(matches!(err, RepoError::CommitNotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("0123456789abcdef0123456789abcdef01234567"),
        "{text}"
    );
    assert!(text.contains("work"), "{text}");
}

#[test]
fn symlinks_submodules_and_type_changes() {
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    std::os::unix::fs::symlink("a.yaml", f.work().join("specs/link.yaml")).unwrap();
    f.git(&["add", "-A"]);
    f.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        "160000,0123456789abcdef0123456789abcdef01234567,specs/sub.yaml",
    ]);
    // An empty folder is how git leaves a submodule that is not checked out.
    std::fs::create_dir_all(f.work().join("specs/sub.yaml")).unwrap();
    let c1 = f.commit("file, symlink, submodule");
    let repo = f.open();
    // The symlink and the submodule are reported, never read or followed.
    assert_eq!(
        summary(&repo.steps(None, c1, "specs").unwrap()),
        vec![(
            StepKind::Commit,
            c1.to_string(),
            vec![
                up("specs/a.yaml", A1),
                link("specs/link.yaml", "a.yaml"),
                FileChange::NotAFile {
                    path: "specs/sub.yaml".into(),
                    what: NotAFile::Submodule {
                        commit: "0123456789abcdef0123456789abcdef01234567".into()
                    }
                },
            ]
        )]
    );
    let files = repo.spec_files_at(c1, "specs").unwrap();
    assert_eq!(
        files,
        vec![SpecFile {
            path: "specs/a.yaml".into(),
            bytes: A1.into()
        }]
    );

    // File → symlink: reported as a symlink. Symlink → file: a spec file appears.
    f.remove("specs/a.yaml");
    std::os::unix::fs::symlink("link.yaml", f.work().join("specs/a.yaml")).unwrap();
    f.remove("specs/link.yaml");
    f.write("specs/link.yaml", B1);
    let c2 = f.commit("swap");
    assert_eq!(
        repo.steps(Some(c1), c2, "specs").unwrap()[0].changes,
        vec![link("specs/a.yaml", "link.yaml"), up("specs/link.yaml", B1)]
    );
    assert_eq!(
        repo.entry_at(c2, "specs/a.yaml").unwrap(),
        Some(Entry::NotAFile(NotAFile::Symlink {
            target: "link.yaml".into()
        }))
    );
    assert_eq!(
        repo.entry_at(c2, "specs/link.yaml").unwrap(),
        Some(Entry::File(B1.as_bytes().to_vec()))
    );
    assert_eq!(repo.entry_at(c2, "specs").unwrap(), None);

    // File → folder of the same name.
    f.remove("specs/link.yaml");
    f.write("specs/link.yaml/inner.yaml", C1);
    let c3 = f.commit("file to folder");
    assert_eq!(
        repo.steps(Some(c2), c3, "specs").unwrap()[0].changes,
        vec![del("specs/link.yaml"), up("specs/link.yaml/inner.yaml", C1)]
    );

    // Executable bit only: same content, nothing to report.
    f.git(&["update-index", "--chmod=+x", "specs/link.yaml/inner.yaml"]);
    let c4 = f.commit("chmod");
    assert!(repo.steps(Some(c3), c4, "specs").unwrap().is_empty());

    // Removing a symlink and a submodule is a deletion; a file whose bytes equal a removed
    // link's target (the same blob id) is still a new file.
    f.remove("specs/a.yaml");
    f.git(&["rm", "--cached", "-q", "specs/sub.yaml"]);
    f.write("specs/a.yaml", "link.yaml");
    let c5 = f.commit("links gone");
    assert_eq!(
        repo.steps(Some(c4), c5, "specs").unwrap()[0].changes,
        vec![up("specs/a.yaml", "link.yaml"), del("specs/sub.yaml")]
    );
}

fn link(path: &str, target: &str) -> FileChange {
    FileChange::NotAFile {
        path: path.into(),
        what: NotAFile::Symlink {
            target: target.into(),
        },
    }
}

#[test]
fn large_blobs_are_capped() {
    let f = Fixture::new();
    let big: Vec<u8> = (0..2 * MAX_FULL_READ).map(|i| (i % 251) as u8).collect();
    let medium = vec![b'#'; 100 * 1024];
    f.write("big.yaml", &big);
    f.write("medium.yaml", &medium);
    let c1 = f.commit("big files");

    let check = |repo: &Repo| {
        let files = repo.spec_files_at(c1, "").unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "big.yaml");
        assert_eq!(files[0].bytes.len(), TRUNCATED_LEN);
        assert_eq!(files[0].bytes[..], big[..TRUNCATED_LEN]);
        // Under 1 MiB: whole, even though validation will refuse it.
        assert_eq!(files[1].bytes, medium);
        let steps = repo.steps(None, c1, "").unwrap();
        assert_eq!(steps[0].changes[0].path(), "big.yaml");
        match &steps[0].changes[0] {
            FileChange::Upserted { bytes, .. } => assert_eq!(bytes.len(), TRUNCATED_LEN),
            other => panic!("{other:?}"),
        }
    };
    // Loose objects (streamed) …
    check(&f.open());
    // … and packed ones (read whole once, then truncated).
    f.git(&["gc", "-q"]);
    assert!(
        std::fs::read_dir(f.work().join(".git/objects/pack"))
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "pack"))
    );
    check(&f.open());
}

#[test]
fn spec_files_at_lists_the_folder() {
    let f = Fixture::new();
    f.write("specs/b.yaml", B1);
    f.write("specs/a.yaml", A1);
    f.write("specs/x/c.yml", C1);
    f.write("specs/readme.md", "no");
    f.write("top.yaml", A2);
    let c1 = f.commit("specs");
    let repo = f.open();
    let paths = |dir: &str| {
        repo.spec_files_at(c1, dir)
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        paths("specs"),
        vec!["specs/a.yaml", "specs/b.yaml", "specs/x/c.yml"]
    );
    assert_eq!(
        paths(""),
        vec!["specs/a.yaml", "specs/b.yaml", "specs/x/c.yml", "top.yaml"]
    );
    assert_eq!(paths("specs/x"), vec!["specs/x/c.yml"]);
    assert!(paths("top.yaml").is_empty());
}

#[test]
fn invalid_specs_dir_is_refused() {
    let f = Fixture::new();
    f.write("a.yaml", A1);
    let c1 = f.commit("a");
    let repo = f.open();
    for bad in ["../x", "/abs", "a/../../b", "a\\b", ".git"] {
        let err = repo.steps(None, c1, bad).unwrap_err();
        assert!(
            matches!(err, RepoError::InvalidSpecsDir { .. }),
            "{bad}: {err:?}"
        );
        assert!(repo.spec_files_at(c1, bad).is_err());
    }
}

#[test]
fn branch_heads() {
    let f = Fixture::new();
    let repo = f.open();
    // Empty repository: HEAD is unborn, the branch does not exist yet.
    assert_eq!(repo.branch_head("main").unwrap(), None);
    f.write("a.yaml", A1);
    let c1 = f.commit("a");
    // The same, long-lived Repo sees the new commit.
    assert_eq!(repo.branch_head("main").unwrap(), Some(c1));
    assert_eq!(repo.branch_head("nope").unwrap(), None);
    f.git(&["branch", "feature/x"]);
    assert_eq!(repo.branch_head("feature/x").unwrap(), Some(c1));
    // Packed refs are read too.
    f.git(&["pack-refs", "--all"]);
    f.write("b.yaml", B1);
    let c2 = f.commit("b");
    assert_eq!(repo.branch_head("main").unwrap(), Some(c2));
    assert_eq!(repo.branch_head("feature/x").unwrap(), Some(c1));
    for bad in ["", "a..b", "with space", "x~1", "-"] {
        if bad == "-" {
            // "refs/heads/-" is a valid ref name; it just does not exist.
            assert_eq!(repo.branch_head(bad).unwrap(), None);
            continue;
        }
        assert!(
            matches!(repo.branch_head(bad), Err(RepoError::InvalidBranch { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn opens_work_tree_dot_git_and_bare_in_place() {
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    let c1 = f.commit("a");

    let via_work = f.open();
    let via_git = open_local(&f.work().join(".git"));
    assert_eq!(via_work.git_dir(), via_git.git_dir());
    assert_eq!(via_git.branch_head("main").unwrap(), Some(c1));

    let bare = f.dir.path().join("bare.git");
    f.git(&["clone", "-q", "--bare", ".", bare.to_str().unwrap()]);
    let via_bare = open_local(&bare);
    assert_eq!(via_bare.branch_head("main").unwrap(), Some(c1));
    assert_eq!(via_bare.steps(None, c1, "specs").unwrap().len(), 1);
    assert!(via_bare.fetch().is_ok(), "fetch is a no-op for local repos");
    assert!(!via_bare.location().is_remote());

    // Not a repository: an error naming the path; parent directories are not searched.
    let sub = f.work().join("specs");
    let err = Repo::open(&RepoLocation::Local(sub.clone()), f.dir.path()).unwrap_err();
    assert!(matches!(err, RepoError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains(sub.to_str().unwrap()), "{err}");
}

#[test]
fn remote_mirror_over_file_url() {
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    let c1 = f.commit("a");
    f.git(&["branch", "old"]);
    let url = format!("file://{}", f.work().display());
    let data = tempfile::tempdir().unwrap();
    let location = RepoLocation::parse(&url);
    assert!(location.is_remote());

    let repo = Repo::open(&location, data.path()).unwrap();
    assert_eq!(repo.git_dir(), mirror_path(data.path()));
    assert!(repo.git_dir().join("config").exists());
    assert_eq!(repo.branch_head("main").unwrap(), None, "not fetched yet");
    repo.fetch().unwrap();
    assert_eq!(repo.branch_head("main").unwrap(), Some(c1));
    assert_eq!(repo.branch_head("old").unwrap(), Some(c1));

    // New commits arrive with the next fetch.
    f.write("specs/b.yaml", B1);
    let c2 = f.commit("b");
    assert_eq!(repo.branch_head("main").unwrap(), Some(c1));
    repo.fetch().unwrap();
    assert_eq!(repo.branch_head("main").unwrap(), Some(c2));
    assert_eq!(
        summary(&repo.steps(Some(c1), c2, "specs").unwrap()),
        vec![(
            StepKind::Commit,
            c2.to_string(),
            vec![up("specs/b.yaml", B1)]
        )]
    );

    // Force-push and a deleted branch are mirrored (forced, pruned).
    f.git(&["reset", "-q", "--hard", &c1.to_string()]);
    f.write("specs/c.yaml", C1);
    let c3 = f.commit("c");
    f.git(&["branch", "-D", "old"]);
    repo.fetch().unwrap();
    assert_eq!(repo.branch_head("main").unwrap(), Some(c3));
    assert_eq!(repo.branch_head("old").unwrap(), None);
    let steps = repo.steps(Some(c2), c3, "specs").unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].kind, StepKind::Rewrite);
    drop(repo);

    // An existing mirror is reopened, not recreated.
    let again = Repo::open(&location, data.path()).unwrap();
    assert_eq!(again.branch_head("main").unwrap(), Some(c3));
    let config = std::fs::read_to_string(again.git_dir().join("config")).unwrap();
    assert!(config.contains("+refs/heads/*:refs/heads/*"), "{config}");
    assert_eq!(config.matches("[remote \"origin\"]").count(), 1, "{config}");
}

#[test]
fn fetch_errors_never_show_credentials() {
    let data = tempfile::tempdir().unwrap();
    // Port 9 (discard) on localhost: nothing listens, the connection is refused at once.
    let url = "https://kiln-user:s3cret-token@127.0.0.1:9/org/specs.git";
    let repo = Repo::open(&RepoLocation::parse(url), data.path()).unwrap();
    let err = repo.fetch().unwrap_err();
    let text = err.to_string();
    let debug = format!("{err:?}");
    assert!(
        !text.contains("s3cret") && !debug.contains("s3cret"),
        "{debug}"
    );
    assert!(!text.contains("kiln-user"), "{text}");
    assert!(
        text.contains("https://***@127.0.0.1:9/org/specs.git"),
        "{text}"
    );
    assert!(
        matches!(
            err,
            RepoError::Fetch {
                reason: FetchFailure::Unreachable,
                ..
            }
        ),
        "{debug}"
    );
    // Nothing written to disk holds the secret either.
    let config = std::fs::read_to_string(repo.git_dir().join("config")).unwrap();
    assert!(!config.contains("s3cret"), "{config}");
    assert!(
        config.contains("https://127.0.0.1:9/org/specs.git"),
        "{config}"
    );
    assert!(!format!("{repo:?}").contains("s3cret"));

    // A missing repository behind a file URL.
    let data2 = tempfile::tempdir().unwrap();
    let missing = data2.path().join("nowhere");
    let repo = Repo::open(
        &RepoLocation::parse(&format!("file://{}", missing.display())),
        data2.path(),
    )
    .unwrap();
    let err = repo.fetch().unwrap_err();
    assert!(
        matches!(err, RepoError::Fetch { .. }) && err.to_string().contains("nowhere"),
        "{err}"
    );
}

#[test]
fn mirror_url_change_repoints_origin() {
    let f1 = Fixture::new();
    f1.write("a.yaml", A1);
    let a = f1.commit("a");
    let f2 = Fixture::new();
    f2.write("b.yaml", B1);
    let b = f2.commit("b");
    let data = tempfile::tempdir().unwrap();

    let repo = Repo::open(
        &RepoLocation::parse(&format!("file://{}", f1.work().display())),
        data.path(),
    )
    .unwrap();
    repo.fetch().unwrap();
    assert_eq!(repo.branch_head("main").unwrap(), Some(a));
    drop(repo);

    let repo = Repo::open(
        &RepoLocation::parse(&format!("file://{}", f2.work().display())),
        data.path(),
    )
    .unwrap();
    repo.fetch().unwrap();
    assert_eq!(repo.branch_head("main").unwrap(), Some(b));
    // The caller's last processed commit belongs to the old repository: a rewrite.
    let steps = repo.steps(Some(a), b, "").unwrap();
    assert_eq!(
        summary(&steps),
        vec![(
            StepKind::Rewrite,
            b.to_string(),
            vec![del("a.yaml"), up("b.yaml", B1)]
        )]
    );
}

/// Builds a repository with `count` specs spread over `dirs` folders with git2 directly (the
/// CLI would take a while for 10,000 files), then one commit changing one spec.
fn big_repo(dir: &Path, count: usize, dirs: usize) -> (Oid, Oid) {
    let repo = git2::Repository::init(dir).unwrap();
    let sig =
        git2::Signature::new("Ada", "ada@example.com", &git2::Time::new(1_700_000_000, 0)).unwrap();
    let build = |changed: Option<&str>| -> Oid {
        let mut folders = Vec::new();
        for d in 0..dirs {
            let mut folder = repo.treebuilder(None).unwrap();
            for i in (d..count).step_by(dirs) {
                let mut content = format!("name: spec-{i}\nbaseImage: debian:12\n");
                if i == 7 {
                    content.push_str(changed.unwrap_or(""));
                }
                let blob = repo.blob(content.as_bytes()).unwrap();
                folder
                    .insert(format!("spec-{i}.yaml"), blob, 0o100644)
                    .unwrap();
            }
            folders.push(folder.write().unwrap());
        }
        let specs = if dirs == 1 {
            folders[0]
        } else {
            let mut specs = repo.treebuilder(None).unwrap();
            for (d, folder) in folders.iter().enumerate() {
                specs
                    .insert(format!("team-{d}"), *folder, 0o040000)
                    .unwrap();
            }
            specs.write().unwrap()
        };
        let mut root = repo.treebuilder(None).unwrap();
        root.insert("specs", specs, 0o040000).unwrap();
        root.write().unwrap()
    };
    let t1 = build(None);
    let c1 = repo
        .commit(
            None,
            &sig,
            &sig,
            "import",
            &repo.find_tree(t1).unwrap(),
            &[],
        )
        .unwrap();
    let t2 = build(Some("# edited\n"));
    let parent = repo.find_commit(c1).unwrap();
    let c2 = repo
        .commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            "edit one",
            &repo.find_tree(t2).unwrap(),
            &[&parent],
        )
        .unwrap();
    (c1, c2)
}

#[test]
fn one_change_among_many_specs() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, c2) = big_repo(dir.path(), 500, 10);
    let repo = open_local(dir.path());
    let steps = repo.steps(Some(c1), c2, "specs").unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].changes.len(), 1);
    assert_eq!(steps[0].changes[0].path(), "specs/team-7/spec-7.yaml");
    assert_eq!(repo.spec_files_at(c2, "specs").unwrap().len(), 500);
    let all = repo.steps(None, c2, "specs").unwrap();
    assert_eq!(all[0].changes.len(), 500);
}

/// `cargo test --release --lib repo::tests::step_cost -- --ignored --nocapture`
#[test]
#[ignore = "timing report, run by hand"]
fn step_cost_does_not_grow_with_repo_size() {
    fn time_step(count: usize, dirs: usize) -> (std::time::Duration, std::time::Duration) {
        let dir = tempfile::tempdir().unwrap();
        let (c1, c2) = big_repo(dir.path(), count, dirs);
        let repo = open_local(dir.path());
        let runs = 50;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            let steps = repo.steps(Some(c1), c2, "specs").unwrap();
            assert_eq!(steps[0].changes.len(), 1);
        }
        let ours = started.elapsed() / runs;
        // libgit2's diff_tree_to_tree with a pathspec, for comparison.
        let git = git2::Repository::open(dir.path()).unwrap();
        let t1 = git.find_commit(c1).unwrap().tree().unwrap();
        let t2 = git.find_commit(c2).unwrap().tree().unwrap();
        let started = std::time::Instant::now();
        for _ in 0..runs {
            let mut opts = git2::DiffOptions::new();
            opts.pathspec("specs/").disable_pathspec_match(true);
            let diff = git
                .diff_tree_to_tree(Some(&t1), Some(&t2), Some(&mut opts))
                .unwrap();
            assert_eq!(diff.deltas().len(), 1);
        }
        (ours, started.elapsed() / runs)
    }
    for (count, dirs) in [(10, 1), (10_000, 1), (10, 10), (10_000, 100)] {
        let (ours, libgit2) = time_step(count, dirs);
        println!(
            "{count:>6} specs in {dirs:>3} folder(s): one-file step {ours:>10.1?}   \
             (libgit2 diff_tree_to_tree: {libgit2:>10.1?})"
        );
    }
}

#[test]
fn file_at_reads_one_regular_file() {
    let f = Fixture::new();
    f.write("specs/a.yaml", A1);
    f.write("specs/dir/b.yaml", B1);
    std::os::unix::fs::symlink("a.yaml", f.work().join("specs/link.yaml")).unwrap();
    let c1 = f.commit("files");
    f.write("specs/a.yaml", A2);
    let c2 = f.commit("edit");
    let repo = f.open();
    assert_eq!(
        repo.file_at(c1, "specs/a.yaml").unwrap(),
        Some(A1.as_bytes().to_vec())
    );
    assert_eq!(
        repo.file_at(c2, "specs/a.yaml").unwrap(),
        Some(A2.as_bytes().to_vec())
    );
    assert_eq!(
        repo.file_at(c2, "specs/dir/b.yaml").unwrap(),
        Some(B1.as_bytes().to_vec())
    );
    assert_eq!(repo.file_at(c2, "specs/missing.yaml").unwrap(), None);
    assert_eq!(repo.file_at(c2, "specs/dir").unwrap(), None);
    assert_eq!(repo.file_at(c2, "specs/link.yaml").unwrap(), None);
    let never = oid("0123456789abcdef0123456789abcdef01234567");
    assert!(matches!(
        repo.file_at(never, "specs/a.yaml"),
        Err(RepoError::CommitNotFound { .. })
    ));
}

#[test]
fn repo_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Repo>();
    assert_send::<RepoError>();
    assert_send::<Step>();
}
