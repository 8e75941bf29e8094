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
//!   ([`Outbox::ack_batch`], counted as `uploaded`), in the same transaction
//!   that deletes the batch and notes the sync's outcome. A batch refused as
//!   invalid is split ([`Outbox::split_batch`]) until the refused record is
//!   alone, and only that one is set aside.
//! * A batch that loses records to the cap or the age limit is dissolved:
//!   the rest go back to pending and are sent again under a new key. A
//!   batch left with no records at all is deleted, not sent.

use super::counters::{Counter, note_sync_error, note_sync_ok};
use super::damage::{record_damage, set_aside_damaged};
use super::records::Selection;
use super::{Outbox, OutboxError, Sizes};
use rusqlite::types::ValueRef;
use rusqlite::{OptionalExtension, Transaction, params};
use sluice_types::now_ms;

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
    /// When each record was stored (ms since the Unix epoch), in the same
    /// order: for the acknowledgement lag.
    pub stored_at_ms: Vec<i64>,
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
        self.freeing(|| self.form_next_batch(max_records, max_bytes))
    }

    fn form_next_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, OutboxError> {
        let max_set_aside = self.config.max_set_aside_bytes;
        self.write(|tx, sizes| {
            let existing: Option<(i64, Option<String>)> = tx
                .query_row("SELECT id, key FROM batches ORDER BY id LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get_ref(1)?.as_str().ok().map(str::to_owned)))
                })
                .optional()?;
            if let Some((id, key)) = existing {
                let rows = checked(tx, sizes, max_set_aside, Selected::Batch(id))?;
                match key {
                    Some(key) if !rows.is_empty() => {
                        let (records, stored_at_ms) = rows
                            .into_iter()
                            .map(|row| ((row.id, row.body), row.stored_at_ms))
                            .unzip();
                        return Ok(Some(Batch {
                            id,
                            key,
                            records,
                            stored_at_ms,
                        }));
                    }
                    // Every record of it was dropped, expired or set aside:
                    // nothing to send. A key that cannot be read (damage):
                    // its records go again under a new one.
                    _ => dissolve_batch(tx, id)?,
                }
            }
            let rows = checked(
                tx,
                sizes,
                max_set_aside,
                Selected::Unbatched {
                    max_records,
                    max_bytes,
                },
            )?;
            if rows.is_empty() {
                return Ok(None);
            }
            let (id, key) = form_batch(tx, rows.iter().map(|row| row.rowid))?;
            let (records, stored_at_ms) = rows
                .into_iter()
                .map(|row| ((row.id, row.body), row.stored_at_ms))
                .unzip();
            Ok(Some(Batch {
                id,
                key,
                records,
                stored_at_ms,
            }))
        })
    }

    /// The collector refused batch `batch_id` as invalid (`reason`): find
    /// the record it refuses without losing the others. A batch of several
    /// records is split into two halves under new keys, the first half sent
    /// next; a batch of one has its record set aside (kept, counted as
    /// `rejected_upstream`). A bad record among `n` is found in about
    /// `log2(n)` uploads, and every good one is delivered.
    pub fn split_batch(&self, batch_id: i64, reason: &str) -> Result<Split, OutboxError> {
        self.freeing(|| self.split(batch_id, reason))
    }

    fn split(&self, batch_id: i64, reason: &str) -> Result<Split, OutboxError> {
        let max_set_aside = self.config.max_set_aside_bytes;
        self.write(|tx, sizes| {
            let rows: Vec<(i64, String)> = tx
                .prepare_cached("SELECT rowid, id FROM records WHERE batch = ?1 ORDER BY rowid")?
                .query_map([batch_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            dissolve_batch(tx, batch_id)?;
            match rows.as_slice() {
                [] => Ok(Split::Empty),
                [(rowid, id)] => {
                    super::set_aside::set_aside(
                        tx,
                        sizes,
                        *rowid,
                        reason,
                        max_set_aside,
                        Counter::RejectedUpstream,
                    )?;
                    Ok(Split::SetAside { id: id.clone() })
                }
                _ => {
                    let (first, second) = rows.split_at(rows.len() / 2);
                    for half in [first, second] {
                        form_batch(tx, half.iter().map(|(rowid, _)| *rowid))?;
                    }
                    note_sync_error(tx, reason)?;
                    Ok(Split::Halved {
                        first: first.len(),
                        second: second.len(),
                    })
                }
            }
        })
    }

    /// The collector acknowledged batch `batch_id`: delete its records.
    pub fn ack_batch(&self, batch_id: i64) -> Result<u64, OutboxError> {
        self.freeing(|| self.remove_batch(batch_id, Counter::Uploaded))
    }

    fn remove_batch(&self, batch_id: i64, counter: Counter) -> Result<u64, OutboxError> {
        self.delete_records(Selection::InBatch(batch_id), counter, |tx, _| {
            tx.execute("DELETE FROM batches WHERE id = ?1", [batch_id])?;
            note_sync_ok(tx)
        })
    }
}

/// What [`Outbox::split_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Split {
    /// The batch became two, of these sizes, to be sent in order.
    Halved {
        /// Records in the half sent next.
        first: usize,
        /// Records in the other half.
        second: usize,
    },
    /// The batch's only record was set aside.
    SetAside {
        /// Its id.
        id: String,
    },
    /// The batch had no records left; it was deleted.
    Empty,
}

/// Make a new batch of the records `rowids`, under a new key; its id and key.
fn form_batch(
    tx: &Transaction,
    rowids: impl Iterator<Item = i64>,
) -> rusqlite::Result<(i64, String)> {
    // 128 random bits: unique across devices, restarts and outbox files.
    let key = format!("{:032x}", rand::random::<u128>());
    tx.execute(
        "INSERT INTO batches(key, created_at_ms) VALUES (?1, ?2)",
        params![key, now_ms()],
    )?;
    let id = tx.last_insert_rowid();
    let mut assign = tx.prepare_cached("UPDATE records SET batch = ?1 WHERE rowid = ?2")?;
    for rowid in rowids {
        assign.execute([id, rowid])?;
    }
    Ok((id, key))
}

/// A record about to join a batch, or in one.
struct Row {
    rowid: i64,
    id: String,
    body: Vec<u8>,
    stored_at_ms: i64,
}

/// Which records an upload reads.
#[derive(Clone, Copy)]
enum Selected {
    /// The records of this batch.
    Batch(i64),
    /// The oldest records in no batch: up to `max_records`, and no more than
    /// `max_bytes` of bodies unless the first alone is larger (it still
    /// goes, alone).
    Unbatched {
        max_records: usize,
        max_bytes: usize,
    },
}

/// The records `which` selects, in storage order, each checked to be as
/// the outbox wrote it: a damaged one is set aside (see `damage.rs`) and
/// the selection read again without it, so one bad row never stops an
/// upload.
fn checked(
    tx: &Transaction,
    sizes: &mut Sizes,
    max_set_aside: u64,
    which: Selected,
) -> rusqlite::Result<Vec<Row>> {
    loop {
        let (rows, damaged) = read_rows(tx, which)?;
        if damaged.is_empty() {
            return Ok(rows);
        }
        for (rowid, reason) in damaged {
            set_aside_damaged(tx, sizes, rowid, &reason, max_set_aside)?;
        }
    }
}

/// The rows `which` selects, and those of them that are damaged (with why).
#[allow(clippy::type_complexity)]
fn read_rows(
    tx: &Transaction,
    which: Selected,
) -> rusqlite::Result<(Vec<Row>, Vec<(i64, String)>)> {
    const COLUMNS: &str = "rowid, id, created_at_ms, bytes, body, batch";
    let (mut select, limit, max_bytes) = match which {
        Selected::Batch(batch) => (
            tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM records WHERE batch = ?1 ORDER BY rowid"
            ))?,
            batch,
            usize::MAX,
        ),
        Selected::Unbatched {
            max_records,
            max_bytes,
        } => (
            tx.prepare_cached(&format!(
                // In no batch: also a record whose batch cannot be read or
                // is gone (damage): it joins a new one, or is set aside.
                "SELECT {COLUMNS} FROM records WHERE batch IS NULL OR typeof(batch) != 'integer'
                 OR batch NOT IN (SELECT id FROM batches) ORDER BY rowid LIMIT ?1"
            ))?,
            i64::try_from(max_records).unwrap_or(i64::MAX),
            max_bytes,
        ),
    };
    let (mut rows, mut damaged) = (Vec::new(), Vec::new());
    let mut total = 0usize;
    let mut query = select.query([limit])?;
    while let Some(row) = query.next()? {
        let rowid: i64 = row.get(0)?;
        let (id, created, bytes, body, batch) = (
            row.get_ref(1)?,
            row.get_ref(2)?,
            row.get_ref(3)?,
            row.get_ref(4)?,
            row.get_ref(5)?,
        );
        if let Some(reason) = record_damage(id, created, bytes, body, batch) {
            damaged.push((rowid, reason));
            continue;
        }
        // `record_damage` checked the classes (and that `id` is UTF-8).
        let (ValueRef::Text(id), ValueRef::Integer(stored_at_ms), ValueRef::Blob(body)) =
            (id, created, body)
        else {
            unreachable!("record_damage checks every column's class");
        };
        if !rows.is_empty() && total.saturating_add(body.len()) > max_bytes {
            break;
        }
        total = total.saturating_add(body.len());
        rows.push(Row {
            rowid,
            id: String::from_utf8_lossy(id).into_owned(),
            body: body.to_vec(),
            stored_at_ms,
        });
    }
    Ok((rows, damaged))
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
