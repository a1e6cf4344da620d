//! The `kiln` command line as admins and PR CI use it.

mod common;

use common::kiln;

#[test]
fn check_accepts_the_examples() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/specs-example");
    let (code, out, err) = kiln(&["check", examples]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("checked 4 spec file(s): all valid"), "{out}");
}

#[test]
fn check_reports_every_problem_with_position_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("team")).unwrap();
    std::fs::write(
        dir.path().join("team/tools.yaml"),
        "name: tools\nbaseimage: debian\npackages:\n  apt: |\n    curl wget\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ok.yml"),
        "name: ok\nbaseImage: debian:bookworm\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a spec\n").unwrap();
    let root = dir.path().display().to_string();
    let (code, out, _) = kiln(&["check", &root]);
    assert_eq!(code, 1);
    let path = format!("{root}/team/tools.yaml");
    assert!(
        out.contains(&format!(
            "{path}:2:1: error[unknown-key]: unknown key `baseimage`; did you mean `baseImage`?"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{path}:5:5: error[one-package-per-line]:")),
        "{out}"
    );
    assert!(
        out.contains("checked 2 spec file(s): 3 problem(s) in 1 file(s)"),
        "{out}"
    );

    let (code, json, _) = kiln(&["check", "--format", "json", &root]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[0]["path"], path.as_str());

    let (_, github, _) = kiln(&["check", "--format", "github", &root]);
    assert!(
        github.starts_with(&format!(
            "::error file={path},line=1,col=1,title=missing-key::"
        )),
        "{github}"
    );
}

#[test]
fn check_reports_a_symlinked_spec_instead_of_skipping_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("one.yaml"),
        "name: one\nbaseImage: debian:bookworm\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("one.yaml", dir.path().join("two.yaml")).unwrap();
    let root = dir.path().display().to_string();
    let (code, out, _) = kiln(&["check", &root]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{root}/two.yaml:1:1: error[unreadable-file]: the file is a symbolic link to `one.yaml`;"
        )),
        "{out}"
    );
    assert!(
        out.contains("checked 2 spec file(s): 1 problem(s) in 1 file(s)"),
        "{out}"
    );
}

#[test]
fn check_accepts_what_pip_conda_and_docker_accept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("peers.yaml"),
        concat!(
            "name: peers\n",
            "baseImage: '[2001:db8::1]:5000/team/base:tag'\n",
            "packages:\n",
            "  conda:\n",
            "    - numpy[version<2]\n",
            "    - python[md5=deadbeef]\n",
            "    - 'scipy >=1.0 , < 2.0'\n",
            "  pip:\n",
            "    - pkg===arbitrarystring\n",
            "    - 'name;(python_version>=\"3.4\")and extra==\"x\"'\n",
            "    - 'other @ git+ssh://git@github.com:pypa/packaging.git'\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("glob.yaml"),
        "name: glob\nbaseImage: debian\npackages:\n  conda: ['test* 1.2']\n",
    )
    .unwrap();
    let root = dir.path().display().to_string();
    let (code, out, _) = kiln(&["check", &root]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{root}/glob.yaml:4:11: error[package-name-pattern]:"
        )),
        "{out}"
    );
    assert!(
        out.contains("checked 2 spec file(s): 1 problem(s) in 1 file(s)"),
        "{out}"
    );
}

#[test]
fn check_usage_and_io_errors_exit_2() {
    let (code, _, err) = kiln(&["check", "/nonexistent/kiln/specs"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/kiln/specs"), "{err}");
    let (code, _, _) = kiln(&["check", "--format", "xml", "."]);
    assert_eq!(code, 2);
}

#[test]
fn render_prints_the_dockerfile_and_schema_matches_the_committed_file() {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/specs-example/ds-python.yaml");
    let (code, out, err) = kiln(&["render", spec, "--ca-bundle"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FROM 127.0.0.1:5000/kiln/bookworm-python:minbase"));
    assert!(out.contains("'pandas>=2.1'"));
    assert!(out.contains("COPY kiln-ca-bundle.crt"));

    let (code, schema, _) = kiln(&["schema"]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kiln-spec.schema.json"
    ))
    .unwrap();
    assert_eq!(
        schema, committed,
        "deploy/kiln-spec.schema.json is stale: run `kiln schema > deploy/kiln-spec.schema.json`"
    );
}
