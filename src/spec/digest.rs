//! The canonical digest: one hash per meaning of a spec.
//!
//! A commit makes a new revision only when the digest changes, and a revision whose digest was
//! already built re-uses that image. So the digest covers exactly what changes the image — the
//! base image (fully qualified, so `ubuntu` and `docker.io/library/ubuntu:latest` agree), the
//! pull secret and the three package sets — and nothing else: not comments, key order, list
//! order, list-vs-block style, the description, `displayName` or `catalog:` (presentation
//! only: changing them builds nothing). `tests:` is covered, in the order written: a changed
//! test is a new revision whose build (from cache) runs it before anything is pushed.

use super::{ImageSpec, Manager, rules};
use sha2::{Digest, Sha256};

/// Bump when the canonical form changes, so old and new digests never collide.
const FORMAT: &str = "kiln-spec-digest/v1";

/// `sha256:<hex>` of the spec's canonical form.
pub fn canonical_digest(spec: &ImageSpec) -> String {
    let base =
        rules::check_image_reference(&spec.base_image).unwrap_or_else(|_| spec.base_image.clone());
    let canonical = serde_json::json!({
        "format": FORMAT,
        "baseImage": base,
        "pullSecret": spec.pull_secret,
        "apt": spec.packages.normalized(Manager::Apt),
        "conda": spec.packages.normalized(Manager::Conda),
        "pip": spec.packages.normalized(Manager::Pip),
    });
    let mut canonical = canonical;
    // Absent when empty, so specs without tests keep the digest they had before `tests:` existed.
    if !spec.tests.is_empty() {
        canonical["tests"] = serde_json::json!(spec.tests);
    }
    // Absent when empty too, so specs without sources keep their digests.
    if !spec.sources.is_empty() {
        canonical["sources"] = serde_json::json!(spec.sources);
    }
    // serde_json's map is ordered by key (no `preserve_order` feature), so this is canonical.
    let bytes = canonical.to_string();
    format!("sha256:{}", hex::encode(Sha256::digest(bytes.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Packages, SpecContext, parse_spec};
    use proptest::prelude::*;

    fn spec(base: &str, apt: &[&str], pip: &[&str]) -> ImageSpec {
        ImageSpec {
            name: "x".into(),
            description: None,
            base_image: base.into(),
            pull_secret: None,
            packages: Packages {
                apt: apt.iter().map(|s| s.to_string()).collect(),
                pip: pip.iter().map(|s| s.to_string()).collect(),
                conda: vec![],
            },
            display_name: None,
            catalog: Default::default(),
            tests: vec![],
            sources: vec![],
            rebuild_on_base_update: None,
        }
    }

    #[test]
    fn display_name_and_catalog_are_not_part_of_the_digest_but_tests_are() {
        let a = "name: demo\nbaseImage: debian:bookworm\npackages:\n  apt: [curl]\n";
        let b = "name: demo\nbaseImage: debian:bookworm\ndisplayName: Demo (2026)\ncatalog:\n  hidden: true\n  groups: [physics, chem]\n  default: true\npackages:\n  apt: [curl]\n";
        let c = "name: demo\nbaseImage: debian:bookworm\ntests:\n  - curl --version\npackages:\n  apt: [curl]\n";
        let ctx = SpecContext::default();
        let (pa, pb, pc) = (
            parse_spec("demo.yaml", a.as_bytes(), &ctx),
            parse_spec("demo.yaml", b.as_bytes(), &ctx),
            parse_spec("demo.yaml", c.as_bytes(), &ctx),
        );
        assert_eq!(pb.diagnostics, vec![]);
        assert_eq!(pc.diagnostics, vec![]);
        let sb = pb.spec.as_ref().unwrap();
        assert_eq!(sb.display_name.as_deref(), Some("Demo (2026)"));
        assert!(sb.catalog.hidden && sb.catalog.default);
        assert_eq!(sb.catalog.groups, ["physics", "chem"]);
        assert_eq!(pc.spec.as_ref().unwrap().tests, ["curl --version"]);
        assert_eq!(pa.digest, pb.digest, "presentation fields build nothing");
        assert_ne!(pa.digest, pc.digest, "a test is a new revision");
        // Without tests the digest is the one specs had before `tests:` existed.
        assert_eq!(
            pa.digest.unwrap(),
            canonical_digest(&spec("debian:bookworm", &["curl"], &[]))
        );
    }

    #[test]
    fn style_comments_order_and_description_do_not_matter() {
        let a = "name: demo\nbaseImage: debian:bookworm\npackages:\n  apt: [curl, jq]\n  pip:\n    - six\n";
        let b = "# a comment\ndescription: hello\npackages:\n  pip: |\n    six  # why\n  apt: |\n    jq\n\n    curl\nbaseImage: docker.io/library/debian:bookworm\nname: demo\n";
        let ctx = SpecContext::default();
        let pa = parse_spec("demo.yaml", a.as_bytes(), &ctx);
        let pb = parse_spec("demo.yaml", b.as_bytes(), &ctx);
        assert_eq!(pa.diagnostics, vec![]);
        assert_eq!(pb.diagnostics, vec![]);
        assert_eq!(pa.digest, pb.digest);
    }

    #[test]
    fn content_changes_change_the_digest() {
        let base = canonical_digest(&spec("debian:bookworm", &["curl"], &["six"]));
        assert_ne!(
            base,
            canonical_digest(&spec("debian:trixie", &["curl"], &["six"]))
        );
        assert_ne!(
            base,
            canonical_digest(&spec("debian:bookworm", &["curl", "jq"], &["six"]))
        );
        assert_ne!(
            base,
            canonical_digest(&spec("debian:bookworm", &["curl"], &["six==1.16.0"]))
        );
        // The same text moved to another manager is another image.
        assert_ne!(
            base,
            canonical_digest(&spec("debian:bookworm", &["curl", "six"], &[]))
        );
        let mut with_secret = spec("debian:bookworm", &["curl"], &["six"]);
        with_secret.pull_secret = Some("corp".into());
        assert_ne!(base, canonical_digest(&with_secret));
    }

    fn package() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{1,8}"
    }

    proptest! {
        #[test]
        fn digest_ignores_order_duplicates_and_description(
            apt in proptest::collection::vec(package(), 0..8),
            pip in proptest::collection::vec(package(), 0..8),
            description in proptest::option::of("[ -~]{0,40}"),
            seed in any::<u64>(),
        ) {
            let original = spec("debian:bookworm", &apt.iter().map(String::as_str).collect::<Vec<_>>(), &pip.iter().map(String::as_str).collect::<Vec<_>>());
            let mut shuffled = original.clone();
            let rotate = |v: &mut Vec<String>| if !v.is_empty() { let k = (seed as usize) % v.len(); v.rotate_left(k); v.reverse(); };
            rotate(&mut shuffled.packages.apt);
            rotate(&mut shuffled.packages.pip);
            if let Some(first) = apt.first() { shuffled.packages.apt.push(first.clone()); }
            shuffled.description = description;
            prop_assert_eq!(canonical_digest(&original), canonical_digest(&shuffled));
        }

        #[test]
        fn digest_changes_when_a_package_is_added(
            apt in proptest::collection::btree_set(package(), 0..8),
            extra in package(),
        ) {
            prop_assume!(!apt.contains(&extra));
            let list: Vec<&str> = apt.iter().map(String::as_str).collect();
            let mut more = list.clone();
            more.push(&extra);
            prop_assert_ne!(canonical_digest(&spec("debian:bookworm", &list, &[])), canonical_digest(&spec("debian:bookworm", &more, &[])));
        }
    }
}
