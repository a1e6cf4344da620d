//! The files a package manager reads its sources from: the secret ones (`pip.conf`,
//! `.condarc`, apt's `auth.conf.d` entry, which carry the credential and only ever reach a
//! BuildKit secret mount) and the public apt sources list line (in the Dockerfile).
//!
//! * pip: `pip.conf` with `index-url` / `extra-index-url`, the credential as URL userinfo
//!   (percent-encoded; pip reads the file with a raw parser, so `%` needs no escaping). pip
//!   treats the index and the extra indexes alike, so the order of several sources does not
//!   matter.
//! * conda: `.condarc` with the sources as `channels` and as `custom_multichannels` under
//!   their own name, so `internal-conda::pkg` means that source; a token goes into the URL as
//!   `/t/TOKEN/` (conda's token form), basic auth as userinfo.
//! * apt: `machine <scheme>://host[:port]/path` + `login` + `password` (apt_auth.conf(5);
//!   with the scheme written out the entry also applies to `http://`, which apt otherwise
//!   reserves for https). apt's parser splits on whitespace, so a credential with whitespace
//!   is refused.

use super::config::{Source, SourceKind};
use super::credentials::Credential;
use super::secrets::SourceError;
use std::fmt::Write as _;

/// Secret id and mount target of the pip configuration.
pub const PIP_SECRET_ID: &str = "kiln-pip";
pub const PIP_CONF_TARGET: &str = "/run/kiln/pip.conf";
/// Secret id and mount target of the conda configuration.
pub const CONDA_SECRET_ID: &str = "kiln-conda";
pub const CONDARC_TARGET: &str = "/run/kiln/condarc";

/// Secret id of an apt source's `auth.conf.d` entry.
pub fn apt_auth_id(source: &Source) -> String {
    format!("kiln-apt-{}", source.name)
}

/// Where apt reads that entry.
pub fn apt_auth_target(source: &Source) -> String {
    format!("/etc/apt/auth.conf.d/kiln-{}.conf", source.name)
}

/// Mount id of an apt source's public key (`signed_by`).
pub fn apt_key_id(source: &Source) -> String {
    format!("kiln-key-{}", source.name)
}

/// Where the key is mounted: apt takes an armored key only with the `.asc` extension.
pub fn apt_key_target(source: &Source) -> Option<String> {
    let signed_by = source.apt.as_ref()?.signed_by.as_ref()?;
    let ext = match signed_by.extension().and_then(|e| e.to_str()) {
        Some("asc") => "asc",
        _ => "gpg",
    };
    Some(format!("/etc/apt/keyrings/kiln-{}.{ext}", source.name))
}

/// The sources list file of an apt source (written and removed inside the apt step).
pub fn apt_list_path(source: &Source) -> String {
    format!("/etc/apt/sources.list.d/kiln-{}.list", source.name)
}

/// The sources list line: public (no credential), so it may appear in the Dockerfile.
pub fn apt_list_line(source: &Source) -> String {
    let Some(apt) = &source.apt else {
        return String::new();
    };
    let signed = apt_key_target(source)
        .map(|k| format!("[signed-by={k}] "))
        .unwrap_or_default();
    format!(
        "deb {signed}{} {} {}",
        source.url,
        apt.suite,
        apt.components.join(" ")
    )
}

/// `pip.conf` for the spec's pip sources.
pub fn pip_conf(sources: &[(&Source, Option<&Credential>)]) -> Result<String, SourceError> {
    let mut urls = Vec::new();
    for (source, cred) in sources.iter().filter(|(s, _)| s.kind == SourceKind::Pip) {
        for url in source.urls() {
            urls.push(with_userinfo(url, *cred));
        }
    }
    let mut out = String::from("[global]\n");
    if let Some((first, rest)) = urls.split_first() {
        let _ = writeln!(out, "index-url = {first}");
        if !rest.is_empty() {
            let _ = writeln!(out, "extra-index-url =");
            for url in rest {
                let _ = writeln!(out, "    {url}");
            }
        }
    }
    Ok(out)
}

/// `.condarc` for the spec's conda sources.
pub fn condarc(sources: &[(&Source, Option<&Credential>)]) -> String {
    let conda: Vec<(&Source, String)> = sources
        .iter()
        .filter(|(s, _)| s.kind == SourceKind::Conda)
        .map(|(s, cred)| (*s, conda_url(&s.url, *cred)))
        .collect();
    let mut out = String::from("channels:\n");
    for (_, url) in &conda {
        let _ = writeln!(out, "  - {}", yaml_quote(url));
    }
    out.push_str("custom_multichannels:\n");
    for (source, url) in &conda {
        let _ = writeln!(
            out,
            "  {}:\n    - {}",
            yaml_quote(&source.name),
            yaml_quote(url)
        );
    }
    out
}

/// apt's `auth.conf.d` entry of one source.
pub fn apt_auth(source: &Source, cred: &Credential) -> Result<String, SourceError> {
    let (login, password) = match cred {
        Credential::Basic { username, password } => (username.as_str(), password.as_str()),
        // Refused by the config's validation; kept total.
        Credential::Token(token) => ("token", token.as_str()),
    };
    if login
        .chars()
        .chain(password.chars())
        .any(char::is_whitespace)
    {
        return Err(SourceError::Unrenderable {
            source_name: source.name.clone(),
            why: "apt's auth.conf cannot carry a user name or password with whitespace".into(),
        });
    }
    Ok(format!(
        "machine {}\nlogin {login}\npassword {password}\n",
        source.url
    ))
}

/// `url` with `user:password@` (percent-encoded) after the scheme.
fn with_userinfo(url: &str, cred: Option<&Credential>) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match cred {
        Some(Credential::Basic { username, password }) => format!(
            "{scheme}://{}:{}@{rest}",
            percent_encode(username),
            percent_encode(password)
        ),
        Some(Credential::Token(token)) => {
            format!("{scheme}://{}@{rest}", percent_encode(token))
        }
        None => url.to_string(),
    }
}

/// A conda channel URL with its credential: a token as `/t/TOKEN/` after the host.
fn conda_url(url: &str, cred: Option<&Credential>) -> String {
    match cred {
        Some(Credential::Token(token)) => {
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_string();
            };
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{scheme}://{host}/t/{}{}",
                percent_encode(token),
                if path.is_empty() { "/" } else { path }
            )
        }
        other => with_userinfo(url, other),
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A YAML double-quoted scalar.
fn yaml_quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::{AptOptions, AuthFiles};
    use std::path::PathBuf;

    fn source(name: &str, kind: SourceKind, url: &str) -> Source {
        Source {
            name: name.into(),
            kind,
            url: url.into(),
            extra_urls: vec![],
            auth: AuthFiles::None,
            default: false,
            apt: (kind == SourceKind::Apt).then(|| AptOptions {
                suite: "bookworm".into(),
                components: vec!["main".into(), "contrib".into()],
                signed_by: Some(PathBuf::from("/etc/kiln/corp.asc")),
            }),
        }
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn pip_conf_carries_every_url_with_the_encoded_credential() {
        let mut a = source(
            "internal",
            SourceKind::Pip,
            "https://pypi.corp.example/simple/",
        );
        a.extra_urls = vec!["https://mirror.corp.example/simple/".into()];
        let b = source("open", SourceKind::Pip, "http://127.0.0.1:8081/simple/");
        let cred = basic("alice", "s3cr+t/pw:@%");
        let conf = pip_conf(&[(&a, Some(&cred)), (&b, None)]).unwrap();
        assert_eq!(
            conf,
            "[global]\n\
             index-url = https://alice:s3cr%2Bt%2Fpw%3A%40%25@pypi.corp.example/simple/\n\
             extra-index-url =\n    https://alice:s3cr%2Bt%2Fpw%3A%40%25@mirror.corp.example/simple/\n    http://127.0.0.1:8081/simple/\n"
        );
    }

    #[test]
    fn condarc_has_the_channel_with_its_token_under_its_name() {
        let c = source(
            "internal-conda",
            SourceKind::Conda,
            "https://conda.corp.example/internal",
        );
        let token = Credential::Token("tok-123".into());
        assert_eq!(
            condarc(&[(&c, Some(&token))]),
            "channels:\n  - \"https://conda.corp.example/t/tok-123/internal\"\n\
             custom_multichannels:\n  \"internal-conda\":\n    - \"https://conda.corp.example/t/tok-123/internal\"\n"
        );
        let bare = source("c2", SourceKind::Conda, "https://conda.example");
        assert!(condarc(&[(&bare, Some(&token))]).contains("https://conda.example/t/tok-123/\""));
        assert!(
            condarc(&[(&bare, Some(&basic("u", "p w")))]).contains("https://u:p%20w@conda.example")
        );
    }

    #[test]
    fn apt_auth_entry_and_public_list_line() {
        let s = source("corp", SourceKind::Apt, "http://127.0.0.1:8082/debian/");
        assert_eq!(
            apt_auth(&s, &basic("deb", "Ap7:pass")).unwrap(),
            "machine http://127.0.0.1:8082/debian/\nlogin deb\npassword Ap7:pass\n"
        );
        assert!(apt_auth(&s, &basic("deb", "a b")).is_err());
        assert_eq!(
            apt_list_line(&s),
            "deb [signed-by=/etc/apt/keyrings/kiln-corp.asc] http://127.0.0.1:8082/debian/ bookworm main contrib"
        );
        assert_eq!(apt_auth_target(&s), "/etc/apt/auth.conf.d/kiln-corp.conf");
        let mut unsigned = s.clone();
        unsigned.apt.as_mut().unwrap().signed_by = None;
        assert_eq!(apt_key_target(&unsigned), None);
        assert!(apt_list_line(&unsigned).starts_with("deb http://"));
    }
}
