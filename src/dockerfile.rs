//! Rendering the Dockerfile for a spec.
//!
//! The order is chosen for the layer cache: apt (slowest to change) → conda → pip, so an edit
//! to the pip list re-uses the apt layer. The labels come last: they change with every
//! revision, and a changed instruction invalidates the cache of every step after it, so labels
//! placed before the RUN steps would rebuild everything on every commit. Packages are listed sorted and de-duplicated (the
//! same order the canonical digest uses) and every package is one shell-quoted argument:
//! validation already rules out shell metacharacters, quoting makes injection doubly
//! impossible. Revision metadata arrives as parameters, so rendering is a pure function.
//!
//! Reconcile renders every revision once and the job stores the text; the worker builds
//! exactly that text. What it needs besides — the base image and the `pullSecret` name (a
//! comment line, never a credential) — is read back from it ([`base_image`], [`pull_secret`]).
//! The one part that depends on the base image itself, restoring its own `USER` at the end,
//! is added by [`for_base`] once the base is inspected; it is the last line, so adding it is
//! idempotent across attempts.
//!
//! Builds run on BuildKit (`crate::buildkit`), so the package managers keep their downloads in
//! cache mounts (`RUN --mount=type=cache`): apt's `/var/cache/apt` and `/var/lib/apt/lists`,
//! pip's cache (`PIP_CACHE_DIR`) and conda's package directory (`CONDA_PKGS_DIRS`). They stay
//! on the builder between builds — an edit of the pip list downloads only what is new there —
//! and never become part of the image, so nothing needs cleaning inside the RUN steps. There
//! is no `# syntax=` line: it would make BuildKit pull a frontend image from Docker Hub, and
//! the Dockerfile frontend built into Engine 20.10 already knows `RUN --mount`.
//!
//! A custom CA bundle is copied into the image and exported only inside the RUN steps
//! (`SSL_CERT_FILE`, `PIP_CERT`, `REQUESTS_CA_BUNDLE`, `CONDA_SSL_VERIFY`, apt's `CAInfo`), for
//! networks behind a TLS-inspecting proxy; it does not change the environment of the final
//! image.

use crate::sources::dockerfile as src;
use crate::spec::{ImageSpec, Manager};
use std::fmt::Write as _;

/// BuildKit cache mounts of the package managers: kept by the builder between builds (an
/// edit of the pip list downloads only what is new on that builder), never part of the image.
/// `sharing=locked`: two builds on one builder take turns, as apt and pip do not expect a
/// second process in their cache.
const APT_ARCHIVES_CACHE: &str = "/var/cache/apt";
const APT_LISTS_CACHE: &str = "/var/lib/apt/lists";
const PIP_CACHE: &str = "/var/cache/kiln/pip";
const CONDA_PKGS_CACHE: &str = "/var/cache/kiln/conda-pkgs";

/// The `--mount` option of a RUN step for one cache directory.
fn cache_mount(target: &str) -> String {
    format!("--mount=type=cache,target={target},sharing=locked")
}

/// File name of the CA bundle inside the build context.
pub const CA_BUNDLE_CONTEXT_NAME: &str = "kiln-ca-bundle.crt";
/// Where the CA bundle is placed in the image during the build.
pub const CA_BUNDLE_IMAGE_PATH: &str = "/usr/local/share/kiln/ca-bundle.crt";

/// Metadata of the revision being built, written as OCI labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionInfo {
    /// Full commit SHA.
    pub commit: String,
    /// Repository URL (`org.opencontainers.image.source`).
    pub source: String,
    /// RFC 3339 build time.
    pub created: String,
    /// Revision number of the spec.
    pub revision: u64,
    /// Canonical digest of the spec.
    pub digest: String,
}

impl RevisionInfo {
    /// Stand-in values for `kiln render`, where no commit is at hand.
    pub fn placeholder(digest: &str) -> Self {
        RevisionInfo {
            commit: "0000000000000000000000000000000000000000".into(),
            source: "https://git.example.com/platform/images".into(),
            created: "1970-01-01T00:00:00Z".into(),
            revision: 0,
            digest: digest.to_string(),
        }
    }
}

/// Everything besides the spec that shapes the Dockerfile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// The base image's own `USER`, restored at the end (inspected from the base image).
    /// `None` or empty: the base runs as root, nothing to restore.
    pub base_user: Option<String>,
    /// Whether a CA bundle is in the build context as [`CA_BUNDLE_CONTEXT_NAME`].
    pub ca_bundle: bool,
    /// The package sources configured in Kiln; the spec's are mounted into its RUN steps.
    pub sources: std::sync::Arc<crate::sources::Sources>,
}

/// The OCI labels of an image built from `spec` at `rev`.
pub fn image_labels(spec: &ImageSpec, rev: &RevisionInfo) -> Vec<(&'static str, String)> {
    vec![
        ("org.opencontainers.image.created", rev.created.clone()),
        ("org.opencontainers.image.revision", rev.commit.clone()),
        ("org.opencontainers.image.source", rev.source.clone()),
        ("org.opencontainers.image.title", spec.name.clone()),
        ("io.kiln.spec", spec.name.clone()),
        ("io.kiln.revision", rev.revision.to_string()),
        ("io.kiln.digest", rev.digest.clone()),
    ]
}

/// Render the Dockerfile for `spec`.
pub fn render(spec: &ImageSpec, rev: &RevisionInfo, options: &RenderOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Rendered by Kiln for spec {:?}, revision {}.",
        spec.name, rev.revision
    );
    if let Some(secret) = &spec.pull_secret {
        let _ = writeln!(out, "{PULL_SECRET_COMMENT}{secret}");
    }
    let used = crate::sources::usage::used_by(spec, &options.sources);
    if let Some(line) = src::comment(&used) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "FROM {}", spec.base_image);
    let _ = writeln!(out, "USER root");
    let _ = writeln!(out, "ARG DEBIAN_FRONTEND=noninteractive");
    let ca_env = if options.ca_bundle {
        let _ = writeln!(out, "COPY {CA_BUNDLE_CONTEXT_NAME} {CA_BUNDLE_IMAGE_PATH}");
        format!(
            "SSL_CERT_FILE={p} PIP_CERT={p} REQUESTS_CA_BUNDLE={p} CONDA_SSL_VERIFY={p} ",
            p = CA_BUNDLE_IMAGE_PATH
        )
    } else {
        String::new()
    };

    let apt = spec.packages.normalized(Manager::Apt);
    if !apt.is_empty() {
        let apt_ca = if options.ca_bundle {
            format!(" -o Acquire::https::CAInfo={CA_BUNDLE_IMAGE_PATH}")
        } else {
            String::new()
        };
        // apt keeps its lists and downloaded packages in cache mounts, outside the image; the
        // base image's `docker-clean` hook would delete the packages after each install.
        let parts = src::apt(&used);
        let mounts = [
            cache_mount(APT_ARCHIVES_CACHE),
            cache_mount(APT_LISTS_CACHE),
        ];
        let _ = writeln!(out, "RUN {} \\", mount_list(&mounts, &parts));
        let _ = writeln!(out, "    rm -f /etc/apt/apt.conf.d/docker-clean \\");
        push_commands(&mut out, &parts.before);
        let _ = writeln!(out, " && {ca_env}apt-get{apt_ca} update \\");
        let _ = writeln!(
            out,
            " && {ca_env}apt-get{apt_ca} install -y --no-install-recommends \\"
        );
        push_args(&mut out, &apt);
        push_commands(&mut out, &parts.after);
        let _ = writeln!(out, " && true");
    }

    let conda = spec.packages.normalized(Manager::Conda);
    if !conda.is_empty() {
        // Use whichever solver the base image ships; fail loudly when it has none.
        let export = if options.ca_bundle {
            format!("export {}; ", ca_env.trim_end())
        } else {
            String::new()
        };
        let parts = src::conda(&used);
        let export = match parts.env.is_empty() {
            true => export,
            false => format!("{export}export {}; ", parts.env.trim_end()),
        };
        let _ = writeln!(
            out,
            "RUN {} \\\n    set -e; export CONDA_PKGS_DIRS={CONDA_PKGS_CACHE}; {export}\\",
            mount_list(&[cache_mount(CONDA_PKGS_CACHE)], &parts)
        );
        let _ = writeln!(
            out,
            " if command -v micromamba >/dev/null; then CONDA='micromamba'; CONDA_INSTALL='micromamba install --yes --name base'; \\"
        );
        let _ = writeln!(
            out,
            " elif command -v mamba >/dev/null; then CONDA='mamba'; CONDA_INSTALL='mamba install --yes'; \\"
        );
        let _ = writeln!(
            out,
            " elif command -v conda >/dev/null; then CONDA='conda'; CONDA_INSTALL='conda install --yes'; \\"
        );
        let _ = writeln!(
            out,
            " else echo 'kiln: the base image has no conda, mamba or micromamba' >&2; exit 1; fi; \\"
        );
        let _ = writeln!(out, " $CONDA_INSTALL \\");
        push_args(&mut out, &conda);
        // The package cache is a cache mount, outside the image: nothing to clean.
        let _ = writeln!(out, " && true");
    }

    let pip = spec.packages.normalized(Manager::Pip);
    if !pip.is_empty() {
        // Wheels are kept in a folder of the cache mount, not in pip's HTTP cache: that one
        // depends on the index's caching headers, which proxies and mirrors often drop (this
        // machine's proxy does). A requirement pinned to one version whose wheels (its
        // dependencies' too) are already there is resolved offline; the others are fetched
        // and built into wheels — a range is resolved against the index on every build, so it
        // still takes the newest release —, then everything is installed from the folder.
        let (pinned, floating): (Vec<&str>, Vec<&str>) =
            pip.iter().copied().partition(|r| is_exact_pin(r));
        let parts = src::pip(&used);
        let cache = match src::pip_cache_id(&used) {
            Some(id) => {
                cache_mount(PIP_CACHE).replacen("type=cache,", &format!("type=cache,id={id},"), 1)
            }
            None => cache_mount(PIP_CACHE),
        };
        let _ = writeln!(out, "RUN {} \\", mount_list(&[cache], &parts));
        let _ = writeln!(
            out,
            "    set -e; export {ca_env}{}PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1; \\",
            parts.env
        );
        for command in &parts.before {
            let _ = writeln!(out, "    {command}; \\");
        }
        let _ = writeln!(out, "    W={PIP_CACHE}/wheels; \\");
        if !pinned.is_empty() {
            let _ = writeln!(out, "    for req in \\");
            push_args(&mut out, &pinned);
            let _ = writeln!(
                out,
                "    ; do python3 -m pip wheel --quiet --no-index --find-links \"$W\" --wheel-dir \"$W\" \"$req\" 2>/dev/null \\"
            );
            let _ = writeln!(
                out,
                "      || python3 -m pip wheel --find-links \"$W\" --wheel-dir \"$W\" \"$req\"; done; \\"
            );
        }
        if !floating.is_empty() {
            let _ = writeln!(
                out,
                "    python3 -m pip wheel --find-links \"$W\" --wheel-dir \"$W\" \\"
            );
            push_args(&mut out, &floating);
            let _ = writeln!(out, "    ; \\");
        }
        let _ = writeln!(
            out,
            "    python3 -m pip install --no-index --find-links \"$W\" \\"
        );
        push_args(&mut out, &pip);
        // A trailing no-op keeps every argument line a continuation.
        let _ = writeln!(out, " && true");
    }

    let labels = image_labels(spec, rev);
    for (i, (key, value)) in labels.iter().enumerate() {
        let head = if i == 0 { "LABEL " } else { "      " };
        let tail = if i + 1 < labels.len() { " \\" } else { "" };
        let _ = writeln!(out, "{head}{key}=\"{}\"{tail}", label_escape(value));
    }
    for_base(&out, options.base_user.as_deref())
}

/// The comment that records the spec's `pullSecret` name in the rendered Dockerfile.
const PULL_SECRET_COMMENT: &str = "# Base image credential (pullSecret): ";

/// `dockerfile` (as [`render`] made it) ending with the base image's own `USER` restored:
/// the line is added when `base_user` is set and not root, replaced when an earlier attempt
/// added one, so it can be applied to a stored Dockerfile any number of times.
pub fn for_base(dockerfile: &str, base_user: Option<&str>) -> String {
    let mut out = without_base_user(dockerfile).to_string();
    match base_user.map(str::trim) {
        Some(user) if !user.is_empty() && user != "root" && user != "0" => {
            let _ = writeln!(out, "USER {user}");
        }
        _ => {}
    }
    out
}

/// The label naming the base image a job pulled (`org.opencontainers.image.base.*`).
const BASE_LABEL: &str = "LABEL org.opencontainers.image.base.name=";

/// `dockerfile` with the `org.opencontainers.image.base.name` / `.base.digest` labels of the
/// base the job pulled, as one line before the base's `USER` restore (an earlier attempt's
/// line is replaced). Added at build time, not at render: the digest is known only after the
/// pull, and labels are no part of the spec's digest, so the spec's identity never changes.
pub fn with_base_labels(dockerfile: &str, base_name: &str, base_digest: Option<&str>) -> String {
    let mut lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.starts_with(BASE_LABEL))
        .collect();
    let mut label = format!("{BASE_LABEL}\"{}\"", label_escape(base_name));
    if let Some(digest) = base_digest {
        let _ = write!(
            label,
            " org.opencontainers.image.base.digest=\"{}\"",
            label_escape(digest)
        );
    }
    let at = match lines.last() {
        Some(last) if last.starts_with("USER ") => lines.len() - 1,
        _ => lines.len(),
    };
    lines.insert(at, &label);
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The rendered text without the trailing `USER` line: the renderer's last instruction is
/// the `LABEL` block, so a `USER` after it can only be the restore.
fn without_base_user(dockerfile: &str) -> &str {
    let body = dockerfile.strip_suffix('\n').unwrap_or(dockerfile);
    match body.rfind('\n') {
        Some(i) if body[i + 1..].starts_with("USER ") => &dockerfile[..i + 1],
        _ => dockerfile,
    }
}

/// The image of the first `FROM` line (options such as `--platform` skipped).
pub fn base_image(dockerfile: &str) -> Option<&str> {
    dockerfile.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let keyword = words.next()?;
        if !keyword.eq_ignore_ascii_case("FROM") {
            return None;
        }
        words.find(|w| !w.starts_with("--"))
    })
}

/// The `pullSecret` name a rendered Dockerfile records, if the spec has one.
pub fn pull_secret(dockerfile: &str) -> Option<&str> {
    dockerfile
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(PULL_SECRET_COMMENT))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Whether the Dockerfile copies the CA bundle from the build context.
pub fn uses_ca_bundle(dockerfile: &str) -> bool {
    dockerfile
        .lines()
        .any(|l| l.starts_with("COPY ") && l.contains(CA_BUNDLE_CONTEXT_NAME))
}

/// Whether a pip requirement names exactly one version (`six==1.16.0`, `pkg===x`): only such
/// a requirement may be satisfied from wheels an earlier build fetched.
fn is_exact_pin(requirement: &str) -> bool {
    let head = requirement.split(';').next().unwrap_or(requirement);
    let pins = head.matches("==").count();
    pins == 1 && !head.contains(['*', ',', '<', '>', '~', '!', '@']) && !head.contains("://")
}

/// A RUN step's mounts: its cache mounts, then the sources' secret mounts.
fn mount_list(cache: &[String], parts: &src::StepParts) -> String {
    cache
        .iter()
        .chain(&parts.mounts)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// ` && command` lines, each continued.
fn push_commands(out: &mut String, commands: &[String]) {
    for command in commands {
        let _ = writeln!(out, " && {command} \\");
    }
}

/// One shell-quoted argument per line, each continued.
fn push_args(out: &mut String, args: &[&str]) {
    for arg in args {
        let quoted = shlex::try_quote(arg)
            .map(|q| q.into_owned())
            .unwrap_or_else(|_| format!("'{}'", arg.replace('\'', "'\\''")));
        let _ = writeln!(out, "      {quoted} \\");
    }
}

/// A LABEL value inside double quotes: escape what the Dockerfile parser would interpret.
fn label_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '"' | '$' => {
                escaped.push('\\');
                escaped.push(c);
            }
            '\n' | '\r' => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Packages;
    use proptest::prelude::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            name: "vision-notebook".into(),
            description: None,
            base_image: "127.0.0.1:5000/kiln/bookworm-python:minbase".into(),
            pull_secret: None,
            packages: Packages {
                apt: vec!["libgl1".into(), "curl".into()],
                conda: vec!["conda-forge::numpy==1.17*".into()],
                pip: vec!["six==1.16.0".into(), "pandas>=2.1".into()],
            },
            display_name: None,
            catalog: Default::default(),
            tests: vec![],
            sources: vec![],
            rebuild_on_base_update: None,
        }
    }

    fn rev() -> RevisionInfo {
        RevisionInfo {
            commit: "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b".into(),
            source: "file:///srv/git/images.git".into(),
            created: "2026-11-23T12:00:00Z".into(),
            revision: 3,
            digest: "sha256:abc".into(),
        }
    }

    const GOLDEN_FULL: &str = r#"# Rendered by Kiln for spec "vision-notebook", revision 3.
FROM 127.0.0.1:5000/kiln/bookworm-python:minbase
USER root
ARG DEBIAN_FRONTEND=noninteractive
COPY kiln-ca-bundle.crt /usr/local/share/kiln/ca-bundle.crt
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && SSL_CERT_FILE=/usr/local/share/kiln/ca-bundle.crt PIP_CERT=/usr/local/share/kiln/ca-bundle.crt REQUESTS_CA_BUNDLE=/usr/local/share/kiln/ca-bundle.crt CONDA_SSL_VERIFY=/usr/local/share/kiln/ca-bundle.crt apt-get -o Acquire::https::CAInfo=/usr/local/share/kiln/ca-bundle.crt update \
 && SSL_CERT_FILE=/usr/local/share/kiln/ca-bundle.crt PIP_CERT=/usr/local/share/kiln/ca-bundle.crt REQUESTS_CA_BUNDLE=/usr/local/share/kiln/ca-bundle.crt CONDA_SSL_VERIFY=/usr/local/share/kiln/ca-bundle.crt apt-get -o Acquire::https::CAInfo=/usr/local/share/kiln/ca-bundle.crt install -y --no-install-recommends \
      curl \
      libgl1 \
 && true
RUN --mount=type=cache,target=/var/cache/kiln/conda-pkgs,sharing=locked \
    set -e; export CONDA_PKGS_DIRS=/var/cache/kiln/conda-pkgs; export SSL_CERT_FILE=/usr/local/share/kiln/ca-bundle.crt PIP_CERT=/usr/local/share/kiln/ca-bundle.crt REQUESTS_CA_BUNDLE=/usr/local/share/kiln/ca-bundle.crt CONDA_SSL_VERIFY=/usr/local/share/kiln/ca-bundle.crt; \
 if command -v micromamba >/dev/null; then CONDA='micromamba'; CONDA_INSTALL='micromamba install --yes --name base'; \
 elif command -v mamba >/dev/null; then CONDA='mamba'; CONDA_INSTALL='mamba install --yes'; \
 elif command -v conda >/dev/null; then CONDA='conda'; CONDA_INSTALL='conda install --yes'; \
 else echo 'kiln: the base image has no conda, mamba or micromamba' >&2; exit 1; fi; \
 $CONDA_INSTALL \
      'conda-forge::numpy==1.17*' \
 && true
RUN --mount=type=cache,target=/var/cache/kiln/pip,sharing=locked \
    set -e; export SSL_CERT_FILE=/usr/local/share/kiln/ca-bundle.crt PIP_CERT=/usr/local/share/kiln/ca-bundle.crt REQUESTS_CA_BUNDLE=/usr/local/share/kiln/ca-bundle.crt CONDA_SSL_VERIFY=/usr/local/share/kiln/ca-bundle.crt PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1; \
    W=/var/cache/kiln/pip/wheels; \
    for req in \
      'six==1.16.0' \
    ; do python3 -m pip wheel --quiet --no-index --find-links "$W" --wheel-dir "$W" "$req" 2>/dev/null \
      || python3 -m pip wheel --find-links "$W" --wheel-dir "$W" "$req"; done; \
    python3 -m pip wheel --find-links "$W" --wheel-dir "$W" \
      'pandas>=2.1' \
    ; \
    python3 -m pip install --no-index --find-links "$W" \
      'pandas>=2.1' \
      'six==1.16.0' \
 && true
LABEL org.opencontainers.image.created="2026-11-23T12:00:00Z" \
      org.opencontainers.image.revision="1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b" \
      org.opencontainers.image.source="file:///srv/git/images.git" \
      org.opencontainers.image.title="vision-notebook" \
      io.kiln.spec="vision-notebook" \
      io.kiln.revision="3" \
      io.kiln.digest="sha256:abc"
USER jovyan
"#;

    #[test]
    fn golden_full() {
        let options = RenderOptions {
            base_user: Some("jovyan".into()),
            ca_bundle: true,
            ..RenderOptions::default()
        };
        assert_eq!(render(&spec(), &rev(), &options), GOLDEN_FULL);
    }

    const GOLDEN_APT_ONLY: &str = r#"# Rendered by Kiln for spec "tools", revision 3.
FROM debian:bookworm
USER root
ARG DEBIAN_FRONTEND=noninteractive
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      jq \
 && true
LABEL org.opencontainers.image.created="2026-11-23T12:00:00Z" \
      org.opencontainers.image.revision="1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b" \
      org.opencontainers.image.source="file:///srv/git/images.git" \
      org.opencontainers.image.title="tools" \
      io.kiln.spec="tools" \
      io.kiln.revision="3" \
      io.kiln.digest="sha256:abc"
"#;

    #[test]
    fn golden_apt_only_root_base() {
        let spec = ImageSpec {
            name: "tools".into(),
            description: None,
            base_image: "debian:bookworm".into(),
            pull_secret: None,
            packages: Packages {
                apt: vec!["jq".into(), "jq".into()],
                ..Packages::default()
            },
            display_name: None,
            catalog: Default::default(),
            tests: vec![],
            sources: vec![],
            rebuild_on_base_update: None,
        };
        let options = RenderOptions {
            base_user: Some("root".into()),
            ca_bundle: false,
            ..RenderOptions::default()
        };
        assert_eq!(render(&spec, &rev(), &options), GOLDEN_APT_ONLY);
    }

    /// The job's path (reconcile renders without the base user, the worker adds it) gives
    /// exactly what one render with the base user gives, on every attempt.
    #[test]
    fn restoring_the_base_user_later_equals_rendering_with_it() {
        let stored = render(
            &spec(),
            &rev(),
            &RenderOptions {
                base_user: None,
                ca_bundle: true,
                ..RenderOptions::default()
            },
        );
        assert!(!stored.contains("USER jovyan"));
        let first = for_base(&stored, Some("jovyan"));
        assert_eq!(first, GOLDEN_FULL);
        assert_eq!(for_base(&first, Some("jovyan")), GOLDEN_FULL, "idempotent");
        assert_eq!(for_base(&first, Some("root")), stored);
        assert_eq!(for_base(&first, None), stored);
        assert_eq!(
            for_base(&first, Some("1000:1000")),
            GOLDEN_FULL.replace("USER jovyan", "USER 1000:1000")
        );
        // `USER root` near the top is never taken for the restore.
        assert!(for_base(&stored, None).contains("USER root\n"));
    }

    /// A spec's sources reach exactly their own step, as secret mounts beside the cache
    /// mounts; the Dockerfile holds URLs and paths, never a credential file's content.
    #[test]
    fn sources_are_mounted_into_their_own_steps() {
        let tables: std::collections::BTreeMap<String, crate::sources::SourceTable> =
            toml::from_str(
                r#"
[internal-pypi]
kind = "pip"
url = "http://127.0.0.1:8081/simple/"
username_file = "/etc/kiln/pypi-user"
password_file = "/etc/kiln/pypi-password"
[internal-conda]
kind = "conda"
url = "https://conda.corp.example/internal"
token_file = "/etc/kiln/conda-token"
[corp-apt]
kind = "apt"
url = "http://127.0.0.1:8082/debian/"
suite = "bookworm"
signed_by = "/etc/kiln/corp.gpg"
username_file = "/etc/kiln/apt-user"
password_file = "/etc/kiln/apt-password"
"#,
            )
            .unwrap();
        let options = RenderOptions {
            sources: std::sync::Arc::new(crate::sources::Sources::from_tables(&tables).unwrap()),
            ..RenderOptions::default()
        };
        let mut with_sources = spec();
        with_sources.sources = vec!["corp-apt".into(), "internal-pypi".into()];
        with_sources.packages.conda = vec!["internal-conda::numpy".into()];
        let text = render(&with_sources, &rev(), &options);
        let run_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("RUN ")).collect();
        assert_eq!(
            run_lines,
            [
                "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt/lists,sharing=locked --mount=type=secret,id=kiln-apt-corp-apt,target=/etc/apt/auth.conf.d/kiln-corp-apt.conf,required=true --mount=type=secret,id=kiln-key-corp-apt,target=/etc/apt/keyrings/kiln-corp-apt.gpg,required=true,mode=0444 \\",
                "RUN --mount=type=cache,target=/var/cache/kiln/conda-pkgs,sharing=locked --mount=type=secret,id=kiln-conda,target=/run/kiln/condarc,required=true \\",
                "RUN --mount=type=cache,id=kiln-pip-internal-pypi,target=/var/cache/kiln/pip,sharing=locked --mount=type=secret,id=kiln-pip,target=/run/kiln/pip.conf,required=true \\",
            ]
        );
        assert!(text.starts_with("# Rendered by Kiln for spec \"vision-notebook\", revision 3.\n# Package sources: corp-apt, internal-conda, internal-pypi\nFROM "));
        assert!(text.contains(" && echo 'deb [signed-by=/etc/apt/keyrings/kiln-corp-apt.gpg] http://127.0.0.1:8082/debian/ bookworm main' > /etc/apt/sources.list.d/kiln-corp-apt.list \\\n && apt-get update \\\n"));
        assert!(
            text.contains(" && rm -f /etc/apt/sources.list.d/kiln-corp-apt.list \\\n && true\n")
        );
        assert!(text.contains("export CONDARC=/run/kiln/condarc MAMBARC=/run/kiln/condarc; "));
        assert!(text.contains("set -e; export PIP_CONFIG_FILE=/run/kiln/pip.conf PIP_LOG=/tmp/kiln-pip.log PIP_NO_CACHE_DIR=1 "));
        assert!(
            !text.contains("/etc/kiln/"),
            "no credential file path either"
        );
        assert_eq!(
            crate::sources::dockerfile::recorded(&text),
            ["corp-apt", "internal-conda", "internal-pypi"]
        );
        // Without sources the text is what it always was.
        assert_eq!(
            render(
                &spec(),
                &rev(),
                &RenderOptions {
                    base_user: Some("jovyan".into()),
                    ca_bundle: true,
                    ..options
                }
            ),
            GOLDEN_FULL
        );
        let prop_ok = every_line_is_an_instruction_or_continuation(&text);
        assert_eq!(prop_ok, Ok(()));
    }

    #[test]
    fn base_labels_sit_before_the_user_restore_and_replace_an_earlier_attempts() {
        let text = render(&spec(), &rev(), &RenderOptions::default());
        let first = with_base_labels(&for_base(&text, Some("jovyan")), "b:1", Some("sha256:aa"));
        assert!(
            first.ends_with("LABEL org.opencontainers.image.base.name=\"b:1\" org.opencontainers.image.base.digest=\"sha256:aa\"\nUSER jovyan\n"),
            "{first}"
        );
        // A retry pulls another digest: one label line, the new one, USER still last.
        let again = with_base_labels(&for_base(&first, Some("jovyan")), "b:1", Some("sha256:bb"));
        assert_eq!(again.matches("image.base.name").count(), 1, "{again}");
        assert!(again.contains("sha256:bb") && !again.contains("sha256:aa"));
        assert!(again.ends_with("USER jovyan\n"));
        // Without a USER restore or a digest, the name alone ends the file.
        let root = with_base_labels(&text, "b:1", None);
        assert!(
            root.ends_with("LABEL org.opencontainers.image.base.name=\"b:1\"\n"),
            "{root}"
        );
        assert_eq!(base_image(&root), base_image(&text));
    }

    #[test]
    fn what_the_worker_reads_back_from_a_rendered_dockerfile() {
        let mut with_secret = spec();
        with_secret.pull_secret = Some("corp".into());
        let text = render(&with_secret, &rev(), &RenderOptions::default());
        assert_eq!(pull_secret(&text), Some("corp"));
        assert_eq!(
            base_image(&text),
            Some("127.0.0.1:5000/kiln/bookworm-python:minbase")
        );
        assert!(!uses_ca_bundle(&text));
        assert_eq!(pull_secret(GOLDEN_FULL), None);
        assert!(uses_ca_bundle(GOLDEN_FULL));
        assert_eq!(
            base_image("# c\nFROM --platform=linux/amd64 127.0.0.1:5001/a:b AS x\nRUN y"),
            Some("127.0.0.1:5001/a:b")
        );
        assert_eq!(base_image("from debian\n"), Some("debian"));
        assert_eq!(base_image("RUN x\n"), None);
    }

    #[test]
    fn only_exact_pins_may_come_from_earlier_wheels() {
        for pinned in [
            "six==1.16.0",
            "pkg===weird",
            "six==1.16.0; python_version >= '3'",
        ] {
            assert!(is_exact_pin(pinned), "{pinned}");
        }
        for floating in [
            "pandas>=2.1",
            "numpy==1.*",
            "a==1.0,!=1.0.1",
            "six",
            "requests~=2.31",
            "pkg @ https://example.org/pkg-1.0.tar.gz",
        ] {
            assert!(!is_exact_pin(floating), "{floating}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut r = rev();
        r.source = "https://x/\"$HOME\\\nrm".into();
        let out = render(&spec(), &r, &RenderOptions::default());
        assert!(
            out.contains(r#"org.opencontainers.image.source="https://x/\"\$HOME\\ rm" \"#),
            "{out}"
        );
    }

    const INSTRUCTIONS: [&str; 6] = ["#", "FROM ", "LABEL ", "USER ", "ARG ", "RUN "];

    fn every_line_is_an_instruction_or_continuation(text: &str) -> Result<(), String> {
        let mut continued = false;
        for line in text.lines() {
            if !continued
                && !INSTRUCTIONS.iter().any(|i| line.starts_with(i))
                && !line.starts_with("COPY ")
            {
                return Err(format!("stray line: {line:?}"));
            }
            continued = line.ends_with('\\');
        }
        if continued {
            Err("last line continues".into())
        } else {
            Ok(())
        }
    }

    fn apt_name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9+.-]{1,20}(:[a-z0-9]{3,6})?(=[0-9][a-zA-Z0-9.+~-]{0,8}|/[a-z-]{3,10})?"
    }
    fn pip_name() -> impl Strategy<Value = String> {
        "[A-Za-z]([A-Za-z0-9._-]{0,14}[A-Za-z0-9])?(\\[[a-z]{1,5}\\])?((==|!=)[0-9]{1,2}(\\.[0-9]{1,2}){0,2}(\\.\\*)?|(>=|<=|~=)[0-9]{1,2}(\\.[0-9]{1,2}){1,2})?"
    }
    fn conda_name() -> impl Strategy<Value = String> {
        "([a-z]{2,8}::)?[a-z][a-z0-9_-]{0,12}((==|>=|=)[0-9]{1,2}(\\.[0-9]{1,2})?\\*?)?"
    }

    proptest! {
        #[test]
        fn render_only_emits_instructions_and_continuations(
            apt in proptest::collection::vec(apt_name(), 0..6),
            pip in proptest::collection::vec(pip_name(), 0..6),
            conda in proptest::collection::vec(conda_name(), 0..6),
            user in proptest::option::of("[a-z][a-z0-9_-]{0,10}"),
            ca in any::<bool>(),
        ) {
            for a in &apt { prop_assert!(crate::spec::rules::check_apt(a).is_ok(), "generator made invalid apt {a}"); }
            for p in &pip { prop_assert!(crate::spec::rules::check_pip(p).is_ok(), "generator made invalid pip {p}"); }
            for c in &conda { prop_assert!(crate::spec::rules::check_conda(c).is_ok(), "generator made invalid conda {c}"); }
            let spec = ImageSpec { name: "p".into(), description: None, base_image: "debian:bookworm".into(), pull_secret: None, packages: Packages { apt, conda, pip }, display_name: None, catalog: Default::default(), tests: vec![], sources: vec![], rebuild_on_base_update: None };
            let text = render(&spec, &rev(), &RenderOptions { base_user: user, ca_bundle: ca, ..RenderOptions::default() });
            prop_assert_eq!(every_line_is_an_instruction_or_continuation(&text), Ok(()));
        }
    }
}
