//! Errors that refuse a whole thing at start-up: a configuration, a plugin, a
//! model. Errors of one item travel with the item instead
//! ([`crate::types::ItemError`]), so that they never fail its neighbours.

use std::path::PathBuf;

/// Why a configuration was refused. Always names the file, the key or both.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not TOML of the expected shape (the message names the
    /// key and line).
    #[error(transparent)]
    Parse(toml::de::Error),
    /// A value is out of its range or inconsistent with another.
    #[error("{key}: {problem}")]
    Value {
        /// The key, e.g. `sync.zstd_level`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `sync.token_file` cannot be read.
    #[error("cannot read sync.token_file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Any of the above, in this configuration file.
    #[error("config {}: {inner}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error.
        inner: Box<ConfigError>,
    },
}

impl ConfigError {
    /// A bad value of `key`.
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            key: key.into(),
            problem: problem.into(),
        }
    }

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
