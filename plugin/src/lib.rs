//! # sluice-plugin: the plugin host
//!
//! Loads pre- and post-processing plugins (WebAssembly components, see
//! `wit/`) and calls them batch by batch, sandboxed: the thin layer over
//! wasmtime, as Spin's `core`. It imports only leaves and the inference
//! crate (a guest's `wasi:nn` calls go to the model's scheduler); the agent
//! assembles plugins into pipelines.
//!
//! Invariants:
//! * a plugin sees only what its [`Grants`] allow (nothing by default);
//! * every call runs under the plugin's deadline and memory cap;
//! * a call returns exactly one result per item, in order, whatever the
//!   plugin does: a trap, a timeout or a broken contract becomes an
//!   [`ItemError`] on the affected items only, the instance is discarded and a
//!   fresh one serves the next call;
//! * loading a plugin either yields a ready, initialized plugin or one
//!   [`PluginError`] naming the plugin and the cause.

#![deny(missing_docs)]

// bindings <-> nn <-> sandbox is a circle on purpose: wasmtime's bindgen!
// maps the WIT resources to nn.rs's host types, which hold the generated
// enums, and the instance state (sandbox.rs) holds the wasi:nn context
// whose host traits nn.rs implements for it (wasmtime-wasi's pattern).
// Allowed in .ci/house.py for that.
mod bindings;
pub mod bundled;
mod cache;
pub mod config;
pub use config::read_wasm;

/// The log target of what plugins say (their `stdio` when granted, their
/// `wasi:logging` calls): a log filter names it to show or hide plugins'
/// output apart from the host's (`sluice`'s default shows it at `info`).
pub const OUTPUT_TARGET: &str = "plugin_output";
mod engine;
pub mod error;
mod inspect;
pub(crate) mod limits;
mod nn;
pub mod options;
mod sandbox;
mod stdio;

pub use cache::{CacheOutcome, DEFAULT_MAX_BYTES as DEFAULT_CACHE_MAX_BYTES};
pub use engine::{Allocation, EngineOptions, PluginEngine, instances_for};
pub use inspect::{ComponentReport, inspect_component};
pub use limits::PluginLimits;
pub use nn::{MAX_GUEST_ITEMS, NnContext, scheduler_nn};
pub(crate) use sandbox::PluginState;

use crate::config::{Grants, PluginConfig};
use crate::error::{EngineError, PluginError, PluginErrorCause};
use bindings::{
    Item, POSTPROCESS_EXPORT, PREPROCESS_EXPORT, from_wit_tensor, post, pre, to_wit_meta,
    to_wit_raw, to_wit_tensor, wit,
};
use sha2::{Digest, Sha256};
use sluice_types::{Document, Fault, Inferred, ItemError, ItemResults, RawItem, Tensor};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Store, Trap};

/// Which plugin world a component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginKind {
    /// Raw input bytes in, tensors out.
    Preprocessor,
    /// Model outputs in, a result document out.
    Postprocessor,
}

impl PluginKind {
    /// The WIT world of this kind, e.g. `sluice:plugin/preprocessor@0.1.0`.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Preprocessor => "sluice:plugin/preprocessor@0.1.0",
            PluginKind::Postprocessor => "sluice:plugin/postprocessor@0.1.0",
        }
    }

    fn export(self) -> &'static str {
        match self {
            PluginKind::Preprocessor => PREPROCESS_EXPORT,
            PluginKind::Postprocessor => POSTPROCESS_EXPORT,
        }
    }

    /// The kind of a component, from what it exports.
    pub(crate) fn of(component: &Component, engine: &wasmtime::Engine) -> Option<PluginKind> {
        let ty = component.component_type();
        let mut exports = ty.exports(engine).map(|(name, _)| name);
        exports.find_map(|name| match name {
            PREPROCESS_EXPORT => Some(PluginKind::Preprocessor),
            POSTPROCESS_EXPORT => Some(PluginKind::Postprocessor),
            _ => None,
        })
    }
}

/// Builds the `wasi:nn` context of each new plugin instance, so that guests
/// reach the host's models and scheduler.
pub type NnContextFactory = Arc<dyn Fn() -> NnContext + Send + Sync>;

/// Loads plugins into one engine and one linker.
pub struct PluginHost {
    engine: PluginEngine,
    linker: Linker<PluginState>,
    nn: NnContextFactory,
}

impl PluginHost {
    /// A host whose guests see no `wasi:nn` models.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        let no_models: NnContextFactory = Arc::new(NnContext::without_models);
        Self::with_nn(options, no_models)
    }

    /// A host whose guests reach models through `nn`.
    pub fn with_nn(options: &EngineOptions, nn: NnContextFactory) -> Result<Self, EngineError> {
        let engine = PluginEngine::new(options)?;
        let mut linker = Linker::new(engine.engine());
        let linker_error = |e: wasmtime::Error| EngineError::Linker(e.into());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(linker_error)?;
        bindings::log::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |state| state)
            .map_err(linker_error)?;
        nn::add_to_linker(&mut linker).map_err(linker_error)?;
        Ok(PluginHost { engine, linker, nn })
    }

    /// The engine its plugins run in.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// Make sure plugin `name` is compiled in the cache (a full build
    /// compiles it if needed; a runtime-only build can only check).
    pub fn precompile(
        &self,
        name: &str,
        config: &PluginConfig,
    ) -> Result<CacheOutcome, PluginError> {
        let (_, _, outcome) = self
            .compiled(config)
            .map_err(|cause| PluginError::new(name, cause))?;
        Ok(outcome)
    }

    /// The bytes of `config`'s component and the component compiled (or
    /// from the cache), with the errors a configuration's reader needs.
    fn compiled(
        &self,
        config: &PluginConfig,
    ) -> Result<(Cow<'static, [u8]>, Component, CacheOutcome), PluginErrorCause> {
        let wasm = read_wasm(&config.path)?;
        let (component, outcome) = self
            .engine
            .cache()
            .load(self.engine.engine(), &wasm)
            .map_err(|e| too_little_memory(&e, config).unwrap_or_else(|| cache_error(e)))?;
        Ok((wasm, component, outcome))
    }

    /// Load, link and initialize plugin `name`; it must be of `kind`.
    pub fn load(
        &self,
        name: &str,
        config: &PluginConfig,
        kind: PluginKind,
    ) -> Result<Plugin, PluginError> {
        self.load_as(name, config, Some(kind))
    }

    /// Load plugin `name` as whichever kind it is (`sluice plugin run`).
    pub fn load_any(&self, name: &str, config: &PluginConfig) -> Result<Plugin, PluginError> {
        self.load_as(name, config, None)
    }

    fn load_as(
        &self,
        name: &str,
        config: &PluginConfig,
        expected: Option<PluginKind>,
    ) -> Result<Plugin, PluginError> {
        let fail = |cause| PluginError::new(name, cause);
        let (wasm, component, cache) = self.compiled(config).map_err(fail)?;
        let engine = self.engine.engine();
        let found = PluginKind::of(&component, engine);
        let kind = match (found, expected) {
            (Some(found), None) => found,
            (Some(found), Some(expected)) if found == expected => found,
            _ => {
                let exports: Vec<String> = component
                    .component_type()
                    .exports(engine)
                    .map(|(name, _)| name.to_owned())
                    .collect();
                let expected = match expected {
                    Some(kind) => kind.export().to_owned(),
                    None => format!("{PREPROCESS_EXPORT} or {POSTPROCESS_EXPORT}"),
                };
                return Err(fail(PluginErrorCause::WrongWorld {
                    exports: exports.join(", "),
                    expected,
                }));
            }
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| fail(PluginErrorCause::Link(e.into())))?;
        let prepared = match kind {
            PluginKind::Preprocessor => pre::PreprocessorPre::new(instance_pre).map(Prepared::Pre),
            PluginKind::Postprocessor => {
                post::PostprocessorPre::new(instance_pre).map(Prepared::Post)
            }
        }
        .map_err(|e| fail(PluginErrorCause::Link(e.into())))?;
        let config_json =
            serde_json::to_string(&config.config).expect("a TOML table is valid JSON");
        let plugin = Plugin {
            name: name.into(),
            kind,
            digest: hex::encode(Sha256::digest(&wasm)),
            cache,
            prepared,
            config_json,
            grants: config.grants.clone(),
            limits: PluginLimits {
                timeout: config.timeout(),
                memory_bytes: config.memory_bytes(),
            },
            nn: self.nn.clone(),
            idle: Mutex::new(Vec::new()),
            faults: Default::default(),
        };
        // Start one instance now so that a broken plugin is refused at
        // start-up, with its own message, rather than on the first item.
        let live = plugin.instantiate()?;
        plugin.check_in(live);
        Ok(plugin)
    }
}

/// Why a component could not be had from the cache: with a compiler, the
/// bytes are not a component; without one, it was not precompiled.
fn cache_error(e: wasmtime::Error) -> PluginErrorCause {
    if cfg!(feature = "compiler") {
        PluginErrorCause::NotAComponent(e.into())
    } else {
        PluginErrorCause::NotPrecompiled(e.into())
    }
}

/// The pooling allocator refuses, at load, a component whose memory starts
/// larger than a pool slot (a Python or JavaScript runtime starts at 9-13
/// MiB): say which setting to raise, not "not a WebAssembly component".
fn too_little_memory(e: &wasmtime::Error, config: &PluginConfig) -> Option<PluginErrorCause> {
    let text = format!("{e:#}");
    let (_, rest) = text.split_once("memory has a minimum byte size of ")?;
    let requested_bytes = rest.split_whitespace().next()?.parse().ok()?;
    Some(PluginErrorCause::InitMemoryCap {
        cap_bytes: config.memory_bytes(),
        requested_bytes,
    })
}

enum Prepared {
    Pre(pre::PreprocessorPre<PluginState>),
    Post(post::PostprocessorPre<PluginState>),
}

enum Exports {
    Pre(pre::Preprocessor),
    Post(post::Postprocessor),
}

/// A running instance with its store. After a trap it is dropped, never reused.
struct Live {
    store: Store<PluginState>,
    exports: Exports,
}

/// A loaded, initialized plugin. Calls may come from many threads; each call
/// takes an idle instance or creates one.
pub struct Plugin {
    name: Arc<str>,
    kind: PluginKind,
    digest: String,
    cache: CacheOutcome,
    prepared: Prepared,
    config_json: String,
    grants: Grants,
    limits: PluginLimits,
    nn: NnContextFactory,
    idle: Mutex<Vec<Live>>,
    /// Instances discarded, by [`Fault::kind`] (in [`Fault::KINDS`] order).
    faults: [AtomicU64; 4],
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("digest", &self.digest)
            .finish()
    }
}

/// How many idle instances a plugin keeps for reuse.
pub(crate) const MAX_IDLE_INSTANCES: usize = 4;

impl Plugin {
    /// Its name in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is a preprocessor or a postprocessor.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Bytes of its compiled code and data, mapped while it is loaded (part
    /// of the agent's memory budget).
    pub fn code_bytes(&self) -> u64 {
        let component = match &self.prepared {
            Prepared::Pre(p) => p.instance_pre().component(),
            Prepared::Post(p) => p.instance_pre().component(),
        };
        let image = component.image_range();
        (image.end as usize).saturating_sub(image.start as usize) as u64
    }

    /// Instances discarded (and so restarted) since it started, by fault
    /// kind: `(kind, count)` for each of [`Fault::KINDS`].
    pub fn faults(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|i| (Fault::KINDS[i], self.faults[i].load(Ordering::Relaxed)))
    }

    fn count_fault(&self, fault: &Fault) {
        let i = Fault::KINDS
            .iter()
            .position(|k| *k == fault.kind())
            .unwrap_or(0);
        self.faults[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the compiled component came from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Its call deadline and memory cap.
    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// Turn raw inputs into tensors; one result per input, in order.
    pub fn preprocess(&self, items: &[RawItem]) -> ItemResults<Vec<Tensor>> {
        self.run(items, &|live, items| {
            let Exports::Pre(exports) = &live.exports else {
                unreachable!("kind checked at load")
            };
            let inputs: Vec<_> = items.iter().map(to_wit_raw).collect();
            let results = exports
                .sluice_plugin_preprocess()
                .call_preprocess(&mut live.store, &inputs)?;
            Ok(results
                .into_iter()
                .map(|r| {
                    r.map(|ts| ts.into_iter().map(from_wit_tensor).collect())
                        .map_err(|e| self.item_error(e))
                })
                .collect())
        })
    }

    /// Turn model outputs into documents; one result per output, in order.
    pub fn postprocess(&self, items: &[Inferred]) -> ItemResults<Document> {
        self.run(items, &|live, items| {
            let Exports::Post(exports) = &live.exports else {
                unreachable!("kind checked at load")
            };
            let outputs: Vec<_> = items
                .iter()
                .map(
                    |item| post::exports::sluice::plugin::postprocess::InferenceOutput {
                        meta: to_wit_meta(&item.meta),
                        tensors: item.tensors.iter().map(to_wit_tensor).collect(),
                    },
                )
                .collect();
            let results = exports
                .sluice_plugin_postprocess()
                .call_postprocess(&mut live.store, &outputs)?;
            Ok(results
                .into_iter()
                .map(|r| {
                    r.map(|d| Document {
                        content_type: d.content_type,
                        body: d.body,
                    })
                    .map_err(|e| self.item_error(e))
                })
                .collect())
        })
    }

    /// Call the plugin on a batch and isolate failures: if the batch call
    /// fails as a whole (trap, deadline, memory cap), the instance is dropped
    /// and each item is retried alone on a fresh instance, so only the items
    /// that cause the failure carry it.
    fn run<I: Item, O>(
        &self,
        items: &[I],
        call: &dyn Fn(&mut Live, &[I]) -> wasmtime::Result<ItemResults<O>>,
    ) -> ItemResults<O> {
        if items.is_empty() {
            return Vec::new();
        }
        let mut live = match self.check_out() {
            Ok(live) => live,
            Err(e) => {
                let fault = Fault::Trap(format!("cannot start a fresh instance: {}", e.cause));
                return items
                    .iter()
                    .map(|_| Err(self.fault(fault.clone())))
                    .collect();
            }
        };
        live.store.set_epoch_deadline(self.limits.deadline_ticks());
        match call(&mut live, items) {
            Ok(results) if results.len() == items.len() => {
                self.check_in(live);
                results
            }
            Ok(results) => {
                let fault = Fault::Contract(format!(
                    "returned {} results for {} items",
                    results.len(),
                    items.len()
                ));
                tracing::warn!(plugin = %self.name, "{fault}; discarding the instance");
                self.count_fault(&fault);
                items
                    .iter()
                    .map(|_| Err(self.fault(fault.clone())))
                    .collect()
            }
            Err(error) => {
                let fault = self.classify(&live, &error);
                drop(live);
                self.count_fault(&fault);
                if let [item] = items {
                    tracing::warn!(plugin = %self.name, item = %item.named(), "{fault}; instance discarded");
                    vec![Err(self.fault(fault))]
                } else {
                    // Which item it was is found by running each alone.
                    tracing::warn!(plugin = %self.name, items = items.len(), "{fault}; instance discarded, each item tried alone");
                    items
                        .chunks(1)
                        .flat_map(|item| self.run(item, call))
                        .collect()
                }
            }
        }
    }

    fn classify(&self, live: &Live, error: &wasmtime::Error) -> Fault {
        let limiter = &live.store.data().limiter;
        if let Some(requested_bytes) = limiter.refused() {
            return Fault::MemoryCap {
                cap_bytes: limiter.cap_bytes(),
                requested_bytes,
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Fault::Deadline(self.limits.timeout),
            Some(trap) => {
                let stderr = live.store.data().captured_stderr();
                // The author's own words (a panic message, an exception)
                // first; wasm's name for the trap after them.
                Fault::Trap(if stderr.is_empty() {
                    trap.to_string()
                } else {
                    format!("{stderr} ({trap})")
                })
            }
            None => Fault::Trap(format!("{error:#}")),
        }
    }

    fn fault(&self, fault: Fault) -> ItemError {
        ItemError::PluginFault {
            plugin: self.name.to_string(),
            fault,
        }
    }

    fn item_error(&self, error: wit::ItemError) -> ItemError {
        let plugin = self.name.to_string();
        match error {
            wit::ItemError::InvalidInput(message) => ItemError::InvalidInput { plugin, message },
            wit::ItemError::Unsupported(message) => ItemError::Unsupported { plugin, message },
            wit::ItemError::Internal(message) => ItemError::Internal { plugin, message },
        }
    }

    /// The idle instances. A panic while the list is held (a host bug)
    /// leaves a list of whole instances, so it is used on, never a reason
    /// for every later call to panic too.
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Live>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_out(&self) -> Result<Live, PluginError> {
        let idle = self.lock_idle().pop();
        match idle {
            Some(live) => Ok(live),
            None => self.instantiate(),
        }
    }

    fn check_in(&self, live: Live) {
        let mut idle = self.lock_idle();
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(live);
        }
    }

    /// A fresh instance, initialized with the plugin's configuration.
    fn instantiate(&self) -> Result<Live, PluginError> {
        let fail = |cause| PluginError::new(&self.name, cause);
        let state = PluginState::new(
            self.name.clone(),
            &self.grants,
            self.limits.memory_bytes,
            (self.nn)(),
        )
        .map_err(fail)?;
        let engine = match &self.prepared {
            Prepared::Pre(p) => p.engine(),
            Prepared::Post(p) => p.engine(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let trapped = |store: &Store<PluginState>, e: wasmtime::Error| {
            let limiter = &store.data().limiter;
            fail(match limiter.refused() {
                // A Python or JS runtime needs megabytes before `init` runs:
                // say which setting to raise, not just "unreachable".
                Some(requested_bytes) => PluginErrorCause::InitMemoryCap {
                    cap_bytes: limiter.cap_bytes(),
                    requested_bytes,
                },
                None => PluginErrorCause::InitTrapped {
                    source: e.into(),
                    stderr: store.data().captured_stderr(),
                },
            })
        };
        let (exports, init) = match &self.prepared {
            Prepared::Pre(p) => {
                let exports = p.instantiate(&mut store).map_err(|e| trapped(&store, e))?;
                let init = exports
                    .sluice_plugin_preprocess()
                    .call_init(&mut store, &self.config_json);
                (Exports::Pre(exports), init)
            }
            Prepared::Post(p) => {
                let exports = p.instantiate(&mut store).map_err(|e| trapped(&store, e))?;
                let init = exports
                    .sluice_plugin_postprocess()
                    .call_init(&mut store, &self.config_json);
                (Exports::Post(exports), init)
            }
        };
        match init {
            Ok(Ok(())) => Ok(Live { store, exports }),
            Ok(Err(message)) => Err(fail(PluginErrorCause::InitRefused(message))),
            Err(e) => Err(trapped(&store, e)),
        }
    }
}
