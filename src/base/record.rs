//! What a job records about its base once the builder has pulled it: the registry digest
//! the builder stored for the pulled image (its `RepoDigests` entry for the base's
//! repository — for a multi-platform tag the index digest, the one a manifest `HEAD` of the
//! tag answers), kept in the `base_digests` tree, and the labels
//! `org.opencontainers.image.base.name` / `.base.digest` on the image.
//!
//! Never fails the job: a base that only exists in the builder (built there, never pulled)
//! has no registry digest; the job then records none and says so in its log, and the base
//! check skips the spec until a build records one.

use super::reference::BaseRef;
use crate::builder::Builder;
use crate::docker::LogSink;
use crate::model::{Job, JobId, now};
use crate::store::base_digests::BaseDigest;
use crate::store::{Store, StoreError};

/// The digest of `base_image` as `b` pulled it, recorded for `job`; `None` when unknown.
pub async fn base_pulled(
    store: &Store,
    b: &dyn Builder,
    job: JobId,
    base_image: &str,
    log: &mut dyn LogSink,
) -> Option<String> {
    let digest = match b.repo_digests(base_image).await {
        Ok(entries) => pick(base_image, &entries),
        Err(e) => {
            log.line(format!("kiln: could not read the base image's digest: {e}"));
            return None;
        }
    };
    let Some(digest) = digest else {
        log.line(format!(
            "kiln: the builder recorded no registry digest for {base_image}; no base digest is recorded for this job"
        ));
        return None;
    };
    // A reference by digest is its own answer.
    let record = BaseDigest {
        reference: base_image.to_string(),
        digest: digest.clone(),
        recorded_at: now(),
    };
    if let Err(e) = store.put_base_digest(job, &record) {
        log.line(format!("kiln: could not record the base digest: {e}"));
    }
    log.line(format!("kiln: base image {base_image} is {digest}"));
    Some(digest)
}

/// The digest among `RepoDigests` entries that belongs to `base_image`'s repository; a
/// reference that pins a digest names it itself.
pub fn pick(base_image: &str, entries: &[String]) -> Option<String> {
    let base = BaseRef::parse(base_image)?;
    if let Some(pinned) = &base.digest {
        return Some(pinned.clone());
    }
    entries
        .iter()
        .find_map(|e| base.digest_in(e))
        .map(str::to_string)
}

/// The base a job's image stands on: its own record, or for a re-use, that of the job whose
/// image it re-used.
pub fn base_of(store: &Store, job: &Job) -> Result<Option<BaseDigest>, StoreError> {
    match store.base_digest(job.id)? {
        Some(b) => Ok(Some(b)),
        None => match job.reused_from {
            Some(from) => store.base_digest(from),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repo_digest_of_the_bases_repository_is_picked() {
        let entries = vec![
            "127.0.0.1:5000/other@sha256:1".to_string(),
            "127.0.0.1:5000/kiln/b@sha256:2".to_string(),
        ];
        assert_eq!(
            pick("127.0.0.1:5000/kiln/b:t", &entries).as_deref(),
            Some("sha256:2")
        );
        assert_eq!(pick("127.0.0.1:5000/kiln/c:t", &entries), None);
        assert_eq!(pick("r.io/x@sha256:9", &[]).as_deref(), Some("sha256:9"));
        assert_eq!(pick("not a ref", &entries), None);
    }
}
