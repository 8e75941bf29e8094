//! # {{name}}
//!
//! A Sluice postprocessor: one score tensor in, the best class out as JSON,
//! `{"index": 1, "score": 0.75}` (with `"label"` when labels are
//! configured). Replace the logic in `best` with your own; `README.md` says
//! how to build and test.

use serde::{Deserialize, Serialize};
use sluice_guest::{Document, Dtype, InferenceOutput, ItemError, Postprocessor};

/// The plugin's `[plugins.NAME.config]` table, from the host configuration
/// (it arrives as JSON). A misspelled key is refused at start-up, by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the model output holding the scores.
    #[serde(default = "default_input")]
    pub input: String,
    /// Class labels, in class order.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

fn default_input() -> String {
    "output".into()
}

/// The result document.
#[derive(Debug, PartialEq, Serialize)]
pub struct Best {
    pub index: usize,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// One instance. The host makes several (one per worker thread) and may
/// replace one at any time (after a trap): keep no state between items.
pub struct Plugin {
    config: Config,
}

/// The highest score and its index; ties go to the lower index.
pub fn best(scores: &[f32]) -> Option<(usize, f32)> {
    scores
        .iter()
        .copied()
        .enumerate()
        .fold(None, |best, (i, s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((i, s)),
        })
}

impl Postprocessor for Plugin {
    type Config = Config;

    /// Runs once per instance; an error refuses the plugin with this message.
    fn new(config: Config) -> Result<Self, String> {
        if config.labels.as_ref().is_some_and(Vec::is_empty) {
            return Err("`labels` is empty".into());
        }
        Ok(Plugin { config })
    }

    /// One item's model outputs. An `Err` fails this item alone.
    fn postprocess(&mut self, output: InferenceOutput) -> Result<Document, ItemError> {
        let name = &self.config.input;
        let tensor = output
            .tensors
            .iter()
            .find(|t| &t.name == name)
            .ok_or_else(|| ItemError::invalid(format!("no tensor named `{name}`")))?;
        if tensor.dtype != Dtype::Fp32 {
            return Err(ItemError::invalid(format!("tensor `{name}` is not fp32")));
        }
        // Shape [1, K] or [K]: the host keeps a batch axis of 1 per item.
        let scores = tensor.to_f32()?;
        let (index, score) =
            best(&scores).ok_or_else(|| ItemError::invalid(format!("tensor `{name}` is empty")))?;
        let label = match &self.config.labels {
            Some(labels) => Some(labels.get(index).cloned().ok_or_else(|| {
                ItemError::invalid(format!("class {index} has no label"))
            })?),
            None => None,
        };
        Document::json(&Best { index, score, label })
    }
}

sluice_guest::export_postprocessor!(Plugin);
// `options.json` describes `Config` for `sluice plugin inspect`; a test below
// fails when the two disagree. Change them together.
sluice_guest::options!("../options.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_file_documents_every_config_key() {
        sluice_guest::options::check::<Config>(include_str!("../options.json")).unwrap();
    }

    #[test]
    fn the_highest_score_wins_and_ties_go_to_the_lower_index() {
        assert_eq!(best(&[0.125, 0.75, 0.0625]), Some((1, 0.75)));
        assert_eq!(best(&[0.5, 0.5]), Some((0, 0.5)));
        assert_eq!(best(&[]), None);
    }
}
