//! Errors that refuse a whole thing at start-up: a configuration, a plugin, a
//! model. Errors of one item travel with the item instead
//! ([`crate::types::ItemError`]), so that they never fail its neighbours.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("config {}: {inner}", path.display())]
    InFile {
        path: PathBuf,
        inner: Box<ConfigError>,
    },
}

impl ConfigError {
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        ConfigError::InFile {
            path: path.to_owned(),
            inner: Box::new(self),
        }
    }
}

/// Why a plugin could not be loaded or started. Always names the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {cause}")]
pub struct PluginError {
    pub plugin: String,
    pub cause: PluginErrorCause,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginErrorCause {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no bundled plugin named `{0}` (bundled: {1})")]
    UnknownBundled(String, String),
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error(
        "component does not target a Sluice plugin world: it exports [{exports}], expected `{expected}`"
    )]
    WrongWorld { exports: String, expected: String },
    #[error("cannot be linked against the host: {0}")]
    Link(String),
    #[error("cannot grant directory {}: {source}", path.display())]
    Grant {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("init refused its configuration: {0}")]
    InitRefused(String),
    #[error("init failed: {0}")]
    InitTrapped(String),
    #[error("{0}")]
    Other(String),
}

impl PluginError {
    pub(crate) fn new(plugin: &str, cause: PluginErrorCause) -> Self {
        PluginError {
            plugin: plugin.to_owned(),
            cause,
        }
    }
}
