//! `[models.NAME]` and `[pipelines.NAME]`: the models the host serves
//! and the pipelines that join them to plugins.

use serde::Deserialize;
use std::path::PathBuf;

/// One ONNX model served by the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model file.
    pub path: PathBuf,
    /// The inference engine that runs it: one of [`crate::infer::ENGINES`],
    /// or `auto` (the fastest of them that agrees with tract, measured at
    /// first start and remembered; see `sluice model inspect`); default
    /// `tract`.
    #[serde(default = "default_engine")]
    pub engine: String,
    /// Expected SHA-256 of the file, hex; a mismatch refuses the model.
    pub sha256: Option<String>,
    /// Dimensions after the batch axis for inputs the model leaves open,
    /// e.g. `input_shapes.x = [3, 48, 192]`.
    #[serde(default)]
    pub input_shapes: crate::infer::InputShapes,
    /// How requests for this model are batched.
    #[serde(default)]
    pub batching: crate::schedule::BatchConfig,
    /// Its reference profile for drift detection (`sluice model profile`);
    /// default `<path>.profile.json`. Without one, no drift is watched.
    pub profile: Option<PathBuf>,
}

impl ModelConfig {
    /// Where its drift profile is: `profile`, or beside the model file.
    pub fn profile_path(&self) -> PathBuf {
        self.profile
            .clone()
            .unwrap_or_else(|| crate::drift::default_profile_path(&self.path))
    }
}

fn default_engine() -> String {
    crate::infer::DEFAULT_ENGINE.to_owned()
}

/// A pipeline: preprocess plugin -> model -> postprocess plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The preprocessing plugin, by its name under `[plugins]`.
    pub preprocess: String,
    /// The model, by its name under `[models]`.
    pub model: String,
    /// The postprocessing plugin, by its name under `[plugins]`.
    pub postprocess: String,
    /// A real input run through the whole pipeline at start-up: if it fails
    /// (a preprocessor's tensor named or shaped unlike the model's input, a
    /// postprocessor reading an output the model does not have), the
    /// pipeline does not start and the error says why, before any real
    /// input is accepted.
    #[serde(default)]
    pub sample: Option<PathBuf>,
}
