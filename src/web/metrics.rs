//! `/metrics`: one Prometheus registry (`prometheus-client`), encoded in the Prometheus text
//! format (version 0.0.4).
//!
//! The registry is built once per server ([`Metrics::new`]). Two kinds of values feed it:
//!
//! * store-derived gauges and the build-duration histogram — job counts and durations come
//!   from the store (all history, so they survive restarts) through the [`Caches`] that are
//!   rebuilt only when a job changes; each scrape sets them from the current cache;
//! * this process's counters ([`Counters`]: webhooks, sync passes, retention passes), which
//!   the sync loop and the retention loop bump as plain atomics; a collector reads them at
//!   scrape time.
//!
//! Names and labels are the ones Kiln has always exported; the unit test below parses the
//! whole exposition back.

use super::index::{Caches, JobStats, SpecIndex, SpecStatus};
use super::{AppState, Counters};
use crate::model::JobStatus;
use crate::pool::WorkerPool;
use crate::store::SyncStatus;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

/// Upper bounds (seconds) of the build-duration histogram buckets.
const BUCKETS: [f64; 10] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// Longest label value taken from outside (the sync error message), in characters.
const MAX_LABEL_CHARS: usize = 200;

type Label = [(&'static str, &'static str); 1];
type TextLabel = [(&'static str, String); 1];

/// The registry and the handles of the metrics set on each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<Label, Gauge>,
    queue_length: Gauge,
    builds_running: Gauge,
    build_duration: Family<Label, Histogram, fn() -> Histogram>,
    specs: Family<Label, Gauge>,
    last_sync_success: Gauge,
    last_sync_attempt: Gauge,
    sync_error: Gauge,
    sync_error_info: Family<TextLabel, Gauge>,
    /// Setting the values and encoding them is one step: two scrapes at once never
    /// interleave (the histogram is refilled from scratch on each).
    scrape: Mutex<()>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Metrics {
    pub fn new(counters: Arc<Counters>, workers: Arc<OnceLock<WorkerPool>>) -> Metrics {
        let mut registry = Registry::default();
        let jobs = Family::<Label, Gauge>::default();
        registry.register("kiln_jobs", "Jobs in the store by status", jobs.clone());
        let queue_length = Gauge::default();
        registry.register(
            "kiln_queue_length",
            "Jobs waiting for a worker",
            queue_length.clone(),
        );
        let builds_running = Gauge::default();
        registry.register(
            "kiln_builds_running",
            "Jobs being built now",
            builds_running.clone(),
        );
        let build_duration =
            Family::<Label, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "kiln_build_duration_seconds",
            "Time from start to finish of finished builds (re-uses excluded)",
            build_duration.clone(),
        );
        let specs = Family::<Label, Gauge>::default();
        registry.register("kiln_specs", "Specs by state", specs.clone());
        let last_sync_success = Gauge::default();
        registry.register(
            "kiln_last_sync_success_timestamp_seconds",
            "When the repository was last synced successfully (0: never)",
            last_sync_success.clone(),
        );
        let last_sync_attempt = Gauge::default();
        registry.register(
            "kiln_last_sync_attempt_timestamp_seconds",
            "When a sync was last attempted (0: never)",
            last_sync_attempt.clone(),
        );
        let sync_error = Gauge::default();
        registry.register(
            "kiln_sync_error",
            "1 when the last sync attempt failed; the message is in kiln_sync_error_info",
            sync_error.clone(),
        );
        let sync_error_info = Family::<TextLabel, Gauge>::default();
        registry.register(
            "kiln_sync_error_info",
            "The last sync error",
            sync_error_info.clone(),
        );
        registry.register_collector(Box::new(ProcessCounters(counters)));
        registry.register_collector(Box::new(WorkerGauges(workers)));
        let build_info = Family::<Label, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("kiln_build_info", "Version of this Kiln", build_info);
        Metrics {
            registry,
            jobs,
            queue_length,
            builds_running,
            build_duration,
            specs,
            last_sync_success,
            last_sync_attempt,
            sync_error,
            sync_error_info,
            scrape: Mutex::new(()),
        }
    }

    /// The exposition for this view of the store (and the counters as they are now).
    /// Also export the base check's gauges (`web/base.rs`) once a monitor is set.
    pub fn watch_base(&mut self, base: Arc<OnceLock<Arc<crate::base::BaseMonitor>>>) {
        self.registry
            .register_collector(Box::new(super::base::BaseGauges(base)));
    }

    pub fn render(&self, jobs: &JobStats, specs: &SpecIndex, sync: &SyncStatus) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for (status, n) in JobStatus::ALL.iter().zip(jobs.by_status) {
            self.jobs
                .get_or_create(&[("status", status.as_str())])
                .set(gauge_value(n));
        }
        self.queue_length.set(gauge_value(jobs.by_status[0]));
        self.builds_running.set(gauge_value(jobs.by_status[1]));

        self.build_duration.clear();
        for outcome in [JobStatus::Succeeded, JobStatus::Failed] {
            let histogram = self
                .build_duration
                .get_or_create(&[("outcome", outcome.as_str())]);
            for (_, seconds) in jobs.durations.iter().filter(|(s, _)| *s == outcome) {
                histogram.observe(*seconds);
            }
        }

        let invalid = specs.count(SpecStatus::Invalid);
        for (state, n) in [
            ("valid", specs.live.saturating_sub(invalid)),
            ("invalid", invalid),
            ("deleted", specs.deleted),
        ] {
            self.specs
                .get_or_create(&[("state", state)])
                .set(gauge_value(n as u64));
        }

        self.last_sync_success.set(sync.last_success.unwrap_or(0));
        self.last_sync_attempt.set(sync.last_attempt.unwrap_or(0));
        self.sync_error.set(i64::from(sync.error.is_some()));
        self.sync_error_info.clear();
        if let Some(error) = &sync.error {
            let message: String = error.chars().take(MAX_LABEL_CHARS).collect();
            self.sync_error_info
                .get_or_create(&[("message", message)])
                .set(1);
        }

        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// This process's counters, read when scraped.
#[derive(Debug)]
struct ProcessCounters(Arc<Counters>);

impl ProcessCounters {
    fn family(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        key: &'static str,
        values: &[(&'static str, u64)],
    ) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (label, value) in values {
            let labels = [(key, *label)];
            ConstCounter::new(*value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for ProcessCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self::family(
            &mut encoder,
            "kiln_webhooks",
            "Webhook requests since start, by outcome (rejected: bad signature or token).",
            "outcome",
            &[
                ("accepted", load(&c.webhooks_accepted)),
                ("rejected", load(&c.webhooks_rejected)),
            ],
        )?;
        let passes = load(&c.sync_passes);
        let failures = load(&c.sync_failures);
        Self::family(
            &mut encoder,
            "kiln_sync_passes",
            "Looks at the repository (fetch + reconcile) since start, by outcome.",
            "outcome",
            &[
                ("ok", passes.saturating_sub(failures)),
                ("failed", failures),
            ],
        )?;
        let gc_passes = ConstCounter::new(load(&c.gc_passes));
        gc_passes.encode(encoder.encode_descriptor(
            "kiln_gc_passes",
            "Retention passes (log_retention_days, max_jobs_per_spec) since start.",
            None,
            gc_passes.metric_type(),
        )?)?;
        Self::family(
            &mut encoder,
            "kiln_gc_pruned",
            "What retention passes removed since start: job records and log lines.",
            "what",
            &[
                ("jobs", load(&c.gc_jobs_pruned)),
                ("log_lines", load(&c.gc_log_lines_pruned)),
            ],
        )
    }
}

/// One per-worker gauge's value.
type WorkerValue = fn(&crate::pool::WorkerStatus) -> i64;

/// Each build worker's health and load, read from the pool when scraped (nothing when this
/// server builds nothing).
#[derive(Debug)]
struct WorkerGauges(Arc<OnceLock<WorkerPool>>);

impl Collector for WorkerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(pool) = self.0.get() else {
            return Ok(());
        };
        let workers = pool.status();
        let gauges: [(&str, &str, WorkerValue); 3] = [
            (
                "kiln_worker_up",
                "1 when the build worker's last probe answered",
                |w| i64::from(w.healthy),
            ),
            (
                "kiln_worker_running_builds",
                "Builds running on the worker now",
                |w| i64::try_from(w.running).unwrap_or(i64::MAX),
            ),
            (
                "kiln_worker_capacity",
                "Parallel builds the worker takes",
                |w| i64::try_from(w.capacity).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for w in &workers {
                let labels = [("worker", w.name.as_str())];
                ConstGauge::new(value(w)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut builds = encoder.encode_descriptor(
            "kiln_worker_builds",
            "Build attempts placed on the worker since start",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for w in &workers {
            let labels = [("worker", w.name.as_str())];
            ConstCounter::new(w.builds).encode(builds.encode_family(&labels)?)?;
        }
        let mut seconds = encoder.encode_descriptor(
            "kiln_worker_build_seconds",
            "Seconds of ended build attempts on the worker since start",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for w in &workers {
            let labels = [("worker", w.name.as_str())];
            ConstCounter::new(w.build_seconds).encode(seconds.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    match scrape(&state.caches, &state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: store read failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "store read failed\n").into_response()
        }
    }
}

async fn scrape(caches: &Caches, state: &AppState) -> Result<String, crate::store::StoreError> {
    let jobs = caches.jobs.get(&state.store).await?;
    let specs = caches.specs.get(&state.store).await?;
    let sync = state.store.sync_status()?;
    Ok(state.metrics.render(&jobs, &specs, &sync))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// One sample of the exposition: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// A strict reader of the text format: every line is `# HELP`, `# TYPE` or a sample of a
    /// family announced by `# TYPE` before it; label values are unescaped.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let name_end = line.find(['{', ' ']).expect("sample name");
            let name = &line[..name_end];
            let mut labels = BTreeMap::new();
            let mut rest = &line[name_end..];
            if let Some(inner) = rest.strip_prefix('{') {
                let mut chars = inner.char_indices();
                let mut key = String::new();
                let end;
                loop {
                    let (i, c) = chars.next().expect("unterminated labels");
                    match c {
                        '}' => {
                            end = i;
                            break;
                        }
                        ',' => {}
                        '=' => {
                            assert_eq!(chars.next().map(|(_, c)| c), Some('"'));
                            let mut value = String::new();
                            loop {
                                match chars.next().expect("unterminated value").1 {
                                    '\\' => match chars.next().expect("escape").1 {
                                        'n' => value.push('\n'),
                                        c => value.push(c),
                                    },
                                    '"' => break,
                                    c => value.push(c),
                                }
                            }
                            labels.insert(std::mem::take(&mut key), value);
                        }
                        c => key.push(c),
                    }
                }
                rest = &inner[end + 1..];
            }
            let value: f64 = rest.trim().parse().expect("sample value");
            let family = types
                .keys()
                .find(|f| {
                    name == f.as_str()
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f.as_str()))
                })
                .unwrap_or_else(|| panic!("sample {name} before its # TYPE"));
            assert!(!family.is_empty());
            samples.push((name.to_string(), labels, value));
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .2
    }

    #[test]
    fn the_exposition_parses_with_kilns_names_and_labels() {
        let counters = Arc::new(Counters::default());
        counters.webhooks_accepted.store(3, Ordering::Relaxed);
        counters.webhooks_rejected.store(1, Ordering::Relaxed);
        counters.sync_passes.store(5, Ordering::Relaxed);
        counters.sync_failures.store(2, Ordering::Relaxed);
        counters.gc_passes.store(4, Ordering::Relaxed);
        counters.gc_jobs_pruned.store(190, Ordering::Relaxed);
        counters.gc_log_lines_pruned.store(7, Ordering::Relaxed);
        let metrics = Metrics::new(counters, Arc::new(OnceLock::new()));
        let jobs = JobStats {
            by_status: [1, 2, 3, 0, 1, 10],
            durations: vec![
                (JobStatus::Succeeded, 5.0),
                (JobStatus::Succeeded, 100.0),
                (JobStatus::Succeeded, 120.0),
                (JobStatus::Failed, 9000.0),
            ],
        };
        let mut specs = SpecIndex {
            live: 6,
            deleted: 2,
            ..SpecIndex::default()
        };
        specs.counts[SpecStatus::ALL
            .iter()
            .position(|s| *s == SpecStatus::Invalid)
            .unwrap()] = 1;
        let sync = SyncStatus {
            last_attempt: Some(1_800_000_100),
            last_success: Some(1_800_000_000),
            error: Some("fetch \"origin\" failed\\\nagain".into()),
        };
        let text = metrics.render(&jobs, &specs, &sync);
        let (types, samples) = parse(&text);

        for (family, kind) in [
            ("kiln_jobs", "gauge"),
            ("kiln_queue_length", "gauge"),
            ("kiln_builds_running", "gauge"),
            ("kiln_build_duration_seconds", "histogram"),
            ("kiln_specs", "gauge"),
            ("kiln_last_sync_success_timestamp_seconds", "gauge"),
            ("kiln_last_sync_attempt_timestamp_seconds", "gauge"),
            ("kiln_sync_error", "gauge"),
            ("kiln_sync_error_info", "gauge"),
            ("kiln_webhooks_total", "counter"),
            ("kiln_sync_passes_total", "counter"),
            ("kiln_gc_passes_total", "counter"),
            ("kiln_gc_pruned_total", "counter"),
            ("kiln_build_info", "gauge"),
        ] {
            assert_eq!(
                types.get(family).map(String::as_str),
                Some(kind),
                "{family}\n{text}"
            );
        }
        assert_eq!(
            value(&samples, "kiln_jobs", &[("status", "cancelled")]),
            10.0
        );
        assert_eq!(value(&samples, "kiln_jobs", &[("status", "queued")]), 1.0);
        assert_eq!(value(&samples, "kiln_queue_length", &[]), 1.0);
        assert_eq!(value(&samples, "kiln_builds_running", &[]), 2.0);
        let bucket = |outcome, le| {
            value(
                &samples,
                "kiln_build_duration_seconds_bucket",
                &[("outcome", outcome), ("le", le)],
            )
        };
        assert_eq!(bucket("succeeded", "10"), 1.0);
        assert_eq!(bucket("succeeded", "120"), 3.0);
        assert_eq!(bucket("succeeded", "+Inf"), 3.0);
        assert_eq!(bucket("failed", "7200"), 0.0);
        assert_eq!(bucket("failed", "+Inf"), 1.0);
        assert_eq!(
            value(
                &samples,
                "kiln_build_duration_seconds_sum",
                &[("outcome", "succeeded")]
            ),
            225.0
        );
        assert_eq!(
            value(
                &samples,
                "kiln_build_duration_seconds_count",
                &[("outcome", "failed")]
            ),
            1.0
        );
        assert_eq!(value(&samples, "kiln_specs", &[("state", "valid")]), 5.0);
        assert_eq!(value(&samples, "kiln_specs", &[("state", "deleted")]), 2.0);
        assert_eq!(
            value(&samples, "kiln_last_sync_success_timestamp_seconds", &[]),
            1_800_000_000.0
        );
        assert_eq!(value(&samples, "kiln_sync_error", &[]), 1.0);
        assert_eq!(
            value(
                &samples,
                "kiln_sync_error_info",
                &[("message", "fetch \"origin\" failed\\\nagain")]
            ),
            1.0
        );
        assert_eq!(
            value(&samples, "kiln_webhooks_total", &[("outcome", "accepted")]),
            3.0
        );
        assert_eq!(
            value(&samples, "kiln_sync_passes_total", &[("outcome", "ok")]),
            3.0
        );
        assert_eq!(
            value(&samples, "kiln_sync_passes_total", &[("outcome", "failed")]),
            2.0
        );
        assert_eq!(value(&samples, "kiln_gc_passes_total", &[]), 4.0);
        assert_eq!(
            value(&samples, "kiln_gc_pruned_total", &[("what", "jobs")]),
            190.0
        );
        assert_eq!(
            value(
                &samples,
                "kiln_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );

        // A later scrape shows the new state: no stale error, the histogram refilled.
        let text = metrics.render(&jobs, &specs, &SyncStatus::default());
        let (_, samples) = parse(&text);
        assert!(!samples.iter().any(|(n, _, _)| n == "kiln_sync_error_info"));
        assert_eq!(bucket_count(&samples), 3.0);
    }

    fn bucket_count(samples: &[Sample]) -> f64 {
        value(
            samples,
            "kiln_build_duration_seconds_count",
            &[("outcome", "succeeded")],
        )
    }
}
