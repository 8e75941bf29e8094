//! Sluice's integration tests, one binary (as wasmtime's `tests/all` and
//! ripgrep's `tests/tests.rs`), so the whole dependency graph is linked once.
//! Real plugins compiled to wasm, real models, real SQLite, a real collector
//! on loopback, the real `sluice` binary.

mod common;
mod fault_proxy;

mod agent;
mod agent_hostile;
mod authoring;
mod bundled_plugins;
mod bundles;
mod cli;
mod drift;
mod engines;
mod fleet;
mod inference;
mod outbox;
mod outbox_damage;
mod plugin_commands;
mod plugins;
mod plugins_wasi_nn;
mod power;
mod props;
mod refusals;
mod sync;
mod sync_hostile;
mod sync_tls;
mod timeouts;
