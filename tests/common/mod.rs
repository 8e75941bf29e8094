//! Shared helpers for the integration tests: load the real plugins built by
//! `sluice-bundled` into a real host.

use sluice::config::{Config, PluginConfig};
use sluice::plugin::{EngineOptions, Plugin, PluginHost, PluginKind};
use sluice::types::{Metadata, RawItem};
use std::path::{Path, PathBuf};

/// The repository root, for models and fixtures.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Path of a built plugin (product or test fixture).
pub fn plugin_path(name: &str) -> &'static Path {
    sluice_bundled::path(name).unwrap_or_else(|| panic!("no built plugin named {name}"))
}

/// A host with no compiled-plugin cache.
pub fn host() -> PluginHost {
    PluginHost::new(&EngineOptions::default()).expect("plugin host")
}

/// Parse one `[plugins.NAME]` table written as TOML (without the header);
/// `path` is filled in from the built plugin `wasm`.
pub fn plugin_config(wasm: &str, body: &str) -> PluginConfig {
    let text = format!(
        "[plugins.p]\npath = {:?}\n{body}",
        plugin_path(wasm).display().to_string()
    );
    let mut config = Config::parse(&text, Path::new("/")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.plugins.remove("p").unwrap()
}

/// Load built plugin `wasm` as `name` with the given table body.
pub fn load(host: &PluginHost, name: &str, wasm: &str, kind: PluginKind, body: &str) -> Plugin {
    host.load(name, &plugin_config(wasm, body), kind)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A raw item whose bytes are `data`.
pub fn item(id: &str, content_type: &str, data: impl Into<Vec<u8>>) -> RawItem {
    RawItem {
        meta: Metadata::new(id, content_type),
        data: data.into(),
    }
}

/// A text item, for the `misbehave` test plugin.
pub fn text(id: &str, data: &str) -> RawItem {
    item(id, "text/plain", data)
}
