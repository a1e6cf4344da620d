//! What the Dockerfile renderer adds to a RUN step for the sources it uses, and the comment
//! that records them in the rendered text.
//!
//! Each step gets only its own manager's secrets, as `--mount=type=secret` next to its cache
//! mounts, and the environment that points the manager at them set inside that one RUN
//! (`PIP_CONFIG_FILE`, `CONDARC`: paths, not credentials). apt gets its sources list line
//! written at the start of its step and removed at its end, its `auth.conf.d` entry and its
//! public key as mounts, so nothing of a private apt source stays in the image (an
//! `apt-get update` in the image, or in an image built on it, does not meet a repository it
//! has no credential for). pip is told to keep a verbose log (`PIP_LOG`) whose "Could not
//! fetch URL" lines are printed when the step ends: at its default verbosity pip says nothing
//! about a 401/403 from an index, only that no version was found, and those lines are what
//! tells a refused credential ([`super::failure`]) from a missing package. A spec that uses
//! private pip sources keeps its wheels in a cache of its own (`id=kiln-pip-NAMES`): the
//! shared wheel folder would otherwise hand a private package to a spec without access.
//!
//! The job reads the comment back ([`recorded`]) to know which secrets to hand to BuildKit.

use super::config::{Source, SourceKind};
use super::render;

/// The comment line recording the sources a rendered Dockerfile uses.
const COMMENT: &str = "# Package sources: ";
/// pip's verbose log inside the pip step (removed when the step ends).
const PIP_LOG: &str = "/tmp/kiln-pip.log";

/// Mounts, environment and commands for one RUN step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepParts {
    /// `--mount=…` options, beside the cache mounts.
    pub mounts: Vec<String>,
    /// `NAME=value ` pairs (each followed by a space) for the step's environment.
    pub env: String,
    /// Commands to run first (each a complete shell command).
    pub before: Vec<String>,
    /// Commands to run last.
    pub after: Vec<String>,
}

fn of_kind<'a>(used: &'a [&'a Source], kind: SourceKind) -> impl Iterator<Item = &'a Source> {
    used.iter().copied().filter(move |s| s.kind == kind)
}

/// `# Package sources: a, b` when any are used.
pub fn comment(used: &[&Source]) -> Option<String> {
    (!used.is_empty()).then(|| {
        let names: Vec<&str> = used.iter().map(|s| s.name.as_str()).collect();
        format!("{COMMENT}{}", names.join(", "))
    })
}

/// The source names a rendered Dockerfile records.
pub fn recorded(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(COMMENT))
        .map(|names| {
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The secret ids a rendered Dockerfile mounts.
pub fn secret_ids(dockerfile: &str) -> Vec<String> {
    let mut ids: Vec<String> = dockerfile
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--mount=type=secret,id="))
        .map(|rest| rest.split(',').next().unwrap_or(rest).to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn secret_mount(id: &str, target: &str) -> String {
    format!("--mount=type=secret,id={id},target={target},required=true")
}

/// The apt step: list lines written first and removed last; credential and key mounted.
pub fn apt(used: &[&Source]) -> StepParts {
    let mut parts = StepParts::default();
    for source in of_kind(used, SourceKind::Apt) {
        if source.auth != super::config::AuthFiles::None {
            parts.mounts.push(secret_mount(
                &render::apt_auth_id(source),
                &render::apt_auth_target(source),
            ));
        }
        if let Some(key) = render::apt_key_target(source) {
            // gpgv runs as `_apt`: the (public) key must be readable by it.
            let mount = secret_mount(&render::apt_key_id(source), &key);
            parts.mounts.push(format!("{mount},mode=0444"));
        }
        let list = render::apt_list_path(source);
        parts
            .before
            .push(format!("echo '{}' > {list}", render::apt_list_line(source)));
        parts.after.push(format!("rm -f {list}"));
    }
    parts
}

/// The pip step: `pip.conf` mounted and named by `PIP_CONFIG_FILE`; pip's fetch errors
/// printed when the step ends.
pub fn pip(used: &[&Source]) -> StepParts {
    if of_kind(used, SourceKind::Pip).next().is_none() {
        return StepParts::default();
    }
    StepParts {
        mounts: vec![secret_mount(render::PIP_SECRET_ID, render::PIP_CONF_TARGET)],
        env: format!(
            "PIP_CONFIG_FILE={} PIP_LOG={PIP_LOG} ",
            render::PIP_CONF_TARGET
        ),
        before: vec![format!(
            "trap 'grep -h \"Could not fetch URL\" {PIP_LOG} >&2 2>/dev/null || true; rm -f {PIP_LOG}' EXIT"
        )],
        after: vec![],
    }
}

/// The cache id of pip's wheel folder for a spec with private pip sources.
pub fn pip_cache_id(used: &[&Source]) -> Option<String> {
    let names: Vec<&str> = of_kind(used, SourceKind::Pip)
        .map(|s| s.name.as_str())
        .collect();
    (!names.is_empty()).then(|| format!("kiln-pip-{}", names.join("+")))
}

/// The conda step: `.condarc` mounted and named by `CONDARC` (conda, mamba) and `MAMBARC`.
pub fn conda(used: &[&Source]) -> StepParts {
    if of_kind(used, SourceKind::Conda).next().is_none() {
        return StepParts::default();
    }
    StepParts {
        mounts: vec![secret_mount(
            render::CONDA_SECRET_ID,
            render::CONDARC_TARGET,
        )],
        env: format!("CONDARC={t} MAMBARC={t} ", t = render::CONDARC_TARGET),
        before: vec![],
        after: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::{AptOptions, AuthFiles};
    use std::path::PathBuf;

    fn apt_source(auth: AuthFiles) -> Source {
        Source {
            name: "corp".into(),
            kind: SourceKind::Apt,
            url: "http://127.0.0.1:8082/debian/".into(),
            extra_urls: vec![],
            auth,
            default: false,
            apt: Some(AptOptions {
                suite: "bookworm".into(),
                components: vec!["main".into()],
                signed_by: Some(PathBuf::from("/etc/kiln/corp.gpg")),
            }),
        }
    }

    #[test]
    fn recorded_names_and_secret_ids_read_back() {
        let a = apt_source(AuthFiles::Basic {
            username_file: "/u".into(),
            password_file: "/p".into(),
        });
        let mut b = a.clone();
        b.name = "pypi".into();
        b.kind = SourceKind::Pip;
        let line = comment(&[&a, &b]).unwrap();
        assert_eq!(line, "# Package sources: corp, pypi");
        assert_eq!(
            recorded(&format!("# x\n{line}\nFROM y\n")),
            ["corp", "pypi"]
        );
        assert!(recorded("FROM y\n# Package sources: late\n").is_empty());
        assert_eq!(comment(&[]), None);
        let parts = apt(&[&a]);
        let text = format!("RUN {} \\\n", parts.mounts.join(" "));
        assert_eq!(secret_ids(&text), ["kiln-apt-corp", "kiln-key-corp"]);
    }

    #[test]
    fn an_apt_source_without_credential_mounts_only_its_key() {
        let parts = apt(&[&apt_source(AuthFiles::None)]);
        assert_eq!(
            parts.mounts,
            [
                "--mount=type=secret,id=kiln-key-corp,target=/etc/apt/keyrings/kiln-corp.gpg,required=true,mode=0444"
            ]
        );
        assert_eq!(
            parts.before,
            [
                "echo 'deb [signed-by=/etc/apt/keyrings/kiln-corp.gpg] http://127.0.0.1:8082/debian/ bookworm main' > /etc/apt/sources.list.d/kiln-corp.list"
            ]
        );
        assert_eq!(
            parts.after,
            ["rm -f /etc/apt/sources.list.d/kiln-corp.list"]
        );
        assert_eq!(pip(&[]), StepParts::default());
        assert_eq!(pip_cache_id(&[]), None);
    }
}
