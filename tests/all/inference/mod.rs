//! Inference end to end with the real plugins and real models: accuracy of
//! the digits and anomaly pipelines (accuracy), batching through the
//! scheduler, also for guests calling `wasi:nn`, and the runtime's threads
//! (scheduling), and each way a model or a tensor can be bad (failures).
//!
//! The helpers they share, also used by `timeouts`, are here.

mod accuracy;
mod failures;
mod scheduling;

use crate::common::*;
use sluice_agent::config::Config;
use sluice_agent::infer::{InputShapes, onnx_engine};
use sluice_agent::runtime::Runtime;
use sluice_agent::schedule::{BatchConfig, ExecutionMode};
use sluice_agent::types::{ItemError, Tensor};

fn expected(model: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo_root().join("models").join(model).join("expected.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Start an example configuration with its model's batching replaced.
fn start_example(example: &str, batching: BatchConfig) -> Runtime {
    let path = repo_root()
        .join("examples")
        .join(example)
        .join("sluice.toml");
    let mut config = Config::load(&path).unwrap();
    config.runtime.cache_dir = Some(shared_cache_dir());
    for model in config.models.values_mut() {
        model.batching = batching.clone();
    }
    Runtime::start(config).unwrap()
}

/// Batching with a pinned execution (one stacked tensor per batch): tests
/// must not depend on what a measurement on a busy machine chose.
pub(crate) fn batching(max_batch_size: usize) -> BatchConfig {
    BatchConfig {
        max_batch_size,
        execution: ExecutionMode::Stacked,
        ..BatchConfig::default()
    }
}

/// Batching whose execution is measured (and remembered).
fn measured(max_batch_size: usize) -> BatchConfig {
    BatchConfig {
        execution: ExecutionMode::Auto,
        ..batching(max_batch_size)
    }
}

fn document(result: &Result<sluice_agent::types::Document, ItemError>) -> serde_json::Value {
    serde_json::from_slice(&result.as_ref().unwrap_or_else(|e| panic!("{e}")).body).unwrap()
}

pub(crate) fn digits_model() -> std::sync::Arc<dyn sluice_agent::infer::Model> {
    let path = repo_root().join("models/digits/digits_mlp.onnx");
    onnx_engine()
        .load("digits", &std::fs::read(path).unwrap(), &InputShapes::new())
        .unwrap()
}

/// One digit as the model's input tensor.
pub(crate) fn digit_tensor(file: &str) -> Tensor {
    let png = image::open(repo_root().join("models/digits/heldout").join(file))
        .unwrap()
        .to_luma8();
    let values: Vec<f32> = png.pixels().map(|p| p.0[0] as f32 / 240.0).collect();
    Tensor::from_f32("input", vec![1, 64], &values)
}
