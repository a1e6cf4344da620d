//! `/api/v1/…` (JSON) and `/healthz`. Times are RFC 3339 UTC; unknown names and ids are 404
//! with a JSON error body.

use super::AppState;
use crate::model::{Job, JobId, JobStatus, Revision, SpecRecord, rfc3339, rfc3339_ms};
use crate::spec::Diagnostic;
use crate::store::StoreError;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// An API error: status plus `{"error": …}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store read failed".into(),
        )
    }
}

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
}

#[derive(Serialize)]
pub(super) struct SpecSummary {
    name: String,
    path: String,
    /// Status of the newest job, or `invalid` when the current revision is invalid.
    status: String,
    /// Newest successful image.
    image: Option<String>,
    revision: u64,
    updated_at: String,
    deleted: bool,
    errors: Vec<Diagnostic>,
    /// The base tag moved since the latest image was built (`web/base.rs`).
    base_outdated: Option<super::base::OutdatedView>,
}

fn summary(state: &AppState, record: SpecRecord) -> Result<SpecSummary, ApiError> {
    let errors = if record.valid {
        Vec::new()
    } else {
        state
            .store
            .revision(&record.name, record.revision)?
            .map(|r| r.errors)
            .unwrap_or_default()
    };
    let status = if !record.valid {
        "invalid".to_string()
    } else {
        record
            .latest_status
            .map_or("none".to_string(), |s| s.to_string())
    };
    Ok(SpecSummary {
        base_outdated: super::base::outdated(state, &record.name)?,
        status,
        image: record.latest_image,
        revision: record.revision,
        updated_at: rfc3339(record.updated_at),
        deleted: record.deleted,
        errors,
        name: record.name,
        path: record.path,
    })
}

pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    let sync = state.store.sync_status().unwrap_or_default();
    let healthy = sync.error.is_none();
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "degraded" },
        "repo": crate::repo::redact(&state.inner.repo),
        "branch": state.inner.branch,
        "last_commit": state.store.last_commit().ok().flatten(),
        "last_sync_attempt": sync.last_attempt.map(rfc3339),
        "last_sync_success": sync.last_success.map(rfc3339),
        "sync_error": sync.error,
        "builds": if state.inner.no_build { "disabled (observe only)" } else { "enabled" },
    });
    // Degraded sync keeps serving: the process is alive, the data may be stale.
    (StatusCode::OK, Json(body)).into_response()
}

/// A full scan (10,000 specs and more): on a blocking thread, not an async worker.
pub(super) async fn list_specs(
    State(state): State<AppState>,
) -> Result<Json<Vec<SpecSummary>>, ApiError> {
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for record in state.store.specs() {
            out.push(summary(&state, record?)?);
        }
        Ok::<_, ApiError>(out)
    })
    .await
    .map_err(|e| StoreError::Worker(e.to_string()))??;
    Ok(Json(out))
}

#[derive(Serialize)]
struct RevisionView {
    number: u64,
    commit: String,
    author: String,
    committed_at: String,
    subject: String,
    path: String,
    digest: Option<String>,
    valid: bool,
    errors: Vec<Diagnostic>,
    /// `commit` or `base-update`, and for a base update "base image updated: … → …".
    cause: &'static str,
    cause_text: Option<String>,
}

impl From<Revision> for RevisionView {
    fn from(r: Revision) -> Self {
        RevisionView {
            valid: r.valid(),
            number: r.number,
            commit: r.commit.sha,
            author: r.commit.author,
            committed_at: rfc3339(r.commit.committed_at),
            subject: r.commit.subject,
            path: r.path,
            digest: r.digest,
            errors: r.errors,
            cause: "commit",
            cause_text: None,
        }
    }
}

#[derive(Serialize)]
pub(super) struct SpecDetail {
    #[serde(flatten)]
    summary: SpecSummary,
    /// The file as committed at the current revision.
    yaml: Option<String>,
    revisions: Vec<RevisionView>,
}

pub(super) async fn get_spec(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SpecDetail>, ApiError> {
    let record = state
        .store
        .spec(&name)?
        .ok_or_else(|| not_found(format!("spec `{name}`")))?;
    let revisions = state.store.revisions(&name)?;
    let yaml = revisions
        .iter()
        .find(|r| r.number == record.revision)
        .map(|r| r.yaml.clone());
    let causes: std::collections::BTreeMap<u64, _> =
        state.store.revision_causes_of(&name)?.into_iter().collect();
    let mut revisions: Vec<RevisionView> = revisions.into_iter().map(RevisionView::from).collect();
    for r in &mut revisions {
        if let Some(cause) = causes.get(&r.number) {
            (r.cause, r.cause_text) = super::base::cause_fields(cause);
        }
    }
    Ok(Json(SpecDetail {
        summary: summary(&state, record)?,
        yaml,
        revisions,
    }))
}

#[derive(Serialize)]
pub(super) struct JobView {
    id: JobId,
    spec: String,
    revision: u64,
    commit: String,
    status: JobStatus,
    image: Option<String>,
    /// Digest of the pushed (or locally built) image.
    digest: Option<String>,
    /// Canonical digest of the spec the job builds.
    spec_digest: String,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    error: Option<String>,
    reused_from: Option<JobId>,
    attempts: u32,
    /// The build worker of the latest attempt (`None`: not placed yet).
    worker: Option<String>,
    /// The registry digest of the base image the job pulled (`None`: not recorded).
    base_digest: Option<String>,
    /// The base reference, digest and when it was recorded.
    base: Option<super::base::BaseView>,
}

impl JobView {
    /// The job as the API shows it, with its worker from the store.
    fn of(state: &AppState, j: &Job) -> Result<JobView, ApiError> {
        let worker = state.store.job_worker(j.id)?;
        let mut view = JobView::new(j, worker);
        view.base = super::base::job_base(state, j)?;
        view.base_digest = view.base.as_ref().map(|b| b.digest.clone());
        Ok(view)
    }

    fn new(j: &Job, worker: Option<String>) -> Self {
        JobView {
            id: j.id,
            spec: j.spec.clone(),
            revision: j.revision,
            commit: j.commit.clone(),
            status: j.status,
            image: j.image.clone(),
            digest: j.image_digest.clone(),
            spec_digest: j.digest.clone(),
            created_at: rfc3339(j.created_at),
            updated_at: rfc3339(j.updated_at),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            error: j.error.clone(),
            reused_from: j.reused_from,
            attempts: j.attempts,
            worker,
            base_digest: None,
            base: None,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Page {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

pub(super) async fn spec_jobs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    if state.store.spec(&name)?.is_none() {
        return Err(not_found(format!("spec `{name}`")));
    }
    let limit = page.limit.unwrap_or(1000).min(10_000);
    let jobs = state.store.jobs_of_spec(&name, page.offset, limit)?;
    let views: Result<Vec<JobView>, ApiError> =
        jobs.iter().map(|j| JobView::of(&state, j)).collect();
    Ok(Json(views?))
}

#[derive(Serialize)]
pub(super) struct JobDetail {
    #[serde(flatten)]
    job: JobView,
    spec_yaml: Option<String>,
    dockerfile: String,
    log_lines: u64,
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| not_found(format!("job `{id}`")))
}

pub(super) async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let id = parse_id(&id)?;
    let job = state
        .store
        .job(id)?
        .ok_or_else(|| not_found(format!("job {id}")))?;
    let spec_yaml = state
        .store
        .revision(&job.spec, job.revision)?
        .map(|r| r.yaml);
    Ok(Json(JobDetail {
        log_lines: state.store.log_len(id)?,
        spec_yaml,
        dockerfile: job.dockerfile.clone(),
        job: JobView::of(&state, &job)?,
    }))
}

/// What is inside the job's image: `{apt: [{name, version}], pip: […], conda: […]}`; 404 until
/// recorded (after a successful build).
pub(super) async fn job_packages(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::model::InstalledPackages>, ApiError> {
    let id = parse_id(&id)?;
    state
        .store
        .installed(id)?
        .map(Json)
        .ok_or_else(|| not_found(format!("installed packages of job {id}")))
}

#[derive(Deserialize, Default)]
pub(super) struct LogOptions {
    /// Prefix each line with the time Kiln received it, like `docker logs --timestamps`.
    #[serde(default)]
    timestamps: bool,
}

/// The whole log as text, streamed page by page so a 200 MB log is never held in memory.
/// `?timestamps=true` prefixes each line with its RFC 3339 receive time (milliseconds, UTC).
pub(super) async fn job_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(options): Query<LogOptions>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if state.store.job(id)?.is_none() {
        return Err(not_found(format!("job {id}")));
    }
    const PAGE: usize = 2000;
    let store = state.store.clone();
    let stream = futures_util::stream::try_unfold(0u64, move |from| {
        let store = store.clone();
        async move {
            let lines = store
                .log_lines(id, from, PAGE)
                .map_err(std::io::Error::other)?;
            let Some((last, _)) = lines.last() else {
                return Ok::<_, std::io::Error>(None);
            };
            let next = last + 1;
            let mut chunk = String::new();
            for (_, line) in &lines {
                if options.timestamps {
                    chunk.push_str(&rfc3339_ms(line.at_ms));
                    chunk.push(' ');
                }
                chunk.push_str(&line.text);
                chunk.push('\n');
            }
            Ok(Some((chunk, next)))
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
pub(super) struct CatalogOptions {
    /// `kubespawner` (a `profile_list`), `dockerspawner` (`allowed_images`); Kiln's own by default.
    format: Option<String>,
}

/// `GET /api/v1/catalog`: the latest successful, digest-pinned image of every live, listed
/// spec (see [`crate::catalog`]); `?format=kubespawner|dockerspawner` for the spawners.
pub(super) async fn catalog(
    State(state): State<AppState>,
    Query(options): Query<CatalogOptions>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let mut rows = vec![];
        for spec in store.specs() {
            let spec = spec?;
            if spec.deleted || spec.latest_image_job.is_none() {
                continue;
            }
            let listing = store.listing(&spec.name)?;
            let job = match spec.latest_image_job {
                Some(id) => store.job(id)?,
                None => None,
            };
            // Jobs pushed before digests were recorded at push fall back to the job's own.
            let pushed = match spec.latest_image_job {
                Some(id) => store.pushed_digest(id)?.or_else(|| {
                    job.as_ref()
                        .filter(|j| !j.pushed.is_empty())
                        .and_then(|j| j.image_digest.clone())
                }),
                None => None,
            };
            // The compressed size (what a pull transfers) recorded after the push.
            let size = match spec.latest_image_job {
                Some(id) => store.image_size(id)?.and_then(|s| s.compressed),
                None => None,
            };
            rows.push((spec, listing, job, pushed, size));
        }
        Ok(rows)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let sources: Vec<crate::catalog::Source<'_>> = loaded
        .iter()
        .map(
            |(spec, listing, job, pushed, size)| crate::catalog::Source {
                spec,
                listing: listing.as_ref(),
                job: job.as_ref(),
                pushed_digest: pushed.as_deref(),
                size: *size,
            },
        )
        .collect();
    let entries = crate::catalog::entries(&sources);
    Ok(match options.format.as_deref() {
        None | Some("kiln") => Json(serde_json::json!({ "images": entries })).into_response(),
        Some("kubespawner") => Json(crate::catalog::kubespawner(&entries)).into_response(),
        Some("dockerspawner") => Json(crate::catalog::dockerspawner(&entries)).into_response(),
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unknown format `{other}`; use kubespawner or dockerspawner"),
            ));
        }
    })
}
