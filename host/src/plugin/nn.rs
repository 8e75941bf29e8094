//! `wasi:nn` for guests, served by the host's schedulers.
//!
//! A guest that calls `load-by-name` gets a graph backed by the scheduler of
//! that model, so its `compute` calls share batches with the host pipeline
//! and with other guests: the scheduler stays the only place inference
//! happens. A guest tensor may carry several items on axis 0; they are split
//! into items, queued, and stacked again for the reply.
//!
//! Host work done on a guest's behalf is not covered by the guest's epoch
//! deadline or memory cap, so it is bounded here: a guest batch may hold at
//! most [`MAX_GUEST_ITEMS`] items, and each item waits at most the model's
//! request timeout in the queue. Loading model bytes from a guest (`load`)
//! is refused unless the configuration sets a size cap for it
//! (`runtime.guest_model_max_bytes`): models are the operator's choice.

use super::NnContextFactory;
use crate::infer::InputShapes;
use crate::schedule::{BatchConfig, ExecutionMode, Scheduler};
use crate::types::{DType, ItemError, Tensor, stack_items};
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendFromDir, BackendGraph, BackendInner, Id,
    NamedTensor,
};
use wasmtime_wasi_nn::wit::{ExecutionTarget, GraphEncoding, TensorType, WasiNnCtx};
use wasmtime_wasi_nn::{ExecutionContext, Graph, GraphRegistry};

/// The most items one guest `compute` may submit.
pub const MAX_GUEST_ITEMS: usize = 256;

/// A factory giving every new plugin instance the host's models by name,
/// and, if `guest_model_max_bytes` is above 0, models loaded from guest bytes.
pub fn scheduler_nn(
    schedulers: &std::collections::BTreeMap<String, Scheduler>,
    guest_model_max_bytes: usize,
) -> NnContextFactory {
    let graphs = Arc::new(schedulers.clone());
    Arc::new(move || {
        let registry = NamedGraphs(
            graphs
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        Graph::from(Box::new(SchedulerGraph(s.clone())) as Box<dyn BackendGraph>),
                    )
                })
                .collect(),
        );
        WasiNnCtx::new(
            [wasmtime_wasi_nn::Backend::from(GuestModels {
                max_bytes: guest_model_max_bytes,
            })],
            registry.into(),
        )
    })
}

/// The models a guest can `load-by-name`.
struct NamedGraphs(HashMap<String, Graph>);

impl GraphRegistry for NamedGraphs {
    fn get(&self, name: &str) -> Option<&Graph> {
        self.0.get(name)
    }
    fn get_mut(&mut self, name: &str) -> Option<&mut Graph> {
        self.0.get_mut(name)
    }
}

/// Serves `load` (model bytes from the guest): refused when `max_bytes` is
/// 0, else loaded with tract behind a scheduler of its own. Such a model
/// runs stacked in small batches without the start-up measurement, which
/// would cost more than a guest's call is worth.
struct GuestModels {
    max_bytes: usize,
}

impl BackendInner for GuestModels {
    fn encoding(&self) -> GraphEncoding {
        GraphEncoding::Onnx
    }

    fn load(
        &mut self,
        builders: &[&[u8]],
        _target: ExecutionTarget,
    ) -> Result<Graph, BackendError> {
        if self.max_bytes == 0 {
            return Err(access(
                "loading model bytes from a plugin is not allowed; use `load-by-name` with a model from the host \
                 configuration, or set runtime.guest_model_max_bytes"
                    .into(),
            ));
        }
        let [bytes] = builders else {
            return Err(BackendError::InvalidNumberOfBuilders(1, builders.len()));
        };
        if bytes.len() > self.max_bytes {
            return Err(access(format!(
                "the model is {} bytes, over runtime.guest_model_max_bytes = {}",
                bytes.len(),
                self.max_bytes
            )));
        }
        let model = crate::infer::onnx_engine()
            .load("guest-model", bytes, &InputShapes::new())
            .map_err(refused)?;
        let config = BatchConfig {
            max_batch_size: 8,
            execution: ExecutionMode::Stacked,
            threads: 1,
            ..BatchConfig::default()
        };
        let scheduler = Scheduler::start(model, config).map_err(refused)?;
        Ok(Graph::from(
            Box::new(SchedulerGraph(scheduler)) as Box<dyn BackendGraph>
        ))
    }

    fn as_dir_loadable(&mut self) -> Option<&mut dyn BackendFromDir> {
        None
    }
}

struct SchedulerGraph(Scheduler);

impl BackendGraph for SchedulerGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let context: Box<dyn BackendExecutionContext> = Box::new(SchedulerContext {
            scheduler: self.0.clone(),
            inputs: HashMap::new(),
            outputs: Vec::new(),
        });
        Ok(context.into())
    }
}

/// One guest execution context: inputs set so far, outputs of the last compute.
struct SchedulerContext {
    scheduler: Scheduler,
    inputs: HashMap<usize, Tensor>,
    outputs: Vec<Tensor>,
}

/// A backend error. wasmtime-wasi-nn shows guests only a generic message
/// for these, so the reason is logged here for the operator.
fn access(message: String) -> BackendError {
    tracing::warn!("wasi:nn call refused: {message}");
    BackendError::BackendAccess(wasmtime::format_err!("{message}"))
}

/// A backend error caused by `error`, which it keeps as its source.
fn refused(error: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    tracing::warn!("wasi:nn call refused: {error}");
    BackendError::BackendAccess(wasmtime::Error::new(error))
}

impl SchedulerContext {
    fn input_index(&self, id: &Id) -> Result<usize, BackendError> {
        let specs = self.scheduler.model().inputs();
        match id {
            Id::Index(ix) if (*ix as usize) < specs.len() => Ok(*ix as usize),
            Id::Name(name) => specs.iter().position(|s| &s.name == name).ok_or_else(|| {
                access(format!(
                    "model `{}` has no input `{name}`",
                    self.scheduler.model().name()
                ))
            }),
            Id::Index(ix) => Err(access(format!(
                "model `{}` has no input #{ix}",
                self.scheduler.model().name()
            ))),
        }
    }

    /// Split the guest's batch into items, queue them, stack the replies.
    fn run(&mut self) -> Result<(), BackendError> {
        let specs = self.scheduler.model().inputs();
        let inputs: Vec<&Tensor> = (0..specs.len())
            .map(|ix| {
                self.inputs
                    .get(&ix)
                    .ok_or_else(|| access(format!("input `{}` was not set", specs[ix].name)))
            })
            .collect::<Result<_, _>>()?;
        let n = inputs[0].shape.first().copied().unwrap_or(0);
        if n == 0 || n > MAX_GUEST_ITEMS || inputs.iter().any(|t| t.shape.first() != Some(&n)) {
            return Err(access(format!(
                "inputs must share a batch axis of 1 to {MAX_GUEST_ITEMS} items"
            )));
        }
        let items: Vec<Vec<Tensor>> = (0..n)
            .map(|i| inputs.iter().map(|t| item_slice(t, i, n)).collect())
            .collect();
        let replies = self.scheduler.infer_many(items);
        let replies: Vec<Vec<Tensor>> = replies
            .into_iter()
            .collect::<Result<_, ItemError>>()
            .map_err(refused)?;
        self.outputs = stack_items(&replies);
        Ok(())
    }
}

/// Item `i` of `n` along axis 0, with a batch axis of 1.
fn item_slice(t: &Tensor, i: usize, n: usize) -> Tensor {
    let len = t.data.len() / n;
    let mut shape = t.shape.clone();
    shape[0] = 1;
    Tensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
        data: t.data[i * len..(i + 1) * len].to_vec(),
    }
}

impl BackendExecutionContext for SchedulerContext {
    fn set_input(&mut self, id: Id, tensor: &wasmtime_wasi_nn::Tensor) -> Result<(), BackendError> {
        let ix = self.input_index(&id)?;
        let name = self.scheduler.model().inputs()[ix].name.clone();
        self.inputs.insert(ix, from_nn(name, tensor)?);
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<wasmtime_wasi_nn::Tensor, BackendError> {
        let found = match &id {
            Id::Index(ix) => self.outputs.get(*ix as usize),
            Id::Name(name) => self.outputs.iter().find(|t| &t.name == name),
        };
        found
            .map(to_nn)
            .ok_or_else(|| access(format!("no output {id:?}; call compute first")))
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        let Some(inputs) = inputs else {
            return self.run().map(|()| None);
        };
        self.inputs.clear();
        for NamedTensor { name, tensor } in &inputs {
            let ix = self.input_index(&Id::Name(name.clone()))?;
            self.inputs.insert(ix, from_nn(name.clone(), tensor)?);
        }
        self.run()?;
        Ok(Some(
            self.outputs
                .iter()
                .map(|t| NamedTensor {
                    name: t.name.clone(),
                    tensor: to_nn(t),
                })
                .collect(),
        ))
    }
}

fn from_nn(name: String, t: &wasmtime_wasi_nn::Tensor) -> Result<Tensor, BackendError> {
    let dtype = match t.ty {
        TensorType::Fp16 => DType::F16,
        TensorType::Fp32 => DType::F32,
        TensorType::Fp64 => DType::F64,
        TensorType::Bf16 => DType::BF16,
        TensorType::U8 => DType::U8,
        TensorType::I32 => DType::I32,
        TensorType::I64 => DType::I64,
    };
    let tensor = Tensor {
        name,
        dtype,
        shape: t.dimensions.iter().map(|&d| d as usize).collect(),
        data: t.data.clone(),
    };
    if !tensor.is_consistent() {
        return Err(access(format!(
            "tensor `{}`: {} bytes do not fill shape {:?}",
            tensor.name,
            tensor.data.len(),
            tensor.shape
        )));
    }
    Ok(tensor)
}

fn to_nn(t: &Tensor) -> wasmtime_wasi_nn::Tensor {
    let ty = match t.dtype {
        DType::F16 => TensorType::Fp16,
        DType::F32 => TensorType::Fp32,
        DType::F64 => TensorType::Fp64,
        DType::BF16 => TensorType::Bf16,
        DType::U8 => TensorType::U8,
        DType::I32 => TensorType::I32,
        DType::I64 => TensorType::I64,
    };
    wasmtime_wasi_nn::Tensor::new(
        t.shape.iter().map(|&d| d as u32).collect(),
        ty,
        t.data.clone(),
    )
}
