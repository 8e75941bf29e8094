//! `[outbox]` of the device's configuration: the store's bounds. Parsed by
//! the agent's config loader (which checks the ranges of docs/limits.md);
//! defaults here, once.

use serde::Deserialize;

/// SQLite's page caches of the outbox's connections (`PRAGMA
/// cache_size`), made explicit so that the agent's memory budget can count
/// them: the writer's ([`WRITER_CACHE_BYTES`], SQLite's own default) and
/// the local readers' ([`READER_CACHE_BYTES`]).
pub const CACHE_BYTES: u64 = WRITER_CACHE_BYTES + READER_CACHE_BYTES;

/// The page cache of the connection everything but local reads use.
pub const WRITER_CACHE_BYTES: u64 = 2 << 20;

/// The page cache of the connection the device's own readers of kept
/// results use (`GET /v1/results`, consumers): they read the newest rows.
pub const READER_CACHE_BYTES: u64 = 256 << 10;

/// `[outbox]`: bounds of the on-device result store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Most bytes of pending results (ids plus documents) kept on the device.
    pub max_bytes: u64,
    /// Results older than this are dropped (counted as `expired`); 0 keeps
    /// them until the byte cap applies.
    pub max_age_secs: u64,
    /// What to do when a new result does not fit under `max_bytes`.
    pub when_full: FullPolicy,
    /// Most bytes of records the collector refused, kept aside for an
    /// operator (`sluice outbox set-aside`); past it the oldest are deleted
    /// (counted as `set_aside_dropped`).
    pub max_set_aside_bytes: u64,
    /// Disk space kept in reserve beside the outbox (`outbox.sqlite.reserve`)
    /// and given back when an upload's acknowledgement finds the disk full,
    /// so that uploads can always free space; 0: none.
    pub disk_reserve_bytes: u64,
    /// Most bytes of results kept for the device's own readers (the
    /// agent's `GET /v1/results`), whether or not they were synced; past
    /// it the oldest go; default 16 MiB; 0: none are kept (and no local
    /// consumer can run). Keeping them writes every result twice (measured
    /// on a 2-core machine: about a quarter of the commit throughput of the
    /// outbox alone, which commits tens of thousands of results a second).
    pub local_max_bytes: u64,
    /// Results kept for local readers are deleted after this long; 0: only
    /// `local_max_bytes` applies.
    pub local_max_age_secs: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_age_secs: 7 * 24 * 3600,
            when_full: FullPolicy::default(),
            max_set_aside_bytes: 16 << 20,
            disk_reserve_bytes: 4 << 20,
            local_max_bytes: 16 << 20,
            local_max_age_secs: 3600,
        }
    }
}

/// What the outbox does with a result that does not fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FullPolicy {
    /// Delete the oldest pending results until the new one fits (counted as
    /// `dropped_oldest`): recent data matters most on a device that was
    /// offline for long.
    #[default]
    DropOldest,
    /// Keep what is stored, refuse the new result (counted as `rejected_full`).
    RejectNew,
}
