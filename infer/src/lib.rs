//! # sluice-infer: native inference and the batch scheduler
//!
//! The only place Sluice runs a model. It imports only leaves
//! (`sluice-types`, `sluice-durable`); the agent and the plugin host (for
//! `wasi:nn`) call it.
//!
//! Native inference, behind three small traits so that the rest of Sluice
//! never knows which engine runs: a [`Backend`] loads a [`Model`], a model
//! builds a [`Plan`] per batch size, a plan runs a batch.
//!
//! Engines are chosen by name (`engine` in a model's configuration) through
//! [`engine`]; nothing else constructs one. tract ([`tract::TractBackend`]) is
//! always built: pure Rust, no native libraries, the same on ARM and x86.
//! onnxruntime ([`onnxruntime::OnnxRuntimeBackend`], cargo feature
//! `onnxruntime`) loads Microsoft's native engine from a shared library at
//! run time. `engine = "auto"` measures every engine of the build on the
//! model and keeps the fastest that agrees with tract
//! ([`crate::schedule::start_model`]). Another engine is one new file here
//! plus one line in [`engine`] and [`ENGINES`].
//!
//! Invariant: inference happens only in the scheduler ([`crate::schedule`]),
//! which owns the plans; these traits are its tools.

#![deny(missing_docs)]

#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod schedule;
pub mod tract;

/// The process's one pool of inference threads, one per core: every
/// scheduler spreads the chunks of a batch over it, and an engine's
/// intra-op parallelism (tract's multithreaded matrix products) runs on it
/// too, so no thread is ever spawned per batch and the process never holds
/// more inference threads than cores. Nothing that waits on a scheduler
/// ever runs on it, so a chunk never waits behind a caller.
pub(crate) fn pool() -> &'static std::sync::Arc<rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<std::sync::Arc<rayon::ThreadPool>> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        std::sync::Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(sluice_types::available_cores())
                .thread_name(|ix| format!("sluice-infer-{ix}"))
                .build()
                .expect("start the inference threads"),
        )
    })
}

/// The engine used when a model's configuration names none.
pub const DEFAULT_ENGINE: &str = "tract";

/// The engines of this build, by the name a configuration uses; the first
/// is the reference that `auto` checks the others against.
pub const ENGINES: &[&str] = &[
    "tract",
    #[cfg(feature = "onnxruntime")]
    "onnxruntime",
];

/// The engine setting that measures every engine of the build on the model
/// and keeps the fastest (see [`crate::schedule::start_model`]).
pub const AUTO: &str = "auto";

/// The engine called `name`.
pub fn engine(name: &str) -> Option<&'static dyn Backend> {
    match name {
        "tract" => Some(&tract::TractBackend),
        #[cfg(feature = "onnxruntime")]
        "onnxruntime" => Some(&onnxruntime::OnnxRuntimeBackend),
        _ => None,
    }
}

/// Where engines that load a native library find it
/// (`[runtime] onnxruntime_library`); process-wide, since a library loads
/// once. Builds without such an engine ignore it.
pub fn use_native_libraries(onnxruntime: Option<&Path>) {
    #[cfg(feature = "onnxruntime")]
    if let Some(path) = onnxruntime {
        onnxruntime::use_library(path);
    }
    #[cfg(not(feature = "onnxruntime"))]
    let _ = onnxruntime;
}

/// The operator types an ONNX model uses, sorted, each once: read from the
/// model's protobuf, whatever engine runs it.
pub(crate) fn operator_types(name: &str, bytes: &[u8]) -> Result<Vec<String>, ModelError> {
    use tract_onnx::prelude::Framework;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &*bytes)
        .map_err(|e| ModelError::Parse {
            model: name.into(),
            source: e.into(),
        })?;
    let mut ops: Vec<String> = proto
        .graph
        .iter()
        .flat_map(|graph| graph.node.iter().map(|n| n.op_type.clone()))
        .collect();
    ops.sort();
    ops.dedup();
    Ok(ops)
}

/// The engine for ONNX models that plugins load themselves through
/// `wasi:nn` (`graph-encoding::onnx`).
pub fn onnx_engine() -> &'static dyn Backend {
    engine(DEFAULT_ENGINE).expect("the default engine is always built")
}

use sha2::{Digest, Sha256};
use sluice_types::error::{BoxError, chain_text};
use sluice_types::{DType, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Loads models of one format.
pub trait Backend: Send + Sync {
    /// Parse and check a model; `name` is used in messages. `shapes` fixes
    /// input dimensions the model leaves open (besides the batch axis).
    fn load(
        &self,
        name: &str,
        bytes: &[u8],
        shapes: &InputShapes,
    ) -> Result<Arc<dyn Model>, ModelError>;

    /// The operator types a model uses, each with whether this engine
    /// implements it (`sluice model inspect`).
    fn operators(&self, name: &str, bytes: &[u8]) -> Result<Vec<(String, bool)>, ModelError>;
}

/// Per input name, the dimensions after the batch axis.
pub type InputShapes = std::collections::BTreeMap<String, Vec<usize>>;

/// A loaded model whose axis 0 is the batch axis.
pub trait Model: Send + Sync {
    /// The model's name in the configuration (used in messages).
    fn name(&self) -> &str;
    /// The engine that runs it, by the name a configuration uses.
    fn engine(&self) -> &'static str;
    /// The inputs, in the order [`Plan::run`] takes them.
    fn inputs(&self) -> &[TensorSpec];
    /// The outputs, in the order [`Plan::run`] returns them.
    fn outputs(&self) -> &[TensorSpec];
    /// The plan for batches of exactly `batch` items, built once and cached.
    fn plan(&self, batch: usize) -> Result<Arc<dyn Plan>, ModelError>;
    /// Drop cached plans for batches larger than `batch`: each plan holds
    /// its own optimized copy of the weights, so unused ones cost memory
    /// (hundreds of MB for a conv net). They are rebuilt if asked for again.
    fn release_plans_above(&self, batch: usize);
}

/// A ready-to-run computation for one batch size.
pub trait Plan: Send + Sync {
    /// Run on inputs in model input order, each with the plan's batch size on
    /// axis 0; outputs come in model output order. With `intra_op` the
    /// engine may spread one run's operators over the inference [`pool`]
    /// (the scheduler measures whether that pays, per model).
    fn run(&self, inputs: Vec<Tensor>, intra_op: bool) -> Result<Vec<Tensor>, ModelError>;
}

/// Name, element type and shape of a model input or output; `None` is a
/// dimension the model leaves open (axis 0, the batch, always is).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    /// The tensor's name in the model.
    pub name: String,
    /// Its element type.
    #[serde(serialize_with = "serialize_dtype")]
    pub dtype: DType,
    /// Its dimensions; `None` where open (always axis 0, the batch).
    pub shape: Vec<Option<usize>>,
}

fn serialize_dtype<S: serde::Serializer>(dtype: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{dtype:?}").to_lowercase())
}

impl TensorSpec {
    /// Check one item's tensor (leading batch axis of 1) against this spec.
    pub(crate) fn check_item(&self, tensor: &Tensor) -> Result<(), String> {
        // Names are part of the contract: a misspelled name is a mistake
        // the author wants to hear about, not a tensor fed by position.
        if tensor.name != self.name {
            return Err(format!(
                "got a tensor named `{}` where the model's input `{}` goes",
                tensor.name, self.name
            ));
        }
        if tensor.dtype != self.dtype {
            return Err(format!(
                "input `{}` must be {:?}, got {:?}",
                self.name, self.dtype, tensor.dtype
            ));
        }
        let fits = tensor.shape.len() == self.shape.len()
            && tensor.shape.first() == Some(&1)
            && tensor.shape[1..]
                .iter()
                .zip(&self.shape[1..])
                .all(|(d, s)| s.is_none_or(|s| s == *d));
        if !fits {
            return Err(format!(
                "input `{}` must have shape {} with a batch axis of 1, got {:?}",
                self.name,
                self.shape_text(),
                tensor.shape
            ));
        }
        tensor
            .check()
            .map_err(|e| format!("input `{}`: {e}", self.name))
    }

    /// The shape as text, `N` for open dimensions: `[N, 64]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or("N".into(), |d| d.to_string()))
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// Why a model could not be loaded, planned or run. Every variant names the
/// model; engine errors are kept as the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model file cannot be read.
    #[error("model `{model}`: cannot read {}: {source}", path.display())]
    Read {
        /// The model's name.
        model: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's SHA-256 is not the configured one.
    #[error("model `{model}`: SHA-256 mismatch: expected {expected}, file has {actual}")]
    Digest {
        /// The model's name.
        model: String,
        /// The configured digest, as written.
        expected: String,
        /// The file's digest, lower-case hex.
        actual: String,
    },
    /// No engine of that name in this build.
    #[error("model `{model}`: no engine `{engine}` in this build")]
    UnknownEngine {
        /// The model's name.
        model: String,
        /// The engine asked for.
        engine: String,
    },
    /// The bytes are not a model the engine can parse.
    #[error("model `{model}`: not a valid ONNX model: {}", chain_text(source.as_ref()))]
    Parse {
        /// The model's name.
        model: String,
        /// The engine's error.
        source: BoxError,
    },
    /// The model uses operators the engine does not implement.
    #[error("model `{model}`: unsupported operator(s) {}: {engine} does not implement them", ops.join(", "))]
    Unsupported {
        /// The model's name.
        model: String,
        /// The engine.
        engine: &'static str,
        /// The missing operator types, sorted.
        ops: Vec<String>,
    },
    /// An input's dimensions after the batch axis are not all known, and
    /// the configuration does not give them.
    #[error(
        "model `{model}`: input `{input}` has {}; set it with `input_shapes.{input} = [...]` (the dimensions after the batch)",
        match axis { Some(axis) => format!("an open dimension at axis {axis}"), None => "no known rank".to_owned() }
    )]
    OpenInput {
        /// The model's name.
        model: String,
        /// The input.
        input: String,
        /// The first open axis after the batch; `None` when not even the
        /// rank is known.
        axis: Option<usize>,
    },
    /// A model input or output has an element type Sluice does not carry.
    #[error("model `{model}`: tensor `{tensor}` has unsupported type {dtype}")]
    UnsupportedType {
        /// The model's name.
        model: String,
        /// The input or output.
        tensor: String,
        /// The engine's name of the type.
        dtype: String,
    },
    /// A model input or output is a scalar: it has no batch axis.
    #[error("model `{model}`: tensor `{tensor}` is a scalar; Sluice needs a batch axis 0")]
    Scalar {
        /// The model's name.
        model: String,
        /// The input or output.
        tensor: String,
    },
    /// The engine cannot build the plan for a batch size.
    #[error("model `{model}`: cannot plan batch size {batch}: {}", chain_text(source.as_ref()))]
    Plan {
        /// The model's name.
        model: String,
        /// The batch size.
        batch: usize,
        /// The engine's error.
        source: BoxError,
    },
    /// A plan failed to run.
    #[error("model `{model}`: {}", chain_text(source.as_ref()))]
    Run {
        /// The model's name.
        model: String,
        /// The engine's error.
        source: BoxError,
    },
    /// An output came back without the batch's size on axis 0.
    #[error("model `{model}`: output `{output}` has shape {shape:?}, expected batch axis {batch}")]
    BatchAxis {
        /// The model's name.
        model: String,
        /// The output.
        output: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The batch size it should have on axis 0.
        batch: usize,
    },
    /// Building or running a plan failed while warming up at start-up.
    #[error("model `{model}`: warm-up at batch {batch}: {}", source.detail())]
    WarmUp {
        /// The model's name.
        model: String,
        /// The batch size being warmed up.
        batch: usize,
        /// What failed.
        source: Box<ModelError>,
    },
}

impl ModelError {
    /// The name of the model concerned.
    pub fn model(&self) -> &str {
        match self {
            ModelError::Read { model, .. }
            | ModelError::Digest { model, .. }
            | ModelError::UnknownEngine { model, .. }
            | ModelError::Parse { model, .. }
            | ModelError::Unsupported { model, .. }
            | ModelError::OpenInput { model, .. }
            | ModelError::UnsupportedType { model, .. }
            | ModelError::Scalar { model, .. }
            | ModelError::Plan { model, .. }
            | ModelError::Run { model, .. }
            | ModelError::BatchAxis { model, .. }
            | ModelError::WarmUp { model, .. } => model,
        }
    }

    /// The message without its leading "model `NAME`: ", for messages
    /// that name the model already.
    pub(crate) fn detail(&self) -> String {
        let text = self.to_string();
        let prefix = format!("model `{}`: ", self.model());
        match text.strip_prefix(&prefix) {
            Some(rest) => rest.to_owned(),
            None => text,
        }
    }
}

/// Read a model file and check its SHA-256 when one is expected.
pub fn read_model_file(
    model: &str,
    path: &Path,
    expected_sha256: Option<&str>,
) -> Result<Vec<u8>, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        model: model.into(),
        path: path.to_owned(),
        source,
    })?;
    if let Some(expected) = expected_sha256 {
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            return Err(ModelError::Digest {
                model: model.into(),
                expected: expected.into(),
                actual,
            });
        }
    }
    Ok(bytes)
}
