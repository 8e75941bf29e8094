//! The state read when Prometheus scrapes: the outbox, free disk, each
//! model's scheduler, each plugin's discarded instances, what runs. The one
//! file of metrics that knows the running parts (the events above it are a
//! facade every stage may use without knowing them).

use super::{Labels, Metrics};
use crate::outbox::Outbox;
use crate::runtime::Runtime;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::path::PathBuf;
use std::sync::Arc;

impl Metrics {
    /// The metrics of an agent running `runtime` with `outbox` (whose
    /// device state lives under `data_dir`).
    pub fn new(runtime: Arc<Runtime>, outbox: Arc<Outbox>, data_dir: PathBuf) -> Metrics {
        Metrics::build(Some(Box::new(Scraped {
            runtime,
            outbox,
            data_dir,
        })))
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
