//! # echo-postprocess
//!
//! A test postprocessor that describes what it received, so the host's tests
//! can check the postprocess path and the passing of metadata. For each item
//! it returns the JSON document
//!
//! ```json
//! {"id": "<meta.id>", "content_type": "<meta.content-type>",
//!  "attributes": [["key", "value"], ...],
//!  "tensors": [{"name": "y", "dtype": "fp32", "shape": [1, 10], "len_bytes": 40}]}
//! ```
//!
//! An item whose attributes contain `("fail", "1")` fails with
//! `invalid-input("requested failure")`. It takes no configuration (an empty
//! table; unknown keys are refused). Not for production use.

use serde::{Deserialize, Serialize};
use sluice_guest::{Document, Dtype, InferenceOutput, ItemError, Postprocessor};

/// No keys: the table must be empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

#[derive(Serialize)]
struct TensorSummary<'a> {
    name: &'a str,
    dtype: &'static str,
    shape: &'a [u32],
    len_bytes: usize,
}

#[derive(Serialize)]
struct Echo<'a> {
    id: &'a str,
    content_type: &'a str,
    attributes: &'a [(String, String)],
    tensors: Vec<TensorSummary<'a>>,
}

/// The WIT name of a dtype.
fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::Fp16 => "fp16",
        Dtype::Fp32 => "fp32",
        Dtype::Fp64 => "fp64",
        Dtype::Bf16 => "bf16",
        Dtype::U8 => "u8",
        Dtype::I32 => "i32",
        Dtype::I64 => "i64",
    }
}

pub struct EchoPostprocess;

impl Postprocessor for EchoPostprocess {
    type Config = Config;

    fn new(_config: Config) -> Result<Self, String> {
        Ok(EchoPostprocess)
    }

    fn postprocess(&mut self, output: InferenceOutput) -> Result<Document, ItemError> {
        let meta = &output.meta;
        if meta.attributes.iter().any(|(k, v)| k == "fail" && v == "1") {
            return Err(ItemError::invalid("requested failure"));
        }
        let tensors = output
            .tensors
            .iter()
            .map(|t| TensorSummary {
                name: &t.name,
                dtype: dtype_name(t.dtype),
                shape: &t.shape,
                len_bytes: t.data.len(),
            })
            .collect();
        Document::json(&Echo {
            id: &meta.id,
            content_type: &meta.content_type,
            attributes: &meta.attributes,
            tensors,
        })
    }
}

sluice_guest::export_postprocessor!(EchoPostprocess);
