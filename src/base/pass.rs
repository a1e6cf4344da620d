//! One base check pass against the store and the registries: gather each live spec's base
//! (blocking thread), ask each distinct base's registry once ([`super::digest`]), decide
//! ([`super::check`], pure), then record outdated bases and hand base updates to the sync
//! pass through the [`BaseMonitor`]'s inbox.

use super::check::{self, Decision, Request, SpecBase};
use super::digest::{self, DigestError};
use super::revision::BaseUpdate;
use super::status::BaseMonitor;
use crate::docker::auth::RegistryAuths;
use crate::dockerfile;
use crate::model::{SpecRecord, Timestamp, now};
use crate::reconcile::StateView;
use crate::spec::SpecContext;
use crate::store::base_digests::RevisionCause;
use crate::store::{Store, StoreError};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use thiserror::Error;

/// Requests in flight at once during a pass.
const PARALLEL_REQUESTS: usize = 8;

#[derive(Debug, Error)]
pub enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the registry client: {0}")]
    Client(String),
    #[error("internal error: base check worker stopped: {0}")]
    Worker(String),
}

/// What a pass needs besides the store.
#[derive(Clone)]
pub struct CheckSettings {
    /// `base_check_interval` (zero: off).
    pub interval: Duration,
    /// `rebuild_on_base_update`: for specs that do not say.
    pub rebuild_default: bool,
    /// Pull secret name → registry host (`pull_secrets` in kiln.toml).
    pub pull_secrets: BTreeMap<String, String>,
    /// The Docker config credentials the pull secrets name.
    pub auths: RegistryAuths,
    pub spec_context: SpecContext,
}

/// What one pass did.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub requests: usize,
    pub decisions: Vec<Decision>,
    /// One line per failed request.
    pub errors: Vec<String>,
    /// The longest `Retry-After` a registry asked for.
    pub retry_after: Option<Duration>,
    pub updates: usize,
}

/// Run one pass.
pub async fn check_once(
    store: &Store,
    monitor: &BaseMonitor,
    settings: &CheckSettings,
) -> Result<PassReport, PassError> {
    let (s, ctx, default) = (
        store.clone(),
        settings.spec_context.clone(),
        settings.rebuild_default,
    );
    let (inputs, recorded) = tokio::task::spawn_blocking(move || gather(&s, &ctx, default))
        .await
        .map_err(|e| PassError::Worker(e.to_string()))??;
    let requests = check::requests(&inputs);
    let client = digest::client().map_err(|e| PassError::Client(e.to_string()))?;
    let results: Vec<(Request, Result<String, DigestError>)> =
        futures_util::stream::iter(requests.iter().cloned())
            .map(|request| {
                let client = &client;
                async move {
                    let result = match credential_for(settings, request.pull_secret.as_deref()) {
                        Ok(credential) => digest::resolve(client, &request.base, credential).await,
                        Err(e) => Err(e),
                    };
                    (request, result)
                }
            })
            .buffer_unordered(PARALLEL_REQUESTS)
            .collect()
            .await;
    let mut report = PassReport {
        requests: requests.len(),
        ..PassReport::default()
    };
    let mut answers = BTreeMap::new();
    for (request, result) in results {
        match result {
            Ok(digest) => {
                answers.insert(request, Ok(digest));
            }
            Err(e) => {
                report.retry_after = report.retry_after.max(e.retry_after());
                report.errors.push(format!("{}: {e}", request.base));
                answers.insert(request, Err(e.to_string()));
            }
        }
    }
    report.errors.sort();
    let at = now();
    report.decisions = check::decide(&inputs, &answers, at);
    let (s, decisions) = (store.clone(), report.decisions.clone());
    let live: BTreeSet<String> = inputs.iter().map(|i| i.spec.clone()).collect();
    let updates = tokio::task::spawn_blocking(move || record(&s, &decisions, &live))
        .await
        .map_err(|e| PassError::Worker(e.to_string()))??;
    report.updates = updates.len();
    monitor.offer(updates);
    monitor.update_status(|st| {
        st.recorded = recorded;
        st.requests = report.requests;
        st.checked = report
            .decisions
            .iter()
            .filter(|d| {
                matches!(
                    d,
                    Decision::Rebuild { .. } | Decision::Outdated { .. } | Decision::Current { .. }
                )
            })
            .count();
        st.updates = report.updates;
        st.outdated = report
            .decisions
            .iter()
            .filter(|d| matches!(d, Decision::Rebuild { .. } | Decision::Outdated { .. }))
            .count();
    });
    Ok(report)
}

/// The pull secret's credential; a secret that is not configured fails its request.
fn credential_for<'a>(
    settings: &'a CheckSettings,
    secret: Option<&str>,
) -> Result<Option<&'a crate::docker::auth::Credential>, DigestError> {
    let Some(name) = secret else {
        return Ok(None);
    };
    let missing = |message: String| DigestError::Protocol {
        registry: name.to_string(),
        message,
    };
    let host = settings
        .pull_secrets
        .get(name)
        .ok_or_else(|| missing(format!("pull secret `{name}` is not configured in Kiln")))?;
    settings.auths.for_registry(host).map(Some).ok_or_else(|| {
        missing(format!(
            "pull secret `{name}`: the docker config has no credential for registry {host}"
        ))
    })
}

/// Every live, valid spec with a successful build, as the pure pass sees it; and when each
/// latest image's base digest was recorded.
fn gather(
    store: &Store,
    ctx: &SpecContext,
    rebuild_default: bool,
) -> Result<(Vec<SpecBase>, BTreeMap<String, Timestamp>), StoreError> {
    let mut inputs = Vec::new();
    let mut recorded = BTreeMap::new();
    let records: Vec<SpecRecord> = store.specs().collect::<Result<_, _>>()?;
    for record in records.into_iter().filter(|r| !r.deleted && r.valid) {
        let Some(job) = record
            .latest_image_job
            .map(|id| store.job(id))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        let Some(base) = dockerfile::base_image(&job.dockerfile) else {
            continue;
        };
        let base_digest = match store.base_digest(job.id)? {
            Some(b) => Some(b),
            // A re-use carries the image (and so the base) of the job it re-used.
            None => match job.reused_from {
                Some(from) => store.base_digest(from)?,
                None => None,
            },
        };
        if let Some(b) = &base_digest {
            recorded.insert(record.name.clone(), b.recorded_at);
        }
        let rebuild = store
            .revision(&record.name, record.revision)?
            .and_then(|rev| crate::spec::parse_spec(&rev.path, rev.yaml.as_bytes(), ctx).spec)
            .and_then(|spec| spec.rebuild_on_base_update)
            .unwrap_or(rebuild_default);
        let updated_to = match store.revision_cause(&record.name, record.revision)? {
            RevisionCause::BaseUpdate { to, .. } => Some(to),
            RevisionCause::Commit => None,
        };
        inputs.push(SpecBase {
            spec: record.name.clone(),
            base: base.to_string(),
            pull_secret: dockerfile::pull_secret(&job.dockerfile).map(str::to_string),
            built_on: base_digest.map(|b| b.digest),
            rebuild,
            busy: !StateView::active_jobs(store, &record.name)?.is_empty(),
            updated_to,
        });
    }
    Ok((inputs, recorded))
}

/// Write outdated records (and clear those of specs that are current or gone); return the
/// updates for the sync pass.
fn record(
    store: &Store,
    decisions: &[Decision],
    live: &BTreeSet<String>,
) -> Result<Vec<BaseUpdate>, StoreError> {
    let mut updates = Vec::new();
    for decision in decisions {
        match decision {
            Decision::Rebuild {
                spec,
                from,
                to,
                outdated,
            } => {
                store.set_base_outdated(spec, Some(outdated))?;
                let Some(current) = store.spec(spec)? else {
                    continue;
                };
                if let Some(revision) = store.revision(spec, current.revision)? {
                    tracing::info!(spec = %spec, from = %from, to = %to, "base image moved; queueing a base-update revision");
                    updates.push(BaseUpdate {
                        revision,
                        from: from.clone(),
                        to: to.clone(),
                    });
                }
            }
            Decision::Outdated { spec, outdated } => {
                store.set_base_outdated(spec, Some(outdated))?;
            }
            Decision::Current { spec } | Decision::Pinned { spec } => {
                store.set_base_outdated(spec, None)?;
            }
            Decision::Skipped { .. } | Decision::Failed { .. } => {}
        }
    }
    for (spec, _) in store.all_base_outdated()? {
        if !live.contains(&spec) {
            store.set_base_outdated(&spec, None)?;
        }
    }
    Ok(updates)
}
