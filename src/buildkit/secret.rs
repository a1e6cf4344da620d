//! A build secret: bytes a `RUN --mount=type=secret,id=ID` step may read, and nothing else.
//!
//! BuildKit asks the build's session for a secret by id when a step mounts it
//! ([`super::session_services`] answers); the bytes then exist in that step's tmpfs only: not
//! in a layer, the history, the image config or the cache key. On Kiln's side they live in
//! memory: `Debug` prints the id and the length, never the bytes, and a dropped secret
//! overwrites its bytes (`zeroize`, RustCrypto's crate: a volatile write per byte, no
//! dependency of its own), so a copy handed to a build thread does not linger in freed memory
//! once the build is over. Copies made inside the gRPC encoder are outside Kiln's reach.

use zeroize::Zeroize;

/// One secret of a build: `id` as a Dockerfile's `--mount=type=secret,id=…` names it, and its
/// bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct BuildSecret {
    pub id: String,
    pub data: Vec<u8>,
}

impl BuildSecret {
    pub fn new(id: impl Into<String>, data: impl Into<Vec<u8>>) -> BuildSecret {
        BuildSecret {
            id: id.into(),
            data: data.into(),
        }
    }
}

impl std::fmt::Debug for BuildSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSecret")
            .field("id", &self.id)
            .field("data_bytes", &self.data.len())
            .finish()
    }
}

impl Drop for BuildSecret {
    fn drop(&mut self) {
        self.data.zeroize();
    }
}

/// Why a set of secrets cannot be given to a build: an id BuildKit would not accept, or one
/// id twice (which of the two a step reads would be arbitrary).
pub(crate) fn check_ids(secrets: &[BuildSecret]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for s in secrets {
        if s.id.is_empty()
            || !s
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "build secret id {:?} is not a BuildKit secret id (letters, digits, '-', '_', '.')",
                s.id
            ));
        }
        if !seen.insert(s.id.as_str()) {
            return Err(format!("build secret id {:?} is given twice", s.id));
        }
    }
    Ok(())
}

/// The secret values worth scrubbing from log lines and messages (a value this short would
/// blank out ordinary words).
pub(crate) fn redactable(secrets: &[BuildSecret]) -> Vec<String> {
    secrets
        .iter()
        .filter_map(|s| std::str::from_utf8(&s.data).ok())
        .map(str::trim)
        .filter(|s| s.len() >= 4)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_id_and_length_never_the_bytes() {
        let s = BuildSecret::new("pip-conf", "hunter2-password");
        let text = format!("{s:?}");
        assert!(text.contains("pip-conf"), "{text}");
        assert!(text.contains("16"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn ids_must_be_buildkit_ids_and_unique() {
        assert!(
            check_ids(&[
                BuildSecret::new("s1", "a"),
                BuildSecret::new("pip.conf", "b")
            ])
            .is_ok()
        );
        assert!(check_ids(&[]).is_ok());
        for bad in ["", "a b", "a/b", "a,b", "x=y"] {
            let err = check_ids(&[BuildSecret::new(bad, "v")]).unwrap_err();
            assert!(err.contains("not a BuildKit secret id"), "{bad:?}: {err}");
        }
        let err =
            check_ids(&[BuildSecret::new("s1", "a"), BuildSecret::new("s1", "b")]).unwrap_err();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn only_values_long_enough_are_redacted() {
        let got = redactable(&[
            BuildSecret::new("a", "abc"),
            BuildSecret::new("b", "value-1\n"),
            BuildSecret::new("c", vec![0xff, 0xfe, 0xfd, 0xfc]),
        ]);
        assert_eq!(got, vec!["value-1".to_string()]);
    }
}
