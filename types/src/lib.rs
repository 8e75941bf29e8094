//! # sluice-types: the facts every part of the device shares
//!
//! A leaf (std, thiserror and half): the data that flows between pipeline
//! stages, and the few shared facts that would otherwise pull one room of
//! the house into another: the clock ([`now_ms`]), the version written into
//! every record ([`VERSION`]) and the cores this process may use
//! ([`available_cores`]). Every device crate may import it; it imports
//! none of them.
//!
//! The data, in one place:
//!
//! ingest -> [`RawItem`] -> preprocess -> [`Tensor`]s -> schedule/infer ->
//! [`Tensor`]s -> postprocess -> [`Document`] -> outbox -> sync.
//!
//! Every stage returns one `Result<_, ItemError>` per item, in input order,
//! so that one bad item never fails the batch it travels in.

#![deny(missing_docs)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod error;
pub mod panic;
#[cfg(test)]
mod tensor_props;

/// The Sluice version written into every record and status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch (0 before it: a clock that far off
/// is reported by the records' timestamps, not by a panic).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The cores this process may use (its CPU affinity and cgroup quota, as
/// the standard library reads them), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the host knows about an input item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Stable id of the item, unique per device and pipeline.
    pub id: String,
    /// MIME type of the raw bytes.
    pub content_type: String,
    /// Free-form pairs from the ingest source (file name, sensor, ...).
    pub attributes: Vec<(String, String)>,
}

impl Metadata {
    /// Metadata with no attributes.
    pub fn new(id: impl Into<String>, content_type: impl Into<String>) -> Self {
        Metadata {
            id: id.into(),
            content_type: content_type.into(),
            attributes: Vec::new(),
        }
    }

    /// The same, with one more attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }
}

/// An input as it was ingested: bytes plus metadata.
#[derive(Debug, Clone)]
pub struct RawItem {
    /// What the host knows about it.
    pub meta: Metadata,
    /// Its bytes, as received.
    pub data: Vec<u8>,
}

/// Element type of a [`Tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// Exhaustive on purpose: a new element type must be converted by every
// engine and by the plugin contract, and the compiler finds each place.
pub enum DType {
    /// IEEE 754 half precision.
    F16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// bfloat16.
    BF16,
    /// Unsigned byte.
    U8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }
}

/// A named, dense, row-major tensor; `data` holds little-endian elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The name of the model input or output it is for.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// Its dimensions; axis 0 is the batch axis wherever a batch is meant.
    pub shape: Vec<usize>,
    /// The elements, little-endian, row-major.
    pub data: Vec<u8>,
}

/// Join items (each a list of tensors with a batch axis of 1, in the same
/// order) into one tensor per position, along the batch axis: item `i` is
/// row `i`. Names and dtypes are the first item's.
pub fn stack_items(items: &[Vec<Tensor>]) -> Vec<Tensor> {
    let n = items.len();
    (0..items.first().map_or(0, Vec::len))
        .map(|position| {
            let first = &items[0][position];
            let mut shape = first.shape.clone();
            if let Some(batch) = shape.first_mut() {
                *batch = n;
            }
            // The bytes the items hold, not the first one's size times `n`:
            // items of other sizes cannot make it ask for more than exists.
            let len = items.iter().map(|item| item[position].data.len()).sum();
            let mut data = Vec::with_capacity(len);
            for item in items {
                data.extend_from_slice(&item[position].data);
            }
            Tensor {
                name: first.name.clone(),
                dtype: first.dtype,
                shape,
                data,
            }
        })
        .collect()
}

/// The most bytes one tensor may describe: 1 GiB. Shapes come from plugins
/// (the plugin contract and `wasi:nn`) and from models, so their sizes are
/// computed with checked arithmetic against this bound; a larger shape is
/// an error of the item that carries it, never an overflow.
pub const MAX_TENSOR_BYTES: usize = 1 << 30;

/// The bytes a tensor of `shape` and `dtype` holds, or `None` when that is
/// more than [`MAX_TENSOR_BYTES`]. Computed with checked arithmetic: no
/// shape, however hostile, overflows (every dimension is bounded too, so a
/// zero dimension cannot hide a huge one).
pub fn shape_bytes(shape: &[usize], dtype: DType) -> Option<usize> {
    if shape.iter().any(|&d| d > MAX_TENSOR_BYTES) {
        return None;
    }
    if shape.contains(&0) {
        return Some(0);
    }
    let mut elements = 1usize;
    for &d in shape {
        elements = elements.checked_mul(d).filter(|&e| e <= MAX_TENSOR_BYTES)?;
    }
    elements
        .checked_mul(dtype.size())
        .filter(|&bytes| bytes <= MAX_TENSOR_BYTES)
}

/// Why a tensor's data does not match its shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// The shape describes more than [`MAX_TENSOR_BYTES`].
    #[error(
        "shape {shape:?} of {dtype:?} describes more than {MAX_TENSOR_BYTES} bytes, the most a tensor may hold"
    )]
    TooLarge {
        /// The shape.
        shape: Vec<usize>,
        /// The element type.
        dtype: DType,
    },
    /// The data is not as long as the shape says.
    #[error("{bytes} bytes do not fill shape {shape:?} of {dtype:?} ({expected} bytes)")]
    Mismatch {
        /// The data's length.
        bytes: usize,
        /// The shape.
        shape: Vec<usize>,
        /// The element type.
        dtype: DType,
        /// The length the shape describes.
        expected: usize,
    },
}

impl Tensor {
    /// Element `i` as `f64` (`None` out of range).
    pub fn element_f64(&self, i: usize) -> Option<f64> {
        let size = self.dtype.size();
        let start = i.checked_mul(size)?;
        let bytes = self.data.get(start..start.checked_add(size)?)?;
        let two = || u16::from_le_bytes([bytes[0], bytes[1]]);
        Some(match self.dtype {
            DType::F16 => half::f16::from_bits(two()).to_f64(),
            DType::BF16 => half::bf16::from_bits(two()).to_f64(),
            DType::F32 => f32::from_le_bytes(bytes.try_into().ok()?) as f64,
            DType::F64 => f64::from_le_bytes(bytes.try_into().ok()?),
            DType::U8 => bytes[0] as f64,
            DType::I32 => i32::from_le_bytes(bytes.try_into().ok()?) as f64,
            DType::I64 => i64::from_le_bytes(bytes.try_into().ok()?) as f64,
        })
    }

    /// An `F32` tensor of `values` with `shape` (not checked: see
    /// [`Tensor::is_consistent`]).
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Tensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            dtype: DType::F32,
            shape,
            data,
        }
    }

    /// Number of elements the shape describes, or `None` when the shape
    /// describes more than [`MAX_TENSOR_BYTES`] (see [`shape_bytes`]).
    pub fn element_count(&self) -> Option<usize> {
        shape_bytes(&self.shape, self.dtype).map(|bytes| bytes / self.dtype.size())
    }

    /// Check that `data` holds exactly what the shape and dtype describe,
    /// and that this is at most [`MAX_TENSOR_BYTES`].
    pub fn check(&self) -> Result<(), ShapeError> {
        let expected =
            shape_bytes(&self.shape, self.dtype).ok_or_else(|| ShapeError::TooLarge {
                shape: self.shape.clone(),
                dtype: self.dtype,
            })?;
        if self.data.len() != expected {
            return Err(ShapeError::Mismatch {
                bytes: self.data.len(),
                shape: self.shape.clone(),
                dtype: self.dtype,
                expected,
            });
        }
        Ok(())
    }

    /// Whether [`Tensor::check`] finds nothing wrong.
    pub fn is_consistent(&self) -> bool {
        self.check().is_ok()
    }

    /// The elements as `f32` if the dtype is `F32`.
    pub fn f32_values(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32 && self.is_consistent()).then(|| {
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
    }
}

/// A model's output tensors for one item, with the item's metadata.
#[derive(Debug, Clone)]
pub struct Inferred {
    /// The input item's metadata.
    pub meta: Metadata,
    /// The model's outputs, in model output order, each with a batch axis of 1.
    pub tensors: Vec<Tensor>,
}

/// A result document produced by a postprocessor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// MIME type of `body`, e.g. `application/json`.
    pub content_type: String,
    /// The document's bytes.
    pub body: Vec<u8>,
}

/// Why one item failed. It travels with the item; its neighbours go on.
///
/// The messages are text on purpose: they come from plugins (across the
/// WebAssembly boundary) or describe one item, and travel upstream in its
/// result record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    /// The plugin found the item malformed.
    #[error("plugin `{plugin}` rejected the item as invalid: {message}")]
    InvalidInput {
        /// The plugin's name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin does not handle this kind of item.
    #[error("plugin `{plugin}` does not support the item: {message}")]
    Unsupported {
        /// The plugin's name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin reported an internal failure.
    #[error("plugin `{plugin}` failed internally: {message}")]
    Internal {
        /// The plugin's name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin instance trapped, ran out of time or memory; it was
    /// discarded and replaced.
    #[error("plugin `{plugin}` was stopped: {fault}")]
    PluginFault {
        /// The plugin's name.
        plugin: String,
        /// What happened to the instance.
        fault: Fault,
    },
    /// Inference failed for the item (inputs of the wrong shape, or the
    /// model failed on it).
    #[error("model `{model}`: {message}")]
    Inference {
        /// The model's name.
        model: String,
        /// What failed.
        message: String,
    },
    /// Ingest refused the input (too large): it never reached the pipeline.
    #[error("refused at ingest: {message}")]
    Refused {
        /// Why.
        message: String,
    },
    /// The pipeline crashed (a panic: a bug) every time it ran the input,
    /// `crashes` times: the input was set aside as this failure, so that
    /// it stops taking the pipeline down.
    #[error("the pipeline crashed {crashes} times on this input, which was set aside: {cause}")]
    Crashed {
        /// How many times.
        crashes: u32,
        /// The last crash's panic message.
        cause: String,
    },
    /// The input's row in the outbox's journal cannot be read as written
    /// (damage on disk): it cannot be run.
    #[error("{message}")]
    Damaged {
        /// What is damaged.
        message: String,
    },
    /// The model's scheduler could not take the item now (its queue was
    /// full, the item waited past `request_timeout_ms`, or it is stopping).
    /// Back-pressure, not a result: the agent keeps such inputs journaled
    /// and tries them again ([`ItemError::is_transient`]).
    #[error("model `{model}` is busy: {message}")]
    Busy {
        /// The model's name.
        model: String,
        /// Why the item was not taken.
        message: String,
    },
}

impl ItemError {
    /// A stable, machine-readable name of the error's kind, as results
    /// carry it upstream.
    pub fn kind(&self) -> &'static str {
        match self {
            ItemError::InvalidInput { .. } => "invalid-input",
            ItemError::Unsupported { .. } => "unsupported",
            ItemError::Internal { .. } => "internal",
            ItemError::PluginFault { .. } => "plugin-fault",
            ItemError::Inference { .. } => "inference",
            ItemError::Busy { .. } => "busy",
            ItemError::Refused { .. } => "refused",
            ItemError::Crashed { .. } => "crashed",
            ItemError::Damaged { .. } => "damaged",
        }
    }

    /// Whether the item itself is fine and trying again later can succeed
    /// (overload, shutdown), as opposed to a verdict about the item.
    pub fn is_transient(&self) -> bool {
        matches!(self, ItemError::Busy { .. })
    }
}

/// How a plugin instance failed while handling an item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The call ran past its deadline (the plugin's timeout).
    Deadline(Duration),
    /// The instance tried to grow its memory past the cap.
    MemoryCap {
        /// The cap (`memory_mb`), in bytes.
        cap_bytes: usize,
        /// The linear-memory size the refused growth asked for, in bytes.
        requested_bytes: usize,
    },
    /// Any other trap (panic, unreachable, out-of-bounds...).
    Trap(String),
    /// The plugin broke the contract (e.g. returned the wrong number of results).
    Contract(String),
}

impl Fault {
    /// Every kind of fault, as [`Fault::kind`] names them.
    pub const KINDS: [&'static str; 4] = ["deadline", "memory-cap", "trap", "contract"];

    /// A stable, machine-readable name of the fault's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Deadline(_) => "deadline",
            Fault::MemoryCap { .. } => "memory-cap",
            Fault::Trap(_) => "trap",
            Fault::Contract(_) => "contract",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Deadline(d) => write!(
                f,
                "deadline exceeded: the call ran past `timeout_ms` = {} ms",
                d.as_millis()
            ),
            Fault::MemoryCap {
                cap_bytes,
                requested_bytes,
            } => f.write_str(&memory_cap_text(*cap_bytes, *requested_bytes)),
            Fault::Trap(m) => write!(f, "trapped: {m}"),
            Fault::Contract(m) => write!(f, "broke the plugin contract: {m}"),
        }
    }
}

/// What a plugin hitting its memory cap is told, in both the item's error
/// and the start-up error: the size asked for and the setting to raise.
pub fn memory_cap_text(cap_bytes: usize, requested_bytes: usize) -> String {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    format!(
        "memory cap exceeded: it asked for {:.1} MiB of linear memory, `memory_mb` = {} allows {:.1} MiB",
        mib(requested_bytes),
        cap_bytes >> 20,
        mib(cap_bytes)
    )
}

/// One result per item, in input order.
pub type ItemResults<T> = Vec<Result<T, ItemError>>;
