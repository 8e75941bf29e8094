//! Per-plugin resource limits: a wall-clock deadline per call, enforced with
//! epoch interruption, and a linear-memory cap per instance.
//!
//! Neither covers host code: work the host does on a guest's behalf (e.g.
//! inference through `wasi:nn`) is bounded by the scheduler, not here.

use std::time::Duration;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// How often the engine's epoch advances. A deadline is rounded up to whole
/// ticks, so a call may overrun its budget by at most one tick. 10 ms keeps the
/// ticker thread's cost negligible on small boards while staying well below
/// any useful plugin deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The limits of one plugin, from its configuration.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// Wall-clock budget of one call (one batch).
    pub timeout: Duration,
    /// Linear-memory cap of one instance, in bytes.
    pub memory_bytes: usize,
}

impl PluginLimits {
    /// The call deadline in epoch ticks (at least one; one extra tick because
    /// the current tick may be about to end).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let ticks = self.timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64;
        ticks.max(1) + 1
    }
}

/// A [`ResourceLimiter`] that enforces the memory cap and remembers that it
/// refused a growth, so that the trap which usually follows (a Rust guest
/// aborts when allocation fails) is reported as "memory cap exceeded" rather
/// than as an anonymous `unreachable`.
pub struct MemoryCap {
    cap_bytes: usize,
    inner: StoreLimits,
    /// The size the first refused growth asked for.
    refused: Option<usize>,
}

impl MemoryCap {
    pub fn new(cap_bytes: usize) -> Self {
        // One component instance holds a handful of core instances, tables and
        // memories; these bounds only stop a runaway guest, the pool or the
        // memory cap are the real limits.
        let inner = StoreLimitsBuilder::new()
            .memory_size(cap_bytes)
            .table_elements(1 << 20)
            .instances(64)
            .tables(64)
            .memories(8)
            .build();
        MemoryCap {
            cap_bytes,
            inner,
            refused: None,
        }
    }

    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }

    /// The memory size a refused growth asked for, if one was refused since
    /// the instance was created.
    pub fn refused(&self) -> Option<usize> {
        self.refused
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.refused.get_or_insert(desired);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_to_whole_ticks_plus_one() {
        let limits = |ms| PluginLimits {
            timeout: Duration::from_millis(ms),
            memory_bytes: 0,
        };
        assert_eq!(limits(1).deadline_ticks(), 2);
        assert_eq!(limits(10).deadline_ticks(), 2);
        assert_eq!(limits(11).deadline_ticks(), 3);
        assert_eq!(limits(1000).deadline_ticks(), 101);
    }

    #[test]
    fn refused_growth_is_remembered() {
        let mut cap = MemoryCap::new(1 << 20);
        assert!(cap.memory_growing(0, 1 << 19, None).unwrap());
        assert_eq!(cap.refused(), None);
        assert!(!cap.memory_growing(1 << 19, 2 << 20, None).unwrap());
        assert_eq!(cap.refused(), Some(2 << 20));
    }
}
