//! The upload ledger (`batches`): which pending records go out together,
//! under which idempotency key, until the collector answers.
//!
//! Invariants:
//! * A batch is committed (its key, and each of its records' `batch`
//!   column) *before* [`Outbox::next_batch`] returns it, so a retry, even
//!   after a restart, sends the same records under the same key.
//! * Batches go out oldest first, one at a time: while one is
//!   unacknowledged, [`Outbox::next_batch`] returns it again rather than
//!   forming another.
//! * A batch's records leave the outbox only with its acknowledgement
//!   ([`Outbox::ack_batch`], counted as `uploaded`) or a permanent refusal
//!   ([`Outbox::reject_batch`], counted as `rejected_upstream`), in the same
//!   transaction that deletes the batch and notes the sync's outcome.
//! * A batch that loses records to the cap or the age limit is dissolved:
//!   the rest go back to pending and are sent again under a new key. A
//!   batch left with no records at all is deleted, not sent.

use super::counters::{Counter, note_sync_error, note_sync_ok};
use super::records::Selection;
use super::{Outbox, OutboxError, now_ms};
use rusqlite::{OptionalExtension, Transaction, params};

/// Records formed into one upload. The same batch (same key, same records)
/// comes back from [`Outbox::next_batch`] until it is acknowledged.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Its row in the outbox (for acknowledging it).
    pub id: i64,
    /// The idempotency key sent upstream.
    pub key: String,
    /// `(id, body)` in storage order.
    pub records: Vec<(String, Vec<u8>)>,
}

impl Outbox {
    /// The batch to upload next: the oldest unacknowledged one if any (same
    /// key, same records, also after a restart), else a new one of up to
    /// `max_records` records and about `max_bytes` bytes, committed before it
    /// is returned. `None` when nothing is pending.
    pub fn next_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, OutboxError> {
        self.write(|tx, _| {
            let existing: Option<(i64, String)> = tx
                .query_row("SELECT id, key FROM batches ORDER BY id LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((id, key)) = existing {
                let records = batch_records(tx, id)?;
                if !records.is_empty() {
                    return Ok(Some(Batch { id, key, records }));
                }
                // Every record of it was dropped or expired: nothing to send.
                tx.execute("DELETE FROM batches WHERE id = ?1", [id])?;
            }
            let rows = unbatched(tx, max_records, max_bytes)?;
            if rows.is_empty() {
                return Ok(None);
            }
            // 128 random bits: unique across devices, restarts and outbox files.
            let key = format!("{:032x}", rand::random::<u128>());
            tx.execute(
                "INSERT INTO batches(key, created_at_ms) VALUES (?1, ?2)",
                params![key, now_ms()],
            )?;
            let id = tx.last_insert_rowid();
            let mut assign = tx.prepare_cached("UPDATE records SET batch = ?1 WHERE rowid = ?2")?;
            for (rowid, _, _) in &rows {
                assign.execute([id, *rowid])?;
            }
            let records = rows.into_iter().map(|(_, id, body)| (id, body)).collect();
            Ok(Some(Batch { id, key, records }))
        })
    }

    /// The collector acknowledged batch `batch_id`: delete its records.
    pub fn ack_batch(&self, batch_id: i64) -> Result<u64, OutboxError> {
        self.remove_batch(batch_id, Counter::Uploaded, None)
    }

    /// The collector refused batch `batch_id` for good: delete its records,
    /// count them as `rejected_upstream` and keep `reason` as the last error.
    pub fn reject_batch(&self, batch_id: i64, reason: &str) -> Result<u64, OutboxError> {
        self.remove_batch(batch_id, Counter::RejectedUpstream, Some(reason))
    }

    fn remove_batch(
        &self,
        batch_id: i64,
        counter: Counter,
        error: Option<&str>,
    ) -> Result<u64, OutboxError> {
        self.delete_records(Selection::InBatch(batch_id), counter, |tx, _| {
            tx.execute("DELETE FROM batches WHERE id = ?1", [batch_id])?;
            match error {
                None => note_sync_ok(tx),
                Some(reason) => note_sync_error(tx, reason),
            }
        })
    }
}

/// `(rowid, id, body)` of the oldest records in no batch: up to
/// `max_records`, and no more than `max_bytes` of bodies unless the first
/// alone is larger (it still goes, alone).
fn unbatched(
    tx: &Transaction,
    max_records: usize,
    max_bytes: usize,
) -> rusqlite::Result<Vec<(i64, String, Vec<u8>)>> {
    let mut select = tx.prepare_cached(
        "SELECT rowid, id, body FROM records WHERE batch IS NULL ORDER BY rowid LIMIT ?1",
    )?;
    let mut rows = Vec::new();
    let mut total = 0usize;
    let mut query = select.query([max_records as i64])?;
    while let Some(row) = query.next()? {
        let body: Vec<u8> = row.get(2)?;
        if !rows.is_empty() && total + body.len() > max_bytes {
            break;
        }
        total += body.len();
        rows.push((row.get(0)?, row.get(1)?, body));
    }
    Ok(rows)
}

fn batch_records(tx: &Transaction, batch: i64) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    tx.prepare_cached("SELECT id, body FROM records WHERE batch = ?1 ORDER BY rowid")?
        .query_map([batch], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Put batch `batch`'s records back to pending and forget the batch.
pub(super) fn dissolve_batch(tx: &Transaction, batch: i64) -> rusqlite::Result<()> {
    tx.execute("UPDATE records SET batch = NULL WHERE batch = ?1", [batch])?;
    tx.execute("DELETE FROM batches WHERE id = ?1", [batch])?;
    Ok(())
}

/// Dissolve every batch holding a record of `which`.
pub(super) fn dissolve_batches_of(tx: &Transaction, which: Selection) -> rusqlite::Result<()> {
    let batches: Vec<i64> = tx
        .prepare_cached(which.batches_sql())?
        .query_map(which.bind(), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for batch in batches {
        dissolve_batch(tx, batch)?;
    }
    Ok(())
}
