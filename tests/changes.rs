//! What changed and the SBOM, end to end: a running Kiln (in process) builds real images on
//! the main Engine from the local Python base and pushes them to the open registry. A commit
//! that adds one pip package and bumps another shows exactly those two in
//! `/api/v1/jobs/{id}/changes`, with sizes that are what the registry's manifest and the
//! Engine say; the SBOM validates against the CycloneDX 1.5 schema with PyPI's
//! `cyclonedx-python-lib` and lists every package that the image's own `dpkg-query` and `pip
//! list` report; a job without a listing answers 404 with a JSON error.
//!
//! The validator runs in a venv: `KILN_CYCLONEDX_VENV`, else `~/.cache/kiln/cyclonedx-venv`
//! (scripts/test-all.sh creates it with a pinned version).

mod common;

use common::{GitRepo, Server, engine_available};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const REGISTRY: &str = "127.0.0.1:5000";
const PY_BASE: &str = "127.0.0.1:5000/kiln/bookworm-python:minbase";

fn venv_python() -> Option<PathBuf> {
    common::tools::venv_python(
        "KILN_CYCLONEDX_VENV",
        "cyclonedx-venv",
        "import cyclonedx.validation.json, jsonschema",
    )
}

/// `None` when the document is valid CycloneDX 1.5, else the validator's complaint.
fn cyclonedx_errors(python: &PathBuf, document: &str) -> Option<String> {
    const SCRIPT: &str = "import sys\n\
from cyclonedx.schema import SchemaVersion\n\
from cyclonedx.validation.json import JsonStrictValidator\n\
error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(sys.stdin.read())\n\
print('valid' if error is None else f'invalid: {error!r}')\n";
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), document.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "validator failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout != "valid").then_some(stdout)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spec_text(name: &str, pip: &[&str]) -> String {
    format!(
        "name: {name}\nbaseImage: {PY_BASE}\npackages:\n  pip: [{}]\n",
        pip.join(", ")
    )
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{}{path}", server.base))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn finished(server: &Server, spec: &str, revision: u64) -> Value {
    server
        .wait_for(spec, revision, Duration::from_secs(600), |j| {
            j["status"] != "queued" && j["status"] != "running"
        })
        .await
}

/// The pip name normalized (PEP 503), as purl and pip compare names.
fn pep503(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The compressed size straight from the registry: the manifest's layers plus its config.
async fn manifest_size(name: &str, digest: &str) -> u64 {
    let manifest: Value = reqwest::Client::new()
        .get(format!("http://{REGISTRY}/v2/{name}/manifests/{digest}"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let layers: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    layers + manifest["config"]["size"].as_u64().unwrap()
}

#[tokio::test]
async fn a_pip_add_and_bump_are_the_changes_and_the_sbom_validates_and_is_complete() {
    if !engine_available() {
        return;
    }
    let Some(python) = venv_python() else {
        return;
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (name, broken) = (format!("chg-{nonce}"), format!("chg-broken-{nonce}"));
    let _cleanup = common::registry::RemoveImages(vec![name.clone(), broken.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    repo.write(
        &format!("specs/{name}.yaml"),
        &spec_text(&name, &["idna==3.6"]),
    );
    repo.write(
        &format!("specs/{broken}.yaml"),
        &format!("name: {broken}\nbaseImage: {PY_BASE}\npackages:\n  pip: [kiln-no-such-package-anywhere==0.0.1]\n"),
    );
    repo.commit("a spec and a broken one");
    let config = tmp.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!("registry = '{REGISTRY}'\nca_bundle = '/etc/ssl/certs/ca-certificates.crt'\n"),
    )
    .unwrap();
    let server = Server::in_process(&[
        "--config",
        &config.display().to_string(),
        "--repo",
        &repo.dir.display().to_string(),
        "--specs-dir",
        "specs",
        "--data-dir",
        &tmp.path().join("data").display().to_string(),
        "--poll-interval",
        "1",
    ])
    .await;

    let r1 = finished(&server, &name, 1).await;
    assert_eq!(r1["status"], "succeeded", "{r1}\n{}", server.log(&r1).await);
    let (code, first) = get(&server, &format!("/api/v1/jobs/{}/changes", r1["id"])).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["previous_job"], Value::Null, "{first}");
    assert!(
        first["packages"]["added"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["manager"] == "pip" && p["name"] == "idna" && p["version"] == "3.6"),
        "a first build adds everything: {first}"
    );
    assert_eq!(first["size"]["compressed_change"], Value::Null);

    // A job without a listing (its build failed) has neither changes nor an SBOM.
    let failed = finished(&server, &broken, 1).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    for route in ["changes", "sbom"] {
        let (code, body) = get(&server, &format!("/api/v1/jobs/{}/{route}", failed["id"])).await;
        assert_eq!(code, 404, "{route}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no package listing"),
            "{route}: {body}"
        );
        let (code, body) = get(&server, &format!("/api/v1/jobs/987654321/{route}")).await;
        assert_eq!(code, 404);
        assert_eq!(body["error"], "job 987654321 not found");
    }

    // The commit under test: one pip package added, one bumped.
    repo.write(
        &format!("specs/{name}.yaml"),
        &spec_text(&name, &["idna==3.7", "six==1.16.0"]),
    );
    repo.commit("add six, bump idna");
    let r2 = finished(&server, &name, 2).await;
    assert_eq!(r2["status"], "succeeded", "{r2}\n{}", server.log(&r2).await);
    let (code, changes) = get(&server, &format!("/api/v1/jobs/{}/changes", r2["id"])).await;
    assert_eq!(code, 200, "{changes}");
    assert_eq!(changes["previous_job"], r1["id"], "{changes}");
    assert_eq!(
        changes["packages"],
        json!({
            "added": [{"manager": "pip", "name": "six", "version": "1.16.0"}],
            "removed": [],
            "changed": [{"manager": "pip", "name": "idna", "from": "3.6", "to": "3.7"}],
        }),
        "exactly the two packages the commit touched"
    );

    // Sizes: what the registry's manifest and the Engine say, and the change is the difference.
    let image = r2["image"].as_str().unwrap();
    let digest = r2["digest"].as_str().unwrap();
    let size = &changes["size"];
    let compressed = size["compressed"].as_u64().unwrap();
    let uncompressed = size["uncompressed"].as_u64().unwrap();
    assert!(compressed > 0 && uncompressed > compressed, "{size}");
    assert_eq!(compressed, manifest_size(&name, digest).await, "{size}");
    let inspect: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", image])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(uncompressed, inspect, "{size}");
    let before = &first["size"];
    assert_eq!(
        size["compressed_change"].as_i64().unwrap(),
        compressed as i64 - before["compressed"].as_i64().unwrap(),
        "{size} vs {before}"
    );
    assert_eq!(
        size["uncompressed_change"].as_i64().unwrap(),
        uncompressed as i64 - before["uncompressed"].as_i64().unwrap(),
        "{size} vs {before}"
    );
    // The catalogue shows the compressed size of the spec's latest image.
    let catalog = server.get("/api/v1/catalog").await;
    let entry = catalog["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{catalog}"));
    assert_eq!(entry["size"].as_u64(), Some(compressed), "{entry}");

    // The SBOM: valid CycloneDX 1.5, the image and its base as metadata.
    let resp = reqwest::get(format!("{}/api/v1/jobs/{}/sbom", server.base, r2["id"]))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert_eq!(cyclonedx_errors(&python, &text), None, "{text}");
    // The validator is not a rubber stamp: a document that breaks the schema is refused.
    let mut broken_doc: Value = serde_json::from_str(&text).unwrap();
    broken_doc["components"][0]["type"] = json!("no-such-type");
    assert!(cyclonedx_errors(&python, &broken_doc.to_string()).is_some());
    let sbom: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(sbom["specVersion"], "1.5");
    let meta = &sbom["metadata"]["component"];
    assert_eq!(meta["type"], "container");
    assert_eq!(meta["name"], format!("{REGISTRY}/{name}"));
    assert_eq!(meta["version"], image.rsplit_once(':').unwrap().1);
    let purl = meta["purl"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        purl.starts_with(&format!("pkg:oci/{name}@sha256%3A{hex}?")),
        "{purl}"
    );
    assert!(purl.contains("repository_url="), "{purl}");
    assert!(
        sbom["metadata"]["properties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "kiln:base-image" && p["value"] == PY_BASE),
        "{}",
        sbom["metadata"]
    );

    // Every package the image's own dpkg-query and pip report is in the SBOM.
    let components = sbom["components"].as_array().unwrap();
    let purls: BTreeSet<&str> = components
        .iter()
        .map(|c| c["purl"].as_str().unwrap())
        .collect();
    let by_name: BTreeSet<(String, String, String)> = components
        .iter()
        .map(|c| {
            let purl = c["purl"].as_str().unwrap();
            let kind = purl.split('/').next().unwrap().to_string();
            let name = c["name"].as_str().unwrap();
            let name = if kind == "pkg:pypi" {
                pep503(name)
            } else {
                name.to_string()
            };
            (kind, name, c["version"].as_str().unwrap().to_string())
        })
        .collect();
    let dpkg = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "dpkg-query",
        image,
        "-W",
        "-f",
        "${Package}\\t${Version}\\t${Architecture}\\n",
    ]);
    let mut deb_count = 0;
    for line in dpkg.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.split('\t');
        let (pkg, version, arch) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert!(
            by_name.contains(&("pkg:deb".into(), pkg.into(), version.into())),
            "dpkg's {pkg} {version} is not in the SBOM"
        );
        // purl percent-encodes `+` in names and versions (`libstdc%2B%2B6@12.2.0-14%2Bdeb12u1`).
        let expected = format!(
            "pkg:deb/debian/{}@{}?arch={arch}",
            pkg.replace('+', "%2B"),
            version.replace('+', "%2B").replace(':', "%3A")
        );
        let found = purls.contains(expected.as_str())
            || purls.contains(expected.replace("%3A", ":").as_str());
        assert!(found, "no purl {expected} in the SBOM");
        deb_count += 1;
    }
    assert!(deb_count > 50, "a Debian base has many packages: {dpkg}");
    let pip = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python3",
        image,
        "-m",
        "pip",
        "list",
        "--format=freeze",
        "--disable-pip-version-check",
    ]);
    let mut pip_names = Vec::new();
    for line in pip.lines().filter(|l| l.contains("==")) {
        let (pkg, version) = line.split_once("==").unwrap();
        assert!(
            by_name.contains(&("pkg:pypi".into(), pep503(pkg), version.into())),
            "pip's {pkg} {version} is not in the SBOM"
        );
        pip_names.push(pep503(pkg));
    }
    assert!(
        pip_names.contains(&"six".to_string()) && pip_names.contains(&"idna".to_string()),
        "{pip}"
    );
    assert!(purls.contains("pkg:pypi/six@1.16.0"), "{purls:?}");
    assert!(purls.contains("pkg:pypi/idna@3.7"), "{purls:?}");

    // The job page shows the changes and links the SBOM.
    let page = reqwest::get(format!("{}/jobs/{}", server.base, r2["id"]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("What changed"), "{page}");
    assert!(
        page.contains(&format!("href=\"/api/v1/jobs/{}/sbom\"", r2["id"])),
        "{page}"
    );
    assert!(
        page.contains(&format!("href=\"/jobs/{}\"", r1["id"])),
        "{page}"
    );

    server.stop();
}

const ENV_DIR: &str = "/var/lib/kiln-env";

/// The htpasswd registry's user and password, as dev-env.sh wrote them.
fn registry_auth() -> (String, String) {
    let text = std::fs::read_to_string(format!("{ENV_DIR}/registry-auth.env"))
        .expect("dev-env.sh wrote registry-auth.env");
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap()
            .trim_matches('\'')
            .trim_matches('"')
            .to_string()
    };
    (
        get("KILN_TEST_REGISTRY_USER"),
        get("KILN_TEST_REGISTRY_PASSWORD"),
    )
}

/// The compressed size comes from a registry that wants credentials too (HTTP Basic over
/// plain http on loopback), and a missing or wrong credential is an error, not a size.
#[tokio::test]
async fn compressed_sizes_are_read_from_a_registry_with_htpasswd() {
    use kiln::changes::manifest::{ManifestError, fetch_compressed_size};
    use kiln::docker::auth::Credential;
    if !engine_available() {
        return;
    }
    let (user, password) = registry_auth();
    let image = "127.0.0.1:5001/kiln/bookworm:minbase";
    let manifest: Value = reqwest::Client::new()
        .get("http://127.0.0.1:5001/v2/kiln/bookworm/manifests/minbase")
        .basic_auth(&user, Some(&password))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum::<u64>()
        + manifest["config"]["size"].as_u64().unwrap();
    let good = Credential::new("127.0.0.1:5001", user.clone(), password);
    let size = fetch_compressed_size(image, "minbase", Some(&good))
        .await
        .unwrap();
    assert_eq!(size, expected);
    assert!(size > 1_000_000, "a Debian base is megabytes: {size}");
    for credential in [None, Some(Credential::new("127.0.0.1:5001", user, "wrong"))] {
        let err = fetch_compressed_size(image, "minbase", credential.as_ref())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ManifestError::Status { status: 401, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("wrong"), "{err}");
    }
}
