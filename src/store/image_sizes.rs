//! The size of each job's image, in a tree of its own (`image_sizes`, job id → record).
//!
//! Why a tree of its own: the job's changes (`GET /api/v1/jobs/{id}/changes`) and the
//! catalogue show the size of an image and how it changed since the previous successful build,
//! but the `Job` record's layout (and the store's schema version) must stay as it is. The
//! sizes are measured once, after the push (see `changes/record.rs`), and never change: an
//! image's manifest and layers are immutable.

use super::codec::{decode, encode};
use super::{Store, StoreError};
use crate::model::JobId;
use serde::{Deserialize, Serialize};

const TREE: &str = "image_sizes";

/// How big one job's image is. Either part is `None` when it could not be measured: no
/// registry configured (no manifest), or a builder that cannot tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    /// Bytes a pull transfers: the pushed manifest's layer sizes plus its config blob.
    pub compressed: Option<u64>,
    /// Bytes the image takes unpacked in the Engine (`docker image inspect`'s `Size`).
    pub uncompressed: Option<u64>,
}

impl Store {
    fn image_sizes_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// The recorded size of `job`'s image, if it was measured.
    pub fn image_size(&self, job: JobId) -> Result<Option<ImageSize>, StoreError> {
        self.image_sizes_tree()?
            .get(job.to_be_bytes())?
            .map(|v| decode(TREE, &v))
            .transpose()
    }

    /// Records the size of `job`'s image.
    pub fn put_image_size(&self, job: JobId, size: &ImageSize) -> Result<(), StoreError> {
        self.image_sizes_tree()?
            .insert(job.to_be_bytes(), encode(size)?)?;
        Ok(())
    }
}

impl Store {
    /// Deletes the sizes and Debian architectures of jobs that have no record any more (what
    /// `gc` pruned); called by `gc` after its pass. Returns how many records went.
    pub(super) fn sweep_orphan_image_facts(&self) -> Result<u64, StoreError> {
        let mut removed = 0;
        for tree in [
            self.image_sizes_tree()?,
            self.db.open_tree("deb_architectures")?,
            // The base each job pulled (store/base_digests.rs).
            self.db.open_tree("base_digests")?,
        ] {
            let mut orphans = Vec::new();
            for key in tree.iter().keys() {
                let key = key?;
                if self.jobs.get(&key)?.is_none() {
                    orphans.push(key);
                }
            }
            for key in orphans {
                tree.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sizes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.image_size(7).unwrap(), None);
        let size = ImageSize {
            compressed: Some(31_000_000),
            uncompressed: None,
        };
        store.put_image_size(7, &size).unwrap();
        assert_eq!(store.image_size(7).unwrap(), Some(size));
        assert_eq!(store.image_size(8).unwrap(), None);
    }

    #[test]
    fn records_of_jobs_that_are_gone_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_image_size(7, &ImageSize::default()).unwrap();
        store
            .put_deb_architectures(7, &[("curl".to_string(), "amd64".to_string())].into())
            .unwrap();
        // No job 7 exists in this store.
        assert_eq!(store.sweep_orphan_image_facts().unwrap(), 2);
        assert_eq!(store.image_size(7).unwrap(), None);
        assert!(store.deb_architectures(7).unwrap().is_empty());
        assert_eq!(store.sweep_orphan_image_facts().unwrap(), 0);
    }
}
