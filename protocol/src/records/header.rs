//! What every record carries, whatever its kind: the kind, its id and
//! where it comes from, checked the same way for all kinds.

use crate::{MAX_OUTBOX_LEN, result_id};
use serde::{Deserialize, Serialize};

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
