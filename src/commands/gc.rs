//! `kiln gc`: one retention pass on a stopped data dir, then optionally a compaction.

use super::{CommandError, io, megabytes};
use crate::config::{Config, DataDirArgs, RetentionArgs};
use crate::store::backup::Compaction;
use crate::store::{GcReport, Store};
use std::fmt;

/// What `kiln gc` did, printed as its report.
#[derive(Debug)]
pub struct GcReportText {
    pub policy_active: bool,
    pub report: GcReport,
    pub elapsed_ms: u128,
    pub before_bytes: u64,
    pub after_bytes: u64,
    /// The compaction and its duration, with `--compact`.
    pub compaction: Option<(Compaction, u128)>,
}

/// Blocking, outside any runtime: the data dir must not be in use.
pub fn gc(
    data: &DataDirArgs,
    retention: &RetentionArgs,
    compact: bool,
) -> Result<GcReportText, CommandError> {
    let config = Config::resolve_data_dir(data, retention)?;
    let dir = &config.data_dir;
    if !dir.join("db").exists() {
        return Err(CommandError::NoStore(dir.clone()));
    }
    let policy = crate::retention::policy(&config.retention);
    let before_bytes = crate::store::gc::disk_usage(dir).map_err(io("cannot measure", dir))?;
    let store = Store::open_with(dir, &config.store_options())?;
    let started = std::time::Instant::now();
    let report = store.gc(&policy, crate::model::now())?;
    let elapsed_ms = started.elapsed().as_millis();
    drop(store);
    let after_bytes = crate::store::gc::disk_usage(dir).map_err(io("cannot measure", dir))?;
    let compaction = if compact {
        let started = std::time::Instant::now();
        let done = crate::store::backup::compact(dir)?;
        Some((done, started.elapsed().as_millis()))
    } else {
        None
    };
    Ok(GcReportText {
        policy_active: policy.is_active(),
        report,
        elapsed_ms,
        before_bytes,
        after_bytes,
        compaction,
    })
}

impl fmt::Display for GcReportText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.policy_active {
            writeln!(
                f,
                "kiln gc: no retention configured (log_retention_days, max_jobs_per_spec): only leftovers are removed"
            )?;
        }
        let r = &self.report;
        writeln!(
            f,
            "kiln gc: {} job(s) pruned ({} scanned, {} protected), {} log line(s), {} installed-package record(s), {} built-image entr(y/ies) removed in {} ms",
            r.jobs_pruned,
            r.jobs_scanned,
            r.jobs_protected,
            r.log_lines_pruned,
            r.installed_pruned,
            r.built_entries_pruned,
            self.elapsed_ms
        )?;
        writeln!(
            f,
            "data dir: {} before, {} after on disk",
            megabytes(self.before_bytes),
            megabytes(self.after_bytes)
        )?;
        match &self.compaction {
            Some((done, ms)) => writeln!(
                f,
                "compacted: {} -> {} in {ms} ms ({} records kept)",
                megabytes(done.before_bytes),
                megabytes(done.after_bytes),
                done.records
            ),
            None if r.jobs_pruned > 0 => writeln!(
                f,
                "sled keeps freed space for its own reuse; `kiln gc --compact` gives it back to the file system"
            ),
            None => Ok(()),
        }
    }
}
