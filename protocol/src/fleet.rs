//! What the collector tells about devices: counts and pages of a
//! device's results, and the operator's fleet view.

use crate::{DeviceStatus, DriftScore, ResultsCursor};
use serde::{Deserialize, Serialize};

/// `GET` [`paths::device_count`]: results stored for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCount {
    /// The device.
    pub device: String,
    /// How many records are stored for it.
    pub count: u64,
}

/// `GET` [`paths::device_results`]: a device's records in `(seq, id)`
/// order, a page at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceResults<R = serde_json::Value> {
    /// The device.
    pub device: String,
    /// Its records after the cursor (`?after=SEQ&after_id=ID`; `?after=SEQ`
    /// alone: every record with a greater `seq`), at most `limit`.
    pub results: Vec<R>,
    /// Where the next page starts, when this one is full (there may be
    /// more); absent when the listing is complete. Absent as well from
    /// collectors that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ResultsCursor>,
}

/// How a device looks from the collector, worst first: a device whose
/// latest drift window of some pipeline raised an alarm is `drift`, one not
/// heard from within the collector's stale period is `stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DeviceState {
    /// Uploading, no drift alarm.
    Ok,
    /// No batch accepted within the stale period.
    Stale,
    /// The latest window of a pipeline raised a drift alarm.
    Drift,
    /// Has a token but never uploaded.
    Unseen,
}

/// `GET` [`paths::FLEET`]: every device the collector has a token for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    /// When this was made, ms since the Unix epoch (collector clock).
    pub at_ms: i64,
    /// A device not heard from for this long is stale, ms.
    pub stale_after_ms: i64,
    /// The devices, by name.
    pub devices: Vec<FleetSummary>,
    /// Which bundle version runs where: devices per bundle name and
    /// version, by what their latest results ran with.
    #[serde(default)]
    pub versions: Vec<VersionCount>,
}

/// How many devices run a bundle version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCount {
    /// The bundle's name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// Devices whose latest results of that name ran with it.
    pub devices: u64,
}

/// The bundle version a device runs, by its latest results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRunning {
    /// The bundle's name.
    pub name: String,
    /// Its version.
    pub version: u64,
}

/// One step of a bundle install on a device, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallEvent {
    /// The bundle's name.
    pub name: String,
    /// Its version (0 when the device could not read it).
    pub version: u64,
    /// `installed`, `committed`, `refused`, `rolled-back` or `ignored`.
    pub outcome: String,
    /// Why, for a refusal, a rollback or an ignored offer.
    pub reason: Option<String>,
    /// When, ms since the Unix epoch (device clock).
    pub at_ms: i64,
}

/// One device at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSummary {
    /// The device.
    pub device: String,
    /// Its state.
    pub state: DeviceState,
    /// When its last batch was accepted, ms since the Unix epoch
    /// (collector clock); `None`: never.
    pub last_seen_ms: Option<i64>,
    /// The status its last batch carried (backlog, version), if any did.
    pub status: Option<DeviceStatus>,
    /// The Sluice version it last reported (status or records).
    pub sluice_version: Option<String>,
    /// Records stored for it (new ones, not duplicates).
    pub records: u64,
    /// Pipelines whose latest drift window raised an alarm.
    pub drifting: Vec<String>,
    /// The share of its results of the last hour that failed (by the
    /// minute they were made); `None` without results in that hour.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// The bundle versions it runs, by its latest results.
    #[serde(default)]
    pub bundles: Vec<BundleRunning>,
}

/// `GET` [`paths::fleet_device`]: one device with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDevice {
    /// The device at a glance.
    pub summary: FleetSummary,
    /// The series below start here, ms since the Unix epoch.
    pub since_ms: i64,
    /// Results per minute, ok and failed.
    pub traffic: Vec<TrafficBucket>,
    /// Its backlog, the last status of each minute.
    pub backlog: Vec<BacklogPoint>,
    /// What it ran: Sluice versions, models and plugins with digests.
    pub versions: Vec<VersionSeen>,
    /// Per pipeline, its latest drift window.
    pub drift: Vec<DriftState>,
    /// Drift windows since `since_ms`, oldest first (scores cut to the
    /// most drifted few).
    pub windows: Vec<DriftPoint>,
    /// Its install history, newest first (the latest
    /// `fleet::MAX_INSTALLS`): every bundle it installed, committed,
    /// refused, rolled back or ignored, with the reason.
    #[serde(default)]
    pub installs: Vec<InstallEvent>,
}

/// Results of one minute, by the time the device made them (its clock;
/// the collector's when that is implausible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficBucket {
    /// The minute's start, ms since the Unix epoch.
    pub minute_ms: i64,
    /// Results with a result.
    pub ok: u64,
    /// Results with an `error`.
    pub errors: u64,
}

/// A device's backlog as of one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogPoint {
    /// When the collector received it, ms since the Unix epoch.
    pub received_ms: i64,
    /// [`DeviceStatus::pending_records`].
    pub pending_records: u64,
    /// [`DeviceStatus::journal_items`].
    pub journal_items: u64,
    /// [`DeviceStatus::set_aside_records`].
    pub set_aside_records: u64,
}

/// Something a device ran, and when the collector saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSeen {
    /// `sluice`, `model`, `preprocess` or `postprocess`.
    pub what: String,
    /// The Sluice version, or the model's or plugin's name.
    pub name: String,
    /// The SHA-256 of the model or plugin (empty for `sluice`).
    pub sha256: String,
    /// First and last time seen, ms since the Unix epoch (collector clock).
    pub first_seen_ms: i64,
    /// See `first_seen_ms`.
    pub last_seen_ms: i64,
}

/// A pipeline's latest drift window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftState {
    /// The pipeline.
    pub pipeline: String,
    /// The window.
    pub window: DriftPoint,
}

/// One drift window, as the fleet view keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftPoint {
    /// The pipeline.
    pub pipeline: String,
    /// The record's sequence number.
    pub seq: i64,
    /// The model.
    pub model: String,
    /// When the window ended, ms since the Unix epoch (device clock).
    pub ended_at_ms: i64,
    /// When the collector received it, ms since the Unix epoch.
    pub received_ms: i64,
    /// Items in the window.
    pub items: u64,
    /// Whether it raised an alarm.
    pub alarm: bool,
    /// The largest `value / threshold` of its scores (over 1: drifted).
    pub max_ratio: f64,
    /// Its scores, the most drifted first, at most a few.
    pub scores: Vec<DriftScore>,
    /// How many scores the window had.
    pub scores_total: u64,
}
