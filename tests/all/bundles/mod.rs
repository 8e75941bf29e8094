//! Signed bundles: made, signed and verified by an operator with the real
//! `sluice` binary (operator), installed on a running device (install), and
//! rolled out to a fleet (rollout), through the operator API (control). The harness they share, also used by
//! `agent` and `power`, is in `harness`.

mod harness;

mod control;
mod install;
mod operator;
mod rollout;

pub(crate) use harness::{bundle_of, drop_into, example_table, write_config};
