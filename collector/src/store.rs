//! The collector's store: one SQLite file of results and batch keys.
//!
//! Invariants (exactly-once storage):
//! * a batch key is stored with its records in one transaction; a batch
//!   whose key is known is acknowledged again (`replayed`) without storing
//!   anything, so a retried upload never stores twice;
//! * results are unique by id (`PRIMARY KEY`; ids start with their device,
//!   whose name cannot contain `/`), so even a batch re-formed under a new
//!   key stores each result once;
//! * a commit returns only once it is on disk (WAL, `synchronous=FULL`), so
//!   an acknowledged batch survives a crash of the collector;
//! * the file is marked as a collector store (`application_id`,
//!   `user_version`); another SQLite file is refused, not written into.

use rusqlite::{Connection, OptionalExtension, params};
use sluice_protocol::{BatchAck, PROTOCOL_VERSION};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Marks a SQLite file as a Sluice collector store, "SLCC".
const APPLICATION_ID: i32 = 0x534C_4343;
const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS results(
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL,
    batch_key TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS results_device_seq ON results(device, seq);
CREATE TABLE IF NOT EXISTS batches(
    device TEXT NOT NULL,
    key TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    PRIMARY KEY(device, key)
);
";

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed on the file.
    #[error("collector database {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The folder of the file cannot be created.
    #[error("cannot create the folder of {}: {source}", path.display())]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is a SQLite database of something else.
    #[error("{} is not a Sluice collector database (application_id {found:#x})", path.display())]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// Its application id.
        found: i32,
    },
}

/// One record to store, already checked.
#[derive(Debug, Clone)]
pub struct Row {
    /// The record's id.
    pub id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its sequence number.
    pub seq: i64,
    /// The record as JSON text.
    pub body: String,
}

/// The store. Methods block (they fsync): call them off async workers.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        let sql = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(sql)?;
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(sql)?;
        let app: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(sql)?;
        if app != 0 && app != APPLICATION_ID {
            return Err(StoreError::Foreign {
                path: path.to_owned(),
                found: app,
            });
        }
        if app == 0 {
            // A new file, or one written before the marker existed: the
            // schema below is the same (IF NOT EXISTS), and the tables of a
            // foreign file would make it fail rather than be mixed into.
            let foreign: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT IN ('results', 'batches')",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if foreign > 0 {
                return Err(StoreError::Foreign {
                    path: path.to_owned(),
                    found: app,
                });
            }
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(sql)?;
        }
        Ok(Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // rusqlite rolls back an unfinished transaction on drop, so a panic
        // while holding the lock leaves the connection usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store batch `key` of `device` with its `rows`, once: a known key is
    /// answered as replayed; ids already stored count as duplicates.
    pub fn store_batch(
        &self,
        device: &str,
        key: &str,
        rows: &[Row],
    ) -> Result<BatchAck, StoreError> {
        let mut conn = self.lock();
        let result = (|| -> rusqlite::Result<BatchAck> {
            let tx = conn.transaction()?;
            let known: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT stored, duplicates FROM batches WHERE device = ?1 AND key = ?2",
                    [device, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let mut ack = BatchAck {
                protocol: PROTOCOL_VERSION,
                key: key.to_owned(),
                stored: 0,
                duplicates: 0,
                replayed: false,
            };
            if let Some((stored, duplicates)) = known {
                ack.stored = stored as u64;
                ack.duplicates = duplicates as u64;
                ack.replayed = true;
                return Ok(ack);
            }
            let now = now_ms();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO results(id, device, pipeline, seq, batch_key, received_at_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING",
                )?;
                for row in rows {
                    if insert.execute(params![
                        row.id,
                        device,
                        row.pipeline,
                        row.seq,
                        key,
                        now,
                        row.body
                    ])? == 1
                    {
                        ack.stored += 1;
                    } else {
                        ack.duplicates += 1;
                    }
                }
            }
            tx.execute(
                "INSERT INTO batches(device, key, received_at_ms, stored, duplicates) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![device, key, now, ack.stored as i64, ack.duplicates as i64],
            )?;
            tx.commit()?;
            Ok(ack)
        })();
        result.map_err(|e| self.sql(e))
    }

    /// How many results are stored for `device`.
    pub fn count(&self, device: &str) -> Result<u64, StoreError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM results WHERE device = ?1",
                [device],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.sql(e))
    }

    /// Up to `limit` of `device`'s results with `seq > after`, in `seq`
    /// order, as the JSON text they were stored as.
    pub fn results(&self, device: &str, after: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let result = (|| -> rusqlite::Result<Vec<String>> {
            let mut select = conn.prepare_cached(
                "SELECT body FROM results WHERE device = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            select
                .query_map(params![device, after, limit], |r| r.get::<_, String>(0))?
                .collect()
        })();
        result.map_err(|e| self.sql(e))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
