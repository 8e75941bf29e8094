//! The tract backend: ONNX models in pure Rust.
//!
//! Loading: parse once with the batch axis as the symbol `N`, convert to a
//! typed model and declutter it. Planning: per batch size, substitute `N`,
//! optimize, and cache the plan. An optimized plan with a symbolic batch is
//! 1.3-6x slower than one with a concrete batch (measured), so plans are
//! never run symbolic.

use super::{Backend, InputShapes, Model, ModelError, Plan, TensorSpec};
use sluice_types::{DType, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceModelExt};
use tract_onnx::tract_hir::internal::DimLike;

/// Loads ONNX models with tract.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

impl Backend for TractBackend {
    fn load(
        &self,
        name: &str,
        bytes: &[u8],
        shapes: &InputShapes,
    ) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(TractModel::load(name, bytes, shapes)?))
    }

    fn operators(&self, name: &str, bytes: &[u8]) -> Result<Vec<(String, bool)>, ModelError> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &*bytes)
            .map_err(|e| parse_error(name, e))?;
        let missing = unimplemented_ops(&model);
        Ok(super::operator_types(name, bytes)?
            .into_iter()
            .map(|op| {
                let supported = !missing.contains(&op);
                (op, supported)
            })
            .collect())
    }
}

/// The engine's name in messages.
const ENGINE: &str = "tract";

fn parse_error(model: &str, error: TractError) -> ModelError {
    ModelError::Parse {
        model: model.into(),
        source: error.into(),
    }
}

fn unimplemented_ops(model: &InferenceModel) -> Vec<String> {
    let mut ops: Vec<String> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            n.op.name()
                .strip_prefix("Unimplemented(")
                .map(|s| s.trim_end_matches(')').to_owned())
        })
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

struct TractModel {
    name: String,
    source: Source,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    plans: Mutex<HashMap<usize, Arc<TractPlan>>>,
}

/// What plans are built from.
enum Source {
    /// Typed and decluttered once with the batch axis as symbol `N`; each
    /// plan substitutes `N` and optimizes. The usual case.
    Symbolic { typed: TypedModel, batch: Symbol },
    /// Some graphs only type-check with a concrete batch (e.g. a Reshape that
    /// bakes the batch in); each plan starts again from the parsed model.
    PerBatch {
        parsed: InferenceModel,
        inputs: Vec<(DatumType, TVec<TDim>)>,
    },
}

impl TractModel {
    fn load(name: &str, bytes: &[u8], shapes: &InputShapes) -> Result<Self, ModelError> {
        let parse_error = |e: TractError| parse_error(name, e);
        let onnx = tract_onnx::onnx();
        let parsed = match onnx.model_for_read(&mut &*bytes) {
            Ok(model) => model,
            // Some exporters write value infos or output shapes that tract
            // disagrees with; they carry no information tract needs.
            Err(first) => onnx
                .with_ignore_output_shapes(true)
                .with_ignore_value_info(true)
                .model_for_read(&mut &*bytes)
                .map_err(|_| parse_error(first))?,
        };
        let missing = unimplemented_ops(&parsed);
        if !missing.is_empty() {
            return Err(ModelError::Unsupported {
                model: name.into(),
                engine: ENGINE,
                ops: missing,
            });
        }
        let input_facts = input_facts(name, &parsed, shapes)?;
        let batch = parsed.symbols.sym("N");
        let mut symbolic = parsed.clone();
        for (ix, (dt, dims)) in input_facts.iter().enumerate() {
            let mut dims = dims.clone();
            dims[0] = batch.to_dim();
            symbolic
                .set_input_fact(ix, InferenceFact::dt_shape(*dt, dims))
                .map_err(parse_error)?;
        }
        let (source, typed) = match symbolic.into_typed().and_then(|m| m.into_decluttered()) {
            Ok(typed) => (
                Source::Symbolic {
                    typed: typed.clone(),
                    batch,
                },
                typed,
            ),
            Err(symbolic_error) => {
                tracing::info!(
                    model = name,
                    "cannot type with a symbolic batch ({symbolic_error:#}); planning per batch size"
                );
                let source = Source::PerBatch {
                    parsed,
                    inputs: input_facts,
                };
                let typed = source.typed_for(1).map_err(|e| ModelError::Plan {
                    model: name.into(),
                    batch: 1,
                    source: e.into(),
                })?;
                (source, typed)
            }
        };
        let batch_axis_open = |mut spec: TensorSpec| {
            spec.shape[0] = None;
            spec
        };
        let model_name = name;
        let spec = |outlet: OutletId, name: String| -> Result<TensorSpec, ModelError> {
            let fact = typed.outlet_fact(outlet).map_err(parse_error)?;
            let dtype = dtype_of(fact.datum_type).ok_or_else(|| ModelError::UnsupportedType {
                model: model_name.into(),
                tensor: name.clone(),
                dtype: format!("{:?}", fact.datum_type),
            })?;
            if fact.shape.rank() == 0 {
                return Err(ModelError::Scalar {
                    model: model_name.into(),
                    tensor: name,
                });
            }
            Ok(batch_axis_open(TensorSpec {
                name,
                dtype,
                shape: fact.shape.iter().map(|d| d.to_usize().ok()).collect(),
            }))
        };
        let inputs = typed
            .input_outlets()
            .map_err(parse_error)?
            .iter()
            .map(|o| spec(*o, typed.node(o.node).name.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = typed
            .output_outlets()
            .map_err(parse_error)?
            .iter()
            .map(|o| {
                spec(
                    *o,
                    typed
                        .outlet_label(*o)
                        .map(str::to_owned)
                        .unwrap_or_else(|| typed.node(o.node).name.clone()),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TractModel {
            name: name.into(),
            source,
            inputs,
            outputs,
            plans: Mutex::default(),
        })
    }
}

impl Source {
    /// The decluttered model for one batch size.
    fn typed_for(&self, batch_size: usize) -> TractResult<TypedModel> {
        match self {
            Source::Symbolic { typed, batch } => typed.set_symbols(&HashMap::from([(
                batch.clone(),
                TDim::Val(batch_size as i64),
            )])),
            Source::PerBatch { parsed, inputs } => {
                let mut model = parsed.clone();
                for (ix, (dt, dims)) in inputs.iter().enumerate() {
                    let mut dims = dims.clone();
                    dims[0] = batch_size.to_dim();
                    model.set_input_fact(ix, InferenceFact::dt_shape(*dt, dims))?;
                }
                model.into_typed()?.into_decluttered()
            }
        }
    }
}

/// Element type and dimensions of each input; axis 0 is the batch, the other
/// axes come from the model or, where it leaves them open, from `shapes`.
fn input_facts(
    name: &str,
    model: &InferenceModel,
    shapes: &InputShapes,
) -> Result<Vec<(DatumType, TVec<TDim>)>, ModelError> {
    let open = |input: &str, axis: Option<usize>| ModelError::OpenInput {
        model: name.into(),
        input: input.into(),
        axis,
    };
    (0..model.inputs.len())
        .map(|ix| {
            let input_name = &model.node(model.inputs[ix].node).name;
            let fact = model.input_fact(ix).map_err(|e| parse_error(name, e))?;
            let dt = fact.datum_type.concretize().unwrap_or(DatumType::F32);
            if let Some(configured) = shapes.get(input_name) {
                let mut dims: TVec<TDim> = tvec![TDim::Val(1)];
                dims.extend(configured.iter().map(|&d| d.to_dim()));
                return Ok((dt, dims));
            }
            if fact.shape.is_open() || fact.shape.dims().next().is_none() {
                return Err(open(input_name, None));
            }
            let mut dims = TVec::new();
            for (axis, dim) in fact.shape.dims().enumerate() {
                match (axis, dim.concretize()) {
                    (0, _) => dims.push(TDim::Val(1)),
                    (_, Some(d)) if d.to_i64().is_ok_and(|d| d > 0) => dims.push(d),
                    _ => return Err(open(input_name, Some(axis))),
                }
            }
            Ok((dt, dims))
        })
        .collect()
}

impl Model for TractModel {
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
        if let Some(plan) = self
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&batch)
        {
            return Ok(plan.clone());
        }
        let runnable = self
            .source
            .typed_for(batch)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| ModelError::Plan {
                model: self.name.clone(),
                batch,
                source: e.into(),
            })?;
        let plan = Arc::new(TractPlan {
            model: self.name.clone(),
            runnable,
        });
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(batch, plan.clone());
        Ok(plan)
    }

    fn release_plans_above(&self, batch: usize) {
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&size, _| size <= batch);
    }
}

struct TractPlan {
    model: String,
    runnable: Arc<TypedRunnableModel>,
}

impl Plan for TractPlan {
    fn run(&self, inputs: Vec<Tensor>, intra_op: bool) -> Result<Vec<Tensor>, ModelError> {
        use tract_linalg::multithread::{Executor, multithread_tract_scope};
        if !intra_op {
            return self.run_here(inputs);
        }
        // Spread over the inference pool, the whole run inside it: tract
        // hands each operator's work to the pool, and from a thread outside
        // the pool every hand-off was a cold one (the job queued, the caller
        // asleep on a lock until a worker woke, took it and woke the caller
        // back: two context switches per operator, dozens per inference).
        // From a worker of the pool the caller joins in instead.
        let pool = super::pool();
        pool.install(|| {
            multithread_tract_scope(Executor::MultiThread(pool.clone()), || {
                self.run_here(inputs)
            })
        })
    }
}

impl TractPlan {
    /// Run the plan on the calling thread (with its tract executor).
    fn run_here(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let error = |e: TractError| ModelError::Run {
            model: self.model.clone(),
            source: e.into(),
        };
        let values = inputs
            .iter()
            .map(|t| self.to_tract(t).map(TValue::from))
            .collect::<Result<TVec<_>, _>>()?;
        let outputs = self.runnable.run(values).map_err(error)?;
        let names = self.runnable.model().output_outlets().map_err(error)?;
        outputs
            .into_iter()
            .zip(names.iter())
            .map(|(value, outlet)| {
                let name = self
                    .runnable
                    .model()
                    .outlet_label(*outlet)
                    .unwrap_or("output")
                    .to_owned();
                self.from_tract(&value, name)
            })
            .collect()
    }

    fn to_tract(&self, t: &Tensor) -> Result<tract_onnx::prelude::Tensor, ModelError> {
        let dt = datum_of(t.dtype).ok_or_else(|| ModelError::UnsupportedType {
            model: self.model.clone(),
            tensor: t.name.clone(),
            dtype: format!("{:?}", t.dtype),
        })?;
        let run_error = |e: TractError| ModelError::Run {
            model: self.model.clone(),
            source: e.context(format!("input `{}`", t.name)).into(),
        };
        if let Err(e) = t.check() {
            return Err(run_error(TractError::msg(e.to_string())));
        }
        // SAFETY: `dt` is a plain numeric type and the length was checked above.
        unsafe { tract_onnx::prelude::Tensor::from_raw_dt(dt, &t.shape, &t.data) }
            .map_err(run_error)
    }

    fn from_tract(&self, value: &TValue, name: String) -> Result<Tensor, ModelError> {
        let dtype = dtype_of(value.datum_type()).ok_or_else(|| ModelError::UnsupportedType {
            model: self.model.clone(),
            tensor: name.clone(),
            dtype: format!("{:?}", value.datum_type()),
        })?;
        Ok(Tensor {
            name,
            dtype,
            shape: value.shape().to_vec(),
            data: value.as_bytes().to_vec(),
        })
    }
}

fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::U8 => DType::U8,
        DatumType::I32 => DType::I32,
        DatumType::I64 => DType::I64,
        _ => return None,
    })
}

fn datum_of(dtype: DType) -> Option<DatumType> {
    Some(match dtype {
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::U8 => DatumType::U8,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::BF16 => return None,
    })
}
