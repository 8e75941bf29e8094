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
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            pooling: Pooling::Auto,
            max_memory_bytes: 64 << 20,
            max_instances: 16,
            cache_dir: None,
        }
    }
}

impl EngineOptions {
    /// What the plugins of `config` need.
    pub fn for_config(config: &crate::config::Config) -> EngineOptions {
        EngineOptions {
            pooling: config.runtime.pooling,
            max_memory_bytes: config
                .plugins
                .values()
                .map(|p| p.memory_bytes())
                .max()
                .unwrap_or(64 << 20),
            max_instances: instances_for(config.plugins.len(), config.runtime.resolved_workers()),
            cache_dir: Some(config.cache_dir()),
        }
    }
}

/// Instances `plugins` plugins may have alive at once, when `workers`
/// threads call them: each worker holds at most one instance of a plugin at
/// a time (a call that traps drops its instance before a fresh one is made),
/// and each plugin keeps a few idle ones for reuse.
pub(crate) fn instances_for(plugins: usize, workers: usize) -> u32 {
    let per_plugin = workers.max(1) + super::MAX_IDLE_INSTANCES;
    u32::try_from(plugins.max(1) * per_plugin).unwrap_or(u32::MAX)
}

/// The engine, its compiled-plugin cache and its epoch ticker.
pub struct PluginEngine {
    engine: Engine,
    cache: ComponentCache,
    pooling: bool,
    ticker: EpochTicker,
}

impl PluginEngine {
    /// An engine for `options`, with its cache and a running epoch ticker.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        let create =
            |config: &Config| Engine::new(config).map_err(|e| EngineError::Create(e.into()));
        let (engine, pooling) = match options.pooling {
            Pooling::Off => (create(&base_config())?, false),
            Pooling::On => (create(&pooled_config(options))?, true),
            Pooling::Auto => match Engine::new(&pooled_config(options)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    // Small ARM boards often cannot reserve the pool's address
                    // space; on-demand allocation is slower to instantiate but
                    // otherwise equivalent.
                    tracing::warn!("pooling allocator unavailable, allocating on demand: {e:#}");
                    (create(&base_config())?, false)
                }
            },
        };
        let cache = ComponentCache::new(options.cache_dir.clone());
        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginEngine {
            engine,
            cache,
            pooling,
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
        self.pooling
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

fn pooled_config(options: &EngineOptions) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    let instances = options.max_instances.max(1);
    // A Rust plugin is one component instance holding a few core instances
    // (its module plus the canonical-ABI shims) and usually one memory.
    pool.total_component_instances(instances);
    pool.max_core_instances_per_component(16);
    pool.total_core_instances(instances * 16);
    pool.max_memories_per_component(4);
    pool.total_memories(instances * 2);
    pool.max_tables_per_component(16);
    pool.total_tables(instances * 8);
    // Each slot must hold the largest capped memory; the cap itself is
    // enforced per plugin by its store limiter.
    pool.max_memory_size(options.max_memory_bytes);
    // Interpreted languages (componentize-py) have large instance metadata.
    pool.max_component_instance_size(1 << 20);
    pool.max_core_instance_size(1 << 20);
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
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
            2 * (12 + crate::plugin::MAX_IDLE_INSTANCES) as u32
        );
        let config = crate::config::Config::parse(
            "[runtime]\nworkers = 40\n[plugins.a]\npath = \"a.wasm\"\n[plugins.b]\npath = \"b.wasm\"\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        assert!(EngineOptions::for_config(&config).max_instances >= 80);
    }
}
