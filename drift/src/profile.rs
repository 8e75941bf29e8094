//! A model's reference profile: its features, their bins and summary
//! statistics, bound to the model file's SHA-256; and how a feature's value
//! is read from one item.

use super::{BINS, MAX_ELEMENT_FEATURES, PROFILE_FORMAT};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_types::Tensor;
use std::path::{Path, PathBuf};

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
    pub(super) fn bin(&self, value: f64) -> usize {
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
pub(super) fn mean_std(t: &Tensor) -> Option<(f64, f64)> {
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
pub(super) fn value(source: Source, inputs: &[Tensor], outputs: &[Tensor]) -> Option<f64> {
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
pub(super) fn decile_edges(sorted: &[f64]) -> Vec<f64> {
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
