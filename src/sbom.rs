//! A job's image as a CycloneDX 1.5 SBOM (`GET /api/v1/jobs/{id}/sbom`), built from what Kiln
//! recorded for the job: its package listing (dpkg, pip, conda, taken in the finished image),
//! the registry digest of its push and the base image named by its Dockerfile.
//!
//! Why from the recorded listing and not a scanner: the listing is what the image's own
//! package managers reported (`dpkg-query`, Python's installed distributions, `conda list`),
//! taken once per build; the SBOM is a pure function of it, unit-tested here, and costs no
//! container at request time. Package URLs are made by the `packageurl` crate, which applies
//! the purl rules (percent-encoding: `+` in a Debian version is `%2B`;
//! PyPI names lowercased with `_` as `-`); an OCI digest is written `sha256%3A…` as in the
//! purl spec's OCI examples. The document is the same on every request for a
//! job: the serial number is derived from the job id and image digest, the timestamp is the
//! job's end.
//!
//! What is not known and therefore not claimed: a Debian package's architecture is added only
//! when Kiln recorded it (`arch=`), a conda package's channel only when the spec names it
//! (`conda-forge::numpy`).

use crate::model::{InstalledPackages, Job, rfc3339};
use packageurl::PackageUrl;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Everything an SBOM is made of.
pub struct SbomInput<'a> {
    pub job: &'a Job,
    pub packages: &'a InstalledPackages,
    /// The registry's manifest digest (`sha256:…`), or the local image id when never pushed.
    pub digest: Option<&'a str>,
    /// Whether `digest` is a registry's (then the purl names the repository).
    pub pushed: bool,
    /// The base image reference from the job's Dockerfile.
    pub base_image: Option<&'a str>,
    /// Debian package name → architecture (`amd64`, `all`), when recorded.
    pub deb_architectures: &'a BTreeMap<String, String>,
    /// conda package name → the channel the spec names for it.
    pub conda_channels: &'a BTreeMap<String, String>,
    /// Kiln's version, for `metadata.tools`.
    pub kiln_version: &'a str,
}

/// conda package name → channel, from the spec's match specs (`conda-forge::numpy==1.17*`).
pub fn conda_channels(specs: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let spec = spec.split('[').next().unwrap_or(spec).trim();
        let Some(i) = spec.rfind("::") else { continue };
        let channel = &spec[..i];
        let rest = &spec[i + 2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(rest.len());
        // As written: a name (`conda-forge`) or a URL, both what purl's `channel` holds.
        if !rest[..end].is_empty() && !channel.is_empty() {
            out.insert(rest[..end].to_lowercase(), channel.to_string());
        }
    }
    out
}

/// `repo/name:tag` → (`repo/name`, `tag`).
fn split_tag(image: &str) -> (&str, Option<&str>) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (image, None),
    }
}

fn purl(
    ty: &str,
    namespace: Option<&str>,
    name: &str,
    version: Option<&str>,
    qualifiers: &[(&str, &str)],
) -> Option<String> {
    let mut p = PackageUrl::new(ty.to_string(), name.to_string()).ok()?;
    if let Some(ns) = namespace {
        p.with_namespace(ns.to_string()).ok()?;
    }
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        p.with_version(v.to_string()).ok()?;
    }
    for (k, v) in qualifiers {
        p.add_qualifier(k.to_string(), v.to_string()).ok()?;
    }
    Some(p.to_string())
}

/// The purl of a Debian package.
pub fn deb_purl(name: &str, version: &str, arch: Option<&str>) -> Option<String> {
    let q: Vec<(&str, &str)> = arch.map(|a| ("arch", a)).into_iter().collect();
    purl("deb", Some("debian"), name, Some(version), &q)
}

/// The purl of a PyPI distribution.
pub fn pypi_purl(name: &str, version: &str) -> Option<String> {
    purl("pypi", None, name, Some(version), &[])
}

/// The purl of a conda package.
pub fn conda_purl(name: &str, version: &str, channel: Option<&str>) -> Option<String> {
    let q: Vec<(&str, &str)> = channel.map(|c| ("channel", c)).into_iter().collect();
    purl("conda", None, name, Some(version), &q)
}

/// The purl of an OCI image: `pkg:oci/NAME@sha256%3A…?repository_url=REPO&tag=TAG`.
pub fn oci_purl(image: &str, digest: Option<&str>, with_repository: bool) -> Option<String> {
    let (repo, tag) = split_tag(image);
    let name = repo.rsplit('/').next().unwrap_or(repo).to_lowercase();
    let mut q = Vec::new();
    if with_repository && repo.contains('/') {
        q.push(("repository_url", repo));
    }
    if let Some(t) = tag {
        q.push(("tag", t));
    }
    let text = purl("oci", None, &name, digest, &q)?;
    // The crate leaves `:` in a version as it is (the purl spec allows both); the spec's OCI
    // examples write the digest as `sha256%3A…`, and so does Kiln.
    let end = text.find(['?', '#']).unwrap_or(text.len());
    let (head, tail) = text.split_at(end);
    Some(match head.rsplit_once('@') {
        Some((before, version)) => format!("{before}@{}{tail}", version.replace(':', "%3A")),
        None => text.clone(),
    })
}

/// A version-format-4 UUID whose bits come from SHA-256 of `seed`: the same job always gets
/// the same serial number, two jobs never share one.
fn uuid_from(seed: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(seed.as_bytes())[..16]
        .try_into()
        .unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn component(purl: Option<String>, name: &str, version: &str, manager: &str) -> Value {
    let mut c = json!({
        "type": "library",
        "name": name,
        "version": version,
        "properties": [{"name": "kiln:package-manager", "value": manager}],
    });
    if let Some(p) = purl {
        c["bom-ref"] = json!(p);
        c["purl"] = json!(p);
    }
    c
}

/// The CycloneDX 1.5 JSON document.
pub fn cyclonedx(input: &SbomInput<'_>) -> Value {
    let job = input.job;
    let image = job.image.clone().unwrap_or_else(|| job.spec.clone());
    let (repo, tag) = split_tag(&image);
    let image_purl = oci_purl(&image, input.digest, input.pushed);
    let mut image_component = json!({
        "type": "container",
        "bom-ref": format!("kiln-job-{}", job.id),
        "name": repo,
        "version": tag.unwrap_or(""),
    });
    if let Some(p) = &image_purl {
        image_component["purl"] = json!(p);
    }
    if let Some(d) = input.digest.and_then(|d| d.strip_prefix("sha256:")) {
        image_component["hashes"] = json!([{"alg": "SHA-256", "content": d}]);
    }
    let mut properties = vec![
        json!({"name": "kiln:job", "value": job.id.to_string()}),
        json!({"name": "kiln:spec", "value": job.spec}),
        json!({"name": "kiln:revision", "value": job.revision.to_string()}),
        json!({"name": "kiln:commit", "value": job.commit}),
    ];
    if let Some(base) = input.base_image {
        properties.push(json!({"name": "kiln:base-image", "value": base}));
        let (base_repo, base_tag) = split_tag(base);
        let mut ancestor = json!({"type": "container", "name": base_repo});
        if let Some(t) = base_tag {
            ancestor["version"] = json!(t);
        }
        if let Some(p) = oci_purl(base, None, true) {
            ancestor["purl"] = json!(p);
        }
        image_component["pedigree"] = json!({"ancestors": [ancestor]});
    }

    let mut components = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |c: Value| {
        let key = c
            .get("bom-ref")
            .map(|r| r.to_string())
            .unwrap_or_else(|| c.to_string());
        if seen.insert(key) {
            components.push(c);
        }
    };
    for p in &input.packages.apt {
        let arch = input.deb_architectures.get(&p.name).map(String::as_str);
        push(component(
            deb_purl(&p.name, &p.version, arch),
            &p.name,
            &p.version,
            "apt",
        ));
    }
    for p in &input.packages.pip {
        push(component(
            pypi_purl(&p.name, &p.version),
            &p.name,
            &p.version,
            "pip",
        ));
    }
    for p in &input.packages.conda {
        let channel = input
            .conda_channels
            .get(&p.name.to_lowercase())
            .map(String::as_str);
        push(component(
            conda_purl(&p.name, &p.version, channel),
            &p.name,
            &p.version,
            "conda",
        ));
    }

    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_from(&format!("kiln job {} {}", job.id, input.digest.unwrap_or("")))),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(job.finished_at.unwrap_or(job.updated_at)),
            "tools": {"components": [{"type": "application", "name": "kiln", "version": input.kiln_version}]},
            "component": image_component,
            "properties": properties,
        },
        "components": components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstalledPackage, JobPlan, JobStatus};

    #[test]
    fn purls_follow_the_purl_rules() {
        assert_eq!(
            deb_purl("curl", "7.88.1-10+deb12u8", Some("amd64")).as_deref(),
            Some("pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64")
        );
        assert_eq!(
            deb_purl("libc6", "2.36-9+deb12u9", None).as_deref(),
            Some("pkg:deb/debian/libc6@2.36-9%2Bdeb12u9")
        );
        assert_eq!(
            pypi_purl("six", "1.16.0").as_deref(),
            Some("pkg:pypi/six@1.16.0")
        );
        assert_eq!(
            pypi_purl("Typing_Extensions", "4.12.2").as_deref(),
            Some("pkg:pypi/typing-extensions@4.12.2")
        );
        assert_eq!(
            conda_purl("numpy", "1.17.5", Some("conda-forge")).as_deref(),
            Some("pkg:conda/numpy@1.17.5?channel=conda-forge")
        );
        let oci = oci_purl(
            "127.0.0.1:5000/py:r2-abc1234",
            Some("sha256:0123abcd"),
            true,
        )
        .unwrap();
        assert!(oci.starts_with("pkg:oci/py@sha256%3A0123abcd?"), "{oci}");
        assert!(oci.contains("repository_url=127.0.0.1:5000%2Fpy"), "{oci}");
        assert!(oci.contains("tag=r2-abc1234"), "{oci}");
        // A round trip through the crate's own parser gives the original parts back.
        let parsed: PackageUrl = oci.parse().unwrap();
        assert_eq!(parsed.version(), Some("sha256:0123abcd"));
        assert_eq!(
            parsed
                .qualifiers()
                .get("repository_url")
                .map(|v| v.as_ref()),
            Some("127.0.0.1:5000/py")
        );
    }

    #[test]
    fn conda_channels_come_from_the_spec_when_it_names_them() {
        let c = conda_channels(&[
            "conda-forge::numpy==1.17*".into(),
            "scipy>=1.0".into(),
            "bioconda::samtools[build=h1]".into(),
        ]);
        assert_eq!(c.get("numpy").map(String::as_str), Some("conda-forge"));
        assert_eq!(c.get("samtools").map(String::as_str), Some("bioconda"));
        assert_eq!(c.get("scipy"), None);
    }

    fn job() -> Job {
        Job {
            id: 42,
            spec: "py".into(),
            revision: 2,
            commit: "abc1234def".into(),
            digest: "d".into(),
            plan: JobPlan::Build,
            status: JobStatus::Succeeded,
            image: Some("127.0.0.1:5000/py:r2-abc1234".into()),
            image_digest: Some("sha256:ff".into()),
            created_at: 1_795_448_000,
            updated_at: 1_795_448_374,
            started_at: None,
            finished_at: Some(1_795_448_374),
            error: None,
            reused_from: None,
            attempts: 1,
            pushed: vec![],
            dockerfile: String::new(),
        }
    }

    fn pkg(name: &str, version: &str) -> InstalledPackage {
        InstalledPackage {
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn the_document_has_the_image_its_base_and_every_package() {
        let job = job();
        let packages = InstalledPackages {
            apt: vec![
                pkg("curl", "7.88.1-10+deb12u8"),
                pkg("curl", "7.88.1-10+deb12u8"),
            ],
            pip: vec![pkg("six", "1.16.0")],
            conda: vec![pkg("numpy", "1.17.5")],
        };
        let arches = BTreeMap::from([("curl".to_string(), "amd64".to_string())]);
        let channels = BTreeMap::from([("numpy".to_string(), "conda-forge".to_string())]);
        let input = SbomInput {
            job: &job,
            packages: &packages,
            digest: Some("sha256:0123"),
            pushed: true,
            base_image: Some("127.0.0.1:5000/bookworm-python:minbase"),
            deb_architectures: &arches,
            conda_channels: &channels,
            kiln_version: "0.1.0",
        };
        let bom = cyclonedx(&input);
        assert_eq!(bom["bomFormat"], "CycloneDX");
        assert_eq!(bom["specVersion"], "1.5");
        assert_eq!(bom["version"], 1);
        let serial = bom["serialNumber"].as_str().unwrap();
        assert!(
            serial.starts_with("urn:uuid:") && serial.len() == 45,
            "{serial}"
        );
        assert_eq!(&serial[23..24], "4");
        assert_eq!(
            bom,
            cyclonedx(&input),
            "the same job gives the same document"
        );
        assert_eq!(bom["metadata"]["timestamp"], "2026-11-23T15:39:34Z");
        let image = &bom["metadata"]["component"];
        assert_eq!(image["type"], "container");
        assert_eq!(image["name"], "127.0.0.1:5000/py");
        assert_eq!(image["version"], "r2-abc1234");
        assert!(
            image["purl"]
                .as_str()
                .unwrap()
                .starts_with("pkg:oci/py@sha256%3A0123?")
        );
        assert_eq!(image["hashes"][0]["content"], "0123");
        assert_eq!(
            image["pedigree"]["ancestors"][0]["name"],
            "127.0.0.1:5000/bookworm-python"
        );
        let props = bom["metadata"]["properties"].as_array().unwrap();
        assert!(props.iter().any(|p| p["name"] == "kiln:base-image"
            && p["value"] == "127.0.0.1:5000/bookworm-python:minbase"));
        let purls: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["purl"].as_str().unwrap())
            .collect();
        assert_eq!(
            purls,
            vec![
                "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?arch=amd64",
                "pkg:pypi/six@1.16.0",
                "pkg:conda/numpy@1.17.5?channel=conda-forge",
            ]
        );
    }

    #[test]
    fn serial_numbers_differ_per_job() {
        assert_ne!(
            uuid_from("kiln job 1 sha256:a"),
            uuid_from("kiln job 2 sha256:a")
        );
    }
}
