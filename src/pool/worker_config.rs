//! The `[[workers]]` tables of `kiln.toml`, checked once at start-up.
//!
//! ```toml
//! [[workers]]
//! name = "w1"                                  # unique, shown everywhere
//! kind = "docker"                              # a Docker Engine (its embedded BuildKit)
//! endpoint = "unix:///run/kiln-w1/docker.sock" # or tcp://host:port
//! capacity = 2                                 # parallel builds on this worker (default 1)
//! # tls_verify / cert_path as for the Engine's docker_tls_verify / docker_cert_path
//! ```
//!
//! Every field is optional in the TOML type so that a missing or wrong value gets Kiln's own
//! message, naming the file, the table (its position and name) and the rule, instead of a
//! bare deserializer error. Validation is pure (no file or network access): whether an
//! endpoint answers and whether its TLS files can be read is the health probe's business,
//! shown per worker while the others keep building.
//!
//! Without any table the pool is the single Engine of the `docker_host`, `docker_tls_verify`
//! and `docker_cert_path` keys, a worker named [`DEFAULT_WORKER`] whose capacity is
//! `max_parallel_builds`: a one-machine setup behaves as before. Those keys and `[[workers]]`
//! together are refused, since one of them would be silently ignored.
//!
//! `kind = "buildkit"` (a standalone `buildkitd`) is refused with a clear rule: Kiln builds
//! through the Docker Engine API (`/build` with a BuildKit session), and a buildkitd speaks
//! only BuildKit's gRPC control API. Accepting the word and then failing every build on such
//! a worker would be worse than saying so at start.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The name of the one worker built from the `docker_host` keys when no table is given.
pub const DEFAULT_WORKER: &str = "default";
/// Longest worker name (names appear in URLs, metric labels and log lines).
pub const MAX_NAME_LEN: usize = 63;

/// One `[[workers]]` table as written (see the module docs for why every field is optional).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerTable {
    /// Unique name, `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 63 characters.
    pub name: Option<String>,
    /// `"docker"` (a Docker Engine's embedded BuildKit), the only kind today.
    pub kind: Option<String>,
    /// `unix:///path` or `tcp://host:port`.
    pub endpoint: Option<String>,
    /// Parallel builds on this worker, at least 1 (default 1).
    pub capacity: Option<i64>,
    /// Speak mutual TLS to a `tcp://` endpoint (as `docker_tls_verify`).
    pub tls_verify: Option<bool>,
    /// Directory with `ca.pem`, `cert.pem`, `key.pem` (as `docker_cert_path`).
    pub cert_path: Option<PathBuf>,
}

/// What builds on a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkerKind {
    /// A Docker Engine, building with its embedded BuildKit.
    Docker,
}

impl WorkerKind {
    /// The word used in `kiln.toml` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Docker => "docker",
        }
    }
}

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub name: String,
    pub kind: WorkerKind,
    /// `unix:///path` or `tcp://host:port`. `None` only for the [`DEFAULT_WORKER`] without a
    /// `docker_host`: `DOCKER_HOST`, else the local socket, as before.
    pub endpoint: Option<String>,
    pub capacity: usize,
    /// `None`: as the Docker CLI's environment says (`DOCKER_TLS_VERIFY`).
    pub tls_verify: Option<bool>,
    /// `None`: `DOCKER_CERT_PATH`, else `~/.docker` (for a `docker` worker speaking TLS).
    pub cert_path: Option<PathBuf>,
}

/// The Engine keys of `kiln.toml` that make the pool when there is no `[[workers]]` table.
#[derive(Clone, Debug, Default)]
pub struct SingleEngine {
    pub docker_host: Option<String>,
    pub docker_tls_verify: Option<bool>,
    pub docker_cert_path: Option<PathBuf>,
    pub max_parallel_builds: usize,
}

/// A `[[workers]]` table breaks a rule: which file, which table, which key, which rule.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("config file {}: {}: `{key}` {rule}", file.display(), table_label(*table, name.as_deref()))]
pub struct WorkerConfigError {
    pub file: PathBuf,
    /// 1-based position of the table among the `[[workers]]` tables (0: the file as a whole).
    pub table: usize,
    /// The table's `name`, when it has a usable one.
    pub name: Option<String>,
    pub key: &'static str,
    pub rule: String,
}

fn table_label(table: usize, name: Option<&str>) -> String {
    match (table, name) {
        (0, _) => "[[workers]]".into(),
        (n, Some(name)) => format!("[[workers]] table {n} (name {name:?})"),
        (n, None) => format!("[[workers]] table {n}"),
    }
}

/// The pool's workers: the tables validated in order, or the single Engine when there are
/// none. `file` names the config file in errors.
pub fn resolve(
    tables: &[WorkerTable],
    single: &SingleEngine,
    file: &Path,
) -> Result<Vec<WorkerConfig>, WorkerConfigError> {
    if tables.is_empty() {
        return Ok(vec![WorkerConfig {
            name: DEFAULT_WORKER.into(),
            kind: WorkerKind::Docker,
            endpoint: single.docker_host.clone().filter(|h| !h.trim().is_empty()),
            capacity: single.max_parallel_builds.max(1),
            tls_verify: single.docker_tls_verify,
            cert_path: single.docker_cert_path.clone(),
        }]);
    }
    let conflict = [
        ("docker_host", single.docker_host.is_some()),
        ("docker_tls_verify", single.docker_tls_verify.is_some()),
        ("docker_cert_path", single.docker_cert_path.is_some()),
    ]
    .into_iter()
    .find(|(_, set)| *set);
    if let Some((key, _)) = conflict {
        return Err(WorkerConfigError {
            file: file.to_path_buf(),
            table: 0,
            name: None,
            key,
            rule: "cannot be set together with [[workers]] tables: list that Engine as a \
                   [[workers]] table (endpoint, tls_verify, cert_path) instead"
                .into(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut workers = Vec::with_capacity(tables.len());
    for (index, table) in tables.iter().enumerate() {
        let worker = validate(table, index + 1, file)?;
        if !seen.insert(worker.name.clone()) {
            return Err(WorkerConfigError {
                file: file.to_path_buf(),
                table: index + 1,
                name: Some(worker.name),
                key: "name",
                rule: "must be unique: an earlier [[workers]] table has the same name".into(),
            });
        }
        workers.push(worker);
    }
    Ok(workers)
}

fn validate(
    table: &WorkerTable,
    position: usize,
    file: &Path,
) -> Result<WorkerConfig, WorkerConfigError> {
    let usable_name = table.name.as_deref().filter(|n| name_rule(n).is_none());
    let fail = |key: &'static str, rule: String| WorkerConfigError {
        file: file.to_path_buf(),
        table: position,
        name: usable_name.map(str::to_owned),
        key,
        rule,
    };

    let name = table
        .name
        .as_deref()
        .ok_or_else(|| fail("name", "is required (a unique name such as \"w1\")".into()))?;
    if let Some(rule) = name_rule(name) {
        return Err(fail("name", rule));
    }

    let kind = match table.kind.as_deref() {
        Some("docker") => WorkerKind::Docker,
        Some("buildkit") => {
            return Err(fail(
                "kind",
                "\"buildkit\" (a standalone buildkitd) is not supported: Kiln builds through \
                 the Docker Engine API; run the worker as a Docker Engine (kind = \"docker\", \
                 see docs/operations.md)"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(fail("kind", format!("must be \"docker\" (got {other:?})")));
        }
        None => {
            return Err(fail(
                "kind",
                "is required: \"docker\" (a Docker Engine)".into(),
            ));
        }
    };

    let endpoint = table.endpoint.as_deref().map(str::trim).ok_or_else(|| {
        fail(
            "endpoint",
            "is required: unix:///path/to/socket or tcp://host:port".into(),
        )
    })?;
    let scheme = endpoint_rule(endpoint).map_err(|rule| fail("endpoint", rule))?;

    let capacity = match table.capacity {
        None => 1,
        Some(n) if n >= 1 => {
            usize::try_from(n).map_err(|_| fail("capacity", format!("is too large (got {n})")))?
        }
        Some(n) => return Err(fail("capacity", format!("must be at least 1 (got {n})"))),
    };

    match scheme {
        Scheme::Unix => {
            if table.tls_verify == Some(true) {
                return Err(fail(
                    "tls_verify",
                    "is true, but a unix:// endpoint does not speak TLS".into(),
                ));
            }
            if table.cert_path.is_some() {
                return Err(fail(
                    "cert_path",
                    "is only for tcp:// endpoints (a unix:// endpoint does not speak TLS)".into(),
                ));
            }
        }
        Scheme::Tcp => {}
    }

    Ok(WorkerConfig {
        name: name.to_owned(),
        kind,
        endpoint: Some(endpoint.to_owned()),
        capacity,
        tls_verify: table.tls_verify,
        cert_path: table.cert_path.clone(),
    })
}

/// What is wrong with a worker name, if anything.
fn name_rule(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Some("must not be empty".into());
    };
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "must be at most {MAX_NAME_LEN} characters (got {})",
            name.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !first.is_ascii_alphanumeric() || !chars.all(allowed) {
        return Some(format!(
            "must be letters, digits, '.', '_' or '-', starting with a letter or digit (got {name:?})"
        ));
    }
    None
}

enum Scheme {
    Unix,
    Tcp,
}

/// Which kind of endpoint `endpoint` is, or what is wrong with it.
fn endpoint_rule(endpoint: &str) -> Result<Scheme, String> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') || path.len() < 2 {
            return Err(format!(
                "must name an absolute socket path, as unix:///run/kiln-w1/docker.sock (got {endpoint:?})"
            ));
        }
        return Ok(Scheme::Unix);
    }
    if let Some(rest) = endpoint.strip_prefix("tcp://") {
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let bad =
            || format!("must be tcp://host:port with a port from 1 to 65535 (got {endpoint:?})");
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let host_ok = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !host_ok || !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(bad());
        }
        return Ok(Scheme::Tcp);
    }
    Err(format!(
        "must start with unix:// or tcp:// (got {endpoint:?}); http:// and https:// are not worker endpoints"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(text: &str) -> Vec<WorkerTable> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            workers: Vec<WorkerTable>,
        }
        toml::from_str::<File>(text).unwrap().workers
    }

    fn check(text: &str) -> Result<Vec<WorkerConfig>, WorkerConfigError> {
        resolve(
            &tables(text),
            &SingleEngine {
                max_parallel_builds: 2,
                ..SingleEngine::default()
            },
            Path::new("kiln.toml"),
        )
    }

    fn err(text: &str) -> WorkerConfigError {
        check(text).unwrap_err()
    }

    const TWO: &str = r#"
        [[workers]]
        name = "w1"
        kind = "docker"
        endpoint = "unix:///run/kiln-w1/docker.sock"
        capacity = 2

        [[workers]]
        name = "w2"
        kind = "docker"
        endpoint = "tcp://builder-2.internal:2376"
        tls_verify = true
        cert_path = "/etc/kiln/w2-tls"
    "#;

    #[test]
    fn tables_become_workers_in_order() {
        let workers = check(TWO).unwrap();
        assert_eq!(
            workers,
            vec![
                WorkerConfig {
                    name: "w1".into(),
                    kind: WorkerKind::Docker,
                    endpoint: Some("unix:///run/kiln-w1/docker.sock".into()),
                    capacity: 2,
                    tls_verify: None,
                    cert_path: None,
                },
                WorkerConfig {
                    name: "w2".into(),
                    kind: WorkerKind::Docker,
                    endpoint: Some("tcp://builder-2.internal:2376".into()),
                    capacity: 1,
                    tls_verify: Some(true),
                    cert_path: Some("/etc/kiln/w2-tls".into()),
                },
            ]
        );
    }

    #[test]
    fn no_table_is_the_single_engine_of_the_docker_host_keys() {
        let single = SingleEngine {
            docker_host: Some("tcp://127.0.0.1:2376".into()),
            docker_tls_verify: Some(true),
            docker_cert_path: Some("/certs".into()),
            max_parallel_builds: 3,
        };
        let workers = resolve(&[], &single, Path::new("kiln.toml")).unwrap();
        assert_eq!(
            workers,
            vec![WorkerConfig {
                name: DEFAULT_WORKER.into(),
                kind: WorkerKind::Docker,
                endpoint: Some("tcp://127.0.0.1:2376".into()),
                capacity: 3,
                tls_verify: Some(true),
                cert_path: Some("/certs".into()),
            }]
        );
        // Nothing set at all: DOCKER_HOST or the local socket, decided when connecting.
        let workers = resolve(&[], &SingleEngine::default(), Path::new("kiln.toml")).unwrap();
        assert_eq!(workers[0].endpoint, None);
        assert_eq!(workers[0].capacity, 1);
    }

    #[test]
    fn the_docker_host_keys_and_tables_together_are_refused() {
        for key in ["docker_host", "docker_tls_verify", "docker_cert_path"] {
            let mut single = SingleEngine::default();
            match key {
                "docker_host" => single.docker_host = Some("unix:///x.sock".into()),
                "docker_tls_verify" => single.docker_tls_verify = Some(false),
                _ => single.docker_cert_path = Some("/c".into()),
            }
            let e = resolve(&tables(TWO), &single, Path::new("/etc/kiln/kiln.toml")).unwrap_err();
            assert_eq!(e.key, key);
            let text = e.to_string();
            assert!(
                text.starts_with("config file /etc/kiln/kiln.toml: [[workers]]: `"),
                "{text}"
            );
            assert!(text.contains("cannot be set together"), "{text}");
        }
    }

    #[test]
    fn names_are_required_well_formed_and_unique() {
        let e = err("[[workers]]\nkind = 'docker'\nendpoint = 'unix:///a.sock'\n");
        assert_eq!((e.table, e.key), (1, "name"));
        assert_eq!(
            e.to_string(),
            "config file kiln.toml: [[workers]] table 1: `name` is required (a unique name such as \"w1\")"
        );
        for bad in ["", "-w", "w 1", "w/1", "wé", &"w".repeat(64)] {
            let e = err(&format!(
                "[[workers]]\nname = {bad:?}\nkind = 'docker'\nendpoint = 'unix:///a.sock'\n"
            ));
            assert_eq!(e.key, "name", "{bad:?}");
            assert_eq!(e.name, None, "a bad name is not shown as the table's name");
        }
        let dup = "[[workers]]\nname = 'w1'\nkind = 'docker'\nendpoint = 'unix:///a.sock'\n\
                   [[workers]]\nname = 'w2'\nkind = 'docker'\nendpoint = 'unix:///b.sock'\n\
                   [[workers]]\nname = 'w1'\nkind = 'docker'\nendpoint = 'unix:///c.sock'\n";
        let e = err(dup);
        assert_eq!((e.table, e.key, e.name.as_deref()), (3, "name", Some("w1")));
        assert!(e.to_string().contains("table 3 (name \"w1\")"), "{e}");
        assert!(e.to_string().contains("must be unique"), "{e}");
    }

    #[test]
    fn kind_is_docker_and_buildkit_is_refused_with_the_reason() {
        let e = err("[[workers]]\nname = 'w1'\nendpoint = 'unix:///a.sock'\n");
        assert_eq!((e.key, e.name.as_deref()), ("kind", Some("w1")));
        assert!(e.rule.contains("is required"), "{e}");
        let e = err("[[workers]]\nname = 'w1'\nkind = 'podman'\nendpoint = 'unix:///a.sock'\n");
        assert_eq!(e.key, "kind");
        assert!(e.rule.contains("\"podman\""), "{e}");
        let e = err("[[workers]]\nname = 'bk'\nkind = 'buildkit'\nendpoint = 'tcp://h:1234'\n");
        assert_eq!((e.key, e.name.as_deref()), ("kind", Some("bk")));
        assert!(
            e.rule.contains("not supported") && e.rule.contains("Docker Engine API"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_unix_paths_or_tcp_host_port() {
        for good in [
            "unix:///run/kiln-w1/docker.sock",
            "tcp://127.0.0.1:2377",
            "tcp://buildkitd-0.buildkitd:1234",
            "tcp://[::1]:2376",
            "tcp://host:2376/",
        ] {
            let text = format!("[[workers]]\nname = 'w'\nkind = 'docker'\nendpoint = {good:?}\n");
            assert!(check(&text).is_ok(), "{good}: {:?}", check(&text));
        }
        for bad in [
            "",
            "unix://",
            "unix://relative.sock",
            "/var/run/docker.sock",
            "tcp://127.0.0.1",
            "tcp://:2376",
            "tcp://host:0",
            "tcp://host:70000",
            "tcp://host:2376/path",
            "tcp://[::1:2376",
            "https://host:2376",
            "http://host:2375",
            "ssh://host",
        ] {
            let text = format!("[[workers]]\nname = 'w'\nkind = 'docker'\nendpoint = {bad:?}\n");
            let e = err(&text);
            assert_eq!(e.key, "endpoint", "{bad}");
            assert!(e.rule.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        let e = err("[[workers]]\nname = 'w'\nkind = 'docker'\n");
        assert_eq!(e.key, "endpoint");
        assert!(e.rule.contains("is required"), "{e}");
    }

    #[test]
    fn capacity_is_at_least_one_and_defaults_to_one() {
        let base = "[[workers]]\nname = 'w'\nkind = 'docker'\nendpoint = 'unix:///a.sock'\n";
        assert_eq!(check(base).unwrap()[0].capacity, 1);
        assert_eq!(
            check(&format!("{base}capacity = 4\n")).unwrap()[0].capacity,
            4
        );
        for bad in [0, -1] {
            let e = err(&format!("{base}capacity = {bad}\n"));
            assert_eq!(e.key, "capacity");
            assert_eq!(e.rule, format!("must be at least 1 (got {bad})"));
        }
    }

    #[test]
    fn tls_keys_must_fit_the_endpoint() {
        let unix = "[[workers]]\nname = 'w'\nkind = 'docker'\nendpoint = 'unix:///a.sock'\n";
        assert_eq!(err(&format!("{unix}tls_verify = true\n")).key, "tls_verify");
        assert_eq!(err(&format!("{unix}cert_path = '/c'\n")).key, "cert_path");
        assert!(check(&format!("{unix}tls_verify = false\n")).is_ok());
        // A docker worker on tcp resolves TLS as the Engine keys do (environment fallback).
        let docker_tcp = "[[workers]]\nname = 'w'\nkind = 'docker'\nendpoint = 'tcp://h:2376'\n";
        assert!(check(docker_tcp).is_ok());
        let w = &check(&format!(
            "{docker_tcp}tls_verify = true\ncert_path = '/c'\n"
        ))
        .unwrap()[0];
        assert_eq!(
            (w.tls_verify, w.cert_path.as_deref()),
            (Some(true), Some(Path::new("/c")))
        );
    }

    #[test]
    fn unknown_keys_in_a_table_are_errors() {
        let text = "[[workers]]\nname = 'w'\nkind = 'docker'\nendpoint = 'unix:///a.sock'\ncapacitty = 2\n";
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct File {
            workers: Vec<WorkerTable>,
        }
        let e = toml::from_str::<File>(text).unwrap_err();
        assert!(e.to_string().contains("capacitty"), "{e}");
    }
}
