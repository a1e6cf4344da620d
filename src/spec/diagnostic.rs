//! Problems found in a spec file: where, which rule, and what to do about it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every validation rule, with a stable id that CI annotations and docs refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Rule {
    FileTooLarge,
    NotUtf8,
    YamlSyntax,
    YamlAlias,
    WrongType,
    MissingKey,
    UnknownKey,
    NameFormat,
    NameMismatch,
    DuplicateName,
    BaseImage,
    PullSecret,
    AptPackage,
    PipRequirement,
    CondaMatchspec,
    OnePackagePerLine,
    DuplicatePackage,
    BlockStyle,
    PackageNamePattern,
    UnreadableFile,
    DisplayName,
    CatalogGroup,
    ImageTest,
    UnknownSource,
}

impl Rule {
    pub const ALL: [Rule; 24] = [
        Rule::FileTooLarge,
        Rule::NotUtf8,
        Rule::YamlSyntax,
        Rule::YamlAlias,
        Rule::WrongType,
        Rule::MissingKey,
        Rule::UnknownKey,
        Rule::NameFormat,
        Rule::NameMismatch,
        Rule::DuplicateName,
        Rule::BaseImage,
        Rule::PullSecret,
        Rule::AptPackage,
        Rule::PipRequirement,
        Rule::CondaMatchspec,
        Rule::OnePackagePerLine,
        Rule::DuplicatePackage,
        Rule::BlockStyle,
        Rule::PackageNamePattern,
        Rule::UnreadableFile,
        Rule::DisplayName,
        Rule::CatalogGroup,
        Rule::ImageTest,
        Rule::UnknownSource,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::FileTooLarge => "file-too-large",
            Rule::NotUtf8 => "not-utf8",
            Rule::YamlSyntax => "yaml-syntax",
            Rule::YamlAlias => "yaml-alias",
            Rule::WrongType => "wrong-type",
            Rule::MissingKey => "missing-key",
            Rule::UnknownKey => "unknown-key",
            Rule::NameFormat => "name-format",
            Rule::NameMismatch => "name-mismatch",
            Rule::DuplicateName => "duplicate-name",
            Rule::BaseImage => "base-image",
            Rule::PullSecret => "pull-secret",
            Rule::AptPackage => "apt-package",
            Rule::PipRequirement => "pip-requirement",
            Rule::CondaMatchspec => "conda-matchspec",
            Rule::OnePackagePerLine => "one-package-per-line",
            Rule::DuplicatePackage => "duplicate-package",
            Rule::BlockStyle => "block-style",
            Rule::PackageNamePattern => "package-name-pattern",
            Rule::UnreadableFile => "unreadable-file",
            Rule::DisplayName => "display-name",
            Rule::CatalogGroup => "catalog-group",
            Rule::ImageTest => "image-test",
            Rule::UnknownSource => "unknown-source",
        }
    }
}

impl TryFrom<String> for Rule {
    type Error = String;

    fn try_from(id: String) -> Result<Self, String> {
        Rule::ALL
            .into_iter()
            .find(|r| r.id() == id)
            .ok_or_else(|| format!("unknown rule `{id}`"))
    }
}

impl From<Rule> for &'static str {
    fn from(rule: Rule) -> Self {
        rule.id()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One problem in one file. `path` is the file as the user named it (or its path in the repo).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Diagnostic {
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub rule: Rule,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `path:line:col: error[rule]: message` — the shape compilers use, so editors link it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error[{}]: {}",
            self.path, self.line, self.column, self.rule, self.message
        )
    }
}
