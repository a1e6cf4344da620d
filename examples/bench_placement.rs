//! In-process timings for BENCHMARKS.md: what placing one build costs. Driven by
//! `scripts/bench-pool.sh`; by hand (the worker Engines of `scripts/dev-env.sh` up):
//!
//! ```text
//! cargo run --release --example bench_placement -- [--leases 20000]
//! ```
//!
//! * `placement::place` (rank the workers by rendezvous score, take the first healthy one
//!   with a free slot) for 3, 10 and 100 workers, all healthy and idle;
//! * a whole lease through `WorkerPool` — what a job attempt does before it builds: lock the
//!   loads, place, take the slot, build the worker's Engine client on first use — and giving
//!   the slot back, on a pool of the main Engine and the two worker Engines (real probes, so
//!   the workers must answer first).
//!
//! Prints a markdown table (median and 99th percentile per call, microseconds) and one
//! `JSON:` line.

use kiln::builder::Builders;
use kiln::pool::placement::{self, WorkerLoad};
use kiln::pool::{WorkerConfig, WorkerKind, WorkerPool};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

/// Median and p99 of `samples` (microseconds).
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn time_place(workers: usize, calls: usize) -> (f64, f64) {
    let names: Vec<String> = (0..workers).map(|i| format!("worker-{i}")).collect();
    let loads: Vec<WorkerLoad<'_>> = names
        .iter()
        .map(|name| WorkerLoad {
            name,
            healthy: true,
            capacity: 2,
            running: 0,
        })
        .collect();
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let spec = format!("spec-{i}");
        let start = Instant::now();
        let placed = placement::place(&spec, &loads);
        samples.push(start.elapsed().as_secs_f64() * 1e6);
        assert!(placed.is_ok());
    }
    summary(samples)
}

fn worker(name: &str, endpoint: &str) -> WorkerConfig {
    WorkerConfig {
        name: name.into(),
        kind: WorkerKind::Docker,
        endpoint: Some(endpoint.into()),
        capacity: 4,
        tls_verify: None,
        cert_path: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut leases = 20_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--leases" => leases = args.next().ok_or("--leases N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let mut rows = Vec::new();
    for n in [3, 10, 100] {
        let (median, p99) = time_place(n, leases);
        rows.push((format!("`placement::place`, {n} workers"), median, p99));
    }

    let shutdown = CancellationToken::new();
    let pool = WorkerPool::new(
        &[
            worker("w0", "unix:///var/run/docker.sock"),
            worker("w1", "unix:///run/kiln-w1/docker.sock"),
            worker("w2", "unix:///run/kiln-w2/docker.sock"),
        ],
        Duration::from_secs(5),
        &shutdown,
    )?;
    pool.first_probes().await;
    let healthy = pool.status().iter().filter(|w| w.healthy).count();
    if healthy < 3 {
        return Err(
            format!("only {healthy} of 3 workers answer: run scripts/dev-env.sh up").into(),
        );
    }
    let cancel = CancellationToken::new();
    let mut samples = Vec::with_capacity(leases);
    for i in 0..leases {
        let spec = format!("spec-{}", i % 500);
        let start = Instant::now();
        let lease = pool.lease(&spec, i as u64, &cancel).await?;
        drop(lease);
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let (median, p99) = summary(samples);
    rows.push((
        "`WorkerPool` lease + give back, 3 real workers".to_string(),
        median,
        p99,
    ));
    shutdown.cancel();

    println!("| measurement | median µs | p99 µs | calls |");
    println!("|---|---:|---:|---:|");
    for (what, median, p99) in &rows {
        println!("| {what} | {median:.2} | {p99:.2} | {leases} |");
    }
    let json: Vec<String> = rows
        .iter()
        .map(|(what, median, p99)| {
            format!("{{\"what\":{what:?},\"median_us\":{median:.3},\"p99_us\":{p99:.3}}}")
        })
        .collect();
    println!("JSON: [{}]", json.join(","));
    Ok(())
}
