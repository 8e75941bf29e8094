//! `[device]` and `[runtime]`: who the device is, where it keeps its
//! state, the plugin engine and the pipeline threads.

use serde::Deserialize;
use sluice_plugin::config::Pooling;
use std::path::PathBuf;

/// `[device]`: who this device is and where it keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Stable id of this device; part of every result's id.
    pub id: String,
    /// Where the device keeps its state (outbox, compiled-plugin cache).
    pub data_dir: PathBuf,
    /// The whole agent's memory budget, MiB, checked at start (see
    /// [`crate::memory`]); 0 (the default): not checked.
    pub memory_budget_mb: u64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            id: "sluice-device".into(),
            data_dir: PathBuf::from("sluice-data"),
            memory_budget_mb: 0,
        }
    }
}

/// `[runtime]`: the plugin engine and the pipeline threads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where compiled plugins (`.cwasm`) and measured execution choices
    /// are kept; default `<data_dir>/cache` (the `sluice` command defaults
    /// to the machine's cache instead, shared by every data directory).
    pub cache_dir: Option<PathBuf>,
    /// The most MiB of compiled plugins kept in `cache_dir`, the least
    /// recently used removed first; default 1024.
    pub cache_max_mb: Option<u64>,
    /// Use wasmtime's pooling allocator: `auto` tries it and falls back to
    /// smaller reservations when the machine's address space cannot hold it
    /// (see [`crate::plugin::Allocation`]).
    #[serde(default)]
    pub pooling: Pooling,
    /// Largest model a plugin may load from its own bytes through `wasi:nn`
    /// `load`; 0 (the default) refuses such loads.
    #[serde(default)]
    pub guest_model_max_bytes: usize,
    /// Threads running pipeline batches (plugin calls, waiting for the
    /// scheduler), shared by all pipelines; 0 (the default) = one per core,
    /// at most [`RuntimeConfig::MAX_WORKERS`]. Each plugin may have this many
    /// instances busy at once.
    #[serde(default)]
    pub workers: usize,
    /// The onnxruntime shared library for models with `engine =
    /// "onnxruntime"` or `"auto"` in builds with the `onnxruntime` feature;
    /// default: the path in `ORT_DYLIB_PATH`.
    pub onnxruntime_library: Option<PathBuf>,
}

impl RuntimeConfig {
    /// The most pipeline threads a configuration may ask for.
    pub const MAX_WORKERS: usize = 256;

    /// `cache_max_mb` in bytes, its default applied.
    pub fn cache_max_bytes(&self) -> u64 {
        self.cache_max_mb
            .map_or(sluice_plugin::DEFAULT_CACHE_MAX_BYTES, |mb| {
                mb.saturating_mul(1 << 20)
            })
    }

    /// `workers`, with 0 resolved to the number of cores.
    pub fn resolved_workers(&self) -> usize {
        match self.workers {
            0 => sluice_types::available_cores().min(Self::MAX_WORKERS),
            n => n,
        }
    }
}
