//! Bundles on the wire: which bundle made a result, and what became of
//! an install.

use super::header::{RecordHeader, RecordKind};
use serde::{Deserialize, Serialize};

/// A bundle, by name and version (what a result ran with, what an install
/// report is about).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// The bundle's name (the pipeline it installs).
    pub name: String,
    /// Its version.
    pub version: u64,
}

/// What became of a bundle offered to a device: one record per step that
/// decides something, through the outbox like results (so an operator
/// learns it even from a device that was offline). Its id comes from the
/// same sequence as the pipeline's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallReport {
    /// Always [`RecordKind::Install`].
    pub kind: RecordKind,
    /// Unique id, `<device>/<pipeline>/<outbox>-<seq>` ([`result_id`]).
    pub id: String,
    /// The device.
    pub device: String,
    /// The pipeline the bundle installs (its name).
    pub pipeline: String,
    /// The device's outbox instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
    /// Its sequence number on the device.
    pub seq: i64,
    /// When, ms since the Unix epoch (device clock).
    pub at_ms: i64,
    /// The bundle's version (0 when it could not be read).
    pub version: u64,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: String,
    /// What happened.
    pub outcome: InstallOutcome,
    /// Why, for a refusal or a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The version running before (none: the device's own configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
    /// The Sluice version that made it.
    pub sluice_version: String,
}

impl InstallReport {
    /// The fields every record has.
    pub fn header(&self) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Install,
            id: self.id.clone(),
            device: self.device.clone(),
            pipeline: self.pipeline.clone(),
            outbox: self.outbox.clone(),
            seq: self.seq,
        }
    }
}

/// The outcome of an install step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum InstallOutcome {
    /// Verified and validated, swapped in: on probation.
    Installed,
    /// Healthy through probation: now the last good version.
    Committed,
    /// Not installed (signature, files, expiry, version, requirements or
    /// validation); nothing on the device changed.
    Refused,
    /// Unhealthy on probation (or the device restarted during it): the last
    /// good version runs again.
    RolledBack,
    /// Offered again after it was handled (a replay, or a copy of an old
    /// file): nothing done. Reported once per offer, so a replay is seen.
    Ignored,
}
