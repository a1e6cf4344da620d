//! Where the Engine listens and how to reach it: a unix socket, plain TCP, or mutual TLS.
//!
//! Resolved the way the Docker CLI resolves it (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`,
//! `DOCKER_CERT_PATH` with `ca.pem`, `cert.pem`, `key.pem`), so a machine set up for `docker`
//! works for Kiln unchanged. Kiln always verifies the Engine's certificate: `DOCKER_TLS`
//! without verification is treated as verification, never as a silent downgrade. Separate
//! from the client because it is pure (the environment is a parameter) and every set-up
//! mistake is named here, before anything connects.

use super::EngineError;
use std::path::{Path, PathBuf};

/// The Engine endpoint used when neither the caller nor `DOCKER_HOST` names one.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// Where the Engine listens and, for TCP, the TLS client files: Kiln's `docker_host`,
/// `docker_tls_verify` and `docker_cert_path` settings. Each unset field falls back to the
/// Docker CLI's environment (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`/`DOCKER_TLS`,
/// `DOCKER_CERT_PATH`), so a machine set up for `docker` works for Kiln unchanged.
#[derive(Clone, Debug, Default)]
pub struct EngineEndpoint {
    /// `unix:///path`, `/path`, `tcp://host:port`, `http://host:port` or `https://host:port`.
    pub host: Option<String>,
    /// Speak mutual TLS to a `tcp://` endpoint. `Some(false)` forces plain HTTP.
    pub tls_verify: Option<bool>,
    /// Directory with `ca.pem`, `cert.pem` and `key.pem` (the Docker CLI's layout). Setting it
    /// asks for TLS on a `tcp://` endpoint unless `tls_verify` is `Some(false)`.
    pub cert_path: Option<PathBuf>,
}

/// The three files of a TLS client, as the Docker CLI names them in its cert directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A resolved [`EngineEndpoint`]: how bollard is to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A unix socket: the endpoint as given, and the socket's path.
    Unix { host: String, path: String },
    /// Plain HTTP over TCP (`tcp://` or `http://` as given).
    Http(String),
    /// Mutual TLS over TCP; `host` is the endpoint as given.
    Tls { host: String, files: TlsFiles },
}

impl Transport {
    /// The endpoint as the operator wrote it, for messages.
    pub fn host(&self) -> &str {
        match self {
            Transport::Unix { host, .. } | Transport::Http(host) | Transport::Tls { host, .. } => {
                host
            }
        }
    }
}

impl EngineEndpoint {
    /// Decides the transport from the fields, else from `env` (the process environment in
    /// production, a map in tests). Fails when TLS is asked for and a client file is missing
    /// or unreadable, when TLS is asked for an `http://` or unix endpoint, and on an unknown
    /// scheme. Nothing is connected yet.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Transport, EngineError> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let host = self
            .host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .or_else(|| set("DOCKER_HOST").map(|h| h.trim().to_owned()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let tls_setup = |message: String| EngineError::TlsSetup {
            endpoint: host.clone(),
            message,
        };
        let env_cert_path = set("DOCKER_CERT_PATH").map(PathBuf::from);
        let wants_tls = match self.tls_verify {
            Some(verify) => verify,
            None => {
                let flag = |name: &str| set(name).is_some_and(|v| v.trim() != "0");
                flag("DOCKER_TLS_VERIFY")
                    || flag("DOCKER_TLS")
                    || self.cert_path.is_some()
                    || env_cert_path.is_some()
            }
        };

        if let Some(path) = host
            .strip_prefix("unix://")
            .or(host.starts_with('/').then_some(host.as_str()))
        {
            if self.tls_verify == Some(true) {
                return Err(tls_setup(
                    "docker_tls_verify is set, but a unix socket does not speak TLS".into(),
                ));
            }
            return Ok(Transport::Unix {
                path: path.to_owned(),
                host,
            });
        }
        let tls = if host.starts_with("https://") {
            if self.tls_verify == Some(false) {
                return Err(tls_setup(
                    "an https:// endpoint needs TLS, but docker_tls_verify is false".into(),
                ));
            }
            true
        } else if host.starts_with("http://") {
            if self.tls_verify == Some(true) {
                return Err(tls_setup(
                    "docker_tls_verify is set for an http:// endpoint; write tcp:// or https://"
                        .into(),
                ));
            }
            false
        } else if host.starts_with("tcp://") {
            wants_tls
        } else {
            return Err(EngineError::Other(format!(
                "unsupported Docker endpoint {host:?} (expected unix:///path, tcp://host:port, http://host:port or https://host:port)"
            )));
        };
        if !tls {
            return Ok(Transport::Http(host));
        }

        let dir = self
            .cert_path
            .clone()
            .or(env_cert_path)
            .or_else(|| set("HOME").map(|home| Path::new(&home).join(".docker")))
            .ok_or_else(|| {
                tls_setup(
                    "TLS needs a cert directory: set docker_cert_path or DOCKER_CERT_PATH".into(),
                )
            })?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        for (role, path) in [
            ("CA certificate", &files.ca),
            ("client certificate", &files.cert),
            ("client key", &files.key),
        ] {
            let text = std::fs::read(path).map_err(|e| {
                tls_setup(format!(
                    "cannot read the TLS {role} {}: {e}",
                    path.display()
                ))
            })?;
            if !text.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(tls_setup(format!(
                    "the TLS {role} {} holds no PEM block",
                    path.display()
                )));
            }
        }
        Ok(Transport::Tls { host, files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A cert directory with the three files, PEM-looking enough for `resolve`.
    fn cert_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(
                dir.path().join(name),
                "-----BEGIN X-----\n-----END X-----\n",
            )
            .unwrap();
        }
        dir
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn endpoint_defaults_to_the_local_socket_and_docker_host() {
        let none = EngineEndpoint::default();
        assert_eq!(
            none.resolve(env_of(&[])).unwrap(),
            Transport::Unix {
                host: DEFAULT_ENDPOINT.into(),
                path: "/var/run/docker.sock".into()
            }
        );
        assert_eq!(
            none.resolve(env_of(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]))
                .unwrap(),
            Transport::Http("tcp://10.0.0.1:2375".into())
        );
        let given = EngineEndpoint {
            host: Some("/run/other.sock".into()),
            ..Default::default()
        };
        assert_eq!(
            given
                .resolve(env_of(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]))
                .unwrap(),
            Transport::Unix {
                host: "/run/other.sock".into(),
                path: "/run/other.sock".into()
            }
        );
    }

    #[test]
    fn tcp_speaks_tls_when_the_config_or_the_environment_asks() {
        let certs = cert_dir();
        let dir = certs.path().to_str().unwrap();
        let files = TlsFiles {
            ca: certs.path().join("ca.pem"),
            cert: certs.path().join("cert.pem"),
            key: certs.path().join("key.pem"),
        };
        let tls = Transport::Tls {
            host: "tcp://127.0.0.1:2376".into(),
            files: files.clone(),
        };
        let host = Some("tcp://127.0.0.1:2376".to_string());
        // Config: a cert path alone asks for TLS.
        let configured = EngineEndpoint {
            host: host.clone(),
            tls_verify: None,
            cert_path: Some(certs.path().into()),
        };
        assert_eq!(configured.resolve(env_of(&[])).unwrap(), tls);
        // Environment, the Docker CLI's way.
        let bare = EngineEndpoint {
            host: host.clone(),
            ..Default::default()
        };
        for env in [
            vec![("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", dir)],
            vec![("DOCKER_CERT_PATH", dir)],
            vec![("DOCKER_TLS", "1"), ("DOCKER_CERT_PATH", dir)],
        ] {
            assert_eq!(bare.resolve(env_of(&env)).unwrap(), tls, "{env:?}");
        }
        // ~/.docker when no path is given.
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".docker")).unwrap();
        for name in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::copy(
                certs.path().join(name),
                home.path().join(".docker").join(name),
            )
            .unwrap();
        }
        let verify = EngineEndpoint {
            host: host.clone(),
            tls_verify: Some(true),
            cert_path: None,
        };
        let resolved = verify
            .resolve(env_of(&[("HOME", home.path().to_str().unwrap())]))
            .unwrap();
        assert!(
            matches!(&resolved, Transport::Tls { files, .. } if files.ca.starts_with(home.path())),
            "{resolved:?}"
        );
        // Plain when nothing asks, or when the config says no despite the environment.
        assert_eq!(
            bare.resolve(env_of(&[("DOCKER_TLS_VERIFY", "0")])).unwrap(),
            Transport::Http("tcp://127.0.0.1:2376".into())
        );
        let off = EngineEndpoint {
            host,
            tls_verify: Some(false),
            cert_path: Some(certs.path().into()),
        };
        assert_eq!(
            off.resolve(env_of(&[("DOCKER_TLS_VERIFY", "1")])).unwrap(),
            Transport::Http("tcp://127.0.0.1:2376".into())
        );
        // https:// always means TLS.
        let https = EngineEndpoint {
            host: Some("https://engine.example:2376".into()),
            tls_verify: None,
            cert_path: Some(certs.path().into()),
        };
        assert!(matches!(
            https.resolve(env_of(&[])).unwrap(),
            Transport::Tls { .. }
        ));
    }

    #[test]
    fn tls_set_up_mistakes_name_the_file_and_are_not_retried() {
        let certs = cert_dir();
        std::fs::remove_file(certs.path().join("key.pem")).unwrap();
        let endpoint = EngineEndpoint {
            host: Some("tcp://127.0.0.1:2376".into()),
            tls_verify: Some(true),
            cert_path: Some(certs.path().into()),
        };
        let err = endpoint.resolve(env_of(&[])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "Docker Engine at tcp://127.0.0.1:2376: cannot read the TLS client key "
            ),
            "{text}"
        );
        assert!(text.contains("key.pem"), "{text}");
        assert!(!err.is_transient());

        std::fs::write(certs.path().join("key.pem"), "not a key").unwrap();
        let text = endpoint.resolve(env_of(&[])).unwrap_err().to_string();
        assert!(text.contains("holds no PEM block"), "{text}");

        for (host, verify) in [
            ("http://127.0.0.1:2376", Some(true)),
            ("unix:///var/run/docker.sock", Some(true)),
            ("https://127.0.0.1:2376", Some(false)),
        ] {
            let endpoint = EngineEndpoint {
                host: Some(host.into()),
                tls_verify: verify,
                cert_path: None,
            };
            let err = endpoint.resolve(env_of(&[])).unwrap_err();
            assert!(matches!(err, EngineError::TlsSetup { .. }), "{host}: {err}");
        }
        let err = EngineEndpoint {
            host: Some("ssh://engine".into()),
            ..Default::default()
        }
        .resolve(env_of(&[]))
        .unwrap_err();
        assert!(
            err.to_string().contains("unsupported Docker endpoint"),
            "{err}"
        );
    }
}
