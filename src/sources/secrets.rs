//! What a job hands to BuildKit for the sources its Dockerfile records: one [`SecretFile`]
//! per secret id the Dockerfile mounts, rendered from the configuration and the credential
//! files as they are when the build starts, plus the values the job's log must never show.
//!
//! The recorded names come from the revision's Dockerfile (rendered at reconcile), the
//! content from the configuration now: a source that is no longer configured fails the job
//! with a message naming it, and a changed password is simply used.

use super::config::{Source, SourceKind, Sources};
use super::credentials::{self, Credential};
use super::dockerfile::{recorded, secret_ids};
use super::render;
use std::path::PathBuf;
use thiserror::Error;

/// A file BuildKit mounts into one RUN step. `Debug` never prints the content.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub id: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("id", &self.id)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Moved (not copied) into the build's session, which zeroes it when dropped.
impl From<SecretFile> for crate::buildkit::BuildSecret {
    fn from(file: SecretFile) -> Self {
        crate::buildkit::BuildSecret::new(file.id, file.data)
    }
}

/// Why a job's sources could not be prepared (the job fails; not retried).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SourceError {
    #[error("source {source_name}: cannot read {key} {}: {why}", path.display())]
    Credential {
        source_name: String,
        key: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("source {source_name}: {why}")]
    Unrenderable { source_name: String, why: String },
    #[error("source {0} is used by this revision but no longer configured in Kiln")]
    NotConfigured(String),
    #[error("source {source_name}: cannot read signed_by {}: {why}", path.display())]
    Key {
        source_name: String,
        path: PathBuf,
        why: String,
    },
}

/// The secrets of one build and what its log must hide. `Debug` shows neither.
#[derive(Clone, Default)]
pub struct JobSecrets {
    pub files: Vec<SecretFile>,
    /// Credential values (and their percent-encoded forms).
    pub hide: Vec<String>,
    /// The sources used, for recognising their failures in the log.
    pub used: Vec<Source>,
}

impl std::fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSecrets")
            .field("files", &self.files)
            .field("hidden_values", &self.hide.len())
            .field(
                "used",
                &self.used.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Reads the credentials of the sources `dockerfile` records and renders its secrets.
pub fn for_dockerfile(sources: &Sources, dockerfile: &str) -> Result<JobSecrets, SourceError> {
    let names = recorded(dockerfile);
    if names.is_empty() {
        return Ok(JobSecrets::default());
    }
    let mut used: Vec<(&Source, Option<Credential>)> = Vec::new();
    for name in &names {
        let source = sources
            .get(name)
            .ok_or_else(|| SourceError::NotConfigured(name.clone()))?;
        used.push((source, credentials::read(source)?));
    }
    let pairs: Vec<(&Source, Option<&Credential>)> =
        used.iter().map(|(s, c)| (*s, c.as_ref())).collect();
    let mut out = JobSecrets {
        used: used.iter().map(|(s, _)| (*s).clone()).collect(),
        ..JobSecrets::default()
    };
    for (_, cred) in &used {
        for value in cred.iter().flat_map(Credential::secret_values) {
            let encoded = render::percent_encode(&value);
            if encoded != value {
                out.hide.push(encoded);
            }
            out.hide.push(value);
        }
    }
    for id in secret_ids(dockerfile) {
        let data = if id == render::PIP_SECRET_ID {
            render::pip_conf(&pairs)?.into_bytes()
        } else if id == render::CONDA_SECRET_ID {
            render::condarc(&pairs).into_bytes()
        } else if let Some((source, cred)) =
            pairs.iter().find(|(s, _)| render::apt_auth_id(s) == id)
        {
            match cred {
                Some(cred) => render::apt_auth(source, cred)?.into_bytes(),
                None => {
                    return Err(SourceError::Unrenderable {
                        source_name: source.name.clone(),
                        why: "the revision was rendered with a credential, but the source has none configured now".into(),
                    });
                }
            }
        } else if let Some((source, _)) = pairs.iter().find(|(s, _)| render::apt_key_id(s) == id) {
            read_key(source)?
        } else {
            // Not a source's secret (another part of Kiln may mount its own).
            continue;
        };
        out.files.push(SecretFile { id, data });
    }
    Ok(out)
}

fn read_key(source: &Source) -> Result<Vec<u8>, SourceError> {
    let path = source
        .apt
        .as_ref()
        .filter(|_| source.kind == SourceKind::Apt)
        .and_then(|a| a.signed_by.clone())
        .ok_or_else(|| SourceError::Unrenderable {
            source_name: source.name.clone(),
            why: "the revision was rendered with signed_by, but the source has none configured now"
                .into(),
        })?;
    std::fs::read(&path).map_err(|e| SourceError::Key {
        source_name: source.name.clone(),
        path,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::SourceTable;
    use std::collections::BTreeMap;

    #[test]
    fn secrets_for_the_recorded_sources_read_now() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(p("user"), "alice\n").unwrap();
        std::fs::write(p("pass"), "pa ss+1\n").unwrap();
        std::fs::write(p("key.gpg"), b"\x99binary key").unwrap();
        let text = format!(
            r#"
[pypi]
kind = "pip"
url = "http://127.0.0.1:8081/simple/"
username_file = "{u}"
password_file = "{pw}"
[corp]
kind = "apt"
url = "http://127.0.0.1:8082/debian/"
suite = "bookworm"
signed_by = "{k}"
"#,
            u = p("user"),
            pw = p("pass"),
            k = p("key.gpg")
        );
        let tables: BTreeMap<String, SourceTable> = toml::from_str(&text).unwrap();
        let sources = Sources::from_tables(&tables).unwrap();
        let dockerfile = "# Package sources: corp, pypi\nFROM x\n\
            RUN --mount=type=secret,id=kiln-key-corp,target=/etc/apt/keyrings/kiln-corp.gpg,required=true true\n\
            RUN --mount=type=cache,target=/c --mount=type=secret,id=kiln-pip,target=/run/kiln/pip.conf,required=true true\n";
        let secrets = for_dockerfile(&sources, dockerfile).unwrap();
        let ids: Vec<&str> = secrets.files.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["kiln-key-corp", "kiln-pip"]);
        assert_eq!(secrets.files[0].data, b"\x99binary key");
        assert_eq!(
            String::from_utf8(secrets.files[1].data.clone()).unwrap(),
            "[global]\nindex-url = http://alice:pa%20ss%2B1@127.0.0.1:8081/simple/\n"
        );
        assert_eq!(secrets.hide, ["pa%20ss%2B1", "pa ss+1"]);
        assert!(!format!("{secrets:?}").contains("pa ss"));

        // Rotated: the next build reads the new password.
        std::fs::write(p("pass"), "new\n").unwrap();
        let again = for_dockerfile(&sources, dockerfile).unwrap();
        assert_eq!(again.hide, ["new"]);

        let err = for_dockerfile(&Sources::default(), dockerfile).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source corp is used by this revision but no longer configured in Kiln"
        );
        assert!(
            for_dockerfile(&Sources::default(), "FROM x\n")
                .unwrap()
                .files
                .is_empty()
        );
    }
}
