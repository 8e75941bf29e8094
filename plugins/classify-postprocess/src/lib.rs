//! # classify-postprocess
//!
//! A Sluice postprocessor for classifiers: reads one score vector (shape
//! `[K]` or `[1, K]`), optionally applies a numerically stable softmax, and
//! returns the top-k classes with their labels as JSON:
//!
//! ```json
//! {"label": "cat", "index": 3, "score": 0.91,
//!  "top": [{"label": "cat", "index": 3, "score": 0.91}, ...]}
//! ```
//!
//! Labels come from `labels` (inline), from `labels_file` (a text file inside
//! the sandbox, one label per line, read once at init), or default to the
//! class indices. Ties are ranked by the lower index first.
//!
//! See `README.md` for the configuration keys.

use serde::{Deserialize, Serialize};
use sluice_guest::{Document, InferenceOutput, ItemError, Postprocessor};

/// The plugin's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the model output holding the scores.
    #[serde(default = "default_input")]
    pub input: String,
    /// Apply a softmax to the scores first.
    #[serde(default)]
    pub softmax: bool,
    /// How many classes to list in `top` (clamped to the number of classes).
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    /// Path inside the sandbox of a text file with one label per line.
    #[serde(default)]
    pub labels_file: Option<String>,
    /// Inline labels, in class order.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

fn default_input() -> String {
    "probabilities".into()
}
fn default_top_k() -> u32 {
    5
}

/// One ranked class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Class {
    pub label: String,
    pub index: usize,
    pub score: f32,
}

/// The result document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub label: String,
    pub index: usize,
    pub score: f32,
    pub top: Vec<Class>,
}

#[derive(Debug)]
pub struct ClassifyPostprocess {
    input: String,
    softmax: bool,
    top_k: usize,
    /// `None`: the labels are the class indices.
    labels: Option<Vec<String>>,
}

/// Labels from the text of a labels file: one per line, surrounding
/// whitespace trimmed, trailing empty lines ignored.
pub fn parse_labels(text: &str) -> Vec<String> {
    let mut labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while labels.last().is_some_and(|l| l.is_empty()) {
        labels.pop();
    }
    labels
}

/// Rank `scores`: softmax first if asked, then the `top_k` best as
/// `(index, score)`, best first, ties by lower index.
pub fn rank(scores: &[f32], softmax: bool, top_k: usize) -> Result<Vec<(usize, f32)>, String> {
    if scores.is_empty() {
        return Err("the score tensor is empty".into());
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(format!("score {i} is NaN"));
    }
    let values: Vec<f32> = if softmax {
        if let Some(i) = scores.iter().position(|&s| s == f32::INFINITY) {
            return Err(format!("score {i} is +inf; softmax is undefined"));
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        if max == f64::NEG_INFINITY {
            return Err("every score is -inf; softmax is undefined".into());
        }
        let exps: Vec<f64> = scores.iter().map(|&s| (s as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|e| (e / sum) as f32).collect()
    } else {
        if let Some(i) = scores.iter().position(|s| s.is_infinite()) {
            return Err(format!(
                "score {i} is infinite, which JSON cannot carry (softmax = false)"
            ));
        }
        scores.to_vec()
    };
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Stable sort: equal scores keep index order.
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(top_k.clamp(1, values.len()));
    Ok(order.into_iter().map(|i| (i, values[i])).collect())
}

impl ClassifyPostprocess {
    pub fn from_config(config: Config) -> Result<Self, String> {
        if config.input.is_empty() {
            return Err("`input` must not be empty".into());
        }
        if config.top_k == 0 {
            return Err("`top_k` must be at least 1".into());
        }
        let labels = match (config.labels, config.labels_file) {
            (Some(_), Some(_)) => return Err("set `labels` or `labels_file`, not both".into()),
            (Some(labels), None) => {
                if labels.is_empty() {
                    return Err("`labels` is empty".into());
                }
                Some(labels)
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read labels_file `{path}`: {e}"))?;
                let labels = parse_labels(&text);
                if labels.is_empty() {
                    return Err(format!("labels_file `{path}` holds no labels"));
                }
                Some(labels)
            }
            (None, None) => None,
        };
        Ok(Self {
            input: config.input,
            softmax: config.softmax,
            top_k: config.top_k as usize,
            labels,
        })
    }

    /// Classify one score vector.
    pub fn classify(&self, scores: &[f32]) -> Result<Classification, ItemError> {
        if let Some(labels) = &self.labels
            && labels.len() != scores.len()
        {
            return Err(ItemError::invalid(format!(
                "{} labels are configured but tensor `{}` has {} classes",
                labels.len(),
                self.input,
                scores.len()
            )));
        }
        let ranked = rank(scores, self.softmax, self.top_k)
            .map_err(|e| ItemError::invalid(format!("tensor `{}`: {e}", self.input)))?;
        let label = |i: usize| match &self.labels {
            Some(labels) => labels[i].clone(),
            None => i.to_string(),
        };
        let top: Vec<Class> = ranked
            .into_iter()
            .map(|(index, score)| Class {
                label: label(index),
                index,
                score,
            })
            .collect();
        let best = top[0].clone();
        Ok(Classification {
            label: best.label,
            index: best.index,
            score: best.score,
            top,
        })
    }
}

impl Postprocessor for ClassifyPostprocess {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Self::from_config(config)
    }

    fn postprocess(&mut self, output: InferenceOutput) -> Result<Document, ItemError> {
        let tensor = output.tensor(&self.input)?;
        let shape = &tensor.shape;
        let vector = !shape.is_empty() && shape[..shape.len() - 1].iter().all(|&d| d == 1);
        if !vector {
            return Err(ItemError::invalid(format!(
                "tensor `{}` has shape {shape:?}, expected [K] or [1, K]",
                self.input
            )));
        }
        let scores = tensor.to_f32()?;
        Document::json(&self.classify(&scores)?)
    }
}

sluice_guest::export_postprocessor!(ClassifyPostprocess);
// The options `sluice plugin inspect` lists (a unit test checks them against `Config`).
sluice_guest::options!("../options.json");

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
