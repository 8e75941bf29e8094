//! Metrics: what the agent is doing, for Prometheus to scrape at
//! `GET /metrics` (OpenMetrics text, through `prometheus-client`).
//!
//! Names follow Prometheus conventions: the `sluice_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` for counters. Two kinds of sources:
//! * events the stages record as they happen ([`Metrics`]'s methods: items
//!   by outcome, stage latencies, ingest, uploads), each a few relaxed
//!   atomic adds, recorded per group or per item, never under a lock;
//! * state read when scraped ([`Scraped`]): the outbox (pending, oldest,
//!   drops by cause), free disk, each model's scheduler (batch sizes, queue
//!   waits, queue depth, busy refusals, the execution choice), each plugin's
//!   discarded instances by fault, and what runs (versions and digests).
//!   Reading them at scrape time keeps the owners free of metrics code and
//!   costs nothing between scrapes.
//!
//! Invariant: metric and label names are fixed here; labels take only
//! configured names (pipelines, models, plugins), fixed vocabularies
//! (stages, error kinds) and the features of each model's drift profile, so
//! the number of series is bounded by the configuration and the profiles.

use crate::outbox::Outbox;
use crate::runtime::Runtime;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Labels: pairs of a fixed name and a value.
type Labels = Vec<(&'static str, String)>;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets: 10 µs doubling to about 42 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 2.0, 23))
}

/// Acknowledgement lag buckets: from a sync that keeps up (100 ms) to a
/// device offline for a week.
const ACK_LAG_BOUNDS: [f64; 16] = [
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    6.0 * 3600.0,
    86_400.0,
    3.0 * 86_400.0,
    7.0 * 86_400.0,
];

/// The agent's metrics. Cheap to share (`Arc`); recording is lock-free.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    items: Family<Labels, Counter>,
    stage: Family<Labels, Histogram, fn() -> Histogram>,
    accepted: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    uploads: Family<Labels, Counter>,
    upload_records: Counter,
    upload_bytes: Counter,
    ack_lag: Histogram,
    drift_windows: Family<Labels, Counter>,
    installs: Family<Labels, Counter>,
    drift_score: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    /// Metrics that record but read no running parts (tests, tools).
    fn default() -> Self {
        Metrics::build(None)
    }
}

impl Metrics {
    /// The metrics of an agent running `runtime` with `outbox` (whose
    /// device state lives under `data_dir`).
    pub fn new(runtime: Arc<Runtime>, outbox: Arc<Outbox>, data_dir: PathBuf) -> Metrics {
        Metrics::build(Some(Scraped {
            runtime,
            outbox,
            data_dir,
        }))
    }

    fn build(scraped: Option<Scraped>) -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let items = Family::<Labels, Counter>::default();
        registry.register(
            "items",
            "Inputs that became results, by pipeline, outcome (ok, failed) and error kind",
            items.clone(),
        );
        let stage: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency);
        registry.register(
            "stage_seconds",
            "Time per item in each stage: ingest_accept, preprocess, inference (queue wait included), postprocess, outbox_commit, end_to_end (accepted to stored)",
            stage.clone(),
        );
        let accepted = Family::<Labels, Counter>::default();
        registry.register(
            "ingest_accepted",
            "Inputs accepted durably into the journal, by pipeline",
            accepted.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "ingest_refused",
            "Inputs not accepted, by reason (too_large, busy, unknown_pipeline, pipeline_down, bad_key, key_conflict, disk_full, other)",
            refused.clone(),
        );
        let uploads = Family::<Labels, Counter>::default();
        registry.register(
            "upload_batches",
            "Upload attempts, by outcome (acknowledged, failed, miscounted: an acknowledgement whose counts do not add up to the records sent, split, set_aside)",
            uploads.clone(),
        );
        let upload_records = Counter::default();
        registry.register(
            "upload_records",
            "Records acknowledged by the collector",
            upload_records.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register(
            "upload_bytes",
            "Bytes of records acknowledged by the collector (uncompressed)",
            upload_bytes.clone(),
        );
        let ack_lag = Histogram::new(ACK_LAG_BOUNDS);
        registry.register(
            "upload_ack_lag_seconds",
            "Time from a record stored in the outbox to the collector's acknowledgement of it (offline time included)",
            ack_lag.clone(),
        );
        let drift_windows = Family::<Labels, Counter>::default();
        registry.register(
            "drift_windows",
            "Drift windows closed, by pipeline and whether a score crossed its threshold (alarm: true, false)",
            drift_windows.clone(),
        );
        let installs = Family::<Labels, Counter>::default();
        registry.register(
            "bundle_installs",
            "Bundle install steps, by pipeline and outcome (installed, committed, refused, rolled_back)",
            installs.clone(),
        );
        let drift_score = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "drift_score",
            "Each drift score of the last closed window, by pipeline, feature (of the model's profile) and statistic (psi, ks, js)",
            drift_score.clone(),
        );
        if let Some(scraped) = scraped {
            registry.register_collector(Box::new(scraped));
        }
        Metrics {
            registry,
            items,
            stage,
            accepted,
            refused,
            uploads,
            upload_records,
            upload_bytes,
            ack_lag,
            drift_windows,
            installs,
            drift_score,
        }
    }

    /// Everything, as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// An item of `pipeline` became a result: `Ok`, or failed with `kind`.
    pub fn item(&self, pipeline: &str, failed: Option<&str>) {
        let (outcome, kind) = match failed {
            None => ("ok", ""),
            Some(kind) => ("failed", kind),
        };
        self.items
            .get_or_create(&vec![
                ("pipeline", pipeline.to_owned()),
                ("outcome", outcome.to_owned()),
                ("kind", kind.to_owned()),
            ])
            .inc();
    }

    /// `items` items of `pipeline` each spent `took` in `stage`.
    pub fn stage(&self, pipeline: &str, stage: &'static str, took: Duration, items: u64) {
        let histogram = self.stage.get_or_create(&vec![
            ("pipeline", pipeline.to_owned()),
            ("stage", stage.to_owned()),
        ]);
        let seconds = took.as_secs_f64();
        for _ in 0..items {
            histogram.observe(seconds);
        }
    }

    /// `n` inputs of `pipeline` were accepted.
    pub fn accepted(&self, pipeline: &str, n: u64) {
        self.accepted
            .get_or_create(&vec![("pipeline", pipeline.to_owned())])
            .inc_by(n);
    }

    /// An input was refused for `reason`.
    pub fn refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// An upload attempt ended with `outcome`.
    pub fn upload(&self, outcome: &'static str) {
        self.uploads
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    /// A bundle install step for `pipeline` ended with `outcome`.
    pub fn install(&self, pipeline: &str, outcome: &'static str) {
        self.installs
            .get_or_create(&vec![
                ("pipeline", pipeline.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// A drift window of `pipeline` closed with `scores` (the features of
    /// its profile: a bounded set).
    pub fn drift_window(
        &self,
        pipeline: &str,
        alarm: bool,
        scores: &[sluice_protocol::DriftScore],
    ) {
        self.drift_windows
            .get_or_create(&vec![
                ("pipeline", pipeline.to_owned()),
                ("alarm", alarm.to_string()),
            ])
            .inc();
        for score in scores {
            self.drift_score
                .get_or_create(&vec![
                    ("pipeline", pipeline.to_owned()),
                    ("feature", score.feature.clone()),
                    ("statistic", score.statistic.clone()),
                ])
                .set(score.value);
        }
    }

    /// A batch of `bytes` bytes was acknowledged at `now_ms`; its records
    /// were stored at `stored_at_ms` (ms since the Unix epoch).
    pub fn uploaded(&self, stored_at_ms: &[i64], bytes: u64, now_ms: i64) {
        self.upload_records.inc_by(stored_at_ms.len() as u64);
        self.upload_bytes.inc_by(bytes);
        for stored in stored_at_ms {
            // A clock set back between store and ack is not a negative lag.
            self.ack_lag
                .observe((now_ms - stored).max(0) as f64 / 1000.0);
        }
    }
}

/// What is read when scraped: the running parts of an agent.
struct Scraped {
    runtime: Arc<Runtime>,
    outbox: Arc<Outbox>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Write one metric of `kind` named `name` with a value per label set.
fn write<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_outbox(&mut encoder)?;
        self.encode_models(&mut encoder)?;
        self.encode_plugins(&mut encoder)?;
        let info: Vec<(Labels, ConstGauge<i64>)> = vec![(
            vec![("version", sluice_types::VERSION.to_owned())],
            ConstGauge::new(1),
        )];
        write(
            &mut encoder,
            "build_info",
            "The running Sluice",
            MetricType::Gauge,
            info,
        )
    }
}

impl Scraped {
    fn encode_outbox(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |v: u64| ConstGauge::new(v as i64);
        let one = |v: u64| vec![(Labels::new(), gauge(v))];
        if let Ok(status) = self.outbox.status() {
            let now = sluice_types::now_ms();
            write(
                encoder,
                "outbox_pending_records",
                "Results waiting for upload",
                MetricType::Gauge,
                one(status.pending_records),
            )?;
            write(
                encoder,
                "outbox_pending_bytes",
                "Bytes of results waiting for upload",
                MetricType::Gauge,
                one(status.pending_bytes),
            )?;
            write(
                encoder,
                "outbox_max_bytes",
                "The outbox's cap (outbox.max_bytes)",
                MetricType::Gauge,
                one(status.max_bytes),
            )?;
            let oldest = status
                .oldest_created_at_ms
                .map(|t| (now - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            write(
                encoder,
                "outbox_oldest_age_seconds",
                "Age of the oldest result waiting for upload (0: none)",
                MetricType::Gauge,
                vec![(Labels::new(), ConstGauge::new(oldest))],
            )?;
            write(
                encoder,
                "outbox_set_aside_records",
                "Results the collector refused, kept aside",
                MetricType::Gauge,
                one(status.set_aside_records),
            )?;
            write(
                encoder,
                "journal_items",
                "Inputs accepted and not yet processed",
                MetricType::Gauge,
                one(status.journal_items),
            )?;
            write(
                encoder,
                "journal_bytes",
                "Bytes of inputs accepted and not yet processed",
                MetricType::Gauge,
                one(status.journal_bytes),
            )?;
            let last_sync = status
                .last_sync_at_ms
                .map(|t| (now - t).max(0) as f64 / 1000.0)
                .unwrap_or(-1.0);
            write(
                encoder,
                "upload_last_success_age_seconds",
                "Time since the collector was last reached with nothing left to send (-1: never)",
                MetricType::Gauge,
                vec![(Labels::new(), ConstGauge::new(last_sync))],
            )?;
            let events = status
                .counters
                .into_iter()
                .map(|(event, n)| (vec![("event", event)], ConstCounter::new(n.max(0) as u64)));
            write(
                encoder,
                "outbox_records",
                "What happened to results in the outbox, by event (stored, uploaded, dropped_oldest, rejected_full, rejected_too_large, expired, rejected_upstream, set_aside_dropped, duplicates, damaged)",
                MetricType::Counter,
                events,
            )?;
        }
        if let Some(free) = crate::outbox::free_bytes(&self.data_dir) {
            write(
                encoder,
                "disk_free_bytes",
                "Bytes free for the agent on the file system of device.data_dir",
                MetricType::Gauge,
                one(free),
            )?;
        }
        Ok(())
    }

    fn encode_models(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut schedulers = std::collections::BTreeMap::new();
        for pipeline in self.runtime.pipelines() {
            let scheduler = pipeline.scheduler();
            schedulers.insert(scheduler.model().name().to_owned(), scheduler.clone());
        }
        let model = |name: &str| vec![("model", name.to_owned())];
        let stats: Vec<_> = schedulers
            .iter()
            .map(|(name, s)| (name, s, s.stats()))
            .collect();
        // Batch sizes and queue waits come bucketed from the scheduler.
        let mut sizes = encoder.encode_descriptor(
            "batch_size",
            "Items per inference batch (chunk), by model",
            None,
            MetricType::Histogram,
        )?;
        for (name, _, s) in &stats {
            let buckets = histogram_buckets(
                &crate::schedule::BATCH_SIZE_BOUNDS.map(|b| b as f64),
                &s.batch_size_histogram,
            );
            sizes
                .encode_family(&model(name))?
                .encode_histogram::<Labels>(s.items as f64, s.batches, &buckets, None)?;
        }
        let mut waits = encoder.encode_descriptor(
            "queue_wait_seconds",
            "Time items waited in their model's queue, by model",
            None,
            MetricType::Histogram,
        )?;
        for (name, _, s) in &stats {
            let bounds = crate::schedule::QUEUE_TIME_BOUNDS_US.map(|b| b as f64 / 1e6);
            let buckets = histogram_buckets(&bounds, &s.queue_time_histogram);
            let count = s.queue_time_histogram.iter().map(|(_, n)| n).sum();
            waits
                .encode_family(&model(name))?
                .encode_histogram::<Labels>(s.queue_time_us as f64 / 1e6, count, &buckets, None)?;
        }
        write(
            encoder,
            "queue_depth",
            "Items admitted to the model and not yet answered",
            MetricType::Gauge,
            stats
                .iter()
                .map(|(name, sched, _)| (model(name), ConstGauge::new(sched.queue_depth() as i64))),
        )?;
        write(
            encoder,
            "model_busy",
            "Items the model could not take (back-pressure; they stay journaled), by reason",
            MetricType::Counter,
            stats.iter().flat_map(|(name, _, s)| {
                [("queue_full", s.rejected_full), ("timed_out", s.timed_out)].map(|(reason, n)| {
                    (
                        vec![("model", name.to_string()), ("reason", reason.to_owned())],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        write(
            encoder,
            "execution_choice",
            "How each model's batches run, as chosen at start: the engine, chunk size, inference threads and intra-op threads",
            MetricType::Gauge,
            stats.iter().map(|(name, sched, _)| {
                let choice = sched.execution();
                (
                    vec![
                        ("model", name.to_string()),
                        ("engine", sched.model().engine().to_owned()),
                        ("chunk", choice.chunk.to_string()),
                        ("threads", choice.threads.to_string()),
                        ("intra_op", choice.intra_op.to_string()),
                    ],
                    ConstGauge::new(1),
                )
            }),
        )?;
        write(
            encoder,
            "model_info",
            "The running models and the SHA-256 of their files",
            MetricType::Gauge,
            self.runtime.model_sha256.iter().map(|(name, sha)| {
                (
                    vec![("model", name.clone()), ("sha256", sha.clone())],
                    ConstGauge::new(1),
                )
            }),
        )
    }

    fn encode_plugins(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut plugins = std::collections::BTreeMap::new();
        for pipeline in self.runtime.pipelines() {
            for plugin in [pipeline.preprocess(), pipeline.postprocess()] {
                plugins.insert(plugin.name().to_owned(), plugin.clone());
            }
        }
        write(
            encoder,
            "plugin_instance_restarts",
            "Plugin instances discarded and replaced, by plugin and fault (deadline, memory-cap, trap, contract)",
            MetricType::Counter,
            plugins.iter().flat_map(|(name, plugin)| {
                plugin.faults().map(|(fault, n)| {
                    (
                        vec![("plugin", name.clone()), ("fault", fault.to_owned())],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        write(
            encoder,
            "plugin_info",
            "The running plugins and the SHA-256 of their components",
            MetricType::Gauge,
            plugins.iter().map(|(name, plugin)| {
                (
                    vec![
                        ("plugin", name.clone()),
                        ("sha256", plugin.digest().to_owned()),
                    ],
                    ConstGauge::new(1),
                )
            }),
        )
    }
}

/// `(upper bound, count)` per bucket for [`prometheus_client`], from
/// `counts` (one more than `bounds`: the last is past every bound).
fn histogram_buckets(bounds: &[f64], counts: &[(String, u64)]) -> Vec<(f64, u64)> {
    counts
        .iter()
        .enumerate()
        .map(|(i, (_, n))| (bounds.get(i).copied().unwrap_or(f64::MAX), *n))
        .collect()
}
