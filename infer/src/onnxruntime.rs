//! The onnxruntime engine (cargo feature `onnxruntime`, off by default):
//! Microsoft's native ONNX engine, loaded at run time from a shared library
//! the device already has, so that the default build stays pure Rust and no
//! build ever downloads or links a native library.
//!
//! The library is `[runtime] onnxruntime_library`, else the path in
//! `ORT_DYLIB_PATH` (the `ort` crate's variable). The PyPI wheel ships one:
//! `pip install onnxruntime` puts it at
//! `site-packages/onnxruntime/capi/libonnxruntime.so.1.*`. Any onnxruntime
//! from 1.17 on works (the C API version this build asks for).
//!
//! onnxruntime takes any batch size with one session, so a model has no
//! plan per batch size: every plan shares the model's sessions. A session
//! runs one batch at a time (the `ort` API takes it mutably). Sessions
//! running on the calling thread only serve the scheduler's chunk lanes:
//! one is built at load, more on demand, one per lane running at once. One
//! session spreads operators over one thread per core (intra-op), built the
//! first time it is asked for (at start-up: measuring and warming up ask).
//! Those threads are onnxruntime's own, started once with the session and
//! asleep when idle (no spinning: measured slower in a pipeline, where the
//! plugins need the cores too); onnxruntime runs its operators on its own
//! pool and cannot borrow Sluice's. The sessions of a model share its
//! packed weights, and allocate activations per run instead of keeping an
//! arena each (MobileNetV2 in a pipeline: 18 % less memory, no slower).

use super::{Backend, InputShapes, Model, ModelError, Plan, TensorSpec};
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::Session;
use ort::session::builder::PrepackedWeights;
use ort::value::{DynTensor, DynTensorValueType, TensorElementType, ValueType};
use sluice_types::{DType, Tensor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The engine's name in configurations and messages.
pub const ENGINE: &str = "onnxruntime";

/// The variable naming the library when the configuration does not.
pub const LIBRARY_VARIABLE: &str = "ORT_DYLIB_PATH";

/// Loads ONNX models with onnxruntime.
#[derive(Debug, Default, Clone, Copy)]
pub struct OnnxRuntimeBackend;

/// The configured library, set before the first model loads.
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();

/// Use the library at `path` (from `[runtime] onnxruntime_library`). The
/// library loads once per process: the first path given wins.
pub fn use_library(path: &Path) {
    let _ = LIBRARY.set(path.to_owned());
}

/// The process's onnxruntime environment, made once: loading the library
/// and checking its version happen here, and a failure is kept (every model
/// asking for the engine gets the same message, nothing is retried). Until
/// a library is named, nothing is kept: naming one later still works.
fn environment() -> Result<&'static Environment, String> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    if let Some(made) = ENVIRONMENT.get() {
        return made.as_ref().map_err(Clone::clone);
    }
    let path = LIBRARY
        .get()
        .cloned()
        .or_else(|| {
            std::env::var_os(LIBRARY_VARIABLE)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .ok_or_else(|| {
            format!(
                "no onnxruntime library: set `[runtime] onnxruntime_library` or {LIBRARY_VARIABLE} \
                 (`pip install onnxruntime` ships it as onnxruntime/capi/libonnxruntime.so.1.*)"
            )
        })?;
    ENVIRONMENT
        .get_or_init(|| {
            let failed =
                |e: &dyn std::fmt::Display| format!("onnxruntime library {}: {e}", path.display());
            ort::init_from(&path)
                .map_err(|e| failed(&e))?
                .with_name("sluice")
                .build()
                .map_err(|e| failed(&e))
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Backend for OnnxRuntimeBackend {
    fn load(
        &self,
        name: &str,
        bytes: &[u8],
        shapes: &InputShapes,
    ) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(OrtModel::load(name, bytes, shapes)?))
    }

    fn operators(&self, name: &str, bytes: &[u8]) -> Result<Vec<(String, bool)>, ModelError> {
        // onnxruntime implements every standard operator of the opsets it
        // knows; whether this model loads is known only by loading it. The
        // library first: nothing of onnxruntime's may be touched before it
        // is loaded (the `ort` crate would look for one itself, and panic).
        environment().map_err(|e| parse_error(name, e))?;
        session(name, bytes, 1, &PrepackedWeights::new())?;
        Ok(super::operator_types(name, bytes)?
            .into_iter()
            .map(|op| (op, true))
            .collect())
    }
}

fn parse_error(model: &str, error: impl std::fmt::Display) -> ModelError {
    ModelError::Parse {
        model: model.into(),
        source: format!("{ENGINE}: {error}").into(),
    }
}

/// A session whose operators use `threads` threads (1: the caller's only).
/// `weights` is shared by the sessions of one model: onnxruntime packs the
/// weights of convolutions and matrix products once for all of them.
fn session(
    name: &str,
    bytes: &[u8],
    threads: usize,
    weights: &PrepackedWeights,
) -> Result<Session, ModelError> {
    let environment = environment().map_err(|e| parse_error(name, e))?;
    let built = || -> Result<Session, ort::Error> {
        Session::builder(environment)?
            .with_execution_providers([ort::ep::CPU::default()
                .with_arena_allocator(false)
                .build()])?
            .with_prepacked_weights(weights)?
            .with_intra_threads(threads)?
            .with_inter_threads(1)?
            // Idle intra-op threads sleep instead of spinning: a device
            // shares its cores with the pipeline threads and all else.
            .with_intra_op_spinning(false)?
            .commit_from_memory(bytes)
    };
    built().map_err(|e| parse_error(name, e))
}

struct OrtModel {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    sessions: Arc<Sessions>,
}

struct Sessions {
    model: String,
    /// The model file, kept to build sessions on demand.
    bytes: Vec<u8>,
    /// The packed weights all its sessions share.
    weights: PrepackedWeights,
    /// Idle sessions that run on the calling thread only: one is taken per
    /// run and given back after, and one is made when none is idle, so
    /// there are as many as chunks ever ran at once (at most one per
    /// inference thread, plus the scheduler's own).
    single: Mutex<Vec<Session>>,
    /// Spreads operators over one thread per core; built on first use.
    intra_op: OnceLock<Result<Mutex<Session>, String>>,
    /// The batch size the model's inputs fix on axis 0, if they do.
    fixed_batch: Option<usize>,
}

impl OrtModel {
    fn load(name: &str, bytes: &[u8], shapes: &InputShapes) -> Result<Self, ModelError> {
        // The library first (see `operators`).
        environment().map_err(|e| parse_error(name, e))?;
        let weights = PrepackedWeights::new();
        let single = session(name, bytes, 1, &weights)?;
        let mut fixed_batch = None;
        let inputs = single
            .inputs()
            .iter()
            .map(|input| {
                let (spec, batch) =
                    tensor_spec(name, input.name(), input.dtype(), shapes.get(input.name()))?;
                if let Some(axis) = spec.shape.iter().skip(1).position(Option::is_none) {
                    return Err(ModelError::OpenInput {
                        model: name.into(),
                        input: input.name().into(),
                        axis: Some(axis + 1),
                    });
                }
                fixed_batch = fixed_batch.or(batch);
                Ok(spec)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = single
            .outputs()
            .iter()
            .map(|output| {
                tensor_spec(name, output.name(), output.dtype(), None).map(|(spec, _)| spec)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OrtModel {
            name: name.into(),
            inputs,
            outputs,
            sessions: Arc::new(Sessions {
                model: name.into(),
                bytes: bytes.to_vec(),
                single: Mutex::new(vec![single]),
                weights,
                intra_op: OnceLock::new(),
                fixed_batch,
            }),
        })
    }
}

/// A model input's or output's spec, its dimensions after the batch axis
/// replaced by `configured` when given, with the batch axis open; and the
/// batch size the model fixes on axis 0, if it does.
fn tensor_spec(
    model: &str,
    tensor: &str,
    value: &ValueType,
    configured: Option<&Vec<usize>>,
) -> Result<(TensorSpec, Option<usize>), ModelError> {
    let unsupported = |dtype: String| ModelError::UnsupportedType {
        model: model.into(),
        tensor: tensor.into(),
        dtype,
    };
    let ValueType::Tensor { ty, shape, .. } = value else {
        return Err(unsupported(value.to_string()));
    };
    let dtype = dtype_of(*ty).ok_or_else(|| unsupported(ty.to_string()))?;
    let mut dims: Vec<Option<usize>> = shape
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
        .collect();
    if let Some(configured) = configured {
        dims.truncate(1);
        dims.extend(configured.iter().map(|&d| Some(d)));
    }
    if dims.is_empty() {
        return Err(ModelError::Scalar {
            model: model.into(),
            tensor: tensor.into(),
        });
    }
    let batch = dims[0].take();
    let spec = TensorSpec {
        name: tensor.into(),
        dtype,
        shape: dims,
    };
    Ok((spec, batch))
}

impl Model for OrtModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn plan(&self, batch: usize) -> Result<Arc<dyn Plan>, ModelError> {
        match self.sessions.fixed_batch {
            Some(fixed) if fixed != batch => Err(ModelError::Plan {
                model: self.name.clone(),
                batch,
                source: format!("{ENGINE}: the model's inputs fix the batch at {fixed}").into(),
            }),
            _ => Ok(Arc::new(OrtPlan(self.sessions.clone()))),
        }
    }

    fn release_plans_above(&self, _batch: usize) {
        // One session serves every batch size: nothing per size to release.
    }
}

struct OrtPlan(Arc<Sessions>);

impl Plan for OrtPlan {
    fn run(&self, inputs: Vec<Tensor>, intra_op: bool) -> Result<Vec<Tensor>, ModelError> {
        let sessions = &self.0;
        let error = |e: String| ModelError::Run {
            model: sessions.model.clone(),
            source: format!("{ENGINE}: {e}").into(),
        };
        let values = inputs
            .iter()
            .map(|t| to_ort(t).map(|v| (t.name.clone(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(error)?;
        if intra_op {
            let session = sessions
                .intra_op
                .get_or_init(|| {
                    session(
                        &sessions.model,
                        &sessions.bytes,
                        super::pool().current_num_threads(),
                        &sessions.weights,
                    )
                    .map(Mutex::new)
                    .map_err(|e| e.detail())
                })
                .as_ref()
                .map_err(|e| error(e.clone()))?;
            run(&mut lock(session), values).map_err(error)
        } else {
            let idle = lock(&sessions.single).pop();
            let mut session = match idle {
                Some(session) => session,
                None => session(&sessions.model, &sessions.bytes, 1, &sessions.weights)
                    .map_err(|e| error(e.detail()))?,
            };
            let ran = run(&mut session, values);
            lock(&sessions.single).push(session);
            ran.map_err(error)
        }
    }
}

/// A lock whose holder may have panicked (the data is still whole: a
/// session or the list of idle ones).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Run `session` on named inputs; its outputs as Sluice tensors, in model
/// output order.
fn run(session: &mut Session, inputs: Vec<(String, DynTensor)>) -> Result<Vec<Tensor>, String> {
    let names: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_owned())
        .collect();
    let outputs = session.run(inputs).map_err(|e| e.to_string())?;
    names
        .iter()
        .enumerate()
        .map(|(ix, name)| {
            let tensor = outputs[ix]
                .view()
                .downcast::<DynTensorValueType>()
                .map_err(|e| format!("output `{name}`: {e}"))?;
            from_ort(&tensor, name.clone())
        })
        .collect()
}

/// Copy a Sluice tensor into a new onnxruntime tensor.
fn to_ort(t: &Tensor) -> Result<DynTensor, String> {
    t.check().map_err(|e| format!("input `{}`: {e}", t.name))?;
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let mut value = DynTensor::new(&Allocator::default(), element_of(t.dtype), shape)
        .map_err(|e| format!("input `{}`: {e}", t.name))?;
    if !t.data.is_empty() {
        // SAFETY: the tensor was just allocated on the CPU for exactly this
        // element type and shape, which `check` says `data` fills.
        unsafe {
            std::ptr::copy_nonoverlapping(
                t.data.as_ptr(),
                value.data_ptr_mut().cast::<u8>(),
                t.data.len(),
            )
        };
    }
    Ok(value)
}

/// Copy an onnxruntime output into a Sluice tensor.
fn from_ort(value: &ort::value::Value<DynTensorValueType>, name: String) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(format!("output `{name}` is not a tensor"));
    };
    let dtype =
        dtype_of(*ty).ok_or_else(|| format!("output `{name}` has unsupported type {ty}"))?;
    let shape: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d.max(0)).unwrap_or(usize::MAX))
        .collect();
    // The engine's shape, checked before any byte is read through it.
    let len = sluice_types::shape_bytes(&shape, dtype).ok_or_else(|| {
        format!(
            "output `{name}`: shape {shape:?} describes more than {} bytes",
            sluice_types::MAX_TENSOR_BYTES
        )
    })?;
    let data = if len == 0 {
        Vec::new()
    } else {
        // SAFETY: a CPU tensor (the only device this engine uses) of this
        // element type and shape holds exactly `len` bytes at its data pointer.
        unsafe { std::slice::from_raw_parts(value.data_ptr().cast::<u8>(), len) }.to_vec()
    };
    Ok(Tensor {
        name,
        dtype,
        shape,
        data,
    })
}

fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Bfloat16 => DType::BF16,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        _ => return None,
    })
}

fn element_of(dtype: DType) -> TensorElementType {
    match dtype {
        DType::F16 => TensorElementType::Float16,
        DType::F32 => TensorElementType::Float32,
        DType::F64 => TensorElementType::Float64,
        DType::BF16 => TensorElementType::Bfloat16,
        DType::U8 => TensorElementType::Uint8,
        DType::I32 => TensorElementType::Int32,
        DType::I64 => TensorElementType::Int64,
    }
}
