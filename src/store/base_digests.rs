//! The base image each job was built on, in trees of their own:
//!
//! * `base_digests`: job id → [`BaseDigest`] (the reference the job's Dockerfile names and
//!   the manifest digest the Engine pulled for it, with the time it was recorded);
//! * `revision_causes`: spec `\0` revision number → [`RevisionCause`] (why a revision exists:
//!   a commit, or a base image that moved; written by [`Store::apply`] in the plan's
//!   transaction; absent means `commit`, so revisions recorded before this tree existed read
//!   correctly);
//! * `base_outdated`: spec name → [`Outdated`] (the base check found the tag moved since the
//!   spec's latest image was built; removed when a check finds it current again).
//!
//! Why not fields of `Job`, `Revision` or `SpecRecord`: those layouts are the store's schema
//! (several features change them at once and each change is a migration). Kept apart, the API
//! and the dashboard join them in. All three are in backups.

use super::codec::{decode, encode, name_key, name_prefix};
use super::{Store, StoreError};
use crate::model::{JobId, Timestamp};
use serde::{Deserialize, Serialize};

const DIGESTS: &str = "base_digests";
/// Written by [`Store::apply`] with the revisions (see `Plan::causes`).
pub(super) const CAUSES: &str = "revision_causes";
const OUTDATED: &str = "base_outdated";

/// The base image a job pulled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseDigest {
    /// The reference as the spec names it (`registry/name:tag`).
    pub reference: String,
    /// The registry's manifest digest (`sha256:…`) of what was pulled.
    pub digest: String,
    pub recorded_at: Timestamp,
}

/// Why a revision exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevisionCause {
    /// A commit changed the spec.
    Commit,
    /// The spec's base tag moved: same commit, rebuilt on the new base.
    BaseUpdate { from: String, to: String },
}

impl RevisionCause {
    /// `commit` or `base-update`, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            RevisionCause::Commit => "commit",
            RevisionCause::BaseUpdate { .. } => "base-update",
        }
    }

    /// One sentence for people ("base image updated: sha256:aaa… → sha256:bbb…").
    pub fn text(&self) -> Option<String> {
        match self {
            RevisionCause::Commit => None,
            RevisionCause::BaseUpdate { from, to } => Some(format!(
                "base image updated: {} → {}",
                short_digest(from),
                short_digest(to)
            )),
        }
    }
}

/// `sha256:` and the first 12 hex digits, then `…`.
pub fn short_digest(digest: &str) -> String {
    let (algo, hex) = digest.split_once(':').unwrap_or(("", digest));
    match hex.get(..12) {
        Some(head) if hex.len() > 12 => format!("{algo}:{head}…"),
        _ => digest.to_string(),
    }
}

/// A spec whose base tag moved since its latest image was built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outdated {
    /// The base reference that was checked.
    pub reference: String,
    /// The digest the latest image was built on.
    pub built_on: String,
    /// The tag's digest in the registry at the last check.
    pub current: String,
    /// When a check first saw the tag away from `built_on`.
    pub since: Timestamp,
}

impl Store {
    fn tree(&self, name: &'static str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The base `job` was built on, if it recorded one.
    pub fn base_digest(&self, job: JobId) -> Result<Option<BaseDigest>, StoreError> {
        self.tree(DIGESTS)?
            .get(job.to_be_bytes())?
            .map(|v| decode(DIGESTS, &v))
            .transpose()
    }

    /// Records the base `job` pulled (an attempt that pulls again overwrites it).
    pub fn put_base_digest(&self, job: JobId, base: &BaseDigest) -> Result<(), StoreError> {
        self.tree(DIGESTS)?
            .insert(job.to_be_bytes(), encode(base)?)?;
        Ok(())
    }

    /// Why revision `number` of `spec` exists (`Commit` when nothing was recorded).
    pub fn revision_cause(&self, spec: &str, number: u64) -> Result<RevisionCause, StoreError> {
        Ok(self
            .tree(CAUSES)?
            .get(name_key(spec, &number.to_be_bytes()))?
            .map(|v| decode(CAUSES, &v))
            .transpose()?
            .unwrap_or(RevisionCause::Commit))
    }

    /// The spec's outdated-base record, if a check found its base moved.
    pub fn base_outdated(&self, spec: &str) -> Result<Option<Outdated>, StoreError> {
        self.tree(OUTDATED)?
            .get(spec.as_bytes())?
            .map(|v| decode(OUTDATED, &v))
            .transpose()
    }

    /// Every outdated-base record, by spec name.
    pub fn all_base_outdated(&self) -> Result<Vec<(String, Outdated)>, StoreError> {
        self.tree(OUTDATED)?
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    decode(OUTDATED, &v)?,
                ))
            })
            .collect()
    }

    /// Sets (`Some`) or clears (`None`) the outdated-base record of `spec`. A record for the
    /// same `built_on` keeps its first `since`.
    pub fn set_base_outdated(
        &self,
        spec: &str,
        outdated: Option<&Outdated>,
    ) -> Result<(), StoreError> {
        let tree = self.tree(OUTDATED)?;
        match outdated {
            None => {
                tree.remove(spec.as_bytes())?;
            }
            Some(new) => {
                let mut new = new.clone();
                if let Some(old) = self.base_outdated(spec)?
                    && old.built_on == new.built_on
                {
                    new.since = old.since;
                }
                tree.insert(spec.as_bytes(), encode(&new)?)?;
            }
        }
        Ok(())
    }

    /// Revision causes of one spec, by number (for the spec page and API).
    pub fn revision_causes_of(&self, spec: &str) -> Result<Vec<(u64, RevisionCause)>, StoreError> {
        let prefix = name_prefix(spec);
        self.tree(CAUSES)?
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let number = k
                    .get(prefix.len()..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or(StoreError::Corrupt {
                        tree: CAUSES,
                        message: "short key".into(),
                    })?;
                Ok((number, decode(CAUSES, &v)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn base_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.base_digest(1).unwrap(), None);
        let base = BaseDigest {
            reference: "127.0.0.1:5000/b:1".into(),
            digest: "sha256:aa".into(),
            recorded_at: 5,
        };
        store.put_base_digest(1, &base).unwrap();
        assert_eq!(store.base_digest(1).unwrap(), Some(base));

        assert_eq!(store.revision_cause("a", 2).unwrap(), RevisionCause::Commit);
        let cause = RevisionCause::BaseUpdate {
            from: "sha256:".to_string() + &"a".repeat(64),
            to: "sha256:".to_string() + &"b".repeat(64),
        };
        // Causes are written by the plan's transaction, with the revisions.
        let plan = crate::reconcile::Plan {
            causes: vec![("a".into(), 2, cause.clone())],
            ..Default::default()
        };
        store.apply(&plan, &"1".repeat(40)).await.unwrap();
        assert_eq!(store.revision_cause("a", 2).unwrap(), cause);
        assert_eq!(
            store.revision_cause("ab", 2).unwrap(),
            RevisionCause::Commit
        );
        assert_eq!(
            store.revision_causes_of("a").unwrap(),
            vec![(2, cause.clone())]
        );
        assert_eq!(cause.kind(), "base-update");
        assert_eq!(
            cause.text().unwrap(),
            "base image updated: sha256:aaaaaaaaaaaa… → sha256:bbbbbbbbbbbb…"
        );
    }

    #[test]
    fn outdated_keeps_its_first_since_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut o = Outdated {
            reference: "r:1".into(),
            built_on: "sha256:a".into(),
            current: "sha256:b".into(),
            since: 10,
        };
        store.set_base_outdated("s", Some(&o)).unwrap();
        o.current = "sha256:c".into();
        o.since = 20;
        store.set_base_outdated("s", Some(&o)).unwrap();
        let got = store.base_outdated("s").unwrap().unwrap();
        assert_eq!((got.since, got.current.as_str()), (10, "sha256:c"));
        assert_eq!(store.all_base_outdated().unwrap().len(), 1);
        store.set_base_outdated("s", None).unwrap();
        assert_eq!(store.base_outdated("s").unwrap(), None);
    }
}
