//! `kiln restore`: a backup into an empty (or new) data dir.

use super::{CommandError, io};
use crate::store::backup::BackupSummary;
use std::fmt;
use std::path::{Path, PathBuf};

/// What `kiln restore` did, printed as its report.
#[derive(Debug)]
pub struct RestoreReport {
    pub input: PathBuf,
    pub data_dir: PathBuf,
    pub summary: BackupSummary,
    pub elapsed_ms: u128,
}

/// Blocking, outside any runtime.
pub fn restore(input: &Path, data_dir: &Path) -> Result<RestoreReport, CommandError> {
    let started = std::time::Instant::now();
    let file = std::fs::File::open(input).map_err(io("cannot open", input))?;
    let summary = crate::store::backup::restore(std::io::BufReader::new(file), data_dir).map_err(
        |source| CommandError::Restore {
            path: input.to_path_buf(),
            source,
        },
    )?;
    Ok(RestoreReport {
        input: input.to_path_buf(),
        data_dir: data_dir.to_path_buf(),
        summary,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "kiln restore: {} into {}: {} job(s), {} log line(s), {} record(s), written by kiln {} at {} in {} ms",
            self.input.display(),
            self.data_dir.display(),
            s.jobs,
            s.log_lines,
            s.records,
            s.kiln_version,
            crate::model::rfc3339(s.created_at),
            self.elapsed_ms
        )?;
        writeln!(
            f,
            "jobs that were running when the backup was taken are re-queued when `kiln serve` starts on it"
        )
    }
}
