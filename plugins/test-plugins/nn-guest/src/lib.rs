//! Test fixture: a preprocessor that calls `wasi:nn` itself. Each item's
//! bytes are little-endian `f32` values forming one model input; the plugin
//! loads the configured model by name (or, with `model_file`, from the bytes
//! of a file in a granted directory), computes, and returns the model's
//! outputs as its tensors. The host uses it to prove that guest `compute`
//! calls go through the batch scheduler.

use sluice_guest::nn::{graph, tensor};
use sluice_guest::{ItemError, Preprocessor, RawInput, Tensor};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The host model to load by name.
    #[serde(default)]
    model: String,
    /// Instead: a model file (sandbox path) whose bytes are handed to `load`.
    model_file: Option<String>,
    /// The model's input name.
    input: String,
}

struct NnGuest {
    config: Config,
}

impl Preprocessor for NnGuest {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(NnGuest { config })
    }

    fn preprocess(&mut self, input: RawInput) -> Result<Vec<Tensor>, ItemError> {
        if input.data.is_empty() || !input.data.len().is_multiple_of(4) {
            return Err(ItemError::invalid("expected little-endian f32 values"));
        }
        let nn_error = |stage: &str, e: sluice_guest::nn::errors::Error| {
            ItemError::internal(format!("{stage}: {:?}: {}", e.code(), e.data()))
        };
        let graph = match &self.config.model_file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| ItemError::internal(format!("read {path}: {e}")))?;
                graph::load(
                    &[bytes],
                    graph::GraphEncoding::Onnx,
                    graph::ExecutionTarget::Cpu,
                )
                .map_err(|e| nn_error("load", e))?
            }
            None => {
                graph::load_by_name(&self.config.model).map_err(|e| nn_error("load-by-name", e))?
            }
        };
        let context = graph
            .init_execution_context()
            .map_err(|e| nn_error("init-execution-context", e))?;
        let dims = [1, (input.data.len() / 4) as u32];
        let tensor = tensor::Tensor::new(&dims, tensor::TensorType::Fp32, &input.data);
        let outputs = context
            .compute(vec![(self.config.input.clone(), tensor)])
            .map_err(|e| nn_error("compute", e))?;
        outputs
            .into_iter()
            .map(|(name, t)| {
                let dtype = match t.ty() {
                    tensor::TensorType::Fp32 => sluice_guest::Dtype::Fp32,
                    other => return Err(ItemError::unsupported(format!("output type {other:?}"))),
                };
                Ok(Tensor {
                    name,
                    dtype,
                    shape: t.dimensions(),
                    data: t.data(),
                })
            })
            .collect()
    }
}

sluice_guest::export_preprocessor!(NnGuest);
