//! Why the plugin engine or a plugin could not be set up. Always names the
//! plugin; the cause keeps its source chain.

use sluice_types::error::{BoxError, chain_text, root_cause};
use std::path::PathBuf;

/// Why the plugin engine (shared by every plugin) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// wasmtime refused the engine's settings, e.g. the pooling allocator
    /// (`runtime.pooling = "on"`) could not reserve its address space.
    #[error("cannot create the WebAssembly engine: {}", chain_text(.0.as_ref()))]
    Create(#[source] BoxError),
    /// The host's interfaces (WASI, `log`, `wasi:nn`) could not be added to
    /// the linker.
    #[error("cannot add the host interfaces to the linker: {}", chain_text(.0.as_ref()))]
    Linker(#[source] BoxError),
}

/// Why a plugin could not be loaded or started. Always names the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {cause}")]
pub struct PluginError {
    /// The plugin's name in the configuration.
    pub plugin: String,
    /// What went wrong.
    #[source]
    pub cause: PluginErrorCause,
}

/// What went wrong loading or starting a plugin (see [`PluginError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginErrorCause {
    /// The component file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `bundled:NAME` names no plugin shipped in this binary.
    #[error("no bundled plugin named `{name}` (bundled: {})", bundled.join(", "))]
    UnknownBundled {
        /// The name asked for.
        name: String,
        /// The plugins this binary ships.
        bundled: Vec<&'static str>,
    },
    /// The bytes are not a WebAssembly component (a core module, garbage,
    /// or a component for another wasmtime version). Shows the root cause.
    #[error("not a WebAssembly component: {}", root_cause(.0.as_ref()))]
    NotAComponent(#[source] BoxError),
    /// A runtime-only build (no compiler) found no usable precompiled copy
    /// of the component in the cache. Shows the root cause.
    #[error("{}", root_cause(.0.as_ref()))]
    NotPrecompiled(#[source] BoxError),
    /// The component targets neither plugin world, or not the one its
    /// pipeline role needs.
    #[error(
        "component does not target a Sluice plugin world: it exports [{exports}], expected `{expected}`"
    )]
    WrongWorld {
        /// The component's exports, comma-separated.
        exports: String,
        /// The export its role needs.
        expected: String,
    },
    /// The component imports something the host does not provide.
    #[error("cannot be linked against the host: {}", chain_text(.0.as_ref()))]
    Link(#[source] BoxError),
    /// A directory of the plugin's grants cannot be opened.
    #[error("cannot grant directory {}: {}", path.display(), chain_text(source.as_ref()))]
    Grant {
        /// The host directory.
        path: PathBuf,
        /// Why it cannot be opened.
        source: BoxError,
    },
    /// The plugin's `init` returned an error: its message, usually about
    /// its configuration.
    #[error("init refused its configuration: {0}")]
    InitRefused(String),
    /// Instantiating the plugin or running its `init` needed more memory
    /// than its cap.
    #[error("init failed: {}", sluice_types::memory_cap_text(*cap_bytes, *requested_bytes))]
    InitMemoryCap {
        /// The cap (`memory_mb`), in bytes.
        cap_bytes: usize,
        /// The linear-memory size asked for, in bytes.
        requested_bytes: usize,
    },
    /// Instantiating the plugin or running its `init` trapped.
    #[error("init failed: {}{}", chain_text(source.as_ref()), stderr_suffix(stderr))]
    InitTrapped {
        /// The trap, with the guest's backtrace.
        source: BoxError,
        /// What the plugin wrote to stderr (a Rust panic's message), if
        /// stderr was captured; empty otherwise.
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

impl PluginError {
    /// The error of `plugin`, for `cause`.
    pub fn new(plugin: &str, cause: PluginErrorCause) -> Self {
        PluginError {
            plugin: plugin.to_owned(),
            cause,
        }
    }
}
