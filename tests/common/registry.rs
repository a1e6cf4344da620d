//! The dev environment's registries as the tests use them: the htpasswd registry's login
//! (dev-env's `registry-auth.env`) and base images of a test's own, pushed there with the
//! docker CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The registry without a login.
pub const OPEN_REGISTRY: &str = "127.0.0.1:5000";

/// The registry that wants a login (dev-env.sh: htpasswd, bcrypt).
pub const AUTH_REGISTRY: &str = "127.0.0.1:5001";

/// dev-env.sh's state dir (`KILN_ENV_DIR`, default `/var/lib/kiln-env`).
pub fn env_dir() -> PathBuf {
    PathBuf::from(std::env::var("KILN_ENV_DIR").unwrap_or_else(|_| "/var/lib/kiln-env".into()))
}

/// The docker CLI config dir that holds the login of [`AUTH_REGISTRY`].
pub fn auth_docker_config() -> PathBuf {
    env_dir().join("docker-config")
}

/// The generated login of [`AUTH_REGISTRY`]: (user, password).
pub fn auth_registry_login() -> (String, String) {
    let text = std::fs::read_to_string(env_dir().join("registry-auth.env"))
        .expect("dev-env.sh wrote registry-auth.env");
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .expect(key)
            .trim()
            .trim_matches('\'')
            .trim_matches('"')
            .to_string()
    };
    (
        get("KILN_TEST_REGISTRY_USER"),
        get("KILN_TEST_REGISTRY_PASSWORD"),
    )
}

/// Builds an ENV-only child of `from` as `tag` (the value is new on every call, so no
/// earlier build's cache matches anything built on it, and pushing the same tag again moves
/// it) and pushes it with the docker CLI, with `config` as its config dir when the registry
/// wants a login. Returns the pushed manifest digest.
pub fn push_env_child(from: &str, tag: &str, config: Option<&Path>) -> String {
    let dockerfile = format!(
        "FROM {from}\nENV KILN_TEST_NONCE=\"{tag}-{}\"\n",
        super::nonce()
    );
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("docker build runs");
    std::io::Write::write_all(&mut build.stdin.take().unwrap(), dockerfile.as_bytes()).unwrap();
    assert!(build.wait().unwrap().success(), "docker build of {tag}");
    let mut push = Command::new("docker");
    if let Some(config) = config {
        push.arg("--config").arg(config);
    }
    let out = push.args(["push", tag]).output().expect("docker push runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "docker push {tag}: {out:?}");
    let digest = text
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in push output: {text}"))
        .to_string();
    assert!(digest.starts_with("sha256:"), "{text}");
    digest
}

/// A base image that exists only on [`AUTH_REGISTRY`]: an ENV-only child of the local
/// minimal base, pushed there and removed from the Engine, so a build on it must pull it
/// with the registry's login.
pub fn auth_only_base(repository: &str) -> String {
    let base = format!("{AUTH_REGISTRY}/{repository}:{}", super::nonce());
    push_env_child("kiln/bookworm:minbase", &base, Some(&auth_docker_config()));
    let out = Command::new("docker")
        .args(["rmi", &base])
        .output()
        .expect("docker rmi runs");
    assert!(out.status.success(), "docker rmi {base}: {out:?}");
    base
}

/// Removes the images Kiln built for these specs (pushed as `127.0.0.1:5000/SPEC:…`) from the
/// Engine when the test ends, passed or not.
pub struct RemoveImages(pub Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for spec in &self.0 {
            let Ok(out) = Command::new("docker")
                .args([
                    "images",
                    "-q",
                    "--filter",
                    &format!("reference={OPEN_REGISTRY}/{spec}"),
                ])
                .output()
            else {
                continue;
            };
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            for id in ids
                .split_whitespace()
                .collect::<std::collections::BTreeSet<_>>()
            {
                let _ = Command::new("docker").args(["rmi", "-f", id]).output();
            }
        }
    }
}
