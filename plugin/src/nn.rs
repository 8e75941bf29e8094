//! `wasi:nn` for guests, served by the host's schedulers.
//!
//! A guest that calls `load-by-name` gets a graph backed by the scheduler of
//! that model, so its `compute` calls share batches with the host pipeline
//! and with other guests: the scheduler stays the only place inference
//! happens. A guest tensor may carry several items on axis 0; they are split
//! into items, queued, and stacked again for the reply.
//!
//! The host side of the interface is Sluice's own (the `wasi:nn` world of
//! `wit/`, bound in `bindings.rs`) rather than wasmtime-wasi-nn's, because
//! a failed call must tell the guest why: wasmtime-wasi-nn hands guests only
//! "Failed while accessing backend" and logs each failure at `ERROR` with
//! its backtrace. Here the `error` resource's `data` is the cause (the
//! tensor, its shape, the bound it broke) with a fitting `error-code`, and
//! the host logs one line per failure at `WARN`, rate-limited per instance
//! like plugin output (`stdio.rs`).
//!
//! Host work done on a guest's behalf is not covered by the guest's epoch
//! deadline or memory cap, so it is bounded here:
//! * a tensor's shape is checked with checked arithmetic
//!   ([`Tensor::check`], at most [`sluice_types::MAX_TENSOR_BYTES`]) before
//!   anything is computed from it;
//! * the tensors an instance holds on the host at once (made, or returned
//!   by `compute`) are at most its memory cap (`memory_mb`) in bytes: a
//!   guest making more traps, like one growing its memory past the cap;
//! * a guest batch may hold at most [`MAX_GUEST_ITEMS`] items, and each item
//!   waits at most the model's request timeout in the queue;
//! * loading model bytes from a guest (`load`) is refused unless the
//!   configuration sets a size cap for it (`runtime.guest_model_max_bytes`):
//!   models are the operator's choice.

use super::NnContextFactory;
use super::bindings::pre::wasi::nn::{errors, graph, inference, tensor};
use super::sandbox::PluginState;
use super::stdio::LogBudget;
use errors::ErrorCode;
use sluice_infer::InputShapes;
use sluice_infer::schedule::{BatchConfig, ExecutionMode, Scheduler};
use sluice_types::{DType, ItemError, Tensor, stack_items};
use std::collections::BTreeMap;
use std::sync::Arc;
use tensor::TensorType;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// The most items one guest `compute` may submit.
pub const MAX_GUEST_ITEMS: usize = 256;

/// A factory giving every new plugin instance the host's models by name,
/// and, if `guest_model_max_bytes` is above 0, models loaded from guest bytes.
pub fn scheduler_nn(
    schedulers: &BTreeMap<String, Scheduler>,
    guest_model_max_bytes: usize,
) -> NnContextFactory {
    let models = Arc::new(Models {
        named: schedulers.clone(),
        guest_model_max_bytes,
    });
    Arc::new(move || NnContext::new(models.clone()))
}

/// The models guests of one host reach.
struct Models {
    /// By name, for `load-by-name`.
    named: BTreeMap<String, Scheduler>,
    /// The largest model `load` takes from guest bytes; 0 refuses them.
    guest_model_max_bytes: usize,
}

/// The `wasi:nn` state of one plugin instance.
pub struct NnContext {
    models: Arc<Models>,
    /// Bytes of the tensors the instance holds on the host now.
    held_bytes: usize,
    /// The most it may hold (its memory cap).
    max_held_bytes: usize,
    log: LogBudget,
}

impl NnContext {
    fn new(models: Arc<Models>) -> NnContext {
        NnContext {
            models,
            held_bytes: 0,
            max_held_bytes: usize::MAX,
            log: LogBudget::default(),
        }
    }

    /// A context that reaches no model.
    pub(crate) fn without_models() -> NnContext {
        NnContext::new(Arc::new(Models {
            named: BTreeMap::new(),
            guest_model_max_bytes: 0,
        }))
    }

    /// Hold the instance's tensors to `bytes` (its memory cap).
    pub(crate) fn limit_held_bytes(&mut self, bytes: usize) {
        self.max_held_bytes = bytes;
    }
}

/// A guest's tensor, held by the host.
pub struct NnTensor {
    dimensions: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

/// A graph: the scheduler of a model.
pub struct NnGraph(Scheduler);

/// An execution context of a graph.
pub struct NnExecution(Scheduler);

/// A failed call, as the guest sees it: a code and the cause.
pub struct NnError {
    code: ErrorCode,
    data: String,
}

/// An error code as the WIT names it.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "invalid-argument",
        ErrorCode::InvalidEncoding => "invalid-encoding",
        ErrorCode::Timeout => "timeout",
        ErrorCode::RuntimeError => "runtime-error",
        ErrorCode::UnsupportedOperation => "unsupported-operation",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Security => "security",
        ErrorCode::Unknown => "unknown",
    }
}

/// Why a call failed: the error resource it becomes.
struct Failure(ErrorCode, String);

fn invalid(cause: String) -> Failure {
    Failure(ErrorCode::InvalidArgument, cause)
}

/// What the generated host traits are implemented on: one instance's table
/// and `wasi:nn` state.
pub(crate) struct NnView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) nn: &'a mut NnContext,
    pub(crate) plugin: &'a str,
}

struct HasNn;

impl HasData for HasNn {
    type Data<'a> = NnView<'a>;
}

/// Serve the `wasi:nn` interfaces to the plugins of `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    tensor::add_to_linker::<_, HasNn>(linker, PluginState::nn_view)?;
    graph::add_to_linker::<_, HasNn>(linker, PluginState::nn_view)?;
    inference::add_to_linker::<_, HasNn>(linker, PluginState::nn_view)?;
    errors::add_to_linker::<_, HasNn>(linker, PluginState::nn_view)
}

type Fallible<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    /// `result`, or its failure as an error resource for the guest, logged
    /// in one line (rate-limited) naming the plugin, the call and the cause.
    fn answer<T>(&mut self, call: &str, result: Result<T, Failure>) -> Fallible<T> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(Failure(code, data)) => {
                let plugin = self.plugin;
                let line = format!("wasi:nn {call} failed ({}): {data}", code_name(code));
                match self.nn.log.admit(line.len()) {
                    Some(0) => tracing::warn!(plugin, "{line}"),
                    Some(dropped) => tracing::warn!(plugin, dropped, "{line}"),
                    None => {}
                }
                Ok(Err(self.table.push(NnError { code, data })?))
            }
        }
    }

    /// Hold `tensor` for the guest, within the instance's bound.
    fn hold(&mut self, tensor: NnTensor) -> wasmtime::Result<Resource<NnTensor>> {
        let held = self
            .nn
            .held_bytes
            .checked_add(tensor.data.len())
            .filter(|&held| held <= self.nn.max_held_bytes)
            .ok_or_else(|| {
                wasmtime::format_err!(
                    "wasi:nn tensors would hold more than the instance's memory cap of {} bytes on the host",
                    self.nn.max_held_bytes
                )
            })?;
        self.nn.held_bytes = held;
        Ok(self.table.push(tensor)?)
    }

    /// Take back tensor `handle` from the guest.
    fn release(&mut self, handle: Resource<NnTensor>) -> wasmtime::Result<NnTensor> {
        let tensor = self.table.delete(handle)?;
        self.nn.held_bytes = self.nn.held_bytes.saturating_sub(tensor.data.len());
        Ok(tensor)
    }

    fn load_bytes(
        &self,
        builders: &[Vec<u8>],
        encoding: graph::GraphEncoding,
    ) -> Result<Scheduler, Failure> {
        let max_bytes = self.nn.models.guest_model_max_bytes;
        if max_bytes == 0 {
            return Err(Failure(
                ErrorCode::Security,
                "loading model bytes from a plugin is not allowed; use `load-by-name` with a model from the host \
                 configuration, or set runtime.guest_model_max_bytes"
                    .into(),
            ));
        }
        if encoding != graph::GraphEncoding::Onnx {
            return Err(Failure(
                ErrorCode::InvalidEncoding,
                format!("only ONNX models can be loaded, not {encoding:?}"),
            ));
        }
        let [bytes] = builders else {
            return Err(invalid(format!(
                "an ONNX model is one builder, got {}",
                builders.len()
            )));
        };
        if bytes.len() > max_bytes {
            return Err(Failure(
                ErrorCode::TooLarge,
                format!(
                    "the model is {} bytes, over runtime.guest_model_max_bytes = {max_bytes}",
                    bytes.len()
                ),
            ));
        }
        let model = sluice_infer::onnx_engine()
            .load("guest-model", bytes, &InputShapes::new())
            .map_err(|e| Failure(ErrorCode::InvalidEncoding, e.to_string()))?;
        // Such a model runs stacked in small batches without the start-up
        // measurement, which would cost more than a guest's call is worth.
        let config = BatchConfig {
            max_batch_size: 8,
            execution: ExecutionMode::Stacked,
            threads: 1,
            ..BatchConfig::default()
        };
        Scheduler::start(model, config).map_err(|e| Failure(ErrorCode::RuntimeError, e.to_string()))
    }
}

impl graph::Host for NnView<'_> {
    fn load(
        &mut self,
        builders: Vec<graph::GraphBuilder>,
        encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> Fallible<Resource<NnGraph>> {
        let loaded = self.load_bytes(&builders, encoding);
        match self.answer("load", loaded)? {
            Ok(scheduler) => Ok(Ok(self.table.push(NnGraph(scheduler))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn load_by_name(&mut self, name: String) -> Fallible<Resource<NnGraph>> {
        let found = self.nn.models.named.get(&name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.nn.models.named.keys().map(String::as_str).collect();
            Failure(
                ErrorCode::NotFound,
                format!("no model `{name}` (the host has: {})", known.join(", ")),
            )
        });
        match self.answer("load-by-name", found)? {
            Ok(scheduler) => Ok(Ok(self.table.push(NnGraph(scheduler))?)),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        graph: Resource<NnGraph>,
    ) -> Fallible<Resource<NnExecution>> {
        let scheduler = self.table.get(&graph)?.0.clone();
        Ok(Ok(self.table.push(NnExecution(scheduler))?))
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    fn compute(
        &mut self,
        context: Resource<NnExecution>,
        inputs: Vec<(String, Resource<NnTensor>)>,
    ) -> Fallible<Vec<(String, Resource<NnTensor>)>> {
        let scheduler = self.table.get(&context)?.0.clone();
        let mut named = Vec::with_capacity(inputs.len());
        for (name, handle) in inputs {
            named.push((name, self.release(handle)?));
        }
        let computed = compute(&scheduler, named);
        let outputs = match self.answer("compute", computed)? {
            Ok(outputs) => outputs,
            Err(error) => return Ok(Err(error)),
        };
        let mut handles = Vec::with_capacity(outputs.len());
        for output in outputs {
            let name = output.name.clone();
            handles.push((name, self.hold(to_nn(output))?));
        }
        Ok(Ok(handles))
    }

    fn drop(&mut self, context: Resource<NnExecution>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<NnTensor>> {
        // Its shape is checked where it is used (`compute`), where a
        // mismatch can be answered with an error rather than a trap.
        self.hold(NnTensor {
            dimensions,
            ty,
            data,
        })
    }

    fn dimensions(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&tensor)?.ty)
    }

    fn data(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    fn drop(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<()> {
        self.release(tensor).map(|_| ())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.data.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

/// Run the guest's `inputs` (by the model's input names, each with the same
/// items on axis 0) through `scheduler`: split into items, queued, and the
/// replies stacked again.
fn compute(scheduler: &Scheduler, inputs: Vec<(String, NnTensor)>) -> Result<Vec<Tensor>, Failure> {
    let model = scheduler.model();
    let specs = model.inputs();
    let mut by_input: Vec<Option<Tensor>> = specs.iter().map(|_| None).collect();
    for (name, tensor) in inputs {
        let ix = specs.iter().position(|s| s.name == name).ok_or_else(|| {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            invalid(format!(
                "model `{}` has no input `{name}` (its inputs: {})",
                model.name(),
                known.join(", ")
            ))
        })?;
        if by_input[ix].is_some() {
            return Err(invalid(format!("input `{name}` is given twice")));
        }
        by_input[ix] = Some(from_nn(name, tensor)?);
    }
    let inputs: Vec<Tensor> = by_input
        .into_iter()
        .zip(specs)
        .map(|(t, spec)| t.ok_or_else(|| invalid(format!("input `{}` was not given", spec.name))))
        .collect::<Result<_, _>>()?;
    let n = inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(0);
    if n == 0 || n > MAX_GUEST_ITEMS || inputs.iter().any(|t| t.shape.first() != Some(&n)) {
        let shapes: Vec<String> = inputs
            .iter()
            .map(|t| format!("`{}` {:?}", t.name, t.shape))
            .collect();
        return Err(invalid(format!(
            "inputs must share a batch axis 0 of 1 to {MAX_GUEST_ITEMS} items, got {}",
            shapes.join(", ")
        )));
    }
    let items: Vec<Vec<Tensor>> = (0..n)
        .map(|i| inputs.iter().map(|t| item_slice(t, i, n)).collect())
        .collect();
    let replies = scheduler
        .infer_many(items)
        .into_iter()
        .collect::<Result<Vec<_>, ItemError>>()
        .map_err(|e| {
            let code = if e.is_transient() {
                ErrorCode::Timeout
            } else {
                ErrorCode::RuntimeError
            };
            Failure(code, e.to_string())
        })?;
    Ok(stack_items(&replies))
}

/// Item `i` of `n` along axis 0, with a batch axis of 1. `t` passed
/// [`Tensor::check`] with `n` on axis 0, so its data splits evenly.
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

/// A guest's tensor as the host's, its shape checked with checked
/// arithmetic against its data and [`sluice_types::MAX_TENSOR_BYTES`].
fn from_nn(name: String, t: NnTensor) -> Result<Tensor, Failure> {
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
        // `u32` always fits a `usize` on the targets Sluice builds for
        // (32- and 64-bit); saturate rather than wrap if one did not.
        shape: t
            .dimensions
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect(),
        data: t.data,
    };
    match tensor.check() {
        Ok(()) => Ok(tensor),
        Err(e) => Err(invalid(format!("tensor `{}`: {e}", tensor.name))),
    }
}

fn to_nn(t: Tensor) -> NnTensor {
    let ty = match t.dtype {
        DType::F16 => TensorType::Fp16,
        DType::F32 => TensorType::Fp32,
        DType::F64 => TensorType::Fp64,
        DType::BF16 => TensorType::Bf16,
        DType::U8 => TensorType::U8,
        DType::I32 => TensorType::I32,
        DType::I64 => TensorType::I64,
    };
    NnTensor {
        // A model's output holds its data, so its dimensions are far below
        // `u32::MAX` (unless another is 0); saturate rather than wrap.
        dimensions: t
            .shape
            .iter()
            .map(|&d| u32::try_from(d).unwrap_or(u32::MAX))
            .collect(),
        ty,
        data: t.data,
    }
}
