//! The host configuration: one TOML file describing the device, its plugins,
//! its models and the pipelines that join them.
//!
//! Invariants after [`Config::load`]:
//! * unknown keys have been refused with an error naming the key and line;
//! * every relative path is resolved against the configuration file's folder,
//!   so the agent behaves the same whatever its working directory;
//! * every pipeline names plugins and models that exist.

use crate::error::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub device: DeviceConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Stable id of this device; part of every result's id.
    #[serde(default = "default_device_id")]
    pub id: String,
    /// Where the device keeps its state (outbox, compiled-plugin cache).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self { id: default_device_id(), data_dir: default_data_dir() }
    }
}

fn default_device_id() -> String {
    "sluice-device".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("sluice-data")
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where compiled plugins (`.cwasm`) are kept; default `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling allocator: `auto` tries it and falls back to
    /// on-demand allocation when the machine cannot reserve the address space.
    #[serde(default)]
    pub pooling: Pooling,
    /// Largest model a plugin may load from its own bytes through `wasi:nn`
    /// `load`; 0 (the default) refuses such loads.
    #[serde(default)]
    pub guest_model_max_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    #[default]
    Auto,
    On,
    Off,
}

/// One plugin: a WebAssembly component and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the `.wasm` component, or `bundled:NAME` for a plugin shipped
    /// inside the `sluice` binary.
    pub path: String,
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
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

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
    /// Let the plugin write to the host's stdout and stderr.
    #[serde(default)]
    pub stdio: bool,
    /// Socket addresses (`ip:port`) the plugin may connect to or bind.
    #[serde(default)]
    pub network: Vec<std::net::SocketAddr>,
}

impl Grants {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.env.is_empty() && !self.stdio && self.network.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/model`.
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

/// One ONNX model served by the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub path: PathBuf,
    /// Expected SHA-256 of the file, hex; a mismatch refuses the model.
    pub sha256: Option<String>,
    /// Dimensions after the batch axis for inputs the model leaves open,
    /// e.g. `input_shapes.x = [3, 48, 192]`.
    #[serde(default)]
    pub input_shapes: crate::infer::InputShapes,
    /// How requests for this model are batched.
    #[serde(default)]
    pub batching: crate::schedule::BatchConfig,
}

/// A pipeline: preprocess plugin -> model -> postprocess plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub preprocess: String,
    pub model: String,
    pub postprocess: String,
}

impl Config {
    /// Read, parse and check a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| e.in_file(path))
    }

    /// Parse configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.resolve_paths(base);
        config.check()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.device.data_dir);
        if let Some(dir) = &mut self.runtime.cache_dir {
            resolve(dir);
        }
        for plugin in self.plugins.values_mut() {
            if !plugin.path.starts_with(crate::plugin::BUNDLED_PREFIX) && Path::new(&plugin.path).is_relative() {
                plugin.path = base.join(&plugin.path).to_string_lossy().into_owned();
            }
            for dir in &mut plugin.grants.dirs {
                resolve(&mut dir.host);
            }
        }
        for model in self.models.values_mut() {
            resolve(&mut model.path);
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        for (name, plugin) in &self.plugins {
            if plugin.timeout_ms == 0 {
                return Err(ConfigError::Invalid(format!("plugins.{name}.timeout_ms must be above 0")));
            }
            if plugin.memory_mb == 0 {
                return Err(ConfigError::Invalid(format!("plugins.{name}.memory_mb must be above 0")));
            }
        }
        for (name, pipeline) in &self.pipelines {
            for (key, plugin) in [("preprocess", &pipeline.preprocess), ("postprocess", &pipeline.postprocess)] {
                if !self.plugins.contains_key(plugin) {
                    return Err(ConfigError::Invalid(format!(
                        "pipelines.{name}.{key} names plugin `{plugin}`, which is not configured under [plugins]"
                    )));
                }
            }
            if !self.models.contains_key(&pipeline.model) {
                return Err(ConfigError::Invalid(format!(
                    "pipelines.{name}.model names model `{}`, which is not configured under [models]",
                    pipeline.model
                )));
            }
        }
        Ok(())
    }

    /// Where compiled plugins are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.runtime.cache_dir.clone().unwrap_or_else(|| self.device.data_dir.join("cache"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelled_key_is_named_in_the_error() {
        let err = Config::parse("[plugins.pre]\npath = \"x.wasm\"\ntimout_ms = 5\n", Path::new("/etc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("timout_ms"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let config = Config::parse(
            "[plugins.pre]\npath = \"p/pre.wasm\"\n[plugins.pre.grants]\ndirs = [{ host = \"m\", guest = \"/m\" }]\n\
             [plugins.b]\npath = \"bundled:image-preprocess\"\n",
            Path::new("/etc/sluice"),
        )
        .unwrap();
        assert_eq!(config.plugins["pre"].path, "/etc/sluice/p/pre.wasm");
        assert_eq!(config.plugins["pre"].grants.dirs[0].host, Path::new("/etc/sluice/m"));
        assert_eq!(config.plugins["b"].path, "bundled:image-preprocess");
        assert_eq!(config.cache_dir(), Path::new("/etc/sluice/sluice-data/cache"));
    }

    #[test]
    fn defaults_grant_nothing() {
        let config = Config::parse("[plugins.pre]\npath = \"a.wasm\"\n", Path::new("/")).unwrap();
        let plugin = &config.plugins["pre"];
        assert!(plugin.grants.is_empty());
        assert_eq!(plugin.timeout(), Duration::from_secs(1));
        assert_eq!(plugin.memory_bytes(), 64 << 20);
    }

    #[test]
    fn pipeline_naming_a_missing_plugin_is_refused() {
        let err = Config::parse(
            "[models.m]\npath = \"m.onnx\"\n[pipelines.p]\npreprocess = \"nope\"\nmodel = \"m\"\npostprocess = \"nope\"\n",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines.p.preprocess") && err.contains("`nope`"), "{err}");
    }
}
