//! # sluice-outbox: the device's crash-safe store
//!
//! Accepted inputs and results awaiting upload, one SQLite file at
//! `<data_dir>/outbox.sqlite`: the counterpart of Vector's disk buffer.
//! It imports only leaves (`sluice-types`, `sluice-protocol` for the wire
//! shape of what it keeps, `sluice-durable`); the agent above feeds it and
//! drains it. Its behaviour is pinned by a model-based test
//! (`tests/all/model.rs`): random sequences of operations, crashes and a
//! full disk against a simple in-memory model.
//!
//! Tables:
//! * `journal`: inputs accepted by ingest but not yet processed. An input is
//!   acknowledged to its sender only after its row is committed.
//! * `claimed_files`: files of a watched folder that were accepted into the
//!   journal but not yet deleted from the folder.
//! * `records`: results (or an item's error) awaiting upload, each under a
//!   stable, unique id `<device>/<pipeline>/<instance>-<seq>`
//!   ([`Outbox::result_id`]).
//! * `set_aside`: records the collector refused, found one by one.
//! * `batches`: uploads formed but not yet acknowledged upstream. A record's
//!   batch assignment is committed *before* the upload is sent, so a retry
//!   (even after a restart) sends the same records under the same
//!   idempotency key.
//! * `counters` and `meta`: persisted counters (dropped, rejected, expired,
//!   uploaded...) and the last sync time and error.
//! * `local` and `cursors`: copies of results kept for the device's own
//!   readers (`GET /v1/results`, local consumers), synced or not, and each
//!   local consumer's position in them; read through a second connection so
//!   that a reader never waits behind a commit.
//!
//! They share one file, and so one transaction, because handing an input
//! over to its result ([`Outbox::complete`]) must delete the journal row and
//! store the record atomically. The code is split by role, each file owning
//! its tables:
//! * `schema`: creating, checking and recovering the file;
//! * `journal`: the ingest side, accepted inputs and claimed files;
//! * `records`: pending results, their size cap and age limit;
//! * `batches`: the upload ledger;
//! * `set_aside`: records the collector refused, kept and counted;
//! * `counters`: persisted counters, sync meta and [`Outbox::status`];
//! * `local`: the kept results and the consumers' cursors.
//!
//! Invariants:
//! * **Durable acknowledgements.** The database runs in WAL mode with
//!   `synchronous=FULL`: every commit fsyncs the WAL, so whatever a commit
//!   returned survives power loss and SIGKILL. Throughput comes from group
//!   commit ([`Outbox::append`] and [`Outbox::complete`] take many records
//!   per transaction, so one fsync covers the whole batch), not from weaker
//!   syncing.
//! * **One way to write.** Once the file is open, every change to it goes
//!   through one private helper that runs it as a single transaction under
//!   the connection's lock. The sizes mirrored in memory (pending records
//!   and bytes, journal bytes) change only once that transaction has
//!   committed, and every SQLite error is classified the same way
//!   ([`OutboxError`]).
//! * **Exactly once per input.** Journal sequence numbers are never reused
//!   (`AUTOINCREMENT`), and every file has a random instance id that is part
//!   of every result id, so ids stay unique even after a damaged file was
//!   moved aside, whatever the clock says. A result is stored under its input's id with `INSERT OR
//!   IGNORE` in the same transaction that deletes the journal row, so an
//!   input processed again after a crash cannot produce a second result.
//! * **Bounded.** Pending records never exceed `max_bytes` (ids plus
//!   documents; SQLite adds a few percent of page overhead) and are dropped
//!   after `max_age_secs`; every drop is counted, by cause, in the file.
//! * **Deleted only when acknowledged.** Records leave the outbox through
//!   [`Outbox::ack_batch`] (the collector confirmed the batch), the size cap
//!   or the age limit, each counted. A record the collector refuses is set
//!   aside, alone, and kept ([`Outbox::split_batch`]).
//! * **No crash on a full disk.** `SQLITE_FULL` and `ENOSPC` surface as
//!   [`OutboxError::DiskFull`]; the transaction is rolled back and nothing
//!   changes, so callers back off and retry while uploads (which free space)
//!   go on. Uploads can always free space: a disk reserve beside the file
//!   (`outbox.disk_reserve_bytes`) is given back when an acknowledgement
//!   or an expiry finds the disk full (`reserve.rs`).
//! * **Damage is detected at start-up.** [`Outbox::open`] runs SQLite's
//!   `quick_check`; a damaged or foreign file is moved aside as
//!   `outbox.sqlite.damaged-<UTC timestamp>` (with its `-wal`) and a fresh one
//!   is created, with the reason kept in [`Outbox::recovered`].
//! * **One damaged row fails alone.** A row whose columns do not hold what
//!   the outbox wrote (another storage class, a NULL, a size that does not
//!   match: what one flipped bit in a record's header does, which
//!   `quick_check` does not see, or sees only as a NULL) never stops the
//!   others: a pending record is set aside (kept, counted `damaged`), at
//!   open and whenever an upload reads it; a journal row becomes a failed
//!   result naming the column (see `damage.rs`).

#![deny(missing_docs)]

/// A pending record's `bytes` as the sizes count it: the stored value when
/// the outbox could have written it, else 0. Every sum and subtraction of
/// sizes uses this one expression, so a damaged row is counted the same
/// (as nothing) everywhere, and no sum fails or overflows on it.
macro_rules! record_size {
    () => {
        "(CASE WHEN typeof(bytes) = 'integer' AND bytes BETWEEN 0 AND 1099511627776 THEN bytes ELSE 0 END)"
    };
}

// The table files call each other (records -> batches, batches -> set_aside,
// damage -> set_aside, set_aside -> records): one SQLite transaction spans
// the tables, and an operation on one must change the others in it (a
// dropped record dissolves its batch, a refused one is set aside and
// counted). A circle inside this module, allowed in .ci/house.py for that.
mod batches;
mod config;
mod counters;
mod damage;
mod journal;
mod local;
mod records;
mod reserve;
mod schema;
mod set_aside;

pub use batches::{Batch, Split};
pub use config::{CACHE_BYTES, FullPolicy, OutboxConfig};
pub use counters::{Backlog, Counter, Status, counter};
pub use journal::{Delivery, JournalItem, KeyedAccept, NewInput};
pub use local::LocalPage;
pub use records::{AppendReport, NewRecord};
pub use reserve::{free_bytes, volume_bytes};
pub use schema::Recovery;
pub use set_aside::SetAside;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction};
use sluice_types::now_ms;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// File name of the outbox inside the data directory.
pub const FILE_NAME: &str = "outbox.sqlite";

/// Why an outbox operation failed. Always names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The disk (or the file's page limit) is full; nothing was changed.
    #[error("outbox {}: disk full: {source}", path.display())]
    DiskFull {
        /// The outbox file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file is damaged, or not an outbox.
    #[error("outbox {}: damaged: {reason}", path.display())]
    Damaged {
        /// The outbox file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// SQLite failed otherwise.
    #[error("outbox {}: {source}", path.display())]
    Sqlite {
        /// The outbox file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file operation around the database failed.
    #[error("outbox {}: {what}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The outbox was written by a newer Sluice (left untouched), or is
    /// otherwise unusable as it is.
    #[error("outbox {}: {reason}", path.display())]
    Unusable {
        /// The outbox file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl OutboxError {
    /// Whether this is a full disk (retry later; uploads free space).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::DiskFull { .. })
    }
}

/// Sizes mirrored in memory, so that appends need no scan and ingest's
/// back-pressure needs no query. A writing transaction works on a copy,
/// kept only if the transaction commits.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// `COUNT(*)` of `records`.
    pending_records: u64,
    /// `SUM(bytes)` of `records`.
    pending_bytes: u64,
    /// `SUM(LENGTH(data))` of `journal`.
    journal_bytes: u64,
    /// `SUM(bytes)` of `local`.
    local_bytes: u64,
}

impl Sizes {
    /// Count what the file holds (at open).
    fn load(conn: &Connection) -> rusqlite::Result<Sizes> {
        let (pending_bytes, pending_records): (i64, i64) = conn.query_row(
            concat!(
                "SELECT COALESCE(SUM(",
                record_size!(),
                "), 0), COUNT(*) FROM records"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let journal_bytes: i64 = conn.query_row(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM journal",
            [],
            |r| r.get(0),
        )?;
        Ok(Sizes {
            pending_records: pending_records as u64,
            pending_bytes: pending_bytes as u64,
            journal_bytes: journal_bytes as u64,
            local_bytes: local::kept_bytes(conn)?,
        })
    }
}

struct Inner {
    conn: Connection,
    pending_records: u64,
    pending_bytes: u64,
    local_bytes: u64,
}

/// The outbox. All methods may be called from many threads; they serialize
/// on one connection (SQLite has one writer anyway), except
/// [`Outbox::journal_bytes`], which reads a mirror and never waits.
pub struct Outbox {
    path: PathBuf,
    config: OutboxConfig,
    inner: Mutex<Inner>,
    /// Changed only under `inner`'s lock, after a commit; read without it.
    journal_bytes: AtomicU64,
    recovered: Option<Recovery>,
    instance: Option<String>,
    reserve: reserve::Reserve,
    /// The file's page cap outside intake (`max_page_count`): SQLite's own,
    /// or [`Outbox::limit_file_pages`]'.
    page_limit: AtomicU64,
    /// Why the last write failed, until one succeeds (readiness).
    write_failure: Mutex<Option<String>>,
    /// A second connection for the device's own readers of kept results
    /// (see `local.rs`), opened on first use: in WAL mode it reads what is
    /// committed without waiting for a writer's fsync.
    local_reader: Mutex<Option<Connection>>,
}

impl Outbox {
    /// Open (or create) `<data_dir>/outbox.sqlite`, creating `data_dir`.
    pub fn open_in(data_dir: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OutboxError::Io {
            path: data_dir.to_owned(),
            what: "cannot create the data directory".into(),
            source,
        })?;
        Outbox::open(&data_dir.join(FILE_NAME), config)
    }

    /// Open (or create) the outbox at `path`. A damaged file is moved aside
    /// and replaced by a fresh one (see [`Outbox::recovered`]); only a file
    /// that cannot be moved or created is an error.
    pub fn open(path: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        let (conn, recovered) = schema::open_or_recover(path)?;
        let outbox = Outbox::new(path, config, conn, recovered)?;
        outbox.scrub()?;
        outbox.ensure_reserve();
        outbox.expire(now_ms())?;
        Ok(outbox)
    }

    /// Open an existing outbox for reading only (`sluice outbox status`
    /// while an agent runs): no creation, no recovery, no expiry.
    pub fn open_read_only(path: &Path, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        if !path.exists() {
            return Err(OutboxError::Unusable {
                path: path.to_owned(),
                reason: "no such file (has the agent run yet?)".into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| sql_error(path, e))?;
        schema::check_identity(&conn, path)?;
        Outbox::new(path, config, conn, None)
    }

    fn new(
        path: &Path,
        config: OutboxConfig,
        conn: Connection,
        recovered: Option<Recovery>,
    ) -> Result<Outbox, OutboxError> {
        let sizes = Sizes::load(&conn).map_err(|e| sql_error(path, e))?;
        let instance = conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| sql_error(path, e))?;
        let page_limit: i64 = conn
            .query_row("PRAGMA max_page_count", [], |r| r.get(0))
            .map_err(|e| sql_error(path, e))?;
        Ok(Outbox {
            instance,
            reserve: reserve::Reserve::new(path, config.disk_reserve_bytes),
            page_limit: AtomicU64::new(page_limit.max(0) as u64),
            write_failure: Mutex::new(None),
            local_reader: Mutex::new(None),
            path: path.to_owned(),
            config,
            inner: Mutex::new(Inner {
                conn,
                pending_records: sizes.pending_records,
                pending_bytes: sizes.pending_bytes,
                local_bytes: sizes.local_bytes,
            }),
            journal_bytes: AtomicU64::new(sizes.journal_bytes),
            recovered,
        })
    }

    /// The outbox file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its bounds.
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// This outbox file's instance id, random at its creation and part of
    /// every result id (`None` only for a read-only view of a file written
    /// by an older sluice).
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The id of the result of input `seq` of `pipeline` on `device`.
    pub fn result_id(&self, device: &str, pipeline: &str, seq: i64) -> String {
        sluice_protocol::result_id(device, pipeline, self.instance(), seq)
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

    /// Run `f` in one transaction and commit it; the only way anything is
    /// written. `f` may change the sizes it is given; they replace the
    /// mirrored ones only once the commit succeeded. On any error the
    /// transaction is rolled back and nothing changes, on disk or in memory.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction, &mut Sizes) -> rusqlite::Result<T>,
    ) -> Result<T, OutboxError> {
        self.write_growing(None, f)
    }

    /// [`Outbox::write`] for intake (new inputs, new records): while the disk
    /// reserve is given back (or could not be made), the file may reuse its
    /// free pages but grow only into the free space beyond the reserve's
    /// size, which stays for what frees space (acknowledgements, expiry):
    /// past that, intake finds the disk full (see `reserve.rs`).
    fn write_intake<T>(
        &self,
        f: impl FnOnce(&Transaction, &mut Sizes) -> rusqlite::Result<T>,
    ) -> Result<T, OutboxError> {
        self.write_growing(self.reserve.intake_headroom(), f)
    }

    /// [`Outbox::write`], the file growing by at most `headroom` bytes
    /// (`None`: up to its page cap).
    fn write_growing<T>(
        &self,
        headroom: Option<u64>,
        f: impl FnOnce(&Transaction, &mut Sizes) -> rusqlite::Result<T>,
    ) -> Result<T, OutboxError> {
        let mut inner = self.lock();
        let Inner {
            conn,
            pending_records,
            pending_bytes,
            local_bytes,
        } = &mut *inner;
        let limit = self.page_limit.load(Ordering::Relaxed);
        if let Some(bytes) = headroom {
            let capped = conn
                .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                .and_then(|size| {
                    let count: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                    let grow = bytes / (size.max(1) as u64);
                    let cap = (count.max(0) as u64).saturating_add(grow).min(limit);
                    set_page_cap(conn, cap)
                });
            if let Err(e) = capped {
                return Err(sql_error(&self.path, e));
            }
        }
        let mut sizes = Sizes {
            pending_records: *pending_records,
            pending_bytes: *pending_bytes,
            // Only changed under this lock, so this is the current value.
            journal_bytes: self.journal_bytes.load(Ordering::Relaxed),
            local_bytes: *local_bytes,
        };
        let written = conn.transaction().and_then(|tx| {
            let value = f(&tx, &mut sizes)?;
            tx.commit()?;
            Ok(value)
        });
        if headroom.is_some()
            && let Err(e) = set_page_cap(conn, limit)
        {
            // Left capped, acknowledgements could not grow the file either:
            // say so loudly; the next intake sets the cap again anyway.
            tracing::error!(outbox = %self.path.display(), "cannot lift the intake page cap: {e}");
        }
        *self.write_failure.lock().unwrap_or_else(|p| p.into_inner()) =
            written.as_ref().err().map(|e| e.to_string());
        let value = written.map_err(|e| sql_error(&self.path, e))?;
        *pending_records = sizes.pending_records;
        *pending_bytes = sizes.pending_bytes;
        *local_bytes = sizes.local_bytes;
        self.journal_bytes
            .store(sizes.journal_bytes, Ordering::Relaxed);
        Ok(value)
    }

    /// Run `op`, which frees space or leads to freeing it (acknowledging,
    /// expiring...); if it finds the disk full, give the disk reserve back,
    /// fold the WAL into the file and cut it to nothing, and run it once more
    /// (see `reserve.rs`).
    fn freeing<T>(&self, op: impl Fn() -> Result<T, OutboxError>) -> Result<T, OutboxError> {
        match op() {
            Err(e) if e.is_disk_full() => {
                self.reserve.release();
                if let Err(e) = self
                    .read(|conn| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
                {
                    tracing::warn!("disk full: cannot fold the outbox's WAL back: {e}");
                }
                op()
            }
            result => result,
        }
    }

    /// Why the last write failed, if it did and none succeeded since (a full
    /// disk, a file gone read-only): the outbox is not writable.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Make the disk reserve again if it was used and the disk has room
    /// (the housekeeper calls this).
    pub fn ensure_reserve(&self) {
        self.reserve.ensure();
    }

    /// Run the queries of `f` on the connection (no transaction).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, OutboxError> {
        f(&self.lock().conn).map_err(|e| sql_error(&self.path, e))
    }

    /// Limit the file to `pages` pages of SQLite (a hard guard below the
    /// disk's own size; writes beyond fail as [`OutboxError::DiskFull`]).
    pub fn limit_file_pages(&self, pages: u64) -> Result<(), OutboxError> {
        let inner = self.lock();
        set_page_cap(&inner.conn, pages).map_err(|e| sql_error(&self.path, e))?;
        self.page_limit.store(pages, Ordering::Relaxed);
        Ok(())
    }
}

/// Cap the file at `pages` pages (SQLite keeps it at least its size).
fn set_page_cap(conn: &Connection, pages: u64) -> rusqlite::Result<()> {
    let pages = i64::try_from(pages).unwrap_or(i64::MAX);
    conn.pragma_update_and_check(None, "max_page_count", pages, |_| Ok(()))
}

/// Classify a SQLite error: full disk, damage, or anything else.
fn sql_error(path: &Path, e: rusqlite::Error) -> OutboxError {
    let path = path.to_owned();
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        // Extended I/O codes carry errno only in the OS error; SQLite maps
        // ENOSPC on write to SQLITE_FULL, and SQLITE_IOERR_WRITE covers the rest.
        match f.code {
            ErrorCode::DiskFull => return OutboxError::DiskFull { path, source: e },
            ErrorCode::CannotOpen | ErrorCode::ReadOnly => {
                // SQLite says only "unable to open database file" or
                // "readonly database": find out why from the file system.
                let reason = format!(
                    "SQLite cannot open it for writing: {}",
                    schema::why_unopenable(&path)
                );
                return OutboxError::Unusable { path, reason };
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                return OutboxError::Damaged {
                    path,
                    reason: e.to_string(),
                };
            }
            _ => {}
        }
    }
    OutboxError::Sqlite { path, source: e }
}

#[cfg(test)]
mod tests;
