//! Record encoding and key layout.

use super::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Corrupt {
        tree: "encode",
        message: e.to_string(),
    })
}

pub fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

/// `name \0`: names never contain NUL, so prefixes of different names never overlap.
pub fn name_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

pub fn name_key(name: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = name_prefix(name);
    key.extend_from_slice(suffix);
    key
}

/// The big-endian u64 at the end of a `name \0 id` key.
pub fn id_suffix(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[start..].try_into().ok()?))
}
