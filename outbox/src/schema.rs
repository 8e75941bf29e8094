//! The file itself: creating the schema, checking that a file is an intact
//! outbox, and moving a damaged one aside.
//!
//! Invariants:
//! * A file is an outbox only if it carries `APPLICATION_ID` ("SLCE") and a
//!   `user_version` of `SCHEMA_VERSION`; any other SQLite file is foreign
//!   and treated as damaged, never written to.
//! * A new outbox is made complete under a temporary name (`<name>.new`) and
//!   renamed into place, so the real path never holds a half-made file:
//!   a file there of 0 bytes was truncated or wiped, and is damage (its
//!   pending results are gone), not a new outbox.
//! * Every outbox has an instance id (`meta.instance`, 64 random bits) that
//!   is part of every result id ([`sluice_protocol::result_id`]): a fresh
//!   file after a damaged one was moved aside, or a wiped data directory,
//!   never reuses an id already delivered, even when the clock was set back
//!   (boards without a real-time clock restore the same time at each boot).
//!   Sequence numbers still start at the clock in microseconds, so that
//!   records keep their order upstream when the clock is right.
//! * Damage found at open (failed `quick_check`, not a database, foreign
//!   file, an empty file) is never fatal: the file and its `-wal`/`-shm` are renamed to
//!   `<name>.damaged-YYYYMMDDTHHMMSSZ` and a fresh file takes its place. Only
//!   a file that can be neither moved nor created is an error.
//! * An outbox of an older schema version is migrated in one transaction
//!   (each step in `MIGRATIONS`); one of a newer version is an error, not
//!   damage: that file is left as it is, for the sluice that wrote it.

use super::{OutboxError, sql_error};
use rusqlite::{Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Marks a SQLite file as a Sluice outbox (`PRAGMA application_id`), "SLCE".
const APPLICATION_ID: i32 = 0x534C_4345;
const SCHEMA_VERSION: i32 = 7;

/// What each schema version adds to the one before, applied in order to an
/// older outbox at open (in one transaction), so an upgrade keeps its data.
const MIGRATIONS: &[(i32, &str)] = &[
    (2, INGEST_KEYS),
    (3, INSTANCE),
    (4, SET_ASIDE),
    (5, CRASHES),
    (6, super::local::LOCAL),
    (7, super::local::LEANER),
];

/// Version 5: how many times each input was in the pipeline when it
/// crashed (a panic), and the last crash's cause, so that an input that
/// crashes it again and again is set aside as a failed result after a
/// bounded number of crashes, also across restarts (see `worker.rs`).
const CRASHES: &str = "
ALTER TABLE journal ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE journal ADD COLUMN last_crash TEXT;
";

/// Version 4: records the collector refused, kept (see `set_aside.rs`); and
/// inputs refused at ingest, journaled without their data so that their
/// failure is a result like any other (see `journal.rs`).
const SET_ASIDE: &str = "
ALTER TABLE journal ADD COLUMN refused TEXT;
CREATE TABLE set_aside(
    id TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    set_aside_at_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL
);
";

/// Version 3: the outbox instance id, random, written once.
const INSTANCE: &str =
    "INSERT OR IGNORE INTO meta(key, value) VALUES ('instance', lower(hex(randomblob(8))));";

/// Version 2: idempotency keys of HTTP ingest (see `journal.rs`).
const INGEST_KEYS: &str = "
CREATE TABLE ingest_keys(
    key TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    seq INTEGER NOT NULL,
    accepted_at_ms INTEGER NOT NULL
);
CREATE INDEX ingest_keys_age ON ingest_keys(accepted_at_ms);
";

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

/// Why the previous file was moved aside at start-up.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// Open (or create) the outbox at `path`; if it is damaged, move it aside
/// and open a fresh one in its place, saying why.
pub(super) fn open_or_recover(path: &Path) -> Result<(Connection, Option<Recovery>), OutboxError> {
    match open_checked(path) {
        Ok(conn) => Ok((conn, None)),
        Err(OutboxError::Damaged {
            reason: message, ..
        }) => {
            let moved_to = move_aside(path)?;
            tracing::error!(
                outbox = %path.display(), moved_to = %moved_to.display(),
                "outbox is damaged ({message}); moved it aside and starting a fresh one"
            );
            let recovery = Recovery {
                moved_to,
                reason: message,
            };
            Ok((open_checked(path)?, Some(recovery)))
        }
        Err(e) => Err(e),
    }
}

/// Open `path`, create the schema if the file is new, and check that it is
/// an intact outbox. Damage is reported as [`OutboxError::Damaged`].
fn open_checked(path: &Path) -> Result<Connection, OutboxError> {
    let damaged = |e: rusqlite::Error| sql_error(path, e);
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => {
            return Err(OutboxError::Damaged {
                path: path.to_owned(),
                reason: "the file is empty (0 bytes): truncated or wiped, its results are gone"
                    .into(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
        Err(source) => {
            return Err(OutboxError::Io {
                path: path.to_owned(),
                what: "cannot read the outbox file's metadata".into(),
                source,
            });
        }
    }
    let mut conn = Connection::open(path).map_err(damaged)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(damaged)?;
    // Every statement of a commit stays prepared: rusqlite's default of 16
    // is fewer than one input's way through the journal, the records and
    // the kept copies uses, and a statement parsed again per commit was 7 %
    // of the agent's CPU under a steady stream (benches/live.sh, perf).
    conn.set_prepared_statement_cache_capacity(64);
    // WAL: readers (status) never block the writer; FULL: a commit is on disk
    // (WAL fsynced) before it returns, which is what "accepted" promises.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(damaged)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Unusable {
            path: path.to_owned(),
            reason: format!("cannot switch to WAL mode (got `{mode}`)"),
        });
    }
    // A WAL folded back every 1 MiB and cut back to that size: the space it
    // takes stays small and known, which is what lets a full disk be got
    // out of (see `reserve.rs`).
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 256; PRAGMA journal_size_limit = 1048576;",
    )
    .map_err(damaged)?;
    // The page cache is part of the agent's memory budget: sized, not left
    // to SQLite's compiled-in default.
    conn.pragma_update(
        None,
        "cache_size",
        -((crate::config::WRITER_CACHE_BYTES >> 10) as i64),
    )
    .map_err(damaged)?;
    // A value of the wrong kind in a column of a table of rows ("NULL value
    // in records.body", "NUMERIC value in records.id": a flipped bit in one
    // record's header) is that row's damage, found and set aside row by row
    // (`damage.rs`), not the file's: the other rows go on. Anything else
    // `quick_check` finds is the file's.
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(1000)")
        .and_then(|mut check| check.query_map([], |r| r.get(0))?.collect())
        .map_err(damaged)?;
    let of_rows = |problem: &str| {
        problem
            .split_once(" value in ")
            .filter(|(kind, _)| kind.bytes().all(|b| b.is_ascii_uppercase()))
            .and_then(|(_, column)| column.split_once('.'))
            .is_some_and(|(table, _)| super::damage::ROW_LEVEL_TABLES.contains(&table))
    };
    let file: Vec<&String> = problems
        .iter()
        .filter(|p| p.as_str() != "ok" && !of_rows(p))
        .collect();
    if let Some(first) = file.first() {
        return Err(OutboxError::Damaged {
            path: path.to_owned(),
            reason: format!("integrity check failed: {first}"),
        });
    }
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(damaged)?;
    if (1..SCHEMA_VERSION).contains(&version) {
        migrate(&mut conn, version).map_err(damaged)?;
    }
    check_identity(&conn, path)?;
    Ok(conn)
}

/// Bring an outbox of schema `from` to [`SCHEMA_VERSION`].
fn migrate(conn: &mut Connection, from: i32) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (version, step) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", version)?;
    }
    tx.commit()
}

/// Make a complete outbox at `path` (which does not exist): under a
/// temporary name first, renamed into place once it is on disk.
fn create(path: &Path) -> Result<(), OutboxError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| OutboxError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let new = PathBuf::from(format!("{}.new", path.display()));
    for leftover in ["", "-journal", "-wal", "-shm"] {
        let leftover = PathBuf::from(format!("{}{leftover}", new.display()));
        match std::fs::remove_file(&leftover) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot remove a half-made outbox")(e));
            }
            _ => {}
        }
    }
    let mut conn = Connection::open(&new).map_err(|e| sql_error(&new, e))?;
    create_schema(&mut conn).map_err(|e| sql_error(&new, e))?;
    conn.close().map_err(|(_, e)| sql_error(&new, e))?;
    std::fs::rename(&new, path).map_err(io("cannot move a new outbox into place"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable only once the directory is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync the data directory"))?;
    }
    Ok(())
}

fn create_schema(conn: &mut Connection) -> rusqlite::Result<()> {
    // A new file is in rollback-journal mode: its commit is complete in the
    // file itself (synchronous FULL), with no WAL beside it to rename.
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    for (_, step) in MIGRATIONS {
        tx.execute_batch(step)?;
    }
    // Start sequence numbers at the current time in microseconds, so
    // that ids stay unique upstream even if a damaged outbox (and its
    // counter) was moved aside: a file ingesting below a million inputs
    // per second never catches up with the clock.
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    tx.execute(
        "INSERT INTO sqlite_sequence(name, seq) VALUES ('journal', ?1)",
        [start],
    )?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Check that `conn` holds an outbox of the schema version this build knows.
pub(super) fn check_identity(conn: &Connection, path: &Path) -> Result<(), OutboxError> {
    let ids = conn
        .query_row("PRAGMA application_id", [], |r| r.get::<_, i32>(0))
        .and_then(|app| {
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i32>(0))
                .map(|v| (app, v))
        });
    match ids {
        Ok((APPLICATION_ID, SCHEMA_VERSION)) => Ok(()),
        // Read-only handles see an older file as it is (a running older
        // agent's); its tables are a subset of this version's.
        Ok((APPLICATION_ID, v))
            if (1..SCHEMA_VERSION).contains(&v) && conn.is_readonly("main").unwrap_or(false) =>
        {
            Ok(())
        }
        Ok((APPLICATION_ID, v)) => Err(OutboxError::Unusable {
            path: path.to_owned(),
            reason: format!(
                "schema version {v} is not supported by this sluice (expects {SCHEMA_VERSION})"
            ),
        }),
        Ok(_) => Err(OutboxError::Damaged {
            path: path.to_owned(),
            reason: "a SQLite file that is not a Sluice outbox".into(),
        }),
        Err(e) => Err(sql_error(path, e)),
    }
}

/// Why SQLite could not open `path` (read-write, with a WAL beside it).
pub(super) fn why_unopenable(path: &Path) -> String {
    if path.is_dir() {
        return "it is a directory".into();
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !path.exists() {
        // SQLite was to create it: the folder's own error says why it
        // could not (read-only file system, permission), where opening
        // the missing file would only say that it does not exist.
        return match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Err(e) => format!("cannot create it in {}: {e}", dir.display()),
            Ok(_) => {
                let _ = std::fs::remove_file(path);
                format!(
                    "the cause is unknown (SQLite error 14; {} can be written)",
                    dir.display()
                )
            }
        };
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        return e.to_string();
    }
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&wal)
    {
        return format!("cannot create its write-ahead log {}: {e}", wal.display());
    }
    "the cause is unknown (SQLite error 14)".into()
}

/// Rename a damaged outbox (and its WAL) to `<name>.damaged-<timestamp>`.
fn move_aside(path: &Path) -> Result<PathBuf, OutboxError> {
    let stamp = utc_stamp(SystemTime::now());
    let target = path.with_file_name(format!(
        "{}.damaged-{stamp}",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::rename(path, &target).map_err(|source| OutboxError::Io {
        path: path.to_owned(),
        what: format!("damaged, and cannot move it aside to {}", target.display()),
        source,
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

/// `YYYYMMDDTHHMMSSZ` for a time (UTC): RFC 3339 without its separators, so
/// it sorts by time and is safe in a file name everywhere. A clock before
/// 1970 or after 9999 is clamped to that range.
fn utc_stamp(time: SystemTime) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let time = time.clamp(
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999),
    );
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn stamps_are_compact_utc() {
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(utc_stamp(at(1_709_251_199)), "20240229T235959Z");
        assert_eq!(utc_stamp(at(1_709_251_200)), "20240301T000000Z");
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // Subseconds are dropped, not rounded.
        assert_eq!(
            utc_stamp(at(1_709_251_199) + Duration::from_millis(999)),
            "20240229T235959Z"
        );
    }

    #[test]
    fn stamps_of_clocks_out_of_range_are_clamped() {
        assert_eq!(
            utc_stamp(UNIX_EPOCH - Duration::from_secs(1)),
            "19700101T000000Z"
        );
        assert_eq!(utc_stamp(at(u64::from(u32::MAX) * 100)), "99991231T235959Z");
    }
}
