//! # sluice-agent: the Sluice device runtime
//!
//! Sluice runs on IoT gateways and edge devices. Third-party WebAssembly
//! plugins prepare inputs and interpret outputs; inference runs natively;
//! results are kept on the device and shipped upstream when the network is
//! there. This crate is the agent: it assembles the capability crates into
//! pipelines and runs them (`sluice run` is its [`agent::Agent`]; a program
//! can embed it the same way, see docs/embedding.md). It parses no flags
//! and prints nothing: the `sluice` binary (`cli/`) does.
//!
//! ```text
//! ingest -> preprocess -> schedule -> infer -> postprocess -> outbox -> uplink
//!           \_ plugin _/                      \_ plugin __/
//! ```
//!
//! What it is built from, each a crate that never imports this one:
//! [`types`] (`sluice-types`: the data between stages, clock, version),
//! [`plugin`] (`sluice-plugin`: the sandboxed plugin host over wasmtime),
//! [`infer`] and [`schedule`] (`sluice-infer`: engines and the batch
//! scheduler, the only place inference happens), [`outbox`]
//! (`sluice-outbox`: the crash-safe store), [`drift`] (`sluice-drift`: the
//! statistics; the observer glue is here), `sluice-protocol` (the wire) and
//! `sluice-bundle` (the signed bundle format).
//!
//! Its own rooms:
//! * [`config`] (one file per section) and [`error`]: the configuration and
//!   start-up errors;
//! * [`ingest`]: where inputs enter ([`ingest::Source`]: folder, HTTP, MQTT);
//! * [`pipeline`]: one pipeline's stages joined; [`runtime`]: models,
//!   plugins and pipelines assembled from a [`Config`]; [`deployment`]: what
//!   a worker runs, swapped by installs;
//! * [`record`]: the result record each input becomes;
//! * [`uplink`]: shipping results upstream ([`uplink::Uplink`]: HTTP, MQTT);
//!   [`consumers`]: handing them to local consumers ([`consumers::Consumer`]:
//!   MQTT, web hook);
//! * [`bundle`]: building and installing signed bundles;
//! * [`metrics`]: events (a facade every stage uses) and the scraper;
//! * [`agent`]: the long-running process, wiring it all; [`memory`]: its
//!   memory budget, split across plugins, models, ingest and the outbox.

#![deny(missing_docs)]

mod admin;
pub mod agent;
pub mod bundle;
pub mod completions;
pub mod consumers;
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
