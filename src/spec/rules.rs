//! The syntax rules for single values: spec names, image references and one package line for
//! each package manager. Each check is a pure function from text to "fine" or a message; the
//! parser attaches the position and the rule id.
//!
//! pip and conda lines go through the real parsers (`pep508_rs`, `rattler_conda_types`), so
//! Kiln accepts exactly what those tools accept. On top of them sits the one-package-per-line
//! check: conda's lenient parser reads `numpy scipy` as "numpy at version scipy", and a line
//! holding two packages must never be half-installed or silently dropped.

use oci_spec::distribution::Reference;
use rattler_conda_types::{MatchSpec, PackageNameMatcher, ParseMatchSpecOptions};
use std::str::FromStr;

pub const MAX_NAME_LEN: usize = 63;

/// Why a single package line was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LineError {
    /// Several packages on one line.
    SeveralPackages(Vec<String>),
    /// Not a valid package for this manager.
    Invalid(String),
    /// Parses, but names a pattern of packages (`*`, `test*`), which is no install request.
    NamePattern(String),
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
    if let Some(host_end) = text.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return parse_ipv6_reference(text, host_end + 2);
    }
    let reference = Reference::from_str(text)
        .map_err(|e| format!("`{text}` is not a valid image reference: {e}"))?;
    check_repository_path(text)?;
    Ok(reference.whole())
}

/// A reference whose registry is an IPv6 address in brackets (`[2001:db8::1]:5000/repo:tag`,
/// `[::1]:5000/repo`), as Docker and the distribution project accept it. oci-spec 0.10's
/// reference grammar predates IPv6 hosts, so Kiln parses around it: the address is checked
/// here (no zone index: `[fe80::1%eth0]` is refused, as by Docker), the rest of the reference
/// is parsed by oci-spec with a stand-in host, and the address is put back.
fn parse_ipv6_reference(text: &str, host_end: usize) -> Result<String, String> {
    const STAND_IN: &str = "ipv6.kiln.invalid";
    let host = &text[..host_end];
    let address = &host[1..host.len() - 1];
    if address.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!(
            "`{text}`: `{host}` is not an IPv6 address (a registry host in brackets must be one, \
             without a zone index)"
        ));
    }
    let rest = &text[host_end..];
    // The bracketed host is always a registry, so a repository path must follow it.
    let path_start = match rest.strip_prefix(':') {
        Some(port) => port.find('/').map(|i| 1 + i),
        None => rest.starts_with('/').then_some(0),
    };
    let Some(path_start) = path_start else {
        return Err(format!(
            "`{text}` is not a valid image reference: a registry `{host}` needs a repository \
             after it (`{host}:5000/name:tag`)"
        ));
    };
    let port = &rest[..path_start];
    if let Some(digits) = port.strip_prefix(':')
        && (digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("`{text}`: `{digits}` is not a port number"));
    }
    let stand_in = format!("{STAND_IN}{rest}");
    let reference = Reference::from_str(&stand_in)
        .map_err(|e| format!("`{text}` is not a valid image reference: {e}"))?;
    check_repository_path(&stand_in).map_err(|e| e.replace(STAND_IN, host))?;
    let whole = reference.whole();
    Ok(match whole.strip_prefix(STAND_IN) {
        Some(tail) => format!("{host}{tail}"),
        None => whole,
    })
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

/// PEP 508 parsing, with three things pep508_rs 0.9.2 refuses but pip (pypa/packaging)
/// accepts handled around it:
///
/// * the project name is checked first: pep508_rs panics on a name that ends in `.`, `-` or
///   `_` when more text follows (`numpy- >=1.0`; fixed upstream, not released), and input from
///   a commit must never panic Kiln;
/// * arbitrary equality (`pkg===arbitrarystring`): pep508_rs parses the `===` operator but
///   then requires a PEP 440 version, while PEP 440 allows any string there. The string is
///   replaced by a version before parsing (it is installed as written: only the check sees
///   the replacement);
/// * parentheses in markers without spaces (`;(python_version>="3.4")and extra=="x"`):
///   pep508_rs needs a space between `)` and `and`/`or`; spaces are added around every
///   parenthesis outside quoted strings, which changes nothing in the marker's meaning;
/// * URLs go through [`PipUrl`] rather than pep508_rs's `VerbatimUrl`, whose `url` crate
///   refuses what pip accepts (`git+ssh://git@github.com:org/repo.git`, a port, userinfo).
fn parse_pep508(text: &str) -> Result<pep508_rs::Requirement<PipUrl>, String> {
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if name.ends_with(['.', '-', '_']) || name.starts_with(['.', '-', '_']) {
        return Err(format!(
            "`{name}` is not a valid project name (it must start and end with a letter or digit)"
        ));
    }
    let normalized = normalize_pep508(text);
    pep508_rs::Requirement::<PipUrl>::from_str(normalized.as_deref().unwrap_or(text))
        .map_err(|e| e.to_string())
}

/// The rewrite described at [`parse_pep508`], or `None` when the text needs none (the common
/// case: no allocation).
fn normalize_pep508(text: &str) -> Option<String> {
    if !text.contains("===") && !text.contains(['(', ')']) {
        return None;
    }
    // Where the marker starts: the first `;` after the URL (a URL ends at whitespace and may
    // itself hold `;`), or the first `;` when there is no URL.
    let at = text.find('@');
    let semi = text.find(';');
    let is_url =
        matches!((at, semi), (Some(a), Some(s)) if a < s) || (at.is_some() && semi.is_none());
    let marker_from = match at.filter(|_| is_url) {
        Some(a) => {
            let url_start = a + 1 + (text[a + 1..].len() - text[a + 1..].trim_start().len());
            let url_end = text[url_start..]
                .find(char::is_whitespace)
                .map_or(text.len(), |i| url_start + i);
            text[url_end..].find(';').map(|i| url_end + i)
        }
        None => semi,
    };
    let (head, marker) = text.split_at(marker_from.unwrap_or(text.len()));
    let mut out = String::with_capacity(text.len() + 8);
    if is_url {
        out.push_str(head);
    } else {
        // `===` and the arbitrary string after it (up to whitespace, `;` or `)`).
        let mut rest = head;
        while let Some(i) = rest.find("===") {
            out.push_str(&rest[..i + 3]);
            let after = &rest[i + 3..];
            let spaces = after.len() - after.trim_start().len();
            out.push_str(&after[..spaces]);
            let value = &after[spaces..];
            let end = value
                .find(|c: char| c.is_whitespace() || c == ';' || c == ')')
                .unwrap_or(value.len());
            if end > 0 {
                out.push('0');
            }
            rest = &value[end..];
        }
        out.push_str(rest);
        // `name()`: an empty version list in parentheses, which pep508_rs refuses.
        while let Some(open) = out.find('(') {
            let inner = &out[open + 1..];
            let blank = inner.len() - inner.trim_start().len();
            if inner[blank..].starts_with(')') {
                out.replace_range(open..open + 1 + blank + 1, "");
            } else {
                break;
            }
        }
    }
    let mut quote = None;
    for c in marker.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(q), _) if c == q => {
                quote = None;
                out.push(c);
            }
            (None, '(' | ')') => {
                out.push(' ');
                out.push(c);
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    Some(out)
}

/// A requirement's URL as pip takes it (pypa/packaging's rule): a scheme, `://`, and a
/// non-empty network location unless the scheme is `file` (`file:///abs/path`, `file://.`).
/// Kept verbatim: Kiln passes the line to pip as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipUrl(String);

impl std::fmt::Display for PipUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a requirement's URL is refused.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a URL pip accepts (it needs `scheme://host/…`, or `file://…`)")]
pub struct PipUrlError(String);

impl pep508_rs::Pep508Url for PipUrl {
    type Err = PipUrlError;

    fn parse_url(url: &str, _working_dir: Option<&std::path::Path>) -> Result<Self, Self::Err> {
        let bad = || PipUrlError(url.to_string());
        let (scheme, rest) = url.split_once(':').ok_or_else(bad)?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        let after = rest.strip_prefix("//").ok_or_else(bad)?;
        let netloc = after.split(['/', '?', '#']).next().unwrap_or_default();
        let netloc_ok = !netloc.is_empty() || scheme.eq_ignore_ascii_case("file");
        if !scheme_ok || !netloc_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        Ok(PipUrl(url.to_string()))
    }
}

/// A conda MatchSpec (`numpy`, `numpy>=1.17`, `conda-forge::numpy==1.17*`, `numpy 1.17.* py38_0`).
pub fn check_conda(original: &str) -> Result<(), LineError> {
    if let Some(feature) = original.strip_suffix('@')
        && !feature.is_empty()
        && feature
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(LineError::NamePattern(format!(
            "`{original}` is conda's old form of a feature selector (`*[track_features={feature}]`): \
             it matches packages by feature, not a package to install; name the package"
        )));
    }
    let spaced = normalize_conda(strip_bare_equals(original));
    let bracketed = conda_brackets(&spaced).map_err(|why| {
        LineError::Invalid(format!("`{original}` is not a conda match spec: {why}"))
    })?;
    let line = bracketed.as_deref().unwrap_or(&spaced);
    conda_version_shape(line).map_err(|why| {
        LineError::Invalid(format!("`{original}` is not a conda match spec: {why}"))
    })?;
    let tokens: Vec<&str> = line.split_whitespace().collect();
    // `name [version [build]]`: a second token must be a version, not another package. After
    // a version (`numpy!=1.10 py38_0`) a second token with a digit, `_` or `*` is a build
    // string, as conda reads it; a plain word (`numpy==1.0 scipy`) is another package.
    let versioned = tokens.first().is_some_and(|t| {
        let name_end = t.rfind("::").map_or(0, |i| i + 2);
        t[name_end..].contains(['<', '>', '=', '!', '~'])
    });
    let build_like = |t: &str| t.contains(|c: char| c.is_ascii_digit() || matches!(c, '_' | '*'));
    let looks_like_package = |t: &str| {
        t.contains("::")
            || (t.starts_with(|c: char| c.is_ascii_alphabetic())
                && !(versioned && tokens.len() == 2 && build_like(t)))
    };
    let bracket = line.contains('[');
    if !bracket && tokens.len() > 3 && !tokens.iter().all(|t| conda_one(t).is_ok()) {
        return Err(LineError::Invalid(format!(
            "`{original}` has {} parts; a conda match spec is `name [version [build]]`",
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
                "`{original}`: `{}` is not a version; if it is another package, put one package per line",
                tokens[1]
            )));
        }
    }
    conda_one(line)
}

/// conda's bracket section (`name[key=value, …]`), rewritten where rattler 0.58 is stricter
/// than conda (parsed around it; the line is installed as written):
///
/// * pairs separated by spaces (`numpy[version=1.10 build=py38_0]`) are joined by commas;
/// * the deprecated `numpy[version<2]` (conda warns, then reads `version='<2'`) gets its `=`;
/// * `name=…` is dropped: conda ignores a name inside the brackets (the one outside wins),
///   rattler refuses the key;
/// * `md5`/`sha256` must be hexadecimal; conda compares them as strings, so a prefix such as
///   `deadbeef` is accepted, while rattler wants a whole digest: they are checked here and
///   left out of rattler's input;
/// * a key given twice is refused, as conda does (rattler's lenient mode keeps the last);
/// * conda's trailing `(target=…, optional)` section is checked for its shape and dropped.
///
/// `Ok(None)`: nothing to rewrite.
fn conda_brackets(line: &str) -> Result<Option<String>, String> {
    let Some(open) = line.find('[') else {
        return Ok(None);
    };
    // The matching `]`, skipping nested brackets and quoted text.
    let (mut depth, mut quote, mut close) = (0usize, None::<char>, None);
    for (i, c) in line[open..].char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(close) = close else {
        return Ok(None); // unbalanced: rattler says so
    };
    let tail = line[close + 1..].trim();
    let tail_ok = tail.is_empty()
        || tail
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .is_some_and(|inner| {
                inner.split(',').map(str::trim).all(|item| {
                    item == "optional"
                        || item.strip_prefix("target=").is_some_and(|t| !t.is_empty())
                })
            });
    if !tail_ok {
        return Ok(None); // rattler refuses what follows the brackets
    }
    // Split the content into pairs at top-level commas and spaces.
    let content = &line[open + 1..close];
    let mut pairs: Vec<String> = Vec::new();
    let (mut current, mut depth, mut quote) = (String::new(), 0usize, None::<char>);
    let mut separated = false;
    for c in content.chars() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, ',') if depth == 0 => {
                pairs.push(std::mem::take(&mut current));
                separated = false;
                continue;
            }
            (None, _) if depth == 0 && c.is_whitespace() => {
                separated = true;
                continue;
            }
            _ => {}
        }
        if separated && !current.is_empty() {
            // `version=1.10 build=py38_0`, but `version= 1.10` is one pair.
            if current.ends_with('=') {
            } else {
                pairs.push(std::mem::take(&mut current));
            }
        }
        separated = false;
        current.push(c);
    }
    pairs.push(current);
    let mut seen: Vec<String> = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    for pair in pairs {
        let key_end = pair
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(pair.len());
        let (key, rest) = pair.split_at(key_end);
        let value = match rest.strip_prefix('=') {
            Some(value) => value.to_string(),
            // conda's deprecated `version<2`: the operator is part of the value.
            None if (key == "version" || key == "build_number")
                && rest.starts_with(['<', '>', '!', '~']) =>
            {
                rest.to_string()
            }
            // No `key=value` pair: leave the whole line to rattler, which says why.
            None => return Ok(None),
        };
        if key.is_empty() {
            return Ok(None);
        }
        if seen.iter().any(|k| k == key) {
            return Err(format!("`{key}` is given twice in the brackets"));
        }
        seen.push(key.to_string());
        match key {
            "name" => {}
            "md5" | "sha256" => {
                let hex = value.trim_matches(['\'', '"']);
                if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("`{key}={value}` is not a hexadecimal digest"));
                }
            }
            _ => kept.push(format!("{key}={value}")),
        }
    }
    let head = &line[..open];
    Ok(Some(if kept.is_empty() {
        head.trim_end().to_string()
    } else {
        format!("{head}[{}]", kept.join(","))
    }))
}

/// A version written as conda reads it: each `,`- or `|`-separated part starts with its
/// operator. rattler's lenient mode reads `pkg 4.2.2<6.0.0` as a version; conda refuses it (an
/// operator inside a part), and so does Kiln.
fn conda_version_shape(line: &str) -> Result<(), String> {
    let spec = line.split('[').next().unwrap_or(line);
    let after_channel = spec.rfind("::").map_or(spec, |i| &spec[i + 2..]);
    let name_end = after_channel
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*')))
        .unwrap_or(after_channel.len());
    let version = &after_channel[name_end..];
    let glued = version.as_bytes().windows(2).any(|pair| {
        (pair[0].is_ascii_alphanumeric() || matches!(pair[0], b'*' | b'.'))
            && matches!(pair[1], b'<' | b'>')
    });
    if glued {
        return Err(format!(
            "`{}` has a comparison inside a version; write each bound after a comma \
             (`>=1.0,<2.0`)",
            version.trim()
        ));
    }
    Ok(())
}

/// conda reads a version range written with spaces (`foo >=1.0 , < 2.0`, `foo >= 1.0`) as
/// the same range without them; rattler splits such a line at the spaces into name, version
/// and build and refuses it. So spaces after a comparison operator and around `,` and `|`
/// are removed (outside brackets and quotes) before rattler and the one-package-per-line
/// check see the line. The line is installed as written.
fn normalize_conda(line: &str) -> std::borrow::Cow<'_, str> {
    let is_op = |c: char| matches!(c, '<' | '>' | '=' | '!' | '~');
    // Most lines need nothing: decide that without allocating.
    let bytes = line.as_bytes();
    let needed = bytes.windows(2).any(|w| {
        (w[1].is_ascii_whitespace()
            && matches!(w[0], b'<' | b'>' | b'=' | b'!' | b'~' | b',' | b'|'))
            || (w[0].is_ascii_whitespace() && matches!(w[1], b',' | b'|'))
    });
    if !needed {
        return std::borrow::Cow::Borrowed(line);
    }
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let (mut depth, mut quote) = (0usize, None::<char>);
    let mut changed = false;
    for (i, &c) in chars.iter().enumerate() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, _) if depth == 0 && c.is_whitespace() => {
                let prev = out.chars().last();
                let next = chars[i + 1..].iter().copied().find(|c| !c.is_whitespace());
                let after_op = prev.is_some_and(|p| is_op(p) || matches!(p, ',' | '|'));
                let before_joint = next.is_some_and(|n| matches!(n, ',' | '|'));
                // `foo >=1.0 , < 2.0`: the space before `<` follows a comma (dropped above).
                if after_op || before_joint {
                    changed = true;
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
    }
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(line)
    }
}

/// `numpy=`: conda reads a lone trailing `=` as no version at all; rattler refuses it.
fn strip_bare_equals(line: &str) -> &str {
    match line.strip_suffix('=') {
        Some(head) if !head.ends_with(['=', '<', '>', '!', '~']) && !head.contains('[') => head,
        _ => line,
    }
}

/// rattler's options for Kiln: lenient (as conda is), name patterns parsed so that they get a
/// rule of their own, and the bracket keys conda accepts (`when`, `extras`, `flags`), which
/// rattler only parses when asked to.
fn conda_options() -> ParseMatchSpecOptions {
    ParseMatchSpecOptions::lenient()
        .with_exact_names_only(false)
        .with_extras(true)
        .with_conditionals(true)
        .with_flags(true)
}

fn conda_parse(text: &str) -> Result<MatchSpec, String> {
    MatchSpec::from_str(text, conda_options())
        .map_err(|e| format!("`{text}` is not a conda match spec: {e}"))
}

fn conda_one(text: &str) -> Result<(), LineError> {
    let spec = conda_parse(text).map_err(LineError::Invalid)?;
    match spec.name {
        PackageNameMatcher::Exact(_) => Ok(()),
        _ => Err(LineError::NamePattern(format!(
            "`{text}` matches packages by a name pattern; conda installs packages by name, so \
             name the package (a pattern such as `*` or `test*` selects no single package)"
        ))),
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
        Manager::Conda => conda_parse(line)
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

    #[test]
    fn forms_the_peers_accept_that_kiln_used_to_refuse() {
        assert_eq!(
            check_image_reference("[2001:db8::1]:5000/repo:tag").unwrap(),
            "[2001:db8::1]:5000/repo:tag"
        );
        assert_eq!(
            check_image_reference("[::1]:5000/repo").unwrap(),
            "[::1]:5000/repo:latest"
        );
        for bad in [
            "[::1]:5000",
            "[fe80::1%eth0]:5000/repo",
            "[::1]:x/repo",
            "[zz]/repo",
        ] {
            assert!(check_image_reference(bad).is_err(), "{bad}");
        }
        for good in [
            "pkg===arbitrarystring",
            "name;(python_version>=\"3.4\")and extra==\"x\"",
            "name @ git+ssh://git@github.com:pypa/packaging.git",
            "name @ ssh://user:pass%20word@example.com:2222/pkg.zip",
        ] {
            assert_eq!(check_pip(good), Ok(()), "{good}");
        }
        assert!(check_pip("name @ gopher:/foo/com").is_err());
        for good in [
            "numpy[version<2]",
            "numpy[version=1.10 build=py38_0]",
            "python[md5=deadbeef]",
            "foo >=1.0 , < 2.0",
            "numpy!=1.10 py38_0",
        ] {
            assert_eq!(check_conda(good), Ok(()), "{good}");
        }
        for bad in [
            "python[md5=xyz]",
            "package[build=a, build=b]",
            "pkg 4.2.2<6.0.0",
        ] {
            assert!(
                matches!(check_conda(bad), Err(LineError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn conda_name_patterns_have_a_rule_of_their_own() {
        for pattern in [
            "*",
            "test* 1.2",
            "*[license_family='LGPL']",
            "defaults::*",
            "mkl@",
        ] {
            assert!(
                matches!(check_conda(pattern), Err(LineError::NamePattern(_))),
                "{pattern}: {:?}",
                check_conda(pattern)
            );
        }
    }
}
