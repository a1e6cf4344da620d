//! The Debian architecture (`amd64`, `all`, …) of each package in a job's image, in a tree of
//! its own (`deb_architectures`, job id → package name → architecture).
//!
//! Why: a Debian package URL names its architecture (`pkg:deb/debian/curl@…?arch=amd64`), but
//! the package listing every job records (`installed`) holds names and versions only, and its
//! layout must not change. The SBOM (`sbom.rs`) reads the architectures here; they are listed
//! in the finished image after the push (`changes/record.rs`).

use super::codec::{decode, encode};
use super::{Store, StoreError};
use crate::model::JobId;
use std::collections::BTreeMap;

const TREE: &str = "deb_architectures";

impl Store {
    fn deb_architectures_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// Package name → architecture for `job`'s image (empty when not recorded).
    pub fn deb_architectures(&self, job: JobId) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self
            .deb_architectures_tree()?
            .get(job.to_be_bytes())?
            .map(|v| decode(TREE, &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Records the architectures of `job`'s Debian packages.
    pub fn put_deb_architectures(
        &self,
        job: JobId,
        arches: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.deb_architectures_tree()?
            .insert(job.to_be_bytes(), encode(arches)?)?;
        Ok(())
    }
}

/// `dpkg-query -W -f='${Package}\t${Architecture}\n'` output → package → architecture.
pub fn parse_deb_architectures(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('\t'))
        .filter(|(name, arch)| !name.is_empty() && !arch.trim().is_empty())
        .map(|(name, arch)| (name.trim().to_string(), arch.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_round_trip_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.deb_architectures(1).unwrap().is_empty());
        let arches = parse_deb_architectures("curl\tamd64\ntzdata\tall\n\nbroken\n");
        assert_eq!(arches.len(), 2);
        assert_eq!(arches.get("tzdata").map(String::as_str), Some("all"));
        store.put_deb_architectures(1, &arches).unwrap();
        assert_eq!(store.deb_architectures(1).unwrap(), arches);
    }
}
