//! The other half of a device's conversation with its collector: asking
//! for the bundle a staged rollout offers it (`bundles.from_collector`),
//! through the same transport as its results ([`super::Uplink::offers`]):
//! `GET /v1/devices/{id}/bundle` over HTTP ([`super::http`]), chunk by
//! chunk through the broker over MQTT ([`super::mqtt`]).

use std::path::Path;

/// Where the bundle a rollout offers this device comes from.
pub trait Offers: Send {
    /// Where it asks, for messages.
    fn endpoint(&self) -> &str;

    /// Fetch the bundle offered now into `path`: `Ok(true)` once written
    /// whole, `Ok(false)` when none is offered or the offered one is in
    /// `seen` (the SHA-256s the device already handled). At most `limit`
    /// bytes are taken, declared or not. A transport that can resume keeps
    /// what it has in `path`'s folder between calls (files it names
    /// `partial-*`), and checks it before it trusts it. Blocks; must not
    /// be called from an async worker.
    fn fetch(&self, seen: &[String], path: &Path, limit: u64) -> Result<bool, String>;
}
