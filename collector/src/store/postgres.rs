//! PostgreSQL: the store shared by several collectors (`--db
//! postgres://...`), for fleets past one machine.
//!
//! * A pool of connections ([`PoolOptions`]); each keeps its prepared
//!   statements, so a statement is parsed once per connection.
//! * Versioned migrations applied at start, under an advisory lock, so
//!   collectors starting together migrate once; a database of a newer
//!   schema is refused, and so is one that has a `results` table but no
//!   Sluice schema marker (another application's).
//! * Exactly-once between collectors (READ COMMITTED): a batch's key is
//!   claimed by inserting it first, so a second collector storing the same
//!   batch waits on that row, then finds it and answers `replayed`; result
//!   rows are unique by `(device, id)` with `ON CONFLICT DO NOTHING`; a
//!   deadlock between two re-formed batches aborts one, which the store runs
//!   again ([`super::sql::SqlError::is_transient`]); rollouts change under
//!   a transaction-scoped advisory lock.
//! * Durability is the server's (`synchronous_commit`, on by default): a
//!   batch is acknowledged after its COMMIT returns.

use super::sql::{Arg, Backend, SqlError, SqlRow, Tx, Value};
use super::{Row, SCHEMA_VERSION, StoreError};
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};
use std::collections::HashMap;
use std::time::Duration;

/// The migrations, in order: `(version reached, SQL)`. PostgreSQL support
/// starts at the schema SQLite calls 4, so both engines share numbers.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        4,
        "
CREATE TABLE results(
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    seq BIGINT NOT NULL,
    batch_key TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY(device, id)
);
CREATE INDEX results_device_seq ON results(device, seq);
CREATE TABLE batches(
    device TEXT NOT NULL,
    key TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    stored BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    digest TEXT,
    PRIMARY KEY(device, key)
);
CREATE TABLE fleet_devices(
    device TEXT PRIMARY KEY,
    last_seen_ms BIGINT NOT NULL,
    records BIGINT NOT NULL DEFAULT 0,
    status TEXT,
    sluice_version TEXT
);
CREATE TABLE fleet_traffic(
    device TEXT NOT NULL,
    minute_ms BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    PRIMARY KEY(device, minute_ms)
);
CREATE TABLE fleet_backlog(
    device TEXT NOT NULL,
    minute_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    pending_records BIGINT NOT NULL,
    journal_items BIGINT NOT NULL,
    set_aside_records BIGINT NOT NULL,
    PRIMARY KEY(device, minute_ms)
);
CREATE TABLE fleet_versions(
    device TEXT NOT NULL,
    what TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY(device, what, name, sha256)
);
CREATE TABLE fleet_drift(
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    seq BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    alarm BOOLEAN NOT NULL,
    \"window\" TEXT NOT NULL,
    PRIMARY KEY(device, pipeline, seq)
);
CREATE INDEX fleet_drift_received ON fleet_drift(device, received_ms);
CREATE TABLE fleet_drift_latest(
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    alarm BOOLEAN NOT NULL,
    \"window\" TEXT NOT NULL,
    PRIMARY KEY(device, pipeline)
);
CREATE TABLE bundles(
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    body BYTEA NOT NULL,
    stored_ms BIGINT NOT NULL,
    PRIMARY KEY(name, version)
);
CREATE TABLE rollouts(
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    devices TEXT NOT NULL,
    stages TEXT NOT NULL,
    stage BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE installs(
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY(device, name, version, outcome)
);
",
    ),
    (
        5,
        "
CREATE TABLE audit(
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
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
    added_ms BIGINT NOT NULL,
    PRIMARY KEY(grp, device)
);
CREATE INDEX device_groups_device ON device_groups(device);
CREATE TABLE fleet_bundles(
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY(device, name)
);
CREATE INDEX installs_device ON installs(device, at_ms);
ALTER TABLE rollouts ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
ALTER TABLE rollouts ADD COLUMN stage_started_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN skipped TEXT NOT NULL DEFAULT '[]';
ALTER TABLE bundles ADD COLUMN manifest TEXT;
",
    ),
];

/// Advisory lock keys ("SLCC" and a purpose), arbitrary but fixed.
const MIGRATION_LOCK: i64 = 0x534C_4343_0001;
const ROLLOUT_LOCK: i64 = 0x534C_4343_0002;

/// The connection pool's bounds.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections one collector opens (PostgreSQL's
    /// `max_connections`, 100 by default, is shared by every collector).
    pub max_connections: u32,
    /// Longest wait for a connection (connecting included) before a
    /// request fails with `503`.
    pub connect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A connection with its prepared statements.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    fn statement(&mut self, sql: &str) -> Result<Statement, SqlError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(&placeholders(sql))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// `?N` to `$N` (the statements have no `?` in string literals).
fn placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        Ok(Conn {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// A PostgreSQL database.
pub(crate) struct Postgres {
    /// `None` only while dropped.
    pool: Option<r2d2::Pool<Manager>>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The synchronous client closes a connection by blocking on its
        // own runtime, which panics on a thread that drives async tasks
        // (where a collector's routes are dropped at shutdown).
        let pool = self.pool.take();
        let _ = std::thread::spawn(move || drop(pool)).join();
    }
}

/// `url` without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    if !url.contains("://") {
        // Key-value form: `host=db user=x password=y`.
        return url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Postgres {
    /// Connect to `url` (`postgres://user:password@host:port/db`) and bring
    /// its schema up to date.
    pub(crate) fn open(url: &str, options: &PoolOptions) -> Result<Postgres, StoreError> {
        let location = redact(url);
        let fail = |source: SqlError| StoreError::Database {
            location: location.clone(),
            source,
        };
        let mut config: postgres::Config =
            url.parse().map_err(|e: postgres::Error| fail(e.into()))?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("sluice-collector");
        let pool = r2d2::Pool::builder()
            .max_size(options.max_connections.max(1))
            .min_idle(Some(0))
            .connection_timeout(options.connect_timeout)
            // Connection errors go into the error returned, not a log line
            // per retry.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(Manager { config })
            .map_err(|e| fail(e.into()))?;
        let backend = Postgres { pool: Some(pool) };
        backend.migrate(&location)?;
        Ok(backend)
    }

    fn pool(&self) -> &r2d2::Pool<Manager> {
        self.pool.as_ref().expect("only taken by drop")
    }

    fn migrate(&self, location: &str) -> Result<(), StoreError> {
        let fail = |source: SqlError| StoreError::Database {
            location: location.to_owned(),
            source,
        };
        let mut conn = self.pool().get().map_err(|e| fail(e.into()))?;
        let mut tx = conn.client.transaction().map_err(|e| fail(e.into()))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(|e| fail(e.into()))?;
        let marked: bool = tx
            .query_one("SELECT to_regclass('sluice_schema') IS NOT NULL", &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| fail(e.into()))?;
        let version: i64 = if marked {
            tx.query_one("SELECT version FROM sluice_schema", &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| fail(e.into()))?
        } else {
            let foreign: bool = tx
                .query_one("SELECT to_regclass('results') IS NOT NULL", &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| fail(e.into()))?;
            if foreign {
                return Err(StoreError::Foreign {
                    location: location.to_owned(),
                    found: "a `results` table but no `sluice_schema`".into(),
                });
            }
            tx.batch_execute("CREATE TABLE sluice_schema(version BIGINT NOT NULL); INSERT INTO sluice_schema VALUES (0);")
                .map_err(|e| fail(e.into()))?;
            0
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::UnknownSchema {
                location: location.to_owned(),
                found: version,
            });
        }
        for (reached, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
            tx.batch_execute(sql).map_err(|e| fail(e.into()))?;
            tx.execute("UPDATE sluice_schema SET version = $1", &[reached])
                .map_err(|e| fail(e.into()))?;
            tracing::info!("migrated {location} to schema {reached}");
        }
        tx.commit().map_err(|e| fail(e.into()))?;
        Ok(())
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(v) if *ty == Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            Arg::Int(v) => v.to_sql(ty, out),
            Arg::Bool(v) => v.to_sql(ty, out),
            Arg::Text(v) => v.to_sql(ty, out),
            Arg::Blob(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql` (each inner type checks its own).
        true
    }

    to_sql_checked!();
}

fn values(row: &postgres::Row) -> Result<SqlRow, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?.map(Value::Bool)
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else {
            return Err(SqlError::Decode(format!(
                "column `{}` has type {ty}",
                column.name()
            )));
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(SqlRow(values))
}

struct PgTx {
    conn: r2d2::PooledConnection<Manager>,
    open: bool,
}

impl Backend for Postgres {
    fn begin(&self) -> Result<Box<dyn Tx + '_>, SqlError> {
        let mut conn = self.pool().get()?;
        conn.client.batch_execute("BEGIN")?;
        Ok(Box::new(PgTx { conn, open: true }))
    }
}

impl PgTx {
    fn params<'a>(args: &'a [Arg<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
        args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
    }
}

impl Tx for PgTx {
    fn exec(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, SqlError> {
        let statement = self.conn.statement(sql)?;
        Ok(self.conn.client.execute(&statement, &Self::params(args))?)
    }

    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<SqlRow>, SqlError> {
        let statement = self.conn.statement(sql)?;
        self.conn
            .client
            .query(&statement, &Self::params(args))?
            .iter()
            .map(values)
            .collect()
    }

    fn insert_results(
        &mut self,
        device: &str,
        key: &str,
        now: i64,
        rows: &[Row<'_>],
    ) -> Result<Vec<bool>, SqlError> {
        // One statement for the whole batch: arrays in, the inserted ids
        // out (a round trip per row would cap a collector at a few
        // thousand results a second).
        let statement = self.conn.statement(
            "INSERT INTO results(device, id, pipeline, seq, batch_key, received_at_ms, body)
             SELECT ?1, u.id, u.pipeline, u.seq, ?2, ?3, u.body
             FROM unnest(?4::text[], ?5::text[], ?6::int8[], ?7::text[]) WITH ORDINALITY AS u(id, pipeline, seq, body, n)
             ORDER BY u.n
             ON CONFLICT (device, id) DO NOTHING RETURNING id",
        )?;
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let pipelines: Vec<&str> = rows.iter().map(|r| r.pipeline.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let bodies: Vec<&str> = rows.iter().map(|r| r.body).collect();
        let inserted = self.conn.client.query(
            &statement,
            &[&device, &key, &now, &ids, &pipelines, &seqs, &bodies],
        )?;
        let mut inserted: std::collections::HashSet<String> = inserted
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()?;
        // The first row of an id takes its insertion; the same id again
        // in the batch is compared with it like any stored record.
        Ok(rows.iter().map(|r| inserted.remove(&r.id)).collect())
    }

    fn lock_rollouts(&mut self) -> Result<(), SqlError> {
        self.conn
            .client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&ROLLOUT_LOCK])?;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        self.open = false;
        self.conn.client.batch_execute("COMMIT")?;
        Ok(())
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if self.open && !self.conn.client.is_closed() {
            // A connection whose rollback fails is closed: the pool drops it.
            let _ = self.conn.client.batch_execute("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://sluice:s3cret@db:5432/fleet"),
            "postgres://sluice:***@db:5432/fleet"
        );
        assert_eq!(redact("postgres://db/fleet"), "postgres://db/fleet");
        assert_eq!(
            redact("host=db user=x password=y"),
            "host=db user=x password=***"
        );
    }
}
