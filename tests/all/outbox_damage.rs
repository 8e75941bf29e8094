//! Outbox rows that do not hold what the outbox wrote, written with plain
//! SQLite as damage on disk would leave them: every storage class
//! (INTEGER, REAL, TEXT, BLOB, NULL) in every column of a pending record,
//! and sizes that do not match. One such record once wedged the uplink
//! forever ("Invalid column type Text" on every upload, 199 good results
//! pending, nothing set aside). Now each is set aside (kept, counted
//! `damaged`, listed with what is wrong; a record in a batch that does not
//! exist is sent in a new one), and every good record is
//! delivered exactly once, whether the damage was there at open or
//! appeared while the outbox was open. The property test does the same for
//! random mixes, draining the outbox as an uplink does.
//!
//! `PROPTEST_CASES=10000 cargo test -p sluice --test all outbox_damage`
//! runs longer (see `docs/fuzzing.md`).

use crate::common::tokio;
use proptest::prelude::*;
use rusqlite::types::Value;
use sluice_agent::config::{OutboxConfig, SyncConfig};
use sluice_agent::outbox::{NewRecord, Outbox, counter};
use sluice_agent::uplink::Uploader;
use sluice_collector_core::Collector;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const DEVICE: &str = "dev-damage";
const TOKEN: &str = "damage-secret";

/// The columns of `records`, with the storage class the outbox writes.
pub(crate) const RECORD_COLUMNS: [(&str, &str); 5] = [
    ("id", "TEXT"),
    ("created_at_ms", "INTEGER"),
    ("bytes", "INTEGER"),
    ("body", "BLOB"),
    ("batch", "INTEGER"),
];

/// A value of each storage class, the `n`th of its kind (values in a
/// column with a UNIQUE index must differ).
pub(crate) fn of_class(class: &str, n: usize) -> Value {
    match class {
        "INTEGER" => Value::Integer(7 + n as i64),
        "REAL" => Value::Real(1.5 + n as f64),
        "TEXT" => Value::Text(format!("{{\"not\": \"what was written\", \"n\": {n}}}")),
        "BLOB" => Value::Blob([&[0xff, 0x00, 0x7b][..], &n.to_le_bytes()].concat()),
        _ => Value::Null,
    }
}

pub(crate) const CLASSES: [&str; 5] = ["INTEGER", "REAL", "TEXT", "BLOB", "NULL"];

/// A result document of `seq`, as the collector takes it.
fn doc(seq: u64) -> NewRecord {
    let id = format!("{DEVICE}/p/{seq}");
    let body = serde_json::json!({ "id": id, "device": DEVICE, "pipeline": "p", "seq": seq, "result": { "n": seq } });
    NewRecord {
        id,
        body: body.to_string().into_bytes(),
    }
}

/// Run `f` on the outbox file at `path` with `table`'s columns loosened:
/// no NOT NULL, no type affinity (which would turn a number written into a
/// TEXT column into text), so that `f` can write any storage class in any
/// column, as damage does (a flipped bit in a record's header changes its
/// serial type: 0 is NULL); then put the schema back as it was.
pub(crate) fn loosened(path: &Path, table: &str, f: impl FnOnce(&rusqlite::Connection)) {
    let sql: String = {
        let conn = rusqlite::Connection::open(path).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        let loose = sql
            .replace("NOT NULL", "")
            .replace(" INTEGER PRIMARY KEY", " ROWID_ALIAS")
            .replace(" INTEGER", "")
            .replace(" TEXT", "")
            .replace(" BLOB", "")
            .replace(" ROWID_ALIAS", " INTEGER PRIMARY KEY");
        conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
        conn.execute(
            "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = ?2",
            [loose, table.to_owned()],
        )
        .unwrap();
        sql
    };
    let conn = rusqlite::Connection::open(path).unwrap();
    f(&conn);
    conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
    conn.execute(
        "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = ?2",
        [sql, table.to_owned()],
    )
    .unwrap();
}

/// Insert record `record` with column `column` holding `value` instead of
/// what the outbox writes (the size written as the outbox would).
pub(crate) fn insert_damaged(
    conn: &rusqlite::Connection,
    record: &NewRecord,
    column: &str,
    value: Value,
) {
    let size = (record.id.len() + record.body.len()) as i64;
    let mut values: Vec<(&str, Value)> = vec![
        ("id", Value::Text(record.id.clone())),
        ("created_at_ms", Value::Integer(sluice_types::now_ms())),
        ("bytes", Value::Integer(size)),
        ("body", Value::Blob(record.body.clone())),
        ("batch", Value::Null),
    ];
    for (name, v) in &mut values {
        if *name == column {
            *v = value.clone();
        }
    }
    conn.execute(
        "INSERT INTO records(id, created_at_ms, bytes, body, batch) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params_from_iter(values.into_iter().map(|(_, v)| v)),
    )
    .unwrap();
}

/// Every kind of damage to a record: each column in each storage class
/// other than the one written (NULLs only when `nulls`), a size that does
/// not match, a batch that does not exist, and the reported case: a body
/// that is the document itself, but as TEXT. `(column, value)` each.
fn damages(nulls: bool) -> Vec<(&'static str, Value)> {
    let mut all = Vec::new();
    for (column, written) in RECORD_COLUMNS {
        for class in CLASSES {
            let fine = class == written || (column == "batch" && class == "NULL");
            if !fine && (nulls || class != "NULL") {
                all.push((column, of_class(class, all.len())));
            }
        }
    }
    all.push(("bytes", Value::Integer(1)));
    all.push(("body", Value::Text(String::new()))); // replaced per record below
    all
}

/// A record in a batch that does not exist (a flipped bit in `batch`):
/// not damage of the record, which is sent in a new batch.
const DANGLING_BATCH: i64 = 999_999;

fn collector(dir: &Path) -> Collector {
    crate::common::collector_for(dir, DEVICE, TOKEN)
}

fn uploader(outbox: &Arc<Outbox>, url: &str) -> Uploader {
    let config = SyncConfig {
        url: Some(url.to_owned()),
        token: Some(TOKEN.to_owned()),
        batch_max_records: 16,
        timeout_ms: 2000,
        ..SyncConfig::default()
    };
    let uplink = sluice_agent::uplink::from_config(&config, DEVICE, tokio().handle())
        .unwrap()
        .unwrap();
    Uploader::new(outbox.clone(), uplink, &config, DEVICE).expect("sync settings")
}

/// The ids the collector stored, each once.
fn delivered(collector: &Collector) -> BTreeSet<String> {
    crate::common::device_results(&collector.url(), DEVICE, TOKEN)
        .into_keys()
        .collect()
}

/// 199 good records around damaged ones, the damage written while the
/// outbox was closed (`at_open`) or while it was open; synced to a real
/// collector.
fn damaged_records_are_set_aside_and_the_rest_delivered(at_open: bool) {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let data = dir.path().join("device");
    let path = data.join(sluice_agent::outbox::FILE_NAME);
    let outbox = Outbox::open_in(&data, OutboxConfig::default()).unwrap();
    outbox.append((0..120).map(doc).collect()).unwrap();
    let damages = damages(at_open);
    let mut text_body = None;
    let mut damage = |conn: &rusqlite::Connection| {
        for (i, (column, value)) in damages.iter().enumerate() {
            let record = doc(10_000 + i as u64);
            let value = match value {
                Value::Text(t) if column == &"body" && t.is_empty() => {
                    text_body = Some(record.id.clone());
                    Value::Text(String::from_utf8(record.body.clone()).unwrap())
                }
                v => v.clone(),
            };
            insert_damaged(conn, &record, column, value);
        }
        insert_damaged(conn, &doc(199), "batch", Value::Integer(DANGLING_BATCH));
    };
    let outbox = if at_open {
        drop(outbox);
        loosened(&path, "records", damage);
        let outbox = Outbox::open_in(&data, OutboxConfig::default()).unwrap();
        assert!(
            outbox.recovered().is_none(),
            "damaged rows are not a damaged file: {:?}",
            outbox.recovered()
        );
        outbox
    } else {
        damage(&rusqlite::Connection::open(&path).unwrap());
        outbox
    };
    let outbox = Arc::new(outbox);
    outbox.append((120..199).map(doc).collect()).unwrap();

    let report = uploader(&outbox, &collector.url())
        .sync_once(&AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("sync wedged: {e}"));
    let good: BTreeSet<String> = (0..200).map(|s| doc(s).id).collect();
    assert_eq!(delivered(&collector), good, "{report:?}");

    // Kept, counted and listed with what is wrong.
    let status = outbox.status().unwrap();
    assert_eq!(status.pending_records, 0);
    assert_eq!(status.set_aside_records, damages.len() as u64);
    assert_eq!(status.counters[counter::DAMAGED], damages.len() as i64);
    assert_eq!(status.counters[counter::UPLOADED], 200);
    let aside = outbox.set_aside_records(1000).unwrap();
    assert_eq!(aside.len(), damages.len());
    for column in ["id", "created_at_ms", "bytes", "body", "batch"] {
        assert!(
            aside
                .iter()
                .any(|a| a.reason.contains(&format!("`{column}`"))),
            "no damage named `{column}`: {aside:?}"
        );
    }
    assert!(
        aside
            .iter()
            .any(|a| a.reason.contains("`body` holds TEXT, not BLOB")),
        "{aside:?}"
    );
    // What was kept can be sent again: the document stored as TEXT is
    // whole, and reaches the collector once requeued.
    outbox.requeue_set_aside().unwrap();
    uploader(&outbox, &collector.url())
        .sync_once(&AtomicBool::new(false))
        .unwrap();
    let text_body = text_body.expect("the TEXT body case ran");
    assert!(delivered(&collector).contains(&text_body));
    assert_eq!(outbox.status().unwrap().pending_records, 0);
}

#[test]
fn outbox_records_damaged_while_closed_are_set_aside_at_open_and_the_rest_delivered() {
    damaged_records_are_set_aside_and_the_rest_delivered(true);
}

#[test]
fn outbox_records_damaged_while_open_are_set_aside_by_the_uplink_and_the_rest_delivered() {
    damaged_records_are_set_aside_and_the_rest_delivered(false);
}

#[test]
fn a_damaged_row_is_not_a_damaged_file_but_real_damage_still_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(sluice_agent::outbox::FILE_NAME);
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox.append((0..3).map(doc).collect()).unwrap();
    drop(outbox);
    // A NULL in a table that is not made of rows: still the file's damage.
    loosened(&path, "counters", |conn| {
        conn.execute("INSERT INTO counters(name, value) VALUES ('x', NULL)", [])
            .unwrap();
    });
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let recovery = outbox.recovered().expect("moved aside");
    assert!(
        recovery.reason.contains("NULL value in counters.value"),
        "{}",
        recovery.reason
    );
}

/// Drain `outbox` as an uplink does, the collector acknowledging every
/// batch it is sent after checking it is JSON: the ids acknowledged.
fn drain(outbox: &Outbox) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for _ in 0..10_000 {
        let Some(batch) = outbox.next_batch(7, 1 << 20).unwrap() else {
            return acknowledged;
        };
        let wire = sluice_agent::uplink::to_wire(DEVICE, &batch).expect("what is sent is whole");
        assert_eq!(wire.records.len(), batch.records.len());
        outbox.ack_batch(batch.id).unwrap();
        acknowledged.extend(batch.records.into_iter().map(|(id, _)| id));
    }
    panic!("the outbox never drained");
}

fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Any mix of good and damaged records, damaged before the open or
    /// while open: every good record goes out exactly once, every damaged
    /// one is set aside and counted, nothing is left pending, and the
    /// sizes the outbox keeps match the file.
    #[test]
    fn outbox_rows_of_every_storage_class_never_stop_the_good_ones(
        rows in proptest::collection::vec(
            proptest::option::weighted(0.3, (0..RECORD_COLUMNS.len(), 0..CLASSES.len())),
            1..40,
        ),
        at_open in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(sluice_agent::outbox::FILE_NAME);
        let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
        let (mut good, mut bad) = (Vec::new(), 0);
        let mut plan = Vec::new();
        for (i, damage) in rows.iter().enumerate() {
            let record = doc(i as u64);
            match damage {
                Some((column, class)) => {
                    let (column, written) = RECORD_COLUMNS[*column];
                    let class = CLASSES[*class];
                    if class == written || (column == "batch" && class == "NULL") {
                        good.push(record.id.clone());
                        plan.push((record, None));
                    } else if class == "NULL" && !at_open {
                        // NULLs need the schema lifted: only while closed.
                        good.push(record.id.clone());
                        plan.push((record, None));
                    } else {
                        bad += 1;
                        plan.push((record, Some((column, of_class(class, i)))));
                    }
                }
                None => {
                    good.push(record.id.clone());
                    plan.push((record, None));
                }
            }
        }
        let write = |conn: &rusqlite::Connection, outbox: Option<&Outbox>| {
            for (record, damage) in &plan {
                match (damage, outbox) {
                    (Some((column, value)), _) => insert_damaged(conn, record, column, value.clone()),
                    (None, Some(outbox)) => {
                        outbox.append(vec![record.clone()]).unwrap();
                    }
                    (None, None) => insert_damaged(conn, record, "none", Value::Null),
                }
            }
        };
        let outbox = if at_open {
            drop(outbox);
            loosened(&path, "records", |conn| write(conn, None));
            Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap()
        } else {
            write(&rusqlite::Connection::open(&path).unwrap(), Some(&outbox));
            outbox
        };
        prop_assert!(outbox.recovered().is_none());
        let acknowledged = drain(&outbox);
        prop_assert_eq!(&acknowledged, &good);
        let status = outbox.status().unwrap();
        prop_assert_eq!(status.pending_records, 0);
        prop_assert_eq!(outbox.pending(), (0, 0));
        prop_assert_eq!(status.set_aside_records, bad);
        prop_assert_eq!(status.counters[counter::DAMAGED], bad as i64);
    }
}
