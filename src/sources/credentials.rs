//! Reading a source's credential from the files its table names, when a build starts.
//!
//! Read per build, never at start-up and never stored: a rotated password file is used by
//! the next build, and nothing but the build's own memory ever holds the value. Surrounding
//! whitespace (the newline `echo` writes) is trimmed; an empty file is an error, not an
//! anonymous request that would fail later with a confusing 401.

use super::config::{AuthFiles, Source};
use super::secrets::SourceError;
use std::path::Path;

/// A credential in memory. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl Credential {
    /// The values a log line must never show (the user name is not secret).
    pub fn secret_values(&self) -> Vec<String> {
        match self {
            Credential::Basic { password, .. } => vec![password.clone()],
            Credential::Token(token) => vec![token.clone()],
        }
    }
}

/// The source's credential, `None` when it has none.
pub fn read(source: &Source) -> Result<Option<Credential>, SourceError> {
    match &source.auth {
        AuthFiles::None => Ok(None),
        AuthFiles::Basic {
            username_file,
            password_file,
        } => Ok(Some(Credential::Basic {
            username: read_one(source, "username_file", username_file)?,
            password: read_one(source, "password_file", password_file)?,
        })),
        AuthFiles::Token { token_file } => Ok(Some(Credential::Token(read_one(
            source,
            "token_file",
            token_file,
        )?))),
    }
}

fn read_one(source: &Source, key: &'static str, path: &Path) -> Result<String, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| SourceError::Credential {
        source_name: source.name.clone(),
        key,
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SourceError::Credential {
            source_name: source.name.clone(),
            key,
            path: path.to_path_buf(),
            why: "the file is empty".into(),
        });
    }
    if value.contains(['\n', '\r']) {
        return Err(SourceError::Credential {
            source_name: source.name.clone(),
            key,
            path: path.to_path_buf(),
            why: "the file holds more than one line".into(),
        });
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::SourceKind;

    fn source(auth: AuthFiles) -> Source {
        Source {
            name: "corp".into(),
            kind: SourceKind::Pip,
            url: "https://pypi.corp.example/simple/".into(),
            extra_urls: vec![],
            auth,
            default: false,
            apt: None,
        }
    }

    #[test]
    fn files_are_read_and_trimmed_and_debug_hides_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("u"), "alice\n").unwrap();
        std::fs::write(dir.path().join("p"), "  s3cret \n").unwrap();
        let cred = read(&source(AuthFiles::Basic {
            username_file: dir.path().join("u"),
            password_file: dir.path().join("p"),
        }))
        .unwrap()
        .unwrap();
        assert_eq!(
            cred,
            Credential::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            }
        );
        assert!(!format!("{cred:?}").contains("s3cret"));
        assert_eq!(cred.secret_values(), ["s3cret"]);
        assert_eq!(read(&source(AuthFiles::None)).unwrap(), None);
    }

    #[test]
    fn a_missing_or_empty_file_names_source_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let err = read(&source(AuthFiles::Token {
            token_file: dir.path().join("empty"),
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("source corp") && err.contains("token_file") && err.contains("empty"),
            "{err}"
        );
        let err = read(&source(AuthFiles::Basic {
            username_file: dir.path().join("nope"),
            password_file: dir.path().join("empty"),
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("username_file") && err.contains("nope"),
            "{err}"
        );
    }
}
