//! Pending results (`records`): storing them under the size cap and its
//! `when_full` policy, expiring them by age, and deleting them by selection.
//!
//! Invariants:
//! * A record is stored under its id at most once (`ON CONFLICT(id) DO
//!   NOTHING`); a second copy is counted as a duplicate, not stored.
//! * After any commit, `SUM(bytes)` of `records` is at most `max_bytes`: a
//!   record larger than the whole cap is refused under either policy, and
//!   otherwise `reject-new` refuses the new record while `drop-oldest`
//!   deletes the oldest records until it fits.
//! * Every record that leaves other than by acknowledgement, or never
//!   enters, is counted by cause in the same transaction (see
//!   [`Counter`]).
//! * A batch in flight that loses a record (dropped or expired) is
//!   dissolved: its other records go back to pending, to be re-formed under
//!   a new key; the collector's per-record dedupe keeps a record it already
//!   has from being stored twice.
//! * The pending counts in memory ([`Outbox::pending`]) change only with a
//!   committed transaction, so they always match the file.

use super::batches::{dissolve_batch, dissolve_batches_of};
use super::counters::{Counter, bump};
use super::{Outbox, OutboxError, Sizes, journal};
use crate::config::{FullPolicy, OutboxConfig};
use rusqlite::{Transaction, params};
use sluice_types::now_ms;

/// A result to store.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Stable, unique id, `<device>/<pipeline>/<seq>`.
    pub id: String,
    /// The document shipped upstream (JSON).
    pub body: Vec<u8>,
}

impl NewRecord {
    /// Bytes this record counts against `max_bytes`.
    pub fn size(&self) -> u64 {
        (self.id.len() + self.body.len()) as u64
    }
}

/// What an append did with each record, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Newly stored.
    pub stored: u64,
    /// Already stored under the same id; ignored.
    pub duplicates: u64,
    /// Old records deleted to make room (`drop-oldest`).
    pub dropped_oldest: u64,
    /// New records refused (`reject-new`).
    pub rejected_full: u64,
    /// New records larger than the whole cap.
    pub rejected_too_large: u64,
}

impl AppendReport {
    /// Each count with the persisted counter it adds to.
    pub(super) fn counts(&self) -> [(Counter, u64); 5] {
        [
            (Counter::Stored, self.stored),
            (Counter::DroppedOldest, self.dropped_oldest),
            (Counter::RejectedFull, self.rejected_full),
            (Counter::RejectedTooLarge, self.rejected_too_large),
            (Counter::Duplicates, self.duplicates),
        ]
    }
}

/// Records chosen by one condition, to count, delete, or dissolve the
/// batches of, at once. Each statement's SQL is fixed here, with `?1` bound
/// to the variant's value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Selection {
    /// The records of batch `id`.
    InBatch(i64),
    /// The records created before this time (ms since the epoch).
    CreatedBefore(i64),
}

impl Selection {
    /// The parameters of every statement below.
    pub(super) fn bind(self) -> [i64; 1] {
        match self {
            Selection::InBatch(value) | Selection::CreatedBefore(value) => [value],
        }
    }

    /// `(bytes, count)` of the selected records.
    fn size_sql(self) -> &'static str {
        match self {
            Selection::InBatch(_) => concat!(
                "SELECT COALESCE(SUM(",
                record_size!(),
                "), 0), COUNT(*) FROM records WHERE batch = ?1"
            ),
            Selection::CreatedBefore(_) => concat!(
                "SELECT COALESCE(SUM(",
                record_size!(),
                "), 0), COUNT(*) FROM records WHERE created_at_ms < ?1"
            ),
        }
    }

    fn delete_sql(self) -> &'static str {
        match self {
            Selection::InBatch(_) => "DELETE FROM records WHERE batch = ?1",
            Selection::CreatedBefore(_) => "DELETE FROM records WHERE created_at_ms < ?1",
        }
    }

    /// The batches holding any of the selected records.
    pub(super) fn batches_sql(self) -> &'static str {
        match self {
            Selection::InBatch(_) => "SELECT DISTINCT batch FROM records WHERE batch = ?1",
            Selection::CreatedBefore(_) => {
                "SELECT DISTINCT batch FROM records WHERE typeof(batch) = 'integer' AND created_at_ms < ?1"
            }
        }
    }
}

impl Outbox {
    /// Store `records` in one transaction (one fsync), applying the caps.
    /// New records are intake: they do not grow the file into the space
    /// of a disk reserve that was given back (see `reserve.rs`).
    pub fn append(&self, records: Vec<NewRecord>) -> Result<AppendReport, OutboxError> {
        self.store_results(&[], &records)
    }

    /// In one transaction: store `records` and delete the journal rows
    /// `journal_seqs` whose results they are. Either both happen or neither.
    /// Not intake: inputs already accepted become results (and give their
    /// bytes back), so a full disk never stops the journal from draining.
    pub fn complete(
        &self,
        journal_seqs: &[i64],
        records: &[NewRecord],
    ) -> Result<AppendReport, OutboxError> {
        self.store_results(journal_seqs, records)
    }

    fn store_results(
        &self,
        journal_seqs: &[i64],
        records: &[NewRecord],
    ) -> Result<AppendReport, OutboxError> {
        let run = |tx: &Transaction, sizes: &mut Sizes| -> rusqlite::Result<AppendReport> {
            let freed = journal::retire(tx, journal_seqs)?;
            sizes.journal_bytes = sizes.journal_bytes.saturating_sub(freed);
            let report = store(tx, sizes, &self.config, records)?;
            // The worker's results (not drift windows or install reports,
            // which come through `append`) are kept for local readers too.
            if !journal_seqs.is_empty() && !records.is_empty() {
                let pairs = records.iter().map(|r| (r.id.as_str(), r.body.as_slice()));
                super::local::keep(tx, &self.config, &mut sizes.local_bytes, pairs)?;
            }
            for (counter, n) in report.counts() {
                bump(tx, counter, n)?;
            }
            Ok(report)
        };
        let report = if journal_seqs.is_empty() {
            self.write_intake(run)?
        } else {
            self.write(run)?
        };
        if report.dropped_oldest + report.rejected_full + report.rejected_too_large > 0 {
            tracing::warn!(
                ?report,
                max_bytes = self.config.max_bytes,
                "outbox full: policy {:?} applied",
                self.config.when_full
            );
        }
        Ok(report)
    }

    /// Delete records older than `max_age_secs` (counted as `expired`).
    /// Returns how many were deleted.
    pub fn expire(&self, now_ms: i64) -> Result<u64, OutboxError> {
        if self.config.max_age_secs == 0 {
            return Ok(0);
        }
        let cutoff = now_ms - (self.config.max_age_secs as i64).saturating_mul(1000);
        let old = Selection::CreatedBefore(cutoff);
        let set_aside = std::cell::Cell::new(0);
        let n = self.freeing(|| {
            self.delete_records(old, Counter::Expired, |tx, n| {
                set_aside.set(super::set_aside::expire(tx, cutoff)?);
                // A batch in flight that loses records is dissolved; the rest
                // go out in a new one (the collector keeps one copy per id).
                if n > 0 {
                    dissolve_batches_of(tx, old)
                } else {
                    Ok(())
                }
            })
        })?;
        let n = n + set_aside.get();
        if n > 0 {
            tracing::warn!(
                expired = n,
                max_age_secs = self.config.max_age_secs,
                "outbox: expired old results"
            );
        }
        Ok(n)
    }

    /// The body of record `id` (the JSON it is shipped as) while it is in
    /// the outbox: from its commit until the collector acknowledges it, or
    /// the size cap or age limit drops it. `None` before and after.
    pub fn record(&self, id: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        use rusqlite::OptionalExtension;
        self.read(|conn| {
            conn.query_row(
                "SELECT CAST(body AS BLOB) FROM records WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Pending record and byte counts (from memory; no query).
    pub fn pending(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.pending_records, inner.pending_bytes)
    }

    /// In one transaction: run `also` (given how many records match), delete
    /// the records of `which`, and count them under `counter`. Returns how
    /// many were deleted.
    pub(super) fn delete_records(
        &self,
        which: Selection,
        counter: Counter,
        also: impl FnOnce(&Transaction, u64) -> rusqlite::Result<()>,
    ) -> Result<u64, OutboxError> {
        self.write(|tx, sizes| {
            let (freed, n): (i64, i64) = tx
                .prepare_cached(which.size_sql())?
                .query_row(which.bind(), |r| Ok((r.get(0)?, r.get(1)?)))?;
            let (freed, n) = (freed as u64, n as u64);
            also(tx, n)?;
            tx.prepare_cached(which.delete_sql())?
                .execute(which.bind())?;
            bump(tx, counter, n)?;
            sizes.pending_bytes = sizes.pending_bytes.saturating_sub(freed);
            sizes.pending_records = sizes.pending_records.saturating_sub(n);
            Ok(n)
        })
    }
}

/// Insert `records` under the cap, keeping `sizes` up to date. Returns what
/// happened to each (the counters are not bumped here).
pub(super) fn store(
    tx: &Transaction,
    sizes: &mut Sizes,
    config: &OutboxConfig,
    records: &[NewRecord],
) -> rusqlite::Result<AppendReport> {
    let mut report = AppendReport::default();
    let now = now_ms();
    let mut insert = tx.prepare_cached(
        "INSERT INTO records(id, created_at_ms, bytes, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO NOTHING",
    )?;
    // A record already pending is a duplicate before anything else: checked
    // after the cap, it would drop the oldest records (`drop-oldest`) or
    // count a refusal (`reject-new`) for a result that is already stored.
    let mut pending = tx.prepare_cached("SELECT 1 FROM records WHERE id = ?1")?;
    for record in records {
        if pending.exists([&record.id])? {
            report.duplicates += 1;
            continue;
        }
        let size = record.size();
        if size > config.max_bytes {
            report.rejected_too_large += 1;
            continue;
        }
        if sizes.pending_bytes + size > config.max_bytes {
            match config.when_full {
                FullPolicy::RejectNew => {
                    report.rejected_full += 1;
                    continue;
                }
                FullPolicy::DropOldest => {
                    let (freed, dropped) =
                        drop_oldest(tx, sizes.pending_bytes + size - config.max_bytes)?;
                    sizes.pending_bytes = sizes.pending_bytes.saturating_sub(freed);
                    sizes.pending_records = sizes.pending_records.saturating_sub(dropped);
                    report.dropped_oldest += dropped;
                }
            }
        }
        if insert.execute(params![record.id, now, size as i64, record.body])? == 1 {
            sizes.pending_bytes += size;
            sizes.pending_records += 1;
            report.stored += 1;
        } else {
            report.duplicates += 1;
        }
    }
    Ok(report)
}

/// Delete the oldest records until at least `need` bytes are freed.
/// A batch that loses records is dissolved (its remaining records go back
/// to pending): it will be re-formed under a new key, and the collector's
/// per-record dedupe keeps already-delivered records from being stored twice.
fn drop_oldest(tx: &Transaction, need: u64) -> rusqlite::Result<(u64, u64)> {
    let (mut freed, mut dropped) = (0u64, 0u64);
    // Sizes and batches as the sums count them: a damaged row is dropped
    // like any other, never an error that stops every append.
    let mut select = tx.prepare_cached(concat!(
        "SELECT rowid, ",
        record_size!(),
        ", CASE WHEN typeof(batch) = 'integer' THEN batch END FROM records ORDER BY rowid LIMIT 64"
    ))?;
    let mut delete = tx.prepare_cached("DELETE FROM records WHERE rowid = ?1")?;
    while freed < need {
        let rows: Vec<(i64, i64, Option<i64>)> = select
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        if rows.is_empty() {
            break;
        }
        for (rowid, size, batch) in rows {
            if freed >= need {
                break;
            }
            if let Some(batch) = batch {
                dissolve_batch(tx, batch)?;
            }
            delete.execute([rowid])?;
            freed += size as u64;
            dropped += 1;
        }
    }
    Ok((freed, dropped))
}
