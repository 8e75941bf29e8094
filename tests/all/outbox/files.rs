//! The outbox file itself: corrupted, truncated or emptied files are moved
//! aside and replaced; ids are never reused with the clock set back; a foreign
//! SQLite file is not mistaken for an outbox; older schemas are migrated with
//! their data; a file that cannot be opened says why.

use super::{input, records};
use sluice_agent::config::OutboxConfig;
use sluice_agent::outbox::{KeyedAccept, Outbox};

#[test]
fn a_corrupted_outbox_is_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    std::fs::write(
        &path,
        b"this is not a database, just some bytes that were left here".repeat(100),
    )
    .unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let recovery = outbox.recovered().expect("damage detected");
    assert!(recovery.moved_to.exists());
    let name = recovery
        .moved_to
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("outbox.sqlite.damaged-") && name.ends_with('Z'),
        "{name}"
    );
    assert!(
        recovery.reason.contains("not a database"),
        "{}",
        recovery.reason
    );
    assert_eq!(outbox.append(records(0..3, 50)).unwrap().stored, 3);
}

#[test]
fn a_truncated_outbox_is_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    {
        let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
        outbox.append(records(0..2000, 500)).unwrap();
    }
    // Fold the WAL into the main file, then cut it in half.
    {
        let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
        drop(outbox);
    }
    let _ = std::fs::remove_file(dir.path().join("outbox.sqlite-wal"));
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 500_000, "{len}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let recovery = outbox.recovered().expect("truncation detected");
    assert!(recovery.moved_to.exists());
    assert_eq!(outbox.pending(), (0, 0));
    assert_eq!(outbox.append(records(0..3, 50)).unwrap().stored, 3);
}

#[test]
fn an_outbox_cut_to_zero_bytes_is_damage_not_a_new_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    {
        let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
        assert!(outbox.recovered().is_none(), "a new outbox is not damage");
        outbox.append(records(0..200, 100)).unwrap();
    }
    let _ = std::fs::remove_file(dir.path().join("outbox.sqlite-wal"));
    std::fs::File::create(&path).unwrap(); // truncates to 0 bytes
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let recovery = outbox.recovered().expect("an emptied outbox is reported");
    assert!(recovery.reason.contains("0 bytes"), "{}", recovery.reason);
    assert!(recovery.moved_to.exists());
    assert_eq!(outbox.append(records(0..3, 50)).unwrap().stored, 3);
}

#[test]
fn a_fresh_outbox_never_reuses_ids_even_with_the_clock_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let first = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let seq = first.accept(&input("p", b"x")).unwrap();
    let old_id = first.result_id("dev", "p", seq);
    drop(first);
    // The data directory is wiped; the board boots with its clock restored
    // to the same saved time, so the new file's counter starts where the old
    // one did.
    std::fs::remove_dir_all(dir.path()).unwrap();
    drop(Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    conn.execute(
        "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'journal'",
        [seq - 1],
    )
    .unwrap();
    drop(conn);
    let second = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let again = second.accept(&input("p", b"y")).unwrap();
    assert_eq!(
        again, seq,
        "the counter repeats, as it would on such a board"
    );
    let new_id = second.result_id("dev", "p", again);
    assert_ne!(new_id, old_id, "a new outbox must not reuse a delivered id");
    assert!(
        new_id.starts_with("dev/p/") && new_id.ends_with(&format!("-{seq}")),
        "{new_id}"
    );
}

#[test]
fn a_foreign_sqlite_file_is_not_mistaken_for_an_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE photos(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO photos(name) VALUES ('a');").unwrap();
    }
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let recovery = outbox.recovered().expect("foreign file detected");
    assert!(
        recovery.reason.contains("not a Sluice outbox"),
        "{}",
        recovery.reason
    );
    assert!(recovery.moved_to.exists());
}

#[test]
fn an_outbox_of_the_previous_schema_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox.append(records(0..3, 60)).unwrap();
    let seq = outbox.accept(&input("p", b"x")).unwrap();
    drop(outbox);
    // What version 1 had: no idempotency keys, no instance id, nothing set
    // aside, no crash counts.
    let conn = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    conn.execute_batch(
        "DROP TABLE ingest_keys; DROP TABLE set_aside; DROP TABLE local; DROP TABLE cursors; ALTER TABLE journal DROP COLUMN refused; ALTER TABLE journal DROP COLUMN crashes; ALTER TABLE journal DROP COLUMN last_crash; DELETE FROM meta WHERE key IN ('instance', 'local_bytes'); PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    assert!(outbox.recovered().is_none(), "an old outbox is not damage");
    let instance = outbox
        .instance()
        .expect("an instance id is made")
        .to_owned();
    assert_eq!(instance.len(), 16, "{instance}");
    drop(outbox);
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    assert_eq!(outbox.instance(), Some(instance.as_str()), "kept once made");
    assert_eq!(outbox.pending().0, 3);
    assert_eq!(outbox.journal_items("p", 0, 10).unwrap()[0].seq, seq);
    assert!(matches!(
        outbox.accept_keyed(&input("p", b"y"), "k").unwrap(),
        KeyedAccept::New(_)
    ));
}

#[test]
fn an_outbox_of_version_4_gets_crash_counts_for_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let seq = outbox.accept(&input("p", b"x")).unwrap();
    drop(outbox);
    let conn = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    conn.execute_batch(
        "ALTER TABLE journal DROP COLUMN crashes; ALTER TABLE journal DROP COLUMN last_crash; DROP TABLE local; DROP TABLE cursors; DELETE FROM meta WHERE key = 'local_bytes'; PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(conn);
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    assert!(outbox.recovered().is_none());
    let item = &outbox.journal_items("p", 0, 10).unwrap()[0];
    assert_eq!(
        (item.seq, item.crashes, item.damaged.as_deref()),
        (seq, 0, None)
    );
    outbox.note_crash(&[seq], "a panic").unwrap();
    let item = &outbox.journal_items("p", 0, 10).unwrap()[0];
    assert_eq!(
        (item.crashes, item.last_crash.as_deref()),
        (1, Some("a panic"))
    );
}

#[test]
fn an_outbox_of_version_6_keeps_its_kept_results_and_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        local_max_bytes: 1000,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config.clone()).unwrap();
    for i in 0..3 {
        let seq = outbox.accept(&input("p", b"x")).unwrap();
        outbox.complete(&[seq], &records(i..i + 1, 300)).unwrap();
    }
    drop(outbox);
    // Version 6 kept a time index and the kept bytes in `meta`, and had no
    // consumers' cursors.
    let conn = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
    conn.execute_batch(
        "DROP TABLE cursors; CREATE INDEX local_created ON local(created_at_ms); INSERT INTO meta(key, value) VALUES ('local_bytes', '0'); PRAGMA user_version = 6;",
    )
    .unwrap();
    drop(conn);
    let outbox = Outbox::open_in(dir.path(), config).unwrap();
    assert!(outbox.recovered().is_none());
    let kept = outbox.local_after(0, 100).unwrap();
    assert_eq!(kept.items.len(), 3);
    outbox.save_cursor("gate", kept.items[0].0).unwrap();
    // The three count against the bound: a fourth pushes the oldest out.
    let seq = outbox.accept(&input("p", b"x")).unwrap();
    outbox.complete(&[seq], &records(3..4, 300)).unwrap();
    let now = outbox.local_after(0, 100).unwrap();
    assert_eq!(now.items.len(), 3);
    assert_eq!(now.first, Some(kept.items[1].0));
}

#[test]
fn an_outbox_that_cannot_be_opened_says_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("outbox.sqlite")).unwrap();
    let err = Outbox::open_in(dir.path(), OutboxConfig::default())
        .err()
        .expect("a directory is not an outbox")
        .to_string();
    assert!(
        err.contains("outbox.sqlite") && err.contains("it is a directory"),
        "{err}"
    );
}
