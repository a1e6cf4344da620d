//! Fills a data dir with a large, realistic store for the dashboard benchmark
//! (`scripts/bench-dashboard.sh`): N specs with M revisions and one job per revision, in the
//! states a busy Kiln has, plus optionally one job with a very large log. Writes only through
//! `kiln::store::Store` (the same API the controller uses).
//!
//! ```text
//! cargo run --release --example populate_store -- --data-dir DIR \
//!     [--specs 10000] [--jobs-per-spec 10] [--log-mb 200]
//! ```
//!
//! Prints `BIG_LOG_JOB=<id>` and `SAMPLE_SPEC=<name>` for the script.

use futures_util::StreamExt as _;
use kiln::model::{CommitMeta, JobPlan, JobStatus, Revision, SpecRecord};
use kiln::reconcile::{NewJob, Plan};
use kiln::spec::{Diagnostic, Rule};
use kiln::store::{LogLine, Store};
use std::path::PathBuf;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    data_dir: PathBuf,
    specs: usize,
    jobs_per_spec: u64,
    log_mb: usize,
}

fn args() -> Res<Args> {
    let mut out = Args {
        data_dir: PathBuf::new(),
        specs: 10_000,
        jobs_per_spec: 10,
        log_mb: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data-dir" => out.data_dir = value.into(),
            "--specs" => out.specs = value.parse()?,
            "--jobs-per-spec" => out.jobs_per_spec = value.parse()?,
            "--log-mb" => out.log_mb = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if out.data_dir.as_os_str().is_empty() {
        return Err("--data-dir is required".into());
    }
    Ok(out)
}

/// A deterministic pseudo-random number per (a, b).
fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

fn sha(a: u64, b: u64) -> String {
    format!(
        "{:016x}{:016x}{:08x}",
        mix(a, b),
        mix(b, a),
        mix(a ^ 7, b) as u32
    )
}

const APT: [&str; 12] = [
    "curl", "git", "jq", "less", "vim", "htop", "unzip", "make", "gcc", "libgl1", "wget", "zstd",
];

fn yaml(name: &str, r: u64) -> String {
    let mut out = format!(
        "# {name}: maintained by team {}\nname: {name}\ndescription: Image for {name}\nbaseImage: registry.example.com/base/notebook:2024.{}\npackages:\n  apt: |\n",
        r % 7,
        r % 3
    );
    for i in 0..(3 + r as usize % 4) {
        out.push_str(&format!("    {}\n", APT[(i + r as usize) % APT.len()]));
    }
    out.push_str("  pip:\n    - pandas>=2.1\n    - scikit-learn==1.5.*\n");
    out
}

fn dockerfile(name: &str, r: u64, commit: &str) -> String {
    format!(
        "# Rendered by Kiln for spec \"{name}\", revision {r}.\nFROM registry.example.com/base/notebook:2024.1\nUSER root\nARG DEBIAN_FRONTEND=noninteractive\nRUN apt-get update \\\n && apt-get install -y --no-install-recommends \\\n      curl \\\n      git \\\n      jq \\\n && rm -rf /var/lib/apt/lists/*\nRUN pip install --no-cache-dir \\\n      'pandas>=2.1' \\\n      'scikit-learn==1.5.*'\nLABEL org.opencontainers.image.created=\"2026-01-01T00:00:00Z\" \\\n      org.opencontainers.image.revision=\"{commit}\" \\\n      org.opencontainers.image.source=\"https://git.example.com/platform/images\" \\\n      org.opencontainers.image.title=\"{name}\" \\\n      io.kiln.spec=\"{name}\" \\\n      io.kiln.revision=\"{r}\"\nUSER 1000\n"
    )
}

#[tokio::main]
async fn main() -> Res<()> {
    let args = args()?;
    let started = Instant::now();
    let store = Store::open(&args.data_dir)?;
    let t0 = kiln::model::now() - 86_400 * 30;
    let names: Vec<String> = (0..args.specs).map(|i| format!("spec-{i:05}")).collect();
    let mut created = 0usize;

    // Revisions, spec records and queued jobs, 250 specs per transaction.
    for (chunk_no, chunk) in names.chunks(250).enumerate() {
        let mut plan = Plan::default();
        for (j, name) in chunk.iter().enumerate() {
            let i = (chunk_no * 250 + j) as u64;
            let path = format!("specs/team-{}/{name}.yaml", i % 20);
            let invalid = i % 97 == 13;
            let deleted = i % 53 == 7;
            let mut last_digest = String::new();
            for r in 1..=args.jobs_per_spec {
                let commit = sha(i, r);
                let digest = format!("sha256:{}", sha(r, i));
                let at = t0 + (i as i64 % 1000) * 60 + r as i64 * 3600;
                let newest = r == args.jobs_per_spec;
                let errors = if invalid && newest {
                    vec![Diagnostic {
                        path: path.clone(),
                        line: 7,
                        column: 5,
                        rule: Rule::OnePackagePerLine,
                        message:
                            "`curl git` holds 2 packages (curl, git); write one package per line"
                                .into(),
                    }]
                } else {
                    Vec::new()
                };
                plan.revisions.push(Revision {
                    spec: name.clone(),
                    number: r,
                    commit: CommitMeta {
                        sha: commit.clone(),
                        author: "Ada Admin <ada@example.com>".into(),
                        committed_at: at,
                        subject: format!("{name}: update packages (r{r})"),
                    },
                    path: path.clone(),
                    digest: errors.is_empty().then(|| digest.clone()),
                    errors: errors.clone(),
                    yaml: yaml(name, r),
                });
                if errors.is_empty() {
                    plan.jobs.push(NewJob {
                        spec: name.clone(),
                        revision: r,
                        commit: commit.clone(),
                        digest: digest.clone(),
                        plan: JobPlan::Build,
                        dockerfile: dockerfile(name, r, &commit),
                        cancelled: None,
                    });
                    last_digest = digest;
                }
            }
            let r = args.jobs_per_spec;
            plan.specs.insert(
                name.clone(),
                SpecRecord {
                    name: name.clone(),
                    path: path.clone(),
                    revision: r,
                    content_key: if invalid {
                        format!("raw:{}", sha(i, 0))
                    } else {
                        last_digest
                    },
                    valid: !invalid,
                    deleted,
                    latest_job: None,
                    latest_status: None,
                    latest_image: None,
                    latest_image_job: None,
                    updated_at: t0 + (i as i64 % 1000) * 60 + r as i64 * 3600,
                },
            );
            plan.spec_paths.insert(name.clone(), vec![path]);
        }
        let ids = store.apply(&plan, &sha(chunk_no as u64, 999)).await?;
        created += ids.len();

        // Outcomes: older jobs mostly succeeded, the newest in every state a busy Kiln has.
        let mut updates = Vec::with_capacity(ids.len());
        for (id, new) in ids.iter().zip(&plan.jobs) {
            let newest = new.revision == args.jobs_per_spec;
            let roll = mix(*id, 42) % 100;
            let status = match (newest, roll) {
                (false, 0..=4) => JobStatus::Failed,
                (false, 5..=7) => JobStatus::Cancelled,
                (false, _) => JobStatus::Succeeded,
                (true, 0..=6) => JobStatus::Failed,
                (true, 7..=9) => JobStatus::Reused,
                (true, 10) => JobStatus::Running,
                (true, 11..=12) => JobStatus::Queued,
                (true, 13..=14) => JobStatus::Cancelled,
                (true, _) => JobStatus::Succeeded,
            };
            if status == JobStatus::Queued {
                continue;
            }
            let mut job = store.job(*id)?.ok_or("job vanished")?;
            let start = job.created_at + 5;
            job.status = status;
            job.attempts = 1;
            job.started_at = Some(start);
            if status.is_final() {
                job.finished_at = Some(start + 30 + (mix(*id, 3) % 900) as i64);
                job.updated_at = job.finished_at.unwrap_or(start);
            }
            match status {
                JobStatus::Succeeded | JobStatus::Reused => {
                    job.image = Some(format!(
                        "registry.example.com/kiln/{}:r{}-{}",
                        job.spec,
                        job.revision,
                        &job.commit[..7]
                    ));
                    job.image_digest = Some(format!("sha256:{}", sha(*id, 5)));
                }
                JobStatus::Failed => {
                    job.error = Some(
                        "The command '/bin/sh -c apt-get install …' returned a non-zero code: 100"
                            .into(),
                    );
                }
                JobStatus::Cancelled => job.error = Some("superseded by a newer revision".into()),
                _ => {}
            }
            updates.push(job);
        }
        // One at a time: with 8 or more concurrent `update_job` futures this store hung
        // (every thread parked on a futex) in our runs; see the dashboard report.
        futures_util::stream::iter(updates)
            .for_each_concurrent(1, |job| {
                let store = store.clone();
                async move {
                    if let Err(e) = store.update_job(&job).await {
                        eprintln!("update_job {}: {e}", job.id);
                    }
                }
            })
            .await;
        if chunk_no % 8 == 7 {
            eprintln!(
                "{} specs, {created} jobs ({:.1?})",
                (chunk_no + 1) * 250,
                started.elapsed()
            );
        }
    }

    let sample = names.get(names.len() / 2).cloned().unwrap_or_default();
    println!("SAMPLE_SPEC={sample}");
    if args.log_mb > 0 {
        // One finished job with a very large log: ~100-byte lines, appended in batches.
        let id = store
            .jobs_of_spec(&sample, 0, 1)?
            .first()
            .map(|j| j.id)
            .ok_or("sample spec has no job")?;
        let line_text = |n: u64| {
            format!(
                "\u{1b}[32mStep {n}\u{1b}[0m: Get:{n} http://deb.debian.org/debian bookworm/main amd64 package-{n:08} [{} kB]",
                n % 9000
            )
        };
        let lines_total = (args.log_mb as u64 * 1_000_000) / (line_text(0).len() as u64 + 1);
        let mut n = 0u64;
        while n < lines_total {
            let batch: Vec<LogLine> = (n..(n + 20_000).min(lines_total))
                .map(|k| LogLine {
                    at_ms: 0,
                    text: line_text(k),
                })
                .collect();
            n += batch.len() as u64;
            store.append_log(id, &batch).await?;
        }
        println!("BIG_LOG_JOB={id}");
        println!("BIG_LOG_LINES={lines_total}");
    }
    store.flush().await?;
    eprintln!(
        "populated {} specs and {created} jobs in {:.1?}",
        names.len(),
        started.elapsed()
    );
    Ok(())
}
