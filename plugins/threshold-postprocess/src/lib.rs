//! # threshold-postprocess
//!
//! A Sluice postprocessor for anomaly detectors and other single-score
//! models: reads the first element of one output tensor and compares it with
//! a threshold:
//!
//! ```json
//! {"score": 0.82, "threshold": 0.5, "label": "anomaly", "alert": true}
//! ```
//!
//! `alert` is `score > threshold`; `label` is `above` when alerting, else
//! `below`. An empty tensor or a NaN score is an invalid input.
//!
//! See `README.md` for the configuration keys.

use serde::{Deserialize, Serialize};
use sluice_guest::{Document, InferenceOutput, ItemError, Postprocessor};

/// The plugin's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the model output holding the score.
    #[serde(default = "default_input")]
    pub input: String,
    /// Scores strictly above this alert.
    pub threshold: f32,
    /// Label of scores above the threshold.
    #[serde(default = "default_above")]
    pub above: String,
    /// Label of scores at or below the threshold.
    #[serde(default = "default_below")]
    pub below: String,
}

fn default_input() -> String {
    "score".into()
}
fn default_above() -> String {
    "anomaly".into()
}
fn default_below() -> String {
    "normal".into()
}

/// The result document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict<'a> {
    pub score: f32,
    pub threshold: f32,
    pub label: &'a str,
    pub alert: bool,
}

#[derive(Debug)]
pub struct ThresholdPostprocess {
    config: Config,
}

impl ThresholdPostprocess {
    pub fn from_config(config: Config) -> Result<Self, String> {
        if config.input.is_empty() {
            return Err("`input` must not be empty".into());
        }
        if !config.threshold.is_finite() {
            return Err(format!(
                "`threshold` must be a finite number (got {})",
                config.threshold
            ));
        }
        Ok(Self { config })
    }

    /// Judge one score.
    pub fn judge(&self, score: f32) -> Result<Verdict<'_>, ItemError> {
        if score.is_nan() {
            return Err(ItemError::invalid(format!(
                "tensor `{}`: the score is NaN",
                self.config.input
            )));
        }
        let alert = score > self.config.threshold;
        let label = if alert {
            &self.config.above
        } else {
            &self.config.below
        };
        Ok(Verdict {
            score,
            threshold: self.config.threshold,
            label,
            alert,
        })
    }
}

impl Postprocessor for ThresholdPostprocess {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Self::from_config(config)
    }

    fn postprocess(&mut self, output: InferenceOutput) -> Result<Document, ItemError> {
        let tensor = output.tensor(&self.config.input)?;
        let values = tensor.to_f32()?;
        let Some(&score) = values.first() else {
            return Err(ItemError::invalid(format!(
                "tensor `{}` (shape {:?}) is empty",
                self.config.input, tensor.shape
            )));
        };
        Document::json(&self.judge(score)?)
    }
}

sluice_guest::export_postprocessor!(ThresholdPostprocess);
// The options `sluice plugin inspect` lists (a unit test checks them against `Config`).
sluice_guest::options!("../options.json");

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    /// `options.json` names exactly the keys `Config` accepts.
    #[test]
    fn the_options_file_documents_every_key() {
        sluice_guest::options::check::<Config>(include_str!("../options.json")).unwrap();
    }

    fn plugin(json: &str) -> Result<ThresholdPostprocess, String> {
        ThresholdPostprocess::from_config(serde_json::from_str(json).map_err(|e| e.to_string())?)
    }

    #[test]
    fn alerts_strictly_above_the_threshold() {
        let p = plugin(r#"{"threshold": 0.5}"#).unwrap();
        let v = p.judge(0.75).unwrap();
        assert_eq!((v.label, v.alert), ("anomaly", true));
        let v = p.judge(0.5).unwrap();
        assert_eq!((v.label, v.alert), ("normal", false));
        assert_eq!(
            serde_json::to_string(&p.judge(0.25).unwrap()).unwrap(),
            r#"{"score":0.25,"threshold":0.5,"label":"normal","alert":false}"#
        );
    }

    #[test]
    fn custom_labels_and_input() {
        let p = plugin(r#"{"threshold": 3, "above": "hot", "below": "ok", "input": "y"}"#).unwrap();
        assert_eq!(p.judge(4.0).unwrap().label, "hot");
        assert_eq!(p.judge(-1.0).unwrap().label, "ok");
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(plugin("{}").unwrap_err().contains("threshold"));
        assert!(
            plugin(r#"{"threshold": 1, "abvoe": "x"}"#)
                .unwrap_err()
                .contains("abvoe")
        );
        assert!(plugin(r#"{"threshold": 1, "input": ""}"#).is_err());
    }

    #[test]
    fn nan_is_invalid_input() {
        let p = plugin(r#"{"threshold": 0.5}"#).unwrap();
        assert!(matches!(p.judge(f32::NAN), Err(ItemError::InvalidInput(_))));
    }
}
