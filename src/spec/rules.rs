//! The syntax rules for single values: spec names, image references and one package line for
//! each package manager. Each check is a pure function from text to "fine" or a message; the
//! parser attaches the position and the rule id.
//!
//! pip and conda lines go through the real parsers (`pep508_rs`, `rattler_conda_types`), so
//! Kiln accepts exactly what those tools accept. On top of them sits the one-package-per-line
//! check: conda's lenient parser reads `numpy scipy` as "numpy at version scipy", and a line
//! holding two packages must never be half-installed or silently dropped.

use oci_spec::distribution::Reference;
use rattler_conda_types::{MatchSpec, PackageNameMatcher, ParseStrictness};
use std::str::FromStr;

pub const MAX_NAME_LEN: usize = 63;

/// Why a single package line was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LineError {
    /// Several packages on one line.
    SeveralPackages(Vec<String>),
    /// Not a valid package for this manager.
    Invalid(String),
}

/// `[a-z0-9]` at both ends, `[a-z0-9._-]` inside, at most 63 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_end = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok_inner = |c: char| ok_end(c) || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name `{name}` is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    let first = name.chars().next().unwrap_or(' ');
    let last = name.chars().last().unwrap_or(' ');
    if !ok_end(first) || !ok_end(last) || !name.chars().all(ok_inner) {
        return Err(format!(
            "name `{name}` must use lowercase letters, digits, `.`, `_` and `-`, \
             and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// A base image reference such as `registry:5000/team/image:tag@sha256:…`. Returns the fully
/// qualified form (`ubuntu` → `docker.io/library/ubuntu:latest`), which is what the digest
/// hashes so that spelling variants of one image count as the same image.
pub fn check_image_reference(text: &str) -> Result<String, String> {
    // Specs share a handful of base images, and the reference parser is regex-heavy: the
    // answers for recent references are remembered per thread (bounded).
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashMap<String, Result<String, String>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    if let Some(known) = SEEN.with(|seen| seen.borrow().get(text).cloned()) {
        return known;
    }
    let answer = parse_image_reference(text);
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        if seen.len() >= 1024 {
            seen.clear();
        }
        seen.insert(text.to_string(), answer.clone());
    });
    answer
}

fn parse_image_reference(text: &str) -> Result<String, String> {
    if text.trim() != text || text.is_empty() {
        return Err(format!(
            "`{text}` is not an image reference (surrounding whitespace)"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{text}` is not an image reference: it contains whitespace"
        ));
    }
    let reference = Reference::from_str(text)
        .map_err(|e| format!("`{text}` is not a valid image reference: {e}"))?;
    check_repository_path(text)?;
    Ok(reference.whole())
}

/// Docker's grammar on top of the parser: a first component is a registry host only if it has
/// a `.` or `:` or is `localhost`; every path component is lowercase `[a-z0-9]` joined by
/// `.`, `_`, `__` or dashes.
fn check_repository_path(text: &str) -> Result<(), String> {
    let name = text.split('@').next().unwrap_or(text);
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            components.remove(0);
        }
    }
    for component in components {
        let ok = !component.is_empty()
            && component.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && component.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && component.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if !ok {
            return Err(format!(
                "`{text}`: repository path component `{component}` must be lowercase letters and digits, \
                 separated by `.`, `_` or `-`"
            ));
        }
    }
    Ok(())
}

/// Debian package: `name[:arch][=version | /release]`, as `apt-get install` takes it.
pub fn check_apt(line: &str) -> Result<(), LineError> {
    if let Some(tokens) = several(line, |t| check_apt_one(t).is_ok()) {
        return Err(LineError::SeveralPackages(tokens));
    }
    check_apt_one(line).map_err(LineError::Invalid)
}

fn check_apt_one(item: &str) -> Result<(), String> {
    let (rest, suffix) = match item.find(['=', '/']) {
        Some(i) => (&item[..i], Some((&item[i..i + 1], &item[i + 1..]))),
        None => (item, None),
    };
    let (name, arch) = match rest.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (rest, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if !name_ok {
        return Err(format!(
            "`{item}` is not a Debian package name (lowercase letters, digits, `+`, `-`, `.`; \
             at least 2 characters, starting with a letter or digit)"
        ));
    }
    if let Some(arch) = arch
        && (arch.is_empty()
            || !arch
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(format!("`{item}`: `{arch}` is not a Debian architecture"));
    }
    match suffix {
        None => Ok(()),
        Some(("=", version)) => {
            let ok = version.starts_with(|c: char| c.is_ascii_digit())
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-' | ':'));
            if ok {
                Ok(())
            } else {
                Err(format!("`{item}`: `{version}` is not a Debian version"))
            }
        }
        Some((_, release)) => {
            let ok = !release.is_empty()
                && release.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')
                });
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "`{item}`: `{release}` is not a Debian release name"
                ))
            }
        }
    }
}

/// A PEP 508 requirement (`pandas>=2.1`, `requests[socks]; python_version >= "3.9"`,
/// `pkg @ https://…`). pip options (`-r`, `--index-url`) are refused: a spec lists packages.
pub fn check_pip(line: &str) -> Result<(), LineError> {
    if line.starts_with('-') {
        return Err(LineError::Invalid(format!(
            "`{line}` is a pip option, not a requirement; list packages only"
        )));
    }
    match parse_pep508(line) {
        Ok(_) => Ok(()),
        Err(e) => {
            if let Some(tokens) = several(line, |t| {
                !t.starts_with('-')
                    && t.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && parse_pep508(t).is_ok()
            }) {
                return Err(LineError::SeveralPackages(tokens));
            }
            let message = e.to_string();
            let first = message.lines().next().unwrap_or("invalid requirement");
            Err(LineError::Invalid(format!(
                "`{line}` is not a PEP 508 requirement: {first}"
            )))
        }
    }
}

/// PEP 508 parsing with the project name checked first: pep508_rs 0.9.2 panics on a name
/// that ends in `.`, `-` or `_` when more text follows (`numpy- >=1.0`; fixed upstream, not
/// released), and input from a commit must never panic Kiln.
fn parse_pep508(text: &str) -> Result<pep508_rs::Requirement<pep508_rs::VerbatimUrl>, String> {
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if name.ends_with(['.', '-', '_']) || name.starts_with(['.', '-', '_']) {
        return Err(format!(
            "`{name}` is not a valid project name (it must start and end with a letter or digit)"
        ));
    }
    pep508_rs::Requirement::<pep508_rs::VerbatimUrl>::from_str(text).map_err(|e| e.to_string())
}

/// A conda MatchSpec (`numpy`, `numpy>=1.17`, `conda-forge::numpy==1.17*`, `numpy 1.17.* py38_0`).
pub fn check_conda(line: &str) -> Result<(), LineError> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    // `name [version [build]]`: a second token must be a version, not another package.
    let looks_like_package =
        |t: &str| t.contains("::") || t.starts_with(|c: char| c.is_ascii_alphabetic());
    let bracket = line.contains('[');
    if !bracket && tokens.len() > 3 && !tokens.iter().all(|t| conda_one(t).is_ok()) {
        return Err(LineError::Invalid(format!(
            "`{line}` has {} parts; a conda match spec is `name [version [build]]`",
            tokens.len()
        )));
    }
    if !bracket && (tokens.len() > 3 || (tokens.len() >= 2 && looks_like_package(tokens[1]))) {
        let all_packages = tokens.iter().all(|t| conda_one(t).is_ok());
        if all_packages {
            return Err(LineError::SeveralPackages(
                tokens.iter().map(|t| t.to_string()).collect(),
            ));
        }
        if tokens.len() >= 2 && looks_like_package(tokens[1]) {
            return Err(LineError::Invalid(format!(
                "`{line}`: `{}` is not a version; if it is another package, put one package per line",
                tokens[1]
            )));
        }
    }
    conda_one(line).map_err(LineError::Invalid)
}

fn conda_one(text: &str) -> Result<(), String> {
    let spec = MatchSpec::from_str(text, ParseStrictness::Lenient)
        .map_err(|e| format!("`{text}` is not a conda match spec: {e}"))?;
    match spec.name {
        PackageNameMatcher::Exact(_) => Ok(()),
        _ => Err(format!(
            "`{text}`: the package name must be exact, not a pattern"
        )),
    }
}

/// When a line holds whitespace-separated tokens that are each a package on their own, return
/// them: the author meant several packages.
fn several(line: &str, is_package: impl Fn(&str) -> bool) -> Option<Vec<String>> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    (tokens.len() >= 2 && tokens.iter().all(|t| is_package(t)))
        .then(|| tokens.into_iter().map(str::to_string).collect())
}

/// The key that identifies a package inside one list, for duplicate detection: `numpy` and
/// `numpy==1.0` are the same package twice.
pub fn package_key(manager: crate::spec::Manager, line: &str) -> String {
    use crate::spec::Manager;
    match manager {
        Manager::Apt => {
            let end = line.find(['=', '/']).unwrap_or(line.len());
            line[..end].to_string()
        }
        Manager::Pip => parse_pep508(line)
            .map(|r| r.name.to_string())
            .unwrap_or_else(|_| line.to_lowercase()),
        Manager::Conda => MatchSpec::from_str(line, ParseStrictness::Lenient)
            .ok()
            .and_then(|s| match s.name {
                PackageNameMatcher::Exact(name) => Some(name.as_normalized().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| line.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a1", "vision-notebook", "py3.11_base", "x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Upper", "a b", "a/b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn image_references() {
        assert_eq!(
            check_image_reference("ubuntu").unwrap(),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(
            check_image_reference("127.0.0.1:5000/kiln/bookworm:minbase").unwrap(),
            "127.0.0.1:5000/kiln/bookworm:minbase"
        );
        let digest = format!("registry.example.com/base/nb@sha256:{}", "a".repeat(64));
        assert!(check_image_reference(&digest).is_ok());
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "repo:tag:extra",
            "registry.example.com/x@sha256:zz",
            " ubuntu",
        ] {
            assert!(check_image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn apt_lines() {
        for good in [
            "curl",
            "libgl1",
            "g++",
            "python3.11",
            "libc6:amd64",
            "curl=7.88.1-10+deb12u5",
            "git/bookworm-backports",
            "nginx=1:1.22.1-9",
        ] {
            assert_eq!(check_apt(good), Ok(()), "{good}");
        }
        for bad in [
            "Curl",
            "c",
            "curl=",
            "curl=abc",
            "curl/",
            "curl;rm -rf /",
            "$(id)",
            "-y",
        ] {
            assert!(
                matches!(check_apt(bad), Err(LineError::Invalid(_))),
                "{bad}"
            );
        }
        assert_eq!(
            check_apt("curl wget"),
            Err(LineError::SeveralPackages(vec![
                "curl".into(),
                "wget".into()
            ]))
        );
    }

    #[test]
    fn pip_lines() {
        for good in [
            "pandas>=2.1",
            "scikit-learn==1.5.*",
            "requests[socks,security]>=2; python_version >= \"3.9\"",
            "pandas >= 2.1",
            "torch @ https://download.example.com/torch-2.0-cp311-none-linux_x86_64.whl",
            "six==1.16.0",
        ] {
            assert_eq!(check_pip(good), Ok(()), "{good}");
        }
        for bad in [
            "-r requirements.txt",
            "--index-url=http://x",
            "pandas>=>2",
            "==1.0",
            "na me$",
        ] {
            assert!(
                matches!(check_pip(bad), Err(LineError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check_pip("numpy pandas"),
            Err(LineError::SeveralPackages(_))
        ));
        assert!(matches!(
            check_pip("numpy==1.0 pandas"),
            Err(LineError::SeveralPackages(_))
        ));
    }

    #[test]
    fn conda_lines() {
        for good in [
            "numpy",
            "conda-forge::numpy==1.17*",
            "numpy 1.17.* py38_0",
            "numpy >=1.17,<2",
            "numpy>=1.17",
            "conda-forge::python=3.11",
            "numpy[version='>=1.17']",
        ] {
            assert_eq!(check_conda(good), Ok(()), "{good}");
        }
        assert!(matches!(
            check_conda("numpy scipy"),
            Err(LineError::SeveralPackages(_))
        ));
        assert!(matches!(
            check_conda("conda-forge::numpy pandas"),
            Err(LineError::SeveralPackages(_))
        ));
        assert!(matches!(
            check_conda("numpy==1.0 scipy"),
            Err(LineError::SeveralPackages(_))
        ));
        assert!(check_conda("numpy 1.0 py38 extra").is_err());
        assert!(check_conda("::").is_err());
    }
}
