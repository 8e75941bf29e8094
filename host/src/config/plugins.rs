//! `[plugins.NAME]`: defined by the plugin host (`sluice-plugin`), beside
//! the code that enforces it.

pub use sluice_plugin::config::{DirGrant, Grants, PluginConfig, PluginSource, Pooling};
