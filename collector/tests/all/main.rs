//! The collector's integration tests, in one binary: real HTTP on
//! loopback, real SQLite files in temporary folders, every wait bounded.

mod api;
mod batches;
mod common;
mod connections;
mod dashboard;
mod errors;
mod fleet;
mod history;
mod memory;
mod mqtt;
mod paging;
mod postgres;
mod props;
mod rollouts;
mod sessions;
mod store;
