//! # sluice-guest: write Sluice plugins as plain Rust
//!
//! A Sluice plugin is a WebAssembly component that the host runs around native
//! ONNX inference: a **preprocessor** turns raw input bytes (an image, a CSV
//! record, a sensor frame) into named tensors, a **postprocessor** turns the
//! model's output tensors into a result document (JSON by default).
//!
//! This crate hides the WIT bindings. A plugin author implements one trait,
//! [`Preprocessor`] or [`Postprocessor`], and calls one macro,
//! [`export_preprocessor!`] or [`export_postprocessor!`]:
//!
//! ```no_run
//! use sluice_guest::{ItemError, Preprocessor, RawInput, Tensor};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     /// Every byte is divided by this.
//!     scale: f32,
//! }
//!
//! struct BytesToVector {
//!     config: Config,
//! }
//!
//! impl Preprocessor for BytesToVector {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         if config.scale == 0.0 {
//!             return Err("`scale` must not be zero".into());
//!         }
//!         Ok(Self { config })
//!     }
//!
//!     fn preprocess(&mut self, input: RawInput) -> Result<Vec<Tensor>, ItemError> {
//!         if input.data.is_empty() {
//!             return Err(ItemError::InvalidInput("empty input".into()));
//!         }
//!         let values: Vec<f32> = input.data.iter().map(|&b| b as f32 / self.config.scale).collect();
//!         Ok(vec![Tensor::from_f32("input", &[1, values.len() as u32], &values)])
//!     }
//! }
//!
//! sluice_guest::export_preprocessor!(BytesToVector);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and point the host configuration at the `.wasm` file.
//!
//! ## What the host guarantees
//!
//! * [`Preprocessor::new`] / [`Postprocessor::new`] run once per instance, with
//!   the plugin's `config` table from the host configuration. Unknown or
//!   missing keys are reported by serde with the key's name.
//! * Batches arrive as lists; the default `*_batch` methods call the per-item
//!   method for each item. Override them to vectorize across the batch.
//! * A trap (panic, out-of-memory, deadline) throws the instance away; the host
//!   creates a fresh one and calls `new` again. Do not rely on state surviving
//!   a failed item.
//! * The plugin sees no files, network, environment or stdio unless its
//!   configuration grants them. Log through [`log`] instead of printing.

#![deny(missing_docs)]

/// The WIT package this crate's bindings are generated from. Plugins built
/// with this crate run on every Sluice host that speaks this package's
/// major.minor (see `docs/plugins.md`, *Compatibility*); the crate's own
/// version shares that major.minor.
pub const WIT_PACKAGE: &str = "sluice:plugin@0.1.0";

mod tensor;
pub use tensor::Element;
pub mod log;
pub mod options;

pub use bindings::types::{Dtype, Tensor};

#[doc(hidden)]
pub mod bindings;

pub use bindings::postprocess::{Document, InferenceOutput};
pub use bindings::preprocess::RawInput;
pub use bindings::types::{ItemError, Metadata};

/// The standard `wasi:nn` interface, for plugins that run a model themselves.
/// The host serves these calls from the same scheduler and engine as its own
/// pipeline, so concurrent calls on one model are batched together.
pub use bindings::nn;

use std::any::Any;
use std::cell::RefCell;

impl ItemError {
    /// The item's bytes or tensors are malformed for this plugin.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        ItemError::InvalidInput(message.to_string())
    }
    /// The item is well-formed but asks for something this plugin does not do.
    pub fn unsupported(message: impl std::fmt::Display) -> Self {
        ItemError::Unsupported(message.to_string())
    }
    /// The plugin itself failed.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ItemError::Internal(message.to_string())
    }
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            ItemError::Unsupported(m) => write!(f, "unsupported: {m}"),
            ItemError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl Metadata {
    /// The value of attribute `key`, if the ingest source set it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The item's content type without parameters, lower-cased: see [`media_type`].
    pub fn media_type(&self) -> String {
        media_type(&self.content_type)
    }
}

/// A content type without its parameters, lower-cased, for comparing:
/// `Text/CSV; charset=utf-8` is `text/csv`. Ingest sources pass on what
/// clients sent, so plugins should not compare content types verbatim.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Document {
    /// A JSON document.
    pub fn json(value: &impl serde::Serialize) -> Result<Self, ItemError> {
        let body = serde_json::to_vec(value).map_err(ItemError::internal)?;
        Ok(Document {
            content_type: "application/json".into(),
            body,
        })
    }
}

impl InferenceOutput {
    /// The output tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, ItemError> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| {
            let have: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
            ItemError::invalid(format!("no output tensor named `{name}` (have: {have:?})"))
        })
    }
}

/// A preprocessing plugin: raw bytes in, named tensors out.
pub trait Preprocessor: Sized + 'static {
    /// The plugin's `config` table from the host configuration.
    type Config: serde::de::DeserializeOwned;

    /// Build the plugin from its configuration. An error refuses the plugin
    /// at host start-up, with this message.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Turn one input into the model's input tensors.
    fn preprocess(&mut self, input: RawInput) -> Result<Vec<Tensor>, ItemError>;

    /// Turn a batch of inputs into tensors, one result per input, in order.
    fn preprocess_batch(&mut self, inputs: Vec<RawInput>) -> Vec<Result<Vec<Tensor>, ItemError>> {
        inputs
            .into_iter()
            .map(|input| self.preprocess(input))
            .collect()
    }
}

/// A postprocessing plugin: output tensors in, a result document out.
pub trait Postprocessor: Sized + 'static {
    /// The plugin's `config` table from the host configuration.
    type Config: serde::de::DeserializeOwned;

    /// Build the plugin from its configuration. An error refuses the plugin
    /// at host start-up, with this message.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Turn one item's output tensors into its result document.
    fn postprocess(&mut self, output: InferenceOutput) -> Result<Document, ItemError>;

    /// Turn a batch of outputs into documents, one result per output, in order.
    fn postprocess_batch(
        &mut self,
        outputs: Vec<InferenceOutput>,
    ) -> Vec<Result<Document, ItemError>> {
        outputs
            .into_iter()
            .map(|output| self.postprocess(output))
            .collect()
    }
}

thread_local! {
    /// The plugin value built by `init`. A component instance is
    /// single-threaded, so a thread-local is the instance's global state.
    static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn parse_config<C: serde::de::DeserializeOwned>(json: &str) -> Result<C, String> {
    // An absent table arrives as `{}`; let serde name missing or unknown keys.
    serde_json::from_str(if json.trim().is_empty() { "{}" } else { json })
        .map_err(|e| format!("invalid plugin config: {e}"))
}

fn with_plugin<P: 'static, R>(not_ready: R, f: impl FnOnce(&mut P) -> R) -> R {
    PLUGIN.with(|cell| {
        match cell
            .borrow_mut()
            .as_mut()
            .and_then(|p| p.downcast_mut::<P>())
        {
            Some(plugin) => f(plugin),
            None => not_ready,
        }
    })
}

fn not_initialized<T>(n: usize) -> Vec<Result<T, ItemError>> {
    (0..n)
        .map(|_| Err(ItemError::internal("plugin used before init")))
        .collect()
}

#[doc(hidden)]
pub mod __export {
    //! Glue called by the export macros; not part of the public API.
    use super::*;

    pub fn preprocess_init<P: Preprocessor>(config: String) -> Result<(), String> {
        let plugin = P::new(parse_config(&config)?)?;
        PLUGIN.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn preprocess<P: Preprocessor>(
        items: Vec<RawInput>,
    ) -> Vec<Result<Vec<Tensor>, ItemError>> {
        let n = items.len();
        with_plugin(not_initialized(n), |p: &mut P| p.preprocess_batch(items))
    }

    pub fn postprocess_init<P: Postprocessor>(config: String) -> Result<(), String> {
        let plugin = P::new(parse_config(&config)?)?;
        PLUGIN.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn postprocess<P: Postprocessor>(
        items: Vec<InferenceOutput>,
    ) -> Vec<Result<Document, ItemError>> {
        let n = items.len();
        with_plugin(not_initialized(n), |p: &mut P| p.postprocess_batch(items))
    }
}

/// Export a [`Preprocessor`] implementation as this component's plugin.
#[macro_export]
macro_rules! export_preprocessor {
    ($plugin:ty) => {
        struct __SluicePreprocessor;
        impl $crate::bindings::preprocessor::exports::sluice::plugin::preprocess::Guest for __SluicePreprocessor {
            fn init(config: String) -> Result<(), String> {
                $crate::__export::preprocess_init::<$plugin>(config)
            }
            fn preprocess(
                items: Vec<$crate::RawInput>,
            ) -> Vec<Result<Vec<$crate::Tensor>, $crate::ItemError>> {
                $crate::__export::preprocess::<$plugin>(items)
            }
        }
        $crate::bindings::preprocessor::export!(
            __SluicePreprocessor with_types_in $crate::bindings::preprocessor
        );
    };
}

/// Export a [`Postprocessor`] implementation as this component's plugin.
#[macro_export]
macro_rules! export_postprocessor {
    ($plugin:ty) => {
        struct __SluicePostprocessor;
        impl $crate::bindings::postprocessor::exports::sluice::plugin::postprocess::Guest for __SluicePostprocessor {
            fn init(config: String) -> Result<(), String> {
                $crate::__export::postprocess_init::<$plugin>(config)
            }
            fn postprocess(
                items: Vec<$crate::InferenceOutput>,
            ) -> Vec<Result<$crate::Document, $crate::ItemError>> {
                $crate::__export::postprocess::<$plugin>(items)
            }
        }
        $crate::bindings::postprocessor::export!(
            __SluicePostprocessor with_types_in $crate::bindings::postprocessor
        );
    };
}

/// The README's example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;

#[cfg(test)]
mod tests {
    #[test]
    fn media_type_drops_parameters_and_case() {
        assert_eq!(super::media_type("Text/CSV; charset=utf-8"), "text/csv");
        assert_eq!(super::media_type(" image/PNG "), "image/png");
        assert_eq!(super::media_type(""), "");
    }
}

#[cfg(test)]
mod version_tests {
    /// The crate's major.minor is the WIT package's, and the WIT it carries
    /// is that package: publishing a new WIT means a new crate version.
    #[test]
    fn the_crate_version_is_tied_to_the_wit_package() {
        let wit = include_str!("../wit/sluice.wit");
        let declared = format!("package {};", super::WIT_PACKAGE);
        assert!(
            wit.contains(&declared),
            "wit/sluice.wit does not declare {declared}"
        );
        let wit_version = super::WIT_PACKAGE.rsplit('@').next().unwrap();
        let major_minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
        assert_eq!(
            major_minor(env!("CARGO_PKG_VERSION")),
            major_minor(wit_version)
        );
    }
}
