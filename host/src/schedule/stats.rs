//! What a scheduler did: batch-size and queue-time histograms and counters
//! of refused and expired requests, kept with relaxed atomics so that
//! recording costs the batch loop nothing measurable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histograms of what the scheduler did.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Batches run, by size bucket (1, 2-3, 4-7, ... 128+).
    batch_sizes: [AtomicU64; 8],
    /// Items by queue time bucket (<0.1 ms, <1 ms, <5 ms, <10 ms, <50 ms, <100 ms, <1 s, more).
    queue_times: [AtomicU64; 8],
    pub batches: AtomicU64,
    pub items: AtomicU64,
    pub rejected_full: AtomicU64,
    pub timed_out: AtomicU64,
}

const QUEUE_TIME_BOUNDS_US: [u64; 7] = [100, 1_000, 5_000, 10_000, 50_000, 100_000, 1_000_000];

impl SchedulerStats {
    pub(super) fn record_batch(&self, size: usize) {
        let bucket = (usize::BITS - size.max(1).leading_zeros() - 1).min(7) as usize;
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(size as u64, Ordering::Relaxed);
    }

    pub(super) fn record_queue_time(&self, waited: Duration, items: usize) {
        let us = waited.as_micros() as u64;
        let bucket = QUEUE_TIME_BOUNDS_US
            .iter()
            .position(|&b| us < b)
            .unwrap_or(7);
        self.queue_times[bucket].fetch_add(items as u64, Ordering::Relaxed);
    }

    /// A plain snapshot for reports.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &[AtomicU64; 8]| {
            a.iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        StatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            rejected_full: self.rejected_full.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            batch_size_histogram: [
                "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127", "128+",
            ]
            .iter()
            .map(|s| s.to_string())
            .zip(load(&self.batch_sizes))
            .collect(),
            queue_time_histogram: [
                "<0.1ms", "<1ms", "<5ms", "<10ms", "<50ms", "<100ms", "<1s", ">=1s",
            ]
            .iter()
            .map(|s| s.to_string())
            .zip(load(&self.queue_times))
            .collect(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    pub batches: u64,
    pub items: u64,
    pub rejected_full: u64,
    pub timed_out: u64,
    pub batch_size_histogram: Vec<(String, u64)>,
    pub queue_time_histogram: Vec<(String, u64)>,
}
