//! Backups: the whole store as one versioned, checksummed stream, and back.
//!
//! Why not copy the sled directory: sled is single-process (the serving Kiln holds its lock)
//! and its files are only consistent at its own checkpoints. A backup is instead written by
//! whoever holds the store — `GET /api/v1/backup` on a running Kiln, or `kiln backup` on a
//! stopped data dir — and is independent of sled's on-disk format, so it also serves
//! compaction (`kiln gc --compact`) and a future move away from sled.
//!
//! Format (all integers big-endian):
//!
//! ```text
//! header   "KILNBKP\n"  u32 format (1)  u32 store schema  u16 len + kiln version  i64 created (Unix s)
//! records  b'T' u16 len + tree name            — the following records belong to this tree
//!          b'R' u32 len + key  u32 len + value
//! trailer  b'E' u64 trees  u64 records  [32] sha256 of every byte before it
//! ```
//!
//! Restore refuses a file without the magic, another format or schema version, a file that
//! ends before its trailer (truncated), wrong counts or checksum, bytes after the trailer,
//! unknown trees, and a target data dir that is not empty. It writes into `db.restoring` and
//! renames it to `db` only when everything checked out, so a refused file leaves nothing.
//!
//! Consistency: the trees that reference each other (specs, revisions, jobs and their
//! indexes, meta with the last processed commit and the job id counter) are copied while
//! holding the store's write lock, so they are one point in time: no plan or job update is
//! half in. The lock is held only while copying them into memory (a few MB for thousands of
//! jobs), not while the client downloads. Logs are copied afterwards without the lock: a job
//! running during the backup has the lines logged until then (lines of jobs created after
//! the snapshot are left out), and its record says `running`, so the restored Kiln re-queues
//! it at start (`requeue_interrupted`) with a log line saying so.
//!
//! Secrets: none. The store holds spec files, Dockerfiles, job records, logs and package
//! lists; registry credentials stay in the docker `config.json` and webhook secrets in
//! their files (see `model`).

use super::{SCHEMA_VERSION, Store, StoreError};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"KILNBKP\n";
pub const FORMAT_VERSION: u32 = 1;
/// Trees copied under the write lock, in this order.
const SNAPSHOT_TREES: [&str; 17] = [
    "meta",
    "specs",
    "revisions",
    "jobs",
    "jobs_by_spec",
    "active",
    "built",
    "paths",
    "installed",
    // The catalogue's listings (store/listings.rs): not rebuilt by a sync of unchanged specs.
    "listings",
    // Registry digests recorded at push (store/image_digests.rs).
    "image_digests",
    // The worker of each job's latest attempt (store/job_workers.rs).
    "job_workers",
    // Image sizes measured after the push (store/image_sizes.rs).
    "image_sizes",
    // Debian package architectures for the SBOM's purls (store/deb_architectures.rs).
    "deb_architectures",
    // Base digests per job, revision causes, outdated bases (store/base_digests.rs).
    "base_digests",
    "revision_causes",
    "base_outdated",
];
const LOG_TREE: &str = "log_chunks";
/// Refuse keys or values longer than this: a corrupt length must not allocate gigabytes.
const MAX_FIELD: u32 = 256 * 1024 * 1024;
const INSERT_BATCH: usize = 10_000;

#[derive(Debug, Error)]
pub enum BackupError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("not a Kiln backup (no KILNBKP header)")]
    NotABackup,
    #[error("backup format {found} is not supported by this Kiln (it reads format {expected})")]
    Format { found: u32, expected: u32 },
    #[error(
        "the backup holds store schema version {found} (written by kiln {kiln_version}), this Kiln uses {expected}; restore it with kiln {kiln_version}, or with a Kiln that uses schema {found}"
    )]
    Schema {
        found: u32,
        expected: u32,
        kiln_version: String,
    },
    #[error(
        "the backup is truncated: it ends before its trailer (an interrupted download or copy)"
    )]
    Truncated,
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error(
        "target data dir {0} is not empty; restore only into an empty or new directory (move the old one aside first)"
    )]
    TargetNotEmpty(PathBuf),
}

/// What a backup or restore held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupSummary {
    pub schema_version: u32,
    pub kiln_version: String,
    pub created_at: i64,
    pub trees: u64,
    pub records: u64,
    pub log_lines: u64,
    pub jobs: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("record too large"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

fn tree_marker(out: &mut impl Write, name: &str) -> io::Result<()> {
    out.write_all(b"T")?;
    out.write_all(&(name.len() as u16).to_be_bytes())?;
    out.write_all(name.as_bytes())
}

fn record(out: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<()> {
    out.write_all(b"R")?;
    field(out, key)?;
    field(out, value)
}

impl Store {
    /// Write a backup of the whole store to `out`. Blocking (call it from `spawn_blocking`);
    /// see the module doc for what is consistent.
    pub fn write_backup(&self, out: impl Write) -> Result<BackupSummary, BackupError> {
        let mut out = Hashing {
            inner: BufWriter::with_capacity(256 * 1024, out),
            hash: Sha256::new(),
            bytes: 0,
        };
        let kiln_version = env!("CARGO_PKG_VERSION");
        let created_at = crate::model::now();
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_be_bytes())?;
        out.write_all(&SCHEMA_VERSION.to_be_bytes())?;
        out.write_all(&(kiln_version.len() as u16).to_be_bytes())?;
        out.write_all(kiln_version.as_bytes())?;
        out.write_all(&created_at.to_be_bytes())?;

        let mut summary = BackupSummary {
            schema_version: SCHEMA_VERSION,
            kiln_version: kiln_version.to_string(),
            created_at,
            ..BackupSummary::default()
        };
        // One point in time for the trees that reference each other.
        let mut snapshot = Vec::new();
        let max_job = {
            let _writing = self.writes.blocking_lock();
            for name in SNAPSHOT_TREES {
                let tree = self.db.open_tree(name).map_err(StoreError::from)?;
                tree_marker(&mut snapshot, name)?;
                summary.trees += 1;
                for entry in tree.iter() {
                    let (k, v) = entry.map_err(StoreError::from)?;
                    record(&mut snapshot, &k, &v)?;
                    summary.records += 1;
                    summary.jobs += u64::from(name == "jobs");
                }
            }
            self.jobs
                .last()
                .map_err(StoreError::from)?
                .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0)
        };
        out.write_all(&snapshot)?;
        drop(snapshot);

        tree_marker(&mut out, LOG_TREE)?;
        summary.trees += 1;
        for entry in self.logs.iter() {
            let (k, v) = entry.map_err(StoreError::from)?;
            let job = k
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            // Lines of jobs created after the snapshot would be orphans: the first one is
            // past the snapshot's last job id, and so is every later key.
            if job.is_none_or(|j| j > max_job) {
                break;
            }
            record(&mut out, &k, &v)?;
            summary.records += 1;
            summary.log_lines += super::logs::chunk_len(&v)?;
        }

        out.write_all(b"E")?;
        out.write_all(&summary.trees.to_be_bytes())?;
        out.write_all(&summary.records.to_be_bytes())?;
        let digest = out.hash.clone().finalize();
        out.inner.write_all(&digest)?;
        out.inner.flush()?;
        summary.bytes = out.bytes + digest.len() as u64;
        summary.sha256 = hex::encode(digest);
        Ok(summary)
    }
}

/// A reader that hashes and counts what it hands out.
struct Hashed<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Hashed<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => BackupError::Truncated,
            _ => BackupError::Io(e),
        })?;
        self.hash.update(&*buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, BackupError> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }
    fn u16(&mut self) -> Result<u16, BackupError> {
        let mut b = [0u8; 2];
        self.exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, BackupError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, BackupError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    fn field(&mut self) -> Result<Vec<u8>, BackupError> {
        let len = self.u32()?;
        if len > MAX_FIELD {
            return Err(BackupError::Damaged(format!("a field claims {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf)?;
        Ok(buf)
    }
    fn string(&mut self, len: usize) -> Result<String, BackupError> {
        let mut buf = vec![0u8; len];
        self.exact(&mut buf)?;
        String::from_utf8(buf).map_err(|_| BackupError::Damaged("a name is not UTF-8".into()))
    }
}

/// Read and check a backup's header.
fn header<R: Read>(input: &mut Hashed<R>) -> Result<BackupSummary, BackupError> {
    let mut magic = [0u8; 8];
    input.exact(&mut magic).map_err(|e| match e {
        BackupError::Truncated => BackupError::NotABackup,
        e => e,
    })?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let format = input.u32()?;
    if format != FORMAT_VERSION {
        return Err(BackupError::Format {
            found: format,
            expected: FORMAT_VERSION,
        });
    }
    let schema = input.u32()?;
    let len = input.u16()? as usize;
    let kiln_version = input.string(len)?;
    if schema != SCHEMA_VERSION {
        return Err(BackupError::Schema {
            found: schema,
            expected: SCHEMA_VERSION,
            kiln_version,
        });
    }
    let mut created = [0u8; 8];
    input.exact(&mut created)?;
    Ok(BackupSummary {
        schema_version: schema,
        kiln_version,
        created_at: i64::from_be_bytes(created),
        ..BackupSummary::default()
    })
}

/// Read a backup into a new sled database at `db_path`; it is left in place only when the
/// whole file checked out.
fn restore_db(input: impl Read, db_path: &Path) -> Result<BackupSummary, BackupError> {
    let result = (|| {
        let db = sled::Config::new()
            .cache_capacity(super::StoreOptions::default().cache_bytes)
            .path(db_path)
            .open()
            .map_err(StoreError::from)?;
        let summary = import(input, Some(&db))?;
        db.flush().map_err(StoreError::from)?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(db_path);
    }
    result
}

/// Read a whole backup and check it (header, counts, checksum) without restoring it.
pub fn verify(input: impl Read) -> Result<BackupSummary, BackupError> {
    import(input, None)
}

/// Read a backup; with a database, write its records there as they come.
fn import(input: impl Read, db: Option<&sled::Db>) -> Result<BackupSummary, BackupError> {
    let mut input = Hashed {
        inner: BufReader::with_capacity(256 * 1024, input),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut summary = header(&mut input)?;
    // The current tree's name, and its sled tree when restoring.
    let mut tree: Option<(String, Option<sled::Tree>)> = None;
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let flush = |tree: &Option<(String, Option<sled::Tree>)>,
                 batch: &mut sled::Batch,
                 pending: &mut usize| {
        if let Some((_, Some(t))) = tree
            && *pending > 0
        {
            t.apply_batch(std::mem::take(batch))
                .map_err(StoreError::from)?;
        }
        *pending = 0;
        Ok::<(), BackupError>(())
    };
    loop {
        match input.u8()? {
            b'T' => {
                flush(&tree, &mut batch, &mut pending)?;
                let len = input.u16()? as usize;
                let name = input.string(len)?;
                if !SNAPSHOT_TREES.contains(&name.as_str()) && name != LOG_TREE {
                    return Err(BackupError::Damaged(format!("unknown tree `{name}`")));
                }
                summary.trees += 1;
                let sled_tree = match db {
                    Some(db) => Some(db.open_tree(&name).map_err(StoreError::from)?),
                    None => None,
                };
                tree = Some((name, sled_tree));
            }
            b'R' => {
                let Some((name, sled_tree)) = &tree else {
                    return Err(BackupError::Damaged("a record before any tree".into()));
                };
                let key = input.field()?;
                let value = input.field()?;
                summary.records += 1;
                if name == LOG_TREE {
                    summary.log_lines += super::logs::chunk_len(&value)
                        .map_err(|_| BackupError::Damaged("a log chunk without a header".into()))?;
                }
                summary.jobs += u64::from(name == "jobs");
                if sled_tree.is_none() {
                    continue;
                }
                batch.insert(key, value);
                pending += 1;
                if pending >= INSERT_BATCH {
                    flush(&tree, &mut batch, &mut pending)?;
                }
            }
            b'E' => {
                flush(&tree, &mut batch, &mut pending)?;
                let trees = input.u64()?;
                let records = input.u64()?;
                let expected = input.hash.clone().finalize();
                let mut digest = [0u8; 32];
                input
                    .inner
                    .read_exact(&mut digest)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => BackupError::Truncated,
                        _ => BackupError::Io(e),
                    })?;
                if digest[..] != expected[..] {
                    return Err(BackupError::Damaged(
                        "the sha256 checksum does not match".into(),
                    ));
                }
                if trees != summary.trees || records != summary.records {
                    return Err(BackupError::Damaged(format!(
                        "the trailer counts {trees} trees and {records} records, the file holds {} and {}",
                        summary.trees, summary.records
                    )));
                }
                let mut rest = [0u8; 1];
                if input.inner.read(&mut rest)? != 0 {
                    return Err(BackupError::Damaged("bytes after the trailer".into()));
                }
                summary.sha256 = hex::encode(digest);
                summary.bytes = input.bytes + digest.len() as u64;
                return Ok(summary);
            }
            other => {
                return Err(BackupError::Damaged(format!(
                    "unexpected byte 0x{other:02x} where a record should start"
                )));
            }
        }
    }
}

/// Restore a backup into `dir`, which must be empty or not exist. The result is opened once
/// as a store, so a restored dir is known to be usable.
pub fn restore(input: impl Read, dir: &Path) -> Result<BackupSummary, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::TargetNotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(dir)?,
        Err(e) => return Err(e.into()),
    }
    let staging = dir.join("db.restoring");
    let summary = restore_db(input, &staging)?;
    std::fs::rename(&staging, dir.join(super::DB_DIR))?;
    drop(Store::open(dir)?);
    Ok(summary)
}

/// What a compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub records: u64,
}

/// Rewrite the data dir's sled database into a fresh one holding only the live records
/// (sled 0.34 reuses freed space but rarely gives it back to the file system). Needs the
/// data dir stopped and free space for one more copy. The old database is renamed to
/// `db.pre-compact` first and removed last; [`Store::open`] refuses a dir where an
/// interrupted compaction left only that.
pub fn compact(dir: &Path) -> Result<Compaction, BackupError> {
    let before_bytes = super::gc::disk_usage(&dir.join(super::DB_DIR))?;
    let dump = dir.join("compact.kbk");
    let fresh = dir.join("db.compacted");
    let _ = std::fs::remove_dir_all(&fresh);
    {
        let store = Store::open(dir)?;
        let file = std::fs::File::create(&dump)?;
        store.write_backup(&file)?;
        file.sync_all()?;
    }
    let summary = restore_db(BufReader::new(std::fs::File::open(&dump)?), &fresh);
    let _ = std::fs::remove_file(&dump);
    let summary = summary?;
    let old = dir.join(super::PRE_COMPACT_DIR);
    std::fs::rename(dir.join(super::DB_DIR), &old)?;
    std::fs::rename(&fresh, dir.join(super::DB_DIR))?;
    std::fs::remove_dir_all(&old)?;
    drop(Store::open(dir)?);
    Ok(Compaction {
        before_bytes,
        after_bytes: super::gc::disk_usage(&dir.join(super::DB_DIR))?,
        records: summary.records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobPlan, JobStatus};
    use crate::reconcile::{NewJob, Plan};
    use crate::store::LogLine;

    async fn filled(dir: &Path) -> Store {
        let store = Store::open(dir).unwrap();
        let mut plan = Plan::default();
        for i in 0..3u64 {
            plan.jobs.push(NewJob {
                spec: "a".into(),
                revision: i + 1,
                commit: "c".repeat(40),
                digest: format!("sha256:{i}"),
                plan: JobPlan::Build,
                dockerfile: "FROM x\n".into(),
                cancelled: None,
            });
        }
        let ids = store.apply(&plan, &"c".repeat(40)).await.unwrap();
        let mut running = store.job(ids[2]).unwrap().unwrap();
        running.status = JobStatus::Running;
        store.update_job(&running).await.unwrap();
        for &id in &ids {
            let lines: Vec<LogLine> = (0..50)
                .map(|l| LogLine {
                    at_ms: l,
                    text: format!("job {id} line {l}"),
                })
                .collect();
            store.append_log(id, &lines).await.unwrap();
        }
        store
    }

    fn backup_bytes(store: &Store) -> Vec<u8> {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            store.write_backup(&mut out).unwrap();
            out
        })
        .join()
        .unwrap()
    }

    #[tokio::test]
    async fn a_backup_restores_every_record_and_a_running_job_is_requeued() {
        let src = tempfile::tempdir().unwrap();
        let store = filled(src.path()).await;
        let bytes = backup_bytes(&store);
        let checked = verify(&bytes[..]).unwrap();
        assert_eq!(checked.jobs, 3);
        assert_eq!(checked.log_lines, 150);

        let dst = tempfile::tempdir().unwrap();
        let target = dst.path().join("restored");
        let summary = restore(&bytes[..], &target).unwrap();
        assert_eq!(summary, checked);
        let restored = Store::open(&target).unwrap();
        for name in SNAPSHOT_TREES.iter().chain([&LOG_TREE]) {
            let a: Vec<_> = store.db.open_tree(name).unwrap().iter().collect();
            let b: Vec<_> = restored.db.open_tree(name).unwrap().iter().collect();
            assert_eq!(
                a.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
                b.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
                "tree {name}"
            );
        }
        assert_eq!(restored.requeue_interrupted().await.unwrap(), 1);
        // The job id counter came along: the next job does not reuse an id.
        let next = restored
            .apply(
                &Plan {
                    jobs: vec![NewJob {
                        spec: "a".into(),
                        revision: 9,
                        commit: "d".repeat(40),
                        digest: "sha256:9".into(),
                        plan: JobPlan::Build,
                        dockerfile: String::new(),
                        cancelled: None,
                    }],
                    ..Plan::default()
                },
                &"d".repeat(40),
            )
            .await
            .unwrap();
        assert_eq!(next, vec![4]);
    }

    #[tokio::test]
    async fn restore_refuses_truncated_damaged_foreign_and_non_empty() {
        let src = tempfile::tempdir().unwrap();
        let store = filled(src.path()).await;
        let bytes = backup_bytes(&store);
        let dst = tempfile::tempdir().unwrap();

        for cut in [bytes.len() - 1, bytes.len() - 40, bytes.len() / 2, 30] {
            let target = dst.path().join(format!("cut-{cut}"));
            let err = restore(&bytes[..cut], &target).unwrap_err();
            assert!(matches!(err, BackupError::Truncated), "cut at {cut}: {err}");
            assert!(err.to_string().contains("truncated"));
            // Nothing was left behind: the dir can be used for another try.
            assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        }

        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x55;
        let err = restore(&flipped[..], &dst.path().join("flipped")).unwrap_err();
        assert!(
            matches!(err, BackupError::Damaged(_) | BackupError::Truncated),
            "{err}"
        );

        let mut longer = bytes.clone();
        longer.push(0);
        let err = verify(&longer[..]).unwrap_err();
        assert!(err.to_string().contains("after the trailer"), "{err}");

        let err = verify(&b"PK\x03\x04 a zip file"[..]).unwrap_err();
        assert!(matches!(err, BackupError::NotABackup), "{err}");

        let mut other_schema = bytes.clone();
        other_schema[12..16].copy_from_slice(&(SCHEMA_VERSION + 1).to_be_bytes());
        let err = verify(&other_schema[..]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("schema version {}", SCHEMA_VERSION + 1))
                && text.contains(&format!("uses {SCHEMA_VERSION}"))
                && text.contains(env!("CARGO_PKG_VERSION")),
            "{text}"
        );

        let busy = dst.path().join("busy");
        std::fs::create_dir_all(&busy).unwrap();
        std::fs::write(busy.join("something"), b"x").unwrap();
        let err = restore(&bytes[..], &busy).unwrap_err();
        assert!(matches!(err, BackupError::TargetNotEmpty(_)), "{err}");
        assert!(err.to_string().contains("not empty"));
    }

    #[tokio::test]
    async fn compaction_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path()).await;
        let before = backup_bytes(&store);
        drop(store);
        let path = dir.path().to_path_buf();
        let done = std::thread::spawn(move || compact(&path))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(done.records, verify(&before[..]).unwrap().records);
        assert!(!dir.path().join(crate::store::PRE_COMPACT_DIR).exists());
        let store = Store::open(dir.path()).unwrap();
        let after = backup_bytes(&store);
        // Same records; only the creation time in the header (and so the checksum) differs.
        let (a, b) = (verify(&before[..]).unwrap(), verify(&after[..]).unwrap());
        assert_eq!(
            (a.records, a.jobs, a.log_lines),
            (b.records, b.jobs, b.log_lines)
        );
        let header = 8 + 4 + 4 + 2 + env!("CARGO_PKG_VERSION").len() + 8;
        assert_eq!(
            before[header..before.len() - 32],
            after[header..after.len() - 32]
        );
    }
}
