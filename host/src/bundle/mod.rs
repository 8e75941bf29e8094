//! Bundles on the device: making one from a working configuration
//! (`sluice bundle build`, [`build()`]) and installing one while the agent
//! runs (`install.rs`, started by the agent when `[bundles]` pins a key).
//! The format, the keys and the checks a device makes before trusting a
//! bundle are in `sluice-bundle`.
//!
//! A bundle carries one pipeline whole: its two plugins (a `bundled:NAME`
//! plugin is written out as the component embedded in the building binary,
//! so the device runs exactly what was validated), the folders granted to
//! them, its model with the model's drift profile when there is one, the
//! configuration fragment of those four (`pipeline.toml`, paths relative to
//! the bundle), and a validation set: input files with the results the
//! build gave for them (`validation/expected.json`).
//!
//! Installing, for a pipeline the device's configuration already has:
//! stage (unpack to a new directory) → verify (signature by a pinned key,
//! files, expiry, a version above every one seen, Sluice and WIT) →
//! validate (the validation set through the bundle's own plugins and model:
//! the same results within the manifest's tolerance, within its per-item
//! time) → swap (the worker takes the new version at its next group) →
//! probation (error rate, time per item and drift alarms against the version
//! before, watched for `bundles.probation_secs`) → commit, or roll back to
//! the last good version. Each deciding step is an `install` record through the outbox
//! and a metric.
//!
//! Invariants: the install state (`<data_dir>/bundles/state.json`) is
//! replaced atomically, and a version is recorded as running before it
//! runs, so after a crash the device runs exactly one version per pipeline;
//! a version found still on probation at start is rolled back (it may be
//! what crashed the device); the last good version stays on disk until the
//! next commit; a refused bundle changes nothing but the list of bundle
//! files already handled.

mod build;
mod error;
mod install;
mod sources;
mod state;
mod validate;

pub use build::{BuildError, BuildRequest, build};
pub use install::InstallError;
pub(crate) use install::Installer;
pub use state::{Installed, PipelineState, State};

use serde::{Deserialize, Serialize};

/// The WIT package this Sluice's plugin host implements (`wit/sluice.wit`).
pub const WIT_PACKAGE: &str = "sluice:plugin@0.1.0";

/// The configuration fragment inside a bundle.
pub const PIPELINE_TOML: &str = "pipeline.toml";
/// The expected results of the validation set inside a bundle.
pub const EXPECTED_JSON: &str = "validation/expected.json";

/// One item of the validation set, as `validation/expected.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The input, under `files/`.
    pub input: String,
    /// Its content type.
    pub content_type: String,
    /// The result document as JSON, or `None` when the item failed.
    pub result: Option<serde_json::Value>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}
