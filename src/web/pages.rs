//! The dashboard: server-rendered HTML pages (askama templates in `web/templates`, CSS and JS
//! in `web/static`, all compiled into the binary).
//!
//! * `/` — specs: filter (`?q=`), status (`?status=`), deleted ones (`?deleted=1`), pages of
//!   100 (`?page=`), counts per status. Served from an in-memory index kept fresh by store
//!   events ([`index`]), so 10,000 specs cost no store reads per request.
//! * `/specs/{name}` — the spec as committed now, its validation errors, its jobs (`?page=`).
//! * `/jobs/{id}` — the job, its spec snapshot, Dockerfile, installed packages and its log:
//!   the last [`LOG_PAGE`] lines, older pages by `?from=` (a line number), live lines over
//!   SSE (`/jobs/{id}/events`, see `sse.rs`).
//!
//! Everything works without JavaScript except the live tail, the copy buttons and relative
//! times that keep counting. Nothing here changes state.

mod assets;
mod highlight;

pub(super) use assets::serve as static_file;

use super::AppState;
use super::ansi::line_to_html;
use super::format::{When, duration, encode, relative, short, thousands};
use super::index::{SpecRow, SpecStatus};
use crate::model::{Job, JobId, JobStatus, Revision, now};
use crate::store::StoreError;
use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

/// Rows per page of the spec list.
pub const SPECS_PAGE: usize = 100;
/// Jobs per page on a spec's page.
pub const JOBS_PAGE: usize = 50;
/// Log lines per page on a job's page.
pub const LOG_PAGE: usize = 500;

// ---------------------------------------------------------------------------------------
// Shared view pieces

/// What every page's frame shows.
pub struct Layout {
    pub title: String,
    pub nav: &'static str,
    pub css: &'static str,
    pub js: &'static str,
    pub icon: &'static str,
    pub repo: String,
    pub branch: String,
    pub no_build: bool,
    pub version: &'static str,
    pub sync_error: Option<String>,
    pub last_sync: Option<When>,
    pub never_synced: bool,
    /// Why queued jobs wait: no build worker is healthy.
    pub workers_down: Option<String>,
}

impl Layout {
    pub(super) fn new(state: &AppState, title: impl Into<String>, nav: &'static str) -> Layout {
        let sync = state.store.sync_status().unwrap_or_default();
        Layout {
            title: title.into(),
            nav,
            css: assets::url("app.css"),
            js: assets::url("app.js"),
            icon: assets::url("favicon.svg"),
            repo: crate::repo::redact(&state.inner.repo),
            branch: state.inner.branch.clone(),
            no_build: state.inner.no_build,
            version: env!("CARGO_PKG_VERSION"),
            never_synced: sync.last_success.is_none() && sync.last_attempt.is_none(),
            last_sync: sync.last_success.map(When::at),
            sync_error: sync.error,
            workers_down: super::workers::banner(state),
        }
    }
}

/// An HTML error page.
pub struct PageError(StatusCode, String);

#[derive(Template, WebTemplate)]
#[template(path = "error.html", config = "web/askama.toml")]
struct ErrorPage {
    layout: Layout,
    code: u16,
    message: String,
}

impl PageError {
    fn not_found(what: impl Into<String>) -> PageError {
        PageError(StatusCode::NOT_FOUND, what.into())
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed");
        PageError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The store could not be read; see Kiln's log.".into(),
        )
    }
}

/// Rendered with a minimal frame (no state at hand here).
impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            layout: Layout {
                title: self.0.canonical_reason().unwrap_or("Error").to_string(),
                nav: "",
                css: assets::url("app.css"),
                js: assets::url("app.js"),
                icon: assets::url("favicon.svg"),
                repo: String::new(),
                branch: String::new(),
                no_build: false,
                version: env!("CARGO_PKG_VERSION"),
                sync_error: None,
                last_sync: None,
                never_synced: false,
                workers_down: None,
            },
            code: self.0.as_u16(),
            message: self.1,
        };
        (self.0, page).into_response()
    }
}

pub(super) async fn not_found_page() -> PageError {
    PageError::not_found("There is no page at this address.")
}

// ---------------------------------------------------------------------------------------
// `/`: the spec list

#[derive(Deserialize, Default)]
pub struct ListQuery {
    q: Option<String>,
    page: Option<String>,
    deleted: Option<String>,
    status: Option<String>,
}

pub struct Chip {
    label: &'static str,
    class: &'static str,
    count: String,
    href: String,
    active: bool,
}

pub struct SpecRowView<'a> {
    row: &'a SpecRow,
    /// `5 min ago` (the rest of the row is computed when the index is built).
    rel: String,
    /// "base outdated since …" (`web/base.rs`), read for the rows of this page only.
    outdated: Option<super::base::OutdatedNote>,
}

pub struct Pager {
    page: usize,
    pages: usize,
    first: usize,
    last: usize,
    total: String,
    prev: Option<String>,
    next: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "specs.html", config = "web/askama.toml")]
struct SpecListPage<'a> {
    layout: Layout,
    q: String,
    status: Option<&'static str>,
    show_deleted: bool,
    chips: Vec<Chip>,
    deleted_count: usize,
    deleted_href: String,
    rows: Vec<SpecRowView<'a>>,
    pager: Pager,
    /// The store has no spec at all.
    no_specs: bool,
    clear_href: String,
}

/// `/?q=…&status=…&deleted=1&page=N` with the given changes.
fn list_href(q: &str, status: Option<&str>, deleted: bool, page: usize) -> String {
    let mut params = Vec::new();
    if !q.is_empty() {
        params.push(format!("q={}", encode(q)));
    }
    if let Some(s) = status {
        params.push(format!("status={s}"));
    }
    if deleted {
        params.push("deleted=1".into());
    }
    if page > 1 {
        params.push(format!("page={page}"));
    }
    if params.is_empty() {
        "/".into()
    } else {
        format!("/?{}", params.join("&"))
    }
}

fn page_number(raw: Option<&str>) -> usize {
    raw.and_then(|p| p.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

pub(super) async fn spec_list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, PageError> {
    let caches = &state.caches;
    let index = caches.specs.get(&state.store).await?;
    let q = query.q.unwrap_or_default().trim().to_string();
    let needle = q.to_lowercase();
    let status = query.status.as_deref().and_then(SpecStatus::parse);
    let show_deleted = matches!(query.deleted.as_deref(), Some("1" | "true" | "on"));
    let page = page_number(query.page.as_deref());
    let key = list_href(&q, status.map(SpecStatus::as_str), show_deleted, page);
    if let Some(body) = caches.pages.get(&key, &index) {
        return Ok(Html(body).into_response());
    }

    let matches = |row: &&SpecRow| {
        (show_deleted || !row.deleted)
            && status.is_none_or(|s| s == row.status && !row.deleted)
            && (needle.is_empty() || row.haystack.contains(&needle))
    };
    let total = index.rows.iter().filter(matches).count();
    let pages = total.div_ceil(SPECS_PAGE).max(1);
    let page = page.min(pages);
    let skip = (page - 1) * SPECS_PAGE;
    let now = now();
    let rows: Vec<SpecRowView> = index
        .rows
        .iter()
        .filter(matches)
        .skip(skip)
        .take(SPECS_PAGE)
        .map(|row| SpecRowView {
            rel: relative(now - row.updated_at, &row.updated_exact),
            outdated: None,
            row,
        })
        .collect();
    let mut rows = rows;
    for v in rows.iter_mut().filter(|v| !v.row.deleted) {
        v.outdated = super::base::outdated_note(&state, &v.row.name)?;
    }

    let status_str = status.map(SpecStatus::as_str);
    let mut chips = vec![Chip {
        label: "all",
        class: "all",
        count: thousands(index.live),
        href: list_href(&q, None, show_deleted, 1),
        active: status.is_none(),
    }];
    for s in SpecStatus::ALL {
        let n = index.count(s);
        if n == 0 && status != Some(s) {
            continue;
        }
        chips.push(Chip {
            label: s.as_str(),
            class: s.as_str(),
            count: thousands(n),
            href: list_href(&q, Some(s.as_str()), show_deleted, 1),
            active: status == Some(s),
        });
    }
    let title = if q.is_empty() {
        "Specs".to_string()
    } else {
        format!("Specs matching “{q}”")
    };
    let page_view = SpecListPage {
        layout: Layout::new(&state, title, "specs"),
        status: status_str,
        show_deleted,
        chips,
        deleted_count: index.deleted,
        deleted_href: list_href(&q, status_str, !show_deleted, 1),
        no_specs: index.rows.is_empty(),
        clear_href: list_href("", None, show_deleted, 1),
        pager: Pager {
            page,
            pages,
            first: if total == 0 { 0 } else { skip + 1 },
            last: skip + rows.len(),
            total: thousands(total),
            prev: (page > 1).then(|| list_href(&q, status_str, show_deleted, page - 1)),
            next: (page < pages).then(|| list_href(&q, status_str, show_deleted, page + 1)),
        },
        rows,
        q,
    };
    let body = Bytes::from(page_view.render().map_err(|e| {
        tracing::error!(error = %e, "template failed");
        PageError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The page could not be rendered.".into(),
        )
    })?);
    caches.pages.put(key, &index, body.clone());
    Ok(Html(body).into_response())
}

// ---------------------------------------------------------------------------------------
// `/specs/{name}`

pub struct DiagView {
    line: u32,
    column: u32,
    rule: String,
    message: String,
    path: String,
}

pub struct JobRowView {
    id: JobId,
    status: &'static str,
    revision: u64,
    commit: String,
    commit_href: Option<String>,
    subject: String,
    image: Option<String>,
    updated: When,
    error: Option<String>,
    /// The short digest of the base the job pulled, and why its revision exists.
    base_digest: Option<String>,
    base_short: String,
    cause: Option<String>,
}

pub struct CommitView {
    short: String,
    href: Option<String>,
    subject: String,
    author: String,
    at: When,
}

impl CommitView {
    fn of(state: &AppState, rev: &Revision) -> CommitView {
        CommitView {
            short: short(&rev.commit.sha).to_string(),
            href: state.inner.commit_href(&rev.commit.sha),
            subject: rev.commit.subject.clone(),
            author: rev.commit.author.clone(),
            at: When::at(rev.commit.committed_at),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "spec.html", config = "web/askama.toml")]
struct SpecPage {
    layout: Layout,
    name: String,
    status: &'static str,
    image: Option<String>,
    path: String,
    path_href: Option<String>,
    deleted: bool,
    revision: u64,
    commit: Option<CommitView>,
    updated: When,
    yaml: Vec<String>,
    errors: Vec<DiagView>,
    /// The file is a symlink or submodule Kiln does not read (an `unreadable-file` error).
    unreadable: bool,
    jobs: Vec<JobRowView>,
    pager: Pager,
    /// `displayName` and how the catalogue lists the image, as last committed.
    display_name: Option<String>,
    listed: String,
    /// The current revision's `tests:` (their results are in each job's log).
    tests: Vec<String>,
    /// "base outdated since …" (`web/base.rs`).
    base_outdated: Option<super::base::OutdatedNote>,
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    page: Option<String>,
}

pub(super) async fn spec_page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, PageError> {
    let store = &state.store;
    let record = store
        .spec(&name)?
        .ok_or_else(|| PageError::not_found(format!("No spec is named “{name}”.")))?;
    let current = store.revision(&name, record.revision)?;
    let status = if !record.valid {
        "invalid"
    } else {
        record.latest_status.map_or("none", JobStatus::as_str)
    };
    let job_total = store.job_count_of_spec(&name);
    let pages = job_total.div_ceil(JOBS_PAGE).max(1);
    let page = page_number(query.page.as_deref()).min(pages);
    let skip = (page - 1) * JOBS_PAGE;
    let jobs = store.jobs_of_spec(&name, skip, JOBS_PAGE)?;
    let now = now();
    let mut subjects: std::collections::HashMap<u64, String> = Default::default();
    let mut rows = Vec::with_capacity(jobs.len());
    for job in &jobs {
        if let std::collections::hash_map::Entry::Vacant(slot) = subjects.entry(job.revision) {
            let subject = if current.as_ref().is_some_and(|r| r.number == job.revision) {
                current.as_ref().map(|r| r.commit.subject.clone())
            } else {
                store
                    .revision(&name, job.revision)?
                    .map(|r| r.commit.subject)
            };
            slot.insert(subject.unwrap_or_default());
        }
        let base_digest = super::base::job_base(&state, job)?.map(|b| b.digest);
        rows.push(JobRowView {
            id: job.id,
            status: job.status.as_str(),
            revision: job.revision,
            commit: short(&job.commit).to_string(),
            commit_href: state.inner.commit_href(&job.commit),
            subject: subjects.get(&job.revision).cloned().unwrap_or_default(),
            image: job.image.clone().filter(|_| job.status.has_image()),
            updated: When::at_now(job.updated_at, now),
            error: job.error.clone(),
            base_short: base_digest
                .as_deref()
                .map(crate::store::base_digests::short_digest)
                .unwrap_or_default(),
            base_digest,
            cause: store.revision_cause(&name, job.revision)?.text(),
        });
    }
    let href = |p: usize| {
        if p > 1 {
            format!("/specs/{}?page={p}#jobs", encode(&name))
        } else {
            format!("/specs/{}#jobs", encode(&name))
        }
    };
    let listing = store.listing(&name)?.unwrap_or_default();
    let listed = crate::catalog::listed_as(&listing);
    let tests = current
        .as_ref()
        .and_then(|r| crate::spec::parse_spec(&r.path, r.yaml.as_bytes(), &Default::default()).spec)
        .map(|s| s.tests)
        .unwrap_or_default();
    let view = SpecPage {
        base_outdated: super::base::outdated_note(&state, &name)?,
        display_name: listing.display_name.clone(),
        listed,
        tests,
        layout: Layout::new(&state, name.clone(), "specs"),
        status,
        image: record.latest_image.clone(),
        path_href: state.inner.file_href(&record.path),
        path: record.path.clone(),
        deleted: record.deleted,
        revision: record.revision,
        commit: current.as_ref().map(|r| CommitView::of(&state, r)),
        updated: When::at(record.updated_at),
        yaml: current
            .as_ref()
            .map(|r| highlight::yaml(&r.yaml))
            .unwrap_or_default(),
        unreadable: current.as_ref().is_some_and(|r| {
            r.errors
                .iter()
                .any(|d| d.rule == crate::spec::Rule::UnreadableFile)
        }),
        errors: current
            .as_ref()
            .map(|r| {
                r.errors
                    .iter()
                    .map(|d| DiagView {
                        line: d.line,
                        column: d.column,
                        rule: d.rule.to_string(),
                        message: d.message.clone(),
                        path: d.path.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        pager: Pager {
            page,
            pages,
            first: if job_total == 0 { 0 } else { skip + 1 },
            last: skip + rows.len(),
            total: thousands(job_total),
            prev: (page > 1).then(|| href(page - 1)),
            next: (page < pages).then(|| href(page + 1)),
        },
        jobs: rows,
        name,
    };
    Ok(view.into_response())
}

// ---------------------------------------------------------------------------------------
// `/jobs/{id}`

pub struct LogRow {
    /// 1-based, as shown.
    n: u64,
    html: String,
}

pub struct Fact {
    label: &'static str,
    value: String,
    when: Option<When>,
    /// RFC 3339 start of a duration that is still growing (the script keeps it counting).
    since: Option<String>,
}

pub struct PackageList {
    manager: &'static str,
    items: Vec<(String, String)>,
}

#[derive(Template, WebTemplate)]
#[template(path = "job.html", config = "web/askama.toml")]
struct JobPage {
    layout: Layout,
    id: JobId,
    spec: String,
    spec_href: String,
    status: &'static str,
    final_status: bool,
    revision: u64,
    commit: Option<CommitView>,
    commit_short: String,
    commit_href: Option<String>,
    image: Option<String>,
    digest: Option<String>,
    error: Option<String>,
    reused_from: Option<JobId>,
    /// The build worker of the latest attempt.
    worker: Option<String>,
    /// The base image the job pulled (`web/base.rs`), and why its revision exists when it is
    /// not a commit ("base image updated: … → …").
    base: Option<super::base::BaseView>,
    cause: Option<String>,
    facts: Vec<Fact>,
    spec_yaml: Vec<String>,
    dockerfile: Vec<String>,
    packages: Vec<PackageList>,
    package_count: usize,
    log: Vec<LogRow>,
    log_total: u64,
    /// 0-based number of the first line shown.
    log_from: u64,
    older_href: Option<String>,
    newer_href: Option<String>,
    latest_href: Option<String>,
    /// SSE URL when the page shows the end of a job that can still change.
    live: Option<String>,
    /// 0-based number of the next line the live tail expects.
    log_next: u64,
    empty_log_hint: &'static str,
    /// "What changed" since the previous build, and the SBOM link (`changes.rs`).
    changes: Option<super::changes::ChangesView>,
}

#[derive(Deserialize, Default)]
pub struct LogQuery {
    from: Option<String>,
}

fn timing_facts(job: &Job) -> Vec<Fact> {
    let t = now();
    let mut facts = vec![Fact {
        label: "Created",
        value: String::new(),
        when: Some(When::at(job.created_at)),
        since: None,
    }];
    if let Some(started) = job.started_at {
        facts.push(Fact {
            label: "Started",
            value: format!("after {} in the queue", duration(started - job.created_at)),
            when: Some(When::at(started)),
            since: None,
        });
    }
    match (job.started_at, job.finished_at) {
        (_, Some(finished)) => facts.push(Fact {
            label: "Finished",
            value: match job.started_at {
                Some(started) => format!("took {}", duration(finished - started)),
                None => String::new(),
            },
            when: Some(When::at(finished)),
            since: None,
        }),
        (Some(started), None) => facts.push(Fact {
            label: "Running for",
            value: duration(t - started),
            when: None,
            since: Some(crate::model::rfc3339(started)),
        }),
        (None, None) => facts.push(Fact {
            label: "Waiting for",
            value: duration(t - job.created_at),
            when: None,
            since: Some(crate::model::rfc3339(job.created_at)),
        }),
    }
    facts.push(Fact {
        label: "Attempts",
        value: job.attempts.to_string(),
        when: None,
        since: None,
    });
    facts
}

pub(super) async fn job_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, PageError> {
    let store = &state.store;
    let missing = || PageError::not_found(format!("No job has the id “{id}”."));
    let job_id: JobId = id.parse().map_err(|_| missing())?;
    let job = store.job(job_id)?.ok_or_else(missing)?;
    let revision = store.revision(&job.spec, job.revision)?;
    let installed = store.installed(job_id)?;

    let total = store.log_len(job_id)?;
    let tail_from = total.saturating_sub(LOG_PAGE as u64);
    let from = query
        .from
        .as_deref()
        .and_then(|f| f.trim().parse::<u64>().ok())
        .map_or(tail_from, |f| f.min(tail_from));
    let lines = store.log_lines(job_id, from, LOG_PAGE)?;
    let log_next = lines.last().map_or(from, |(n, _)| n + 1);
    let at_end = log_next >= total;
    let log: Vec<LogRow> = lines
        .into_iter()
        .map(|(n, line)| LogRow {
            n: n + 1,
            html: line_to_html(&line.text),
        })
        .collect();
    let page_href = |f: u64| format!("/jobs/{job_id}?from={f}#log");

    let mut packages = Vec::new();
    if let Some(p) = installed {
        for (manager, list) in [("apt", p.apt), ("pip", p.pip), ("conda", p.conda)] {
            if !list.is_empty() {
                packages.push(PackageList {
                    manager,
                    items: list.into_iter().map(|p| (p.name, p.version)).collect(),
                });
            }
        }
    }
    let empty_log_hint = match job.status {
        JobStatus::Queued if state.inner.no_build => {
            "Builds are disabled on this Kiln (observe only): this job will not run here."
        }
        JobStatus::Queued => {
            "Waiting for a free worker. Lines appear here as soon as the build starts."
        }
        JobStatus::Running => "Starting… lines appear here as the build prints them.",
        JobStatus::Reused => "This job re-used an earlier image; nothing was built.",
        JobStatus::Cancelled => "The job was cancelled before it printed anything.",
        _ => "This job printed nothing.",
    };
    let view = JobPage {
        layout: Layout::new(&state, format!("Job {job_id} · {}", job.spec), "specs"),
        id: job_id,
        spec_href: format!("/specs/{}", encode(&job.spec)),
        status: job.status.as_str(),
        final_status: job.status.is_final(),
        revision: job.revision,
        commit: revision.as_ref().map(|r| CommitView::of(&state, r)),
        commit_short: short(&job.commit).to_string(),
        commit_href: state.inner.commit_href(&job.commit),
        image: job.image.clone(),
        digest: job.image_digest.clone(),
        error: job.error.clone(),
        reused_from: job.reused_from,
        worker: store.job_worker(job_id)?,
        base: super::base::job_base(&state, &job)?,
        cause: store.revision_cause(&job.spec, job.revision)?.text(),
        facts: timing_facts(&job),
        spec_yaml: revision
            .as_ref()
            .map(|r| highlight::yaml(&r.yaml))
            .unwrap_or_default(),
        dockerfile: highlight::dockerfile(&job.dockerfile),
        package_count: packages.iter().map(|p| p.items.len()).sum(),
        packages,
        log,
        log_total: total,
        log_from: from,
        older_href: (from > 0).then(|| page_href(from.saturating_sub(LOG_PAGE as u64))),
        newer_href: (!at_end).then(|| page_href(log_next)),
        latest_href: (!at_end).then(|| format!("/jobs/{job_id}#log")),
        // Live while the job can still change here (not a queued job on an observe-only Kiln).
        live: (at_end
            && !job.status.is_final()
            && !(state.inner.no_build && job.status == JobStatus::Queued))
            .then(|| format!("/jobs/{job_id}/events")),
        log_next,
        empty_log_hint,
        changes: super::changes::load(store, job_id)?.map(super::changes::ChangesView::of),
        spec: job.spec,
    };
    Ok(view.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_links_keep_the_filter() {
        assert_eq!(
            list_href("a b", Some("failed"), true, 2),
            "/?q=a%20b&status=failed&deleted=1&page=2"
        );
        assert_eq!(list_href("", None, false, 1), "/");
    }
}
