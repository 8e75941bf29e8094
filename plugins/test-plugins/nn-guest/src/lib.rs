//! Test fixture: a preprocessor that calls `wasi:nn` itself. Each item's
//! bytes are little-endian `f32` values forming one model input; the plugin
//! loads the configured model by name (or, with `model_file`, from the bytes
//! of a file in a granted directory), computes, and returns the model's
//! outputs as its tensors. The host uses it to prove that guest `compute`
//! calls go through the batch scheduler.
//!
//! With `forward = true` it returns its input (as tensor `input`, shape
//! `[1, n]`) instead of the outputs, once computed: a pipeline of the same
//! model can follow it.
//!
//! An item whose bytes are the text `dims:<d0>,<d1>,...` is hostile: it
//! calls `compute` with those dimensions (any `u32`) on an FP32 tensor of no
//! bytes, and returns the error the host gives it as an internal item error
//! (`compute: <code>: <data>`).

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
    /// Return the input rather than the model's outputs.
    #[serde(default)]
    forward: bool,
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
        let hostile = std::str::from_utf8(&input.data)
            .ok()
            .and_then(|text| text.trim().strip_prefix("dims:"))
            .map(|dims| {
                dims.split(',')
                    .map(|d| d.trim().parse::<u32>())
                    .collect::<Result<Vec<u32>, _>>()
                    .map_err(|e| ItemError::invalid(format!("dims:<u32>,...: {e}")))
            })
            .transpose()?;
        if input.data.is_empty() || (hostile.is_none() && !input.data.len().is_multiple_of(4)) {
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
        let (dims, data) = match &hostile {
            Some(dims) => (dims.clone(), Vec::new()),
            None => (vec![1, (input.data.len() / 4) as u32], input.data.clone()),
        };
        let tensor = tensor::Tensor::new(&dims, tensor::TensorType::Fp32, &data);
        let outputs = context
            .compute(vec![(self.config.input.clone(), tensor)])
            .map_err(|e| nn_error("compute", e))?;
        if self.config.forward {
            return Ok(vec![Tensor {
                name: self.config.input.clone(),
                dtype: sluice_guest::Dtype::Fp32,
                shape: dims,
                data,
            }]);
        }
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
