//! What the outbox remembers about itself: persisted counters (`counters`),
//! the outcome of the last sync (`meta`), and the [`Status`] built from
//! them for `sluice outbox status`.
//!
//! Invariants:
//! * Every persisted counter is a [`Counter`], named once by
//!   [`Counter::name`]; the names are the keys in the file and in
//!   [`Status::counters`], so they never change.
//! * A counter is bumped in the transaction that did what it counts, so it
//!   survives exactly what the change survives; counters only grow.
//! * [`Outbox::status`] reads the file, not the in-memory mirrors, so a
//!   read-only handle sees what a running agent has committed.

use super::{Outbox, OutboxError};
use rusqlite::{Connection, OptionalExtension, params};
use sluice_types::now_ms;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A persisted counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Counter {
    /// Records stored (every result that entered the outbox).
    Stored,
    /// Records acknowledged by the collector.
    Uploaded,
    /// Records deleted to make room under `drop-oldest`.
    DroppedOldest,
    /// New records refused under `reject-new`.
    RejectedFull,
    /// Records larger than the whole cap, refused under either policy.
    RejectedTooLarge,
    /// Records older than `max_age_secs`, deleted.
    Expired,
    /// Records the collector refused as invalid, each found alone by
    /// splitting its batch, and set aside (kept, see `set_aside`).
    RejectedUpstream,
    /// Set-aside records deleted to stay under `max_set_aside_bytes`.
    SetAsideDropped,
    /// Records already stored under the same id (an input processed twice).
    Duplicates,
    /// Records found damaged in the outbox (a column of the wrong storage
    /// class, a NULL, a size that does not match), set aside (kept, see
    /// `damage`).
    Damaged,
}

impl Counter {
    /// Every counter, in the order `sluice outbox status` lists them.
    pub const ALL: [Counter; 10] = [
        Counter::Stored,
        Counter::Uploaded,
        Counter::DroppedOldest,
        Counter::RejectedFull,
        Counter::RejectedTooLarge,
        Counter::Expired,
        Counter::RejectedUpstream,
        Counter::SetAsideDropped,
        Counter::Duplicates,
        Counter::Damaged,
    ];

    /// The counter's name in the file and in [`Status::counters`].
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Stored => "stored",
            Counter::Uploaded => "uploaded",
            Counter::DroppedOldest => "dropped_oldest",
            Counter::RejectedFull => "rejected_full",
            Counter::RejectedTooLarge => "rejected_too_large",
            Counter::Expired => "expired",
            Counter::RejectedUpstream => "rejected_upstream",
            Counter::SetAsideDropped => "set_aside_dropped",
            Counter::Duplicates => "duplicates",
            Counter::Damaged => "damaged",
        }
    }
}

/// Names of the persisted counters, as strings (see [`Counter`]).
pub mod counter {
    use super::Counter;

    /// [`Counter::Stored`].
    pub const STORED: &str = Counter::Stored.name();
    /// [`Counter::DroppedOldest`].
    pub const DROPPED_OLDEST: &str = Counter::DroppedOldest.name();
    /// [`Counter::RejectedFull`].
    pub const REJECTED_FULL: &str = Counter::RejectedFull.name();
    /// [`Counter::RejectedTooLarge`].
    pub const REJECTED_TOO_LARGE: &str = Counter::RejectedTooLarge.name();
    /// [`Counter::Expired`].
    pub const EXPIRED: &str = Counter::Expired.name();
    /// [`Counter::RejectedUpstream`].
    pub const REJECTED_UPSTREAM: &str = Counter::RejectedUpstream.name();
    /// [`Counter::SetAsideDropped`].
    pub const SET_ASIDE_DROPPED: &str = Counter::SetAsideDropped.name();
    /// [`Counter::Uploaded`].
    pub const UPLOADED: &str = Counter::Uploaded.name();
    /// [`Counter::Duplicates`].
    pub const DUPLICATES: &str = Counter::Duplicates.name();
    /// [`Counter::Damaged`].
    pub const DAMAGED: &str = Counter::Damaged.name();
}

/// Keys of the sync outcome in `meta`.
const LAST_SYNC_AT_MS: &str = "last_sync_at_ms";
const LAST_ERROR: &str = "last_error";
const LAST_ERROR_AT_MS: &str = "last_error_at_ms";

/// What [`Outbox::status`] reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// The outbox file.
    pub path: PathBuf,
    /// Results waiting for upload.
    pub pending_records: u64,
    /// Their bytes (ids and documents).
    pub pending_bytes: u64,
    /// `outbox.max_bytes`.
    pub max_bytes: u64,
    /// When the oldest waiting result was stored, ms since the Unix epoch.
    pub oldest_created_at_ms: Option<i64>,
    /// Batches formed and sent (or being sent), not yet acknowledged.
    pub batches_in_flight: u64,
    /// Records the collector refused, kept aside (see `sluice outbox set-aside`).
    pub set_aside_records: u64,
    /// Their bytes.
    pub set_aside_bytes: u64,
    /// Inputs accepted and not yet processed.
    pub journal_items: u64,
    /// Their bytes.
    pub journal_bytes: u64,
    /// When an upload last succeeded or found nothing to send.
    pub last_sync_at_ms: Option<i64>,
    /// Why the last upload failed, if it failed after the last success.
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at_ms: Option<i64>,
    /// Every persisted counter by name (see [`Counter`]).
    pub counters: BTreeMap<String, i64>,
}

/// What [`Outbox::backlog_after`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// Results waiting, the batch's left out.
    pub pending_records: u64,
    /// When the oldest of them was stored, ms since the Unix epoch.
    pub oldest_created_at_ms: Option<i64>,
    /// Inputs accepted and not yet processed.
    pub journal_items: u64,
    /// Records set aside.
    pub set_aside_records: u64,
}

impl Outbox {
    /// Counters, last sync, sizes: what `sluice outbox status` shows.
    pub fn status(&self) -> Result<Status, OutboxError> {
        self.read(|conn| {
            let (pending_bytes, pending_records, oldest): (i64, i64, Option<i64>) = conn
                .query_row(
                    concat!(
                        "SELECT COALESCE(SUM(",
                        record_size!(),
                        "), 0), COUNT(*), MIN(CASE WHEN typeof(created_at_ms) = 'integer' THEN created_at_ms END) FROM records"
                    ),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
            let batches: i64 = conn.query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0))?;
            let (journal_items, journal_bytes): (i64, i64) = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM journal",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (set_aside_records, set_aside_bytes): (i64, i64) = conn.query_row(
                concat!(
                    "SELECT COUNT(*), COALESCE(SUM(",
                    record_size!(),
                    "), 0) FROM set_aside"
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut counters: BTreeMap<String, i64> = Counter::ALL
                .iter()
                .map(|c| (c.name().to_owned(), 0))
                .collect();
            let mut select = conn.prepare("SELECT name, value FROM counters")?;
            for row in
                select.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            {
                let (name, value) = row?;
                counters.insert(name, value);
            }
            let meta = |key: &str| -> rusqlite::Result<Option<String>> {
                conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                    .optional()
            };
            Ok(Status {
                path: self.path.clone(),
                pending_records: pending_records as u64,
                pending_bytes: pending_bytes as u64,
                max_bytes: self.config.max_bytes,
                oldest_created_at_ms: oldest,
                batches_in_flight: batches as u64,
                set_aside_records: set_aside_records as u64,
                set_aside_bytes: set_aside_bytes as u64,
                journal_items: journal_items as u64,
                journal_bytes: journal_bytes as u64,
                last_sync_at_ms: meta(LAST_SYNC_AT_MS)?.and_then(|v| v.parse().ok()),
                last_error: meta(LAST_ERROR)?,
                last_error_at_ms: meta(LAST_ERROR_AT_MS)?.and_then(|v| v.parse().ok()),
                counters,
            })
        })
    }

    /// The backlog left once batch `batch` is acknowledged (what an upload
    /// of it reports upstream): cheap enough for every batch, the pending
    /// count from memory and the oldest record found by its row order.
    pub fn backlog_after(&self, batch: &super::Batch) -> Result<Backlog, OutboxError> {
        let (pending, _) = self.pending();
        self.read(|conn| {
            let oldest: Option<i64> = conn
                .query_row(
                    "SELECT created_at_ms FROM records WHERE batch IS NOT ?1 AND typeof(created_at_ms) = 'integer' ORDER BY rowid LIMIT 1",
                    [batch.id],
                    |r| r.get(0),
                )
                .optional()?;
            let journal_items: i64 =
                conn.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))?;
            let set_aside_records: i64 =
                conn.query_row("SELECT COUNT(*) FROM set_aside", [], |r| r.get(0))?;
            Ok(Backlog {
                pending_records: pending.saturating_sub(batch.records.len() as u64),
                oldest_created_at_ms: oldest,
                journal_items: journal_items as u64,
                set_aside_records: set_aside_records as u64,
            })
        })
    }

    /// A persisted counter's value, by name (see [`counter`]).
    pub fn counter(&self, name: &str) -> Result<i64, OutboxError> {
        self.read(|conn| {
            conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0))
        })
    }

    /// Remember why the last sync attempt failed (shown by `outbox status`).
    pub fn record_sync_error(&self, message: &str) -> Result<(), OutboxError> {
        self.freeing(|| self.write(|tx, _| note_sync_error(tx, message)))
    }

    /// Remember that the collector was reached and nothing was pending.
    pub fn record_sync_ok(&self) -> Result<(), OutboxError> {
        self.freeing(|| self.write(|tx, _| note_sync_ok(tx)))
    }
}

/// Add `n` to `counter` (nothing for 0).
pub(super) fn bump(conn: &Connection, counter: Counter, n: u64) -> rusqlite::Result<()> {
    if n > 0 {
        conn.prepare_cached(
            "INSERT INTO counters(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        )?
        .execute(params![counter.name(), n as i64])?;
    }
    Ok(())
}

/// Note a successful sync, now. It clears the last error: `outbox status`
/// shows what is wrong now, not a failure the device has recovered from.
pub(super) fn note_sync_ok(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM meta WHERE key IN (?1, ?2)")?
        .execute([LAST_ERROR, LAST_ERROR_AT_MS])?;
    set_meta(conn, LAST_SYNC_AT_MS, &now_ms().to_string())
}

/// Note a failed sync and why, now.
pub(super) fn note_sync_error(conn: &Connection, reason: &str) -> rusqlite::Result<()> {
    set_meta(conn, LAST_ERROR, reason)?;
    set_meta(conn, LAST_ERROR_AT_MS, &now_ms().to_string())
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_are_unique_and_match_the_string_constants() {
        let names: std::collections::BTreeSet<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Counter::ALL.len());
        for name in [
            counter::STORED,
            counter::DROPPED_OLDEST,
            counter::REJECTED_FULL,
            counter::REJECTED_TOO_LARGE,
            counter::EXPIRED,
            counter::REJECTED_UPSTREAM,
            counter::SET_ASIDE_DROPPED,
            counter::UPLOADED,
            counter::DUPLICATES,
            counter::DAMAGED,
        ] {
            assert!(names.contains(name), "{name}");
        }
    }
}
