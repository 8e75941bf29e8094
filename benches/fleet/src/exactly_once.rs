//! The per-id check against the database: for every device, the results
//! it had acknowledged are stored once each, under the right id, and
//! nothing else is, except its batch in flight when the run ended (in
//! doubt: stored or not, never in part).
//!
//! PostgreSQL sums each device's rows up (count, distinct sequence
//! numbers, and a SHA-256 of its ids in order), so millions of rows are
//! checked without moving them; a device whose sum does not match is read
//! row by row to say which ids are missing, repeated or unexpected.

use crate::devices::{Ledger, OUTBOX, PIPELINE, device};
use sha2::{Digest, Sha256};
use sluice_testkit::Postgres;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the check found, over every device.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    /// Devices checked.
    pub devices: usize,
    /// Results the devices had acknowledged.
    pub acknowledged: u64,
    /// Rows in the database.
    pub stored: u64,
    /// Acknowledged results not stored (each id checked).
    pub lost: u64,
    /// Rows beyond the first of the same result.
    pub duplicated: u64,
    /// Rows no device sent, or under a wrong id.
    pub unexpected: u64,
    /// Batches in flight when the devices stopped (none when every
    /// device finished), and of those, the ones stored whole.
    pub in_doubt: u64,
    /// In-doubt batches found stored, whole.
    pub in_doubt_stored: u64,
}

impl Verdict {
    /// Nothing lost, duplicated or unexpected.
    pub fn holds(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

/// SHA-256 of the ids of `device`'s results `0..end`, comma-separated, in
/// the form PostgreSQL computes it below.
fn ids_digest(device: &str, end: u64) -> String {
    let mut hash = Sha256::new();
    for seq in 0..end {
        if seq > 0 {
            hash.update(b",");
        }
        hash.update(
            sluice_protocol::result_id(device, PIPELINE, Some(OUTBOX), seq as i64).as_bytes(),
        );
    }
    hex::encode(hash.finalize())
}

/// Check database `db` of `pg` against the devices' ledgers.
pub fn check(pg: &Postgres, db: &str, ledgers: &[Arc<Ledger>]) -> Verdict {
    let sums: BTreeMap<String, (u64, u64, String)> = pg
        .psql(
            db,
            "SELECT device, COUNT(*), COUNT(DISTINCT seq), \
             encode(sha256(convert_to(string_agg(id, ',' ORDER BY seq, id), 'UTF8')), 'hex') \
             FROM results GROUP BY device",
        )
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            Some((
                f.first()?.to_string(),
                (
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.to_string(),
                ),
            ))
        })
        .collect();
    let mut verdict = Verdict::default();
    let mut known = HashSet::new();
    for (i, ledger) in ledgers.iter().enumerate() {
        let name = device(i);
        let (acked, sent) = (
            ledger.acked.load(Ordering::SeqCst),
            ledger.sent.load(Ordering::SeqCst),
        );
        known.insert(name.clone());
        verdict.devices += 1;
        verdict.acknowledged += acked;
        if sent > acked {
            verdict.in_doubt += 1;
        }
        let (rows, distinct, digest) = sums.get(&name).cloned().unwrap_or_default();
        verdict.stored += rows;
        let exact = |end: u64| {
            rows == end && distinct == end && (end == 0 || digest == ids_digest(&name, end))
        };
        if exact(acked) {
            continue;
        }
        if sent > acked && exact(sent) {
            verdict.in_doubt_stored += 1;
            continue;
        }
        explain(pg, db, &name, acked, sent, &mut verdict);
    }
    for (name, (rows, _, _)) in &sums {
        if !known.contains(name) {
            eprintln!("exactly-once: {rows} rows of `{name}`, a device nobody simulated");
            verdict.stored += rows;
            verdict.unexpected += rows;
        }
    }
    verdict
}

/// Device `name`'s rows did not sum up: read them and count what is
/// lost, repeated and unexpected (naming the first few).
fn explain(pg: &Postgres, db: &str, name: &str, acked: u64, sent: u64, verdict: &mut Verdict) {
    let rows = pg.psql(
        db,
        &format!("SELECT seq, id FROM results WHERE device = '{name}' ORDER BY seq"),
    );
    let mut seen = HashSet::new();
    let mut in_doubt = 0;
    let mut named = 0;
    let mut note = |what: &str, seq: i64| {
        if named < 5 {
            eprintln!("exactly-once: device `{name}`, seq {seq}: {what}");
            named += 1;
        }
    };
    for row in rows.lines() {
        let Some((seq, id)) = row.split_once('|') else {
            continue;
        };
        let seq: i64 = seq.parse().unwrap_or(-1);
        let right = seq >= 0 && id == sluice_protocol::result_id(name, PIPELINE, Some(OUTBOX), seq);
        if !right || seq as u64 >= sent {
            note("stored but never sent (or under a wrong id)", seq);
            verdict.unexpected += 1;
        } else if !seen.insert(seq) {
            note("stored twice", seq);
            verdict.duplicated += 1;
        } else if seq as u64 >= acked {
            in_doubt += 1;
        }
    }
    for seq in 0..acked {
        if !seen.contains(&(seq as i64)) {
            note("acknowledged but not stored", seq as i64);
            verdict.lost += 1;
        }
    }
    // An in-doubt batch is one transaction: all of it or none.
    if in_doubt != 0 && in_doubt != sent - acked {
        eprintln!(
            "exactly-once: device `{name}`: {in_doubt} of its batch in flight stored, not all"
        );
        verdict.unexpected += in_doubt;
    }
}
