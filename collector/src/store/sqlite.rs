//! SQLite: the embedded default, one file, one connection (writes are
//! serialized by SQLite anyway), WAL with `synchronous=FULL`.
//!
//! The file is marked as a collector store (`application_id`,
//! `user_version`); another SQLite file is refused, not written into; a
//! file of an older schema is migrated when opened, in one transaction:
//! schema 1 (results unique by id alone) to 2, 2 to 3 (the fleet view's
//! tables), 3 to 4 (bundles and their rollouts) and 4 to 5 (the control
//! plane: audit trail, device groups, rollout policies).

use super::sql::{Arg, Backend, SqlError, SqlRow, Tx, Value};
use super::{Row, SCHEMA_VERSION, StoreError};
use rusqlite::Connection;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Marks a SQLite file as a Sluice collector store, "SLCC".
const APPLICATION_ID: i32 = 0x534C_4343;

const RESULTS_TABLE: &str = "
CREATE TABLE results(
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL,
    batch_key TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY(device, id)
);
CREATE INDEX results_device_seq ON results(device, seq);
";

/// `digest` is the hex SHA-256 of the batch's records
/// ([`super::content_digest`]); NULL for batches stored by schema 1, which
/// kept none.
const BATCHES_TABLE: &str = "
CREATE TABLE batches(
    device TEXT NOT NULL,
    key TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    digest TEXT,
    PRIMARY KEY(device, key)
);
";

/// Schema 1 to 2: results become unique by `(device, id)` and batches get
/// their digest. SQLite cannot change a primary key in place, so the
/// results are copied into a new table.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE results RENAME TO results_v1;
DROP INDEX IF EXISTS results_device_seq;
CREATE TABLE results(
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL,
    batch_key TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY(device, id)
);
INSERT INTO results(device, id, pipeline, seq, batch_key, received_at_ms, body)
    SELECT device, id, pipeline, seq, batch_key, received_at_ms, body FROM results_v1;
DROP TABLE results_v1;
CREATE INDEX results_device_seq ON results(device, seq);
ALTER TABLE batches ADD COLUMN digest TEXT;
";

/// The fleet view's tables (schema 3, [`crate::fleet`]).
const FLEET_TABLES: &str = "
CREATE TABLE fleet_devices(
    device TEXT PRIMARY KEY,
    last_seen_ms INTEGER NOT NULL,
    records INTEGER NOT NULL DEFAULT 0,
    status TEXT,
    sluice_version TEXT
);
CREATE TABLE fleet_traffic(
    device TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY(device, minute_ms)
) WITHOUT ROWID;
CREATE TABLE fleet_backlog(
    device TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    pending_records INTEGER NOT NULL,
    journal_items INTEGER NOT NULL,
    set_aside_records INTEGER NOT NULL,
    PRIMARY KEY(device, minute_ms)
) WITHOUT ROWID;
CREATE TABLE fleet_versions(
    device TEXT NOT NULL,
    what TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY(device, what, name, sha256)
);
CREATE TABLE fleet_drift(
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    alarm INTEGER NOT NULL,
    window TEXT NOT NULL,
    PRIMARY KEY(device, pipeline, seq)
);
CREATE INDEX fleet_drift_received ON fleet_drift(device, received_ms);
CREATE TABLE fleet_drift_latest(
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    alarm INTEGER NOT NULL,
    window TEXT NOT NULL,
    PRIMARY KEY(device, pipeline)
);
";

/// Bundles and rollouts (schema 4, [`crate::rollout`]).
const ROLLOUT_TABLES: &str = "
CREATE TABLE bundles(
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    body BLOB NOT NULL,
    stored_ms INTEGER NOT NULL,
    PRIMARY KEY(name, version)
);
CREATE TABLE rollouts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    devices TEXT NOT NULL,
    stages TEXT NOT NULL,
    stage INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE installs(
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY(device, name, version, outcome)
);
";

/// The control plane (schema 5, [`crate::api`]): the audit trail, device
/// groups, each rollout's policy, stage clock and skipped devices, and
/// each bundle's manifest.
const CONTROL_TABLES: &str = "
CREATE TABLE audit(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    remote TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE device_groups(
    grp TEXT NOT NULL,
    device TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    PRIMARY KEY(grp, device)
);
CREATE INDEX device_groups_device ON device_groups(device);
CREATE TABLE fleet_bundles(
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY(device, name)
);
CREATE INDEX installs_device ON installs(device, at_ms);
ALTER TABLE rollouts ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
ALTER TABLE rollouts ADD COLUMN stage_started_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN skipped TEXT NOT NULL DEFAULT '[]';
ALTER TABLE bundles ADD COLUMN manifest TEXT;
";

/// Schema 2 to 3, in the caller's transaction: the fleet tables, with what
/// can be rebuilt from stored batches and results: each device's last seen
/// and record count, and its throughput over the retention. Versions,
/// backlog and drift start with the first batch after the upgrade (the
/// records hold them, but rebuilding them is not worth a slow upgrade).
fn migrate_2_to_3(
    tx: &rusqlite::Transaction<'_>,
    now: i64,
    retention_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute_batch(FLEET_TABLES)?;
    tx.execute(
        "INSERT INTO fleet_devices(device, last_seen_ms, records)
         SELECT b.device, MAX(b.received_at_ms), (SELECT COUNT(*) FROM results r WHERE r.device = b.device)
         FROM batches b GROUP BY b.device",
        [],
    )?;
    // The same minute as the fleet view's bucket, with arrival for "now".
    tx.execute(
        "INSERT INTO fleet_traffic(device, minute_ms, ok, errors)
         SELECT device, (t / 60000) * 60000, SUM(failed IS NULL), SUM(failed IS NOT NULL) FROM (
             SELECT device,
                 CASE WHEN typeof(json_extract(body, '$.completed_at_ms')) = 'integer'
                      AND json_extract(body, '$.completed_at_ms') BETWEEN received_at_ms - :retention AND received_at_ms + :skew
                     THEN json_extract(body, '$.completed_at_ms') ELSE received_at_ms END AS t,
                 json_extract(body, '$.error') AS failed
             FROM results
             WHERE received_at_ms >= :now - :retention AND json_valid(body)
                 AND coalesce(json_extract(body, '$.kind'), 'result') = 'result'
         ) WHERE t >= :now - :retention
         GROUP BY device, (t / 60000) * 60000",
        rusqlite::named_params! {":now": now, ":retention": retention_ms, ":skew": crate::fleet::MAX_CLOCK_SKEW_MS},
    )?;
    Ok(())
}

/// One SQLite file.
pub(crate) struct Sqlite {
    conn: Mutex<Connection>,
}

impl Sqlite {
    /// Open (create, migrate) the store at `path`.
    pub(crate) fn open(path: &Path, retention_ms: i64) -> Result<Sqlite, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        let location = path.display().to_string();
        let sql = |source: rusqlite::Error| StoreError::Database {
            location: location.clone(),
            source: source.into(),
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
                location,
                found: format!("application_id {app:#x}"),
            });
        }
        if app == 0 {
            // A new file, or one written before the marker existed (schema
            // 1, migrated below); the tables of a foreign file would make
            // it fail rather than be mixed into.
            let foreign: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT IN ('results', 'batches')",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if foreign > 0 {
                return Err(StoreError::Foreign {
                    location,
                    found: format!("application_id {app:#x}"),
                });
            }
            let tables: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            let init = if tables == 0 {
                format!(
                    "{RESULTS_TABLE} {BATCHES_TABLE} {FLEET_TABLES} {ROLLOUT_TABLES} {CONTROL_TABLES} PRAGMA user_version = {SCHEMA_VERSION};"
                )
            } else {
                "PRAGMA user_version = 1;".to_owned()
            };
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {init} PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
            ))
            .map_err(sql)?;
        }
        let mut conn = conn;
        let version: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        match version {
            1..=4 => {
                // Every step in one transaction: a crash leaves the old schema.
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(sql)?;
                if version == 1 {
                    tx.execute_batch(MIGRATE_1_TO_2).map_err(sql)?;
                }
                if version <= 2 {
                    migrate_2_to_3(&tx, super::now_ms(), retention_ms).map_err(sql)?;
                }
                if version <= 3 {
                    tx.execute_batch(ROLLOUT_TABLES).map_err(sql)?;
                }
                tx.execute_batch(CONTROL_TABLES).map_err(sql)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sql)?;
                tx.commit().map_err(sql)?;
                tracing::info!("migrated {location} from schema {version} to {SCHEMA_VERSION}");
            }
            v if v as i64 == SCHEMA_VERSION => {}
            found => {
                return Err(StoreError::UnknownSchema {
                    location,
                    found: found as i64,
                });
            }
        }
        Ok(Sqlite {
            conn: Mutex::new(conn),
        })
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Null => ValueRef::Null,
            Arg::Int(v) => ValueRef::Integer(v),
            Arg::Bool(v) => ValueRef::Integer(v as i64),
            Arg::Text(v) => ValueRef::Text(v.as_bytes()),
            Arg::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

struct SqliteTx<'a> {
    conn: MutexGuard<'a, Connection>,
    open: bool,
}

impl Backend for Sqlite {
    fn begin(&self) -> Result<Box<dyn Tx + '_>, SqlError> {
        // rusqlite keeps the connection usable after a panic while the
        // lock was held (the transaction is rolled back below).
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("BEGIN")?;
        Ok(Box::new(SqliteTx { conn, open: true }))
    }
}

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        Ok(statement.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<SqlRow>, SqlError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Int(v as i64),
                    ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                    ValueRef::Blob(v) => Value::Blob(v.to_vec()),
                });
            }
            out.push(SqlRow(values));
        }
        Ok(out)
    }

    fn insert_results(
        &mut self,
        device: &str,
        key: &str,
        now: i64,
        rows: &[Row<'_>],
    ) -> Result<Vec<bool>, SqlError> {
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO results(device, id, pipeline, seq, batch_key, received_at_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(device, id) DO NOTHING",
        )?;
        rows.iter()
            .map(|row| {
                Ok(insert.execute(rusqlite::params![
                    device,
                    row.id,
                    row.pipeline,
                    row.seq,
                    key,
                    now,
                    row.body
                ])? == 1)
            })
            .collect()
    }

    fn lock_rollouts(&mut self) -> Result<(), SqlError> {
        // One connection: transactions are already one at a time.
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}
