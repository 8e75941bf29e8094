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
//! * [`Drift`] is a [`crate::pipeline::Observer`]: it counts the same bins
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

use crate::types::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_protocol::DriftScore;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// An item whose input tensors hold at most this many elements in all has
/// one feature per element (digits: 64, the anomaly model: 30); beyond it,
/// each input tensor gives two (its mean and standard deviation), so that a
/// 150 528-element image costs two histograms, not 150 528.
pub const MAX_ELEMENT_FEATURES: usize = 256;

/// Histogram bins per feature, at most: deciles of the reference.
pub const BINS: usize = 10;

/// Format version of the profile file.
pub const PROFILE_FORMAT: u32 = 1;

/// Pseudo-count added to every bin of both histograms (see the module doc).
const PSEUDO_COUNT: f64 = 0.5;

/// `[drift]`: how windows are formed and how often a false alarm may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// A window closes after this many items...
    #[serde(default = "default_window_items")]
    pub window_items: u64,
    /// ... or this long after its first item, whichever comes first.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Chance of a false alarm per window under no drift, all scores
    /// together; thresholds are derived from it.
    #[serde(default = "default_false_alarm_rate")]
    pub false_alarm_rate: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            window_items: default_window_items(),
            window_secs: default_window_secs(),
            false_alarm_rate: default_false_alarm_rate(),
        }
    }
}

fn default_window_items() -> u64 {
    500
}
fn default_window_secs() -> u64 {
    3600
}
fn default_false_alarm_rate() -> f64 {
    0.01
}

/// Where a feature's value comes from in one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// Element `index` of input tensor `tensor`.
    Element {
        /// Position of the input tensor.
        tensor: usize,
        /// Element index, row-major.
        index: usize,
    },
    /// Mean of input tensor `tensor`'s elements.
    Mean {
        /// Position of the input tensor.
        tensor: usize,
    },
    /// Standard deviation of input tensor `tensor`'s elements.
    Std {
        /// Position of the input tensor.
        tensor: usize,
    },
    /// Largest value of output tensor `output` (max softmax or max score).
    Confidence {
        /// Position of the output tensor.
        output: usize,
    },
    /// Index of the largest value of output tensor `output` (the class).
    Class {
        /// Position of the output tensor.
        output: usize,
    },
}

/// One feature of a profile: where it comes from, its reference summary and
/// its reference histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// e.g. `input.input[12]`, `output.probabilities.class`.
    pub name: String,
    /// Where its value comes from.
    pub source: Source,
    /// Reference items with a value.
    pub count: u64,
    /// Reference mean.
    pub mean: f64,
    /// Reference standard deviation.
    pub std: f64,
    /// Reference minimum.
    pub min: f64,
    /// Reference maximum.
    pub max: f64,
    /// Inner bin edges, increasing: a value `x` is in bin `i`, the number of
    /// edges below `x` (`x <= edges[0]` is bin 0). Empty for a class.
    pub edges: Vec<f64>,
    /// Reference items per bin (per class for a class).
    pub counts: Vec<u64>,
}

/// A drift statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Statistic {
    /// Population stability index of a histogram (symmetrised KL).
    Psi,
    /// Jensen-Shannon distance (base 2, 0..1) of the class distribution.
    Js,
    /// Two-sample Kolmogorov-Smirnov distance, the largest gap between the
    /// window's and the reference's cumulative distributions at the bin
    /// edges: sensitive to a shift of location, which PSI spreads over bins.
    Ks,
}

impl Statistic {
    /// Its name on the wire and in metrics: `psi`, `js`, `ks`.
    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::Psi => "psi",
            Statistic::Js => "js",
            Statistic::Ks => "ks",
        }
    }
}

impl Feature {
    /// The statistics it is scored with: Jensen-Shannon for a class; PSI
    /// and Kolmogorov-Smirnov for a value with at least two bins.
    pub fn statistics(&self) -> &'static [Statistic] {
        match self.source {
            // One bin: constant in the reference (or a one-class output).
            _ if self.counts.len() < 2 => &[],
            Source::Class { .. } => &[Statistic::Js],
            _ => &[Statistic::Psi, Statistic::Ks],
        }
    }

    /// The bin of `value`.
    fn bin(&self, value: f64) -> usize {
        match self.source {
            Source::Class { .. } => (value as usize).min(self.counts.len().saturating_sub(1)),
            _ => self.edges.partition_point(|e| *e < value),
        }
    }
}

/// A model's reference profile (`sluice model profile`), as stored in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// [`PROFILE_FORMAT`].
    pub format: u32,
    /// The model's name in the configuration it was made with.
    pub model: String,
    /// SHA-256 of the model file: the profile is refused for any other.
    pub model_sha256: String,
    /// The pipeline whose preprocessing made the inputs.
    pub pipeline: String,
    /// Reference items.
    pub items: u64,
    /// When it was made, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The Sluice that made it.
    pub sluice_version: String,
    /// The features, inputs first.
    pub features: Vec<Feature>,
}

/// Why a profile cannot be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The file cannot be read or written.
    #[error("drift profile {}: {source}", path.display())]
    Io {
        /// The profile file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a profile this build reads.
    #[error("drift profile {}: not a profile of format {PROFILE_FORMAT}: {reason}", path.display())]
    Format {
        /// The profile file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The profile was made for another model file.
    #[error(
        "drift profile {} was made for model `{model}` with SHA-256 {profiled}, but the model file now has SHA-256 {running}: re-profile it with `sluice model profile --config CONFIG --pipeline {pipeline} DATA...`",
        path.display()
    )]
    OtherModel {
        /// The profile file.
        path: PathBuf,
        /// The model's name.
        model: String,
        /// The pipeline to profile with.
        pipeline: String,
        /// The digest the profile is bound to.
        profiled: String,
        /// The digest of the running model.
        running: String,
    },
    /// No reference item gave the features.
    #[error("no reference item got through the pipeline: nothing to profile")]
    Empty,
}

/// Mean and standard deviation of `t`'s elements (Welford, one pass).
fn mean_std(t: &Tensor) -> Option<(f64, f64)> {
    let n = t.data.len() / t.dtype.size().max(1);
    let (mut count, mut mean, mut m2) = (0f64, 0f64, 0f64);
    for i in 0..n {
        let x = t.element_f64(i)?;
        count += 1.0;
        let delta = x - mean;
        mean += delta / count;
        m2 += delta * (x - mean);
    }
    (count > 0.0).then(|| (mean, (m2 / count).sqrt()))
}

/// Largest value of `t` and its index.
fn max_of(t: &Tensor) -> Option<(usize, f64)> {
    let n = t.data.len() / t.dtype.size().max(1);
    let mut best: Option<(usize, f64)> = None;
    for i in 0..n {
        let x = t.element_f64(i)?;
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best
}

/// The value of `source` for one item, `None` if the item lacks it (or it
/// is not a number).
fn value(source: Source, inputs: &[Tensor], outputs: &[Tensor]) -> Option<f64> {
    let v = match source {
        Source::Element { tensor, index } => inputs.get(tensor)?.element_f64(index)?,
        Source::Mean { tensor } => mean_std(inputs.get(tensor)?)?.0,
        Source::Std { tensor } => mean_std(inputs.get(tensor)?)?.1,
        Source::Confidence { output } => max_of(outputs.get(output)?)?.1,
        Source::Class { output } => max_of(outputs.get(output)?)?.0 as f64,
    };
    v.is_finite().then_some(v)
}

/// The features an item of these shapes has (see [`MAX_ELEMENT_FEATURES`]).
fn sources(inputs: &[Tensor], outputs: &[Tensor]) -> Vec<(String, Source)> {
    let mut out = Vec::new();
    let elements: usize = inputs
        .iter()
        .map(|t| t.element_count().unwrap_or(0))
        .fold(0usize, usize::saturating_add);
    for (tensor, t) in inputs.iter().enumerate() {
        if elements <= MAX_ELEMENT_FEATURES {
            for index in 0..t.element_count().unwrap_or(0) {
                out.push((
                    format!("input.{}[{index}]", t.name),
                    Source::Element { tensor, index },
                ));
            }
        } else {
            out.push((format!("input.{}.mean", t.name), Source::Mean { tensor }));
            out.push((format!("input.{}.std", t.name), Source::Std { tensor }));
        }
    }
    for (output, t) in outputs.iter().enumerate() {
        if t.element_count().unwrap_or(0) > 1 {
            out.push((format!("output.{}.class", t.name), Source::Class { output }));
        }
        out.push((
            format!("output.{}.confidence", t.name),
            Source::Confidence { output },
        ));
    }
    out
}

/// Inner bin edges from the reference deciles of sorted `values`: repeated
/// edges merge (fewer bins for few distinct values) and an edge at the
/// maximum is dropped, so that every bin holds reference items.
fn decile_edges(sorted: &[f64]) -> Vec<f64> {
    let m = sorted.len();
    let mut edges: Vec<f64> = Vec::new();
    let Some(&max) = sorted.last() else {
        return edges;
    };
    for j in 1..BINS {
        // Nearest rank: the smallest value with at least j/10 of the items
        // at or below it.
        let rank = (j * m).div_ceil(BINS).max(1);
        let edge = sorted[rank - 1];
        if edge < max && edges.last().is_none_or(|last| edge > *last) {
            edges.push(edge);
        }
    }
    edges
}

impl Profile {
    /// The profile of reference items (`(inputs, outputs)` of each item that
    /// got through inference) of `pipeline`'s model `model`.
    pub fn build(
        model: &str,
        model_sha256: &str,
        pipeline: &str,
        items: &[(&[Tensor], &[Tensor])],
    ) -> Result<Profile, ProfileError> {
        let (first_in, first_out) = items.first().ok_or(ProfileError::Empty)?;
        let mut features = Vec::new();
        for (name, source) in sources(first_in, first_out) {
            let mut values: Vec<f64> = items
                .iter()
                .filter_map(|(i, o)| value(source, i, o))
                .collect();
            values.sort_by(f64::total_cmp);
            let count = values.len() as u64;
            let mean = values.iter().sum::<f64>() / count.max(1) as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count.max(1) as f64;
            let mut feature = Feature {
                name,
                source,
                count,
                mean,
                std: var.sqrt(),
                min: values.first().copied().unwrap_or(0.0),
                max: values.last().copied().unwrap_or(0.0),
                edges: Vec::new(),
                counts: Vec::new(),
            };
            match source {
                Source::Class { output } => {
                    feature.counts = vec![0; first_out[output].element_count().unwrap_or(0)];
                }
                _ => {
                    feature.edges = decile_edges(&values);
                    feature.counts = vec![0; feature.edges.len() + 1];
                }
            }
            for v in &values {
                let bin = feature.bin(*v);
                feature.counts[bin] += 1;
            }
            features.push(feature);
        }
        Ok(Profile {
            format: PROFILE_FORMAT,
            model: model.to_owned(),
            model_sha256: model_sha256.to_owned(),
            pipeline: pipeline.to_owned(),
            items: items.len() as u64,
            created_at_ms: sluice_types::now_ms(),
            sluice_version: sluice_types::VERSION.to_owned(),
            features,
        })
    }

    /// The profile as stored: pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).expect("a profile serializes");
        text.push(b'\n');
        text
    }

    /// Write it to `path` durably (a temporary file, fsynced, renamed, the
    /// folder fsynced), so that neither a running agent nor a power cut
    /// ever leaves half a profile.
    pub fn write(&self, path: &Path) -> Result<(), ProfileError> {
        sluice_durable::write_atomically(path, &self.to_json()).map_err(|source| ProfileError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Read the profile at `path`; also its SHA-256 (hex).
    pub fn read(path: &Path) -> Result<(Profile, String), ProfileError> {
        let bytes = std::fs::read(path).map_err(|source| ProfileError::Io {
            path: path.to_owned(),
            source,
        })?;
        let format = |reason: String| ProfileError::Format {
            path: path.to_owned(),
            reason,
        };
        let profile: Profile = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
        if profile.format != PROFILE_FORMAT {
            return Err(format(format!("format {}", profile.format)));
        }
        for f in &profile.features {
            let bins_ok = match f.source {
                Source::Class { .. } => f.edges.is_empty() && !f.counts.is_empty(),
                _ => f.counts.len() == f.edges.len() + 1 && f.edges.is_sorted(),
            };
            if !bins_ok {
                return Err(format(format!(
                    "feature `{}` has inconsistent bins",
                    f.name
                )));
            }
        }
        Ok((profile, hex::encode(Sha256::digest(&bytes))))
    }
}

/// Where the profile of a model at `model_path` lives unless configured
/// (`models.NAME.profile`): beside it, `<model path>.profile.json`.
pub fn default_profile_path(model_path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.profile.json", model_path.display()))
}

/// `χ²⁻¹(dof, p)`.
fn chi_square_quantile(dof: usize, p: f64) -> f64 {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    ChiSquared::new(dof as f64)
        .expect("dof >= 1")
        .inverse_cdf(p)
}

/// `c` with `P(sqrt(nm/(n+m)) · D > c) <= alpha` for the two-sample
/// Kolmogorov-Smirnov distance D: the first term of Kolmogorov's series,
/// `2·exp(−2c²) = alpha`, an upper bound of the tail. D taken only at the
/// bin edges is at most the full D, and ties only lower it, so the bound
/// holds for binned and discrete features too (conservatively).
fn ks_critical(alpha: f64) -> f64 {
    (-(alpha / 2.0).ln() / 2.0).sqrt()
}

/// One score of a window: a statistic of one feature and its critical
/// value at the per-score false-alarm rate.
struct Test {
    feature: usize,
    statistic: Statistic,
    /// `χ²⁻¹(B−1, 1 − α/k)` for PSI and JS, `c(α/k)` for KS.
    critical: f64,
}

/// The scores of one window's bin counts against `profile`.
pub struct Scorer {
    tests: Vec<Test>,
    false_alarm_rate: f64,
}

impl Scorer {
    /// Thresholds for `profile` at a false-alarm rate `alpha` per window,
    /// shared by all k scores (Bonferroni: each at `alpha / k`).
    pub fn new(profile: &Profile, alpha: f64) -> Scorer {
        let k = profile
            .features
            .iter()
            .map(|f| f.statistics().len())
            .sum::<usize>();
        let each = alpha / k.max(1) as f64;
        let mut tests = Vec::with_capacity(k);
        for (i, f) in profile.features.iter().enumerate() {
            for &statistic in f.statistics() {
                let critical = match statistic {
                    Statistic::Ks => ks_critical(each),
                    Statistic::Psi | Statistic::Js => {
                        chi_square_quantile(f.counts.len() - 1, 1.0 - each)
                    }
                };
                tests.push(Test {
                    feature: i,
                    statistic,
                    critical,
                });
            }
        }
        Scorer {
            tests,
            false_alarm_rate: alpha,
        }
    }

    /// The configured false-alarm rate per window.
    pub fn false_alarm_rate(&self) -> f64 {
        self.false_alarm_rate
    }

    /// Score `counts` (per feature, items per bin) against `profile`.
    pub fn score(&self, profile: &Profile, counts: &[Vec<u64>]) -> Vec<DriftScore> {
        let mut scores = Vec::with_capacity(self.tests.len());
        for test in &self.tests {
            let feature = &profile.features[test.feature];
            let Some(window) = counts.get(test.feature) else {
                continue;
            };
            let (n, m) = (
                window.iter().sum::<u64>() as f64,
                feature.counts.iter().sum::<u64>() as f64,
            );
            if n == 0.0 || m == 0.0 {
                continue;
            }
            let scale = 1.0 / n + 1.0 / m;
            let (value, threshold) = match test.statistic {
                Statistic::Ks => {
                    // Cumulative shares at each inner edge, from raw counts.
                    let (mut cw, mut cr, mut d) = (0.0, 0.0, 0.0f64);
                    for (w, r) in window.iter().zip(&feature.counts) {
                        cw += *w as f64 / n;
                        cr += *r as f64 / m;
                        d = d.max((cw - cr).abs());
                    }
                    (d, test.critical * scale.sqrt())
                }
                Statistic::Psi | Statistic::Js => {
                    let b = window.len() as f64;
                    let p = window
                        .iter()
                        .map(|&c| (c as f64 + PSEUDO_COUNT) / (n + PSEUDO_COUNT * b));
                    let q = feature
                        .counts
                        .iter()
                        .map(|&c| (c as f64 + PSEUDO_COUNT) / (m + PSEUDO_COUNT * b));
                    if test.statistic == Statistic::Js {
                        let jsd: f64 = p
                            .zip(q)
                            .map(|(p, q)| {
                                let mid = (p + q) / 2.0;
                                0.5 * p * (p / mid).ln() + 0.5 * q * (q / mid).ln()
                            })
                            .sum();
                        let ln2 = std::f64::consts::LN_2;
                        (
                            (jsd.max(0.0) / ln2).sqrt(),
                            (scale * test.critical / (8.0 * ln2)).sqrt(),
                        )
                    } else {
                        let psi: f64 = p.zip(q).map(|(p, q)| (p - q) * (p / q).ln()).sum();
                        (psi, scale * test.critical)
                    }
                }
            };
            scores.push(DriftScore {
                feature: feature.name.clone(),
                statistic: test.statistic.as_str().to_owned(),
                value,
                threshold,
                drifted: value > threshold,
            });
        }
        scores
    }
}

/// Per feature, items per bin, for `items` (`(inputs, outputs)`).
pub fn bin_counts<'a>(
    profile: &Profile,
    items: impl IntoIterator<Item = (&'a [Tensor], &'a [Tensor])>,
) -> Vec<Vec<u64>> {
    let mut counts: Vec<Vec<u64>> = profile
        .features
        .iter()
        .map(|f| vec![0; f.counts.len()])
        .collect();
    for (inputs, outputs) in items {
        add(profile, &mut counts, inputs, outputs);
    }
    counts
}

/// Count one item into `counts`.
fn add(profile: &Profile, counts: &mut [Vec<u64>], inputs: &[Tensor], outputs: &[Tensor]) {
    // Mean and deviation of a large tensor are shared by two features:
    // computed once per item.
    let mut moments: Option<(usize, Option<(f64, f64)>)> = None;
    for (feature, counts) in profile.features.iter().zip(counts.iter_mut()) {
        let v = match feature.source {
            Source::Mean { tensor } | Source::Std { tensor } => {
                let m = match moments {
                    Some((t, m)) if t == tensor => m,
                    _ => {
                        let m = inputs.get(tensor).and_then(mean_std);
                        moments = Some((tensor, m));
                        m
                    }
                };
                m.map(|(mean, std)| {
                    if matches!(feature.source, Source::Mean { .. }) {
                        mean
                    } else {
                        std
                    }
                })
                .filter(|v| v.is_finite())
            }
            source => value(source, inputs, outputs),
        };
        if let Some(v) = v {
            counts[feature.bin(v)] += 1;
        }
    }
}

/// A window that closed: its span, size and scores.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// When its first item was seen, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// When its last item was seen.
    pub ended_at_ms: i64,
    /// Items in it.
    pub items: u64,
    /// One per scored feature.
    pub scores: Vec<DriftScore>,
    /// Whether any score crossed its threshold.
    pub alarm: bool,
}

struct Window {
    started: Instant,
    started_at_ms: i64,
    ended_at_ms: i64,
    items: u64,
    counts: Vec<Vec<u64>>,
}

struct State {
    window: Option<Window>,
    closed: Vec<ClosedWindow>,
}

/// Drift detection for one pipeline: observes its items, closes and scores
/// windows. Closed windows wait in it (at most a few: the worker takes them
/// after every group) until [`Drift::take_closed`].
pub struct Drift {
    profile: Profile,
    profile_sha256: String,
    profile_path: PathBuf,
    config: DriftConfig,
    scorer: Scorer,
    state: Mutex<State>,
}

impl Drift {
    /// Drift detection against the profile at `path`, which must be bound to
    /// the running model's `model_sha256`.
    pub fn load(
        path: &Path,
        model: &str,
        pipeline: &str,
        model_sha256: &str,
        config: &DriftConfig,
    ) -> Result<Drift, ProfileError> {
        let (profile, profile_sha256) = Profile::read(path)?;
        if !profile.model_sha256.eq_ignore_ascii_case(model_sha256) {
            return Err(ProfileError::OtherModel {
                path: path.to_owned(),
                model: model.to_owned(),
                pipeline: pipeline.to_owned(),
                profiled: profile.model_sha256,
                running: model_sha256.to_owned(),
            });
        }
        Ok(Drift {
            scorer: Scorer::new(&profile, config.false_alarm_rate),
            profile,
            profile_sha256,
            profile_path: path.to_owned(),
            config: config.clone(),
            state: Mutex::new(State {
                window: None,
                closed: Vec::new(),
            }),
        })
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// SHA-256 (hex) of the profile file.
    pub fn profile_sha256(&self) -> &str {
        &self.profile_sha256
    }

    /// The profile file.
    pub fn profile_path(&self) -> &Path {
        &self.profile_path
    }

    /// The configured false-alarm rate per window.
    pub fn false_alarm_rate(&self) -> f64 {
        self.config.false_alarm_rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, state: &mut State) {
        if let Some(window) = state.window.take() {
            let scores = self.scorer.score(&self.profile, &window.counts);
            state.closed.push(ClosedWindow {
                started_at_ms: window.started_at_ms,
                ended_at_ms: window.ended_at_ms,
                items: window.items,
                alarm: scores.iter().any(|s| s.drifted),
                scores,
            });
        }
    }

    /// Close the window if it is older than `window_secs`.
    pub fn tick(&self) {
        let mut state = self.lock();
        let due = state
            .window
            .as_ref()
            .is_some_and(|w| w.started.elapsed().as_secs() >= self.config.window_secs);
        if due {
            self.close(&mut state);
        }
    }

    /// Windows closed since the last call, oldest first.
    pub fn take_closed(&self) -> Vec<ClosedWindow> {
        std::mem::take(&mut self.lock().closed)
    }
}

impl crate::pipeline::Observer for Drift {
    fn observe(&self, inputs: &[Vec<Tensor>], outputs: &[&[Tensor]]) {
        // The clock is read once per batch: a batch takes milliseconds, a
        // window's time limit is at least a second.
        let now_ms = sluice_types::now_ms();
        let mut state = self.lock();
        if state
            .window
            .as_ref()
            .is_some_and(|w| w.started.elapsed().as_secs() >= self.config.window_secs)
        {
            self.close(&mut state);
        }
        for (inputs, outputs) in inputs.iter().zip(outputs) {
            let window = state.window.get_or_insert_with(|| Window {
                started: Instant::now(),
                started_at_ms: now_ms,
                ended_at_ms: now_ms,
                items: 0,
                counts: self
                    .profile
                    .features
                    .iter()
                    .map(|f| vec![0; f.counts.len()])
                    .collect(),
            });
            add(&self.profile, &mut window.counts, inputs, outputs);
            window.items += 1;
            window.ended_at_ms = now_ms;
            if window.items >= self.config.window_items {
                self.close(&mut state);
            }
        }
    }
}

/// What each of `items` looks like to the model: its preprocessed inputs
/// and the model's outputs, from running it through `pipeline` (items that
/// fail a stage before the model's answer are left out). In no given order.
pub fn observe_items(
    pipeline: &crate::pipeline::Pipeline,
    items: Vec<crate::types::RawItem>,
) -> Vec<(Vec<Tensor>, Vec<Tensor>)> {
    #[derive(Default)]
    struct Collect(Mutex<Vec<(Vec<Tensor>, Vec<Tensor>)>>);
    impl crate::pipeline::Observer for Collect {
        fn observe(&self, inputs: &[Vec<Tensor>], outputs: &[&[Tensor]]) {
            let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
            for (i, o) in inputs.iter().zip(outputs) {
                seen.push((i.clone(), o.to_vec()));
            }
        }
    }
    let collect = std::sync::Arc::new(Collect::default());
    let observed = pipeline.clone().with_observer(collect.clone());
    crate::pipeline::process_all(&observed, items, &|_| {});
    std::mem::take(&mut *collect.0.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Closed windows a worker could not store yet (a full disk) are kept for
/// the next try, at most this many; older ones are dropped, with a warning.
pub const MAX_UNSTORED_WINDOWS: usize = 64;

impl Drift {
    /// The wire record of `window`, under sequence number `seq` of `outbox`
    /// (`instance`), for `device`'s `pipeline`.
    pub fn record(
        &self,
        window: &ClosedWindow,
        device: &str,
        pipeline: &str,
        outbox: Option<&str>,
        seq: i64,
    ) -> sluice_protocol::DriftWindow {
        sluice_protocol::DriftWindow {
            kind: sluice_protocol::RecordKind::DriftWindow,
            id: sluice_protocol::result_id(device, pipeline, outbox, seq),
            device: device.to_owned(),
            pipeline: pipeline.to_owned(),
            outbox: outbox.map(str::to_owned),
            seq,
            model: self.profile.model.clone(),
            model_sha256: self.profile.model_sha256.clone(),
            profile_sha256: self.profile_sha256.clone(),
            started_at_ms: window.started_at_ms,
            ended_at_ms: window.ended_at_ms,
            items: window.items,
            false_alarm_rate: self.config.false_alarm_rate,
            scores: window.scores.clone(),
            alarm: window.alarm,
            sluice_version: sluice_types::VERSION.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi_square_quantiles_and_ks_critical_values_match_the_tables() {
        // Published values: χ²⁻¹(9, 0.99) = 21.666, χ²⁻¹(1, 0.95) = 3.841;
        // Kolmogorov-Smirnov large-sample c(0.05) = 1.358, c(0.01) = 1.628.
        assert!((chi_square_quantile(9, 0.99) - 21.666).abs() < 1e-3);
        assert!((chi_square_quantile(1, 0.95) - 3.841).abs() < 1e-3);
        assert!((ks_critical(0.05) - 1.358).abs() < 1e-3);
        assert!((ks_critical(0.01) - 1.628).abs() < 1e-3);
    }

    #[test]
    fn ks_is_the_largest_gap_of_the_cumulative_shares_at_the_bin_edges() {
        // Reference: 0..1000, ten bins of 100 items.
        let reference: Vec<_> = (0..1000).map(|i| item(i as f32, [0.5, 0.5])).collect();
        let pairs: Vec<_> = reference
            .iter()
            .map(|(i, o)| (i.as_slice(), o.as_slice()))
            .collect();
        let profile = Profile::build("m", "ab", "p", &pairs).unwrap();
        let ks_of = |values: &[f32]| {
            let window: Vec<_> = values.iter().map(|&x| item(x, [0.5, 0.5])).collect();
            let window = window.iter().map(|(i, o)| (i.as_slice(), o.as_slice()));
            let scores = Scorer::new(&profile, 0.01).score(&profile, &bin_counts(&profile, window));
            scores.into_iter().find(|s| s.statistic == "ks").unwrap()
        };
        // 40 items spread like the reference: no gap.
        let same: Vec<f32> = (0..40).map(|i| 12.5 + 25.0 * i as f32).collect();
        let ks = ks_of(&same);
        assert!(ks.value.abs() < 1e-9 && !ks.drifted, "{ks:?}");
        // 40 items all below 400: after 4 bins the window has all of its
        // mass, the reference 40 %.
        let low: Vec<f32> = (0..40).map(|i| 10.0 * i as f32).collect();
        let ks = ks_of(&low);
        assert!((ks.value - 0.6).abs() < 1e-9 && ks.drifted, "{ks:?}");
        // Threshold: c(α/k) · sqrt(1/n + 1/m), k = 3 scores (x's PSI and
        // KS, the class's JS).
        let expected = ks_critical(0.01 / 3.0) * (1.0 / 40.0 + 1.0 / 1000.0f64).sqrt();
        assert!((ks.threshold - expected).abs() < 1e-12, "{ks:?}");
    }

    fn item(x: f32, scores: [f32; 2]) -> (Vec<Tensor>, Vec<Tensor>) {
        (
            vec![Tensor::from_f32("x", vec![1, 1], &[x])],
            vec![Tensor::from_f32("y", vec![1, 2], &scores)],
        )
    }

    #[test]
    fn a_window_closes_by_count_and_by_time_and_scores_what_it_saw() {
        use crate::pipeline::Observer;
        let items: Vec<_> = (0..100).map(|i| item(i as f32, [0.2, 0.8])).collect();
        let pairs: Vec<_> = items
            .iter()
            .map(|(i, o)| (i.as_slice(), o.as_slice()))
            .collect();
        let profile = Profile::build("m", "ab", "p", &pairs).unwrap();
        // x: 10 bins; y's class: always 1 (2 classes); y's confidence: constant.
        assert_eq!(profile.features.len(), 3);
        assert_eq!(profile.features[0].counts, vec![10; 10]);
        assert_eq!(profile.features[1].counts, vec![0, 100]);
        assert_eq!(profile.features[2].counts, vec![100]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        profile.write(&path).unwrap();
        let config = DriftConfig {
            window_items: 50,
            window_secs: 1,
            false_alarm_rate: 0.01,
        };
        let err = Drift::load(&path, "m", "p", "cd", &config).err().unwrap();
        assert!(matches!(err, ProfileError::OtherModel { .. }), "{err}");
        let drift = Drift::load(&path, "m", "p", "AB", &config).unwrap();
        let inputs: Vec<Vec<Tensor>> = items.iter().map(|(i, _)| i.clone()).collect();
        let outputs: Vec<&[Tensor]> = items.iter().map(|(_, o)| o.as_slice()).collect();
        // 60 items as seen: one window of 50 closes, quiet.
        drift.observe(&inputs[..60], &outputs[..60]);
        let closed = drift.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].items, 50);
        // Three scores: x by PSI and KS, the class by JS (the constant
        // confidence has none).
        let statistics: Vec<_> = closed[0]
            .scores
            .iter()
            .map(|s| (s.feature.as_str(), s.statistic.as_str()))
            .collect();
        assert_eq!(
            statistics,
            [
                ("input.x[0]", "psi"),
                ("input.x[0]", "ks"),
                ("output.y.class", "js")
            ]
        );
        // x's values 0..50 against a reference 0..100: half of the mass
        // moved below the median, so the cumulative gap is 0.5 at the 5th edge.
        let ks = &closed[0].scores[1];
        assert!((ks.value - 0.5).abs() < 1e-9, "{ks:?}");
        // The first 50 of 0..100 are half the reference range: drift.
        assert!(closed[0].alarm, "{:?}", closed[0].scores);
        // The 10 left close by time.
        drift.tick();
        assert!(drift.take_closed().is_empty());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        drift.tick();
        let closed = drift.take_closed();
        assert_eq!((closed.len(), closed[0].items), (1, 10));
    }

    #[test]
    fn deciles_merge_for_few_distinct_values_and_keep_every_bin_filled() {
        let sorted: Vec<f64> = (0..100).map(|i| (i / 10) as f64).collect();
        assert_eq!(
            decile_edges(&sorted),
            (0..9).map(f64::from).collect::<Vec<_>>()
        );
        let two: Vec<f64> = (0..100).map(|i| if i < 70 { 0.0 } else { 1.0 }).collect();
        assert_eq!(decile_edges(&two), vec![0.0]);
        assert!(decile_edges(&[3.0; 50]).is_empty());
    }
}
