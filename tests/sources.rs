//! Private package sources end to end, against real servers on 127.0.0.1 and the main
//! Engine (builds on `build_network = "host"`, so the RUN steps reach those servers):
//!
//! * PyPI's `pypiserver` behind an htpasswd file (passlib) serves a wheel this test builds —
//!   a package that exists nowhere else; a spec installs it through its named source and the
//!   image imports it (an image test). A source with a wrong password fails its job with
//!   "source NAME refused the credential (HTTP 403)" (pypiserver answers a wrong password with
//!   403, no password with 401), after one attempt, nothing pushed. A source where nothing
//!   listens is transient: retried up to `max_attempts`, then "did not answer".
//! * A Debian repository made with `reprepro`, signed with a throw-away gpg key (batch, no
//!   passphrase, its own GNUPGHOME), served by Debian's nginx with basic auth (own config,
//!   own pid file): a spec installs its package (a `.deb` built with `dpkg-deb`).
//! * The passwords appear nowhere: every layer of `docker save`, `docker history
//!   --no-trunc`, the image config, every job log, every file of the data dir, every API page,
//!   the dashboard pages, `/metrics` and the backup. No URL userinfo in the logs either.
//!
//! Servers are started with `timeout` (bounded), stopped by PID when the test ends. pypiserver
//! and passlib come from a venv (`KILN_PYPISERVER_VENV`, default `~/.cache/kiln/pypiserver-venv`,
//! made by scripts/test-all.sh with pinned versions); reprepro, nginx, gnupg and dpkg-deb from
//! Debian (scripts/test-all.sh installs them).

mod common;

use common::{GitRepo, Server, engine_available, free_port};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const REGISTRY: &str = "127.0.0.1:5000";
const PY_BASE: &str = "127.0.0.1:5000/kiln/bookworm-python:minbase";
const DEB_BASE: &str = "127.0.0.1:5000/kiln/bookworm:minbase";
/// The longest a test server may live, whatever happens to the test.
const SERVER_LIFETIME: &str = "900";

/// Digits only (not `common::nonce`): it also makes the wheel's PEP 440 version `1.0.N`.
fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A server process started under `timeout`, stopped by its PID (SIGTERM, which `timeout`
/// passes on) when dropped.
struct ServerProcess {
    name: &'static str,
    child: Child,
}

impl ServerProcess {
    fn start(name: &'static str, program: &Path, args: &[&str], log: &Path) -> ServerProcess {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("timeout")
            .arg(SERVER_LIFETIME)
            .arg(program)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        ServerProcess { name, child }
    }

    /// Waits (bounded) until `port` accepts connections.
    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before listening: {status}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} never listened on {port}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pypiserver_python() -> Option<PathBuf> {
    common::tools::venv_python(
        "KILN_PYPISERVER_VENV",
        "pypiserver-venv",
        "import pypiserver, passlib",
    )
}

/// Debian tools the apt test needs, each present or [`common::tools::missing`].
fn debian_tools() -> bool {
    for tool in ["reprepro", "nginx", "gpg", "dpkg-deb"] {
        if common::tools::which(tool).is_none() && !Path::new(&format!("/usr/sbin/{tool}")).exists()
        {
            common::tools::missing(
                &format!("`{tool}`"),
                "not on PATH",
                "run scripts/test-all.sh (apt-get install reprepro nginx gnupg)",
            );
            return false;
        }
    }
    true
}

/// An htpasswd file made with passlib (apr1 MD5, which pypiserver and nginx both read).
fn htpasswd(python: &Path, path: &Path, user: &str, password: &str) {
    run(
        &python.display().to_string(),
        &[
            "-c",
            "import sys\nfrom passlib.apache import HtpasswdFile\nh = HtpasswdFile(sys.argv[1], new=True)\nh.set_password(sys.argv[2], sys.argv[3])\nh.save()",
            &path.display().to_string(),
            user,
            password,
        ],
        &[],
    );
}

/// A pure-Python wheel `name-version-py3-none-any.whl` in `dir`, written with zipfile.
fn build_wheel(dir: &Path, name: &str, version: &str) {
    const SCRIPT: &str = r#"import sys, zipfile, hashlib, base64, os
name, version, out = sys.argv[1], sys.argv[2], sys.argv[3]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"VERSION = {version!r}\n",
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: kiln-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def h(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{p},{h(c.encode())},{len(c.encode())}\n" for p, c in files.items()) + f"{dist}/RECORD,,\n"
with zipfile.ZipFile(os.path.join(out, f"{name}-{version}-py3-none-any.whl"), "w") as z:
    for p, c in files.items():
        z.writestr(p, c)
    z.writestr(f"{dist}/RECORD", record)
"#;
    run(
        "python3",
        &["-c", SCRIPT, name, version, &dir.display().to_string()],
        &[],
    );
}

/// Every byte Kiln or the Engine keeps of these jobs and images, with where it came from.
async fn everything_kept(server: &Server, specs: &[&str], data: &Path) -> Vec<(String, Vec<u8>)> {
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    let mut pages: Vec<String> = [
        "/api/v1/status",
        "/api/v1/specs",
        "/api/v1/catalog",
        "/api/v1/workers",
        "/api/v1/backup",
        "/metrics",
        "/",
        "/workers",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for spec in specs {
        pages.push(format!("/api/v1/specs/{spec}"));
        pages.push(format!("/api/v1/specs/{spec}/jobs"));
        pages.push(format!("/specs/{spec}"));
        for job in server.jobs(spec).await {
            let id = &job["id"];
            for page in ["", "/log", "/packages", "/changes", "/sbom"] {
                pages.push(format!("/api/v1/jobs/{id}{page}"));
            }
            pages.push(format!("/jobs/{id}"));
        }
    }
    for page in pages {
        let resp = reqwest::get(format!("{}{page}", server.base))
            .await
            .unwrap();
        kept.push((page, resp.bytes().await.unwrap().to_vec()));
    }
    for entry in walk(data) {
        kept.push((
            entry.display().to_string(),
            std::fs::read(&entry).unwrap_or_default(),
        ));
    }
    for spec in specs {
        let Some(image) = server
            .jobs(spec)
            .await
            .into_iter()
            .find_map(|j| j["image"].as_str().map(str::to_string))
        else {
            continue;
        };
        if !Command::new("docker")
            .args(["image", "inspect", &image])
            .output()
            .unwrap()
            .status
            .success()
        {
            continue;
        }
        let tar = data.parent().unwrap().join(format!("{spec}.tar"));
        run(
            "docker",
            &["save", "-o", &tar.display().to_string(), &image],
            &[],
        );
        kept.push((format!("docker save {image}"), std::fs::read(&tar).unwrap()));
        std::fs::remove_file(&tar).unwrap();
        let history = run("docker", &["history", "--no-trunc", &image], &[]);
        kept.push((format!("docker history {image}"), history.into_bytes()));
        let config = run("docker", &["image", "inspect", &image], &[]);
        kept.push((format!("docker image inspect {image}"), config.into_bytes()));
    }
    kept
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn assert_nowhere(kept: &[(String, Vec<u8>)], needles: &[&str]) {
    assert!(kept.len() > 10, "too little was looked at: {}", kept.len());
    for (place, bytes) in kept {
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle:?} found in {place}"
            );
        }
    }
}

/// A positive control: the search does look inside `place` (e.g. the layers of `docker save`).
fn assert_somewhere(kept: &[(String, Vec<u8>)], place: &str, needle: &str) {
    assert!(
        kept.iter()
            .filter(|(p, _)| p.starts_with(place))
            .any(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())),
        "{needle:?} not found in {place}: the search would not find a password there either"
    );
}

fn config_file(dir: &Path, body: &str) -> String {
    let path = dir.join("kiln.toml");
    std::fs::write(
        &path,
        format!(
            "registry = '{REGISTRY}'\nbuild_network = 'host'\nmax_attempts = 2\nretry_backoff = 1\n{body}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

async fn serve(tmp: &Path, repo: &GitRepo, config: &str) -> Server {
    Server::in_process(&[
        "--config",
        config,
        "--repo",
        &repo.dir.display().to_string(),
        "--specs-dir",
        "specs",
        "--data-dir",
        &tmp.join("data").display().to_string(),
        "--poll-interval",
        "1",
    ])
    .await
}

fn write_secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn a_private_pypi_installs_through_its_source_and_a_wrong_password_is_refused() {
    if !engine_available() {
        return;
    }
    let Some(python) = pypiserver_python() else {
        return;
    };
    let n = nonce();
    let tmp = tempfile::tempdir().unwrap();
    let (good, bad, down) = (
        format!("src-pip-{n}"),
        format!("src-pip-bad-{n}"),
        format!("src-pip-down-{n}"),
    );
    let _cleanup = common::registry::RemoveImages(vec![good.clone(), bad.clone(), down.clone()]);
    // A package that exists nowhere else: this test's own wheel, a version of this run.
    let version = format!("1.0.{n}");
    let packages = tmp.path().join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    build_wheel(&packages, "kilnprivate", &version);
    let password = format!("Pw+/{n}:s3cret");
    htpasswd(&python, &tmp.path().join("htpasswd"), "alice", &password);
    let port = free_port();
    let mut index = ServerProcess::start(
        "pypiserver",
        &python.with_file_name("pypi-server"),
        &[
            "run",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &tmp.path().join("htpasswd").display().to_string(),
            "-a",
            "download,list,update",
            &packages.display().to_string(),
        ],
        &tmp.path().join("pypiserver.log"),
    );
    index.wait_listening(port);

    let user = write_secret(tmp.path(), "user", "alice");
    let pass = write_secret(tmp.path(), "pass", &password);
    let wrong = write_secret(tmp.path(), "wrong", &format!("wrong-{n}"));
    let closed = free_port();
    let config = config_file(
        tmp.path(),
        &format!(
            "[sources.internal-pypi]\nkind = 'pip'\nurl = 'http://127.0.0.1:{port}/simple/'\nusername_file = '{user}'\npassword_file = '{pass}'\n\
             [sources.wrong-pypi]\nkind = 'pip'\nurl = 'http://127.0.0.1:{port}/simple/'\nusername_file = '{user}'\npassword_file = '{wrong}'\n\
             [sources.down-pypi]\nkind = 'pip'\nurl = 'http://127.0.0.1:{closed}/simple/'\n"
        ),
    );
    let mut repo = GitRepo::init(&tmp.path().join("repo"));
    let spec = |name: &str, source: &str| {
        format!(
            "name: {name}\nbaseImage: {PY_BASE}\nsources: [{source}]\npackages:\n  pip: [kilnprivate=={version}]\n\
             tests:\n  - python3 -c 'import kilnprivate; assert kilnprivate.VERSION == \"{version}\"'\n"
        )
    };
    repo.write(&format!("specs/{good}.yaml"), &spec(&good, "internal-pypi"));
    repo.write(&format!("specs/{bad}.yaml"), &spec(&bad, "wrong-pypi"));
    repo.write(&format!("specs/{down}.yaml"), &spec(&down, "down-pypi"));
    repo.commit("three specs on private indexes");
    let server = serve(tmp.path(), &repo, &config).await;

    let ok = server.wait_done(&good, 1, Duration::from_secs(600)).await;
    let log = server.log(&ok).await;
    assert_eq!(ok["status"], "succeeded", "{ok}\n{log}");
    assert!(log.contains("kiln: image test 1/1"), "{log}");
    assert!(
        log.contains("passed"),
        "the image imports the private package:\n{log}"
    );

    let refused = server.wait_done(&bad, 1, Duration::from_secs(600)).await;
    let bad_log = server.log(&refused).await;
    assert_eq!(refused["status"], "failed", "{refused}\n{bad_log}");
    assert_eq!(
        refused["error"], "source wrong-pypi refused the credential (HTTP 403)",
        "{bad_log}"
    );
    assert_eq!(
        refused["attempts"], 1,
        "a refused credential is not retried"
    );
    let tags = reqwest::get(format!("http://{REGISTRY}/v2/{bad}/tags/list"))
        .await
        .unwrap();
    assert_eq!(
        tags.status().as_u16(),
        404,
        "the registry has nothing of {bad}"
    );

    let unanswered = server.wait_done(&down, 1, Duration::from_secs(600)).await;
    let down_log = server.log(&unanswered).await;
    assert_eq!(unanswered["status"], "failed", "{down_log}");
    assert_eq!(
        unanswered["error"], "source down-pypi did not answer",
        "{down_log}"
    );
    assert_eq!(
        unanswered["attempts"], 2,
        "retried up to max_attempts:\n{down_log}"
    );

    let kept = everything_kept(&server, &[&good, &bad, &down], &tmp.path().join("data")).await;
    let encoded = password
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace(':', "%3A");
    assert_nowhere(
        &kept,
        &[&password, &encoded, &format!("wrong-{n}"), "://alice"],
    );
    assert_somewhere(&kept, "docker save", "kilnprivate/__init__.py");
    assert_somewhere(&kept, "/api/v1/backup", &good);
    // pip printed the index with its user name (`alice:****@`); the stored log does not.
    assert!(
        log.contains(&format!("http://***@127.0.0.1:{port}/simple/")),
        "{log}"
    );
    server.stop();
}

#[tokio::test]
async fn a_private_apt_repository_behind_basic_auth_installs_its_package() {
    if !engine_available() || !debian_tools() {
        return;
    }
    let Some(python) = pypiserver_python() else {
        return;
    };
    let n = nonce();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let spec_name = format!("src-apt-{n}");
    let _cleanup =
        common::registry::RemoveImages(vec![spec_name.clone(), format!("src-apt-bad-{n}")]);
    // A throw-away signing key in a GNUPGHOME of its own.
    let gnupg = t.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let env = [("GNUPGHOME", gnupg.as_path())];
    run(
        "gpg",
        &[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Kiln Test <test@kiln.invalid>",
            "rsa2048",
            "sign",
            "never",
        ],
        &env,
    );
    let listing = run("gpg", &["--batch", "--list-keys", "--with-colons"], &env);
    let fingerprint = listing
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_string())
        })
        .expect("a fingerprint");
    let key = t.join("corp.gpg");
    run(
        "gpg",
        &[
            "--batch",
            "--output",
            &key.display().to_string(),
            "--export",
            &fingerprint,
        ],
        &env,
    );
    // A package that exists nowhere else.
    let package = format!("kiln-hello-{n}");
    let root = t.join("deb");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/kiln-hello")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {package}\nVersion: 1.0\nSection: misc\nPriority: optional\nArchitecture: all\nMaintainer: Kiln <test@kiln.invalid>\nDescription: Kiln test package\n"),
    )
    .unwrap();
    std::fs::write(root.join(format!("usr/share/kiln-hello/{n}")), "hello\n").unwrap();
    let deb = t.join(format!("{package}_1.0_all.deb"));
    run(
        "dpkg-deb",
        &[
            "--build",
            "--root-owner-group",
            &root.display().to_string(),
            &deb.display().to_string(),
        ],
        &[],
    );
    let repo_dir = t.join("repo");
    std::fs::create_dir_all(repo_dir.join("conf")).unwrap();
    std::fs::write(
        repo_dir.join("conf/distributions"),
        format!("Codename: bookworm\nSuite: bookworm\nComponents: main\nArchitectures: amd64\nSignWith: {fingerprint}\n"),
    )
    .unwrap();
    run(
        "reprepro",
        &[
            "-b",
            &repo_dir.display().to_string(),
            "includedeb",
            "bookworm",
            &deb.display().to_string(),
        ],
        &env,
    );
    // nginx with basic auth, its own config, pid file, logs and temp paths.
    let password = format!("Apt{n}:p4ss");
    htpasswd(&python, &t.join("apt-htpasswd"), "deb-user", &password);
    let port = free_port();
    let conf = t.join("nginx.conf");
    let p = |s: &str| t.join(s).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {pid};\nerror_log {err};\ndaemon off;\n{user}events {{ worker_connections 64; }}\n\
             http {{\n  access_log {acc};\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    location /debian/ {{\n      alias {repo}/;\n      auth_basic \"kiln test\";\n      auth_basic_user_file {ht};\n    }}\n  }}\n}}\n",
            pid = p("nginx.pid"),
            err = p("nginx-error.log"),
            acc = p("nginx-access.log"),
            tmp = p("nginx-tmp"),
            repo = repo_dir.display(),
            ht = p("apt-htpasswd"),
            // Workers run as root when the test does, so they read the temp dir.
            user = if run("id", &["-u"], &[]).trim() == "0" { "user root root;\n" } else { "" },
        ),
    )
    .unwrap();
    std::fs::create_dir_all(t.join("nginx-tmp")).unwrap();
    let nginx = common::tools::which("nginx").unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    let mut web = ServerProcess::start(
        "nginx",
        &nginx,
        &[
            "-c",
            &conf.display().to_string(),
            "-e",
            &p("nginx-error.log"),
        ],
        &t.join("nginx.out"),
    );
    web.wait_listening(port);

    let user = write_secret(t, "apt-user", "deb-user");
    let pass = write_secret(t, "apt-pass", &password);
    let wrong = write_secret(t, "apt-wrong", &format!("wrong-{n}"));
    let table = |name: &str, pass: &str| {
        format!(
            "[sources.{name}]\nkind = 'apt'\nurl = 'http://127.0.0.1:{port}/debian/'\nsuite = 'bookworm'\nsigned_by = '{key}'\nusername_file = '{user}'\npassword_file = '{pass}'\n",
            key = key.display()
        )
    };
    let config = config_file(
        t,
        &format!("{}{}", table("corp-apt", &pass), table("wrong-apt", &wrong)),
    );
    let refused_name = format!("src-apt-bad-{n}");
    let mut repo = GitRepo::init(&t.join("git"));
    repo.write(
        &format!("specs/{spec_name}.yaml"),
        &format!(
            "name: {spec_name}\nbaseImage: {DEB_BASE}\nsources: [corp-apt]\npackages:\n  apt: [{package}]\n\
             tests:\n  - test \"$(cat /usr/share/kiln-hello/{n})\" = hello\n  - test ! -e /etc/apt/sources.list.d/kiln-corp-apt.list\n"
        ),
    );
    repo.write(
        &format!("specs/{refused_name}.yaml"),
        &format!(
            "name: {refused_name}\nbaseImage: {DEB_BASE}\nsources: [wrong-apt]\npackages:\n  apt: [{package}]\n"
        ),
    );
    repo.commit("two specs on a private apt repository");
    let server = serve(t, &repo, &config).await;
    let job = server
        .wait_done(&spec_name, 1, Duration::from_secs(600))
        .await;
    let log = server.log(&job).await;
    assert_eq!(job["status"], "succeeded", "{job}\n{log}");
    assert!(
        log.contains(&format!("Setting up {package} (1.0)")),
        "{log}"
    );
    assert!(log.contains("kiln: image test 2/2"), "{log}");
    let packages: Value = server
        .get(&format!("/api/v1/jobs/{}/packages", job["id"]))
        .await;
    assert!(packages.to_string().contains(&package), "{packages}");
    // apt's `E: Failed to fetch …  401  Unauthorized` fails the job, not retried.
    let refused = server
        .wait_done(&refused_name, 1, Duration::from_secs(600))
        .await;
    let refused_log = server.log(&refused).await;
    assert_eq!(refused["status"], "failed", "{refused_log}");
    assert_eq!(
        refused["error"], "source wrong-apt refused the credential (HTTP 401)",
        "{refused_log}"
    );
    assert_eq!(refused["attempts"], 1, "{refused_log}");
    let kept = everything_kept(&server, &[&spec_name, &refused_name], &t.join("data")).await;
    assert_nowhere(
        &kept,
        &[
            &password,
            &password.replace(':', "%3A"),
            &format!("wrong-{n}"),
            "://deb-user",
        ],
    );
    assert_somewhere(&kept, "docker save", &format!("usr/share/kiln-hello/{n}"));
    assert_somewhere(
        &kept,
        "docker history",
        "/etc/apt/sources.list.d/kiln-corp-apt.list",
    );
    server.stop();
    drop(web);
}
