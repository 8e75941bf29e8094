//! `[bundles]`: which keys to trust, where bundles arrive, how a new
//! version is watched.

use crate::error::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// `[bundles]`: installing signed bundles while the agent runs (see
/// [`crate::bundle`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundlesConfig {
    /// Public keys (`ed25519:<base64>`, from `sluice bundle keygen`) whose
    /// signature a bundle needs; several, so that keys can rotate. None:
    /// no bundle is installed.
    pub trusted_keys: Vec<String>,
    /// A folder bundles are dropped into (`*.bundle`: a USB stick, scp).
    pub folder: Option<PathBuf>,
    /// Ask the collector for the bundle a staged rollout has for this
    /// device, the way results go (`[sync]`): over HTTP(S) with the token,
    /// or through the MQTT broker in chunks that resume after a cut.
    pub from_collector: bool,
    /// How often to ask the collector.
    pub collector_poll_secs: u64,
    /// How often the folder and the version on probation are looked at.
    pub poll_ms: u64,
    /// A bundle file is taken once unchanged for this long (still being
    /// copied otherwise).
    pub settle_ms: u64,
    /// How long a new version is watched before it is committed.
    pub probation_secs: u64,
    /// Items a new version must have processed before it is judged.
    pub probation_min_items: u64,
    /// Share of items failing in the pipeline above which a new version on
    /// probation is rolled back.
    pub probation_max_error_rate: f64,
}

impl Default for BundlesConfig {
    fn default() -> Self {
        BundlesConfig {
            trusted_keys: Vec::new(),
            folder: None,
            from_collector: false,
            collector_poll_secs: 60,
            poll_ms: 2_000,
            settle_ms: 1_000,
            probation_secs: 300,
            probation_min_items: 20,
            probation_max_error_rate: 0.05,
        }
    }
}

impl BundlesConfig {
    /// Whether bundles can be installed at all (a key is pinned).
    pub fn enabled(&self) -> bool {
        !self.trusted_keys.is_empty()
    }

    /// The pinned keys, parsed.
    pub fn trusted(&self) -> Result<Vec<sluice_bundle::keys::PublicKey>, ConfigError> {
        self.trusted_keys
            .iter()
            .enumerate()
            .map(|(ix, key)| {
                sluice_bundle::keys::PublicKey::parse(key).map_err(|e| {
                    ConfigError::value(&format!("bundles.trusted_keys[{ix}]"), e.to_string())
                })
            })
            .collect()
    }
}
