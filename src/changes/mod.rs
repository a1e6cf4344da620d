//! What changed in a job's image since the previous successful build of its spec: packages
//! added, removed and changed (dpkg, pip, conda), and the image size with its change.
//!
//! Why pure: the rules (what counts as the same package, how sizes compare when one side is
//! unknown) are unit tests here, without a store or an Engine. The inputs are what Kiln
//! already records per job: the package listing (`store.installed`, taken in the finished
//! image by `jobs/`) and the image size (`store/image_sizes.rs`, measured after the push by
//! [`record`]). [`candidates`] orders the jobs to compare with; `web/changes.rs` assembles the
//! answer of `GET /api/v1/jobs/{id}/changes`.
//!
//! Package identity: the manager plus the name as the manager spells it, except pip, whose
//! names compare normalized (PEP 503: case-insensitive, runs of `-`, `_`, `.` are one `-`), so
//! a distribution whose metadata changed `Foo_Bar` to `foo-bar` is "changed", not removed and
//! added. A name listed twice by one manager (dpkg lists one version per package; pip's
//! listing keeps the first of a name on `sys.path`) keeps its first entry.

pub mod manifest;
pub mod record;

use crate::model::{InstalledPackage, InstalledPackages, Job, JobStatus};
use crate::store::image_sizes::ImageSize;
use serde::Serialize;
use std::collections::BTreeMap;

/// One package that appeared or disappeared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Package {
    pub manager: &'static str,
    pub name: String,
    pub version: String,
}

/// One package whose version changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub manager: &'static str,
    pub name: String,
    pub from: String,
    pub to: String,
}

/// The package differences, each list sorted by manager (apt, pip, conda) then name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PackageChanges {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<Changed>,
}

/// The image size and its change since the previous build (bytes; a change is `None` when
/// either side is unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SizeChanges {
    pub compressed: Option<u64>,
    pub uncompressed: Option<u64>,
    pub compressed_change: Option<i64>,
    pub uncompressed_change: Option<i64>,
}

/// The managers in listing order, with the field of [`InstalledPackages`] each one fills.
fn managers(p: &InstalledPackages) -> [(&'static str, &[InstalledPackage]); 3] {
    [("apt", &p.apt), ("pip", &p.pip), ("conda", &p.conda)]
}

/// The key a package is matched by across two listings.
fn key(manager: &str, name: &str) -> String {
    if manager != "pip" {
        return name.to_string();
    }
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

fn by_key<'a>(
    manager: &str,
    list: &'a [InstalledPackage],
) -> BTreeMap<String, &'a InstalledPackage> {
    let mut map = BTreeMap::new();
    for p in list {
        map.entry(key(manager, &p.name)).or_insert(p);
    }
    map
}

/// The differences from `previous` to `current`. With no previous listing everything in
/// `current` is added.
pub fn diff(previous: Option<&InstalledPackages>, current: &InstalledPackages) -> PackageChanges {
    let empty = InstalledPackages::default();
    let previous = previous.unwrap_or(&empty);
    let mut out = PackageChanges::default();
    for ((manager, before), (_, after)) in managers(previous).into_iter().zip(managers(current)) {
        let before = by_key(manager, before);
        let after = by_key(manager, after);
        for (k, new) in &after {
            match before.get(k) {
                None => out.added.push(Package {
                    manager,
                    name: new.name.clone(),
                    version: new.version.clone(),
                }),
                Some(old) if old.version != new.version => out.changed.push(Changed {
                    manager,
                    name: new.name.clone(),
                    from: old.version.clone(),
                    to: new.version.clone(),
                }),
                Some(_) => {}
            }
        }
        for (k, old) in &before {
            if !after.contains_key(k) {
                out.removed.push(Package {
                    manager,
                    name: old.name.clone(),
                    version: old.version.clone(),
                });
            }
        }
    }
    out
}

/// `current` with its change since `previous`.
pub fn sizes(previous: Option<&ImageSize>, current: Option<&ImageSize>) -> SizeChanges {
    let change = |now: Option<u64>, before: Option<u64>| -> Option<i64> {
        let (now, before) = (i64::try_from(now?).ok()?, i64::try_from(before?).ok()?);
        now.checked_sub(before)
    };
    let current = current.copied().unwrap_or_default();
    let previous = previous.copied().unwrap_or_default();
    SizeChanges {
        compressed: current.compressed,
        uncompressed: current.uncompressed,
        compressed_change: change(current.compressed, previous.compressed),
        uncompressed_change: change(current.uncompressed, previous.uncompressed),
    }
}

/// Whether a job produced an image that was built or re-used successfully.
pub fn is_successful(job: &Job) -> bool {
    matches!(job.status, JobStatus::Succeeded | JobStatus::Reused)
}

/// The jobs `job` may be compared with, best first: among `jobs`, the successful ones of the
/// same spec created before it (a lower id), newest first. `jobs` may come in any order; the
/// caller takes the first that has a package listing.
pub fn candidates<'a>(job: &Job, jobs: &'a [Job]) -> Vec<&'a Job> {
    let mut out: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.spec == job.spec && j.id < job.id && is_successful(j))
        .collect();
    out.sort_by_key(|j| std::cmp::Reverse(j.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobPlan;

    fn pkgs(list: &[(&str, &str)]) -> Vec<InstalledPackage> {
        list.iter()
            .map(|(n, v)| InstalledPackage {
                name: n.to_string(),
                version: v.to_string(),
            })
            .collect()
    }

    fn listing(
        apt: &[(&str, &str)],
        pip: &[(&str, &str)],
        conda: &[(&str, &str)],
    ) -> InstalledPackages {
        InstalledPackages {
            apt: pkgs(apt),
            pip: pkgs(pip),
            conda: pkgs(conda),
        }
    }

    #[test]
    fn one_added_and_one_bumped_pip_package_are_exactly_the_changes() {
        let before = listing(
            &[("curl", "7.88.1-10+deb12u8")],
            &[("idna", "3.6"), ("pip", "23.0.1")],
            &[],
        );
        let after = listing(
            &[("curl", "7.88.1-10+deb12u8")],
            &[("idna", "3.7"), ("pip", "23.0.1"), ("six", "1.16.0")],
            &[],
        );
        let d = diff(Some(&before), &after);
        assert_eq!(
            d.added,
            vec![Package {
                manager: "pip",
                name: "six".into(),
                version: "1.16.0".into()
            }]
        );
        assert_eq!(
            d.changed,
            vec![Changed {
                manager: "pip",
                name: "idna".into(),
                from: "3.6".into(),
                to: "3.7".into()
            }]
        );
        assert!(d.removed.is_empty());
    }

    #[test]
    fn every_manager_is_compared_on_its_own_and_removals_are_listed() {
        let before = listing(&[("curl", "1"), ("wget", "2")], &[], &[("numpy", "1.17.5")]);
        let after = listing(
            &[("curl", "1")],
            &[("numpy", "1.17.5")],
            &[("numpy", "1.18.0")],
        );
        let d = diff(Some(&before), &after);
        // numpy moving from conda to pip is an addition for pip, a change for conda.
        assert_eq!(d.added.len(), 1);
        assert_eq!(
            (d.added[0].manager, d.added[0].name.as_str()),
            ("pip", "numpy")
        );
        assert_eq!(d.removed.len(), 1);
        assert_eq!(
            (d.removed[0].manager, d.removed[0].name.as_str()),
            ("apt", "wget")
        );
        assert_eq!(d.changed.len(), 1);
        assert_eq!(
            (
                d.changed[0].manager,
                d.changed[0].from.as_str(),
                d.changed[0].to.as_str()
            ),
            ("conda", "1.17.5", "1.18.0")
        );
    }

    #[test]
    fn pip_names_match_normalized_but_dpkg_names_exactly() {
        let before = listing(&[("libfoo", "1")], &[("Foo_Bar", "1.0")], &[]);
        let after = listing(&[("LibFoo", "1")], &[("foo-bar", "1.1")], &[]);
        let d = diff(Some(&before), &after);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(
            (d.changed[0].name.as_str(), d.changed[0].to.as_str()),
            ("foo-bar", "1.1")
        );
        assert_eq!(key("pip", "A.._b"), "a-b");
        // dpkg names are case-sensitive identifiers: a different spelling is another package.
        assert_eq!((d.added.len(), d.removed.len()), (1, 1));
    }

    #[test]
    fn without_a_previous_build_everything_is_added_and_duplicates_count_once() {
        let now = listing(&[], &[("six", "1.16.0"), ("six", "1.15.0")], &[]);
        let d = diff(None, &now);
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].version, "1.16.0");
        assert!(diff(Some(&now), &now) == PackageChanges::default());
    }

    #[test]
    fn size_changes_are_differences_and_unknown_when_a_side_is_unknown() {
        let before = ImageSize {
            compressed: Some(1000),
            uncompressed: None,
        };
        let after = ImageSize {
            compressed: Some(900),
            uncompressed: Some(5000),
        };
        let s = sizes(Some(&before), Some(&after));
        assert_eq!(s.compressed, Some(900));
        assert_eq!(s.compressed_change, Some(-100));
        assert_eq!(s.uncompressed, Some(5000));
        assert_eq!(s.uncompressed_change, None);
        assert_eq!(sizes(None, Some(&after)).compressed_change, None);
        assert_eq!(sizes(Some(&before), None), SizeChanges::default());
    }

    fn job(id: u64, spec: &str, status: JobStatus) -> Job {
        Job {
            id,
            spec: spec.into(),
            revision: id,
            commit: "c".into(),
            digest: "d".into(),
            plan: JobPlan::Build,
            status,
            image: None,
            image_digest: None,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            error: None,
            reused_from: None,
            attempts: 1,
            pushed: vec![],
            dockerfile: String::new(),
        }
    }

    #[test]
    fn the_previous_build_is_the_newest_earlier_success_of_the_same_spec() {
        let jobs = vec![
            job(5, "a", JobStatus::Failed),
            job(4, "b", JobStatus::Succeeded),
            job(3, "a", JobStatus::Reused),
            job(2, "a", JobStatus::Succeeded),
            job(6, "a", JobStatus::Succeeded),
        ];
        let current = job(5, "a", JobStatus::Succeeded);
        let ids: Vec<u64> = candidates(&current, &jobs).iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![3, 2]);
        assert!(candidates(&job(2, "a", JobStatus::Succeeded), &jobs).is_empty());
    }
}
