//! p50 and p99 of recent latencies, for `/metrics` as two gauges (`…_p50_seconds`,
//! `…_p99_seconds`; a `quantile` label belongs to summaries, which
//! `prometheus-client` does not make): a histogram's buckets (doubling) say a p99 only to
//! within a factor of two, too coarse for a device asked to answer within
//! 10 ms. Each series keeps its last [`RING`] samples in a lock-free ring
//! (recording is one atomic add and one store); the quantiles are computed
//! when scraped.
//!
//! Invariant: memory per series is fixed ([`RING`] × 4 bytes), and the
//! series are the label sets the caller gives (configured names and fixed
//! vocabularies), so the whole is bounded by the configuration.

use super::Labels;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Samples kept per series: the quantiles are of the last this many.
pub(super) const RING: usize = 1024;

/// The quantiles reported: p50 and p99.
const QUANTILES: [f64; 2] = [0.5, 0.99];

/// One series' last samples, in microseconds plus one (0: empty slot).
struct Ring {
    samples: Box<[AtomicU32]>,
    next: AtomicUsize,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            samples: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn record(&self, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX - 1);
        let at = self.next.fetch_add(1, Ordering::Relaxed) % RING;
        self.samples[at].store(us.saturating_add(1), Ordering::Relaxed);
    }

    /// The quantiles of what is kept, in seconds (`None`: nothing yet).
    fn quantiles(&self) -> Option<[f64; QUANTILES.len()]> {
        let mut kept: Vec<u32> = self
            .samples
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s > 0)
            .collect();
        if kept.is_empty() {
            return None;
        }
        kept.sort_unstable();
        Some(QUANTILES.map(|q| {
            // Nearest rank: the smallest sample with at least q of them at or below it.
            let rank = ((q * kept.len() as f64).ceil() as usize).clamp(1, kept.len());
            f64::from(kept[rank - 1] - 1) / 1e6
        }))
    }
}

/// A gauge family of one quantile.
pub(super) type QuantileGauges = Family<Labels, Gauge<f64, AtomicU64>>;

/// Series of recent latencies, exported into gauge families (p50, p99)
/// when scraped.
pub(super) struct Quantiles {
    series: RwLock<HashMap<Labels, Arc<Ring>>>,
    gauges: [QuantileGauges; QUANTILES.len()],
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quantiles").finish_non_exhaustive()
    }
}

impl Quantiles {
    /// Quantiles exported as `NAME_p50_seconds` and `NAME_p99_seconds`
    /// of `registry`, "The p50 (p99) of WHAT".
    pub(super) fn register(registry: &mut Registry, name: &str, what: &str) -> Quantiles {
        let gauges = [QuantileGauges::default(), QuantileGauges::default()];
        for (gauge, q) in gauges.iter().zip(["p50", "p99"]) {
            registry.register(
                format!("{name}_{q}_seconds"),
                format!("The {q} of {what}"),
                gauge.clone(),
            );
        }
        Quantiles {
            series: RwLock::default(),
            gauges,
        }
    }

    /// `took`, `n` times, in series `labels`.
    pub(super) fn record(&self, labels: Labels, took: Duration, n: u64) {
        let found = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&labels)
            .cloned();
        let ring = match found {
            Some(ring) => ring,
            None => self
                .series
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(labels)
                .or_insert_with(|| Arc::new(Ring::new()))
                .clone(),
        };
        for _ in 0..n.min(RING as u64) {
            ring.record(took);
        }
    }

    /// Set the gauges from what the series hold now (before encoding).
    pub(super) fn export(&self) {
        let series: Vec<(Labels, Arc<Ring>)> = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(l, r)| (l.clone(), r.clone()))
            .collect();
        for (labels, ring) in series {
            let Some(values) = ring.quantiles() else {
                continue;
            };
            for (gauges, value) in self.gauges.iter().zip(values) {
                gauges.get_or_create(&labels).set(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantiles_are_of_the_last_samples_by_nearest_rank() {
        let ring = Ring::new();
        assert!(ring.quantiles().is_none());
        for ms in 1..=100 {
            ring.record(Duration::from_millis(ms));
        }
        assert_eq!(ring.quantiles(), Some([0.050, 0.099]));
        // Old samples leave as new ones come.
        for _ in 0..RING {
            ring.record(Duration::from_micros(300));
        }
        assert_eq!(ring.quantiles(), Some([0.0003, 0.0003]));
    }
}
