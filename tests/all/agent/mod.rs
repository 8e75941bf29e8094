//! `sluice run` as a real child process against a real collector on
//! loopback: kills and restarts (crash), HTTP ingest, folder inputs,
//! memory and disk bounds (resources), readiness and metrics (health). The
//! harness they share, also used by `agent_hostile` and `power`, is in
//! `harness`.

mod harness;

mod consumers;
mod crash;
mod folder;
mod health;
mod infer;
mod ingest;
mod local_loop;
mod mqtt_in;
mod resources;
mod results;

pub(crate) use harness::{
    Agent, DEVICE, check_recovered, collector, images, ingest, install_state, stored, wait_until,
    with_bundles, write_config,
};
