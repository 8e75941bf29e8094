//! The wasmtime engine shared by every plugin, and the thread that drives its
//! epoch so that call deadlines fire.

use super::cache::ComponentCache;
use super::limits::EPOCH_TICK;
use crate::config::Pooling;
use crate::error::EngineError;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// What the engine must accommodate; derived from the plugin configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Whether instances come from wasmtime's pooling allocator.
    pub pooling: Pooling,
    /// The largest memory cap of any plugin: the size of one pool slot.
    pub max_memory_bytes: usize,
    /// How many plugin instances may be alive at once.
    pub max_instances: u32,
    /// Where compiled plugins are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// The most bytes of compiled plugins the cache keeps (least recently
    /// used pruned first).
    pub cache_max_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            pooling: Pooling::Auto,
            max_memory_bytes: 64 << 20,
            max_instances: 16,
            cache_dir: None,
            cache_max_bytes: crate::cache::DEFAULT_MAX_BYTES,
        }
    }
}

/// Instances `plugins` plugins may have alive at once, when `workers`
/// threads call them: each worker holds at most one instance of a plugin at
/// a time (a call that traps drops its instance before a fresh one is made),
/// and each plugin keeps a few idle ones for reuse.
pub fn instances_for(plugins: usize, workers: usize) -> u32 {
    let per_plugin = workers.max(1) + super::MAX_IDLE_INSTANCES;
    u32::try_from(plugins.max(1) * per_plugin).unwrap_or(u32::MAX)
}

/// How plugin instances get their memory: from a pool reserved at start or
/// on demand, and how much address space each memory reserves.
///
/// *Wide* memories reserve wasmtime's default (4 GiB plus guard pages on
/// 64-bit hosts), which lets compiled code leave out bounds checks; a pool
/// of them takes tens of GiB of address space (see `docs/limits.md`).
/// *Compact* memories reserve only the largest `memory_mb` cap: compiled
/// code checks bounds (slower plugins), and the address space fits small
/// boards, 32-bit ones, a limited `ulimit -v`, and emulators that pay for
/// every reserved page (qemu-user before 8.1 keeps a descriptor per page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Allocation {
    /// A pool of wide memories.
    PooledWide,
    /// A pool of compact memories.
    PooledCompact,
    /// Wide memories, each reserved when an instance is made.
    OnDemandWide,
    /// Compact memories, each reserved when an instance is made.
    OnDemandCompact,
}

impl Allocation {
    /// Whether instances come from a pool.
    pub fn is_pooled(self) -> bool {
        matches!(self, Allocation::PooledWide | Allocation::PooledCompact)
    }

    /// Whether each memory reserves only its cap.
    pub fn is_compact(self) -> bool {
        matches!(
            self,
            Allocation::PooledCompact | Allocation::OnDemandCompact
        )
    }
}

/// The engine, its compiled-plugin cache and its epoch ticker.
pub struct PluginEngine {
    engine: Engine,
    cache: ComponentCache,
    allocation: Allocation,
    ticker: EpochTicker,
}

impl PluginEngine {
    /// An engine for `options`, with its cache and a running epoch ticker.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        use Allocation::*;
        // Most capable first: a pool makes instances fastest, wide memories
        // run plugins fastest. Small boards and limited address spaces
        // cannot reserve a wide pool; the next choice is as safe, only
        // slower (every cap is enforced the same way by each store's limiter).
        let choices: &[Allocation] = match options.pooling {
            Pooling::Off => &[OnDemandWide],
            Pooling::On => &[PooledWide, PooledCompact],
            Pooling::Auto => &[PooledWide, PooledCompact, OnDemandCompact],
        };
        let mut refused = Vec::new();
        let mut made = None;
        for &allocation in choices {
            match Engine::new(&engine_config(allocation, options)) {
                // A pool that takes nearly all the address space left would
                // starve what the agent reserves after it (thread stacks,
                // heaps, loaded code) and fail later, less clearly.
                Ok(_) if allocation.is_pooled() && !address_space_left(POOL_HEADROOM_BYTES) => {
                    refused.push(format!(
                        "{allocation:?}: leaves less than {} MiB of address space for the rest of the agent",
                        POOL_HEADROOM_BYTES >> 20
                    ));
                }
                Ok(engine) => {
                    made = Some((engine, allocation));
                    break;
                }
                Err(e) => refused.push(format!("{allocation:?}: {e:#}")),
            }
        }
        let Some((engine, allocation)) = made else {
            return Err(EngineError::Create(
                anyhow::anyhow!(
                    "runtime.pooling = \"{}\": no way to allocate plugin memory fits this machine ({})",
                    format!("{:?}", options.pooling).to_lowercase(),
                    refused.join("; ")
                )
                .into(),
            ));
        };
        if !refused.is_empty() {
            tracing::warn!(
                "plugin memory: {allocation:?} ({} refused: {})",
                refused.len(),
                refused.join("; ")
            );
        }
        let cache = ComponentCache::new(
            options.cache_dir.clone(),
            allocation.is_compact().then_some(options.max_memory_bytes),
            options.cache_max_bytes,
        );
        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginEngine {
            engine,
            cache,
            allocation,
            ticker,
        })
    }

    /// The wasmtime engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compiled-plugin cache.
    pub(crate) fn cache(&self) -> &ComponentCache {
        &self.cache
    }

    /// Whether instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.allocation.is_pooled()
    }

    /// How instances get their memory.
    pub fn allocation(&self) -> Allocation {
        self.allocation
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// Settings every engine shares. They are part of the compiled-plugin cache
/// key, so changing one invalidates the cache rather than loading bad code.
fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Deadlines: the ticker advances the epoch; a call traps once its
    // deadline (in ticks) has passed. Cheaper than fuel, and wall-clock based,
    // which is what a deadline means to an operator.
    config.epoch_interruption(true);
    config
}

/// The engine's settings for `allocation`.
fn engine_config(allocation: Allocation, options: &EngineOptions) -> Config {
    let mut config = base_config();
    if allocation.is_compact() {
        // Reserve the cap itself: a memory never outgrows it (the store's
        // limiter refuses), so it never moves, and its guard only needs to
        // catch small offsets past the end.
        config.memory_reservation(options.max_memory_bytes as u64);
        config.memory_reservation_for_growth(0);
        config.memory_guard_size(COMPACT_GUARD_BYTES);
    }
    if allocation.is_pooled() {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(options)));
    }
    config
}

/// Address space a pool must leave free for the rest of the agent: thread
/// stacks (up to 8 MiB each), the allocator's arenas (64 MiB each on 64-bit
/// glibc), code; measured: the digits agent runs in 0.75 GiB in all.
const POOL_HEADROOM_BYTES: usize = 512 << 20;

/// Whether `bytes` of address space can still be reserved (reserved and
/// given back at once: no memory is touched).
fn address_space_left(bytes: usize) -> bool {
    // SAFETY: a fresh private anonymous mapping, unmapped before returning.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if at == libc::MAP_FAILED {
            return false;
        }
        libc::munmap(at, bytes);
        true
    }
}

/// The guard after a compact memory.
const COMPACT_GUARD_BYTES: u64 = 64 << 10;

fn pool(options: &EngineOptions) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    let instances = options.max_instances.max(1);
    // A Rust plugin is one component instance holding a few core instances
    // (its module plus the canonical-ABI shims) and usually one memory.
    pool.total_component_instances(instances);
    pool.max_core_instances_per_component(16);
    pool.total_core_instances(instances * 16);
    pool.max_memories_per_component(4);
    pool.total_memories(instances * 2);
    // Fiber stacks serve async calls only, at most one per instance (the
    // default, 1000 stacks, reserves 2 GiB of address space for nothing).
    pool.total_stacks(instances);
    pool.max_tables_per_component(16);
    pool.total_tables(instances * 8);
    // Each slot must hold the largest capped memory; the cap itself is
    // enforced per plugin by its store limiter.
    pool.max_memory_size(options.max_memory_bytes);
    // Interpreted languages (componentize-py) have large instance metadata.
    pool.max_component_instance_size(1 << 20);
    pool.max_core_instance_size(1 << 20);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until stopped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_can_hold_an_instance_of_every_plugin() {
        // 12 workers calling 2 plugins: 24 busy instances plus the idle ones.
        assert_eq!(
            instances_for(2, 12),
            2 * (12 + crate::MAX_IDLE_INSTANCES) as u32
        );
    }
}
