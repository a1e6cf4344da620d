//! Job logs: compressed chunks of lines, key = job id ++ number of the chunk's first line
//! (both big-endian), so a prefix scan reads a log in order, the entry at or before
//! `job ++ n` holds line `n`, and the last entry gives the length — a 200 MB log is never
//! loaded whole.
//!
//! Why chunks and why compressed: sled keeps what it writes in memory well past its
//! `cache_capacity` (RSS grows with the bytes written, spacejam/sled#986, #1093), and it
//! writes every key with its own overhead. One key per line made a 200 MB build log cost
//! ~220 MiB of RSS, 2.3 GB of disk writes and a 600 MB data dir. A chunk holds up to
//! [`CHUNK_LINES`] lines as one zstd frame: build logs compress 5–20×, so what sled holds
//! and writes shrinks by that factor, and there are ~1,000× fewer keys.
//!
//! Value layout: the chunk's line count (u32, big-endian) — so the length needs no
//! decompression — then a zstd frame of the postcard-encoded `Vec<LogLine>`. The last chunk
//! of a log is extended in place while it is small (a live build adds a few lines at a time).
//!
//! Live viewers: every append also broadcasts the new lines once, as an `Arc<LogBatch>`
//! ([`Store::subscribe_logs`]), so N viewers of a running build share one copy instead of
//! each decompressing the chunk again; they read the store only for history and after
//! falling behind.

use super::codec::{decode, encode};
use super::{Store, StoreError, StoreEvent};
use crate::model::JobId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One log line with the time Kiln received it (Unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub at_ms: i64,
    pub text: String,
}

/// Lines just appended to a job's log, numbered from `first_line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogBatch {
    pub job: JobId,
    pub first_line: u64,
    pub lines: Vec<LogLine>,
}

impl LogBatch {
    /// The number after the batch's last line.
    pub fn end(&self) -> u64 {
        self.first_line + self.lines.len() as u64
    }
}

/// Lines per chunk at most.
const CHUNK_LINES: usize = 1000;
/// The last chunk is extended while its text is below this many bytes.
const CHUNK_BYTES: usize = 128 * 1024;
/// zstd level: 1 is the fastest; build logs are repetitive enough that it compresses well.
const ZSTD_LEVEL: i32 = 1;

pub(super) fn key(job: JobId, line: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..].copy_from_slice(&line.to_be_bytes());
    k
}

fn line_of(key: &[u8]) -> u64 {
    key.get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn corrupt(message: String) -> StoreError {
    StoreError::Corrupt {
        tree: "log_chunks",
        message,
    }
}

/// The number of lines in an encoded chunk, from its header.
pub(super) fn chunk_len(value: &[u8]) -> Result<u64, StoreError> {
    value
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| u64::from(u32::from_be_bytes(b)))
        .ok_or_else(|| corrupt("chunk without a header".into()))
}

pub(super) fn encode_chunk(lines: &[LogLine]) -> Result<Vec<u8>, StoreError> {
    let count = u32::try_from(lines.len()).map_err(|_| corrupt("chunk too long".into()))?;
    let plain = encode(&lines)?;
    let packed = zstd::bulk::compress(&plain, ZSTD_LEVEL).map_err(|e| corrupt(e.to_string()))?;
    let mut value = Vec::with_capacity(4 + packed.len());
    value.extend_from_slice(&count.to_be_bytes());
    value.extend_from_slice(&packed);
    Ok(value)
}

fn decode_chunk(value: &[u8]) -> Result<Vec<LogLine>, StoreError> {
    let count = chunk_len(value)? as usize;
    let plain = zstd::stream::decode_all(&value[4..]).map_err(|e| corrupt(e.to_string()))?;
    let lines: Vec<LogLine> = decode("log_chunks", &plain)?;
    if lines.len() != count {
        return Err(corrupt(format!(
            "chunk says {count} lines, holds {}",
            lines.len()
        )));
    }
    Ok(lines)
}

fn text_bytes(lines: &[LogLine]) -> usize {
    lines.iter().map(|l| l.text.len()).sum()
}

impl Store {
    /// Number of lines stored for a job (= the next line number).
    pub fn log_len(&self, job: JobId) -> Result<u64, StoreError> {
        match self.logs.scan_prefix(job.to_be_bytes()).next_back() {
            Some(entry) => {
                let (k, v) = entry?;
                Ok(line_of(&k) + chunk_len(&v)?)
            }
            None => Ok(0),
        }
    }

    /// Append lines after the last stored one; returns the new length. Flushed before
    /// returning, so an acknowledged line survives a crash.
    ///
    /// One writer per job (the job's log task) is assumed: the last chunk is read, extended
    /// and written back without a transaction.
    pub async fn append_log(&self, job: JobId, lines: &[LogLine]) -> Result<u64, StoreError> {
        if lines.is_empty() {
            let store = self.clone();
            return super::blocking(move || store.log_len(job)).await;
        }
        let (store, owned) = (self.clone(), lines.to_vec());
        let (first_line, next_line, owned) = super::blocking(move || {
            let _mark = store.mark_writing();
            let (first, next) = store.append_log_blocking(job, &owned)?;
            Ok((first, next, owned))
        })
        .await?;
        self.db.flush_async().await?;
        let _ = self.events.send(StoreEvent::Log { job, next_line });
        let _ = self.lines.send(Arc::new(LogBatch {
            job,
            first_line,
            lines: owned,
        }));
        Ok(next_line)
    }

    /// Read the last chunk, extend it, write: returns the number of the first appended line
    /// and the new length. zstd and sled's batch, so on a blocking thread.
    fn append_log_blocking(&self, job: JobId, lines: &[LogLine]) -> Result<(u64, u64), StoreError> {
        let last = self.logs.scan_prefix(job.to_be_bytes()).next_back();
        let (mut first, mut chunk) = match last {
            None => (0, Vec::new()),
            Some(entry) => {
                let (k, v) = entry?;
                let first = line_of(&k);
                let count = chunk_len(&v)?;
                if (count as usize) < CHUNK_LINES {
                    let lines = decode_chunk(&v)?;
                    if text_bytes(&lines) < CHUNK_BYTES {
                        (first, lines)
                    } else {
                        (first + count, Vec::new())
                    }
                } else {
                    (first + count, Vec::new())
                }
            }
        };
        let first_appended = first + chunk.len() as u64;
        let mut batch = sled::Batch::default();
        let mut bytes = text_bytes(&chunk);
        for line in lines {
            if chunk.len() >= CHUNK_LINES || bytes >= CHUNK_BYTES {
                batch.insert(&key(job, first), encode_chunk(&chunk)?);
                first += chunk.len() as u64;
                chunk.clear();
                bytes = 0;
            }
            bytes += line.text.len();
            chunk.push(line.clone());
        }
        batch.insert(&key(job, first), encode_chunk(&chunk)?);
        self.logs.apply_batch(batch)?;
        Ok((first_appended, first + chunk.len() as u64))
    }

    /// Lines `from..from+limit` of a job's log, with their numbers.
    pub fn log_lines(
        &self,
        job: JobId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LogLine)>, StoreError> {
        // The chunk holding line `from` starts at or before it.
        let start = match self.logs.range(key(job, 0)..=key(job, from)).next_back() {
            Some(entry) => line_of(&entry?.0),
            None => 0,
        };
        let mut out = Vec::new();
        for entry in self.logs.range(key(job, start)..=key(job, u64::MAX)) {
            let (k, v) = entry?;
            let first = line_of(&k);
            if first + chunk_len(&v)? <= from {
                continue;
            }
            for (n, line) in (first..).zip(decode_chunk(&v)?) {
                if n < from {
                    continue;
                }
                if out.len() == limit {
                    return Ok(out);
                }
                out.push((n, line));
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
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

/// Schema 2 → 3: rewrites the one-line-per-key `logs` tree into chunks in `log_chunks`, in
/// batches of whole chunks. The caller drops `logs` and records schema 3 only afterwards, so
/// an interrupted migration is simply done again at the next start (the target is cleared
/// first). Returns the number of lines moved.
pub(super) fn migrate_line_logs(old: &sled::Tree, new: &sled::Tree) -> Result<u64, StoreError> {
    new.clear()?;
    let mut moved = 0u64;
    let mut current: Option<(JobId, u64)> = None; // job, first line of `chunk`
    let mut chunk: Vec<LogLine> = Vec::new();
    let mut batch = sled::Batch::default();
    let mut batched = 0usize;
    let flush_chunk = |job: JobId,
                       first: u64,
                       chunk: &mut Vec<LogLine>,
                       batch: &mut sled::Batch,
                       batched: &mut usize|
     -> Result<(), StoreError> {
        if !chunk.is_empty() {
            batch.insert(&key(job, first), encode_chunk(chunk)?);
            *batched += 1;
            chunk.clear();
        }
        Ok(())
    };
    for entry in old.iter() {
        let (k, v) = entry?;
        let job = k
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt("short key in the old logs tree".into()))?;
        let n = line_of(&k);
        let line: LogLine = decode("logs", &v)?;
        match current {
            Some((cur, first))
                if cur == job && first + chunk.len() as u64 == n && chunk.len() < CHUNK_LINES => {}
            Some((cur, first)) => {
                flush_chunk(cur, first, &mut chunk, &mut batch, &mut batched)?;
                current = Some((job, n));
            }
            None => current = Some((job, n)),
        }
        chunk.push(line);
        moved += 1;
        if batched >= 64 {
            new.apply_batch(std::mem::take(&mut batch))?;
            batched = 0;
        }
    }
    if let Some((job, first)) = current {
        flush_chunk(job, first, &mut chunk, &mut batch, &mut batched)?;
    }
    new.apply_batch(batch)?;
    Ok(moved)
}
