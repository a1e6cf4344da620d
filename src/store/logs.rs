//! Job logs: one sled entry per line, key = job id ++ line number (both big-endian), so a
//! prefix scan reads a log in order, a range reads a page, and `next_back` finds the end —
//! a 200 MB log is never loaded whole.

use super::codec::{decode, encode};
use super::{Store, StoreError, StoreEvent};
use crate::model::JobId;
use serde::{Deserialize, Serialize};

/// One log line with the time Kiln received it (Unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub at_ms: i64,
    pub text: String,
}

fn key(job: JobId, line: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..].copy_from_slice(&line.to_be_bytes());
    k
}

impl Store {
    /// Number of lines stored for a job (= the next line number).
    pub fn log_len(&self, job: JobId) -> Result<u64, StoreError> {
        match self.logs.scan_prefix(job.to_be_bytes()).keys().next_back() {
            Some(k) => {
                let k = k?;
                let line = k
                    .get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Ok(line + 1)
            }
            None => Ok(0),
        }
    }

    /// Append lines after the last stored one; returns the new length. Flushed before
    /// returning, so an acknowledged line survives a crash.
    pub async fn append_log(&self, job: JobId, lines: &[LogLine]) -> Result<u64, StoreError> {
        if lines.is_empty() {
            return self.log_len(job);
        }
        let start = self.log_len(job)?;
        let mut batch = sled::Batch::default();
        for (i, line) in lines.iter().enumerate() {
            batch.insert(&key(job, start + i as u64), encode(line)?);
        }
        self.logs.apply_batch(batch)?;
        self.db.flush_async().await?;
        let next_line = start + lines.len() as u64;
        let _ = self.events.send(StoreEvent::Log { job, next_line });
        Ok(next_line)
    }

    /// Lines `from..from+limit` of a job's log, with their numbers.
    pub fn log_lines(
        &self,
        job: JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogLine)>, StoreError> {
        let end = key(job, u64::MAX);
        self.logs
            .range(key(job, from)..=end)
            .take(limit)
            .map(|entry| {
                let (k, v) = entry?;
                let line = k
                    .get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Ok((line, decode("logs", &v)?))
            })
            .collect()
    }

    /// Remove a job's whole log (retention).
    pub fn delete_log(&self, job: JobId) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self.logs.scan_prefix(job.to_be_bytes()).keys() {
            batch.remove(k?);
        }
        self.logs.apply_batch(batch)?;
        Ok(())
    }
}
