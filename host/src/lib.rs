//! # Sluice: edge inference with sandboxed plugins
//!
//! Sluice runs on IoT gateways and edge devices. Third-party WebAssembly
//! plugins prepare inputs and interpret outputs; inference runs natively in
//! the host; results are kept on the device and shipped upstream when the
//! network is there.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! ingest -> preprocess -> schedule/batch -> infer -> postprocess -> outbox -> sync
//!           \_______ plugin ______/                   \__ plugin __/
//! ```
//!
//! * [`types`]: the data that flows between stages;
//! * [`ingest`]: inputs from files and folders;
//! * [`plugin`]: the WebAssembly plugin runtime (sandbox, limits, cache),
//!   which runs the preprocess and postprocess stages;
//! * [`schedule`]: the batch scheduler, the only place inference happens;
//! * [`infer`]: the inference backends behind it (tract);
//! * [`pipeline`]: one pipeline's stages joined;
//! * [`runtime`]: everything assembled from a [`config::Config`];
//! * [`outbox`]: the crash-safe on-device store of accepted inputs and of
//!   results awaiting upload;
//! * [`sync`]: the uploader shipping results to a collector;
//! * [`collector`]: the upstream HTTP service receiving them;
//! * [`agent`]: `sluice run`, the long-running device agent joining it all.

pub mod agent;
pub mod bundled;
pub mod cli;
pub mod collector;
pub mod config;
pub mod demo;
pub mod error;
pub mod infer;
pub mod ingest;
pub mod outbox;
pub mod pipeline;
pub mod plugin;
pub mod runtime;
pub mod schedule;
pub mod sync;
pub mod types;

pub use config::Config;
pub use error::{ConfigError, PluginError};
