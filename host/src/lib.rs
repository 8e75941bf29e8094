//! # Sluice: edge inference with sandboxed plugins
//!
//! Sluice runs on IoT gateways and edge devices. Third-party WebAssembly
//! plugins prepare inputs and interpret outputs; inference runs natively in
//! the host; results are kept on the device and shipped upstream when the
//! network is there. This crate is the device: the library and the `sluice`
//! binary. The wire types it shares with collectors are in
//! [`sluice_protocol`]; the collector is the separate `sluice-collector`.
//!
//! The stages, one home each:
//!
//! ```text
//! ingest -> preprocess -> schedule -> infer -> postprocess -> outbox -> uplink
//!           \_ plugin _/                      \_ plugin __/
//! ```
//!
//! * [`ingest`]: where inputs enter ([`ingest::Source`]: folder, HTTP);
//! * [`plugin`]: the WebAssembly plugin runtime (sandbox, limits, cache),
//!   which runs the preprocess and postprocess stages;
//! * [`schedule`]: the batch scheduler, the only place inference happens;
//! * [`infer`]: the inference engines behind it ([`infer::Backend`]: tract);
//! * [`pipeline`]: one pipeline's stages joined;
//! * [`outbox`]: the crash-safe on-device store of accepted inputs and of
//!   results awaiting upload;
//! * [`uplink`]: shipping results upstream ([`uplink::Uplink`]: HTTP);
//! * [`drift`]: each pipeline's inputs and outputs, window by window,
//!   against the model's reference profile (no labels needed);
//! * [`record`]: the result record each input becomes;
//! * [`runtime`]: models, plugins and pipelines assembled from a [`Config`];
//! * [`agent`]: `sluice run`, wiring it all together; [`memory`]: its
//!   memory budget, split across plugins, models, ingest and the outbox;
//! * [`bundle`]: a pipeline as a signed, versioned bundle (`sluice bundle`;
//!   format and checks in [`sluice_bundle`]);
//! * [`types`]: the data that flows between stages; [`config`] and
//!   [`error`]: the configuration and start-up errors.

#![deny(missing_docs)]

pub mod agent;
pub mod bundle;
pub use sluice_plugin::bundled;
pub mod config;
#[cfg(test)]
mod config_props;
mod crash;
pub mod deployment;
pub mod drift;
pub mod error;
pub use sluice_infer as infer;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub use sluice_outbox as outbox;
pub mod pipeline;
pub use sluice_plugin as plugin;
pub mod record;
pub mod runtime;
pub use sluice_infer::schedule;
pub use sluice_types as types;
pub mod uplink;
pub mod volume;
pub mod wake;
mod worker;

pub use config::Config;
pub use error::{ConfigError, PluginError};
