//! How each spec is listed in the image catalogue: `displayName`, `description` and
//! `catalog:` as last committed, in a tree of its own (`listings`, keyed by spec name).
//!
//! Why not in the revision: these fields are not part of the digest, so a commit that only
//! changes them makes no revision and builds nothing — yet the catalogue must show the
//! committed value. The reconcile pass records the listing of every valid spec it observes
//! (also when the digest is unchanged) and the sync writes it here after applying the plan.
//! A separate tree keeps the layout of existing records (and the schema version) untouched.

use super::codec::{decode, encode};
use super::{Store, StoreError};
use crate::spec::{CatalogSettings, ImageSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const TREE: &str = "listings";

/// The presentation fields of one spec at its newest valid commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub catalog: CatalogSettings,
}

impl Listing {
    pub fn of(spec: &ImageSpec) -> Listing {
        Listing {
            display_name: spec.display_name.clone(),
            description: spec.description.clone(),
            catalog: spec.catalog.clone(),
        }
    }
}

impl Store {
    fn listings_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// The listing of `name`, if a valid revision of it was ever observed.
    pub fn listing(&self, name: &str) -> Result<Option<Listing>, StoreError> {
        self.listings_tree()?
            .get(name.as_bytes())?
            .map(|v| decode(TREE, &v))
            .transpose()
    }

    /// Records the listings a reconcile pass observed (newest wins per name).
    pub fn put_listings(&self, listings: &BTreeMap<String, Listing>) -> Result<(), StoreError> {
        if listings.is_empty() {
            return Ok(());
        }
        let tree = self.listings_tree()?;
        let mut batch = sled::Batch::default();
        for (name, listing) in listings {
            batch.insert(name.as_bytes(), encode(listing)?);
        }
        tree.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_round_trip_and_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.listing("a").unwrap(), None);
        let mut first = Listing {
            display_name: Some("A".into()),
            ..Listing::default()
        };
        store
            .put_listings(&BTreeMap::from([("a".to_string(), first.clone())]))
            .unwrap();
        assert_eq!(store.listing("a").unwrap(), Some(first.clone()));
        first.catalog.hidden = true;
        first.catalog.groups = vec!["physics".into()];
        store
            .put_listings(&BTreeMap::from([("a".to_string(), first.clone())]))
            .unwrap();
        assert_eq!(store.listing("a").unwrap(), Some(first));
    }
}
