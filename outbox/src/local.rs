//! Results kept for the device's own consumers (the agent's `GET
//! /v1/results`): a copy of each result the worker completes, in the
//! transaction that stores it for upstream, under a position that is unique
//! and only grows (the cursor), in completion order.
//!
//! Invariants:
//! * independent of the upstream sync: a result acknowledged upstream stays
//!   readable here, one not yet synced may already be gone from here; what
//!   is kept is bounded by `outbox.local_max_bytes` (oldest first) and
//!   `outbox.local_max_age_secs`, and `local_max_bytes = 0` keeps nothing;
//! * a result completed again (a retried commit) is kept once (by id);
//! * positions never repeat, also after the oldest are deleted: a reader
//!   that asks after a position older than what is kept is told what it
//!   missed ([`LocalPage::first`]).

use super::{Outbox, OutboxConfig, OutboxError};
use rusqlite::{OptionalExtension, Transaction, params};
use sluice_types::now_ms;

/// Version 6 of the schema: the kept results. (Version 7 drops what
/// version 6 made beside the table, see [`LEANER`].)
pub(super) const LOCAL: &str = "
CREATE TABLE local(
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX local_created ON local(created_at_ms);
INSERT INTO meta(key, value) VALUES ('local_bytes', '0');
";

/// Version 7: keeping a copy costs one row and its `id` index entry, no
/// more. The age bound reads the oldest rows by position (positions grow
/// with time) instead of keeping a time index up to date, and the kept
/// bytes are counted in memory (summed at open) instead of read and
/// written back in every commit. Measured on this 2-core machine (release
/// build, 64 results per commit): the copy took about 30 % of the commit
/// throughput before, 25 % after; most of the rest is the `id` index,
/// which a retried synchronous call finds its result by.
///
/// And each local consumer's cursor: the position up to which it has taken
/// the kept results, saved so that a restart goes on from there.
pub(super) const LEANER: &str = "
DROP INDEX local_created;
DELETE FROM meta WHERE key = 'local_bytes';
CREATE TABLE cursors(name TEXT PRIMARY KEY, pos INTEGER NOT NULL);
";

/// The most consumers' cursors kept: a name past them is refused (the
/// configuration allows fewer), so the table cannot grow without bound.
const MAX_CURSORS: i64 = 1024;

/// The bytes kept (at open).
pub(super) fn kept_bytes(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COALESCE(SUM(bytes), 0) FROM local", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|b| b.max(0) as u64)
}

/// A page of kept results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPage {
    /// `(position, record document)`, in position order.
    pub items: Vec<(i64, Vec<u8>)>,
    /// The oldest position still kept (`None`: nothing is): a reader whose
    /// cursor is below `first - 1` missed what lay between.
    pub first: Option<i64>,
    /// The newest position kept.
    pub last: Option<i64>,
}

/// Keep copies of `records` (`(id, body)`, each stored for upstream in
/// this transaction, so none is here yet), then apply the bounds, `bytes`
/// being what is kept. In the caller's transaction. (Plain pairs, not the
/// records module's type: it calls this, and the two stay out of each
/// other's way.)
pub(super) fn keep<'a>(
    tx: &Transaction,
    config: &OutboxConfig,
    bytes: &mut u64,
    records: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> rusqlite::Result<()> {
    if config.local_max_bytes == 0 {
        return Ok(());
    }
    let now = now_ms();
    let mut insert = tx.prepare_cached(
        "INSERT INTO local(id, created_at_ms, bytes, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO NOTHING",
    )?;
    for (id, body) in records {
        let size = (id.len() + body.len()) as u64;
        // One larger than the whole bound would only push everything out.
        if size <= config.local_max_bytes
            && insert.execute(params![id, now, size as i64, body])? == 1
        {
            *bytes = bytes.saturating_add(size);
        }
    }
    let cutoff = (config.local_max_age_secs > 0)
        .then(|| now.saturating_sub((config.local_max_age_secs as i64).saturating_mul(1000)));
    // Most commits find nothing to drop: one row read says so.
    let mut oldest_time =
        tx.prepare_cached("SELECT created_at_ms FROM local ORDER BY pos LIMIT 1")?;
    let mut oldest =
        tx.prepare_cached("SELECT pos, bytes, created_at_ms FROM local ORDER BY pos LIMIT 64")?;
    loop {
        let too_old = |created: i64| cutoff.is_some_and(|c| created < c);
        if *bytes <= config.local_max_bytes
            && (cutoff.is_none()
                || !oldest_time
                    .query_row([], |r| r.get::<_, i64>(0))
                    .optional()?
                    .is_some_and(too_old))
        {
            break;
        }
        let rows: Vec<(i64, i64, i64)> = oldest
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut upto = None;
        for &(pos, size, created) in &rows {
            if *bytes <= config.local_max_bytes && !too_old(created) {
                break;
            }
            *bytes = bytes.saturating_sub(size.max(0) as u64);
            upto = Some(pos);
        }
        let Some(pos) = upto else { break };
        tx.execute("DELETE FROM local WHERE pos <= ?1", [pos])?;
        if rows.len() < 64 {
            break;
        }
    }
    Ok(())
}

impl Outbox {
    /// Run `f` on the readers' connection (opened on first use; the
    /// writer's connection if it cannot be opened): a consumer waiting for
    /// the newest result should not wait behind the next commit's fsync.
    fn read_kept<T>(
        &self,
        f: impl Fn(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, OutboxError> {
        let mut reader = self.local_reader.lock().unwrap_or_else(|p| p.into_inner());
        if reader.is_none() {
            let opened = rusqlite::Connection::open_with_flags(
                self.path(),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|conn| {
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.pragma_update(
                    None,
                    "cache_size",
                    -((super::config::READER_CACHE_BYTES >> 10) as i64),
                )?;
                Ok(conn)
            });
            match opened {
                Ok(conn) => *reader = Some(conn),
                Err(e) => {
                    tracing::warn!(outbox = %self.path().display(), "no second connection for local readers, sharing the writer's: {e}");
                    drop(reader);
                    return self.read(f);
                }
            }
        }
        let conn = reader.as_ref().expect("opened above");
        f(conn).map_err(|e| super::sql_error(self.path(), e))
    }

    /// The kept copy of result `id`, if it is kept.
    pub fn local_record(&self, id: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        self.read_kept(|conn| {
            conn.query_row("SELECT body FROM local WHERE id = ?1", [id], |r| r.get(0))
                .optional()
        })
    }

    /// Kept results after position `after`, at most `limit`, oldest first.
    pub fn local_after(&self, after: i64, limit: u32) -> Result<LocalPage, OutboxError> {
        self.read_kept(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT pos, body FROM local WHERE pos > ?1 ORDER BY pos LIMIT ?2",
            )?;
            let items = statement
                .query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(i64, Vec<u8>)>>>()?;
            let (first, last) = conn.query_row(
                // Apart: SQLite answers a lone MIN or MAX of the key from
                // one end of the table, both together by scanning it.
                "SELECT (SELECT MIN(pos) FROM local), (SELECT MAX(pos) FROM local)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(LocalPage { items, first, last })
        })
    }

    /// The newest position ever given to a kept result (0: none yet), also
    /// when none is kept any more: where a new reader starts.
    pub fn local_newest(&self) -> Result<i64, OutboxError> {
        self.read_kept(|conn| {
            conn.query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'local'), 0)",
                [],
                |r| r.get(0),
            )
        })
    }

    /// Consumer `name`'s saved cursor, if it has one.
    pub fn cursor(&self, name: &str) -> Result<Option<i64>, OutboxError> {
        self.read(|conn| {
            conn.query_row("SELECT pos FROM cursors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    /// Save consumer `name`'s cursor (it has taken every kept result up to
    /// `pos`). Refused when [`MAX_CURSORS`] other names have one.
    pub fn save_cursor(&self, name: &str, pos: i64) -> Result<(), OutboxError> {
        self.write(|tx, _| {
            let known: bool = tx
                .query_row("SELECT 1 FROM cursors WHERE name = ?1", [name], |_| Ok(()))
                .optional()?
                .is_some();
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM cursors", [], |r| r.get(0))?;
            if !known && count >= MAX_CURSORS {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("no room for the cursor of consumer `{name}`: {MAX_CURSORS} are kept").into(),
                ));
            }
            tx.execute(
                "INSERT INTO cursors(name, pos) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET pos = excluded.pos",
                params![name, pos],
            )?;
            Ok(())
        })
    }
}
