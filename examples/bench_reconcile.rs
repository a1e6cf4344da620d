//! In-process timings for BENCHMARKS.md: reconciling a commit that touches one spec, beside a
//! full rescan of the tree. Driven by `scripts/bench-history.sh`; by hand:
//!
//! ```text
//! cargo run --release --example bench_reconcile -- --repo REPO --data-dir DATA [--runs 20]
//! ```
//!
//! `DATA` is a data dir imported by `kiln sync --no-build` up to the parent of `REPO`'s head,
//! and the head is one commit touching one spec (`scripts/gen-history.py REPO --touch NAME`).
//! `DATA` is only read: the measurement that writes (`Syncer::sync_once`) runs on a fresh copy
//! each time, and copying is not timed.
//!
//! Measured `--runs` times each after one warm-up round, interleaved (one run of each per
//! round, so that a shared machine's load hits all alike); the first call of each in the fresh
//! process (cold caches) is reported apart:
//!
//! * incremental: `Repo::steps(last, head)`, turning the steps into observations (the same
//!   work as `sync::observe`, which is private), `reconcile::reconcile` against the sled store;
//! * `Syncer::sync_once` on a copy of `DATA` (fetch, steps, observe, reconcile, `Store::apply`
//!   with its flush), and `Store::open` + `Syncer::new` before it;
//! * full rescan: `Repo::spec_files_at(head)` and `spec::parse_spec` of every file; and the
//!   same listing fed to `reconcile` as one observation per name (what a controller that
//!   rescans the tree on every commit would do).
//!
//! Prints a markdown table and one `JSON:` line with every median (milliseconds).
//!
//! `--loop steps|rescan N` instead repeats one phase N times and prints the mean, for
//! `perf record` (the script's `--profile`).

use kiln::config::{Config, ConfigArgs};
use kiln::model::CommitMeta;
use kiln::reconcile::{
    self, Observation, ObservedFile, ObservedStep, Plan, Settings, name_of_path,
};
use kiln::repo::{Oid, Repo, RepoLocation, Step};
use kiln::spec::{self, SpecContext};
use kiln::store::Store;
use kiln::sync::Syncer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    repo: PathBuf,
    data_dir: PathBuf,
    runs: usize,
    branch: String,
    specs_dir: String,
    /// `--loop PHASE N`: only repeat one phase, for profiling.
    repeat: Option<(String, usize)>,
}

fn args() -> Res<Args> {
    let mut out = Args {
        repo: PathBuf::new(),
        data_dir: PathBuf::new(),
        runs: 20,
        branch: "main".into(),
        specs_dir: ".".into(),
        repeat: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--repo" => out.repo = value()?.into(),
            "--data-dir" => out.data_dir = value()?.into(),
            "--runs" => out.runs = value()?.parse()?,
            "--branch" => out.branch = value()?,
            "--specs-dir" => out.specs_dir = value()?,
            "--loop" => {
                let phase = value()?;
                let n = it.next().ok_or("--loop needs PHASE N")?.parse()?;
                out.repeat = Some((phase, n));
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if out.repo.as_os_str().is_empty() || out.data_dir.as_os_str().is_empty() || out.runs == 0 {
        return Err("usage: bench_reconcile --repo REPO --data-dir DATA [--runs N]".into());
    }
    Ok(out)
}

/// Timings of one measurement, `runs` warm ones.
struct Series {
    name: &'static str,
    warm: Vec<Duration>,
}

impl Series {
    fn median(&self) -> Duration {
        let mut v = self.warm.clone();
        v.sort();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        }
    }
    fn min(&self) -> Duration {
        *self.warm.iter().min().expect("runs > 0")
    }
    fn max(&self) -> Duration {
        *self.warm.iter().max().expect("runs > 0")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The observation phase of a sync pass, as `Syncer` runs it.
fn observe(repo: &Repo, store: &Store, steps: &[Step]) -> Res<Vec<ObservedStep>> {
    Ok(kiln::sync::observe(repo, store, steps)?)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn plan_summary(plan: &Plan) -> String {
    format!(
        "{} revision(s), {} job(s), {} spec record(s), {} cancellation(s)",
        plan.revisions.len(),
        plan.jobs.len(),
        plan.specs.len(),
        plan.cancellations.len()
    )
}

fn main() -> Res<()> {
    let args = args()?;
    let config = Config::resolve(
        &ConfigArgs {
            repo: Some(args.repo.display().to_string()),
            data_dir: Some(args.data_dir.clone()),
            branch: Some(args.branch.clone()),
            specs_dir: Some(args.specs_dir.clone()),
            no_build: true,
            ..ConfigArgs::default()
        },
        None,
    )?;
    let settings = Settings {
        spec_context: SpecContext {
            pull_secrets: Some(config.pull_secrets.keys().cloned().collect()),
            sources: Some(config.sources.clone()),
        },
        source_url: config.source_url.clone(),
        ca_bundle: config.ca_bundle.is_some(),
    };
    let ctx = settings.spec_context.clone();
    let specs_dir = config.specs_dir.clone();

    // The pre-state store is copied once, so the original data dir is never opened (sled
    // takes an exclusive lock and would write to it).
    let scratch = tempfile::tempdir()?;
    let pristine = scratch.path().join("pristine");
    copy_dir(&args.data_dir, &pristine)?;
    let store = Store::open(&pristine)?;
    let repo = Repo::open(&RepoLocation::parse(&config.repo), &pristine)?;
    let head = repo
        .branch_head(&config.branch)?
        .ok_or("branch does not exist")?;
    let last = store
        .last_commit()?
        .ok_or("data dir holds no processed commit: run `kiln sync --no-build` first")?;
    let last = Oid::from_str(&last)?;
    if last == head {
        return Err(
            "the data dir is already at the head: add a commit (gen-history.py --touch)".into(),
        );
    }

    if let Some((phase, n)) = &args.repeat {
        let t = Instant::now();
        for _ in 0..*n {
            match phase.as_str() {
                "steps" => drop(repo.steps(Some(last), head, &specs_dir)?),
                "rescan" => {
                    for f in repo.spec_files_at(head, &specs_dir)? {
                        drop(spec::parse_spec(&f.path, &f.bytes, &ctx));
                    }
                }
                other => return Err(format!("unknown phase {other}: steps or rescan").into()),
            }
        }
        println!("{phase}: {:.3} ms per run", ms(t.elapsed()) / *n as f64);
        return Ok(());
    }

    // ---- inputs and results, computed once (untimed) ----
    let head_meta = repo.commit_info(head)?;
    // The first call of each, in this fresh process: what a `kiln sync` process pays.
    let t = Instant::now();
    let steps = repo.steps(Some(last), head, &specs_dir)?;
    let cold_steps = t.elapsed();
    let changed: usize = steps.iter().map(|s| s.changes.len()).sum();
    let t = Instant::now();
    let observed = observe(&repo, &store, &steps)?;
    let cold_observe = t.elapsed();
    let t = Instant::now();
    let plan = reconcile::reconcile(&store, &observed, &settings)?;
    let cold_reconcile = t.elapsed();
    let t = Instant::now();
    let files = repo.spec_files_at(head, &specs_dir)?;
    let cold_list = t.elapsed();
    let t = Instant::now();
    let valid = files
        .iter()
        .filter(|f| spec::parse_spec(&f.path, &f.bytes, &ctx).is_valid())
        .count();
    let cold_parse = t.elapsed();
    let rescan = |repo: &Repo| -> Res<Plan> {
        let files = repo.spec_files_at(head, &specs_dir)?;
        let mut by_name: BTreeMap<String, Vec<ObservedFile>> = BTreeMap::new();
        for f in files {
            if let Some(name) = name_of_path(&f.path) {
                by_name
                    .entry(name.to_string())
                    .or_default()
                    .push(ObservedFile {
                        path: f.path,
                        bytes: f.bytes,
                        unreadable: None,
                    });
            }
        }
        let step = ObservedStep {
            commit: CommitMeta {
                sha: head_meta.sha.clone(),
                author: head_meta.author.clone(),
                committed_at: head_meta.committed_at,
                subject: head_meta.subject.clone(),
            },
            specs: by_name
                .into_iter()
                .map(|(name, files)| Observation { name, files })
                .collect(),
        };
        Ok(reconcile::reconcile(&store, &[step], &settings)?)
    };
    let rescan_plan = rescan(&repo)?;

    // `Syncer::sync_once` on a fresh copy of the pre-state each time (copy not timed).
    let copies = std::cell::Cell::new(0);
    let open_times = std::cell::RefCell::new(Vec::new());
    let sync_once = || -> Res<(Duration, kiln::sync::SyncOutcome)> {
        copies.set(copies.get() + 1);
        let dir = scratch.path().join(format!("copy-{}", copies.get()));
        copy_dir(&pristine, &dir)?;
        let mut config = config.clone();
        config.data_dir = dir.clone();
        let t = Instant::now();
        let syncer = Syncer::new(&config, Store::open(&dir)?)?;
        open_times.borrow_mut().push(t.elapsed());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let t = Instant::now();
        let outcome = rt.block_on(syncer.sync_once())?;
        let took = t.elapsed();
        drop(syncer);
        std::fs::remove_dir_all(&dir)?;
        Ok((took, outcome))
    };
    let (cold_sync, outcome) = sync_once()?;
    let cold_open = open_times.borrow_mut().remove(0);

    // ---- the timed runs, interleaved so that load on a shared machine hits all alike;
    // round 0 is a warm-up ----
    type Timed<'a> = Box<dyn FnMut() -> Res<Duration> + 'a>;
    let mut benches: Vec<(&'static str, Timed<'_>)> = vec![
        (
            "Repo::steps(last, head)",
            Box::new(|| {
                let t = Instant::now();
                drop(repo.steps(Some(last), head, &specs_dir)?);
                Ok(t.elapsed())
            }),
        ),
        (
            "observe (paths_of, siblings)",
            Box::new(|| {
                let t = Instant::now();
                drop(observe(&repo, &store, &steps)?);
                Ok(t.elapsed())
            }),
        ),
        (
            "reconcile::reconcile",
            Box::new(|| {
                let t = Instant::now();
                drop(reconcile::reconcile(&store, &observed, &settings));
                Ok(t.elapsed())
            }),
        ),
        (
            "**incremental total** (steps + observe + reconcile)",
            Box::new(|| {
                let t = Instant::now();
                let steps = repo.steps(Some(last), head, &specs_dir)?;
                let observed = observe(&repo, &store, &steps)?;
                drop(reconcile::reconcile(&store, &observed, &settings));
                Ok(t.elapsed())
            }),
        ),
        (
            "Syncer::sync_once (incl. Store::apply + flush)",
            Box::new(|| Ok(sync_once()?.0)),
        ),
        (
            "Repo::spec_files_at(head)",
            Box::new(|| {
                let t = Instant::now();
                drop(repo.spec_files_at(head, &specs_dir)?);
                Ok(t.elapsed())
            }),
        ),
        (
            "parse_spec of every file",
            Box::new(|| {
                let t = Instant::now();
                for f in &files {
                    drop(spec::parse_spec(&f.path, &f.bytes, &ctx));
                }
                Ok(t.elapsed())
            }),
        ),
        (
            "**full rescan total** (spec_files_at + parse_spec of every file)",
            Box::new(|| {
                let t = Instant::now();
                for f in repo.spec_files_at(head, &specs_dir)? {
                    drop(spec::parse_spec(&f.path, &f.bytes, &ctx));
                }
                Ok(t.elapsed())
            }),
        ),
        (
            "full rescan through reconcile (spec_files_at + reconcile of all)",
            Box::new(|| {
                let t = Instant::now();
                drop(rescan(&repo)?);
                Ok(t.elapsed())
            }),
        ),
    ];
    let mut series: Vec<Series> = benches
        .iter()
        .map(|(name, _)| Series {
            name,
            warm: Vec::with_capacity(args.runs),
        })
        .collect();
    for round in 0..args.runs + 1 {
        for ((_, f), s) in benches.iter_mut().zip(series.iter_mut()) {
            let took = f()?;
            if round > 0 {
                s.warm.push(took);
            }
        }
    }
    drop(benches);
    let opens = open_times.into_inner();
    series.insert(
        4,
        Series {
            name: "Store::open + Syncer::new (before sync_once)",
            warm: opens[1..].to_vec(),
        },
    );
    let [
        steps_s,
        observe_s,
        reconcile_s,
        incr_s,
        open_s,
        sync_s,
        list_s,
        parse_s,
        rescan_s,
        rescan_rec_s,
    ] = &series[..]
    else {
        unreachable!("ten series")
    };
    drop(store);

    let rows = &series;
    println!("head {head}, last processed {last}");
    println!(
        "incremental: {} step(s), {changed} changed file(s); plan: {}",
        steps.len(),
        plan_summary(&plan)
    );
    println!(
        "full rescan: {} file(s), {valid} valid; plan through reconcile: {}",
        files.len(),
        plan_summary(&rescan_plan)
    );
    println!(
        "sync_once: {} step(s), {} revision(s), {} job(s)",
        outcome.steps,
        outcome.revisions,
        outcome.jobs.len()
    );
    println!();
    println!(
        "first call in a fresh process (cold caches): steps {:.2} ms, observe {:.2} ms, \
         reconcile {:.2} ms, Store::open + Syncer::new {:.2} ms, sync_once {:.2} ms, \
         spec_files_at {:.2} ms, parse of every file {:.2} ms",
        ms(cold_steps),
        ms(cold_observe),
        ms(cold_reconcile),
        ms(cold_open),
        ms(cold_sync),
        ms(cold_list),
        ms(cold_parse)
    );
    println!();
    println!(
        "| measurement ({} warm runs, interleaved) | median ms | min ms | max ms |",
        args.runs
    );
    println!("|---|---:|---:|---:|");
    for s in rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            s.name,
            ms(s.median()),
            ms(s.min()),
            ms(s.max())
        );
    }
    let ratio = ms(rescan_s.median()) / ms(incr_s.median());
    let ratio_rec = ms(rescan_rec_s.median()) / ms(incr_s.median());
    println!();
    println!(
        "full rescan (list+parse) / incremental = {ratio:.0}x; \
         full rescan through reconcile / incremental = {ratio_rec:.0}x"
    );
    let mut json = serde_json::Map::new();
    for (key, s) in [
        ("steps_ms", steps_s),
        ("observe_ms", observe_s),
        ("reconcile_ms", reconcile_s),
        ("incremental_ms", incr_s),
        ("open_ms", open_s),
        ("sync_once_ms", sync_s),
        ("list_ms", list_s),
        ("parse_ms", parse_s),
        ("rescan_ms", rescan_s),
        ("rescan_reconcile_ms", rescan_rec_s),
    ] {
        json.insert(key.into(), serde_json::json!(ms(s.median())));
    }
    json.insert("ratio".into(), serde_json::json!(ratio));
    json.insert("ratio_reconcile".into(), serde_json::json!(ratio_rec));
    json.insert("files".into(), serde_json::json!(files.len()));
    json.insert("valid".into(), serde_json::json!(valid));
    json.insert("runs".into(), serde_json::json!(args.runs));
    println!("JSON: {}", serde_json::Value::Object(json));
    if plan.revisions.len() != rescan_plan.revisions.len() {
        return Err(format!(
            "incremental and rescan plans disagree: {} vs {} revisions",
            plan.revisions.len(),
            rescan_plan.revisions.len()
        )
        .into());
    }
    Ok(())
}
