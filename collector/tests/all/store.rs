//! The store on its own: ids scoped by device, schema migration.

use serde_json::json;
use sluice_collector_core::store::Row;
use sluice_collector_core::{BatchError, Store};

pub fn row<'a>(id: &str, seq: i64, body: &'a str) -> Row<'a> {
    Row {
        id: id.into(),
        pipeline: "p".into(),
        seq,
        body,
    }
}

#[test]
fn a_device_cannot_shadow_another_devices_ids() {
    let dir = tempfile::tempdir().unwrap();
    ids_are_scoped_by_device(&Store::open(&dir.path().join("c.db")).unwrap());
}

/// On an empty `store` (either engine).
pub fn ids_are_scoped_by_device(store: &Store) {
    let a = store
        .store_batch("a", "k", &[row("same", 1, r#"{"from":"a"}"#)])
        .unwrap();
    let b = store
        .store_batch("b", "k", &[row("same", 1, r#"{"from":"b"}"#)])
        .unwrap();
    assert_eq!((a.stored, b.stored), (1, 1));
    assert_eq!(
        store.results("a", i64::MIN, 10).unwrap(),
        vec![r#"{"from":"a"}"#]
    );
    assert_eq!(
        store.results("b", i64::MIN, 10).unwrap(),
        vec![r#"{"from":"b"}"#]
    );
}

#[test]
fn the_same_record_respelled_is_a_duplicate_not_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    respelled_is_a_duplicate(&Store::open(&dir.path().join("c.db")).unwrap());
}

/// On a `store` (either engine) without device `a`.
pub fn respelled_is_a_duplicate(store: &Store) {
    store
        .store_batch("a", "k1", &[row("a/p/1", 1, r#"{"x":1,"y":2}"#)])
        .unwrap();
    let ack = store
        .store_batch("a", "k2", &[row("a/p/1", 1, r#"{ "y": 2, "x": 1 }"#)])
        .unwrap();
    assert_eq!((ack.stored, ack.duplicates), (0, 1));
    let conflict = store.store_batch("a", "k3", &[row("a/p/1", 1, r#"{"x":1,"y":3}"#)]);
    assert!(
        matches!(conflict, Err(BatchError::IdConflict { index: 0, .. })),
        "{conflict:?}"
    );
}

/// The schema of the first collector, as it created its files.
const SCHEMA_1: &str = "
CREATE TABLE results(id TEXT PRIMARY KEY, device TEXT NOT NULL, pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL, batch_key TEXT NOT NULL, received_at_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX results_device_seq ON results(device, seq);
CREATE TABLE batches(device TEXT NOT NULL, key TEXT NOT NULL, received_at_ms INTEGER NOT NULL,
    stored INTEGER NOT NULL, duplicates INTEGER NOT NULL, PRIMARY KEY(device, key));
INSERT INTO results VALUES ('a/p/1', 'a', 'p', 1, 'old', 0, '{\"n\":1}');
INSERT INTO results VALUES ('a/p/2', 'a', 'p', 2, 'old', 0, '{\"n\":2}');
INSERT INTO batches VALUES ('a', 'old', 0, 2, 0);
";

#[test]
fn a_schema_1_file_is_migrated_with_its_results_and_keys() {
    for marked in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_1).unwrap();
            if marked {
                conn.execute_batch("PRAGMA application_id = 1397506883; PRAGMA user_version = 1;")
                    .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.count("a").unwrap(), 2);
        assert_eq!(
            store.results("a", 1, 10).unwrap(),
            vec![json!({"n": 2}).to_string()]
        );
        // The old key is still known (replayed: no digest to compare)...
        let replay = store.store_batch("a", "old", &[]).unwrap();
        assert!(replay.replayed && replay.stored == 2);
        // ...and ids are now per device.
        let b = store
            .store_batch("b", "new", &[row("a/p/1", 1, "{}")])
            .unwrap();
        assert_eq!(b.stored, 1);
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let (version, app): (i32, i32) = conn
            .query_row(
                "SELECT * FROM pragma_user_version, pragma_application_id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, app), (5, 0x534C_4343));
        drop(conn);
        // Opening again is a no-op.
        assert_eq!(Store::open(&path).unwrap().count("a").unwrap(), 2);
    }
}

#[test]
fn a_newer_schema_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7;")
        .unwrap();
    let message = Store::open(&path).err().unwrap().to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("schema version 7"),
        "{message}"
    );
}
