//! The outbox: the device's crash-safe store of accepted inputs and of
//! results awaiting upload, one SQLite file at `<data_dir>/outbox.sqlite`.
//!
//! Tables:
//! * `journal`: inputs accepted by ingest but not yet processed. An input is
//!   acknowledged to its sender only after its row is committed.
//! * `records`: results (or an item's error) awaiting upload, each under a
//!   stable, unique id `<device>/<pipeline>/<seq>`.
//! * `batches`: uploads formed but not yet acknowledged upstream. A record's
//!   batch assignment is committed *before* the upload is sent, so a retry
//!   (even after a restart) sends the same records under the same
//!   idempotency key.
//! * `counters` and `meta`: persisted counters (dropped, rejected, expired,
//!   uploaded...) and the last sync time and error.
//!
//! Invariants:
//! * **Durable acknowledgements.** The database runs in WAL mode with
//!   `synchronous=FULL`: every commit fsyncs the WAL, so whatever a commit
//!   returned survives power loss and SIGKILL. Throughput comes from group
//!   commit ([`Outbox::append`] and [`Outbox::complete`] take many records
//!   per transaction, so one fsync covers the whole batch), not from weaker
//!   syncing.
//! * **Exactly once per input.** Journal sequence numbers are never reused
//!   (`AUTOINCREMENT`), and a fresh file starts them at the current time in
//!   microseconds, so that ids stay unique even after a damaged file was
//!   moved aside. A result is stored under its input's id with `INSERT OR
//!   IGNORE` in the same transaction that deletes the journal row, so an
//!   input processed again after a crash cannot produce a second result.
//! * **Bounded.** Pending records never exceed `max_bytes` (ids plus
//!   documents; SQLite adds a few percent of page overhead) and are dropped
//!   after `max_age_secs`; every drop is counted, by cause, in the file.
//! * **Deleted only when acknowledged.** Records leave the outbox through
//!   [`Outbox::ack_batch`] (the collector confirmed the batch), the size cap,
//!   the age limit, or a permanent refusal upstream, each counted.
//! * **No crash on a full disk.** `SQLITE_FULL` and `ENOSPC` surface as
//!   [`OutboxError::DiskFull`]; the transaction is rolled back and nothing
//!   changes, so callers back off and retry while uploads (which free space)
//!   go on.
//! * **Damage is detected at start-up.** [`Outbox::open`] runs SQLite's
//!   `quick_check`; a damaged or foreign file is moved aside as
//!   `outbox.sqlite.damaged-<UTC timestamp>` (with its `-wal`) and a fresh one
//!   is created, with the reason kept in [`Outbox::recovered`].

use crate::config::{FullPolicy, OutboxConfig};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the outbox inside the data directory.
pub const FILE_NAME: &str = "outbox.sqlite";

/// Marks a SQLite file as a Sluice outbox (`PRAGMA application_id`), "SLCE".
const APPLICATION_ID: i32 = 0x534C_4345;
const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE journal(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    content_type TEXT NOT NULL,
    attributes TEXT NOT NULL,
    data BLOB NOT NULL,
    accepted_at_ms INTEGER NOT NULL
);
CREATE INDEX journal_pipeline ON journal(pipeline, seq);
CREATE TABLE claimed_files(name TEXT PRIMARY KEY);
CREATE TABLE records(
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL,
    batch INTEGER
);
CREATE INDEX records_batch ON records(batch) WHERE batch IS NOT NULL;
CREATE TABLE batches(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Names of the persisted counters.
pub mod counter {
    /// Records stored (every result that entered the outbox).
    pub const STORED: &str = "stored";
    /// Records deleted to make room under `drop-oldest`.
    pub const DROPPED_OLDEST: &str = "dropped_oldest";
    /// New records refused under `reject-new`.
    pub const REJECTED_FULL: &str = "rejected_full";
    /// Records larger than the whole cap, refused under either policy.
    pub const REJECTED_TOO_LARGE: &str = "rejected_too_large";
    /// Records older than `max_age_secs`, deleted.
    pub const EXPIRED: &str = "expired";
    /// Records the collector refused permanently (4xx other than auth).
    pub const REJECTED_UPSTREAM: &str = "rejected_upstream";
    /// Records acknowledged by the collector.
    pub const UPLOADED: &str = "uploaded";
    /// Records already stored under the same id (an input processed twice).
    pub const DUPLICATES: &str = "duplicates";
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The disk (or the file's page limit) is full; nothing was changed.
    #[error("outbox {}: disk full: {message}", path.display())]
    DiskFull { path: PathBuf, message: String },
    /// The file is damaged, or not an outbox.
    #[error("outbox {}: damaged: {message}", path.display())]
    Damaged { path: PathBuf, message: String },
    #[error("outbox {}: {message}", path.display())]
    Other { path: PathBuf, message: String },
}

impl OutboxError {
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::DiskFull { .. })
    }
}

/// Why the previous file was moved aside at start-up.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

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

/// An input accepted into the journal.
#[derive(Debug, Clone)]
pub struct NewInput {
    pub pipeline: String,
    pub content_type: String,
    pub attributes: Vec<(String, String)>,
    pub data: Vec<u8>,
}

/// An input waiting in the journal.
#[derive(Debug, Clone)]
pub struct JournalItem {
    pub seq: i64,
    pub pipeline: String,
    pub content_type: String,
    pub attributes: Vec<(String, String)>,
    pub data: Vec<u8>,
    pub accepted_at_ms: i64,
}

/// Records formed into one upload. The same batch (same key, same records)
/// comes back from [`Outbox::next_batch`] until it is acknowledged.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: i64,
    /// The idempotency key sent upstream.
    pub key: String,
    /// `(id, body)` in storage order.
    pub records: Vec<(String, Vec<u8>)>,
}

/// What [`Outbox::status`] reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub path: PathBuf,
    pub pending_records: u64,
    pub pending_bytes: u64,
    pub max_bytes: u64,
    pub oldest_created_at_ms: Option<i64>,
    pub batches_in_flight: u64,
    pub journal_items: u64,
    pub journal_bytes: u64,
    pub last_sync_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub counters: BTreeMap<String, i64>,
}

struct Inner {
    conn: Connection,
    /// Mirrors `SUM(bytes)` and `COUNT(*)` of `records`, so appends need no scan.
    pending_bytes: u64,
    pending_records: u64,
    journal_bytes: u64,
}

/// The outbox. All methods may be called from many threads; they serialize
/// on one connection (SQLite has one writer anyway).
pub struct Outbox {
    path: PathBuf,
    config: OutboxConfig,
    inner: Mutex<Inner>,
    recovered: Option<Recovery>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Outbox {
    /// Open (or create) `<data_dir>/outbox.sqlite`, creating `data_dir`.
    pub fn open_in(data_dir: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(data_dir).map_err(|e| OutboxError::Other {
            path: data_dir.to_owned(),
            message: format!("cannot create the data directory: {e}"),
        })?;
        Outbox::open(&data_dir.join(FILE_NAME), config)
    }

    /// Open (or create) the outbox at `path`. A damaged file is moved aside
    /// and replaced by a fresh one (see [`Outbox::recovered`]); only a file
    /// that cannot be moved or created is an error.
    pub fn open(path: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        let mut recovered = None;
        let conn = match open_checked(path) {
            Ok(conn) => conn,
            Err(OutboxError::Damaged { message, .. }) => {
                let moved_to = move_aside(path)?;
                tracing::error!(
                    outbox = %path.display(), moved_to = %moved_to.display(),
                    "outbox is damaged ({message}); moved it aside and starting a fresh one"
                );
                recovered = Some(Recovery {
                    moved_to,
                    reason: message,
                });
                open_checked(path)?
            }
            Err(e) => return Err(e),
        };
        let err = |e| sql_error(path, e);
        let (pending_bytes, pending_records): (i64, i64) = conn
            .query_row(
                "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(err)?;
        let journal_bytes: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM journal",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        let outbox = Outbox {
            path: path.to_owned(),
            config,
            inner: Mutex::new(Inner {
                conn,
                pending_bytes: pending_bytes as u64,
                pending_records: pending_records as u64,
                journal_bytes: journal_bytes as u64,
            }),
            recovered,
        };
        outbox.expire(now_ms())?;
        Ok(outbox)
    }

    /// Open an existing outbox for reading only (`sluice outbox status`
    /// while an agent runs): no creation, no recovery, no expiry.
    pub fn open_read_only(path: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        if !path.exists() {
            return Err(OutboxError::Other {
                path: path.to_owned(),
                message: "no such file (has the agent run yet?)".into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| sql_error(path, e))?;
        check_identity(&conn, path)?;
        let (pending_bytes, pending_records): (i64, i64) = conn
            .query_row(
                "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| sql_error(path, e))?;
        Ok(Outbox {
            path: path.to_owned(),
            config,
            inner: Mutex::new(Inner {
                conn,
                pending_bytes: pending_bytes as u64,
                pending_records: pending_records as u64,
                journal_bytes: 0,
            }),
            recovered: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Set when the file found at start-up was damaged and moved aside.
    pub fn recovered(&self) -> Option<&Recovery> {
        self.recovered.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock left no half-done transaction
        // (rusqlite rolls back on drop), so the connection is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> OutboxError {
        sql_error(&self.path, e)
    }

    /// Store `records` in one transaction (one fsync), applying the caps.
    pub fn append(&self, records: Vec<NewRecord>) -> Result<AppendReport, OutboxError> {
        self.complete(&[], records)
    }

    /// In one transaction: store `records` and delete the journal rows
    /// `journal_seqs` whose results they are. Either both happen or neither.
    pub fn complete(
        &self,
        journal_seqs: &[i64],
        records: Vec<NewRecord>,
    ) -> Result<AppendReport, OutboxError> {
        let mut inner = self.lock();
        let Inner {
            conn,
            pending_bytes,
            pending_records,
            journal_bytes,
        } = &mut *inner;
        let mut bytes = *pending_bytes;
        let mut count = *pending_records;
        let mut jbytes = *journal_bytes;
        let mut report = AppendReport::default();
        let tx = conn.transaction().map_err(|e| sql_error(&self.path, e))?;
        let result = (|| -> rusqlite::Result<()> {
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM journal WHERE seq = ?1 RETURNING LENGTH(data)")?;
                for seq in journal_seqs {
                    if let Some(len) = delete.query_row([seq], |r| r.get::<_, i64>(0)).optional()? {
                        jbytes = jbytes.saturating_sub(len as u64);
                    }
                }
            }
            let now = now_ms();
            let mut insert = tx.prepare_cached(
                "INSERT INTO records(id, created_at_ms, bytes, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO NOTHING",
            )?;
            for record in &records {
                let size = record.size();
                if size > self.config.max_bytes {
                    report.rejected_too_large += 1;
                    continue;
                }
                if bytes + size > self.config.max_bytes {
                    match self.config.when_full {
                        FullPolicy::RejectNew => {
                            report.rejected_full += 1;
                            continue;
                        }
                        FullPolicy::DropOldest => {
                            let (freed, dropped) =
                                drop_oldest(&tx, bytes + size - self.config.max_bytes)?;
                            bytes -= freed;
                            count -= dropped;
                            report.dropped_oldest += dropped;
                        }
                    }
                }
                if insert.execute(params![record.id, now, size as i64, record.body])? == 1 {
                    bytes += size;
                    count += 1;
                    report.stored += 1;
                } else {
                    report.duplicates += 1;
                }
            }
            drop(insert);
            for (name, n) in [
                (counter::STORED, report.stored),
                (counter::DROPPED_OLDEST, report.dropped_oldest),
                (counter::REJECTED_FULL, report.rejected_full),
                (counter::REJECTED_TOO_LARGE, report.rejected_too_large),
                (counter::DUPLICATES, report.duplicates),
            ] {
                bump(&tx, name, n)?;
            }
            Ok(())
        })();
        result
            .and_then(|()| tx.commit())
            .map_err(|e| sql_error(&self.path, e))?;
        *pending_bytes = bytes;
        *pending_records = count;
        *journal_bytes = jbytes;
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
        let n = self.delete_records("created_at_ms < ?1", cutoff, counter::EXPIRED, |tx, n| {
            // A batch in flight that loses records is dissolved; the rest go
            // out in a new one (the collector keeps one copy per id).
            if n > 0 {
                dissolve_batches_of(tx, "created_at_ms < ?1", cutoff)
            } else {
                Ok(())
            }
        })?;
        if n > 0 {
            tracing::warn!(
                expired = n,
                max_age_secs = self.config.max_age_secs,
                "outbox: expired old results"
            );
        }
        Ok(n)
    }

    /// The batch to upload next: the oldest unacknowledged one if any (same
    /// key, same records, also after a restart), else a new one of up to
    /// `max_records` records and about `max_bytes` bytes, committed before it
    /// is returned. `None` when nothing is pending.
    pub fn next_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, OutboxError> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction()
            .map_err(|e| sql_error(&self.path, e))?;
        let batch = (|| -> rusqlite::Result<Option<Batch>> {
            let existing: Option<(i64, String)> =
                tx.query_row("SELECT id, key FROM batches ORDER BY id LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            if let Some((id, key)) = existing {
                let records = batch_records(&tx, id)?;
                if !records.is_empty() {
                    return Ok(Some(Batch { id, key, records }));
                }
                // Every record of it was dropped or expired: nothing to send.
                tx.execute("DELETE FROM batches WHERE id = ?1", [id])?;
            }
            let mut rows = Vec::new();
            {
                let mut select = tx.prepare_cached(
                    "SELECT rowid, id, body FROM records WHERE batch IS NULL ORDER BY rowid LIMIT ?1",
                )?;
                let mut total = 0usize;
                let mut query = select.query([max_records as i64])?;
                while let Some(row) = query.next()? {
                    let body: Vec<u8> = row.get(2)?;
                    if !rows.is_empty() && total + body.len() > max_bytes {
                        break;
                    }
                    total += body.len();
                    rows.push((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, body));
                }
            }
            if rows.is_empty() {
                return Ok(None);
            }
            // 128 random bits: unique across devices, restarts and outbox files.
            let key = format!("{:032x}", rand::random::<u128>());
            tx.execute("INSERT INTO batches(key, created_at_ms) VALUES (?1, ?2)", params![key, now_ms()])?;
            let id = tx.last_insert_rowid();
            {
                let mut assign = tx.prepare_cached("UPDATE records SET batch = ?1 WHERE rowid = ?2")?;
                for (rowid, _, _) in &rows {
                    assign.execute([id, *rowid])?;
                }
            }
            Ok(Some(Batch { id, key, records: rows.into_iter().map(|(_, id, body)| (id, body)).collect() }))
        })()
        .map_err(|e| sql_error(&self.path, e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(batch)
    }

    /// The collector acknowledged batch `batch_id`: delete its records.
    pub fn ack_batch(&self, batch_id: i64) -> Result<u64, OutboxError> {
        self.remove_batch(batch_id, counter::UPLOADED, None)
    }

    /// The collector refused batch `batch_id` for good: delete its records,
    /// count them as `rejected_upstream` and keep `reason` as the last error.
    pub fn reject_batch(&self, batch_id: i64, reason: &str) -> Result<u64, OutboxError> {
        self.remove_batch(batch_id, counter::REJECTED_UPSTREAM, Some(reason))
    }

    fn remove_batch(
        &self,
        batch_id: i64,
        counter_name: &str,
        error: Option<&str>,
    ) -> Result<u64, OutboxError> {
        self.delete_records("batch = ?1", batch_id, counter_name, |tx, _| {
            tx.execute("DELETE FROM batches WHERE id = ?1", [batch_id])?;
            let now = now_ms().to_string();
            match error {
                None => set_meta(tx, "last_sync_at_ms", &now),
                Some(reason) => {
                    set_meta(tx, "last_error", reason)?;
                    set_meta(tx, "last_error_at_ms", &now)
                }
            }
        })
    }

    /// In one transaction: run `also` (given how many records match), delete
    /// the records matching `condition` (SQL over `records`, `?1` = `arg`),
    /// and count them under `counter_name`. Returns how many were deleted.
    fn delete_records(
        &self,
        condition: &str,
        arg: i64,
        counter_name: &str,
        also: impl FnOnce(&Transaction, u64) -> rusqlite::Result<()>,
    ) -> Result<u64, OutboxError> {
        let mut inner = self.lock();
        let Inner {
            conn,
            pending_bytes,
            pending_records,
            ..
        } = &mut *inner;
        let tx = conn.transaction().map_err(|e| sql_error(&self.path, e))?;
        let (freed, n) = (|| -> rusqlite::Result<(u64, u64)> {
            let (freed, n): (i64, i64) = tx.query_row(
                &format!("SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM records WHERE {condition}"),
                [arg],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            also(&tx, n as u64)?;
            tx.execute(&format!("DELETE FROM records WHERE {condition}"), [arg])?;
            bump(&tx, counter_name, n as u64)?;
            Ok((freed as u64, n as u64))
        })()
        .map_err(|e| sql_error(&self.path, e))?;
        tx.commit().map_err(|e| self.err(e))?;
        *pending_bytes -= freed;
        *pending_records -= n;
        Ok(n)
    }

    /// Remember why the last sync attempt failed (shown by `outbox status`).
    pub fn record_sync_error(&self, message: &str) -> Result<(), OutboxError> {
        let inner = self.lock();
        let now = now_ms().to_string();
        set_meta(&inner.conn, "last_error", message)
            .and_then(|()| set_meta(&inner.conn, "last_error_at_ms", &now))
            .map_err(|e| self.err(e))
    }

    /// Remember that the collector was reached and nothing was pending.
    pub fn record_sync_ok(&self) -> Result<(), OutboxError> {
        let inner = self.lock();
        set_meta(&inner.conn, "last_sync_at_ms", &now_ms().to_string()).map_err(|e| self.err(e))
    }

    /// Accept an input into the journal, durably. Returns its sequence
    /// number, which makes its id.
    pub fn accept(&self, input: &NewInput) -> Result<i64, OutboxError> {
        Ok(self.accept_many(&[(input, None)])?[0])
    }

    /// Accept inputs in one transaction (one fsync for all of them): all or
    /// none. Each may name the claimed file it came from, remembered in the
    /// same transaction (see [`Outbox::is_claimed`]). Returns the sequence
    /// numbers, in order.
    pub fn accept_many(
        &self,
        inputs: &[(&NewInput, Option<&str>)],
    ) -> Result<Vec<i64>, OutboxError> {
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction()
            .map_err(|e| sql_error(&self.path, e))?;
        let seqs = (|| -> rusqlite::Result<Vec<i64>> {
            let mut insert = tx.prepare_cached(
                "INSERT INTO journal(pipeline, content_type, attributes, data, accepted_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut claim = tx.prepare_cached("INSERT OR IGNORE INTO claimed_files(name) VALUES (?1)")?;
            let mut seqs = Vec::with_capacity(inputs.len());
            for (input, claimed_file) in inputs {
                let attributes = serde_json::to_string(&input.attributes).expect("pairs of strings serialize");
                insert.execute(params![input.pipeline, input.content_type, attributes, input.data, now_ms()])?;
                seqs.push(tx.last_insert_rowid());
                if let Some(name) = claimed_file {
                    claim.execute([name])?;
                }
            }
            Ok(seqs)
        })()
        .map_err(|e| sql_error(&self.path, e))?;
        tx.commit().map_err(|e| self.err(e))?;
        inner.journal_bytes += inputs
            .iter()
            .map(|(input, _)| input.data.len() as u64)
            .sum::<u64>();
        Ok(seqs)
    }

    /// Bytes of inputs accepted but not yet processed.
    pub fn journal_bytes(&self) -> u64 {
        self.lock().journal_bytes
    }

    /// Whether the claimed file `name` was already accepted.
    pub fn is_claimed(&self, name: &str) -> Result<bool, OutboxError> {
        let inner = self.lock();
        inner
            .conn
            .query_row(
                "SELECT 1 FROM claimed_files WHERE name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// Forget claimed files once they have been deleted.
    pub fn forget_claims(&self, names: &[String]) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        let tx = inner.conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM claimed_files WHERE name = ?1")
                .map_err(|e| self.err(e))?;
            for name in names {
                delete.execute([name]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Up to `limit` journal items of `pipeline` with a sequence number
    /// above `after`, oldest first.
    pub fn journal_items(
        &self,
        pipeline: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalItem>, OutboxError> {
        let inner = self.lock();
        let mut select = inner
            .conn
            .prepare_cached(
                "SELECT seq, pipeline, content_type, attributes, data, accepted_at_ms FROM journal
                 WHERE pipeline = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = select
            .query_map(params![pipeline, after, limit as i64], |r| {
                let attributes: String = r.get(3)?;
                Ok(JournalItem {
                    seq: r.get(0)?,
                    pipeline: r.get(1)?,
                    content_type: r.get(2)?,
                    attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                    data: r.get(4)?,
                    accepted_at_ms: r.get(5)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Pending record and byte counts (from memory; no query).
    pub fn pending(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.pending_records, inner.pending_bytes)
    }

    /// Counters, last sync, sizes: what `sluice outbox status` shows.
    pub fn status(&self) -> Result<Status, OutboxError> {
        let inner = self.lock();
        let conn = &inner.conn;
        let q = || -> rusqlite::Result<Status> {
            let (pending_bytes, pending_records, oldest): (i64, i64, Option<i64>) = conn
                .query_row(
                    "SELECT COALESCE(SUM(bytes), 0), COUNT(*), MIN(created_at_ms) FROM records",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
            let batches: i64 = conn.query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0))?;
            let (journal_items, journal_bytes): (i64, i64) = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM journal",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut counters = BTreeMap::new();
            for name in [
                counter::STORED,
                counter::UPLOADED,
                counter::DROPPED_OLDEST,
                counter::REJECTED_FULL,
                counter::REJECTED_TOO_LARGE,
                counter::EXPIRED,
                counter::REJECTED_UPSTREAM,
                counter::DUPLICATES,
            ] {
                counters.insert(name.to_owned(), 0);
            }
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
                journal_items: journal_items as u64,
                journal_bytes: journal_bytes as u64,
                last_sync_at_ms: meta("last_sync_at_ms")?.and_then(|v| v.parse().ok()),
                last_error: meta("last_error")?,
                last_error_at_ms: meta("last_error_at_ms")?.and_then(|v| v.parse().ok()),
                counters,
            })
        };
        q().map_err(|e| self.err(e))
    }

    /// A persisted counter's value.
    pub fn counter(&self, name: &str) -> Result<i64, OutboxError> {
        let inner = self.lock();
        inner
            .conn
            .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Limit the file to `pages` pages of SQLite (a hard guard below the
    /// disk's own size; writes beyond fail as [`OutboxError::DiskFull`]).
    pub fn limit_file_pages(&self, pages: u64) -> Result<(), OutboxError> {
        let inner = self.lock();
        inner
            .conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }
}

/// Open `path`, create the schema if the file is new, and check that it is
/// an intact outbox. Damage is reported as [`OutboxError::Damaged`].
fn open_checked(path: &Path) -> Result<Connection, OutboxError> {
    let damaged = |e: rusqlite::Error| sql_error(path, e);
    let conn = Connection::open(path).map_err(damaged)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(damaged)?;
    // WAL: readers (status) never block the writer; FULL: a commit is on disk
    // (WAL fsynced) before it returns, which is what "accepted" promises.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(damaged)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Other {
            path: path.to_owned(),
            message: format!("cannot switch to WAL mode (got `{mode}`)"),
        });
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
        .map_err(damaged)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(damaged)?;
    if check != "ok" {
        return Err(OutboxError::Damaged {
            path: path.to_owned(),
            message: format!("integrity check failed: {check}"),
        });
    }
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(damaged)?;
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(damaged)?;
        if tables > 0 {
            return Err(OutboxError::Damaged {
                path: path.to_owned(),
                message: "a SQLite file that is not a Sluice outbox".into(),
            });
        }
        create_schema(&conn).map_err(damaged)?;
    }
    check_identity(&conn, path)?;
    Ok(conn)
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        conn.execute_batch(SCHEMA)?;
        // Start sequence numbers at the current time in microseconds, so
        // that ids stay unique upstream even if a damaged outbox (and its
        // counter) was moved aside: a file ingesting below a million inputs
        // per second never catches up with the clock.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        conn.execute(
            "INSERT INTO sqlite_sequence(name, seq) VALUES ('journal', ?1)",
            [start],
        )?;
        conn.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        ))
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn check_identity(conn: &Connection, path: &Path) -> Result<(), OutboxError> {
    let ids = conn
        .query_row("PRAGMA application_id", [], |r| r.get::<_, i32>(0))
        .and_then(|app| {
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i32>(0))
                .map(|v| (app, v))
        });
    match ids {
        Ok((APPLICATION_ID, SCHEMA_VERSION)) => Ok(()),
        Ok((APPLICATION_ID, v)) => Err(OutboxError::Other {
            path: path.to_owned(),
            message: format!(
                "schema version {v} is not supported by this sluice (expects {SCHEMA_VERSION})"
            ),
        }),
        Ok(_) => Err(OutboxError::Damaged {
            path: path.to_owned(),
            message: "a SQLite file that is not a Sluice outbox".into(),
        }),
        Err(e) => Err(sql_error(path, e)),
    }
}

/// Rename a damaged outbox (and its WAL) to `<name>.damaged-<timestamp>`.
fn move_aside(path: &Path) -> Result<PathBuf, OutboxError> {
    let stamp = utc_stamp(SystemTime::now());
    let target = path.with_file_name(format!(
        "{}.damaged-{stamp}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::rename(path, &target).map_err(|e| OutboxError::Other {
        path: path.to_owned(),
        message: format!(
            "damaged, and cannot move it aside to {}: {e}",
            target.display()
        ),
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let moved = PathBuf::from(format!("{}{suffix}", target.display()));
            if std::fs::rename(&side, &moved).is_err() {
                let _ = std::fs::remove_file(&side);
            }
        }
    }
    Ok(target)
}

/// `YYYYMMDDTHHMMSSZ` for a time (UTC, no dependency on a date crate).
pub fn utc_stamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Delete the oldest records until at least `need` bytes are freed.
/// A batch that loses records is dissolved (its remaining records go back
/// to pending): it will be re-formed under a new key, and the collector's
/// per-record dedupe keeps already-delivered records from being stored twice.
fn drop_oldest(tx: &Transaction, need: u64) -> rusqlite::Result<(u64, u64)> {
    let (mut freed, mut dropped) = (0u64, 0u64);
    let mut select =
        tx.prepare_cached("SELECT rowid, bytes, batch FROM records ORDER BY rowid LIMIT 64")?;
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

fn dissolve_batch(tx: &Transaction, batch: i64) -> rusqlite::Result<()> {
    tx.execute("UPDATE records SET batch = NULL WHERE batch = ?1", [batch])?;
    tx.execute("DELETE FROM batches WHERE id = ?1", [batch])?;
    Ok(())
}

/// Dissolve every batch holding a record matching `condition` (with `?1`).
fn dissolve_batches_of(tx: &Transaction, condition: &str, arg: i64) -> rusqlite::Result<()> {
    let batches: Vec<i64> = tx
        .prepare(&format!(
            "SELECT DISTINCT batch FROM records WHERE batch IS NOT NULL AND {condition}"
        ))?
        .query_map([arg], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for batch in batches {
        dissolve_batch(tx, batch)?;
    }
    Ok(())
}

fn batch_records(tx: &Transaction, batch: i64) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    tx.prepare_cached("SELECT id, body FROM records WHERE batch = ?1 ORDER BY rowid")?
        .query_map([batch], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

fn bump(conn: &Connection, name: &str, n: u64) -> rusqlite::Result<()> {
    if n > 0 {
        conn.prepare_cached(
            "INSERT INTO counters(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        )?
        .execute(params![name, n as i64])?;
    }
    Ok(())
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute([key, value])
        .map(|_| ())
}

/// Classify a SQLite error: full disk, damage, or anything else.
fn sql_error(path: &Path, e: rusqlite::Error) -> OutboxError {
    let path = path.to_owned();
    let message = e.to_string();
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        // Extended I/O codes carry errno only in the OS error; SQLite maps
        // ENOSPC on write to SQLITE_FULL, and SQLITE_IOERR_WRITE covers the rest.
        match f.code {
            ErrorCode::DiskFull => return OutboxError::DiskFull { path, message },
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                return OutboxError::Damaged { path, message };
            }
            _ => {}
        }
    }
    OutboxError::Other { path, message }
}
