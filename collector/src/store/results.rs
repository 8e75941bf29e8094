//! Reading a device's results back: its count, and pages in `(seq, id)`
//! order. `seq` repeats across a device's outbox instances (a board
//! without a clock starts each new outbox at the same numbers), so only the
//! pair orders results totally, and a page's cursor is the pair.

use super::sql::{SqlError, args};
use super::{Store, StoreError};
use sluice_protocol::ResultsCursor;

/// Where a listing of results starts ([`Store::results_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum After {
    /// At the first result.
    Start,
    /// After every result with this `seq` or a smaller one (`?after=SEQ`
    /// alone, as before cursors existed).
    Seq(i64),
    /// After this result, in `(seq, id)` order (`?after=SEQ&after_id=ID`).
    Cursor(ResultsCursor),
}

/// A page of a device's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsPage {
    /// The results, as the JSON text they were stored as.
    pub results: Vec<String>,
    /// Where the next page starts, when this one is full.
    pub next: Option<ResultsCursor>,
}

impl Store {
    /// How many results are stored for `device`.
    pub fn count(&self, device: &str) -> Result<u64, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT COUNT(*) FROM results WHERE device = ?1",
                args![device],
            )?
            .map_or(Ok(0), |r| r.int(0))
        })
        .map(|n| n.max(0) as u64)
    }

    /// Up to `limit` of `device`'s results with `seq > after`, in `(seq,
    /// id)` order, as the JSON text they were stored as.
    pub fn results(&self, device: &str, after: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(self
            .results_page(device, &After::Seq(after), limit)?
            .results)
    }

    /// A page of `device`'s results: up to `limit` after `after`, in
    /// `(seq, id)` order, with the cursor of the next page when this one is
    /// full. `seq` repeats across a device's outbox instances, so only the
    /// pair orders results totally: paging by `seq` alone would skip the
    /// results sharing the last `seq` of a page. (The `(device, seq)` index
    /// finds the start; rows of one `seq` are few, so sorting them by id is
    /// cheap on both engines.)
    pub fn results_page(
        &self,
        device: &str,
        after: &After,
        limit: u32,
    ) -> Result<ResultsPage, StoreError> {
        let limit = i64::from(limit);
        let rows = self.read(|tx| {
            let rows = match after {
                After::Start => tx.query(
                    "SELECT body, seq, id FROM results WHERE device = ?1 ORDER BY seq, id LIMIT ?2",
                    args![device, limit],
                ),
                After::Seq(seq) => tx.query(
                    "SELECT body, seq, id FROM results WHERE device = ?1 AND seq > ?2 ORDER BY seq, id LIMIT ?3",
                    args![device, *seq, limit],
                ),
                After::Cursor(cursor) => tx.query(
                    "SELECT body, seq, id FROM results WHERE device = ?1 AND seq >= ?2 AND (seq > ?2 OR id > ?3) ORDER BY seq, id LIMIT ?4",
                    args![device, cursor.after, &cursor.after_id, limit],
                ),
            }?;
            rows.iter()
                .map(|row| Ok((row.text(0)?, row.int(1)?, row.text(2)?)))
                .collect::<Result<Vec<_>, SqlError>>()
        })?;
        let full = rows.len() as i64 == limit;
        let mut results = Vec::with_capacity(rows.len());
        let mut last = None;
        for (body, seq, id) in rows {
            results.push(body);
            last = Some((seq, id));
        }
        let next = match last {
            Some((after, after_id)) if full => Some(ResultsCursor { after, after_id }),
            _ => None,
        };
        Ok(ResultsPage { results, next })
    }
}
