//! What a device's agent gives its own consumers: results read from the
//! device itself (`GET` [`crate::paths::agent::RESULTS`]), whatever the
//! upstream sync does.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Results one `GET /v1/results` returns at most.
pub const MAX_LOCAL_PAGE: u32 = 1000;

/// `GET` [`crate::paths::agent::RESULTS`]`?after=POS&limit=N`: results the
/// device completed after position `POS`, in completion order.
#[derive(Debug, Serialize, Deserialize)]
pub struct LocalResults {
    /// The results, each with its position.
    pub results: Vec<LocalResult>,
    /// What to ask `after` next: the last position given (or the one
    /// asked after, when none was).
    pub next: i64,
    /// Results after the position asked for were deleted before they were
    /// read (kept only within `outbox.local_max_bytes` and
    /// `local_max_age_secs`): the reader missed some.
    pub missed: bool,
}

/// One result kept on the device.
#[derive(Debug, Serialize, Deserialize)]
pub struct LocalResult {
    /// Its position: unique, increasing in the order results completed.
    pub pos: i64,
    /// The result record, as it goes upstream (its `id` identifies it).
    pub record: Box<RawValue>,
}
