//! Host-side bindings of the plugin worlds in `wit/`, and the conversions
//! between their types and the host's. The postprocessor world reuses the
//! preprocessor world's imported interfaces, so shared types such as
//! `tensor` are one Rust type.

use sluice_types::{DType, Inferred, Metadata, RawItem, Tensor};

pub mod pre {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:plugin/preprocessor",
        // `wasi:nn` is served by `nn.rs`; its calls may trap (a resource
        // that is not the guest's, a guest holding too many tensors).
        imports: { "wasi:nn": trappable },
        with: {
            "wasi:nn/tensor.tensor": crate::nn::NnTensor,
            "wasi:nn/graph.graph": crate::nn::NnGraph,
            "wasi:nn/inference.graph-execution-context": crate::nn::NnExecution,
            "wasi:nn/errors.error": crate::nn::NnError,
        },
    });
}

pub mod post {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:plugin/postprocessor",
        with: {
            "sluice:plugin/types": super::pre::sluice::plugin::types,
            "sluice:plugin/log": super::pre::sluice::plugin::log,
            "wasi:nn": super::pre::wasi::nn,
        },
    });
}

pub use pre::sluice::plugin::{log, types as wit};

/// The export a component must have to be a preprocessor.
pub const PREPROCESS_EXPORT: &str = "sluice:plugin/preprocess@0.1.0";
/// The export a component must have to be a postprocessor.
pub const POSTPROCESS_EXPORT: &str = "sluice:plugin/postprocess@0.1.0";

pub(super) fn to_wit_meta(meta: &Metadata) -> wit::Metadata {
    wit::Metadata {
        id: meta.id.clone(),
        content_type: meta.content_type.clone(),
        attributes: meta.attributes.clone(),
    }
}

pub(super) fn to_wit_raw(item: &RawItem) -> pre::exports::sluice::plugin::preprocess::RawInput {
    pre::exports::sluice::plugin::preprocess::RawInput {
        meta: to_wit_meta(&item.meta),
        data: item.data.clone(),
    }
}

pub(super) fn to_wit_tensor(t: &Tensor) -> wit::Tensor {
    let dtype = match t.dtype {
        DType::F16 => wit::Dtype::Fp16,
        DType::F32 => wit::Dtype::Fp32,
        DType::F64 => wit::Dtype::Fp64,
        DType::BF16 => wit::Dtype::Bf16,
        DType::U8 => wit::Dtype::U8,
        DType::I32 => wit::Dtype::I32,
        DType::I64 => wit::Dtype::I64,
    };
    wit::Tensor {
        name: t.name.clone(),
        dtype,
        // A tensor that reaches a plugin passed `Tensor::check`, so each
        // dimension is at most `MAX_TENSOR_BYTES` and fits; saturating
        // rather than wrapping if one ever did not.
        shape: t
            .shape
            .iter()
            .map(|&d| u32::try_from(d).unwrap_or(u32::MAX))
            .collect(),
        data: t.data.clone(),
    }
}

pub(super) fn from_wit_tensor(t: wit::Tensor) -> Tensor {
    let dtype = match t.dtype {
        wit::Dtype::Fp16 => DType::F16,
        wit::Dtype::Fp32 => DType::F32,
        wit::Dtype::Fp64 => DType::F64,
        wit::Dtype::Bf16 => DType::BF16,
        wit::Dtype::U8 => DType::U8,
        wit::Dtype::I32 => DType::I32,
        wit::Dtype::I64 => DType::I64,
    };
    Tensor {
        name: t.name,
        dtype,
        shape: t.shape.into_iter().map(|d| d as usize).collect(),
        data: t.data,
    }
}

/// What a plugin is called on: something with the host's metadata, so a
/// fault's log line can name the item.
pub(super) trait Item {
    fn meta(&self) -> &Metadata;

    /// The item as an operator finds it: its file, else its id.
    fn named(&self) -> String {
        let meta = self.meta();
        match meta.attributes.iter().find(|(k, _)| k == "file") {
            Some((_, file)) => format!("{file} ({})", meta.id),
            None => meta.id.clone(),
        }
    }
}

impl Item for RawItem {
    fn meta(&self) -> &Metadata {
        &self.meta
    }
}

impl Item for Inferred {
    fn meta(&self) -> &Metadata {
        &self.meta
    }
}
