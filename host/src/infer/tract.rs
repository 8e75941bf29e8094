//! The tract backend: ONNX models in pure Rust.
//!
//! Loading: parse once with the batch axis as the symbol `N`, convert to a
//! typed model and declutter it. Planning: per batch size, substitute `N`,
//! optimize, and cache the plan. An optimized plan with a symbolic batch is
//! 1.3-6x slower than one with a concrete batch (measured), so plans are
//! never run symbolic.

use super::{Backend, Model, ModelError, Plan, TensorSpec};
use crate::types::{DType, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceModelExt};
use tract_onnx::tract_hir::internal::DimLike;

/// Loads ONNX models with tract.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

impl Backend for TractBackend {
    fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(TractModel::load(name, bytes)?))
    }
}

/// The ONNX operator types a model uses, with whether tract implements them.
pub fn operator_support(bytes: &[u8]) -> Result<Vec<(String, bool)>, String> {
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_read(&mut &*bytes).map_err(|e| format!("{e:#}"))?;
    let graph = proto.graph.as_ref().ok_or("the model has no graph")?;
    let mut ops: Vec<String> = graph.node.iter().map(|n| n.op_type.clone()).collect();
    ops.sort();
    ops.dedup();
    let model = onnx.model_for_read(&mut &*bytes).map_err(|e| format!("{e:#}"))?;
    let missing = unimplemented_ops(&model);
    Ok(ops.into_iter().map(|op| (op.clone(), !missing.contains(&op))).collect())
}

fn unimplemented_ops(model: &InferenceModel) -> Vec<String> {
    let mut ops: Vec<String> = model
        .nodes()
        .iter()
        .filter_map(|n| n.op.name().strip_prefix("Unimplemented(").map(|s| s.trim_end_matches(')').to_owned()))
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

struct TractModel {
    name: String,
    /// Decluttered, with the batch axis symbolic.
    typed: TypedModel,
    batch: Symbol,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    plans: Mutex<HashMap<usize, Arc<TractPlan>>>,
}

impl TractModel {
    fn load(name: &str, bytes: &[u8]) -> Result<Self, ModelError> {
        let parse_error = |e: TractError| ModelError::Parse { model: name.into(), message: format!("{e:#}") };
        let onnx = tract_onnx::onnx();
        let mut model = match onnx.model_for_read(&mut &*bytes) {
            Ok(model) => model,
            // Some exporters write value infos or output shapes that tract
            // disagrees with; they carry no information tract needs.
            Err(first) => onnx
                .with_ignore_output_shapes(true)
                .with_ignore_value_info(true)
                .model_for_read(&mut &*bytes)
                .map_err(|_| parse_error(first))?,
        };
        let missing = unimplemented_ops(&model);
        if !missing.is_empty() {
            return Err(ModelError::Unsupported {
                model: name.into(),
                ops: missing.join(", "),
                message: "tract does not implement them".into(),
            });
        }
        let batch = model.symbols.sym("N");
        for ix in 0..model.inputs.len() {
            let fact = model.input_fact(ix).map_err(parse_error)?;
            let dt = fact.datum_type.concretize().unwrap_or(DatumType::F32);
            if fact.shape.is_open() || fact.shape.dims().next().is_none() {
                return Err(ModelError::Parse {
                    model: name.into(),
                    message: format!("input #{ix} has no known rank; Sluice needs a batch axis 0"),
                });
            }
            let mut dims: TVec<TDim> =
                fact.shape.dims().map(|d| d.concretize().unwrap_or_else(|| batch.to_dim())).collect();
            dims[0] = batch.to_dim();
            model.set_input_fact(ix, InferenceFact::dt_shape(dt, dims)).map_err(parse_error)?;
        }
        let typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(|e| ModelError::Unsupported { model: name.into(), ops: "?".into(), message: format!("{e:#}") })?;
        let spec = |fact: &TypedFact, name: String| -> Result<TensorSpec, ModelError> {
            Ok(TensorSpec {
                name,
                dtype: dtype_of(fact.datum_type)
                    .ok_or_else(|| parse_error(TractError::msg(format!("tensor type {:?} is not supported", fact.datum_type))))?,
                shape: fact.shape.iter().map(|d| d.to_usize().ok()).collect(),
            })
        };
        let inputs = typed
            .input_outlets()
            .map_err(parse_error)?
            .iter()
            .map(|o| spec(typed.outlet_fact(*o).map_err(parse_error)?, typed.node(o.node).name.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = typed
            .output_outlets()
            .map_err(parse_error)?
            .iter()
            .map(|o| {
                let label = typed.outlet_label(*o).map(str::to_owned).unwrap_or_else(|| typed.node(o.node).name.clone());
                spec(typed.outlet_fact(*o).map_err(parse_error)?, label)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TractModel { name: name.into(), typed, batch, inputs, outputs, plans: Mutex::default() })
    }
}

impl Model for TractModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn plan(&self, batch: usize) -> Result<Arc<dyn Plan>, ModelError> {
        if let Some(plan) = self.plans.lock().unwrap().get(&batch) {
            return Ok(plan.clone());
        }
        let error = |e: TractError| ModelError::Run {
            model: self.name.clone(),
            message: format!("cannot plan batch size {batch}: {e:#}"),
        };
        let symbols = HashMap::from([(self.batch.clone(), TDim::Val(batch as i64))]);
        let runnable = self
            .typed
            .set_symbols(&symbols)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(error)?;
        let plan = Arc::new(TractPlan { model: self.name.clone(), runnable });
        self.plans.lock().unwrap().insert(batch, plan.clone());
        Ok(plan)
    }
}

struct TractPlan {
    model: String,
    runnable: Arc<TypedRunnableModel>,
}

impl Plan for TractPlan {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let error = |message: String| ModelError::Run { model: self.model.clone(), message };
        let values = inputs
            .iter()
            .map(|t| to_tract(t).map(TValue::from).map_err(|e| error(format!("input `{}`: {e:#}", t.name))))
            .collect::<Result<TVec<_>, _>>()?;
        let outputs = self.runnable.run(values).map_err(|e| error(format!("{e:#}")))?;
        let names = self.runnable.model().output_outlets().map_err(|e| error(format!("{e:#}")))?;
        outputs
            .into_iter()
            .zip(names.iter())
            .map(|(value, outlet)| {
                let name = self.runnable.model().outlet_label(*outlet).unwrap_or("output").to_owned();
                from_tract(&value, name).map_err(error)
            })
            .collect()
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

fn to_tract(t: &Tensor) -> TractResult<tract_onnx::prelude::Tensor> {
    let dt = datum_of(t.dtype).ok_or_else(|| TractError::msg(format!("{:?} is not supported by tract", t.dtype)))?;
    if !t.is_consistent() {
        return Err(TractError::msg(format!("{} bytes do not fill shape {:?} of {:?}", t.data.len(), t.shape, t.dtype)));
    }
    // SAFETY: `dt` is a plain numeric type and the length was checked above.
    unsafe { tract_onnx::prelude::Tensor::from_raw_dt(dt, &t.shape, &t.data) }
}

fn from_tract(value: &TValue, name: String) -> Result<Tensor, String> {
    let dtype = dtype_of(value.datum_type()).ok_or_else(|| format!("output `{name}` has unsupported type {:?}", value.datum_type()))?;
    Ok(Tensor { name, dtype, shape: value.shape().to_vec(), data: value.as_bytes().to_vec() })
}
