//! One base check pass as a plain function of its inputs: which registry requests to make,
//! and what their answers mean for each spec. No I/O, so every decision is a unit test.
//!
//! * A spec is looked at when it is live and valid and has a successful build whose base
//!   digest was recorded; the base is the reference that build's Dockerfile names.
//! * One request per distinct (normalised base reference, pull secret): however many specs
//!   share `python:3.11-slim`, the registry is asked once. (The pull secret is part of the key:
//!   what a registry answers may depend on who asks.)
//! * A base given by digest never moves: never requested, never outdated.
//! * A spec with a queued or running job is left alone: that build pulls the base anew.
//! * Tag moved: the spec is outdated since the first check that saw it; with
//!   `rebuildOnBaseUpdate` (the default) it also gets a base-update revision — once per new
//!   digest (a failed base-update build is not retried on every pass; the next commit or
//!   the next move of the tag builds again).
//! * Tag where it was: not outdated. A failed request decides nothing for its specs.

use super::reference::BaseRef;
use crate::model::Timestamp;
use crate::store::base_digests::Outdated;
use std::collections::{BTreeMap, BTreeSet};

/// What the pass knows about one spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecBase {
    pub spec: String,
    /// The base as the latest successful build's Dockerfile names it.
    pub base: String,
    pub pull_secret: Option<String>,
    /// The digest that build pulled (`None`: not recorded, e.g. built before Kiln recorded it).
    pub built_on: Option<String>,
    /// `rebuildOnBaseUpdate` of the current revision, or the config default.
    pub rebuild: bool,
    /// A job of the spec is queued or running.
    pub busy: bool,
    /// When the current revision is itself a base update: the digest it was made for.
    pub updated_to: Option<String>,
}

/// One registry request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub base: BaseRef,
    pub pull_secret: Option<String>,
}

/// What the pass decided for one spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Record a base-update revision (and show the spec outdated until it is built).
    Rebuild {
        spec: String,
        from: String,
        to: String,
        outdated: Outdated,
    },
    /// Show the spec outdated; build nothing (opted out, or this digest's revision exists).
    Outdated { spec: String, outdated: Outdated },
    /// The tag is where the build found it.
    Current { spec: String },
    /// By digest: never checked.
    Pinned { spec: String },
    /// Nothing to compare with (no recorded digest, no readable reference) or a build is
    /// pending: nothing to do.
    Skipped { spec: String, why: &'static str },
    /// The request for this spec's base failed: nothing decided.
    Failed { spec: String, error: String },
}

/// Whether a spec needs a request, or is decided without one.
enum Lookup {
    Ask(Request),
    Decided(Decision),
}

fn request_of(input: &SpecBase) -> Lookup {
    let skipped = |why| Decision::Skipped {
        spec: input.spec.clone(),
        why,
    };
    let Some(base) = BaseRef::parse(&input.base) else {
        return Lookup::Decided(skipped("the base reference cannot be read"));
    };
    if base.pinned() {
        return Lookup::Decided(Decision::Pinned {
            spec: input.spec.clone(),
        });
    }
    if input.busy {
        return Lookup::Decided(skipped("a build is queued or running"));
    }
    if input.built_on.is_none() {
        return Lookup::Decided(skipped("no base digest recorded for its latest image"));
    }
    Lookup::Ask(Request {
        base,
        pull_secret: input.pull_secret.clone(),
    })
}

/// The distinct requests the pass makes, in a stable order.
pub fn requests(inputs: &[SpecBase]) -> Vec<Request> {
    let set: BTreeSet<Request> = inputs
        .iter()
        .filter_map(|i| match request_of(i) {
            Lookup::Ask(r) => Some(r),
            Lookup::Decided(_) => None,
        })
        .collect();
    set.into_iter().collect()
}

/// What the answers (digest or error text per request) mean for each spec.
pub fn decide(
    inputs: &[SpecBase],
    answers: &BTreeMap<Request, Result<String, String>>,
    now: Timestamp,
) -> Vec<Decision> {
    inputs
        .iter()
        .map(|input| {
            let request = match request_of(input) {
                Lookup::Ask(r) => r,
                Lookup::Decided(decision) => return decision,
            };
            let spec = input.spec.clone();
            let built_on = input.built_on.clone().unwrap_or_default();
            match answers.get(&request) {
                None => Decision::Failed {
                    spec,
                    error: format!("{} was not asked", request.base),
                },
                Some(Err(error)) => Decision::Failed {
                    spec,
                    error: error.clone(),
                },
                Some(Ok(current)) if *current == built_on => Decision::Current { spec },
                Some(Ok(current)) => {
                    let outdated = Outdated {
                        reference: input.base.clone(),
                        built_on: built_on.clone(),
                        current: current.clone(),
                        since: now,
                    };
                    let already = input.updated_to.as_deref() == Some(current.as_str());
                    if input.rebuild && !already {
                        Decision::Rebuild {
                            spec,
                            from: built_on,
                            to: current.clone(),
                            outdated,
                        }
                    } else {
                        Decision::Outdated { spec, outdated }
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(spec: &str, base: &str, built_on: &str) -> SpecBase {
        SpecBase {
            spec: spec.into(),
            base: base.into(),
            pull_secret: None,
            built_on: Some(built_on.into()),
            rebuild: true,
            busy: false,
            updated_to: None,
        }
    }

    fn answer(base: &str, result: Result<&str, &str>) -> (Request, Result<String, String>) {
        (
            Request {
                base: BaseRef::parse(base).unwrap(),
                pull_secret: None,
            },
            result.map(str::to_string).map_err(str::to_string),
        )
    }

    #[test]
    fn one_request_per_distinct_base_however_many_specs_share_it() {
        let mut inputs = Vec::new();
        for i in 0..200 {
            let base = [
                "debian:bookworm",
                "docker.io/library/python:3.11",
                "127.0.0.1:5000/b:1",
            ][i % 3];
            inputs.push(input(&format!("s{i}"), base, "sha256:a"));
        }
        // The same base spelled the Docker Hub way is the same request.
        inputs.push(input("x", "docker.io/library/debian:bookworm", "sha256:a"));
        let requests = requests(&inputs);
        assert_eq!(requests.len(), 3, "{requests:?}");
        // A pull secret makes its own request.
        let mut secret = input("y", "127.0.0.1:5000/b:1", "sha256:a");
        secret.pull_secret = Some("corp".into());
        inputs.push(secret);
        assert_eq!(super::requests(&inputs).len(), 4);
    }

    #[test]
    fn moved_unchanged_pinned_busy_unrecorded_and_failed() {
        let mut busy = input("busy", "r.io/b:1", "sha256:a");
        busy.busy = true;
        let mut unrecorded = input("new", "r.io/b:1", "");
        unrecorded.built_on = None;
        let inputs = vec![
            input("moved", "r.io/b:1", "sha256:a"),
            input("same", "r.io/b:2", "sha256:c"),
            input("pinned", "r.io/b@sha256:a", "sha256:a"),
            busy,
            unrecorded,
            input("down", "other.io/b:1", "sha256:a"),
        ];
        assert_eq!(
            requests(&inputs)
                .iter()
                .map(|r| r.base.to_string())
                .collect::<Vec<_>>(),
            ["other.io/b:1", "r.io/b:1", "r.io/b:2"]
        );
        let answers = BTreeMap::from([
            answer("r.io/b:1", Ok("sha256:b")),
            answer("r.io/b:2", Ok("sha256:c")),
            answer("other.io/b:1", Err("registry other.io is unreachable")),
        ]);
        let d = decide(&inputs, &answers, 100);
        assert_eq!(
            d[0],
            Decision::Rebuild {
                spec: "moved".into(),
                from: "sha256:a".into(),
                to: "sha256:b".into(),
                outdated: Outdated {
                    reference: "r.io/b:1".into(),
                    built_on: "sha256:a".into(),
                    current: "sha256:b".into(),
                    since: 100
                }
            }
        );
        assert_eq!(
            d[1],
            Decision::Current {
                spec: "same".into()
            }
        );
        assert_eq!(
            d[2],
            Decision::Pinned {
                spec: "pinned".into()
            }
        );
        assert!(matches!(&d[3], Decision::Skipped { why, .. } if why.contains("queued")));
        assert!(matches!(&d[4], Decision::Skipped { why, .. } if why.contains("no base digest")));
        assert!(matches!(&d[5], Decision::Failed { error, .. } if error.contains("unreachable")));
    }

    #[test]
    fn opted_out_or_already_updated_specs_are_only_outdated() {
        let mut out = input("out", "r.io/b:1", "sha256:a");
        out.rebuild = false;
        let mut done = input("done", "r.io/b:1", "sha256:a");
        done.updated_to = Some("sha256:b".into());
        let mut older = input("older", "r.io/b:1", "sha256:a");
        older.updated_to = Some("sha256:0".into());
        let answers = BTreeMap::from([answer("r.io/b:1", Ok("sha256:b"))]);
        let d = decide(&[out, done, older], &answers, 7);
        assert!(
            matches!(&d[0], Decision::Outdated { spec, outdated } if spec == "out" && outdated.current == "sha256:b")
        );
        assert!(matches!(&d[1], Decision::Outdated { spec, .. } if spec == "done"));
        assert!(matches!(&d[2], Decision::Rebuild { spec, .. } if spec == "older"));
    }
}
