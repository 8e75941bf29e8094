//! The collector's store: results and batch keys, the fleet view and
//! rollouts, in SQLite (one file, the embedded default, [`sqlite`]) or
//! PostgreSQL (shared by several collectors, [`postgres`]). The logic is
//! written once against the seam in [`sql`]; each engine is one file with
//! its schema and migrations.
//!
//! Invariants (exactly-once storage, on either engine):
//! * a batch key is stored with its records, and the SHA-256 of the
//!   records ([`content_digest`]), in one transaction; a known key with the
//!   same digest is acknowledged again (`replayed`) without storing
//!   anything, so a retried upload never stores twice; a known key with
//!   another digest is refused ([`BatchError::KeyReused`]): acknowledging it
//!   would make the device delete records that were never stored. The key
//!   is claimed first in the transaction, so two collectors storing the
//!   same batch at once store it once: the second waits, then replays;
//! * results are unique by device and id (`PRIMARY KEY(device, id)`): a
//!   device can neither shadow nor be shadowed by another's ids, and a
//!   batch re-formed under a new key stores each result once; an id sent
//!   again with another body refuses the whole batch
//!   ([`BatchError::IdConflict`]) rather than keep one of the two silently;
//! * a batch is acknowledged only once its transaction is committed (and
//!   on disk: SQLite in WAL with `synchronous=FULL`, PostgreSQL with its
//!   default `synchronous_commit`), so it survives a crash of the
//!   collector;
//! * a store is marked as a collector's and carries its schema version;
//!   another database is refused, not written into; an older schema is
//!   migrated at open, in one transaction;
//! * the fleet view is written in the transaction of the batch it comes
//!   from, so it shows exactly what was acknowledged.

mod control;
mod postgres;
mod results;
pub(crate) mod sql;
mod sqlite;

pub use control::{AuditRecord, BundleError, MAX_AUDIT_ROWS, RolloutActionError};
pub use postgres::PoolOptions;
pub use results::{After, ResultsPage};
pub use sql::{Row, SqlError};

use crate::fleet;
use sha2::{Digest, Sha256};
use sluice_protocol::keys::SecretKey;
use sluice_protocol::{BatchAck, DeviceStatus, FleetDevice, FleetSummary, records_digest};
use sql::{Backend, Tx, args};
use std::path::{Path, PathBuf};

/// The schema this collector writes (the same number on both engines).
const SCHEMA_VERSION: i64 = 5;

/// How often a transaction that failed transiently (a deadlock between
/// collectors) is run again before the request fails.
pub const TRANSIENT_ATTEMPTS: u32 = 5;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("collector database {location}: {source}")]
    Database {
        /// The file, or the PostgreSQL URL without its password.
        location: String,
        /// The engine's error.
        source: SqlError,
    },
    /// The folder of the file cannot be created.
    #[error("cannot create the folder of {}: {source}", path.display())]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The schema is not one this collector knows (a newer collector wrote
    /// it).
    #[error(
        "collector database {location} has schema version {found}; this collector knows 1 to {SCHEMA_VERSION} (was it written by a newer sluice-collector?)"
    )]
    UnknownSchema {
        /// The file or URL.
        location: String,
        /// Its version.
        found: i64,
    },
    /// The database is something else's.
    #[error("{location} is not a Sluice collector database ({found})")]
    Foreign {
        /// The file or URL.
        location: String,
        /// What gave it away.
        found: String,
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

/// The store. Methods block (they wait on disk or the database server):
/// call them off async workers.
pub struct Store {
    backend: Box<dyn Backend>,
    /// The file or URL (without its password), for messages.
    location: String,
    /// Where a bundle is unpacked to be checked when a rollout starts.
    work_dir: PathBuf,
    /// How long the fleet view's series are kept, ms.
    retention_ms: i64,
    /// The key every acknowledgement is signed with ([`Store::set_ack_key`]).
    ack_key: Option<SecretKey>,
}

impl Store {
    /// Open (or create) the SQLite store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let retention_ms = crate::Limits::DEFAULT.fleet_retention.as_millis() as i64;
        Ok(Store {
            backend: Box::new(sqlite::Sqlite::open(path, retention_ms)?),
            location: path.display().to_string(),
            work_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            retention_ms,
            ack_key: None,
        })
    }

    /// Connect to the PostgreSQL database at `url`
    /// (`postgres://user:password@host:port/database`), creating or
    /// migrating its schema.
    pub fn connect(url: &str, pool: &PoolOptions) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Box::new(postgres::Postgres::open(url, pool)?),
            location: postgres::redact(url),
            work_dir: std::env::temp_dir(),
            retention_ms: crate::Limits::DEFAULT.fleet_retention.as_millis() as i64,
            ack_key: None,
        })
    }

    /// [`Store::connect`] for a `postgres://` or `postgresql://` URL, else
    /// [`Store::open`] of a file: what `--db` takes.
    pub fn open_any(db: &str, pool: &PoolOptions) -> Result<Store, StoreError> {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            Store::connect(db, pool)
        } else {
            Store::open(Path::new(db))
        }
    }

    /// Sign every acknowledgement with `key` (see
    /// [`BatchAck::sign`]): devices that pin its public half delete
    /// nothing on an answer anyone else made. Collectors sharing a
    /// database share the key. Here, where answers are made, so that no
    /// transport can send one unsigned.
    pub fn set_ack_key(&mut self, key: SecretKey) {
        self.ack_key = Some(key);
    }

    /// Keep the fleet view's series (per-minute throughput, backlog, drift
    /// windows) for `retention` (default [`Limits::fleet_retention`](crate::Limits::fleet_retention)).
    pub fn set_fleet_retention(&mut self, retention: std::time::Duration) {
        self.retention_ms = retention.as_millis().min(i64::MAX as u128) as i64;
    }

    /// The database file, or URL without its password.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn fail(&self, source: SqlError) -> StoreError {
        StoreError::Database {
            location: self.location.clone(),
            source,
        }
    }

    /// Run `f` in a transaction and commit what it returns `Ok` for; run
    /// it again when the engine failed transiently (see
    /// [`SqlError::is_transient`]).
    fn transaction<T, E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<Result<T, E>, SqlError>,
    ) -> Result<T, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let run = (|| -> Result<Result<T, E>, SqlError> {
                let mut tx = self.backend.begin()?;
                let out = f(&mut *tx)?;
                if out.is_ok() {
                    tx.commit()?;
                }
                Ok(out)
            })();
            match run {
                Ok(out) => return out,
                Err(e) if e.is_transient() && attempt < TRANSIENT_ATTEMPTS => {
                    tracing::debug!("{}: {e}; running the transaction again", self.location);
                    std::thread::sleep(std::time::Duration::from_millis(
                        rand::random_range(1..20) * attempt as u64,
                    ));
                }
                Err(e) => return Err(self.fail(e).into()),
            }
        }
    }

    /// A read-only [`Store::transaction`].
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, SqlError>,
    ) -> Result<T, StoreError> {
        self.transaction(|tx| f(tx).map(Ok))
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
        let mut ack = self.transaction(|tx| {
            let now = now_ms();
            let mut ack = BatchAck::new(key, 0, 0, false);
            // Claim the key first: another collector storing the same
            // batch now waits here until this transaction ends, then sees
            // the key as known.
            let claimed = tx.exec(
                "INSERT INTO batches(device, key, received_at_ms, stored, duplicates, digest)
                 VALUES (?1, ?2, ?3, 0, 0, ?4) ON CONFLICT(device, key) DO NOTHING",
                args![device, key, now, digest.as_str()],
            )? == 1;
            if !claimed {
                let known = tx
                    .query_opt(
                        "SELECT stored, duplicates, digest FROM batches WHERE device = ?1 AND key = ?2",
                        args![device, key],
                    )?
                    .ok_or_else(|| SqlError::Decode(format!("batch {key} vanished")))?;
                // Batches stored by schema 1 have no digest: they are
                // acknowledged as before, since they cannot be compared.
                if known.opt_text(2)?.is_some_and(|known| known != digest) {
                    return Ok(Err(BatchError::KeyReused {
                        device: device.to_owned(),
                        key: key.to_owned(),
                    }));
                }
                ack.stored = known.int(0)?.max(0) as u64;
                ack.duplicates = known.int(1)?.max(0) as u64;
                ack.replayed = true;
                fleet::write(tx, device, now, retention_ms, status, &Default::default())?;
                return Ok(Ok(ack));
            }
            let mut facts = fleet::BatchFacts::default();
            let inserted = tx.insert_results(device, key, now, rows)?;
            for (index, (row, inserted)) in rows.iter().zip(inserted).enumerate() {
                if inserted {
                    ack.stored += 1;
                    facts.add(&row.pipeline, row.seq, row.body, now, retention_ms);
                    continue;
                }
                let existing = tx
                    .query_opt(
                        "SELECT CAST(body AS TEXT) FROM results WHERE device = ?1 AND id = ?2",
                        args![device, &row.id],
                    )?
                    .map(|r| r.text(0))
                    .transpose()?
                    .unwrap_or_default();
                if !same_record(&existing, row.body) {
                    // Not committed: the batch is rolled back.
                    return Ok(Err(BatchError::IdConflict {
                        device: device.to_owned(),
                        index,
                        id: row.id.clone(),
                    }));
                }
                ack.duplicates += 1;
            }
            tx.exec(
                "UPDATE batches SET stored = ?3, duplicates = ?4 WHERE device = ?1 AND key = ?2",
                args![device, key, ack.stored as i64, ack.duplicates as i64],
            )?;
            fleet::write(tx, device, now, retention_ms, status, &facts)?;
            if !facts.installs.is_empty() {
                tx.lock_rollouts()?;
                crate::rollout::record(tx, device, &facts.installs)?;
                fleet::trim_installs(tx, device)?;
                crate::rollout::advance(tx, now)?;
            }
            Ok(Ok(ack))
        })?;
        if let Some(secret) = &self.ack_key {
            ack.sign(
                device,
                records_digest(rows.iter().map(|r| r.id.as_str())),
                secret,
            );
        }
        Ok(ack)
    }

    /// Each of `devices` at a glance, as of `now` (ms since the Unix
    /// epoch): stale when not seen for `stale_after_ms`.
    pub fn fleet(
        &self,
        devices: &[String],
        now: i64,
        stale_after_ms: i64,
    ) -> Result<Vec<FleetSummary>, StoreError> {
        self.read(|tx| {
            devices
                .iter()
                .map(|d| fleet::summary(tx, d, now, stale_after_ms))
                .collect()
        })
    }

    /// Which bundle version runs where: devices per bundle name and
    /// version, among `devices`.
    pub fn fleet_versions(
        &self,
        devices: &[String],
    ) -> Result<Vec<sluice_protocol::VersionCount>, StoreError> {
        self.read(|tx| fleet::version_counts(tx, devices))
    }

    /// Install steps kept per device and outcome, among `devices`.
    pub fn install_counts(
        &self,
        devices: &[String],
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(|tx| fleet::install_counts(tx, devices))
    }

    /// `device` with its series since `since_ms`.
    pub fn fleet_device(
        &self,
        device: &str,
        since_ms: i64,
        now: i64,
        stale_after_ms: i64,
    ) -> Result<FleetDevice, StoreError> {
        self.read(|tx| {
            let summary = fleet::summary(tx, device, now, stale_after_ms)?;
            let h = fleet::history(tx, device, since_ms)?;
            Ok(FleetDevice {
                summary,
                since_ms,
                traffic: h.traffic,
                backlog: h.backlog,
                versions: h.versions,
                drift: h.drift,
                windows: h.windows,
                installs: fleet::installs(tx, device)?,
            })
        })
    }
}

/// Now, ms since the Unix epoch (collector clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
