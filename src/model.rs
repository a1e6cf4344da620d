//! The records Kiln keeps: specs, their revisions and their build jobs.
//!
//! These are plain data shared by the reconcile step (which decides them), the store (which
//! keeps them) and the web layer (which shows them). They hold no secrets: a pull secret is a
//! credential *name*, and registry passwords never reach a record.

use crate::spec::Diagnostic;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// A job id: increasing, assigned by the store.
pub type JobId = u64;

/// Unix time in seconds, UTC. Records keep integers; the API renders RFC 3339.
pub type Timestamp = i64;

pub fn now() -> Timestamp {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 UTC text for a timestamp (`2026-11-23T15:39:34Z`).
pub fn rfc3339(ts: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

/// RFC 3339 UTC text with milliseconds for a Unix time in milliseconds
/// (`2026-11-23T15:39:34.123Z`), for log lines.
pub fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The commit a revision came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMeta {
    pub sha: String,
    pub author: String,
    pub committed_at: Timestamp,
    pub subject: String,
}

impl CommitMeta {
    pub fn short(&self) -> &str {
        self.sha.get(..7).unwrap_or(&self.sha)
    }
}

/// One revision of one spec: a commit at which its meaning changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub spec: String,
    /// 1, 2, 3 … per spec, in first-parent history order.
    pub number: u64,
    pub commit: CommitMeta,
    /// Path of the file in the repository at this revision.
    pub path: String,
    /// Canonical digest; `None` when the spec is invalid at this revision.
    pub digest: Option<String>,
    /// Validation problems; empty when valid.
    pub errors: Vec<Diagnostic>,
    /// The file exactly as committed.
    pub yaml: String,
}

impl Revision {
    pub fn valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// What Kiln knows about a spec now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpecRecord {
    pub name: String,
    pub path: String,
    /// Newest revision number (0 never happens for a stored spec).
    pub revision: u64,
    /// Canonical digest of the newest revision, or a hash of the raw file when it is invalid,
    /// so that an unchanged invalid file makes no new revision either.
    pub content_key: String,
    pub valid: bool,
    pub deleted: bool,
    /// The newest job of this spec.
    pub latest_job: Option<JobId>,
    /// That job's status, kept here so listing 10,000 specs reads no job records.
    pub latest_status: Option<JobStatus>,
    /// The image of the newest successful (built or re-used) job: what users should pull.
    pub latest_image: Option<String>,
    /// The job that produced `latest_image`.
    pub latest_image_job: Option<JobId>,
    pub updated_at: Timestamp,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Reused,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Reused,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Reused => "reused",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job will never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// Whether the job produced a usable image.
    pub fn has_image(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Reused)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job means to produce its image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPlan {
    /// Build from the rendered Dockerfile.
    Build,
    /// The digest was built before by this job: retag and push its image instead.
    Reuse { from: JobId },
}

/// One attempt at producing the image of one revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: String,
    pub revision: u64,
    pub commit: String,
    /// Canonical digest of the spec being built.
    pub digest: String,
    pub plan: JobPlan,
    pub status: JobStatus,
    /// Image reference (`registry/name:rN-sha7`) once known.
    pub image: Option<String>,
    /// Registry (or local image) digest once pushed / built.
    pub image_digest: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Why the job failed or was cancelled.
    pub error: Option<String>,
    /// The job whose image was re-used, when `status` is `reused`.
    pub reused_from: Option<JobId>,
    pub attempts: u32,
    /// Tags already pushed to the registry, so a retried or recovered job never pushes twice.
    pub pushed: Vec<String>,
    /// The rendered Dockerfile (stored with the job so the dashboard shows what was built).
    pub dockerfile: String,
}

/// One installed package with its version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
}

/// What is inside a built image, as its own package managers report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackages {
    pub apt: Vec<InstalledPackage>,
    pub pip: Vec<InstalledPackage>,
    pub conda: Vec<InstalledPackage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_have_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_448_374_123), "2026-11-23T15:39:34.123Z");
        assert_eq!(rfc3339(1_795_448_374), "2026-11-23T15:39:34Z");
    }
}
