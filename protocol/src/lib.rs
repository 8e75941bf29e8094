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

mod ack;
mod batches;
mod cursor;
mod fleet;
pub mod keys;
pub mod local;
pub mod mqtt;
mod names;
pub mod operator;
pub mod paths;
mod records;
#[cfg(test)]
mod tests;

pub use ack::{ACK_SIGNATURE_CONTEXT, AckMismatch, records_digest};
pub use batches::{BatchAck, DeviceStatus, ErrorBody, RawBatch, UploadBatch};
pub use cursor::ResultsCursor;
pub use fleet::*;
pub use names::{MAX_OUTBOX_LEN, NameError, check_name, result_id};
pub use records::*;

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
