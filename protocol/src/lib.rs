//! # The Sluice wire protocol
//!
//! The types exchanged between a Sluice device and an upstream collector,
//! in one place, so that the device (`sluice`) and the collector
//! (`sluice-collector`) cannot drift apart and so that anyone writing their
//! own collector has one definition to follow (see `PROTOCOL.md` beside this
//! crate for the prose version).
//!
//! * [`Record`]: what a device ships upstream, one per processed input
//!   ([`ResultRecord`], with its provenance); more kinds (drift events,
//!   install reports) join as new variants of [`RecordKind`].
//! * [`UploadBatch`]: records sent together under one idempotency key
//!   (`POST` [`paths::BATCHES`], body zstd-compressed JSON).
//! * [`BatchAck`]: the collector's acknowledgement, naming the batch key; only
//!   a well-formed acknowledgement of the batch that was sent lets a device
//!   delete anything.
//! * [`ErrorBody`]: the JSON body of every error answer.
//!
//! Versioning: every batch and acknowledgement carries [`PROTOCOL_VERSION`].
//! A collector refuses batches of a version it does not know with `400`, so
//! a device newer than its collector fails loudly instead of losing data.
//!
//! Invariants of ids: a result's id is `<device>/<pipeline>/<outbox>-<seq>`
//! ([`result_id`]); device and pipeline names are restricted by
//! [`check_name`] (no `/`), so an id names exactly one device. `outbox` is
//! the device's outbox instance, random when the outbox file was created:
//! ids stay unique when a device's outbox starts again from nothing (a
//! damaged file moved aside, a wiped data directory) with its clock set back
//! (boards without a real-time clock), where `seq` alone would repeat.

#![deny(missing_docs)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod ack;
mod cursor;

pub use ack::AckMismatch;
pub use cursor::ResultsCursor;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The HTTP header carrying a batch's idempotency key (also used by the
/// device's own ingest endpoint for inputs).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The media type of batch bodies (before `Content-Encoding`).
pub const CONTENT_TYPE: &str = "application/json";

/// The only `Content-Encoding` of batch bodies besides none.
pub const CONTENT_ENCODING: &str = "zstd";

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 200;

/// Longest device or pipeline name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// URL paths of the collector's endpoints.
pub mod paths {
    /// `POST`: an [`UploadBatch`](crate::UploadBatch).
    pub const BATCHES: &str = "/v1/batches";
    /// `GET`: `ok` when the service runs (no authentication).
    pub const HEALTH: &str = "/v1/health";

    /// `GET`: a [`DeviceCount`](crate::DeviceCount).
    pub fn device_count(device: &str) -> String {
        format!("/v1/devices/{device}/count")
    }

    /// `GET ?after=SEQ&after_id=ID&limit=N`: a
    /// [`DeviceResults`](crate::DeviceResults), a page of the device's
    /// results in `(seq, id)` order; its `next` is the
    /// [`ResultsCursor`](crate::ResultsCursor) of the following page.
    pub fn device_results(device: &str) -> String {
        format!("/v1/devices/{device}/results")
    }

    /// `GET` (operator token): a [`FleetView`](crate::FleetView).
    pub const FLEET: &str = "/v1/fleet";

    /// `GET ?since_ms=T` (operator token): a [`FleetDevice`](crate::FleetDevice).
    pub fn fleet_device(device: &str) -> String {
        format!("/v1/fleet/devices/{device}")
    }
}

/// The same protocol over MQTT 5, through a broker: a batch is a QoS 1
/// PUBLISH of the [`UploadBatch`](crate::UploadBatch) (zstd-compressed
/// JSON, as over HTTP) to [`mqtt::batches`], with the MQTT 5
/// request/response properties: the response topic [`mqtt::acks`] and the
/// batch key as correlation data; the device's bearer token and the body's
/// encoding go in user properties. A collector (one of several, on the
/// shared subscription [`mqtt::shared_batches`]) answers on the response
/// topic once the batch is committed: user property [`mqtt::STATUS`] (the
/// HTTP status the same batch would get), the batch key as correlation
/// data, and as payload a [`BatchAck`](crate::BatchAck) (`200`) or an
/// [`ErrorBody`](crate::ErrorBody).
pub mod mqtt {
    /// The default first topic level.
    pub const DEFAULT_PREFIX: &str = "sluice";
    /// User property: `Bearer <device token>`.
    pub const AUTHORIZATION: &str = "authorization";
    /// User property: `zstd` or absent (the payload as it is).
    pub const CONTENT_ENCODING: &str = "content-encoding";
    /// User property of an answer: its HTTP status code, e.g. `200`.
    pub const STATUS: &str = "status";
    /// The shared subscription group collectors join by default.
    pub const DEFAULT_GROUP: &str = "sluice-collectors";

    /// Where `device` publishes its batches.
    pub fn batches(prefix: &str, device: &str) -> String {
        format!("{prefix}/v1/devices/{device}/batches")
    }

    /// Where the answers to `device`'s batches go.
    pub fn acks(prefix: &str, device: &str) -> String {
        format!("{prefix}/v1/devices/{device}/acks")
    }

    /// The shared subscription collectors of `group` take batches from:
    /// the broker gives each batch to one of them.
    pub fn shared_batches(prefix: &str, group: &str) -> String {
        format!("$share/{group}/{prefix}/v1/devices/+/batches")
    }

    /// The device a batches topic names, if it is one.
    pub fn device_of_batches<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(prefix)?
            .strip_prefix("/v1/devices/")?
            .strip_suffix("/batches")
            .filter(|d| crate::check_name(d).is_ok())
    }
}

/// Why a device or pipeline name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("has {0} bytes; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// The name has a character outside `A-Z a-z 0-9 . _ -`.
    #[error("has the character {0:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    BadChar(char),
}

/// Check a device or pipeline name: 1 to [`MAX_NAME_LEN`] bytes of
/// `A-Z a-z 0-9 . _ -`. Names are parts of ids and URL paths, so a `/` (or
/// anything needing escaping) would let one device's ids pass for another's.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// The longest outbox instance id in a record (devices make 16 hex digits).
pub const MAX_OUTBOX_LEN: usize = 32;

/// The id of the result of input `seq` of `pipeline` on `device`, accepted
/// into outbox instance `outbox` (`None` outside an outbox: `sluice infer`,
/// and records written before instances existed).
pub fn result_id(device: &str, pipeline: &str, outbox: Option<&str>, seq: i64) -> String {
    match outbox {
        Some(outbox) => format!("{device}/{pipeline}/{outbox}-{seq}"),
        None => format!("{device}/{pipeline}/{seq}"),
    }
}

/// The kinds of records a device ships.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RecordKind {
    /// The outcome of one input ([`ResultRecord`]). Records written before
    /// the field existed carry no `kind` and are results.
    #[default]
    Result,
    /// What a pipeline's inputs and outputs looked like over one window,
    /// against the model's reference profile ([`DriftWindow`]).
    DriftWindow,
    /// What became of a bundle offered to the device ([`InstallReport`]).
    Install,
}

/// What every record has, whatever its kind: enough for a collector to
/// authorize, deduplicate and order it without knowing the kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeader {
    /// The record's kind.
    #[serde(default)]
    pub kind: RecordKind,
    /// Unique id, `<device>/<pipeline>/<outbox>-<seq>` ([`result_id`]).
    pub id: String,
    /// The device that made it.
    pub device: String,
    /// The pipeline that made it.
    pub pipeline: String,
    /// The device's outbox instance it was accepted into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
    /// Its sequence number on the device (orders a device's records).
    pub seq: i64,
}

impl RecordHeader {
    /// Check that the record belongs to `device` and that its id is the one
    /// its fields make.
    pub fn check(&self, device: &str) -> Result<(), RecordError> {
        if self.device != device {
            return Err(RecordError::OtherDevice {
                id: self.id.clone(),
                device: self.device.clone(),
            });
        }
        // An outbox instance is hex and a sequence number is not negative:
        // otherwise `a-` with 12 and `a` with -12 would make the same id.
        let bad_outbox = self.outbox.as_deref().is_some_and(|o| {
            o.is_empty() || o.len() > MAX_OUTBOX_LEN || !o.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if bad_outbox || self.seq < 0 {
            return Err(RecordError::BadField {
                id: self.id.clone(),
                problem: if bad_outbox {
                    format!("`outbox` must be 1 to {MAX_OUTBOX_LEN} hex digits")
                } else {
                    "`seq` must not be negative".into()
                },
            });
        }
        let expected = result_id(
            &self.device,
            &self.pipeline,
            self.outbox.as_deref(),
            self.seq,
        );
        if self.id != expected {
            return Err(RecordError::BadId {
                id: self.id.clone(),
                expected,
            });
        }
        Ok(())
    }
}

/// Why a record is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record claims another device than the one sending it.
    #[error("record `{id}` belongs to device `{device}`")]
    OtherDevice {
        /// The record's id.
        id: String,
        /// The device it claims.
        device: String,
    },
    /// `outbox` or `seq` cannot be part of a unique id.
    #[error("record `{id}`: {problem}")]
    BadField {
        /// The record's id.
        id: String,
        /// What is wrong.
        problem: String,
    },
    /// The id is not `<device>/<pipeline>/<outbox>-<seq>`.
    #[error("id `{id}` is not `{expected}`")]
    BadId {
        /// The record's id.
        id: String,
        /// The id its fields make.
        expected: String,
    },
}

/// A record shipped upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Record {
    /// The outcome of one input.
    Result(ResultRecord),
    /// A drift window.
    DriftWindow(DriftWindow),
    /// An install step's outcome.
    Install(InstallReport),
}

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
}

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

/// How a device is doing, sent with every upload ([`UploadBatch::status`])
/// so that a collector can show its backlog without asking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The Sluice version running.
    pub sluice_version: String,
    /// When this was taken, ms since the Unix epoch (device clock).
    pub at_ms: i64,
    /// Results waiting for upload besides this batch's: the backlog left
    /// once the batch is stored (a device that is done uploading reports 0).
    pub pending_records: u64,
    /// Inputs accepted and not yet processed.
    pub journal_items: u64,
    /// Records the collector refused, kept aside on the device.
    pub set_aside_records: u64,
    /// Age of the oldest result waiting besides this batch's, ms (`None`:
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_ms: Option<i64>,
}

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

/// Records sent together under one idempotency key: the body of
/// `POST` [`paths::BATCHES`]. `R` is [`Record`] to read a batch, or a raw
/// JSON value for a device that ships records it stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadBatch<R> {
    /// [`PROTOCOL_VERSION`] of the sender.
    #[serde(default = "version_one")]
    pub protocol: u32,
    /// The sending device; must be the one its token belongs to.
    pub device: String,
    /// The idempotency key, also sent as the [`IDEMPOTENCY_KEY`] header.
    pub key: String,
    /// The records.
    pub records: Vec<R>,
    /// How the device is doing as it sends this (optional: collectors
    /// must accept batches without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
}

fn version_one() -> u32 {
    1
}

/// A batch whose records are kept as the JSON text they were stored as:
/// what a device sends, and what a collector reads before checking each record.
pub type RawBatch = UploadBatch<Box<serde_json::value::RawValue>>;

/// The collector's answer to a batch it stored (`200`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// [`PROTOCOL_VERSION`] of the collector.
    pub protocol: u32,
    /// The key of the batch acknowledged.
    pub key: String,
    /// Records newly stored.
    pub stored: u64,
    /// Records already stored under the same id (sent before).
    pub duplicates: u64,
    /// The batch key was known: nothing was stored this time.
    pub replayed: bool,
}

/// The body of every error answer (`4xx`, `5xx`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, naming the thing and the cause.
    pub error: String,
    /// The index (0-based, in `records`) of the record the error is about,
    /// when it is about one record (`422` invalid record, `409` id already
    /// stored with another body): a device that splits a refused batch can
    /// set that record aside at once. Absent otherwise, and from collectors
    /// that predate the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
}

impl ErrorBody {
    /// An error body with `message`, about the batch as a whole.
    pub fn new(message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: message.into(),
            record: None,
        }
    }

    /// An error body with `message` about record `index` of the batch.
    pub fn for_record(index: u64, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: message.into(),
            record: Some(index),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome) -> ResultRecord {
        ResultRecord {
            kind: RecordKind::Result,
            id: result_id("gw-1", "digits", Some("5eed"), 7),
            device: "gw-1".into(),
            pipeline: "digits".into(),
            outbox: Some("5eed".into()),
            seq: 7,
            accepted_at_ms: 1,
            completed_at_ms: 2,
            input: InputInfo {
                content_type: "image/png".into(),
                bytes: 3,
                attributes: [("file".to_owned(), "a.png".to_owned())].into(),
            },
            provenance: Provenance::default(),
            sluice_version: "0.1.0".into(),
            timings: StageTimings::default(),
            outcome,
        }
    }

    #[test]
    fn timings_say_they_are_per_batch_and_old_names_still_read() {
        let new: StageTimings = serde_json::from_str(
            r#"{"batch_items": 4, "batch_preprocess_us": 1, "batch_infer_us": 2, "batch_postprocess_us": 3}"#,
        )
        .unwrap();
        let old: StageTimings =
            serde_json::from_str(r#"{"preprocess_us": 1, "infer_us": 2, "postprocess_us": 3}"#)
                .unwrap();
        assert_eq!((new.batch_items, old.batch_items), (4, 0));
        assert_eq!(
            (
                old.batch_preprocess_us,
                old.batch_infer_us,
                old.batch_postprocess_us
            ),
            (1, 2, 3)
        );
        let text = serde_json::to_string(&new).unwrap();
        assert!(text.contains("\"batch_preprocess_us\":1"), "{text}");
    }

    #[test]
    fn a_result_record_has_the_documented_shape_and_round_trips() {
        let ok = record(Outcome::Result(ResultBody::new(
            "application/json",
            br#"{"label":"3"}"#,
        )));
        let json = serde_json::to_value(&ok).unwrap();
        assert_eq!(json["kind"], "result");
        assert_eq!(json["id"], "gw-1/digits/5eed-7");
        assert_eq!(json["outbox"], "5eed");
        assert_eq!(json["result"]["body"]["label"], "3");
        assert!(json.get("error").is_none());
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, Record::Result(ok));

        let failed = record(Outcome::Error(ItemFailure {
            kind: "invalid-input".into(),
            message: "not a PNG".into(),
        }));
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(json["error"]["kind"], "invalid-input");
        assert!(json.get("result").is_none());
    }

    #[test]
    fn records_stored_before_the_kind_field_still_read_as_results() {
        let mut json = serde_json::to_value(record(Outcome::Error(ItemFailure {
            kind: "internal".into(),
            message: "x".into(),
        })))
        .unwrap();
        json.as_object_mut().unwrap().remove("kind");
        let header: RecordHeader = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(header.kind, RecordKind::Result);
        assert!(matches!(
            serde_json::from_value::<Record>(json),
            Ok(Record::Result(_))
        ));
    }

    #[test]
    fn non_json_documents_travel_as_text() {
        let body = ResultBody::new("text/plain", b"cat");
        assert_eq!(body.body, serde_json::json!("cat"));
        let broken = ResultBody::new("application/json; charset=utf-8", b"{nope");
        assert_eq!(broken.body, serde_json::json!("{nope"));
    }

    #[test]
    fn a_header_must_belong_to_its_sender_and_make_its_own_id() {
        let header = record(Outcome::Error(ItemFailure {
            kind: "internal".into(),
            message: String::new(),
        }))
        .header();
        assert_eq!(header.check("gw-1"), Ok(()));
        assert!(matches!(
            header.check("gw-2"),
            Err(RecordError::OtherDevice { .. })
        ));
        for id in ["gw-1/digits/5eed-8", "gw-1/digits/7", "gw-1/digits/beef-7"] {
            let forged = RecordHeader {
                id: id.into(),
                ..header.clone()
            };
            assert!(
                matches!(forged.check("gw-1"), Err(RecordError::BadId { .. })),
                "{id}"
            );
        }
        // Records from before outbox instances keep their old ids.
        let old = RecordHeader {
            id: "gw-1/digits/7".into(),
            outbox: None,
            ..header
        };
        assert_eq!(old.check("gw-1"), Ok(()));
    }

    #[test]
    fn names_with_separators_or_odd_characters_are_refused() {
        assert_eq!(check_name("gateway-17.eu_1"), Ok(()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(check_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(check_name(&"x".repeat(65)), Err(NameError::TooLong(65)));
    }

    #[test]
    fn an_error_body_names_its_record_only_when_it_has_one() {
        let batch = serde_json::to_value(ErrorBody::new("bad batch")).unwrap();
        assert_eq!(batch, serde_json::json!({"error": "bad batch"}));
        let record = serde_json::to_value(ErrorBody::for_record(3, "bad record")).unwrap();
        assert_eq!(
            record,
            serde_json::json!({"error": "bad record", "record": 3})
        );
        // A body from a collector that predates the field still reads.
        let old: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        assert_eq!(old.record, None);
    }

    #[test]
    fn a_raw_batch_carries_stored_records_verbatim() {
        let stored = r#"{"id":"d/p/1","device":"d","pipeline":"p","seq":1}"#;
        let batch: RawBatch = UploadBatch {
            protocol: PROTOCOL_VERSION,
            device: "d".into(),
            key: "k".into(),
            records: vec![serde_json::value::RawValue::from_string(stored.into()).unwrap()],
            status: None,
        };
        let text = serde_json::to_string(&batch).unwrap();
        assert!(text.contains(stored), "{text}");
        let back: RawBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(back.records[0].get(), stored);
    }
}
