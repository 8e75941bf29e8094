//! One view of an outbox's whole state, read from the real outbox (its
//! public API, and its file through a second, read-only connection for
//! what the API does not list: pending records and batches) or made from
//! the model, so the two can be compared field by field.

use crate::model::{Fate, Model, PIPELINES};
use rusqlite::{Connection, OpenFlags};
use sluice_outbox::Outbox;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// The claimed-file names the test uses (checked with `is_claimed`).
pub const CLAIMS: [&str; 3] = ["f0", "f1", "f2"];

/// A journal item as compared: the data summarized (inputs are one byte
/// repeated), so that a failure prints short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub seq: i64,
    pub pipeline: String,
    pub content_type: String,
    pub attributes: Vec<(String, String)>,
    pub data: String,
    pub refused: Option<String>,
    pub crashes: u32,
    pub last_crash: Option<String>,
}

/// `len x byte` for one byte repeated, else the length and a hash.
pub fn summary(data: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    match data.first() {
        None => "empty".into(),
        Some(&b) if data.iter().all(|&x| x == b) => format!("{}x{b:02x}", data.len()),
        Some(_) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut h);
            format!("{} bytes #{:x}", data.len(), h.finish())
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct View {
    pub journal: Vec<Item>,
    pub claimed: Vec<&'static str>,
    /// Pending records in storage order: id, body, and the position of
    /// their batch among the batches in flight (oldest first).
    pub records: Vec<(String, String, Option<usize>)>,
    pub batches: usize,
    /// Set aside, oldest first: id, reason, body.
    pub set_aside: Vec<(String, String, String)>,
    pub counters: BTreeMap<String, i64>,
    pub last_error: Option<String>,
    /// Pending records and bytes.
    pub pending: (u64, u64),
    pub journal_bytes: u64,
    pub set_aside_bytes: u64,
}

/// The real outbox's state, and its batches' ids and keys (oldest first).
/// Every number the outbox keeps twice (in memory and in the file, or in
/// `Status` and a table) is checked to agree on the way.
pub fn observe(outbox: &Outbox) -> Result<(View, Vec<(i64, String)>), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let status = outbox.status().map_err(|x| e(&x))?;
    let mut journal = Vec::new();
    for pipeline in PIPELINES {
        for item in outbox
            .journal_items(pipeline, i64::MIN, usize::MAX)
            .map_err(|x| e(&x))?
        {
            if let Some(damage) = item.damaged {
                return Err(format!(
                    "journal item {} read as damaged: {damage}",
                    item.seq
                ));
            }
            journal.push(Item {
                seq: item.seq,
                pipeline: item.pipeline,
                content_type: item.content_type,
                attributes: item.attributes,
                data: summary(&item.data),
                refused: item.refused,
                crashes: item.crashes,
                last_crash: item.last_crash,
            });
        }
    }
    journal.sort_by_key(|i| i.seq);
    let mut claimed = Vec::new();
    for name in CLAIMS {
        if outbox.is_claimed(name).map_err(|x| e(&x))? {
            claimed.push(name);
        }
    }
    let conn = Connection::open_with_flags(outbox.path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|x| e(&x))?;
    let batches: Vec<(i64, String)> = conn
        .prepare("SELECT id, key FROM batches ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(|x| e(&x))?;
    let rows: Vec<(String, Vec<u8>, i64, Option<i64>)> = conn
        .prepare("SELECT id, body, bytes, batch FROM records ORDER BY rowid")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .map_err(|x| e(&x))?;
    let mut records = Vec::new();
    for (id, body, bytes, batch) in rows {
        if bytes as usize != id.len() + body.len() {
            return Err(format!("record {id}: bytes {bytes} is not its size"));
        }
        let position = match batch {
            None => None,
            Some(b) => Some(
                batches
                    .iter()
                    .position(|(id, _)| *id == b)
                    .ok_or(format!("record {id} in batch {b}, which does not exist"))?,
            ),
        };
        records.push((id, String::from_utf8_lossy(&body).into_owned(), position));
    }
    let set_aside: Vec<(String, String, String)> = conn
        .prepare("SELECT id, reason, body FROM set_aside ORDER BY set_aside_at_ms, rowid")
        .and_then(|mut s| {
            s.query_map([], |r| {
                let body: Vec<u8> = r.get(2)?;
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            })?
            .collect()
        })
        .map_err(|x| e(&x))?;
    // What `sluice outbox set-aside` lists: the same records, in order.
    let listed: Vec<(String, String)> = outbox
        .set_aside_records(u32::MAX)
        .map_err(|x| e(&x))?
        .into_iter()
        .map(|a| (a.id, a.reason))
        .collect();
    let in_file: Vec<(String, String)> = set_aside
        .iter()
        .map(|(id, reason, _)| (id.clone(), reason.clone()))
        .collect();
    agree(
        "set-aside records",
        ("listed", &listed),
        ("in the file", &in_file),
    )?;
    // The mirrors in memory against the file.
    let file = (status.pending_records, status.pending_bytes);
    agree(
        "pending (records, bytes)",
        ("in memory, pending()", &outbox.pending()),
        ("in the file, status()", &file),
    )?;
    agree(
        "journal bytes",
        ("in memory, journal_bytes()", &outbox.journal_bytes()),
        ("in the file, status()", &status.journal_bytes),
    )?;
    let counts = [
        status.journal_items,
        status.batches_in_flight,
        status.set_aside_records,
    ];
    let rows = [journal.len(), batches.len(), set_aside.len()].map(|n| n as u64);
    agree(
        "journal items, batches, set-aside records",
        ("status()", &counts),
        ("rows", &rows),
    )?;
    agree(
        "a last error and its time",
        ("last_error", &status.last_error.is_some()),
        ("last_error_at_ms", &status.last_error_at_ms.is_some()),
    )?;
    let view = View {
        journal,
        claimed,
        records,
        batches: batches.len(),
        set_aside,
        counters: status
            .counters
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .collect(),
        last_error: status.last_error,
        pending: (status.pending_records, status.pending_bytes),
        journal_bytes: status.journal_bytes,
        set_aside_bytes: status.set_aside_bytes,
    };
    Ok((view, batches))
}

/// What the model says the outbox holds.
pub fn expected(model: &Model) -> View {
    let position = |token: Option<u64>| {
        token.map(|t| {
            model
                .batches
                .iter()
                .position(|b| b.token == t)
                .expect("a record's batch is in flight")
        })
    };
    View {
        journal: model
            .journal
            .iter()
            .map(|e| Item {
                seq: e.seq,
                pipeline: e.pipeline.clone(),
                content_type: e.content_type.clone(),
                attributes: e.attributes.clone(),
                data: summary(&e.data),
                refused: e.refused.clone(),
                crashes: e.crashes,
                last_crash: e.last_crash.clone(),
            })
            .collect(),
        claimed: CLAIMS
            .into_iter()
            .filter(|c| model.claims.contains(*c))
            .collect(),
        records: model
            .records
            .iter()
            .map(|r| (r.id.clone(), r.body.clone(), position(r.batch)))
            .collect(),
        batches: model.batches.len(),
        set_aside: model
            .set_aside
            .iter()
            .map(|a| (a.id.clone(), a.reason.clone(), a.body.clone()))
            .collect(),
        counters: model
            .counters
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        last_error: model.last_error.clone(),
        pending: (model.records.len() as u64, model.pending_bytes()),
        journal_bytes: model.journal.iter().map(|e| e.data.len() as u64).sum(),
        set_aside_bytes: model.set_aside_bytes(),
    }
}

/// Compare the real outbox with the model, field by field (the first
/// difference is named), then bind the batches the model has not seen yet
/// to the outbox's ids and keys (and check the ones it has).
pub fn compare(outbox: &Outbox, model: &mut Model) -> Result<(), String> {
    let (real, batches) = observe(outbox)?;
    let want = expected(model);
    same("journal", &real.journal, &want.journal)?;
    same("claimed files", &real.claimed, &want.claimed)?;
    same("pending records", &real.records, &want.records)?;
    same("batches in flight", &real.batches, &want.batches)?;
    same("set aside", &real.set_aside, &want.set_aside)?;
    same("counters", &real.counters, &want.counters)?;
    same("last_error", &real.last_error, &want.last_error)?;
    same("pending (records, bytes)", &real.pending, &want.pending)?;
    same("journal bytes", &real.journal_bytes, &want.journal_bytes)?;
    same(
        "set-aside bytes",
        &real.set_aside_bytes,
        &want.set_aside_bytes,
    )?;
    for (slot, (id, key)) in batches.iter().enumerate() {
        model.bind(slot, *id, key)?;
    }
    conservation(model, &real)
}

/// Nothing accepted is lost or duplicated: every input accepted and every
/// record appended is in exactly one place (journal, pending, set aside)
/// or gone for a counted cause, and the counts of those that left by an
/// acknowledgement, the cap, the age limit or the set-aside cap are the
/// outbox's counters.
fn conservation(model: &Model, real: &View) -> Result<(), String> {
    let mut places: BTreeMap<&str, Vec<Fate>> = BTreeMap::new();
    for item in &real.journal {
        let id = model.result_id(&item.pipeline, item.seq);
        if let Some((known, _)) = model.fates.get_key_value(id.as_str()) {
            places.entry(known).or_default().push(Fate::Journal);
        } else {
            return Err(format!("journal item {} was never accepted", item.seq));
        }
    }
    for (id, ..) in &real.records {
        places.entry(id).or_default().push(Fate::Pending);
    }
    for (id, ..) in &real.set_aside {
        places.entry(id).or_default().push(Fate::SetAside);
    }
    for (id, found) in &places {
        if found.len() > 1 {
            return Err(format!("{id} is in more than one place: {found:?}"));
        }
    }
    let mut gone: BTreeMap<&str, i64> = BTreeMap::new();
    for (id, fate) in &model.fates {
        let live = matches!(fate, Fate::Journal | Fate::Pending | Fate::SetAside);
        match places.get(id.as_str()) {
            Some(found) if live && found[0] == *fate => {}
            None if !live => {
                let counter = match fate {
                    Fate::Uploaded => "uploaded",
                    Fate::DroppedOldest => "dropped_oldest",
                    Fate::Expired => "expired",
                    Fate::SetAsideDropped => "set_aside_dropped",
                    Fate::RejectedFull => "rejected_full",
                    _ => "rejected_too_large",
                };
                *gone.entry(counter).or_default() += 1;
            }
            found => return Err(format!("{id} should be {fate:?}, is in {found:?}")),
        }
    }
    // Each of these happens to a record at most once; a rejection may be
    // counted again for a second copy of a rejected result.
    for counter in ["uploaded", "dropped_oldest", "expired", "set_aside_dropped"] {
        let counted = real.counters.get(counter).copied().unwrap_or(0);
        let left = gone.get(counter).copied().unwrap_or(0);
        if counted != left {
            return Err(format!(
                "counter {counter} is {counted}, but {left} records left that way"
            ));
        }
    }
    Ok(())
}

/// `Err` naming `what` and two views of it within the outbox unless they agree.
fn agree<T: PartialEq + Debug>(what: &str, a: (&str, &T), b: (&str, &T)) -> Result<(), String> {
    if a.1 == b.1 {
        Ok(())
    } else {
        Err(format!(
            "the outbox disagrees with itself on {what}:\n  {}: {:?}\n  {}: {:?}",
            a.0, a.1, b.0, b.1
        ))
    }
}

/// `Err` naming `what` with both sides unless they are equal.
pub fn same<T: PartialEq + Debug>(what: &str, real: &T, model: &T) -> Result<(), String> {
    if real == model {
        Ok(())
    } else {
        Err(format!(
            "{what} differ:\n  outbox: {real:?}\n  model:  {model:?}"
        ))
    }
}
