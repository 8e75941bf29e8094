//! # sluice-drift: drift statistics
//!
//! Drift on the device, without labels: how a pipeline's inputs and outputs
//! compare with a reference profile of the model, window by window.
//!
//! * A [`Profile`] (`sluice model profile`) holds, per feature, summary
//!   statistics and a histogram of reference data run through the real
//!   pipeline: for inputs, each element of the model's input when an item has
//!   at most [`MAX_ELEMENT_FEATURES`] of them, otherwise the mean and standard
//!   deviation of each input tensor; for outputs, the predicted class
//!   (argmax) and the confidence (the largest output value). Histogram bins
//!   come from the reference deciles, so a feature with few distinct values
//!   gets fewer bins and one that never varies gets none (it is not scored).
//!   The profile is bound to the model file's SHA-256.
//! * [`Drift`] observes a pipeline's batches ([`Drift::observe`]; the agent
//!   makes it a pipeline observer): it counts the same bins
//!   over a window of items (`[drift] window_items`, or `window_secs` since
//!   the window's first item) and, when the window closes, scores it: PSI
//!   and the Kolmogorov-Smirnov distance per histogram, Jensen-Shannon
//!   distance for the class distribution.
//!
//! Thresholds are derived, not fixed. With no drift, window and reference are
//! two samples of one distribution, and over B bins the PSI is about
//! `(1/n + 1/m) · χ²(B−1)` (n window items, m reference items: PSI is a
//! symmetrised KL divergence, whose second-order term is the chi-square
//! divergence). So a score's threshold is `(1/n + 1/m) · χ²⁻¹(B−1, 1 − α/k)`,
//! with α = `[drift] false_alarm_rate`, the chance of a false alarm per window,
//! shared by the k scores (Bonferroni). For the class distribution the
//! Jensen-Shannon divergence (nats) has second-order term `(1/8) Σ (p−q)²/π`,
//! so `8 · JSD / (1/n + 1/m) ~ χ²(B−1)` and the distance threshold is
//! `sqrt((1/n + 1/m) · χ²⁻¹(B−1, 1 − α/k) / (8 · ln 2))` (base-2 distance, in
//! 0..1). Counts get half a pseudo-count per bin (Jeffreys) so that an empty
//! bin is finite; that shrinks small-sample scores, erring against alarms.
//! PSI weighs every bin alike and misses the order of the bins; the
//! Kolmogorov-Smirnov distance D (the largest gap between the cumulative
//! shares, at the bin edges) sees a shift of location build up across bins.
//! Its threshold is `c(α/k) · sqrt(1/n + 1/m)` with `2·exp(−2c²) = α/k`, a
//! bound of Kolmogorov's tail that stays valid (conservative) when D is only
//! looked at on the edges and for discrete features.
//!
//! Invariants: the features, bins and thresholds are fixed by the profile at
//! start, so a window's memory and the metrics' series are bounded by the
//! profile; observing never allocates per item (one lock per batch).

//!
//! The files, by role: `profile.rs` (features and the profile file),
//! `score.rs` (thresholds and scores), `window.rs` (windows over live
//! items and their records). It imports only leaves (`sluice-types`,
//! `sluice-protocol`, `sluice-durable`); the agent feeds it.

#![deny(missing_docs)]

use serde::Deserialize;

mod profile;
mod score;
#[cfg(test)]
mod tests;
mod window;

pub use profile::{Feature, Profile, ProfileError, Source, Statistic, default_profile_path};
pub use score::{Scorer, bin_counts};
pub use window::{ClosedWindow, Drift, MAX_UNSTORED_WINDOWS};

/// An item whose input tensors hold at most this many elements in all has
/// one feature per element (digits: 64, the anomaly model: 30); beyond it,
/// each input tensor gives two (its mean and standard deviation), so that a
/// 150 528-element image costs two histograms, not 150 528.
pub const MAX_ELEMENT_FEATURES: usize = 256;

/// Histogram bins per feature, at most: deciles of the reference.
pub const BINS: usize = 10;

/// Format version of the profile file.
pub const PROFILE_FORMAT: u32 = 1;

/// `[drift]`: how windows are formed and how often a false alarm may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// A window closes after this many items...
    pub window_items: u64,
    /// ... or this long after its first item, whichever comes first.
    pub window_secs: u64,
    /// Chance of a false alarm per window under no drift, all scores
    /// together; thresholds are derived from it.
    pub false_alarm_rate: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            window_items: 500,
            window_secs: 3600,
            false_alarm_rate: 0.01,
        }
    }
}
