//! Image specs: the YAML files admins commit, what they mean, and whether they are valid.
//!
//! A spec file is parsed in one pass that never stops at the first problem: every problem in
//! the file comes back as a [`Diagnostic`] naming `path:line:col` and a [`Rule`], and a spec
//! with any problem yields no [`ImageSpec`] at all. Nothing is dropped silently: a package line
//! Kiln cannot read is an error, never a skipped line.
//!
//! * [`yaml`] turns text into a position-aware tree (serde-saphyr underneath).
//! * [`parse`] walks that tree: keys, types, names, packages.
//! * [`rules`] holds the syntax rule for each kind of value (pip and conda via real parsers).
//! * [`digest`] computes the canonical digest that decides whether a commit is a new revision.
//! * [`schema`] describes the file format as JSON Schema for editors.

pub mod diagnostic;
pub mod digest;
pub mod parse;
#[cfg(test)]
mod peers;
pub mod rules;
pub mod schema;
pub mod yaml;

pub use diagnostic::{Diagnostic, Rule};
pub use digest::canonical_digest;
pub use parse::{
    ParsedSpec, SpecContext, check_duplicate_names, parse_spec, unreadable_spec, validate_spec,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// Specs larger than this are refused before parsing.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

/// A valid image spec: what to build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub base_image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    #[serde(default)]
    pub packages: Packages,
    /// Name shown to platform users in the catalogue and spawners; not part of the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// How the catalogue lists the image; not part of the digest.
    #[serde(default)]
    pub catalog: CatalogSettings,
    /// Shell commands run in the built image, without network, before anything is pushed.
    /// Part of the digest: a change of tests is a new revision whose build runs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<String>,
    /// Package sources configured in Kiln (`[sources.NAME]`) this spec installs from, sorted,
    /// each once. Part of the digest: another index changes what is installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// `false`: a moved base tag only shows the spec "base outdated"; `None`: the config's
    /// `rebuild_on_base_update`. Not part of the digest: it changes when Kiln builds, not what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_on_base_update: Option<bool>,
}

/// The `catalog:` block: presentation only, so it never changes what is built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSettings {
    /// Built and pushed, but not listed in the catalogue.
    #[serde(default)]
    pub hidden: bool,
    /// Groups for spawners that offer an image only to some users. (No `skip_serializing_if`
    /// here: the catalogue's listing stores this struct with postcard, which needs every field.)
    #[serde(default)]
    pub groups: Vec<String>,
    /// The image spawners pre-select.
    #[serde(default)]
    pub default: bool,
}

/// Packages per manager, trimmed, in the order the file lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packages {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apt: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conda: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip: Vec<String>,
}

impl Packages {
    pub fn get(&self, manager: Manager) -> &[String] {
        match manager {
            Manager::Apt => &self.apt,
            Manager::Conda => &self.conda,
            Manager::Pip => &self.pip,
        }
    }

    pub fn get_mut(&mut self, manager: Manager) -> &mut Vec<String> {
        match manager {
            Manager::Apt => &mut self.apt,
            Manager::Conda => &mut self.conda,
            Manager::Pip => &mut self.pip,
        }
    }

    /// The list as installed: de-duplicated and sorted. Each manager resolves its whole list
    /// in one solver run, so order never changes the result; sorting makes the digest and the
    /// Dockerfile independent of how the file happens to list them.
    pub fn normalized(&self, manager: Manager) -> Vec<&str> {
        let mut list: Vec<&str> = self.get(manager).iter().map(|s| s.as_str()).collect();
        list.sort_unstable();
        list.dedup();
        list
    }
}

/// The package managers a spec can use, in install order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Manager {
    Apt,
    Conda,
    Pip,
}

impl Manager {
    pub const ALL: [Manager; 3] = [Manager::Apt, Manager::Conda, Manager::Pip];

    pub fn key(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Conda => "conda",
            Manager::Pip => "pip",
        }
    }

    pub fn from_key(key: &str) -> Option<Manager> {
        Manager::ALL.into_iter().find(|m| m.key() == key)
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}
