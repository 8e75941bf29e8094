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

/// Version 6 of the schema: the kept results.
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

/// Keep copies of `records` (`(id, body)`), then apply the bounds. In the
/// caller's transaction. (Plain pairs, not the records module's type: it
/// calls this, and the two stay out of each other's way.)
pub(super) fn keep<'a>(
    tx: &Transaction,
    config: &OutboxConfig,
    records: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> rusqlite::Result<()> {
    if config.local_max_bytes == 0 {
        return Ok(());
    }
    let now = now_ms();
    let mut bytes: u64 = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'local_bytes'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut insert = tx.prepare_cached(
        "INSERT INTO local(id, created_at_ms, bytes, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(id) DO NOTHING",
    )?;
    for (id, body) in records {
        let size = (id.len() + body.len()) as u64;
        // One larger than the whole bound would only push everything out.
        if size <= config.local_max_bytes
            && insert.execute(params![id, now, size as i64, body])? == 1
        {
            bytes += size;
        }
    }
    if config.local_max_age_secs > 0 {
        let cutoff = now.saturating_sub((config.local_max_age_secs as i64).saturating_mul(1000));
        let freed: i64 = tx.query_row(
            "SELECT COALESCE(SUM(bytes), 0) FROM local WHERE created_at_ms < ?1",
            [cutoff],
            |r| r.get(0),
        )?;
        if freed > 0 {
            tx.execute("DELETE FROM local WHERE created_at_ms < ?1", [cutoff])?;
            bytes = bytes.saturating_sub(freed as u64);
        }
    }
    let mut oldest = tx.prepare_cached("SELECT pos, bytes FROM local ORDER BY pos LIMIT 64")?;
    while bytes > config.local_max_bytes {
        let rows: Vec<(i64, i64)> = oldest
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if rows.is_empty() {
            bytes = 0;
            break;
        }
        let mut upto = rows[0].0;
        for (pos, size) in rows {
            if bytes <= config.local_max_bytes {
                break;
            }
            bytes = bytes.saturating_sub(size.max(0) as u64);
            upto = pos;
        }
        tx.execute("DELETE FROM local WHERE pos <= ?1", [upto])?;
    }
    tx.execute(
        "INSERT INTO meta(key, value) VALUES ('local_bytes', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [bytes.to_string()],
    )?;
    Ok(())
}

impl Outbox {
    /// The kept copy of result `id`, if it is kept.
    pub fn local_record(&self, id: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        self.read(|conn| {
            conn.query_row("SELECT body FROM local WHERE id = ?1", [id], |r| r.get(0))
                .optional()
        })
    }

    /// Kept results after position `after`, at most `limit`, oldest first.
    pub fn local_after(&self, after: i64, limit: u32) -> Result<LocalPage, OutboxError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT pos, body FROM local WHERE pos > ?1 ORDER BY pos LIMIT ?2",
            )?;
            let items = statement
                .query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(i64, Vec<u8>)>>>()?;
            let (first, last) =
                conn.query_row("SELECT MIN(pos), MAX(pos) FROM local", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok(LocalPage { items, first, last })
        })
    }
}
