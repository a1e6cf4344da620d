//! Base updates become revisions on the same path as commits: the sync pass adds them to the
//! reconcile [`Plan`] it is about to apply, in the same transaction and under the same
//! "last processed commit", so they are numbered, stored and queued like any revision.
//!
//! A base-update revision is the spec's current revision again — same commit, same file,
//! same digest — with the next number, and a job that builds (never re-uses: the digest is
//! the one already built, on the old base). Its cause goes to `revision_causes`, in the same
//! transaction (`Plan::causes`).
//!
//! Skipped (the check will look again): a spec the same pass gives a commit revision (one
//! job, the commit's — its build pulls the new base anyway), a spec whose current revision is
//! no longer the one the check saw, a deleted or invalid spec, a spec with a queued or running
//! job.

use crate::dockerfile::{self, RenderOptions, RevisionInfo};
use crate::model::{JobPlan, Revision, rfc3339};
use crate::reconcile::{NewJob, Plan, Settings, StateView};
use crate::store::base_digests::RevisionCause;

/// A spec whose base tag moved, as the check found it.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseUpdate {
    /// The spec's current revision when the check ran.
    pub revision: Revision,
    pub from: String,
    pub to: String,
}

/// Add a revision, its cause and a build job to `plan` for every update that still applies;
/// returns how many were added.
pub fn add<V: StateView>(
    view: &V,
    plan: &mut Plan,
    updates: &[BaseUpdate],
    settings: &Settings,
) -> Result<usize, V::Error> {
    let mut added = 0;
    for update in updates {
        let name = &update.revision.spec;
        if plan.revisions.iter().any(|r| &r.spec == name) {
            continue;
        }
        let Some(mut record) = (match plan.specs.get(name) {
            Some(r) => Some(r.clone()),
            None => view.spec(name)?,
        }) else {
            continue;
        };
        if record.deleted || !record.valid || record.revision != update.revision.number {
            continue;
        }
        if !view.active_jobs(name)?.is_empty() {
            continue;
        }
        let parsed = crate::spec::parse_spec(
            &update.revision.path,
            update.revision.yaml.as_bytes(),
            &settings.spec_context,
        );
        let (Some(spec), Some(digest)) = (parsed.spec, parsed.digest) else {
            continue;
        };
        let number = record.revision + 1;
        let mut revision = update.revision.clone();
        revision.number = number;
        revision.digest = Some(digest.clone());
        let info = RevisionInfo {
            commit: revision.commit.sha.clone(),
            source: settings.source_url.clone(),
            created: rfc3339(crate::model::now()),
            revision: number,
            digest: digest.clone(),
        };
        let options = RenderOptions {
            base_user: None,
            ca_bundle: settings.ca_bundle,
            sources: settings.spec_context.sources.clone().unwrap_or_default(),
        };
        plan.jobs.push(NewJob {
            spec: name.clone(),
            revision: number,
            commit: revision.commit.sha.clone(),
            digest,
            plan: JobPlan::Build,
            dockerfile: dockerfile::render(&spec, &info, &options),
            cancelled: None,
        });
        plan.revisions.push(revision);
        record.revision = number;
        record.updated_at = crate::model::now();
        plan.specs.insert(name.clone(), record);
        plan.causes.push((
            name.clone(),
            number,
            RevisionCause::BaseUpdate {
                from: update.from.clone(),
                to: update.to.clone(),
            },
        ));
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CommitMeta, JobId, SpecRecord};
    use crate::reconcile::{Observation, ObservedFile, ObservedStep, reconcile};
    use std::collections::HashMap;

    #[derive(Default)]
    struct Memory {
        specs: HashMap<String, SpecRecord>,
        active: HashMap<String, Vec<(JobId, u64)>>,
    }

    impl StateView for Memory {
        type Error = std::convert::Infallible;
        fn spec(&self, name: &str) -> Result<Option<SpecRecord>, Self::Error> {
            Ok(self.specs.get(name).cloned())
        }
        fn active_jobs(&self, name: &str) -> Result<Vec<(JobId, u64)>, Self::Error> {
            Ok(self.active.get(name).cloned().unwrap_or_default())
        }
        fn built_job(&self, _: &str, _: &str) -> Result<Option<JobId>, Self::Error> {
            Ok(Some(1))
        }
    }

    fn ok<T>(r: Result<T, std::convert::Infallible>) -> T {
        match r {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }

    fn commit(n: u8) -> CommitMeta {
        CommitMeta {
            sha: format!("{n:02x}").repeat(20),
            author: "A".into(),
            committed_at: 1_700_000_000,
            subject: "c".into(),
        }
    }

    fn yaml(name: &str, apt: &str) -> String {
        format!("name: {name}\nbaseImage: r.io/b:1\npackages:\n  apt: [{apt}]\n")
    }

    /// A view holding `name` at revision 1 (built), and the update the check would send.
    fn stored(view: &mut Memory, name: &str) -> BaseUpdate {
        let steps = [ObservedStep {
            commit: commit(1),
            specs: vec![Observation {
                name: name.into(),
                files: vec![ObservedFile {
                    path: format!("specs/{name}.yaml"),
                    bytes: yaml(name, "curl").into_bytes(),
                    unreadable: None,
                }],
            }],
        }];
        let plan = ok(reconcile(&*view, &steps, &Settings::default()));
        view.specs.extend(plan.specs.clone());
        BaseUpdate {
            revision: plan.revisions[0].clone(),
            from: "sha256:a".into(),
            to: "sha256:b".into(),
        }
    }

    #[test]
    fn a_base_update_is_the_same_commit_with_the_next_number_and_a_build() {
        let mut view = Memory::default();
        let update = stored(&mut view, "one");
        let mut plan = Plan::default();
        assert_eq!(
            ok(add(&view, &mut plan, &[update], &Settings::default())),
            1
        );
        let causes = plan.causes.clone();
        assert_eq!(plan.revisions.len(), 1);
        let rev = &plan.revisions[0];
        assert_eq!(
            (rev.number, rev.commit.sha.as_str()),
            (2, commit(1).sha.as_str())
        );
        assert_eq!(plan.specs["one"].revision, 2);
        assert_eq!(plan.jobs.len(), 1);
        assert_eq!(
            plan.jobs[0].plan,
            JobPlan::Build,
            "never a re-use of the old base"
        );
        assert!(plan.jobs[0].dockerfile.contains("FROM r.io/b:1"));
        assert_eq!(
            causes,
            vec![(
                "one".to_string(),
                2,
                RevisionCause::BaseUpdate {
                    from: "sha256:a".into(),
                    to: "sha256:b".into()
                }
            )]
        );
    }

    #[test]
    fn a_commit_in_the_same_pass_wins_and_stale_or_busy_updates_are_dropped() {
        let mut view = Memory::default();
        let update = stored(&mut view, "one");
        let busy = stored(&mut view, "two");
        view.active.insert("two".into(), vec![(9, 1)]);
        let gone = stored(&mut view, "three");
        view.specs.get_mut("three").unwrap().deleted = true;
        let mut stale = stored(&mut view, "four");
        stale.revision.number = 0;
        // The same pass brings a commit of `one`.
        let steps = [ObservedStep {
            commit: commit(2),
            specs: vec![Observation {
                name: "one".into(),
                files: vec![ObservedFile {
                    path: "specs/one.yaml".into(),
                    bytes: yaml("one", "curl, jq").into_bytes(),
                    unreadable: None,
                }],
            }],
        }];
        let mut plan = ok(reconcile(&view, &steps, &Settings::default()));
        let added = ok(add(
            &view,
            &mut plan,
            &[update, busy, gone, stale],
            &Settings::default(),
        ));
        assert_eq!(added, 0);
        assert!(plan.causes.is_empty(), "{:?}", plan.causes);
        assert_eq!(plan.revisions.len(), 1);
        assert_eq!(plan.jobs.len(), 1);
        assert_eq!(plan.jobs[0].commit, commit(2).sha, "the commit's job");
    }
}
