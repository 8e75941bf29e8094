//! What a device ships upstream: records of several kinds (results, drift
//! windows, install reports), each with the common header of `header.rs`.

use serde::{Deserialize, Serialize};

mod drift;
mod header;
mod install;
mod result;

pub use drift::{DriftScore, DriftWindow};
pub use header::{RecordError, RecordHeader, RecordKind};
pub use install::{BundleRef, InstallOutcome, InstallReport};
pub use result::*;

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
