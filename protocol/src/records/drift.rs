//! Drift windows: a pipeline's inputs and outputs against the model's
//! reference profile, window by window.

use super::header::{RecordHeader, RecordKind};
use serde::{Deserialize, Serialize};

/// What one pipeline's inputs and outputs looked like over a window of
/// items, scored against the model's reference profile: sent at the end of
/// every window (the drift trend), with `alarm` set when a score crossed its
/// threshold (a drift event). Its id comes from the same sequence as the
/// pipeline's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftWindow {
    /// Always [`RecordKind::DriftWindow`].
    pub kind: RecordKind,
    /// Unique id, `<device>/<pipeline>/<outbox>-<seq>` ([`result_id`]).
    pub id: String,
    /// The device.
    pub device: String,
    /// The pipeline.
    pub pipeline: String,
    /// The device's outbox instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
    /// Its sequence number on the device.
    pub seq: i64,
    /// The model's name and the SHA-256 of its file.
    pub model: String,
    /// SHA-256 of the model file the profile is bound to.
    pub model_sha256: String,
    /// SHA-256 of the reference profile scored against.
    pub profile_sha256: String,
    /// When the window's first and last items were seen, ms since the Unix
    /// epoch (device clock).
    pub started_at_ms: i64,
    /// See `started_at_ms`.
    pub ended_at_ms: i64,
    /// Items in the window.
    pub items: u64,
    /// The configured chance of a false alarm per window (all scores
    /// together), from which the thresholds were derived.
    pub false_alarm_rate: f64,
    /// One score per feature and statistic.
    pub scores: Vec<DriftScore>,
    /// Whether any score crossed its threshold: a drift event.
    pub alarm: bool,
    /// The Sluice version that made it.
    pub sluice_version: String,
}

impl DriftWindow {
    /// The fields every record has.
    pub fn header(&self) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::DriftWindow,
            id: self.id.clone(),
            device: self.device.clone(),
            pipeline: self.pipeline.clone(),
            outbox: self.outbox.clone(),
            seq: self.seq,
        }
    }
}

/// One drift score of a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftScore {
    /// What was compared, e.g. `input.x[12]`, `output.class`,
    /// `output.confidence`.
    pub feature: String,
    /// The statistic: `psi`, `js` (Jensen-Shannon distance), `ks`.
    pub statistic: String,
    /// Its value over the window.
    pub value: f64,
    /// The threshold it is compared with, for this window's size.
    pub threshold: f64,
    /// `value > threshold`.
    pub drifted: bool,
}
