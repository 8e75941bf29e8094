//! Records the collector refused, and records found damaged in the outbox
//! (`set_aside`): kept, counted and reported, never deleted with the good
//! records they were sent with, never in their way.
//!
//! Invariants:
//! * A record arrives here alone: the uploader splits a refused batch in
//!   halves ([`Outbox::split_batch`]) until the record still refused is
//!   alone, so one bad record never costs the others their delivery.
//! * Moving a record here, deleting it from `records` and counting it as
//!   `rejected_upstream` is one transaction.
//! * Bounded: at most `outbox.max_set_aside_bytes` (ids plus documents);
//!   past it the oldest set-aside records are deleted, counted as
//!   `set_aside_dropped`. They also expire after `max_age_secs`, counted as
//!   `expired`, like pending records.
//! * [`Outbox::requeue_set_aside`] puts them back to pending (once the
//!   collector was fixed), under the pending cap and its policy.

use super::counters::{Counter, bump, note_sync_error};
use super::records::{AppendReport, NewRecord, store};
use super::{Outbox, OutboxError, Sizes};
use rusqlite::{Transaction, params};
use sluice_types::now_ms;

/// A record set aside, as `sluice outbox set-aside` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetAside {
    /// The record's id.
    pub id: String,
    /// Why the collector refused it.
    pub reason: String,
    /// When it was set aside, ms since the Unix epoch.
    pub set_aside_at_ms: i64,
    /// Its size (id and document).
    pub bytes: u64,
}

/// Move pending record `rowid` to `set_aside` with `reason`, counted under
/// `counter` ([`Counter::RejectedUpstream`]: the collector refused it, which
/// is also the sync's last error; [`Counter::Damaged`]: it cannot be read
/// as written), keeping the table under `max_bytes`.
///
/// The row may be damaged, so every column is copied by what it holds, not
/// by what it should hold: the kept copy is always well-formed (the body as
/// bytes, its size recomputed, a made-up id for a record that lost its
/// own), ready to be listed and requeued.
pub(super) fn set_aside(
    tx: &Transaction,
    sizes: &mut Sizes,
    rowid: i64,
    reason: &str,
    max_bytes: u64,
    counter: Counter,
) -> rusqlite::Result<()> {
    let counted: i64 = tx.query_row(
        concat!("SELECT ", record_size!(), " FROM records WHERE rowid = ?1"),
        [rowid],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO set_aside(id, created_at_ms, set_aside_at_ms, bytes, body, reason)
         SELECT id, created_at_ms, ?2, length(CAST(id AS BLOB)) + length(body), body, ?3 FROM (
             SELECT CASE WHEN typeof(id) = 'text' THEN id
                         ELSE printf('(damaged id: outbox record %d)', rowid) END AS id,
                    CASE WHEN typeof(created_at_ms) = 'integer' THEN created_at_ms ELSE ?2 END
                        AS created_at_ms,
                    CAST(COALESCE(body, x'') AS BLOB) AS body
             FROM records WHERE rowid = ?1)",
        params![rowid, now_ms(), reason],
    )?;
    tx.execute("DELETE FROM records WHERE rowid = ?1", [rowid])?;
    sizes.pending_bytes = sizes.pending_bytes.saturating_sub(counted as u64);
    sizes.pending_records = sizes.pending_records.saturating_sub(1);
    bump(tx, counter, 1)?;
    if counter == Counter::RejectedUpstream {
        note_sync_error(tx, reason)?;
    }
    let mut dropped = 0u64;
    loop {
        let total: i64 = tx.query_row(
            concat!(
                "SELECT COALESCE(SUM(",
                record_size!(),
                "), 0) FROM set_aside"
            ),
            [],
            |r| r.get(0),
        )?;
        if total as u64 <= max_bytes {
            break;
        }
        tx.execute(
            "DELETE FROM set_aside WHERE rowid = (SELECT rowid FROM set_aside ORDER BY set_aside_at_ms, rowid LIMIT 1)",
            [],
        )?;
        dropped += 1;
    }
    bump(tx, Counter::SetAsideDropped, dropped)
}

/// Delete set-aside records created before `cutoff_ms`; how many.
pub(super) fn expire(tx: &Transaction, cutoff_ms: i64) -> rusqlite::Result<u64> {
    let n = tx.execute(
        "DELETE FROM set_aside WHERE created_at_ms < ?1",
        [cutoff_ms],
    )? as u64;
    bump(tx, Counter::Expired, n)?;
    Ok(n)
}

impl Outbox {
    /// The records set aside, oldest first, at most `limit`.
    pub fn set_aside_records(&self, limit: u32) -> Result<Vec<SetAside>, OutboxError> {
        self.read(|conn| {
            conn.prepare(
                "SELECT id, reason, set_aside_at_ms, bytes FROM set_aside ORDER BY set_aside_at_ms, rowid LIMIT ?1",
            )?
            .query_map([limit], |r| {
                Ok(SetAside {
                    id: r.get(0)?,
                    reason: r.get(1)?,
                    set_aside_at_ms: r.get(2)?,
                    bytes: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect()
        })
    }

    /// Put every set-aside record back to pending, to be sent again (after
    /// the collector that refused them was fixed), under the pending cap.
    /// `stored` counts the records requeued.
    pub fn requeue_set_aside(&self) -> Result<AppendReport, OutboxError> {
        self.write(|tx, sizes| {
            let records: Vec<NewRecord> = tx
                .prepare("SELECT id, body FROM set_aside ORDER BY set_aside_at_ms, rowid")?
                .query_map([], |r| {
                    Ok(NewRecord {
                        id: r.get(0)?,
                        body: r.get(1)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            tx.execute("DELETE FROM set_aside", [])?;
            let report = store(tx, sizes, &self.config, &records)?;
            for (counter, n) in report.counts() {
                // They were counted as stored when they were made.
                if counter != Counter::Stored {
                    bump(tx, counter, n)?;
                }
            }
            Ok(report)
        })
    }
}
