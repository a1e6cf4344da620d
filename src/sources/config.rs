//! `[sources.NAME]` tables of `kiln.toml` and their validation.
//!
//! A table names files, never a credential: `username_file` + `password_file` (basic auth)
//! or `token_file` (conda's `/t/TOKEN/` channel URLs). A URL with userinfo is refused, so a
//! credential cannot slip into the rendered Dockerfile, the store or the dashboard through
//! it. Every value that is rendered into a Dockerfile line or a package manager's file is
//! checked for the characters that would break out of it (quotes, `$`, whitespace), and
//! every error names the table and the key: ``[sources.corp] `url`: …``.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

/// One `[sources.NAME]` table as written.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    /// `"pip"`, `"conda"` or `"apt"`.
    pub kind: Option<String>,
    /// pip: the index URL (`…/simple/`); conda: the channel URL; apt: the repository URL.
    pub url: Option<String>,
    /// pip only: more index URLs, same credential.
    #[serde(default)]
    pub extra_urls: Vec<String>,
    /// File holding the user name (with `password_file`: basic auth).
    pub username_file: Option<PathBuf>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// conda only: file holding a channel token (`…/t/TOKEN/…`).
    pub token_file: Option<PathBuf>,
    /// Used by every spec that installs packages of this kind, named or not.
    #[serde(default)]
    pub default: bool,
    /// apt only: the suite (`bookworm`).
    pub suite: Option<String>,
    /// apt only: the components (default `["main"]`).
    #[serde(default)]
    pub components: Vec<String>,
    /// apt only: the repository's public key (binary `.gpg` or armored `.asc`).
    pub signed_by: Option<PathBuf>,
}

/// The package manager a source serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    Pip,
    Conda,
    Apt,
}

impl SourceKind {
    pub fn key(self) -> &'static str {
        match self {
            SourceKind::Pip => "pip",
            SourceKind::Conda => "conda",
            SourceKind::Apt => "apt",
        }
    }
}

/// Where a source's credential is read from (at build time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthFiles {
    None,
    Basic {
        username_file: PathBuf,
        password_file: PathBuf,
    },
    Token {
        token_file: PathBuf,
    },
}

/// apt's part of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptOptions {
    pub suite: String,
    pub components: Vec<String>,
    pub signed_by: Option<PathBuf>,
}

/// A validated source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// Without userinfo (validated).
    pub url: String,
    pub extra_urls: Vec<String>,
    pub auth: AuthFiles,
    pub default: bool,
    /// `Some` exactly for apt sources.
    pub apt: Option<AptOptions>,
}

impl Source {
    /// Every URL of the source (the index and the extra ones).
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.url.as_str()).chain(self.extra_urls.iter().map(String::as_str))
    }
}

/// Every configured source by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    by_name: BTreeMap<String, Source>,
}

impl Sources {
    /// Validates the tables; the first problem is the error.
    pub fn from_tables(
        tables: &BTreeMap<String, SourceTable>,
    ) -> Result<Sources, SourceConfigError> {
        let mut by_name = BTreeMap::new();
        for (name, table) in tables {
            by_name.insert(name.clone(), validate(name, table)?);
        }
        Ok(Sources { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Source> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// For tests and callers that build sources in code.
    pub fn from_sources(sources: impl IntoIterator<Item = Source>) -> Sources {
        Sources {
            by_name: sources.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }
}

/// A problem in one `[sources.NAME]` table.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("[sources.{source_name}] `{key}`: {message}")]
pub struct SourceConfigError {
    pub source_name: String,
    pub key: &'static str,
    pub message: String,
}

/// Source names become secret ids, file names in `/etc/apt/auth.conf.d` and
/// `sources.list.d` (apt ignores files with other characters) and spec entries.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate(name: &str, t: &SourceTable) -> Result<Source, SourceConfigError> {
    let err = |key: &'static str, message: String| SourceConfigError {
        source_name: name.to_string(),
        key,
        message,
    };
    if !valid_name(name) {
        return Err(err(
            "name",
            "a source name is 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit".into(),
        ));
    }
    let kind = match t.kind.as_deref() {
        Some("pip") => SourceKind::Pip,
        Some("conda") => SourceKind::Conda,
        Some("apt") => SourceKind::Apt,
        Some(other) => {
            return Err(err(
                "kind",
                format!("`{other}` is not a kind; use \"pip\", \"conda\" or \"apt\""),
            ));
        }
        None => {
            return Err(err(
                "kind",
                "missing; use \"pip\", \"conda\" or \"apt\"".into(),
            ));
        }
    };
    let url = t.url.as_deref().ok_or_else(|| {
        err(
            "url",
            "missing: the index, channel or repository URL".into(),
        )
    })?;
    check_url(url).map_err(|m| err("url", m))?;
    if kind != SourceKind::Pip && !t.extra_urls.is_empty() {
        return Err(err(
            "extra_urls",
            "only pip sources have extra index URLs".into(),
        ));
    }
    for extra in &t.extra_urls {
        check_url(extra).map_err(|m| err("extra_urls", m))?;
    }
    let auth = match (&t.username_file, &t.password_file, &t.token_file) {
        (None, None, None) => AuthFiles::None,
        (Some(u), Some(p), None) => AuthFiles::Basic {
            username_file: u.clone(),
            password_file: p.clone(),
        },
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(err(
                "token_file",
                "give either username_file + password_file or token_file, not both".into(),
            ));
        }
        (None, None, Some(token)) if kind == SourceKind::Conda => AuthFiles::Token {
            token_file: token.clone(),
        },
        (None, None, Some(_)) => {
            return Err(err(
                "token_file",
                format!(
                    "a token is a conda channel credential; a {} source takes username_file + password_file (basic auth; an API token goes in password_file)",
                    kind.key()
                ),
            ));
        }
        (Some(_), None, None) => {
            return Err(err(
                "password_file",
                "missing: username_file needs password_file".into(),
            ));
        }
        (None, Some(_), None) => {
            return Err(err(
                "username_file",
                "missing: password_file needs username_file".into(),
            ));
        }
    };
    let apt_only = [
        ("suite", t.suite.is_some()),
        ("components", !t.components.is_empty()),
        ("signed_by", t.signed_by.is_some()),
    ];
    let apt = if kind == SourceKind::Apt {
        let suite = t.suite.clone().ok_or_else(|| {
            err(
                "suite",
                "missing: an apt source needs its suite (e.g. \"bookworm\")".into(),
            )
        })?;
        check_word(&suite).map_err(|m| err("suite", m))?;
        let components = if t.components.is_empty() {
            vec!["main".to_string()]
        } else {
            t.components.clone()
        };
        for c in &components {
            check_word(c).map_err(|m| err("components", m))?;
        }
        Some(AptOptions {
            suite,
            components,
            signed_by: t.signed_by.clone(),
        })
    } else {
        if let Some((key, _)) = apt_only.iter().find(|(_, set)| *set) {
            return Err(err(key, format!("only apt sources have `{key}`")));
        }
        None
    };
    Ok(Source {
        name: name.to_string(),
        kind,
        url: url.to_string(),
        extra_urls: t.extra_urls.clone(),
        auth,
        default: t.default,
        apt,
    })
}

/// An `http(s)://` URL with a host, no userinfo, and nothing that would break out of a
/// quoted Dockerfile word or a config file line.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL"))?;
    if let Some(bad) = url.chars().find(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '\'' | '"' | '\\' | '$' | '`' | '[' | ']')
    }) {
        return Err(format!("the URL holds {bad:?}, which Kiln does not render"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("the URL holds a user name or password: put the credential in username_file + password_file (or token_file)".into());
    }
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// An apt suite or component: letters, digits and `._/+-`.
fn check_word(word: &str) -> Result<(), String> {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+'))
    {
        Ok(())
    } else {
        Err(format!(
            "`{word}` is not a suite or component name (letters, digits, `._/+-`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Sources, SourceConfigError> {
        let tables: BTreeMap<String, SourceTable> = toml::from_str(text).unwrap();
        Sources::from_tables(&tables)
    }

    #[test]
    fn a_full_table_of_each_kind() {
        let sources = parse(
            r#"
[internal-pypi]
kind = "pip"
url = "https://pypi.corp.example/simple/"
extra_urls = ["https://pypi.org/simple/"]
username_file = "/etc/kiln/pypi-user"
password_file = "/etc/kiln/pypi-password"
default = true
[corp-conda]
kind = "conda"
url = "https://conda.corp.example/internal"
token_file = "/etc/kiln/conda-token"
[corp-apt]
kind = "apt"
url = "https://apt.corp.example/debian/"
suite = "bookworm"
signed_by = "/etc/kiln/corp.gpg"
username_file = "/etc/kiln/apt-user"
password_file = "/etc/kiln/apt-password"
"#,
        )
        .unwrap();
        let pypi = sources.get("internal-pypi").unwrap();
        assert_eq!(pypi.kind, SourceKind::Pip);
        assert!(pypi.default);
        assert_eq!(pypi.urls().count(), 2);
        assert!(matches!(pypi.auth, AuthFiles::Basic { .. }));
        let conda = sources.get("corp-conda").unwrap();
        assert!(matches!(conda.auth, AuthFiles::Token { .. }));
        let apt = sources.get("corp-apt").unwrap().apt.clone().unwrap();
        assert_eq!(apt.suite, "bookworm");
        assert_eq!(apt.components, ["main"]);
        assert_eq!(
            sources.names().collect::<Vec<_>>(),
            ["corp-apt", "corp-conda", "internal-pypi"]
        );
    }

    #[test]
    fn every_error_names_the_table_and_the_key() {
        let cases = [
            ("[a]\nurl = 'https://x/'\n", "[sources.a] `kind`: missing"),
            (
                "[a]\nkind = 'npm'\nurl = 'https://x/'\n",
                "[sources.a] `kind`: `npm` is not a kind",
            ),
            ("[a]\nkind = 'pip'\n", "[sources.a] `url`: missing"),
            (
                "[a]\nkind = 'pip'\nurl = 'https://bob:pw@x/simple/'\n",
                "[sources.a] `url`: the URL holds a user name or password",
            ),
            (
                "[a]\nkind = 'pip'\nurl = 'ftp://x/'\n",
                "[sources.a] `url`: `ftp://x/` is not an http",
            ),
            (
                "[a]\nkind = 'pip'\nurl = \"https://x/'$(id)\"\n",
                "[sources.a] `url`: the URL holds",
            ),
            (
                "[a]\nkind = 'apt'\nurl = 'https://x/'\nsuite = 'bookworm'\nextra_urls = ['https://y/']\n",
                "[sources.a] `extra_urls`: only pip sources",
            ),
            (
                "[a]\nkind = 'pip'\nurl = 'https://x/'\nusername_file = '/u'\n",
                "[sources.a] `password_file`: missing",
            ),
            (
                "[a]\nkind = 'pip'\nurl = 'https://x/'\ntoken_file = '/t'\n",
                "[sources.a] `token_file`: a token is a conda channel credential",
            ),
            (
                "[a]\nkind = 'conda'\nurl = 'https://x/'\ntoken_file = '/t'\npassword_file = '/p'\n",
                "[sources.a] `token_file`: give either",
            ),
            (
                "[a]\nkind = 'apt'\nurl = 'https://x/'\n",
                "[sources.a] `suite`: missing",
            ),
            (
                "[a]\nkind = 'pip'\nurl = 'https://x/'\nsuite = 'bookworm'\n",
                "[sources.a] `suite`: only apt sources",
            ),
            (
                "[a]\nkind = 'apt'\nurl = 'https://x/'\nsuite = 'bookworm'\ncomponents = ['main contrib']\n",
                "[sources.a] `components`: `main contrib` is not",
            ),
            (
                "['-a']\nkind = 'pip'\nurl = 'https://x/'\n",
                "[sources.-a] `name`:",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}\n→ {err}");
        }
    }

    #[test]
    fn names() {
        for ok in ["internal-pypi", "corp.apt", "a", "A_1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a b", "a/b", "ä", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
