//! Measuring a job's image after the push: the compressed size from the registry's manifest
//! ([`super::manifest`]) and the uncompressed size from the builder (`docker image inspect`),
//! written to the store's `image_sizes` tree; and the architecture of each Debian package
//! (one `dpkg-query` in a throw-away container, no network) for the SBOM's purls, written to
//! `deb_architectures`.
//!
//! Why it never fails the job: the image is built and pushed by then; a size that cannot be
//! measured (a registry that refuses the manifest read, a builder that cannot tell) is a log
//! line and an unknown (`null`) size, nothing more.

use crate::builder::Builder;
use crate::docker::LogSink;
use crate::docker::auth::Credential;
use crate::model::Job;
use crate::store::Store;
use crate::store::deb_architectures::parse_deb_architectures;
use crate::store::image_sizes::ImageSize;
use tokio_util::sync::CancellationToken;

/// Measures `image` (the job's first tag) and records the sizes for `job`; `pushed` is the
/// registry digest of its push with the credential for that registry, when it was pushed.
/// Logs what it found or why it could not.
pub async fn record_sizes(
    store: &Store,
    builder: &dyn Builder,
    job: &Job,
    image: &str,
    pushed: Option<(&str, Option<&Credential>)>,
    log: &mut dyn LogSink,
    cancel: &CancellationToken,
) {
    let compressed = match pushed {
        Some((digest, credential)) => {
            match super::manifest::fetch_compressed_size(image, digest, credential).await {
                Ok(size) => Some(size),
                Err(e) => {
                    log.line(format!("kiln: could not read the compressed size: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    let uncompressed = match builder.image_size(image).await {
        Ok(size) => size,
        Err(e) => {
            log.line(format!("kiln: could not read the image size: {e}"));
            None
        }
    };
    // The SBOM's Debian purls name each package's architecture, which the listing lacks.
    let arches = match builder
        .run_capture(
            image,
            &[
                "/bin/sh",
                "-c",
                "dpkg-query -W -f='${Package}\t${Architecture}\n' 2>/dev/null; exit 0",
            ],
            cancel,
        )
        .await
    {
        Ok((0, out)) => parse_deb_architectures(&out),
        Ok((code, _)) => {
            log.line(format!(
                "kiln: listing the Debian architectures exited with {code}"
            ));
            Default::default()
        }
        Err(e) => {
            log.line(format!(
                "kiln: could not list the Debian architectures: {e}"
            ));
            Default::default()
        }
    };
    let size = ImageSize {
        compressed,
        uncompressed,
    };
    let show = |s: Option<u64>| s.map_or("unknown".to_string(), |b| format!("{b} bytes"));
    log.line(format!(
        "kiln: image size: {} compressed, {} uncompressed",
        show(size.compressed),
        show(size.uncompressed)
    ));
    let (writer, id) = (store.clone(), job.id);
    let written = tokio::task::spawn_blocking(move || {
        writer.put_image_size(id, &size)?;
        if arches.is_empty() {
            return Ok(());
        }
        writer.put_deb_architectures(id, &arches)
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::warn!(job = job.id, error = %e, "cannot store the image size");
    }
}
