//! Which sources a spec uses: the ones its `sources:` names, every `default = true` source of
//! a kind the spec installs, and a conda source a conda package names as its channel
//! (`internal-conda::pkg`). A source of a kind the spec does not install is not used (it
//! would only add a mount to no step).

use super::config::{Source, SourceKind, Sources};
use crate::spec::{ImageSpec, Manager};

/// The sources `spec` uses, sorted by name, each once.
pub fn used_by<'s>(spec: &ImageSpec, sources: &'s Sources) -> Vec<&'s Source> {
    let installs = |kind: SourceKind| {
        let manager = match kind {
            SourceKind::Pip => Manager::Pip,
            SourceKind::Conda => Manager::Conda,
            SourceKind::Apt => Manager::Apt,
        };
        !spec.packages.get(manager).is_empty()
    };
    let channel_named = |name: &str| {
        spec.packages.conda.iter().any(|p| {
            p.split_once("::")
                .is_some_and(|(channel, _)| channel.trim() == name)
        })
    };
    sources
        .iter()
        .filter(|s| installs(s.kind))
        .filter(|s| {
            s.default
                || spec.sources.iter().any(|n| n == &s.name)
                || (s.kind == SourceKind::Conda && channel_named(&s.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::SourceTable;
    use crate::spec::Packages;
    use std::collections::BTreeMap;

    fn sources() -> Sources {
        let tables: BTreeMap<String, SourceTable> = toml::from_str(
            r#"
[internal-pypi]
kind = "pip"
url = "https://pypi.corp.example/simple/"
[everyone-pypi]
kind = "pip"
url = "https://mirror.corp.example/simple/"
default = true
[internal-conda]
kind = "conda"
url = "https://conda.corp.example/internal"
[corp-apt]
kind = "apt"
url = "https://apt.corp.example/debian/"
suite = "bookworm"
"#,
        )
        .unwrap();
        Sources::from_tables(&tables).unwrap()
    }

    fn spec(sources: &[&str], packages: Packages) -> ImageSpec {
        ImageSpec {
            name: "s".into(),
            description: None,
            base_image: "debian:bookworm".into(),
            pull_secret: None,
            packages,
            display_name: None,
            catalog: Default::default(),
            tests: vec![],
            sources: sources.iter().map(|s| s.to_string()).collect(),
            rebuild_on_base_update: None,
        }
    }

    fn names(spec: &ImageSpec, sources: &Sources) -> Vec<String> {
        used_by(spec, sources)
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn named_default_and_channel_sources_of_installed_kinds() {
        let all = sources();
        let pip_only = Packages {
            pip: vec!["six".into()],
            ..Packages::default()
        };
        assert_eq!(names(&spec(&[], pip_only.clone()), &all), ["everyone-pypi"]);
        assert_eq!(
            names(&spec(&["internal-pypi", "corp-apt"], pip_only), &all),
            ["everyone-pypi", "internal-pypi"],
            "corp-apt serves no step of this spec"
        );
        let conda = Packages {
            conda: vec!["internal-conda::numpy".into(), "conda-forge::scipy".into()],
            ..Packages::default()
        };
        assert_eq!(names(&spec(&[], conda), &all), ["internal-conda"]);
        let apt = Packages {
            apt: vec!["curl".into()],
            ..Packages::default()
        };
        assert_eq!(names(&spec(&["corp-apt"], apt.clone()), &all), ["corp-apt"]);
        assert!(names(&spec(&[], apt), &all).is_empty());
    }
}
