//! The spec file format as JSON Schema (`kiln schema`), so editors validate specs as admins
//! type (`# yaml-language-server: $schema=…`). The types here describe the *file*; the parser
//! in [`super::parse`] is what Kiln actually enforces, with positions and rule ids.

use schemars::JsonSchema;

/// An image spec: a base image plus apt, conda and pip packages.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Kiln image spec")]
struct SpecFile {
    /// Unique, immutable name; equals the file name without extension.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"),
        length(max = 63)
    )]
    name: String,
    /// Free text shown on the dashboard; not part of the image.
    description: Option<String>,
    /// Image reference to build on, e.g. `registry.example.com/base/notebook:2024.1`.
    base_image: String,
    /// Name of a registry credential configured in Kiln, used to pull the base image.
    pull_secret: Option<String>,
    packages: Option<PackageSets>,
    /// Name shown to platform users in the catalogue and spawners; not part of the image
    /// (changing it builds nothing).
    #[schemars(length(min = 1, max = 100))]
    display_name: Option<String>,
    /// How the image catalogue lists this image; not part of the image.
    catalog: Option<CatalogBlock>,
    /// Shell commands run (`sh -c`, no network, a time limit each) in the built image before
    /// anything is pushed; a failing one fails the job. Part of the image's digest.
    tests: Option<Vec<TestCommand>>,
    /// Package sources configured in Kiln (`[sources.NAME]` in kiln.toml) to install from:
    /// private pip indexes, conda channels, apt repositories. Their credentials never appear
    /// in the spec or the image. Part of the image's digest.
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")))]
    sources: Option<Vec<String>>,
    /// `false`: when the base tag moves, only show "base outdated" instead of rebuilding.
    /// Default: Kiln's `rebuild_on_base_update` (true). Not part of the image's digest.
    rebuild_on_base_update: Option<bool>,
}

/// A shell command, run with `/bin/sh -c` in the built image.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(transparent)]
struct TestCommand(#[schemars(length(min = 1, max = 4096))] String);

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct CatalogBlock {
    /// Built and pushed, but not listed in the catalogue.
    hidden: Option<bool>,
    /// Only members of one of these groups are offered the image (spawners that filter by group).
    #[schemars(inner(length(min = 1, max = 256)))]
    groups: Option<Vec<String>>,
    /// The image spawners pre-select.
    default: Option<bool>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct PackageSets {
    /// Debian packages: `name[:arch][=version|/release]`.
    apt: Option<PackageList>,
    /// conda match specs, e.g. `conda-forge::numpy==1.17*`.
    conda: Option<PackageList>,
    /// PEP 508 requirements, e.g. `pandas>=2.1`.
    pip: Option<PackageList>,
}

/// A YAML list, or a literal block string (`|`) with one package per line; blank lines and
/// `#` comments are ignored.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum PackageList {
    List(Vec<String>),
    Block(String),
}

/// The JSON Schema document, pretty-printed.
pub fn spec_schema_json() -> String {
    let schema = schemars::schema_for!(SpecFile);
    serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_names_every_key() {
        let json = super::spec_schema_json();
        for key in [
            "name",
            "baseImage",
            "pullSecret",
            "packages",
            "apt",
            "conda",
            "pip",
            "displayName",
            "catalog",
            "hidden",
            "groups",
            "default",
            "tests",
            "rebuildOnBaseUpdate",
            "additionalProperties",
        ] {
            assert!(json.contains(key), "{key} missing from schema");
        }
    }
}
