//! The reconcile step: what the observed history means for Kiln's records.
//!
//! `reconcile` is a plain function of what is stored (a read-only [`StateView`]) and what was
//! observed in git (one [`ObservedStep`] per first-parent commit, each listing the files that
//! claim the names it touched). It returns a [`Plan`] — revisions to record, spec records to
//! write, jobs to create and jobs to cancel — and does no I/O, so every rule of docs/design.md §3 is
//! unit-tested here without git, sled or Docker:
//!
//! * a revision is a commit at which a spec's *content key* changed: the canonical digest when
//!   valid, a hash of the raw file(s) when invalid (so comment-only edits make no revision);
//! * a deleted file marks the spec deleted; re-creating it continues its revision numbers;
//! * two files with one name make that spec invalid, with an error on each file;
//! * each valid new revision gets a job; when one pass brings several revisions of a spec only
//!   the newest is built, the others are recorded `cancelled` ("superseded by rN"), and older
//!   queued or running jobs of the spec are cancelled the same way;
//! * a digest this spec already built successfully is planned as a re-use of that image.

use crate::dockerfile::{self, RenderOptions, RevisionInfo};
use crate::model::{CommitMeta, JobId, JobPlan, Revision, SpecRecord, rfc3339};
use crate::spec::{self, ParsedSpec, SpecContext};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What reconcile may read from the store.
///
/// Reads are fallible: a record that cannot be read must stop the pass (nothing is applied,
/// the next pass tries again), never count as "nothing stored" — that would renumber a
/// spec's revisions or forget its running jobs.
pub trait StateView {
    /// Why a read failed (`std::convert::Infallible` for an in-memory view).
    type Error;
    /// The stored record of a spec.
    fn spec(&self, name: &str) -> Result<Option<SpecRecord>, Self::Error>;
    /// Queued or running jobs of a spec, as (job id, revision number).
    fn active_jobs(&self, name: &str) -> Result<Vec<(JobId, u64)>, Self::Error>;
    /// A job of this spec that produced an image for this digest.
    fn built_job(&self, name: &str, digest: &str) -> Result<Option<JobId>, Self::Error>;
}

/// A file that claims a spec name (its stem) at one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedFile {
    pub path: String,
    pub bytes: Vec<u8>,
    /// `Some(why)` for an entry Kiln will not read (a symlink, a submodule): `bytes` is then
    /// empty and the file is an `unreadable-file` error; `why` completes "the file …".
    pub unreadable: Option<String>,
}

/// Every file claiming `name` at one commit. No files: the spec is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub name: String,
    pub files: Vec<ObservedFile>,
}

/// One first-parent commit (or one rewrite step) and the names it touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedStep {
    pub commit: CommitMeta,
    pub specs: Vec<Observation>,
}

/// Settings that shape the plan.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub spec_context: SpecContext,
    /// Repository URL for the `org.opencontainers.image.source` label.
    pub source_url: String,
    /// Whether builds get a CA bundle: the Dockerfile is rendered here once, with it.
    pub ca_bundle: bool,
}

/// A job to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub spec: String,
    pub revision: u64,
    pub commit: String,
    pub digest: String,
    pub plan: JobPlan,
    pub dockerfile: String,
    /// `Some(reason)`: recorded as cancelled right away (superseded within this pass).
    pub cancelled: Option<String>,
}

/// A queued or running job to cancel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancellation {
    pub job: JobId,
    pub reason: String,
}

/// Everything one reconcile pass decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub revisions: Vec<Revision>,
    /// Final record of every spec the pass touched (`latest_job` is filled in by the store,
    /// which assigns job ids).
    pub specs: BTreeMap<String, SpecRecord>,
    /// The files claiming each touched name after the pass (the store's path index).
    pub spec_paths: BTreeMap<String, Vec<String>>,
    pub jobs: Vec<NewJob>,
    pub cancellations: Vec<Cancellation>,
    /// Catalogue listing of every valid spec observed, also when its digest is unchanged
    /// (`displayName`, `catalog:` and `description` are outside the digest).
    pub listings: BTreeMap<String, crate::store::listings::Listing>,
    /// Why revisions that are not plain commits exist (base updates, `base/revision.rs`),
    /// written in the same transaction as the revisions.
    pub causes: Vec<(String, u64, crate::store::base_digests::RevisionCause)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
            && self.specs.is_empty()
            && self.jobs.is_empty()
            && self.cancellations.is_empty()
        // `listings` left out: re-observing a file restates its listing, which changes nothing.
    }
}

/// The name a file claims: its stem (the validator requires `name` to equal it, and names are
/// immutable, so the stem is the spec's identity even when the file is invalid).
pub fn name_of_path(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    let stem = file
        .strip_suffix(".yaml")
        .or_else(|| file.strip_suffix(".yml"))?;
    (!stem.is_empty()).then_some(stem)
}

/// Decide what `steps` mean given what is stored. Fails only when the view cannot be read.
pub fn reconcile<V: StateView>(
    view: &V,
    steps: &[ObservedStep],
    settings: &Settings,
) -> Result<Plan, V::Error> {
    let mut plan = Plan::default();
    for step in steps {
        for observation in &step.specs {
            observe(view, &mut plan, &step.commit, observation, settings)?;
        }
    }
    supersede(view, &mut plan)?;
    Ok(plan)
}

fn observe<V: StateView>(
    view: &V,
    plan: &mut Plan,
    commit: &CommitMeta,
    obs: &Observation,
    settings: &Settings,
) -> Result<(), V::Error> {
    let current = match plan.specs.get(&obs.name) {
        Some(record) => Some(record.clone()),
        None => view.spec(&obs.name)?,
    };
    let mut paths: Vec<String> = obs.files.iter().map(|f| f.path.clone()).collect();
    paths.sort();
    plan.spec_paths.insert(obs.name.clone(), paths);

    if obs.files.is_empty() {
        if let Some(mut record) = current.filter(|r| !r.deleted) {
            record.deleted = true;
            record.updated_at = commit.committed_at;
            let reason = format!("spec deleted in {}", commit.short());
            cancel_active(view, plan, &obs.name, &reason)?;
            plan.specs.insert(obs.name.clone(), record);
        }
        return Ok(());
    }

    let (parsed, content_key, primary) = evaluate(obs, &settings.spec_context);
    if let [only] = parsed.as_slice()
        && let Some(valid) = &only.spec
    {
        let listing = crate::store::listings::Listing::of(valid);
        plan.listings.insert(obs.name.clone(), listing);
    }
    let unchanged = current
        .as_ref()
        .is_some_and(|r| !r.deleted && r.content_key == content_key);
    if unchanged {
        // Same meaning (e.g. a comment edit or a move within the folder): only the path may change.
        if let Some(mut record) = current.filter(|r| r.path != primary.path) {
            record.path = primary.path.clone();
            plan.specs.insert(obs.name.clone(), record);
        }
        return Ok(());
    }

    let number = current.as_ref().map_or(1, |r| r.revision + 1);
    let errors: Vec<spec::Diagnostic> = parsed
        .iter()
        .flat_map(|p| p.diagnostics.iter().cloned())
        .collect();
    let valid_spec = if parsed.len() == 1 {
        parsed[0].spec.clone().zip(parsed[0].digest.clone())
    } else {
        None
    };
    plan.revisions.push(Revision {
        spec: obs.name.clone(),
        number,
        commit: commit.clone(),
        path: primary.path.clone(),
        digest: valid_spec.as_ref().map(|(_, d)| d.clone()),
        errors,
        yaml: String::from_utf8_lossy(&primary.bytes).into_owned(),
    });
    let record = SpecRecord {
        name: obs.name.clone(),
        path: primary.path.clone(),
        revision: number,
        content_key,
        valid: valid_spec.is_some(),
        deleted: false,
        latest_job: current.as_ref().and_then(|r| r.latest_job),
        latest_status: current.as_ref().and_then(|r| r.latest_status),
        latest_image: current.as_ref().and_then(|r| r.latest_image.clone()),
        latest_image_job: current.as_ref().and_then(|r| r.latest_image_job),
        updated_at: commit.committed_at,
    };
    plan.specs.insert(obs.name.clone(), record);

    if let Some((spec, digest)) = valid_spec {
        let job_plan = match view.built_job(&obs.name, &digest)? {
            Some(from) => JobPlan::Reuse { from },
            None => JobPlan::Build,
        };
        let info = RevisionInfo {
            commit: commit.sha.clone(),
            source: settings.source_url.clone(),
            created: rfc3339(commit.committed_at),
            revision: number,
            digest: digest.clone(),
        };
        // Rendered once, here; the worker builds this text and only restores the base image's
        // own USER at the end once it has inspected the base.
        let options = RenderOptions {
            base_user: None,
            ca_bundle: settings.ca_bundle,
            sources: settings.spec_context.sources.clone().unwrap_or_default(),
        };
        let dockerfile = dockerfile::render(&spec, &info, &options);
        plan.jobs.push(NewJob {
            spec: obs.name.clone(),
            revision: number,
            commit: commit.sha.clone(),
            digest,
            plan: job_plan,
            dockerfile,
            cancelled: None,
        });
    }
    Ok(())
}

/// Parse the files claiming one name; return them, the content key and the primary file.
fn evaluate<'o>(
    obs: &'o Observation,
    ctx: &SpecContext,
) -> (Vec<ParsedSpec>, String, &'o ObservedFile) {
    let mut files: Vec<&ObservedFile> = obs.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let primary = files[0];
    let mut parsed: Vec<ParsedSpec> = files
        .iter()
        .map(|f| match &f.unreadable {
            Some(why) => spec::unreadable_spec(&f.path, why),
            None => spec::parse_spec(&f.path, &f.bytes, ctx),
        })
        .collect();
    if parsed.len() > 1 {
        spec::check_duplicate_names(&mut parsed);
        // Files whose `name` could not be read still collide by file name.
        for p in parsed.iter_mut().filter(|p| p.is_valid()) {
            p.diagnostics.push(spec::Diagnostic {
                path: p.path.clone(),
                line: 1,
                column: 1,
                rule: spec::Rule::DuplicateName,
                message: format!("another file also defines spec `{}`", obs.name),
            });
            p.spec = None;
            p.digest = None;
        }
    }
    let content_key = match (parsed.len(), parsed.first().and_then(|p| p.digest.clone())) {
        (1, Some(digest)) => digest,
        _ => {
            let mut hasher = Sha256::new();
            for f in &files {
                hasher.update(f.path.as_bytes());
                hasher.update([0]);
                hasher.update(&f.bytes);
                hasher.update([0]);
                if let Some(why) = &f.unreadable {
                    hasher.update(why.as_bytes());
                    hasher.update([0]);
                }
            }
            format!("invalid:{}", hex::encode(hasher.finalize()))
        }
    };
    (parsed, content_key, primary)
}

fn cancel_active<V: StateView>(
    view: &V,
    plan: &mut Plan,
    name: &str,
    reason: &str,
) -> Result<(), V::Error> {
    for (job, _) in view.active_jobs(name)? {
        if !plan.cancellations.iter().any(|c| c.job == job) {
            plan.cancellations.push(Cancellation {
                job,
                reason: reason.to_string(),
            });
        }
    }
    for job in plan
        .jobs
        .iter_mut()
        .filter(|j| j.spec == name && j.cancelled.is_none())
    {
        job.cancelled = Some(reason.to_string());
    }
    Ok(())
}

/// Newest revision wins: every other planned or active job of the same spec is cancelled.
fn supersede<V: StateView>(view: &V, plan: &mut Plan) -> Result<(), V::Error> {
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    for job in plan.jobs.iter().filter(|j| j.cancelled.is_none()) {
        newest.insert(job.spec.clone(), job.revision);
    }
    for (name, revision) in &newest {
        let reason = format!("superseded by r{revision}");
        for job in plan
            .jobs
            .iter_mut()
            .filter(|j| &j.spec == name && j.revision != *revision && j.cancelled.is_none())
        {
            job.cancelled = Some(reason.clone());
        }
        for (job, _) in view.active_jobs(name)? {
            if !plan.cancellations.iter().any(|c| c.job == job) {
                plan.cancellations.push(Cancellation {
                    job,
                    reason: reason.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Rule;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Memory {
        specs: HashMap<String, SpecRecord>,
        active: HashMap<String, Vec<(JobId, u64)>>,
        built: HashMap<(String, String), JobId>,
    }

    impl StateView for Memory {
        type Error = std::convert::Infallible;
        fn spec(&self, name: &str) -> Result<Option<SpecRecord>, Self::Error> {
            Ok(self.specs.get(name).cloned())
        }
        fn active_jobs(&self, name: &str) -> Result<Vec<(JobId, u64)>, Self::Error> {
            Ok(self.active.get(name).cloned().unwrap_or_default())
        }
        fn built_job(&self, name: &str, digest: &str) -> Result<Option<JobId>, Self::Error> {
            Ok(self
                .built
                .get(&(name.to_string(), digest.to_string()))
                .copied())
        }
    }

    /// `reconcile` over a view that cannot fail.
    fn plan_of(view: &Memory, steps: &[ObservedStep], settings: &Settings) -> Plan {
        match reconcile(view, steps, settings) {
            Ok(plan) => plan,
            Err(never) => match never {},
        }
    }

    impl Memory {
        /// Apply a plan the way the store does, minus job ids.
        fn apply(&mut self, plan: &Plan) {
            for (name, record) in &plan.specs {
                self.specs.insert(name.clone(), record.clone());
            }
        }
    }

    fn commit(n: u8) -> CommitMeta {
        CommitMeta {
            sha: format!("{n:02x}").repeat(20),
            author: "A <a@x>".into(),
            committed_at: 1_700_000_000 + i64::from(n),
            subject: format!("commit {n}"),
        }
    }

    fn spec_yaml(name: &str, apt: &[&str]) -> Vec<u8> {
        format!(
            "name: {name}\nbaseImage: debian:bookworm\npackages:\n  apt: [{}]\n",
            apt.join(", ")
        )
        .into_bytes()
    }

    fn file(name: &str, bytes: Vec<u8>) -> Observation {
        Observation {
            name: name.into(),
            files: vec![ObservedFile {
                path: format!("specs/{name}.yaml"),
                bytes,
                unreadable: None,
            }],
        }
    }

    fn gone(name: &str) -> Observation {
        Observation {
            name: name.into(),
            files: vec![],
        }
    }

    fn step(n: u8, specs: Vec<Observation>) -> ObservedStep {
        ObservedStep {
            commit: commit(n),
            specs,
        }
    }

    #[test]
    fn new_specs_get_revision_one_and_a_build() {
        let plan = plan_of(
            &Memory::default(),
            &[step(
                1,
                vec![
                    file("a", spec_yaml("a", &["curl"])),
                    file("b", spec_yaml("b", &["jq"])),
                ],
            )],
            &Settings::default(),
        );
        assert_eq!(
            plan.revisions
                .iter()
                .map(|r| (r.spec.as_str(), r.number))
                .collect::<Vec<_>>(),
            vec![("a", 1), ("b", 1)]
        );
        assert_eq!(plan.jobs.len(), 2);
        assert!(
            plan.jobs
                .iter()
                .all(|j| j.plan == JobPlan::Build && j.cancelled.is_none())
        );
        assert!(plan.jobs[0].dockerfile.contains("FROM debian:bookworm"));
        assert!(plan.specs["a"].valid && !plan.specs["a"].deleted);
    }

    #[test]
    fn comment_only_edit_makes_no_revision() {
        let mut state = Memory::default();
        let plan = plan_of(
            &state,
            &[step(1, vec![file("a", spec_yaml("a", &["curl", "jq"]))])],
            &Settings::default(),
        );
        state.apply(&plan);
        let edited = b"# comment\nname: a\nbaseImage: debian:bookworm\npackages:\n  apt: |\n    jq\n    curl  # why\n".to_vec();
        let plan = plan_of(
            &state,
            &[step(2, vec![file("a", edited)])],
            &Settings::default(),
        );
        assert!(
            plan.revisions.is_empty() && plan.jobs.is_empty(),
            "{plan:#?}"
        );
    }

    #[test]
    fn several_revisions_in_one_pass_build_only_the_newest() {
        let mut state = Memory::default();
        state.active.insert("a".into(), vec![(7, 1)]);
        state.specs.insert(
            "a".into(),
            plan_of(
                &Memory::default(),
                &[step(1, vec![file("a", spec_yaml("a", &["curl"]))])],
                &Settings::default(),
            )
            .specs["a"]
                .clone(),
        );
        let steps = [
            step(2, vec![file("a", spec_yaml("a", &["jq"]))]),
            step(3, vec![file("a", spec_yaml("a", &["git"]))]),
            step(4, vec![file("a", spec_yaml("a", &["less"]))]),
        ];
        let plan = plan_of(&state, &steps, &Settings::default());
        let jobs: Vec<_> = plan
            .jobs
            .iter()
            .map(|j| (j.revision, j.cancelled.clone()))
            .collect();
        assert_eq!(
            jobs,
            vec![
                (2, Some("superseded by r4".into())),
                (3, Some("superseded by r4".into())),
                (4, None)
            ]
        );
        assert_eq!(
            plan.cancellations,
            vec![Cancellation {
                job: 7,
                reason: "superseded by r4".into()
            }]
        );
        assert_eq!(plan.specs["a"].revision, 4);
    }

    #[test]
    fn delete_and_recreate_continue_numbering_and_reuse() {
        let mut state = Memory::default();
        let plan = plan_of(
            &state,
            &[step(1, vec![file("a", spec_yaml("a", &["curl"]))])],
            &Settings::default(),
        );
        state.apply(&plan);
        let digest = plan.jobs[0].digest.clone();
        state.built.insert(("a".into(), digest.clone()), 1);
        state.active.insert("a".into(), vec![(3, 1)]);

        let plan = plan_of(&state, &[step(2, vec![gone("a")])], &Settings::default());
        assert!(plan.specs["a"].deleted);
        assert_eq!(
            plan.cancellations[0].reason,
            format!("spec deleted in {}", commit(2).short())
        );
        state.apply(&plan);
        state.active.clear();

        let plan = plan_of(
            &state,
            &[step(3, vec![file("a", spec_yaml("a", &["curl"]))])],
            &Settings::default(),
        );
        assert_eq!(plan.revisions[0].number, 2);
        assert_eq!(plan.jobs[0].plan, JobPlan::Reuse { from: 1 });
        assert!(!plan.specs["a"].deleted);
    }

    #[test]
    fn invalid_revision_keeps_last_image_and_others_unaffected() {
        let mut state = Memory::default();
        let plan = plan_of(
            &state,
            &[step(
                1,
                vec![
                    file("a", spec_yaml("a", &["curl"])),
                    file("b", spec_yaml("b", &["jq"])),
                ],
            )],
            &Settings::default(),
        );
        state.apply(&plan);
        state.specs.get_mut("a").unwrap().latest_image = Some("reg/a:r1".into());
        let plan = plan_of(
            &state,
            &[step(
                2,
                vec![
                    file("a", spec_yaml("a", &["curl wget"])),
                    file("b", spec_yaml("b", &["jq", "git"])),
                ],
            )],
            &Settings::default(),
        );
        let a = plan.revisions.iter().find(|r| r.spec == "a").unwrap();
        assert!(!a.valid());
        assert_eq!(a.errors[0].rule, Rule::OnePackagePerLine);
        assert_eq!(plan.specs["a"].latest_image.as_deref(), Some("reg/a:r1"));
        assert!(!plan.specs["a"].valid);
        assert_eq!(
            plan.jobs
                .iter()
                .map(|j| j.spec.as_str())
                .collect::<Vec<_>>(),
            vec!["b"]
        );
        // The same invalid file again is no new revision.
        state.apply(&plan);
        let again = plan_of(
            &state,
            &[step(3, vec![file("a", spec_yaml("a", &["curl wget"]))])],
            &Settings::default(),
        );
        assert!(again.revisions.is_empty());
    }

    #[test]
    fn duplicate_names_are_invalid_on_both_files() {
        let obs = Observation {
            name: "a".into(),
            files: vec![
                ObservedFile {
                    path: "x/a.yaml".into(),
                    bytes: spec_yaml("a", &["curl"]),
                    unreadable: None,
                },
                ObservedFile {
                    path: "y/a.yml".into(),
                    bytes: spec_yaml("a", &["jq"]),
                    unreadable: None,
                },
            ],
        };
        let plan = plan_of(
            &Memory::default(),
            &[step(1, vec![obs])],
            &Settings::default(),
        );
        let rev = &plan.revisions[0];
        assert!(!rev.valid());
        let paths: Vec<_> = rev
            .errors
            .iter()
            .filter(|d| d.rule == Rule::DuplicateName)
            .map(|d| d.path.as_str())
            .collect();
        assert_eq!(paths, vec!["x/a.yaml", "y/a.yml"]);
        assert!(plan.jobs.is_empty());
        assert_eq!(plan.spec_paths["a"], vec!["x/a.yaml", "y/a.yml"]);
    }

    #[test]
    fn revert_to_built_content_is_a_reuse() {
        let mut state = Memory::default();
        let p1 = plan_of(
            &state,
            &[step(1, vec![file("a", spec_yaml("a", &["curl"]))])],
            &Settings::default(),
        );
        state.apply(&p1);
        state
            .built
            .insert(("a".into(), p1.jobs[0].digest.clone()), 1);
        let p2 = plan_of(
            &state,
            &[step(2, vec![file("a", spec_yaml("a", &["jq"]))])],
            &Settings::default(),
        );
        state.apply(&p2);
        let p3 = plan_of(
            &state,
            &[step(3, vec![file("a", spec_yaml("a", &["curl"]))])],
            &Settings::default(),
        );
        assert_eq!(p3.revisions[0].number, 3);
        assert_eq!(p3.jobs[0].plan, JobPlan::Reuse { from: 1 });
    }

    #[test]
    fn reconcile_is_idempotent_over_the_same_observation() {
        let mut state = Memory::default();
        let steps = [step(1, vec![file("a", spec_yaml("a", &["curl"]))])];
        state.apply(&plan_of(&state, &steps, &Settings::default()));
        let again = plan_of(&state, &steps, &Settings::default());
        assert!(again.revisions.is_empty() && again.jobs.is_empty());
    }

    #[test]
    fn names_of_paths() {
        assert_eq!(name_of_path("specs/a.b.yaml"), Some("a.b"));
        assert_eq!(name_of_path("x.yml"), Some("x"));
        assert_eq!(name_of_path("README.md"), None);
        assert_eq!(name_of_path("dir/.yaml"), None);
    }
}
