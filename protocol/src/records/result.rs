//! The result record: the outcome of one input, with its provenance.

use super::{BundleRef, RecordHeader, RecordKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The outcome of one input: what came in, what it became, and exactly
/// which code and model made it. `sluice infer` prints the same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// Always [`RecordKind::Result`].
    #[serde(default)]
    pub kind: RecordKind,
    /// Unique id, `<device>/<pipeline>/<outbox>-<seq>` ([`result_id`]).
    pub id: String,
    /// The device that made it.
    pub device: String,
    /// The pipeline that made it.
    pub pipeline: String,
    /// The device's outbox instance the input was accepted into (`None`
    /// for `sluice infer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
    /// The input's sequence number on the device, fixed when it was accepted.
    pub seq: i64,
    /// When the input was accepted, ms since the Unix epoch (device clock).
    pub accepted_at_ms: i64,
    /// When the result was made, ms since the Unix epoch (device clock).
    pub completed_at_ms: i64,
    /// What came in.
    pub input: InputInfo,
    /// Which model and plugins made the result.
    pub provenance: Provenance,
    /// The Sluice version that made it.
    pub sluice_version: String,
    /// Time the item's batch spent in each stage (per batch, by name).
    pub timings: StageTimings,
    /// The result, or why there is none.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl ResultRecord {
    /// The fields every record has.
    pub fn header(&self) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Result,
            id: self.id.clone(),
            device: self.device.clone(),
            pipeline: self.pipeline.clone(),
            outbox: self.outbox.clone(),
            seq: self.seq,
        }
    }
}

/// What is known of an input.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InputInfo {
    /// Its media type.
    pub content_type: String,
    /// Its size.
    pub bytes: u64,
    /// Where it came from (e.g. `file`), as its source recorded it.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// The model and plugins that made a result, each with the SHA-256 (hex)
/// of what ran.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// The model's name in the device configuration.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// The preprocessing plugin's name.
    pub preprocess: String,
    /// SHA-256 of its component.
    pub preprocess_sha256: String,
    /// The postprocessing plugin's name.
    pub postprocess: String,
    /// SHA-256 of its component.
    pub postprocess_sha256: String,
    /// The bundle the pipeline came from (none: the device's own
    /// configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleRef>,
}

/// Time the item's batch spent in each stage, in microseconds: the time of
/// the whole batch of `batch_items` items, which is what the item waited
/// in that stage (divide by `batch_items` for the cost per item). The names
/// say so; records from devices before 0.1 name them `preprocess_us`,
/// `infer_us` and `postprocess_us`, read as the same fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageTimings {
    /// Items in the batch (0: not recorded, devices before the field).
    #[serde(default)]
    pub batch_items: u32,
    /// The batch, in the preprocessing plugin.
    #[serde(alias = "preprocess_us")]
    pub batch_preprocess_us: u64,
    /// The batch, in the scheduler and the engine.
    #[serde(alias = "infer_us")]
    pub batch_infer_us: u64,
    /// The batch, in the postprocessing plugin.
    #[serde(alias = "postprocess_us")]
    pub batch_postprocess_us: u64,
}

/// A result or an error, never both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The postprocessor's document.
    Result(ResultBody),
    /// Why the item has no result.
    Error(ItemFailure),
}

/// A postprocessor's document. JSON documents are embedded as JSON; any
/// other content type as a string (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultBody {
    /// The document's media type.
    pub content_type: String,
    /// The document.
    pub body: serde_json::Value,
}

impl ResultBody {
    /// A document as it goes on the wire.
    pub fn new(content_type: &str, body: &[u8]) -> ResultBody {
        let text = || serde_json::Value::String(String::from_utf8_lossy(body).into_owned());
        let is_json = content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        ResultBody {
            content_type: content_type.to_owned(),
            body: if is_json {
                serde_json::from_slice(body).unwrap_or_else(|_| text())
            } else {
                text()
            },
        }
    }
}

/// Why one item failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailure {
    /// A stable, machine-readable kind: `invalid-input`, `unsupported`,
    /// `internal`, `plugin-fault`, `inference`, ...
    pub kind: String,
    /// What happened, for people.
    pub message: String,
}
