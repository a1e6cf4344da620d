//! A base image reference as a registry sees it: registry host, repository path, tag or
//! digest — the normalisation the Docker CLI applies (`debian` → `docker.io/library/debian`,
//! a first component with `.` or `:` or `localhost` is a registry host).
//!
//! Why not `oci_spec::distribution::Reference`: it fills in `latest` silently, and the base
//! check must tell a tag from a digest from nothing, and key its one request per pass on
//! the normalised name so that `debian:bookworm` and `docker.io/library/debian:bookworm`
//! share it.

use std::fmt;

/// A parsed base reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseRef {
    /// The registry as named (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/debian`).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given (what a pull uses).
    pub tag: Option<String>,
    /// `sha256:…` when the reference pins a digest.
    pub digest: Option<String>,
}

impl BaseRef {
    /// Parse `image`; `None` for text that is no image reference.
    pub fn parse(image: &str) -> Option<BaseRef> {
        let image = image.trim();
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return None;
        }
        let (name_tag, digest) = match image.split_once('@') {
            Some((n, d)) if d.contains(':') => (n, Some(d.to_string())),
            Some(_) => return None,
            None => (image, None),
        };
        let (name, tag) = match name_tag.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (name_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            _ => registry,
        };
        if repository.is_empty() || tag.as_deref() == Some("") {
            return None;
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Some(BaseRef {
            registry,
            repository: repository.to_ascii_lowercase(),
            tag,
            digest,
        })
    }

    /// Whether the reference pins a digest (then it never moves and is never checked).
    pub fn pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// The host to send registry API requests to (Docker Hub's API is not at `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// Whether a `RepoDigests` entry of an image (`name@sha256:…`) names this repository;
    /// returns its digest.
    pub fn digest_in<'a>(&self, repo_digest: &'a str) -> Option<&'a str> {
        let (_, digest) = repo_digest.split_once('@')?;
        let other = BaseRef::parse(repo_digest)?;
        (other.registry == self.registry && other.repository == self.repository).then_some(digest)
    }

    /// Whether the registry is on this host (the Engine's default insecure registries):
    /// only such registries are also tried over plain `http`.
    pub fn is_loopback(&self) -> bool {
        let host = self.registry.as_str();
        let bare = match host.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for BaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> BaseRef {
        BaseRef::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(
            p("debian:bookworm").to_string(),
            "docker.io/library/debian:bookworm"
        );
        assert_eq!(p("debian").to_string(), "docker.io/library/debian:latest");
        assert_eq!(
            p("jupyter/scipy-notebook").to_string(),
            "docker.io/jupyter/scipy-notebook:latest"
        );
        assert_eq!(p("index.docker.io/library/debian:12"), p("debian:12"));
        assert_eq!(p("debian:12").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn registry_hosts_ports_and_digests() {
        let r = p("127.0.0.1:5000/kiln/bookworm:minbase");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "kiln/bookworm", Some("minbase"))
        );
        assert!(r.is_loopback() && !r.pinned());
        let d = p("localhost:5000/x@sha256:abc");
        assert_eq!(
            (d.tag.as_deref(), d.digest.as_deref()),
            (None, Some("sha256:abc"))
        );
        assert!(d.pinned());
        let both = p("ghcr.io/o/x:1@sha256:abc");
        assert!(both.pinned() && !both.is_loopback());
        assert_eq!(p("[::1]:5000/x:1").registry, "[::1]:5000");
        assert!(p("[::1]:5000/x:1").is_loopback());
        assert_eq!(BaseRef::parse(""), None);
        assert_eq!(BaseRef::parse("a b"), None);
        assert_eq!(BaseRef::parse("x@nodigest"), None);
        assert_eq!(BaseRef::parse("x:"), None);
    }

    #[test]
    fn repo_digests_match_by_repository() {
        let r = p("127.0.0.1:5000/kiln/b:t1");
        assert_eq!(
            r.digest_in("127.0.0.1:5000/kiln/b@sha256:1"),
            Some("sha256:1")
        );
        assert_eq!(r.digest_in("127.0.0.1:5000/kiln/other@sha256:1"), None);
        assert_eq!(r.digest_in("127.0.0.1:5000/kiln/b"), None);
        assert_eq!(
            p("debian:12").digest_in("debian@sha256:2"),
            Some("sha256:2")
        );
    }
}
