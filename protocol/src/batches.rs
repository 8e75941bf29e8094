//! Uploads: a batch of records under one idempotency key, the
//! collector's acknowledgement, and the body of every error answer.

use serde::{Deserialize, Serialize};

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

/// Records sent together under one idempotency key: the body of
/// `POST` [`paths::BATCHES`]. `R` is [`Record`] to read a batch, or a raw
/// JSON value for a device that ships records it stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadBatch<R> {
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the sender.
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
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the collector.
    pub protocol: u32,
    /// The key of the batch acknowledged.
    pub key: String,
    /// Records newly stored.
    pub stored: u64,
    /// Records already stored under the same id (sent before).
    pub duplicates: u64,
    /// The batch key was known: nothing was stored this time.
    pub replayed: bool,
    /// The device whose batch this answers (signed; absent from unsigned
    /// answers and from collectors that predate signing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The batch's record ids ([`records_digest`](crate::records_digest)),
    /// so that the signature vouches for exactly the records sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
    /// The collector's signature ([`BatchAck::sign`]): what lets a device
    /// believe the answer whoever relayed it (a broker, a proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::keys::Signature>,
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
