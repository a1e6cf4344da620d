//! The image catalogue: what platform users pick images from.
//!
//! For every live, listed spec: its latest successful image, pinned by digest, with the
//! presentation fields as last committed. Three shapes of the same list — Kiln's own JSON,
//! a KubeSpawner `profile_list` and DockerSpawner's `allowed_images` — so a hub reads the
//! catalogue directly (see `deploy/jupyterhub/`) instead of an admin copying tags by hand.
//!
//! Pure functions from store records to JSON-ready values, so every rule (hidden specs,
//! deleted specs, images never pushed, duplicate display names) is unit-tested without a
//! server. Pinning by digest matters: a spawner that starts `name@sha256:…` starts exactly the
//! image Kiln built and tested, whatever later happens to the tag.

use crate::model::{Job, SpecRecord, rfc3339};
use crate::store::listings::Listing;
use serde::Serialize;
use std::collections::BTreeMap;

/// One listed image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    pub name: String,
    /// `displayName`, or the name when the spec has none.
    pub display_name: String,
    pub description: Option<String>,
    pub revision: u64,
    pub commit: String,
    pub built_at: Option<String>,
    /// Compressed size in bytes (the pushed manifest's layers plus config, what a pull
    /// transfers; store/image_sizes.rs), `None` when Kiln could not measure it.
    pub size: Option<u64>,
    pub groups: Vec<String>,
    pub default: bool,
    /// The pushed tag (`registry/name:rN-sha7`).
    pub image: String,
    /// `registry/name@sha256:…`: what spawners should start.
    pub image_digest_ref: String,
}

/// What the catalogue is made of for one spec.
pub struct Source<'a> {
    pub spec: &'a SpecRecord,
    pub listing: Option<&'a Listing>,
    /// The job that produced the spec's latest image (`latest_image_job`).
    pub job: Option<&'a Job>,
    /// The registry digest recorded when that job pushed (store/image_digests.rs).
    pub pushed_digest: Option<&'a str>,
    pub size: Option<u64>,
}

/// The entry of one spec, or `None` when it is not listed: deleted, `catalog.hidden`, or
/// without an image pushed to a registry (a digest-pinned reference needs the registry's
/// manifest digest; a local Engine's image id is not pullable).
pub fn entry(source: &Source<'_>) -> Option<CatalogEntry> {
    let spec = source.spec;
    if spec.deleted {
        return None;
    }
    let listing = source.listing.cloned().unwrap_or_default();
    if listing.catalog.hidden {
        return None;
    }
    let job = source.job?;
    if !job.status.has_image() || job.pushed.is_empty() {
        return None;
    }
    let image = job.image.clone()?;
    // Only a registry's push answer: `Job.image_digest` may hold a local image id.
    let digest = source.pushed_digest?;
    if !digest.starts_with("sha256:") {
        return None;
    }
    let image_digest_ref = format!("{}@{digest}", repository_of(&image));
    Some(CatalogEntry {
        name: spec.name.clone(),
        display_name: listing
            .display_name
            .clone()
            .unwrap_or_else(|| spec.name.clone()),
        description: listing.description.clone(),
        revision: job.revision,
        commit: job.commit.clone(),
        built_at: job.finished_at.map(rfc3339),
        size: source.size,
        groups: listing.catalog.groups.clone(),
        default: listing.catalog.default,
        image,
        image_digest_ref,
    })
}

/// Every listed entry, in the order of `sources` (the store's: by name).
pub fn entries(sources: &[Source<'_>]) -> Vec<CatalogEntry> {
    sources.iter().filter_map(entry).collect()
}

/// `registry/name:tag` → `registry/name` (a port's colon is not a tag's).
fn repository_of(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    }
}

/// How a listing appears in the catalogue, in words (the dashboard's spec page).
pub fn listed_as(listing: &Listing) -> String {
    if listing.catalog.hidden {
        return "hidden (built, not listed)".into();
    }
    let mut text = String::from("listed");
    if listing.catalog.default {
        text.push_str(", the default");
    }
    if !listing.catalog.groups.is_empty() {
        text.push_str(&format!(
            ", for groups {}",
            listing.catalog.groups.join(", ")
        ));
    }
    text
}

/// One KubeSpawner profile (`c.KubeSpawner.profile_list` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KubeProfile {
    pub display_name: String,
    pub slug: String,
    pub description: String,
    pub default: bool,
    pub kubespawner_override: KubeOverride,
    /// Not a KubeSpawner key: the callable in `deploy/jupyterhub/` filters on it and removes it.
    pub kiln_groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KubeOverride {
    pub image: String,
}

/// The catalogue as a KubeSpawner `profile_list`. KubeSpawner takes the first profile marked
/// `default`; at most one is marked here (the first by name), so the choice is Kiln's and
/// stable rather than the spawner's.
pub fn kubespawner(entries: &[CatalogEntry]) -> Vec<KubeProfile> {
    let default_at = entries.iter().position(|e| e.default);
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| KubeProfile {
            display_name: e.display_name.clone(),
            slug: e.name.clone(),
            description: e.description.clone().unwrap_or_default(),
            default: Some(i) == default_at,
            kubespawner_override: KubeOverride {
                image: e.image_digest_ref.clone(),
            },
            kiln_groups: e.groups.clone(),
        })
        .collect()
}

/// The catalogue as DockerSpawner's `allowed_images`: display name → digest-pinned reference.
/// Two specs with one display name get their spec name appended, so none is lost.
pub fn dockerspawner(entries: &[CatalogEntry]) -> BTreeMap<String, String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries {
        *count.entry(e.display_name.as_str()).or_default() += 1;
    }
    entries
        .iter()
        .map(|e| {
            let key = if count[e.display_name.as_str()] > 1 {
                format!("{} ({})", e.display_name, e.name)
            } else {
                e.display_name.clone()
            };
            (key, e.image_digest_ref.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobPlan, JobStatus};
    use crate::spec::CatalogSettings;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn record(name: &str) -> SpecRecord {
        SpecRecord {
            name: name.into(),
            path: format!("specs/{name}.yaml"),
            revision: 2,
            content_key: "sha256:x".into(),
            valid: true,
            deleted: false,
            latest_job: Some(7),
            latest_status: Some(JobStatus::Succeeded),
            latest_image: Some(format!("127.0.0.1:5000/{name}:r2-abcdef0")),
            latest_image_job: Some(7),
            updated_at: 0,
        }
    }

    fn job(name: &str) -> Job {
        Job {
            id: 7,
            spec: name.into(),
            revision: 2,
            commit: "a".repeat(40),
            digest: "sha256:spec".into(),
            plan: JobPlan::Build,
            status: JobStatus::Succeeded,
            image: Some(format!("127.0.0.1:5000/{name}:r2-abcdef0")),
            image_digest: Some(DIGEST.into()),
            created_at: 0,
            updated_at: 0,
            started_at: Some(0),
            finished_at: Some(1_795_448_374),
            error: None,
            reused_from: None,
            attempts: 1,
            pushed: vec![format!("127.0.0.1:5000/{name}:r2-abcdef0")],
            dockerfile: String::new(),
        }
    }

    #[test]
    fn an_entry_is_pinned_by_the_pushed_digest_beside_the_tag() {
        let (spec, job) = (record("py"), job("py"));
        let listing = Listing {
            display_name: Some("Python 3".into()),
            description: Some("for notebooks".into()),
            catalog: CatalogSettings {
                hidden: false,
                groups: vec!["physics".into()],
                default: true,
            },
        };
        let e = entry(&Source {
            spec: &spec,
            listing: Some(&listing),
            job: Some(&job),
            pushed_digest: Some(DIGEST),
            size: Some(123),
        })
        .unwrap();
        assert_eq!(e.image, "127.0.0.1:5000/py:r2-abcdef0");
        assert_eq!(e.image_digest_ref, format!("127.0.0.1:5000/py@{DIGEST}"));
        assert_eq!(e.display_name, "Python 3");
        assert_eq!(e.built_at.as_deref(), Some("2026-11-23T15:39:34Z"));
        assert_eq!((e.revision, e.size, e.default), (2, Some(123), true));
        assert_eq!(e.groups, ["physics"]);
    }

    #[test]
    fn hidden_deleted_and_unpushed_specs_are_not_listed() {
        let job = job("a");
        let mut deleted = record("a");
        deleted.deleted = true;
        let hidden = Listing {
            catalog: CatalogSettings {
                hidden: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let live = record("a");
        let mut local = job.clone();
        local.pushed.clear();
        let mut failed = job.clone();
        failed.status = JobStatus::Failed;
        let cases: [(&SpecRecord, Option<&Listing>, Option<&Job>); 5] = [
            (&deleted, None, Some(&job)),
            (&live, Some(&hidden), Some(&job)),
            (&live, None, None),
            (&live, None, Some(&local)),
            (&live, None, Some(&failed)),
        ];
        for (spec, listing, job) in cases {
            let source = Source {
                spec,
                listing,
                job,
                pushed_digest: Some(DIGEST),
                size: None,
            };
            assert_eq!(entry(&source), None);
        }
        // Without a listing the name is the display name.
        let e = entry(&Source {
            spec: &live,
            listing: None,
            job: Some(&job),
            pushed_digest: Some(DIGEST),
            size: None,
        })
        .unwrap();
        // Without a digest from a push (a local image id on the job) it is not listed.
        let unpinned = Source {
            spec: &live,
            listing: None,
            job: Some(&job),
            pushed_digest: None,
            size: None,
        };
        assert_eq!(entry(&unpinned), None);
        assert_eq!(e.display_name, "a");
    }

    #[test]
    fn listings_in_words() {
        let mut l = Listing::default();
        assert_eq!(listed_as(&l), "listed");
        l.catalog.default = true;
        l.catalog.groups = vec!["a".into(), "b".into()];
        assert_eq!(listed_as(&l), "listed, the default, for groups a, b");
        l.catalog.hidden = true;
        assert_eq!(listed_as(&l), "hidden (built, not listed)");
    }

    #[test]
    fn registry_ports_are_not_tags() {
        assert_eq!(repository_of("127.0.0.1:5000/a:r1-x"), "127.0.0.1:5000/a");
        assert_eq!(repository_of("127.0.0.1:5000/a"), "127.0.0.1:5000/a");
        assert_eq!(repository_of("kiln/a:r1"), "kiln/a");
    }

    #[test]
    fn spawner_shapes() {
        let (sa, sb, sc) = (record("a"), record("b"), record("c"));
        let (ja, jb, jc) = (job("a"), job("b"), job("c"));
        let same = Listing {
            display_name: Some("Same".into()),
            catalog: CatalogSettings {
                default: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let sources = [
            Source {
                spec: &sa,
                listing: Some(&same),
                job: Some(&ja),
                pushed_digest: Some(DIGEST),
                size: None,
            },
            Source {
                spec: &sb,
                listing: Some(&same),
                job: Some(&jb),
                pushed_digest: Some(DIGEST),
                size: None,
            },
            Source {
                spec: &sc,
                listing: None,
                job: Some(&jc),
                pushed_digest: Some(DIGEST),
                size: None,
            },
        ];
        let list = entries(&sources);
        let profiles = kubespawner(&list);
        assert_eq!(profiles.len(), 3);
        assert_eq!(
            profiles.iter().map(|p| p.default).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert_eq!(profiles[2].slug, "c");
        assert_eq!(
            profiles[2].kubespawner_override.image,
            format!("127.0.0.1:5000/c@{DIGEST}")
        );
        let allowed = dockerspawner(&list);
        assert_eq!(
            allowed.keys().collect::<Vec<_>>(),
            ["Same (a)", "Same (b)", "c"]
        );
    }
}
