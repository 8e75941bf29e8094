//! Metrics: what the agent is doing, for Prometheus to scrape at
//! `GET /metrics` (OpenMetrics text, through `prometheus-client`).
//!
//! Names follow Prometheus conventions: the `sluice_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` for counters. Two kinds of sources:
//! * events the stages record as they happen ([`Metrics`]'s methods: items
//!   by outcome, stage latencies, ingest, uploads), each a few relaxed
//!   atomic adds, recorded per group or per item, never under a lock;
//! * state read when scraped (`scrape.rs`): the outbox (pending, oldest,
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

mod quantiles;
mod scrape;

use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels: pairs of a fixed name and a value.
type Labels = Vec<(&'static str, String)>;

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
    stage_quantiles: quantiles::Quantiles,
    consumer_quantiles: quantiles::Quantiles,
    consumer_events: Family<Labels, Counter>,
    consumer_lag: Family<Labels, Gauge>,
}

impl Default for Metrics {
    /// Metrics that record but read no running parts (tests, tools).
    fn default() -> Self {
        Metrics::build(None)
    }
}

impl Metrics {
    /// Metrics whose registry also encodes `scraped` (the state read at
    /// each scrape, see `scrape.rs`).
    fn build(scraped: Option<Box<dyn Collector>>) -> Metrics {
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
            "Upload attempts, by outcome (acknowledged, failed, miscounted: an acknowledgement whose counts do not add up to the records sent, unverified: one not signed by a pinned collector key for this device and these records, busy: the collector asked to come back later, split, set_aside)",
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
        let stage_quantiles = quantiles::Quantiles::register(
            &mut registry,
            "stage_latency",
            "each stage's time per item over its last 1024 items, by pipeline and stage (as stage_seconds)",
        );
        let consumer_quantiles = quantiles::Quantiles::register(
            &mut registry,
            "consumer_latency",
            "the time from an input's acceptance to its result's delivery to a local consumer, over the consumer's last 1024 results (ms resolution: the record's times are in ms)",
        );
        let consumer_events = Family::<Labels, Counter>::default();
        registry.register(
            "consumer_results",
            "Results of each local consumer, by outcome (delivered; refused: answered a permanent refusal, skipped; missed: deleted from the kept results before the consumer took them) and attempts that failed (failed)",
            consumer_events.clone(),
        );
        let consumer_lag = Family::<Labels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Results kept on the device that a local consumer has not taken yet",
            consumer_lag.clone(),
        );
        if let Some(scraped) = scraped {
            registry.register_collector(scraped);
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
            stage_quantiles,
            consumer_quantiles,
            consumer_events,
            consumer_lag,
        }
    }

    /// Everything, as OpenMetrics text (`sluice_serve::metrics` answers it, or the Prometheus text format).
    pub fn encode(&self) -> String {
        self.stage_quantiles.export();
        self.consumer_quantiles.export();
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
        let labels = vec![
            ("pipeline", pipeline.to_owned()),
            ("stage", stage.to_owned()),
        ];
        let histogram = self.stage.get_or_create(&labels);
        self.stage_quantiles.record(labels, took, items);
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

    /// Local consumer `consumer` took results that waited `latencies` from
    /// their input's acceptance.
    pub fn consumer_delivered(&self, consumer: &str, latencies: &[Duration]) {
        self.consumer_event(consumer, "delivered", latencies.len() as u64);
        for took in latencies {
            self.consumer_quantiles
                .record(vec![("consumer", consumer.to_owned())], *took, 1);
        }
    }

    /// `n` results of local consumer `consumer` ended as `outcome`
    /// (`refused`, `missed`) or `n` attempts failed (`failed`).
    pub fn consumer_event(&self, consumer: &str, outcome: &'static str, n: u64) {
        if n > 0 {
            self.consumer_events
                .get_or_create(&vec![
                    ("consumer", consumer.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .inc_by(n);
        }
    }

    /// Local consumer `consumer` has `lag` kept results still to take.
    pub fn consumer_lag(&self, consumer: &str, lag: u64) {
        self.consumer_lag
            .get_or_create(&vec![("consumer", consumer.to_owned())])
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }
}
