//! The other half of a device's conversation with its collector: asking
//! for the bundle a staged rollout offers it (`bundles.from_collector`),
//! through the same transport as its results ([`super::Uplink::offers`]):
//! `GET /v1/devices/{id}/bundle` over HTTP ([`super::http`]), chunk by
//! chunk through the broker over MQTT ([`super::mqtt`]).

use sluice_protocol::operator::ProbationMinimum;
use std::path::Path;

/// A bundle fetched whole, and what its rollout asks of the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offered {
    /// The least probation the rollout asks for (the device keeps the
    /// larger of it and its own setting).
    pub probation: Option<ProbationMinimum>,
}

/// Where the bundle a rollout offers this device comes from.
pub trait Offers: Send {
    /// Where it asks, for messages.
    fn endpoint(&self) -> &str;

    /// Fetch the bundle offered now into `path`: `Ok(Some(_))` once written
    /// whole, `Ok(None)` when none is offered or the offered one is in
    /// `seen` (the SHA-256s the device already handled). At most `limit`
    /// bytes are taken, declared or not. A transport that can resume keeps
    /// what it has in `path`'s folder between calls (files it names
    /// `partial-*`), and checks it before it trusts it. Blocks; must not
    /// be called from an async worker.
    fn fetch(&self, seen: &[String], path: &Path, limit: u64) -> Result<Option<Offered>, String>;
}
