//! What a bundle says about itself: the signed part.

use serde::{Deserialize, Serialize};

/// Format version of [`Manifest`].
pub const FORMAT: u32 = 1;

/// A bundle's manifest (`manifest.json`), signed byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The bundle's name: the pipeline it installs.
    pub name: String,
    /// Only goes up: a device refuses a version at or below the one it has
    /// installed under this name.
    pub version: u64,
    /// When it was built, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// After this (ms since the Unix epoch) no device accepts it.
    pub expires_at_ms: i64,
    /// The oldest Sluice that can run it (semver).
    pub min_sluice_version: String,
    /// The WIT package its plugins were built against, e.g. `sluice:plugin@0.1.0`.
    pub wit_package: String,
    /// How the device checks it before using it.
    pub validation: Validation,
    /// Every file of the bundle, by path under `files/`.
    pub files: Vec<FileEntry>,
    /// For a revert: the earlier version whose content this one carries
    /// again. The operator's signed word that going back is meant: the
    /// device still only takes a version above the one it has (a replay
    /// of the old bundle itself stays refused), and shows what it went
    /// back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts_to: Option<u64>,
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path under `files/`, `/`-separated.
    pub path: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// The device's checks of a bundle's validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// Numbers in results may differ from the expected ones by this much,
    /// relative to the larger magnitude (absolute below 1).
    pub tolerance: f64,
    /// Per-item latency budget on the device, ms.
    pub max_item_ms: u64,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            tolerance: 1e-4,
            max_item_ms: 1000,
        }
    }
}

impl Manifest {
    /// The manifest as it is stored and signed: pretty JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        text.push(b'\n');
        text
    }
}
