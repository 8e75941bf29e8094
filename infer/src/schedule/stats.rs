//! What a scheduler did: batch-size and queue-time histograms and counters
//! of refused and expired requests, kept with relaxed atomics so that
//! recording costs the batch loop nothing measurable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histograms and counters of what a scheduler did; read through
/// [`SchedulerStats::snapshot`].
#[derive(Debug, Default)]
pub(crate) struct SchedulerStats {
    /// Batches run, by size bucket (1, 2-3, 4-7, ... 128+).
    batch_sizes: [AtomicU64; 8],
    /// Items by queue time bucket (<0.1 ms, <1 ms, <5 ms, <10 ms, <50 ms, <100 ms, <1 s, more).
    queue_times: [AtomicU64; 8],
    /// Sum of the items' queue times, in microseconds.
    queue_time_us: AtomicU64,
    batches: AtomicU64,
    items: AtomicU64,
    rejected_full: AtomicU64,
    timed_out: AtomicU64,
}

/// Upper bounds (exclusive) of the queue time buckets, in microseconds.
pub const QUEUE_TIME_BOUNDS_US: [u64; 7] = [100, 1_000, 5_000, 10_000, 50_000, 100_000, 1_000_000];
/// Largest batch size of each batch size bucket but the last (1, 2-3, 4-7...).
pub const BATCH_SIZE_BOUNDS: [u64; 7] = [1, 3, 7, 15, 31, 63, 127];

impl SchedulerStats {
    pub(super) fn record_batch(&self, size: usize) {
        let bucket = (usize::BITS - size.max(1).leading_zeros() - 1).min(7) as usize;
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(size as u64, Ordering::Relaxed);
    }

    pub(super) fn record_rejected_full(&self, items: usize) {
        self.rejected_full
            .fetch_add(items as u64, Ordering::Relaxed);
    }

    pub(super) fn record_timed_out(&self, items: usize) {
        self.timed_out.fetch_add(items as u64, Ordering::Relaxed);
    }

    pub(super) fn record_queue_time(&self, waited: Duration, items: usize) {
        let us = waited.as_micros() as u64;
        let bucket = QUEUE_TIME_BOUNDS_US
            .iter()
            .position(|&b| us < b)
            .unwrap_or(7);
        self.queue_times[bucket].fetch_add(items as u64, Ordering::Relaxed);
        self.queue_time_us
            .fetch_add(us.saturating_mul(items as u64), Ordering::Relaxed);
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
            queue_time_us: self.queue_time_us.load(Ordering::Relaxed),
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

/// What a scheduler did since it started, at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    /// Batches (chunks) run.
    pub batches: u64,
    /// Items run in them.
    pub items: u64,
    /// Items refused because the queue was full.
    pub rejected_full: u64,
    /// Items answered with a timeout because they waited too long to start.
    pub timed_out: u64,
    /// Sum of the items' queue times, in microseconds.
    pub queue_time_us: u64,
    /// Batches by size: (bucket label such as `"4-7"`, count).
    pub batch_size_histogram: Vec<(String, u64)>,
    /// Items by time spent queued: (bucket label such as `"<5ms"`, count).
    pub queue_time_histogram: Vec<(String, u64)>,
}
