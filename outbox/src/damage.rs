//! Rows that do not hold what the outbox wrote: a column of another
//! storage class (a `body` read back as TEXT instead of BLOB is what one
//! flipped bit in a record's header does), a NULL where the schema says NOT
//! NULL, a size that does not match the record. SQLite's `quick_check`
//! does not see the first and last, and reports the NULLs only as
//! "NULL value in T.C", so they are found here, row by row.
//!
//! Invariants:
//! * one damaged row never stops the others: every read of `records` for
//!   an upload checks each row ([`record_damage`]) and sets a damaged one
//!   aside (kept, counted [`Counter::Damaged`], listed by `sluice outbox
//!   set-aside` with what is wrong, requeued by `sluice outbox requeue`);
//!   the others are sent;
//! * at open, [`Outbox::scrub`] does the same for every record, and
//!   dissolves batches that cannot be read (their records are sent again
//!   under a new key; the collector keeps one copy per id), so that sums
//!   and batches are whole from the start;
//! * a damaged journal row becomes a failed result naming the column
//!   (`journal.rs`, `worker.rs`).

use super::counters::Counter;
use super::journal::storage_class;
use super::set_aside::set_aside;
use super::{Outbox, OutboxError, Sizes};
use rusqlite::Transaction;
use rusqlite::types::ValueRef;

/// The tables whose values of the wrong kind (`quick_check`'s "NULL value
/// in T.C", "NUMERIC value in T.C") are damage of single rows, handled
/// here, rather than of the file.
pub(super) const ROW_LEVEL_TABLES: [&str; 3] = ["records", "batches", "journal"];

/// The SQL condition a `records` row the outbox wrote meets (the checks of
/// [`record_damage`], for finding the others in one scan).
const WELL_FORMED: &str = "typeof(id) = 'text' AND typeof(created_at_ms) = 'integer' \
     AND typeof(body) = 'blob' AND typeof(bytes) = 'integer' \
     AND bytes = length(CAST(id AS BLOB)) + length(body) \
     AND (batch IS NULL OR typeof(batch) = 'integer')";

/// An upload batch that cannot be read (its key is sent upstream).
const BAD_BATCH: &str = "typeof(key) != 'text' OR typeof(created_at_ms) != 'integer'";

/// A record naming a batch that cannot be (or no longer is) its batch.
const BAD_BATCH_OF_RECORD: &str = "batch IS NOT NULL \
     AND (typeof(batch) != 'integer' OR batch NOT IN (SELECT id FROM batches))";

/// What is wrong with a `records` row, given its `id`, `created_at_ms`,
/// `bytes`, `body` and `batch`; `None` if it is as the outbox writes it.
pub(super) fn record_damage(
    id: ValueRef,
    created_at_ms: ValueRef,
    bytes: ValueRef,
    body: ValueRef,
    batch: ValueRef,
) -> Option<String> {
    let mut wrong = Vec::new();
    let mut expect = |column: &str, value: ValueRef, ok: bool, class: &str| {
        if !ok {
            wrong.push(format!(
                "`{column}` holds {}, not {class}",
                storage_class(value)
            ));
        }
    };
    expect("id", id, matches!(id, ValueRef::Text(_)), "TEXT");
    expect(
        "created_at_ms",
        created_at_ms,
        matches!(created_at_ms, ValueRef::Integer(_)),
        "INTEGER",
    );
    expect(
        "bytes",
        bytes,
        matches!(bytes, ValueRef::Integer(_)),
        "INTEGER",
    );
    expect("body", body, matches!(body, ValueRef::Blob(_)), "BLOB");
    expect(
        "batch",
        batch,
        matches!(batch, ValueRef::Integer(_) | ValueRef::Null),
        "INTEGER or NULL",
    );
    if let ValueRef::Text(text) = id
        && std::str::from_utf8(text).is_err()
    {
        wrong.push("`id` is not UTF-8".into());
    }
    if let (ValueRef::Text(id), ValueRef::Integer(bytes), ValueRef::Blob(body)) = (id, bytes, body)
    {
        let size = id.len() as u64 + body.len() as u64;
        if u64::try_from(bytes).ok() != Some(size) {
            wrong.push(format!("`bytes` says {bytes}, the record holds {size}"));
        }
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "damaged in the outbox (cannot be read as written): {}",
            wrong.join(", ")
        )
    })
}

/// Set damaged record `rowid` aside for `reason`, counted as damaged.
pub(super) fn set_aside_damaged(
    tx: &Transaction,
    sizes: &mut Sizes,
    rowid: i64,
    reason: &str,
    max_set_aside_bytes: u64,
) -> rusqlite::Result<()> {
    tracing::error!(
        record = rowid,
        "outbox record set aside (see `sluice outbox set-aside`): {reason}"
    );
    set_aside(
        tx,
        sizes,
        rowid,
        reason,
        max_set_aside_bytes,
        Counter::Damaged,
    )
}

impl Outbox {
    /// At open: set aside every record that cannot be read as written, and
    /// dissolve every batch that cannot be (or that its records cannot
    /// name). Returns how many records were set aside.
    pub(super) fn scrub(&self) -> Result<u64, OutboxError> {
        // Most opens find nothing: no write transaction for them (one would
        // fail on a full disk, where the outbox must still open).
        let any: bool = self.read(|conn| {
            conn.query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM records WHERE NOT ({WELL_FORMED}))
                     OR EXISTS (SELECT 1 FROM batches WHERE {BAD_BATCH})
                     OR EXISTS (SELECT 1 FROM records WHERE {BAD_BATCH_OF_RECORD})"
                ),
                [],
                |r| r.get(0),
            )
        })?;
        if !any {
            return Ok(0);
        }
        let max = self.config.max_set_aside_bytes;
        self.write(|tx, sizes| {
            let damaged: Vec<(i64, String)> = tx
                .prepare(&format!(
                    "SELECT rowid, id, created_at_ms, bytes, body, batch FROM records WHERE NOT ({WELL_FORMED})"
                ))?
                .query_map([], |r| {
                    let reason = record_damage(
                        r.get_ref(1)?,
                        r.get_ref(2)?,
                        r.get_ref(3)?,
                        r.get_ref(4)?,
                        r.get_ref(5)?,
                    );
                    Ok((r.get(0)?, reason.unwrap_or_default()))
                })?
                .collect::<Result<_, _>>()?;
            for (rowid, reason) in &damaged {
                set_aside_damaged(tx, sizes, *rowid, reason, max)?;
            }
            let batches = tx.execute(&format!("DELETE FROM batches WHERE {BAD_BATCH}"), [])?;
            let records = tx.execute(
                &format!("UPDATE records SET batch = NULL WHERE {BAD_BATCH_OF_RECORD}"),
                [],
            )?;
            if batches + records > 0 {
                tracing::warn!(
                    batches,
                    records,
                    "outbox: damaged upload batches dissolved; their records go out again under new keys"
                );
            }
            Ok(damaged.len() as u64)
        })
    }
}
