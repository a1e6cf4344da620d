//! Image references: `repo[:tag][@digest]` split the way the Engine's API wants them, and
//! the checks a pushed reference must pass before it goes into a request path.

pub(super) fn valid_push_repo(repo: &str) -> bool {
    !repo.is_empty()
        && !repo.starts_with('/')
        && !repo.contains("//")
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
}

pub(super) fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `repo[:tag][@digest]` → (repo, tag or digest); no tag means `latest`.
pub(super) fn split_reference(image: &str) -> (&str, String) {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    let tag = match (digest, tag) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) if !tag.is_empty() => tag.to_string(),
        _ => "latest".to_string(),
    };
    (repo, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repo_and_tag() {
        assert_eq!(
            split_reference("127.0.0.1:5000/kiln/x:r1-abc"),
            ("127.0.0.1:5000/kiln/x", "r1-abc".into())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/kiln/x"),
            ("127.0.0.1:5000/kiln/x", "latest".into())
        );
        assert_eq!(split_reference("debian"), ("debian", "latest".into()));
        assert_eq!(
            split_reference("debian:bookworm"),
            ("debian", "bookworm".into())
        );
        assert_eq!(
            split_reference("ghcr.io/a/b:1@sha256:ab"),
            ("ghcr.io/a/b", "sha256:ab".into())
        );
        assert!(valid_push_repo("127.0.0.1:5000/kiln/x") && valid_tag("r1-abc1234"));
        assert!(!valid_push_repo("a b") && !valid_tag("x?y") && !valid_push_repo("a//b"));
    }
}
