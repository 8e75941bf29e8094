//! A plugin's configuration (`[plugins.NAME]` in the device's file): the
//! component, its limits and what it may touch; and `runtime.pooling`.
//! Parsed by the agent's config loader, which checks the ranges.

use crate::error::PluginErrorCause;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One plugin: a WebAssembly component and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the `.wasm` component, or `bundled:NAME` for a plugin shipped
    /// inside the `sluice` binary.
    pub path: PluginSource,
    /// Wall-clock budget of one call into the plugin (one batch).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear-memory cap of one instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// The plugin's own configuration, handed to its `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: toml::Table,
    /// What the plugin may touch. Nothing by default.
    #[serde(default)]
    pub grants: Grants,
}

/// Where a plugin's component comes from: `bundled:NAME` (shipped inside
/// the binary) or a path to a `.wasm` file.
#[derive(Debug, Clone, PartialEq, Eq)]
// Exhaustive on purpose: a new kind of source must be handled wherever a
// plugin is read (bundles copy files, validation resolves them).
pub enum PluginSource {
    /// A plugin shipped inside the binary, by name.
    Bundled(String),
    /// A component file.
    File(PathBuf),
}

impl PluginSource {
    /// The prefix of bundled plugins' paths.
    pub const BUNDLED_PREFIX: &str = "bundled:";

    /// `bundled:NAME` or a file path.
    pub fn parse(text: &str) -> PluginSource {
        match text.strip_prefix(Self::BUNDLED_PREFIX) {
            Some(name) => PluginSource::Bundled(name.to_owned()),
            None => PluginSource::File(PathBuf::from(text)),
        }
    }
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Bundled(name) => write!(f, "{}{name}", Self::BUNDLED_PREFIX),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for PluginSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|text| PluginSource::parse(&text))
    }
}

fn default_timeout_ms() -> u64 {
    1_000
}

fn default_memory_mb() -> u64 {
    64
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

impl PluginConfig {
    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `memory_mb` in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize).saturating_mul(1 << 20)
    }
}

/// Capabilities granted to a plugin. The default grants nothing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Host directories the plugin may see, read-only unless `writable`.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Environment variables the plugin sees, with their values.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Log what the plugin writes to stdout and stderr (one event per line,
    /// with its name; never to the host's own stdout).
    #[serde(default)]
    pub stdio: bool,
    /// Socket addresses (`ip:port`) the plugin may connect to or bind.
    #[serde(default)]
    pub network: Vec<std::net::SocketAddr>,
}

impl Grants {
    /// Whether nothing at all is granted.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.env.is_empty() && !self.stdio && self.network.is_empty()
    }
}

/// A host directory a plugin may see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/model`.
    pub guest: String,
    /// Whether the plugin may write there (default: read-only).
    #[serde(default)]
    pub writable: bool,
}

/// `runtime.pooling`: whether plugin instances come from wasmtime's pooling
/// allocator (fast instantiation, a large address-space reservation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Pooling {
    /// A pool of wide memories if the address space allows, else a pool of
    /// compact ones, else compact memories on demand
    /// ([`crate::Allocation`]).
    #[default]
    Auto,
    /// One of the two pools; if neither fits, the engine does not start.
    On,
    /// Wide memories, each reserved when an instance is made.
    Off,
}

/// A plugin's bytes, from its file or from the bundled set.
pub fn read_wasm(source: &PluginSource) -> Result<Cow<'static, [u8]>, PluginErrorCause> {
    match source {
        PluginSource::Bundled(name) => {
            crate::bundled::get(name).map(Cow::Borrowed).ok_or_else(|| {
                PluginErrorCause::UnknownBundled {
                    name: name.to_owned(),
                    bundled: crate::bundled::names(),
                }
            })
        }
        PluginSource::File(path) => {
            std::fs::read(path)
                .map(Cow::Owned)
                .map_err(|source| PluginErrorCause::Read {
                    path: path.clone(),
                    source,
                })
        }
    }
}
