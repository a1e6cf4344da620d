//! From bytes to an [`ImageSpec`] or a list of precise problems.

use super::rules::{self, LineError};
use super::yaml::{self, Node, Pos, Value};
use super::{
    CatalogSettings, Diagnostic, ImageSpec, MAX_SPEC_BYTES, Manager, Packages, Rule,
    canonical_digest,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const TOP_KEYS: [&str; 10] = [
    "name",
    "description",
    "baseImage",
    "pullSecret",
    "packages",
    "displayName",
    "catalog",
    "tests",
    "sources",
    "rebuildOnBaseUpdate",
];
const CATALOG_KEYS: [&str; 3] = ["hidden", "groups", "default"];
/// A display name longer than this is no longer a name (spawners show it on one line).
const MAX_DISPLAY_NAME: usize = 100;
/// A test command longer than this belongs in a script inside the image.
const MAX_TEST_COMMAND: usize = 4096;
const PACKAGE_KEYS: [&str; 3] = ["apt", "conda", "pip"];

/// What validation may know beyond the file itself.
#[derive(Clone, Debug, Default)]
pub struct SpecContext {
    /// Credential names configured in Kiln. `None` when no config is at hand (as in a PR check
    /// run without Kiln's config): then `pullSecret` is only checked for shape.
    pub pull_secrets: Option<BTreeSet<String>>,
    /// The package sources configured in Kiln; `None` without a config (then `sources:`
    /// entries are only checked for shape). Reconcile also renders with them.
    pub sources: Option<std::sync::Arc<crate::sources::Sources>>,
}

/// The result of reading one spec file.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedSpec {
    pub path: String,
    /// `name` as written, with its position, whenever it could be read (even if invalid), so
    /// that an invalid revision is still attributed to its spec and duplicates are found.
    pub name: Option<(String, Pos)>,
    /// The spec, present exactly when `diagnostics` is empty.
    pub spec: Option<ImageSpec>,
    pub digest: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
}

impl ParsedSpec {
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }

    fn push(&mut self, pos: Pos, rule: Rule, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            path: self.path.clone(),
            line: pos.line,
            column: pos.column,
            rule,
            message: message.into(),
        });
    }
}

/// Parse and validate one spec file, and compute the canonical digest of a valid spec. `path`
/// is used in diagnostics and for the stem rule.
pub fn parse_spec(path: &str, bytes: &[u8], ctx: &SpecContext) -> ParsedSpec {
    let mut out = validate_spec(path, bytes, ctx);
    out.digest = out.spec.as_ref().map(canonical_digest);
    out
}

/// [`parse_spec`] without the digest (`digest` stays `None`): what `kiln check` needs. The
/// digest normalizes every package line and hashes the result, a few percent of a check's CPU.
pub fn validate_spec(path: &str, bytes: &[u8], ctx: &SpecContext) -> ParsedSpec {
    let mut out = ParsedSpec {
        path: path.to_string(),
        name: None,
        spec: None,
        digest: None,
        diagnostics: vec![],
    };
    if bytes.len() > MAX_SPEC_BYTES {
        out.push(
            Pos::START,
            Rule::FileTooLarge,
            format!(
                "file is {} bytes; a spec may be at most {} KiB",
                bytes.len(),
                MAX_SPEC_BYTES / 1024
            ),
        );
        return out;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.strip_prefix('\u{feff}').unwrap_or(text),
        Err(e) => {
            let pos = position_of_byte(bytes, e.valid_up_to());
            out.push(pos, Rule::NotUtf8, "file is not valid UTF-8");
            return out;
        }
    };
    let doc = match yaml::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let rule = if e.alias {
                Rule::YamlAlias
            } else {
                Rule::YamlSyntax
            };
            out.push(e.pos, rule, e.message);
            return out;
        }
    };
    let spec = Walker {
        out: &mut out,
        source: text,
        lines: text.lines().collect(),
        ctx,
    }
    .spec(&doc);
    if out.diagnostics.is_empty() {
        out.spec = spec;
    }
    out.diagnostics.sort();
    out
}

/// A file in the specs folder that Kiln will not read (a symlink, a submodule, a file that
/// cannot be opened): one `unreadable-file` diagnostic saying why, so that it is reported like
/// any invalid spec rather than skipped. `reason` completes "the file …".
pub fn unreadable_spec(path: &str, reason: &str) -> ParsedSpec {
    let mut out = ParsedSpec {
        path: path.to_string(),
        name: None,
        spec: None,
        digest: None,
        diagnostics: vec![],
    };
    out.push(
        Pos::START,
        Rule::UnreadableFile,
        format!("the file {reason}"),
    );
    out
}

/// Two files declaring one name: an error on both, at each file's `name`.
pub fn check_duplicate_names(specs: &mut [ParsedSpec]) {
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, parsed) in specs.iter().enumerate() {
        if let Some((name, _)) = &parsed.name {
            by_name.entry(name.clone()).or_default().push(i);
        }
    }
    for indices in by_name.values().filter(|v| v.len() > 1) {
        for &i in indices {
            let others: Vec<&str> = indices
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| specs[j].path.as_str())
                .collect();
            let Some((name, pos)) = specs[i].name.clone() else {
                continue;
            };
            specs[i].push(
                pos,
                Rule::DuplicateName,
                format!("name `{name}` is also used by {}", others.join(", ")),
            );
            specs[i].spec = None;
            specs[i].digest = None;
            specs[i].diagnostics.sort();
        }
    }
}

fn position_of_byte(bytes: &[u8], offset: usize) -> Pos {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Pos::new(line as u32, column as u32)
}

struct Walker<'a> {
    out: &'a mut ParsedSpec,
    source: &'a str,
    /// `source` split into lines once, so locating block-string lines stays linear.
    lines: Vec<&'a str>,
    ctx: &'a SpecContext,
}

impl Walker<'_> {
    fn spec(&mut self, doc: &Node) -> Option<ImageSpec> {
        let entries = match &doc.value {
            Value::Map(entries) => entries,
            Value::Null => {
                self.out.push(
                    doc.pos,
                    Rule::MissingKey,
                    "file is empty; a spec needs at least `name` and `baseImage`",
                );
                return None;
            }
            other => {
                self.out.push(
                    doc.pos,
                    Rule::WrongType,
                    format!(
                        "a spec is a mapping with `name`, `baseImage` and `packages`, not {}",
                        other.kind()
                    ),
                );
                return None;
            }
        };
        let (mut name, mut description, mut base_image, mut pull_secret) = (None, None, None, None);
        let mut packages = Some(Packages::default());
        let mut rebuild_on_base_update = None;
        let (mut display_name, mut catalog, mut tests) =
            (Some(None), Some(CatalogSettings::default()), Some(vec![]));
        let mut sources = Some(vec![]);
        for (key, value) in entries {
            let Some(key_text) = self.key(key) else {
                continue;
            };
            match key_text {
                "name" => name = self.name(value),
                "description" => description = self.scalar(value, "description"),
                "baseImage" => base_image = self.base_image(value),
                "pullSecret" => pull_secret = self.pull_secret(value),
                "packages" => packages = self.packages(value),
                "displayName" => display_name = self.display_name(value),
                "catalog" => catalog = self.catalog(value),
                "tests" => tests = self.tests(value),
                "sources" => sources = self.sources(value),
                "rebuildOnBaseUpdate" => {
                    rebuild_on_base_update = Some(self.boolean(value, "rebuildOnBaseUpdate"))
                }
                other => self.unknown_key(key.pos, other, &TOP_KEYS, ""),
            }
        }
        let present = |k: &str| {
            entries
                .iter()
                .any(|(key, _)| matches!(&key.value, Value::Scalar(s) if s == k))
        };
        for required in ["name", "baseImage"] {
            if !present(required) {
                self.out.push(
                    doc.pos,
                    Rule::MissingKey,
                    format!("missing required key `{required}`"),
                );
            }
        }
        Some(ImageSpec {
            name: name?,
            description: description.map(|(d, _)| d),
            base_image: base_image?,
            pull_secret,
            packages: packages?,
            display_name: display_name?,
            catalog: catalog?,
            tests: tests?,
            sources: sources?,
            rebuild_on_base_update,
        })
    }

    /// The items of the list at `node` (none for an empty value); anything but a list is a
    /// `WrongType` error saying the key `key` must be a list of `what`, and `None`.
    fn list_items<'n>(&mut self, node: &'n Node, key: &str, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Null => Some(&[]),
            Value::Seq(items) => Some(items),
            other => {
                self.out.push(
                    node.pos,
                    Rule::WrongType,
                    format!("`{key}` must be a list of {what}, not {}", other.kind()),
                );
                None
            }
        }
    }

    /// `sources:` names of package sources configured in Kiln; sorted, each once.
    fn sources(&mut self, node: &Node) -> Option<Vec<String>> {
        let items = self.list_items(node, "sources", "source names configured in Kiln")?;
        let before = self.out.diagnostics.len();
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            let (name, pos) = match &item.value {
                Value::Scalar(s) => (s.trim().to_string(), item.pos),
                other => {
                    self.out.push(
                        item.pos,
                        Rule::WrongType,
                        format!("`sources` entries are source names, not {}", other.kind()),
                    );
                    continue;
                }
            };
            if !crate::sources::config::valid_name(&name) {
                self.out.push(pos, Rule::UnknownSource, format!("`{name}` is not a source name (letters, digits, `-`, `_`, `.`); `sources` names sources configured in Kiln, never a URL or credential"));
            } else if let Some(known) = &self.ctx.sources
                && known.get(&name).is_none()
            {
                let configured: Vec<&str> = known.names().collect();
                let hint = configured
                    .iter()
                    .map(|k| (strsim::jaro_winkler(&name, k), *k))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, k)| format!("did you mean `{k}`?"))
                    .unwrap_or_else(|| match configured.is_empty() {
                        true => "none are configured".to_string(),
                        false => format!("configured: {}", configured.join(", ")),
                    });
                self.out.push(
                    pos,
                    Rule::UnknownSource,
                    format!("source `{name}` is not configured in Kiln; {hint}"),
                );
            } else {
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        (self.out.diagnostics.len() == before).then_some(names)
    }

    /// `displayName`: one line of text. `Some(None)` when absent-as-null; `None` on error.
    fn display_name(&mut self, node: &Node) -> Option<Option<String>> {
        if node.value == Value::Null {
            return Some(None);
        }
        let (text, pos) = self.scalar(node, "displayName")?;
        let trimmed = text.trim();
        if trimmed.is_empty()
            || trimmed.contains('\n')
            || trimmed.chars().count() > MAX_DISPLAY_NAME
        {
            self.out.push(
                pos,
                Rule::DisplayName,
                format!(
                    "`displayName` is one non-empty line of at most {MAX_DISPLAY_NAME} characters"
                ),
            );
            return None;
        }
        Some(Some(trimmed.to_string()))
    }

    /// `catalog:` with `hidden`, `groups` and `default`.
    fn catalog(&mut self, node: &Node) -> Option<CatalogSettings> {
        let mut settings = CatalogSettings::default();
        let entries = match &node.value {
            Value::Null => return Some(settings),
            Value::Map(entries) => entries,
            other => {
                self.out.push(
                    node.pos,
                    Rule::WrongType,
                    format!(
                        "`catalog` must be a mapping with `hidden`, `groups` and/or `default`, not {}",
                        other.kind()
                    ),
                );
                return None;
            }
        };
        let before = self.out.diagnostics.len();
        for (key, value) in entries {
            let Some(key_text) = self.key(key) else {
                continue;
            };
            match key_text {
                "hidden" => settings.hidden = self.boolean(value, "catalog.hidden"),
                "default" => settings.default = self.boolean(value, "catalog.default"),
                "groups" => settings.groups = self.groups(value),
                other => self.unknown_key(key.pos, other, &CATALOG_KEYS, " under `catalog`"),
            }
        }
        (self.out.diagnostics.len() == before).then_some(settings)
    }

    /// `true`/`false`; any other value is reported (and read as `false`).
    fn boolean(&mut self, node: &Node, what: &str) -> bool {
        match &node.value {
            Value::Scalar(s) if s == "true" => true,
            Value::Scalar(s) if s == "false" => false,
            other => {
                self.out.push(
                    node.pos,
                    Rule::WrongType,
                    format!("`{what}` must be `true` or `false`, not {}", other.kind()),
                );
                false
            }
        }
    }

    /// `catalog.groups`: a list of group names as the hub's authenticator spells them.
    fn groups(&mut self, node: &Node) -> Vec<String> {
        let Some(items) = self.list_items(node, "catalog.groups", "group names") else {
            return vec![];
        };
        let mut groups = Vec::with_capacity(items.len());
        for item in items {
            match &item.value {
                Value::Scalar(s)
                    if !s.trim().is_empty()
                        && s.trim().len() <= 256
                        && !s.chars().any(|c| c.is_control()) =>
                {
                    if groups.contains(&s.trim().to_string()) {
                        self.out.push(
                            item.pos,
                            Rule::CatalogGroup,
                            format!("group `{}` is listed twice", s.trim()),
                        );
                    } else {
                        groups.push(s.trim().to_string());
                    }
                }
                Value::Scalar(_) | Value::Null => self.out.push(
                    item.pos,
                    Rule::CatalogGroup,
                    "a group name is a non-empty line of at most 256 characters",
                ),
                other => self.out.push(
                    item.pos,
                    Rule::WrongType,
                    format!(
                        "`catalog.groups` entries must be strings, not {}",
                        other.kind()
                    ),
                ),
            }
        }
        groups
    }

    /// `tests:` a list of shell commands, each run with `sh -c` in the built image.
    fn tests(&mut self, node: &Node) -> Option<Vec<String>> {
        let items = self.list_items(node, "tests", "shell commands")?;
        let before = self.out.diagnostics.len();
        let mut tests = Vec::with_capacity(items.len());
        for item in items {
            match &item.value {
                Value::Scalar(s) if s.trim().is_empty() => {
                    self.out.push(item.pos, Rule::ImageTest, "empty test command")
                }
                Value::Scalar(s) if s.len() > MAX_TEST_COMMAND || s.contains('\0') => self.out.push(
                    item.pos,
                    Rule::ImageTest,
                    format!("a test command is at most {MAX_TEST_COMMAND} bytes without NUL; put longer tests in a script"),
                ),
                Value::Scalar(s) => tests.push(s.trim().to_string()),
                Value::Null => self.out.push(item.pos, Rule::ImageTest, "empty test command"),
                other => self.out.push(
                    item.pos,
                    Rule::WrongType,
                    format!("`tests` entries must be strings (shell commands), not {}", other.kind()),
                ),
            }
        }
        (self.out.diagnostics.len() == before).then_some(tests)
    }

    fn key<'n>(&mut self, key: &'n Node) -> Option<&'n str> {
        match &key.value {
            Value::Scalar(s) => Some(s),
            other => {
                self.out.push(
                    key.pos,
                    Rule::WrongType,
                    format!("keys must be plain words, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn unknown_key(&mut self, pos: Pos, key: &str, known: &[&str], within: &str) {
        let suggestion = known
            .iter()
            .map(|k| {
                (
                    strsim::jaro_winkler(&key.to_lowercase(), &k.to_lowercase()),
                    *k,
                )
            })
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| format!("; did you mean `{k}`?"))
            .unwrap_or_else(|| format!("; known keys{within}: {}", known.join(", ")));
        self.out.push(
            pos,
            Rule::UnknownKey,
            format!("unknown key `{key}`{suggestion}"),
        );
    }

    fn scalar(&mut self, node: &Node, what: &str) -> Option<(String, Pos)> {
        match &node.value {
            Value::Scalar(s) => Some((s.clone(), node.pos)),
            other => {
                self.out.push(
                    node.pos,
                    Rule::WrongType,
                    format!("`{what}` must be a string, not {}", other.kind()),
                );
                None
            }
        }
    }

    fn name(&mut self, node: &Node) -> Option<String> {
        let (name, pos) = self.scalar(node, "name")?;
        self.out.name = Some((name.clone(), pos));
        if let Err(message) = rules::check_name(&name) {
            self.out.push(pos, Rule::NameFormat, message);
            return None;
        }
        let stem = Path::new(&self.out.path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem != name {
            self.out.push(pos, Rule::NameMismatch, format!("name `{name}` must equal the file name without extension (`{stem}`); rename the file or the spec"));
            return None;
        }
        Some(name)
    }

    fn base_image(&mut self, node: &Node) -> Option<String> {
        let (text, pos) = self.scalar(node, "baseImage")?;
        match rules::check_image_reference(&text) {
            Ok(_) => Some(text),
            Err(message) => {
                self.out.push(pos, Rule::BaseImage, message);
                None
            }
        }
    }

    fn pull_secret(&mut self, node: &Node) -> Option<String> {
        if node.value == Value::Null {
            return None;
        }
        let (name, pos) = self.scalar(node, "pullSecret")?;
        let shape_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !shape_ok {
            self.out.push(pos, Rule::PullSecret, "`pullSecret` names a credential configured in Kiln (letters, digits, `.`, `_`, `-`); it never holds the secret itself");
            return None;
        }
        if let Some(known) = &self.ctx.pull_secrets
            && !known.contains(&name)
        {
            let list = if known.is_empty() {
                "none are configured".to_string()
            } else {
                format!(
                    "configured: {}",
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            self.out.push(
                pos,
                Rule::PullSecret,
                format!("pull secret `{name}` is not configured in Kiln ({list})"),
            );
            return None;
        }
        Some(name)
    }

    fn packages(&mut self, node: &Node) -> Option<Packages> {
        let mut packages = Packages::default();
        let entries = match &node.value {
            Value::Null => return Some(packages),
            Value::Map(entries) => entries,
            other => {
                self.out.push(
                    node.pos,
                    Rule::WrongType,
                    format!(
                        "`packages` must be a mapping with `apt`, `conda` and/or `pip`, not {}",
                        other.kind()
                    ),
                );
                return None;
            }
        };
        let mut ok = true;
        for (key, value) in entries {
            let Some(key_text) = self.key(key) else {
                ok = false;
                continue;
            };
            match Manager::from_key(key_text) {
                Some(manager) => match self.package_list(manager, value) {
                    Some(list) => *packages.get_mut(manager) = list,
                    None => ok = false,
                },
                None => {
                    self.unknown_key(key.pos, key_text, &PACKAGE_KEYS, " under `packages`");
                    ok = false;
                }
            }
        }
        ok.then_some(packages)
    }

    /// A list or a block string; every entry checked, every problem reported.
    fn package_list(&mut self, manager: Manager, node: &Node) -> Option<Vec<String>> {
        let lines: Vec<(String, Pos)> = match &node.value {
            Value::Null => vec![],
            Value::Seq(items) => {
                let mut lines = Vec::with_capacity(items.len());
                for item in items {
                    match &item.value {
                        Value::Scalar(s) if !s.trim().is_empty() => {
                            lines.push((s.trim().to_string(), item.pos))
                        }
                        Value::Scalar(_) | Value::Null => self.out.push(
                            item.pos,
                            Rule::WrongType,
                            format!("empty entry in the `{manager}` list"),
                        ),
                        other => self.out.push(
                            item.pos,
                            Rule::WrongType,
                            format!("`{manager}` entries must be strings, not {}", other.kind()),
                        ),
                    }
                }
                lines
            }
            Value::Scalar(text) => self.block_lines(manager, text, node.pos)?,
            Value::Map(_) => {
                self.out.push(node.pos, Rule::WrongType, format!("`{manager}` must be a list or a block string with one package per line, not a mapping"));
                return None;
            }
        };
        let before = self.out.diagnostics.len();
        let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
        let mut list = Vec::with_capacity(lines.len());
        for (line, pos) in lines {
            let checked = match manager {
                Manager::Apt => rules::check_apt(&line),
                Manager::Pip => rules::check_pip(&line),
                Manager::Conda => rules::check_conda(&line),
            };
            match checked {
                Ok(()) => {}
                Err(LineError::SeveralPackages(tokens)) => {
                    self.out.push(
                        pos,
                        Rule::OnePackagePerLine,
                        format!(
                            "`{line}` holds {} packages ({}); write one package per line",
                            tokens.len(),
                            tokens.join(", ")
                        ),
                    );
                    continue;
                }
                Err(LineError::NamePattern(message)) => {
                    self.out.push(pos, Rule::PackageNamePattern, message);
                    continue;
                }
                Err(LineError::Invalid(message)) => {
                    let rule = match manager {
                        Manager::Apt => Rule::AptPackage,
                        Manager::Pip => Rule::PipRequirement,
                        Manager::Conda => Rule::CondaMatchspec,
                    };
                    self.out.push(pos, rule, message);
                    continue;
                }
            }
            let key = rules::package_key(manager, &line);
            if let Some(first) = seen.get(&key) {
                self.out.push(
                    pos,
                    Rule::DuplicatePackage,
                    format!(
                        "`{line}`: package `{key}` is already listed in `{manager}` at line {}",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(key, pos);
            list.push(line);
        }
        (self.out.diagnostics.len() == before).then_some(list)
    }

    /// Lines of a block string, each with its own position in the file. Blank lines and `#`
    /// comments are skipped; a trailing ` # comment` is removed.
    fn block_lines(
        &mut self,
        manager: Manager,
        text: &str,
        pos: Pos,
    ) -> Option<Vec<(String, Pos)>> {
        if block_indicator(self.source, pos) == Some('>') {
            self.out.push(pos, Rule::BlockStyle, format!("`{manager}` uses a folded block (`>`), which joins lines; use a literal block (`|`) or a list so each package stays on its own line"));
            return None;
        }
        let mut cursor = (pos.line, pos.column);
        let mut lines = Vec::new();
        for raw in text.lines() {
            let content = strip_comment(raw).trim();
            let located = self.locate(raw.trim(), &mut cursor);
            if content.is_empty() {
                continue;
            }
            lines.push((content.to_string(), located.unwrap_or(pos)));
        }
        Some(lines)
    }

    /// Find `needle` in the source at or after `cursor`; advance the cursor past it.
    fn locate(&self, needle: &str, cursor: &mut (u32, u32)) -> Option<Pos> {
        if needle.is_empty() {
            return None;
        }
        let first = cursor.0.saturating_sub(1) as usize;
        for (index, line) in self.lines.iter().enumerate().skip(first) {
            let lineno = index as u32 + 1;
            let from_char = if lineno == cursor.0 {
                cursor.1.saturating_sub(1) as usize
            } else {
                0
            };
            let from_byte = line
                .char_indices()
                .nth(from_char)
                .map_or(line.len(), |(b, _)| b);
            // Most needles are the next line's text after its indentation: compare there first
            // and build a substring searcher (costly to set up) only when that misses.
            let rest = &line[from_byte..];
            let indent = rest.len() - rest.trim_start().len();
            let found = if rest[indent..].starts_with(needle) {
                Some(indent)
            } else {
                rest.find(needle)
            };
            if let Some(found) = found {
                let column = line[..from_byte + found].chars().count() as u32 + 1;
                *cursor = (lineno, column + needle.chars().count() as u32);
                return Some(Pos::new(lineno, column));
            }
        }
        None
    }
}

/// The block indicator (`|` or `>`) that introduces a block scalar whose content starts at
/// `pos`: the last token before the content, skipping blank lines and a trailing comment.
fn block_indicator(source: &str, pos: Pos) -> Option<char> {
    let lines: Vec<&str> = source.lines().take(pos.line as usize).collect();
    let (last, earlier) = lines.split_last()?;
    let head: String = last
        .chars()
        .take(pos.column.saturating_sub(1) as usize)
        .collect();
    let candidates = std::iter::once(head.as_str()).chain(earlier.iter().rev().copied());
    for line in candidates {
        let code = strip_comment(line).trim_end();
        if let Some(token) = code.split_whitespace().last() {
            return token.chars().next().filter(|c| matches!(c, '|' | '>'));
        }
    }
    None
}

/// `curl  # for downloads` → `curl  `. A `#` only starts a comment at the line start or after
/// whitespace, as in requirements files (`pkg @ https://host/x.whl#sha256=…` keeps its hash).
fn strip_comment(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            return &line[..i];
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, yaml: &str) -> ParsedSpec {
        parse_spec(path, yaml.as_bytes(), &SpecContext::default())
    }

    /// The single diagnostic of a file, as (rule, line, column).
    fn only(path: &str, yaml: &str) -> (Rule, u32, u32, String) {
        let parsed = check(path, yaml);
        assert_eq!(parsed.diagnostics.len(), 1, "{:#?}", parsed.diagnostics);
        assert!(parsed.spec.is_none());
        let d = &parsed.diagnostics[0];
        (d.rule, d.line, d.column, d.message.clone())
    }

    const HEAD: &str = "name: demo\nbaseImage: debian:bookworm\n";

    #[test]
    fn rebuild_on_base_update_is_a_boolean_outside_the_digest() {
        let plain = check("demo.yaml", HEAD);
        let off = check("demo.yaml", &format!("{HEAD}rebuildOnBaseUpdate: false\n"));
        let on = check("demo.yaml", &format!("{HEAD}rebuildOnBaseUpdate: true\n"));
        assert_eq!(plain.spec.as_ref().unwrap().rebuild_on_base_update, None);
        assert_eq!(
            off.spec.as_ref().unwrap().rebuild_on_base_update,
            Some(false)
        );
        assert_eq!(on.spec.as_ref().unwrap().rebuild_on_base_update, Some(true));
        assert_eq!(
            plain.digest, off.digest,
            "when Kiln rebuilds is not what it builds"
        );
        let (rule, line, col, message) = only(
            "demo.yaml",
            &format!("{HEAD}rebuildOnBaseUpdate: sometimes\n"),
        );
        assert_eq!((rule, line, col), (Rule::WrongType, 3, 22));
        assert!(
            message.contains("`rebuildOnBaseUpdate` must be `true` or `false`"),
            "{message}"
        );
    }

    #[test]
    fn catalogue_fields_and_tests_are_checked_where_they_are() {
        let cases: [(&str, Rule, u32, u32); 7] = [
            ("displayName: \"\"\n", Rule::DisplayName, 3, 14),
            ("displayName: [a]\n", Rule::WrongType, 3, 14),
            ("catalog:\n  hidden: maybe\n", Rule::WrongType, 4, 11),
            ("catalog:\n  groups: [a, a]\n", Rule::CatalogGroup, 4, 15),
            ("catalog:\n  colour: red\n", Rule::UnknownKey, 4, 3),
            ("tests:\n  - \"\"\n", Rule::ImageTest, 4, 5),
            ("tests: echo hi\n", Rule::WrongType, 3, 8),
        ];
        for (tail, rule, line, column) in cases {
            let (r, l, c, message) = only("demo.yaml", &format!("{HEAD}{tail}"));
            assert_eq!((r, l, c), (rule, line, column), "{tail}: {message}");
        }
        let ok = check(
            "demo.yaml",
            &format!(
                "{HEAD}displayName: Demo\ncatalog: {{hidden: false, groups: [], default: false}}\ntests: [\"true\"]\n"
            ),
        );
        assert_eq!(ok.diagnostics, vec![]);
        assert_eq!(ok.spec.unwrap().tests, ["true"]);
    }

    #[test]
    fn a_full_spec_parses() {
        let yaml = "name: demo\ndescription: Demo\nbaseImage: debian:bookworm\npullSecret: corp\npackages:\n  apt: |\n    curl\n    # a comment\n\n    jq  # json\n  conda:\n    - conda-forge::numpy==1.17*\n  pip:\n    - pandas>=2.1\n";
        let parsed = check("specs/demo.yaml", yaml);
        assert_eq!(parsed.diagnostics, vec![]);
        let spec = parsed.spec.unwrap();
        assert_eq!(spec.packages.apt, vec!["curl", "jq"]);
        assert_eq!(spec.packages.conda, vec!["conda-forge::numpy==1.17*"]);
        assert_eq!(spec.pull_secret.as_deref(), Some("corp"));
        assert!(parsed.digest.unwrap().starts_with("sha256:"));
    }

    #[test]
    fn validation_without_the_digest_finds_the_same() {
        let ctx = SpecContext::default();
        for yaml in [
            "name: demo\nbaseImage: debian:bookworm\npackages:\n  apt: |\n    curl\n      jq\n    curl\n",
            "name: demo\nbaseImage: debian:bookworm\npackages:\n  pip:\n    - pandas>=2.1\n",
        ] {
            let full = parse_spec("specs/demo.yaml", yaml.as_bytes(), &ctx);
            let checked = validate_spec("specs/demo.yaml", yaml.as_bytes(), &ctx);
            assert_eq!(checked.diagnostics, full.diagnostics);
            assert_eq!(checked.spec, full.spec);
            assert_eq!(checked.digest, None);
        }
        // Block lines are located after their indentation, duplicates each at their own line.
        let yaml = "name: demo\nbaseImage: debian:bookworm\npackages:\n  apt: |\n    curl\n    nope!\n    nope!\n";
        let lines: Vec<u32> = validate_spec("specs/demo.yaml", yaml.as_bytes(), &ctx)
            .diagnostics
            .iter()
            .map(|d| d.line)
            .collect();
        assert!(lines.contains(&6) && lines.contains(&7), "{lines:?}");
    }

    #[test]
    fn file_too_large() {
        let big = format!("{HEAD}description: \"{}\"\n", "x".repeat(MAX_SPEC_BYTES));
        assert_eq!(
            only("demo.yaml", &big).0..=only("demo.yaml", &big).0,
            Rule::FileTooLarge..=Rule::FileTooLarge
        );
        let (rule, line, col, _) = only("demo.yaml", &big);
        assert_eq!((rule, line, col), (Rule::FileTooLarge, 1, 1));
    }

    #[test]
    fn not_utf8() {
        let mut bytes = b"name: demo\nbaseImage: debian\ndescription: caf".to_vec();
        bytes.push(0xff);
        let parsed = parse_spec("demo.yaml", &bytes, &SpecContext::default());
        let d = &parsed.diagnostics[0];
        assert_eq!((d.rule, d.line, d.column), (Rule::NotUtf8, 3, 17));
    }

    #[test]
    fn yaml_syntax() {
        let (rule, line, _, _) = only(
            "demo.yaml",
            "name: demo\nbaseImage: [debian\npackages: {}\n",
        );
        assert_eq!(rule, Rule::YamlSyntax);
        assert!(line >= 2);
    }

    #[test]
    fn yaml_alias_bomb() {
        let bomb = "name: demo\nbaseImage: debian\na: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n";
        let (rule, line, col, _) = only("demo.yaml", bomb);
        assert_eq!((rule, line, col), (Rule::YamlAlias, 3, 4));
    }

    #[test]
    fn missing_key() {
        let (rule, line, col, message) =
            only("demo.yaml", "name: demo\npackages:\n  apt: [curl]\n");
        assert_eq!((rule, line, col), (Rule::MissingKey, 1, 1));
        assert!(message.contains("baseImage"), "{message}");
        let (rule, ..) = only("demo.yaml", "");
        assert_eq!(rule, Rule::MissingKey);
    }

    #[test]
    fn wrong_type() {
        let (rule, line, col, _) = only("demo.yaml", "name: demo\nbaseImage:\n  - debian\n");
        assert_eq!((rule, line, col), (Rule::WrongType, 3, 3));
        let (rule, line, col, _) = only(
            "demo.yaml",
            &format!("{HEAD}packages:\n  apt:\n    - curl\n    - [a, b]\n"),
        );
        assert_eq!((rule, line, col), (Rule::WrongType, 6, 7));
    }

    #[test]
    fn unknown_key_suggests() {
        let (rule, line, col, message) = only(
            "demo.yaml",
            "name: demo\nbaseimage: debian\nbaseImage: debian\n",
        );
        assert_eq!((rule, line, col), (Rule::UnknownKey, 2, 1));
        assert!(message.contains("did you mean `baseImage`"), "{message}");
        let (rule, line, col, message) =
            only("demo.yaml", &format!("{HEAD}packages:\n  pip3: [six]\n"));
        assert_eq!((rule, line, col), (Rule::UnknownKey, 4, 3));
        assert!(message.contains("did you mean `pip`"), "{message}");
        let (_, _, _, message) = only("demo.yaml", &format!("{HEAD}zzz: 1\n"));
        assert!(message.contains("known keys"), "{message}");
    }

    #[test]
    fn name_format() {
        let (rule, line, col, _) = only("Demo_.yaml", "baseImage: debian\nname: Demo_\n");
        assert_eq!((rule, line, col), (Rule::NameFormat, 2, 7));
    }

    #[test]
    fn name_mismatch() {
        let (rule, line, col, message) = only("specs/other.yml", HEAD);
        assert_eq!((rule, line, col), (Rule::NameMismatch, 1, 7));
        assert!(message.contains("other"), "{message}");
    }

    #[test]
    fn duplicate_name_on_both_files() {
        let mut parsed = vec![
            check("a/demo.yaml", HEAD),
            check("b/demo.yml", "# same name\nname: demo\nbaseImage: debian\n"),
            check("c/other.yaml", "name: other\nbaseImage: debian\n"),
        ];
        check_duplicate_names(&mut parsed);
        let d0 = &parsed[0].diagnostics[0];
        let d1 = &parsed[1].diagnostics[0];
        assert_eq!((d0.rule, d0.line, d0.column), (Rule::DuplicateName, 1, 7));
        assert_eq!((d1.rule, d1.line, d1.column), (Rule::DuplicateName, 2, 7));
        assert!(d0.message.contains("b/demo.yml"));
        assert!(parsed[0].spec.is_none() && parsed[1].spec.is_none());
        assert!(parsed[2].is_valid());
    }

    #[test]
    fn base_image() {
        let (rule, line, col, _) = only("demo.yaml", "name: demo\nbaseImage: 'Debian:Book worm'\n");
        assert_eq!((rule, line, col), (Rule::BaseImage, 2, 12));
    }

    #[test]
    fn pull_secret() {
        let yaml = format!("{HEAD}pullSecret: corp\n");
        let ctx = SpecContext {
            pull_secrets: Some(["other".to_string()].into()),
            ..SpecContext::default()
        };
        let parsed = parse_spec("demo.yaml", yaml.as_bytes(), &ctx);
        let d = &parsed.diagnostics[0];
        assert_eq!((d.rule, d.line, d.column), (Rule::PullSecret, 3, 13));
        assert!(d.message.contains("other"));
        let (rule, ..) = only("demo.yaml", &format!("{HEAD}pullSecret: 'user:hunter2'\n"));
        assert_eq!(rule, Rule::PullSecret);
    }

    #[test]
    fn sources_are_names_and_known_ones_when_a_config_is_at_hand() {
        let yaml = format!("{HEAD}sources: [internal-pypi, corp-apt, internal-pypi]\n");
        let parsed = parse_spec("demo.yaml", yaml.as_bytes(), &SpecContext::default());
        assert_eq!(parsed.spec.unwrap().sources, ["corp-apt", "internal-pypi"]);
        let tables: std::collections::BTreeMap<String, crate::sources::SourceTable> = toml::from_str(
            "[internal-pypi]\nkind = 'pip'\nurl = 'https://x/simple/'\n[corp-apt]\nkind = 'apt'\nurl = 'https://y/'\nsuite = 'bookworm'\n",
        )
        .unwrap();
        let ctx = SpecContext {
            sources: Some(std::sync::Arc::new(
                crate::sources::Sources::from_tables(&tables).unwrap(),
            )),
            ..SpecContext::default()
        };
        let yaml = format!("{HEAD}sources:\n  - internal-pypy\n  - other\n");
        let parsed = parse_spec("demo.yaml", yaml.as_bytes(), &ctx);
        let found: Vec<(Rule, u32, u32, &str)> = parsed
            .diagnostics
            .iter()
            .map(|d| (d.rule, d.line, d.column, d.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    Rule::UnknownSource,
                    4,
                    5,
                    "source `internal-pypy` is not configured in Kiln; did you mean `internal-pypi`?"
                ),
                (
                    Rule::UnknownSource,
                    5,
                    5,
                    "source `other` is not configured in Kiln; configured: corp-apt, internal-pypi"
                ),
            ]
        );
        let (rule, ..) = only("demo.yaml", &format!("{HEAD}sources: ['https://u:p@x/']\n"));
        assert_eq!(rule, Rule::UnknownSource);
        let (rule, ..) = only("demo.yaml", &format!("{HEAD}sources: internal-pypi\n"));
        assert_eq!(rule, Rule::WrongType);
    }

    #[test]
    fn apt_package_in_list_and_block() {
        let (rule, line, col, _) = only(
            "demo.yaml",
            &format!("{HEAD}packages:\n  apt:\n    - curl\n    - Bad_Name\n"),
        );
        assert_eq!((rule, line, col), (Rule::AptPackage, 6, 7));
        let (rule, line, col, _) = only(
            "demo.yaml",
            &format!("{HEAD}packages:\n  apt: |\n    curl\n\n      Bad_Name\n"),
        );
        assert_eq!((rule, line, col), (Rule::AptPackage, 7, 7));
    }

    #[test]
    fn pip_requirement() {
        let (rule, line, col, _) = only(
            "demo.yaml",
            &format!("{HEAD}packages:\n  pip: |\n    six\n    pandas>=>2\n"),
        );
        assert_eq!((rule, line, col), (Rule::PipRequirement, 6, 5));
    }

    #[test]
    fn conda_matchspec() {
        let (rule, line, col, _) = only(
            "demo.yaml",
            &format!(
                "{HEAD}packages:\n  conda:\n    - conda-forge::numpy==1.17*\n    - 'scipy >=1.17 py38 x y'\n"
            ),
        );
        assert_eq!(rule, Rule::CondaMatchspec);
        assert_eq!((line, col), (6, 7));
    }

    #[test]
    fn one_package_per_line_everywhere() {
        for (manager, line) in [
            ("apt", "curl wget"),
            ("pip", "numpy pandas"),
            ("conda", "numpy scipy"),
        ] {
            let yaml = format!("{HEAD}packages:\n  {manager}: |\n    six\n    {line}\n");
            let (rule, l, c, message) = only("demo.yaml", &yaml);
            assert_eq!((rule, l, c), (Rule::OnePackagePerLine, 6, 5), "{manager}");
            assert!(message.contains("one package per line"), "{message}");
        }
        let (rule, l, c, _) = only("demo.yaml", &format!("{HEAD}packages:\n  apt: curl wget\n"));
        assert_eq!((rule, l, c), (Rule::OnePackagePerLine, 4, 8));
    }

    #[test]
    fn pip_names_ending_in_punctuation_are_errors_not_panics() {
        // Found by the fuzzer: pep508_rs 0.9.2 panics on these.
        for line in ["numpy- >=1.0", "a. b", "y-/", "_x ==1"] {
            let yaml = format!("{HEAD}packages:\n  pip:\n    - '{line}'\n");
            let (rule, ..) = only("demo.yaml", &yaml);
            assert_eq!(rule, Rule::PipRequirement, "{line}");
        }
        let parsed = check("demo.yaml", "packages:\n pip: y-/\n");
        assert!(!parsed.diagnostics.is_empty());
    }

    #[test]
    fn duplicate_package() {
        let (rule, line, col, message) = only(
            "demo.yaml",
            &format!("{HEAD}packages:\n  pip:\n    - numpy\n    - pandas\n    - NumPy==1.0\n"),
        );
        assert_eq!((rule, line, col), (Rule::DuplicatePackage, 7, 7));
        assert!(message.contains("line 5"), "{message}");
    }

    #[test]
    fn folded_blocks_are_refused() {
        let (rule, line, col, _) = only(
            "demo.yaml",
            &format!("{HEAD}packages:\n  apt: >\n    curl\n    jq\n"),
        );
        assert_eq!((rule, line, col), (Rule::BlockStyle, 5, 5));
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let yaml = "name: demo\nbaseImage: debian\nbaseimag: x\npackages:\n  apt: [curl wget, Bad]\n  pip: ['a b']\n";
        let parsed = check("demo.yaml", yaml);
        let rules: Vec<Rule> = parsed.diagnostics.iter().map(|d| d.rule).collect();
        assert_eq!(
            rules,
            vec![
                Rule::UnknownKey,
                Rule::OnePackagePerLine,
                Rule::AptPackage,
                Rule::OnePackagePerLine
            ]
        );
    }

    #[test]
    fn package_name_pattern_and_unreadable_file() {
        let (rule, line, col, message) = only(
            "demo.yaml",
            &format!("{HEAD}packages:\n  conda:\n    - numpy\n    - 'test* 1.2'\n"),
        );
        assert_eq!((rule, line, col), (Rule::PackageNamePattern, 6, 7));
        assert!(message.contains("name the package"), "{message}");
        let parsed = unreadable_spec("specs/two.yaml", "is a symbolic link to `one.yaml`");
        let d = &parsed.diagnostics[0];
        assert_eq!((d.rule, d.line, d.column), (Rule::UnreadableFile, 1, 1));
        assert_eq!(
            d.to_string(),
            "specs/two.yaml:1:1: error[unreadable-file]: the file is a symbolic link to `one.yaml`"
        );
        assert!(parsed.spec.is_none() && parsed.name.is_none());
    }
}
