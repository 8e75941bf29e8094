//! The collector's store: one SQLite file of results and batch keys.
//!
//! Invariants (exactly-once storage):
//! * a batch key is stored with its records, and the SHA-256 of the
//!   records ([`content_digest`]), in one transaction; a known key with the
//!   same digest is acknowledged again (`replayed`) without storing
//!   anything, so a retried upload never stores twice; a known key with
//!   another digest is refused ([`BatchError::KeyReused`]): acknowledging it
//!   would make the device delete records that were never stored;
//! * results are unique by device and id (`PRIMARY KEY(device, id)`): a
//!   device can neither shadow nor be shadowed by another's ids, and a
//!   batch re-formed under a new key stores each result once; an id sent
//!   again with another body refuses the whole batch
//!   ([`BatchError::IdConflict`]) rather than keep one of the two silently;
//! * a commit returns only once it is on disk (WAL, `synchronous=FULL`), so
//!   an acknowledged batch survives a crash of the collector;
//! * the file is marked as a collector store (`application_id`,
//!   `user_version`); another SQLite file is refused, not written into;
//!   a file of an older schema is migrated when opened, in one
//!   transaction: schema 1 (results unique by id alone) to 2, 2 to 3
//!   (the fleet view's tables, [`crate::fleet`]), and 3 to 4 (bundles and
//!   their rollouts, [`crate::rollout`]);
//! * the fleet view is written in the transaction of the batch it comes
//!   from, so it shows exactly what was acknowledged.

use crate::fleet;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use sluice_protocol::{BatchAck, DeviceStatus, FleetDevice, FleetSummary, PROTOCOL_VERSION};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Marks a SQLite file as a Sluice collector store, "SLCC".
const APPLICATION_ID: i32 = 0x534C_4343;
const SCHEMA_VERSION: i32 = 4;

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

/// `digest` is the hex SHA-256 of the batch's records ([`content_digest`]);
/// NULL for batches stored by schema 1, which kept none.
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
    /// The file's schema is not one this collector knows (a newer
    /// collector wrote it).
    #[error("collector database {} has schema version {found}; this collector knows 1 to {SCHEMA_VERSION} (was it written by a newer sluice-collector?)", path.display())]
    UnknownSchema {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i32,
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

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batch key is known, for other records.
    #[error(
        "batch key `{key}` was already used by device `{device}` for a batch with other records; a new batch needs a new key"
    )]
    KeyReused {
        /// The device.
        device: String,
        /// The batch key.
        key: String,
    },
    /// A record's id is already stored for its device, with another body.
    #[error(
        "record {index}: id `{id}` is already stored for device `{device}` with a different body; nothing of the batch was stored"
    )]
    IdConflict {
        /// The device.
        device: String,
        /// The record's index in the batch.
        index: usize,
        /// Its id.
        id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One record to store, already checked.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The record's id.
    pub id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its sequence number.
    pub seq: i64,
    /// The record as JSON text, as it was sent (borrowed from the batch
    /// rather than copied: a batch can be tens of MiB).
    pub body: &'a str,
}

/// The SHA-256 of a batch's records: each record's JSON text, in order,
/// preceded by its length (8 bytes, little endian), so that no two
/// different lists of records hash the same bytes.
pub fn content_digest<'a>(records: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for record in records {
        hasher.update((record.len() as u64).to_le_bytes());
        hasher.update(record.as_bytes());
    }
    hasher.finalize().into()
}

/// Whether two JSON texts of the same record are the same record: equal
/// text, or equal values (a device re-serializing a record may change its
/// spacing or key order, which is no conflict).
fn same_record(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (
                serde_json::from_str::<serde_json::Value>(a),
                serde_json::from_str::<serde_json::Value>(b),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

/// The store. Methods block (they fsync): call them off async workers.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// How long the fleet view's series are kept, ms.
    retention_ms: i64,
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
                    path: path.to_owned(),
                    found: app,
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
                    "{RESULTS_TABLE} {BATCHES_TABLE} {} {} PRAGMA user_version = {SCHEMA_VERSION};",
                    fleet::TABLES,
                    crate::rollout::TABLES
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
        let retention_ms = crate::Limits::DEFAULT.fleet_retention.as_millis() as i64;
        match version {
            1..=3 => {
                // Every step in one transaction: a crash leaves the old schema.
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(sql)?;
                if version == 1 {
                    tx.execute_batch(MIGRATE_1_TO_2).map_err(sql)?;
                }
                if version <= 2 {
                    fleet::migrate_2_to_3(&tx, now_ms(), retention_ms).map_err(sql)?;
                }
                tx.execute_batch(crate::rollout::TABLES).map_err(sql)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sql)?;
                tx.commit().map_err(sql)?;
                tracing::info!(
                    "migrated {} from schema {version} to {SCHEMA_VERSION}",
                    path.display()
                );
            }
            SCHEMA_VERSION => {}
            found => {
                return Err(StoreError::UnknownSchema {
                    path: path.to_owned(),
                    found,
                });
            }
        }
        Ok(Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            retention_ms,
        })
    }

    /// Keep the fleet view's series (per-minute throughput, backlog, drift
    /// windows) for `retention` (default [`Limits::fleet_retention`](crate::Limits::fleet_retention)).
    pub fn set_fleet_retention(&mut self, retention: std::time::Duration) {
        self.retention_ms = retention.as_millis().min(i64::MAX as u128) as i64;
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

    /// Store batch `key` of `device` with its `rows`, once: a known key
    /// with the same records is answered as replayed, with other records
    /// refused; ids already stored with the same body count as duplicates,
    /// with another body refuse the batch. Nothing is stored unless the
    /// whole batch is.
    pub fn store_batch(
        &self,
        device: &str,
        key: &str,
        rows: &[Row<'_>],
    ) -> Result<BatchAck, BatchError> {
        self.store_batch_with(device, key, rows, None)
    }

    /// [`Store::store_batch`], with the device's `status` as the batch
    /// carried it: recorded in the fleet view, in the same transaction,
    /// even when the batch is a replay (it shows the device alive).
    pub fn store_batch_with(
        &self,
        device: &str,
        key: &str,
        rows: &[Row<'_>],
        status: Option<&DeviceStatus>,
    ) -> Result<BatchAck, BatchError> {
        let retention_ms = self.retention_ms;
        let digest = hex::encode(content_digest(rows.iter().map(|r| r.body)));
        let mut conn = self.lock();
        let result = (|| -> rusqlite::Result<Result<BatchAck, BatchError>> {
            let tx = conn.transaction()?;
            let known: Option<(i64, i64, Option<String>)> = tx
                .query_row(
                    "SELECT stored, duplicates, digest FROM batches WHERE device = ?1 AND key = ?2",
                    [device, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let mut ack = BatchAck {
                protocol: PROTOCOL_VERSION,
                key: key.to_owned(),
                stored: 0,
                duplicates: 0,
                replayed: false,
            };
            if let Some((stored, duplicates, known_digest)) = known {
                // Batches stored by schema 1 have no digest: they are
                // acknowledged as before, since they cannot be compared.
                if known_digest.is_some_and(|known| known != digest) {
                    return Ok(Err(BatchError::KeyReused {
                        device: device.to_owned(),
                        key: key.to_owned(),
                    }));
                }
                ack.stored = stored as u64;
                ack.duplicates = duplicates as u64;
                ack.replayed = true;
                let now = now_ms();
                fleet::write(&tx, device, now, retention_ms, status, &Default::default())?;
                tx.commit()?;
                return Ok(Ok(ack));
            }
            let now = now_ms();
            let mut facts = fleet::BatchFacts::default();
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO results(device, id, pipeline, seq, batch_key, received_at_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(device, id) DO NOTHING",
                )?;
                let mut stored_body = tx.prepare_cached(
                    "SELECT CAST(body AS TEXT) FROM results WHERE device = ?1 AND id = ?2",
                )?;
                for (index, row) in rows.iter().enumerate() {
                    if insert.execute(params![
                        device,
                        row.id,
                        row.pipeline,
                        row.seq,
                        key,
                        now,
                        row.body
                    ])? == 1
                    {
                        ack.stored += 1;
                        facts.add(&row.pipeline, row.seq, row.body, now, retention_ms);
                        continue;
                    }
                    let existing: String =
                        stored_body.query_row([device, &row.id], |r| r.get(0))?;
                    if !same_record(&existing, row.body) {
                        // Dropping `tx` rolls the batch back.
                        return Ok(Err(BatchError::IdConflict {
                            device: device.to_owned(),
                            index,
                            id: row.id.clone(),
                        }));
                    }
                    ack.duplicates += 1;
                }
            }
            tx.execute(
                "INSERT INTO batches(device, key, received_at_ms, stored, duplicates, digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![device, key, now, ack.stored as i64, ack.duplicates as i64, digest],
            )?;
            fleet::write(&tx, device, now, retention_ms, status, &facts)?;
            if !facts.installs.is_empty() {
                crate::rollout::record(&tx, device, &facts.installs)?;
                crate::rollout::advance(&tx, now)?;
            }
            tx.commit()?;
            Ok(Ok(ack))
        })();
        result.map_err(|e| BatchError::Store(self.sql(e)))?
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

impl Store {
    /// Each of `devices` at a glance, as of `now` (ms since the Unix
    /// epoch): stale when not seen for `stale_after_ms`.
    pub fn fleet(
        &self,
        devices: &[String],
        now: i64,
        stale_after_ms: i64,
    ) -> Result<Vec<FleetSummary>, StoreError> {
        let conn = self.lock();
        devices
            .iter()
            .map(|d| fleet::summary(&conn, d, now, stale_after_ms))
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// `device` with its series since `since_ms`.
    pub fn fleet_device(
        &self,
        device: &str,
        since_ms: i64,
        now: i64,
        stale_after_ms: i64,
    ) -> Result<FleetDevice, StoreError> {
        let conn = self.lock();
        let result = (|| -> rusqlite::Result<FleetDevice> {
            let summary = fleet::summary(&conn, device, now, stale_after_ms)?;
            let h = fleet::history(&conn, device, since_ms)?;
            Ok(FleetDevice {
                summary,
                since_ms,
                traffic: h.traffic,
                backlog: h.backlog,
                versions: h.versions,
                drift: h.drift,
                windows: h.windows,
            })
        })();
        result.map_err(|e| self.sql(e))
    }
}

/// Why a rollout cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutStartError {
    /// The file is not a bundle (or a damaged one).
    #[error(transparent)]
    Bundle(#[from] sluice_bundle::archive::ArchiveError),
    /// Its manifest cannot be read.
    #[error("bundle {}: bad manifest: {reason}", path.display())]
    Manifest {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Over [`crate::rollout::MAX_BUNDLE_BYTES`].
    #[error("bundle {} is {bytes} bytes, over the {} a rollout takes", path.display(), crate::rollout::MAX_BUNDLE_BYTES)]
    TooLarge {
        /// The bundle file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The rollout itself (stages, devices, another one running).
    #[error(transparent)]
    Rollout(#[from] crate::rollout::RolloutError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Start rolling out the bundle file at `bundle` to `devices` (every
    /// device that ever uploaded when `None`), in `stages` (percentages of
    /// them, increasing to 100). The bundle is kept in the store.
    pub fn start_rollout(
        &self,
        bundle: &Path,
        devices: Option<Vec<String>>,
        stages: &[u32],
    ) -> Result<crate::rollout::Rollout, RolloutStartError> {
        let bytes = std::fs::metadata(bundle).map(|m| m.len()).unwrap_or(0);
        if bytes > crate::rollout::MAX_BUNDLE_BYTES {
            return Err(RolloutStartError::TooLarge {
                path: bundle.to_owned(),
                bytes,
            });
        }
        let work = PathBuf::from(format!(
            "{}.rollout-{:016x}",
            self.path.display(),
            rand::random::<u64>()
        ));
        let unpacked = sluice_bundle::archive::unpack(bundle, &work, &Default::default());
        let _ = std::fs::remove_dir_all(&work);
        let manifest: sluice_bundle::Manifest = serde_json::from_slice(&unpacked?.manifest)
            .map_err(|e| RolloutStartError::Manifest {
                path: bundle.to_owned(),
                reason: e.to_string(),
            })?;
        let body = std::fs::read(bundle).map_err(|source| {
            RolloutStartError::Bundle(sluice_bundle::archive::ArchiveError::Io {
                path: bundle.to_owned(),
                source,
            })
        })?;
        let sha256 = hex::encode(Sha256::digest(&body));
        let mut conn = self.lock();
        let sql = |e| RolloutStartError::Store(self.sql(e));
        let tx = conn.transaction().map_err(sql)?;
        let devices = match devices {
            Some(devices) => devices,
            None => tx
                .prepare("SELECT DISTINCT device FROM batches ORDER BY device")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(sql)?,
        };
        let id = crate::rollout::start(
            &tx,
            &manifest.name,
            manifest.version,
            &sha256,
            &body,
            &devices,
            stages,
            now_ms(),
        )?;
        tx.commit().map_err(sql)?;
        let rollout = crate::rollout::list(&conn, None)
            .map_err(sql)?
            .into_iter()
            .find(|r| r.id == id)
            .expect("just started");
        Ok(rollout)
    }

    /// Every rollout, newest first, with each device's progress.
    pub fn rollouts(&self) -> Result<Vec<crate::rollout::Rollout>, StoreError> {
        crate::rollout::list(&self.lock(), None).map_err(|e| self.sql(e))
    }

    /// `pause`, `resume` or `abort` rollout `id`.
    pub fn rollout_action(
        &self,
        id: i64,
        action: &'static str,
    ) -> Result<(), crate::rollout::RolloutError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        crate::rollout::set(&tx, id, action, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// The bundle `device` should be offered now: `(name, version, sha256,
    /// bytes)`.
    pub fn bundle_for(
        &self,
        device: &str,
    ) -> Result<Option<(String, u64, String, Vec<u8>)>, StoreError> {
        crate::rollout::offer(&self.lock(), device).map_err(|e| self.sql(e))
    }
}

/// Now, ms since the Unix epoch (collector clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
