//! The registry manifest digest of each job's pushed image, recorded at push, in a tree of its
//! own (`image_digests`, job id → `sha256:…`).
//!
//! Why besides `Job.image_digest`: that field first holds the local image id after a build and
//! is overwritten by the registry's digest only when the first tag is pushed — a retry that
//! rebuilds after that tag was pushed leaves the local id there. A digest-pinned reference
//! (`registry/name@sha256:…`, the catalogue's `image_digest_ref`) needs the registry's
//! manifest digest exactly, so it is kept here, written only from a registry's push answer.
//! Other features that need the pushed digest (the job's changes and SBOM) read it here too.

use super::{Store, StoreError};
use crate::model::JobId;

const TREE: &str = "image_digests";

impl Store {
    fn image_digests_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// The registry digest of the image `job` pushed, if it pushed one.
    pub fn pushed_digest(&self, job: JobId) -> Result<Option<String>, StoreError> {
        Ok(self
            .image_digests_tree()?
            .get(job.to_be_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the digest a registry returned for `job`'s first tag.
    pub fn put_pushed_digest(&self, job: JobId, digest: &str) -> Result<(), StoreError> {
        self.image_digests_tree()?
            .insert(job.to_be_bytes(), digest.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_digests_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.pushed_digest(3).unwrap(), None);
        store.put_pushed_digest(3, "sha256:abc").unwrap();
        assert_eq!(
            store.pushed_digest(3).unwrap().as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(store.pushed_digest(4).unwrap(), None);
    }
}
