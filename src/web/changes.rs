//! `GET /api/v1/jobs/{id}/changes` and `GET /api/v1/jobs/{id}/sbom`, and the job page's "What
//! changed" section: the store's records of a job (package listing, image size, pushed
//! digest, Debian architectures, the spec's conda channels) assembled for the pure functions
//! in [`crate::changes`] and [`crate::sbom`].
//!
//! The job compared with is the newest earlier successful job of the same spec that has a
//! package listing (a successful job whose listing failed cannot be compared package by
//! package, so it is skipped). A job without a listing — not built yet, failed, or built
//! before listings — answers 404 with a JSON error on both routes.

use super::AppState;
use crate::changes::{self, PackageChanges, SizeChanges};
use crate::model::{InstalledPackages, Job, JobId};
use crate::store::{Store, StoreError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The answer of `/changes`.
#[derive(Debug, Serialize)]
pub struct JobChanges {
    pub job: JobId,
    /// The job compared with; `null` for a spec's first successful build.
    pub previous_job: Option<JobId>,
    pub packages: PackageChanges,
    pub size: SizeChanges,
}

/// Jobs read per page while looking for the previous build.
const PAGE: usize = 100;

/// The newest earlier successful job of `job`'s spec with a listing, and that listing.
fn previous_with_listing(
    store: &Store,
    job: &Job,
) -> Result<Option<(Job, InstalledPackages)>, StoreError> {
    let mut skip = 0;
    loop {
        let page = store.jobs_of_spec(&job.spec, skip, PAGE)?;
        if page.is_empty() {
            return Ok(None);
        }
        skip += page.len();
        for candidate in changes::candidates(job, &page) {
            if let Some(listing) = store.installed(candidate.id)? {
                return Ok(Some((candidate.clone(), listing)));
            }
        }
    }
}

/// What changed in job `id`'s image; `None` when the job does not exist or has no listing.
pub fn load(store: &Store, id: JobId) -> Result<Option<JobChanges>, StoreError> {
    let Some(job) = store.job(id)? else {
        return Ok(None);
    };
    let Some(current) = store.installed(id)? else {
        return Ok(None);
    };
    let previous = previous_with_listing(store, &job)?;
    let previous_size = match &previous {
        Some((p, _)) => store.image_size(p.id)?,
        None => None,
    };
    Ok(Some(JobChanges {
        job: id,
        previous_job: previous.as_ref().map(|(p, _)| p.id),
        packages: changes::diff(previous.as_ref().map(|(_, l)| l), &current),
        size: changes::sizes(previous_size.as_ref(), store.image_size(id)?.as_ref()),
    }))
}

/// The CycloneDX document of job `id`; `None` when the job does not exist or has no listing.
pub fn sbom(store: &Store, id: JobId) -> Result<Option<serde_json::Value>, StoreError> {
    let Some(job) = store.job(id)? else {
        return Ok(None);
    };
    let Some(packages) = store.installed(id)? else {
        return Ok(None);
    };
    let pushed = store.pushed_digest(id)?;
    let digest = pushed.clone().or_else(|| job.image_digest.clone());
    let conda_specs = store
        .revision(&job.spec, job.revision)?
        .and_then(|r| crate::spec::parse_spec(&r.path, r.yaml.as_bytes(), &Default::default()).spec)
        .map(|s| s.packages.conda)
        .unwrap_or_default();
    let channels = crate::sbom::conda_channels(&conda_specs);
    let arches = store.deb_architectures(id)?;
    let input = crate::sbom::SbomInput {
        job: &job,
        packages: &packages,
        digest: digest.as_deref(),
        pushed: pushed.is_some(),
        base_image: crate::dockerfile::base_image(&job.dockerfile),
        deb_architectures: &arches,
        conda_channels: &channels,
        kiln_version: env!("CARGO_PKG_VERSION"),
    };
    Ok(Some(crate::sbom::cyclonedx(&input)))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Runs `read` on a blocking thread (sled reads, a scan of the spec's jobs) and answers with
/// its value, a 404 naming what is missing, or a 500.
async fn answer<T: Serialize + Send + 'static>(
    state: AppState,
    id: String,
    read: fn(&Store, JobId) -> Result<Option<T>, StoreError>,
) -> Response {
    let Ok(job_id) = id.parse::<JobId>() else {
        return error(StatusCode::NOT_FOUND, format!("job `{id}` not found"));
    };
    let store = state.store.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let exists = store.job(job_id)?.is_some();
        Ok((exists, read(&store, job_id)?))
    })
    .await;
    match result {
        Ok(Ok((_, Some(value)))) => Json(value).into_response(),
        Ok(Ok((false, None))) => error(StatusCode::NOT_FOUND, format!("job {job_id} not found")),
        Ok(Ok((true, None))) => error(
            StatusCode::NOT_FOUND,
            format!("job {job_id} has no package listing (only a successful build records one)"),
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store read failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store read failed".into(),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/jobs/{id}/changes`.
pub(super) async fn job_changes(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    answer(state, id, load).await
}

/// `GET /api/v1/jobs/{id}/sbom`: CycloneDX 1.5 JSON.
pub(super) async fn job_sbom(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    answer(state, id, sbom).await
}

/// The job page's "What changed" section.
pub struct ChangesView {
    pub previous_job: Option<JobId>,
    pub added: Vec<(String, String, String)>,
    pub removed: Vec<(String, String, String)>,
    pub changed: Vec<(String, String, String, String)>,
    /// `(label, size, change)` rows, formatted.
    pub sizes: Vec<(&'static str, String, String)>,
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn signed_bytes(n: i64) -> String {
    match n {
        0 => "±0".into(),
        n if n > 0 => format!("+{}", bytes(n.unsigned_abs())),
        n => format!("−{}", bytes(n.unsigned_abs())),
    }
}

impl ChangesView {
    pub fn of(c: JobChanges) -> ChangesView {
        let size_row = |label, size: Option<u64>, change: Option<i64>| {
            size.map(|s| {
                (
                    label,
                    bytes(s),
                    change.map(signed_bytes).unwrap_or_default(),
                )
            })
        };
        ChangesView {
            previous_job: c.previous_job,
            added: c
                .packages
                .added
                .into_iter()
                .map(|p| (p.manager.to_string(), p.name, p.version))
                .collect(),
            removed: c
                .packages
                .removed
                .into_iter()
                .map(|p| (p.manager.to_string(), p.name, p.version))
                .collect(),
            changed: c
                .packages
                .changed
                .into_iter()
                .map(|p| (p.manager.to_string(), p.name, p.from, p.to))
                .collect(),
            sizes: [
                size_row("Compressed", c.size.compressed, c.size.compressed_change),
                size_row(
                    "Uncompressed",
                    c.size.uncompressed,
                    c.size.uncompressed_change,
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(31_457_280), "30.0 MiB");
        assert_eq!(signed_bytes(-2048), "−2.0 KiB");
        assert_eq!(signed_bytes(0), "±0");
        assert_eq!(signed_bytes(1536), "+1.5 KiB");
    }
}
