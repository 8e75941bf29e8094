//! The outbox on a real SQLite file in a temporary folder: group commit,
//! batches that survive restarts, caps and their counters, expiry, journal
//! hand-over, damaged files, a full disk.

use crate::common::SmallDisk;
use sluice_agent::config::{FullPolicy, OutboxConfig};
use sluice_agent::outbox::{KeyedAccept, NewInput, NewRecord, Outbox, counter};

fn config(max_bytes: u64, when_full: FullPolicy) -> OutboxConfig {
    OutboxConfig {
        max_bytes,
        max_age_secs: 0,
        when_full,
        ..OutboxConfig::default()
    }
}

fn record(seq: u64, body_len: usize) -> NewRecord {
    let id = format!("dev/p/{seq}");
    let pad = "x".repeat(body_len.saturating_sub(40));
    NewRecord {
        id: id.clone(),
        body: format!(r#"{{"id":"{id}","pad":"{pad}"}}"#).into_bytes(),
    }
}

fn records(range: std::ops::Range<u64>, body_len: usize) -> Vec<NewRecord> {
    range.map(|s| record(s, body_len)).collect()
}

#[test]
fn records_go_out_in_batches_and_leave_only_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let report = outbox.append(records(0..25, 100)).unwrap();
    assert_eq!(report.stored, 25);
    assert_eq!(outbox.pending().0, 25);

    let batch = outbox.next_batch(10, 1 << 20).unwrap().unwrap();
    assert_eq!(batch.records.len(), 10);
    assert_eq!(batch.records[0].0, "dev/p/0");
    // Not acknowledged: the same batch comes back.
    let again = outbox.next_batch(10, 1 << 20).unwrap().unwrap();
    assert_eq!((again.id, &again.key), (batch.id, &batch.key));
    assert_eq!(outbox.ack_batch(batch.id).unwrap(), 10);
    assert_eq!(outbox.pending().0, 15);

    let next = outbox.next_batch(100, 1 << 20).unwrap().unwrap();
    assert_ne!(next.key, batch.key);
    assert_eq!(next.records.len(), 15);
    assert_eq!(next.records[0].0, "dev/p/10");
    outbox.ack_batch(next.id).unwrap();
    assert!(outbox.next_batch(100, 1 << 20).unwrap().is_none());
    let status = outbox.status().unwrap();
    assert_eq!(status.pending_records, 0);
    assert_eq!(status.counters[counter::UPLOADED], 25);
    assert!(status.last_sync_at_ms.is_some());
}

#[test]
fn batch_byte_limit_is_respected_but_one_large_record_still_goes() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox
        .append(vec![record(0, 5000), record(1, 100), record(2, 100)])
        .unwrap();
    let first = outbox.next_batch(100, 1000).unwrap().unwrap();
    assert_eq!(first.records.len(), 1, "the oversized record goes alone");
    outbox.ack_batch(first.id).unwrap();
    let second = outbox.next_batch(100, 1000).unwrap().unwrap();
    assert_eq!(second.records.len(), 2);
}

#[test]
fn a_formed_batch_keeps_its_key_and_records_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (key, ids) = {
        let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
        outbox.append(records(0..30, 80)).unwrap();
        let batch = outbox.next_batch(20, 1 << 20).unwrap().unwrap();
        (
            batch.key,
            batch
                .records
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
        )
    };
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox.append(records(30..40, 80)).unwrap();
    let batch = outbox.next_batch(50, 1 << 20).unwrap().unwrap();
    assert_eq!(batch.key, key);
    assert_eq!(
        batch
            .records
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        ids
    );
}

#[test]
fn the_same_id_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox.append(records(0..10, 50)).unwrap();
    let report = outbox.append(records(5..15, 50)).unwrap();
    assert_eq!((report.stored, report.duplicates), (5, 5));
    assert_eq!(outbox.pending().0, 15);
    assert_eq!(outbox.counter(counter::DUPLICATES).unwrap(), 5);
}

#[test]
fn drop_oldest_stays_under_the_cap_and_counts_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 10_000;
    {
        let outbox = Outbox::open_in(dir.path(), config(cap, FullPolicy::DropOldest)).unwrap();
        // Put the oldest records into an unacknowledged batch: dropping them
        // dissolves the batch.
        outbox.append(records(0..50, 100)).unwrap();
        outbox.next_batch(10, 1 << 20).unwrap().unwrap();
        let report = outbox.append(records(50..200, 100)).unwrap();
        assert_eq!(report.stored, 150);
        assert!(report.dropped_oldest > 0);
        let (count, bytes) = outbox.pending();
        assert!(bytes <= cap, "{bytes} > {cap}");
        assert_eq!(count + report.dropped_oldest, 200);
    }
    let outbox = Outbox::open_in(dir.path(), config(cap, FullPolicy::DropOldest)).unwrap();
    let status = outbox.status().unwrap();
    assert!(status.pending_bytes <= cap);
    assert_eq!(
        status.counters[counter::DROPPED_OLDEST] as u64 + status.pending_records,
        200
    );
    // The newest survived, the oldest went.
    let batch = outbox.next_batch(1000, 1 << 20).unwrap().unwrap();
    assert_eq!(batch.records.last().unwrap().0, "dev/p/199");
    assert_ne!(batch.records[0].0, "dev/p/0");
}

#[test]
fn reject_new_keeps_the_old_and_counts_the_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 5_000;
    let outbox = Outbox::open_in(dir.path(), config(cap, FullPolicy::RejectNew)).unwrap();
    let report = outbox.append(records(0..100, 100)).unwrap();
    assert!(report.rejected_full > 0 && report.stored > 0);
    assert_eq!(report.stored + report.rejected_full, 100);
    let batch = outbox.next_batch(1000, 1 << 20).unwrap().unwrap();
    assert_eq!(batch.records[0].0, "dev/p/0");
    assert_eq!(
        outbox.counter(counter::REJECTED_FULL).unwrap() as u64,
        report.rejected_full
    );
    // Room again after an upload.
    outbox.ack_batch(batch.id).unwrap();
    assert_eq!(outbox.append(records(100..110, 100)).unwrap().stored, 10);
}

#[test]
fn a_record_larger_than_the_cap_is_refused_under_either_policy() {
    for policy in [FullPolicy::DropOldest, FullPolicy::RejectNew] {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open_in(dir.path(), config(1_000, policy)).unwrap();
        outbox.append(records(0..3, 100)).unwrap();
        let report = outbox.append(vec![record(9, 2_000)]).unwrap();
        assert_eq!(report.rejected_too_large, 1, "{policy:?}");
        assert_eq!(
            outbox.pending().0,
            3,
            "{policy:?}: nothing dropped for a record that can never fit"
        );
    }
}

#[test]
fn records_past_their_age_expire_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_age_secs: 60,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config).unwrap();
    outbox.append(records(0..10, 50)).unwrap();
    outbox.next_batch(5, 1 << 20).unwrap().unwrap();
    assert_eq!(outbox.expire(sluice_types::now_ms()).unwrap(), 0);
    assert_eq!(outbox.expire(sluice_types::now_ms() + 61_000).unwrap(), 10);
    assert_eq!(outbox.pending(), (0, 0));
    assert!(outbox.next_batch(5, 1 << 20).unwrap().is_none());
    assert_eq!(outbox.counter(counter::EXPIRED).unwrap(), 10);
}

#[test]
fn journal_items_become_records_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let input = |n: u8| NewInput {
        pipeline: "p".into(),
        content_type: "text/plain".into(),
        attributes: vec![("file".into(), format!("{n}.txt"))],
        data: vec![n; 10],
    };
    let seqs: Vec<i64> = (0..5).map(|n| outbox.accept(&input(n)).unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    // Sequence numbers start at the clock (microseconds), so a fresh file
    // never reuses ids of a file moved aside.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert!(
        (now_us - 60_000_000..=now_us).contains(&seqs[0]),
        "{} vs {now_us}",
        seqs[0]
    );
    assert_eq!(outbox.journal_bytes(), 50);

    let items = outbox.journal_items("p", 0, 3).unwrap();
    // Items already taken (up to a sequence number) are skipped.
    let later = outbox.journal_items("p", items[0].seq, 3).unwrap();
    assert_eq!(later.first().map(|i| i.seq), items.get(1).map(|i| i.seq));
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), seqs[..3]);
    assert_eq!(
        items[1].attributes,
        vec![("file".to_owned(), "1.txt".to_owned())]
    );
    let done: Vec<NewRecord> = items
        .iter()
        .map(|i| NewRecord {
            id: format!("dev/p/{}", i.seq),
            body: b"{}".to_vec(),
        })
        .collect();
    outbox
        .complete(&items.iter().map(|i| i.seq).collect::<Vec<_>>(), &done)
        .unwrap();
    // Processing the same items again (after a crash) adds nothing.
    let report = outbox.complete(&[], &done).unwrap();
    assert_eq!(report.duplicates, 3);
    drop(outbox);

    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    assert_eq!(outbox.journal_items("p", 0, 10).unwrap().len(), 2);
    assert_eq!(outbox.journal_bytes(), 20);
    assert_eq!(outbox.pending().0, 3);
    assert!(outbox.accept(&input(9)).unwrap() > seqs[4]);
}

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
fn a_full_disk_is_an_error_that_passes() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox.append(records(0..200, 400)).unwrap();
    // A hard page limit produces a genuine SQLITE_FULL from SQLite.
    let pages_now: u64 = std::fs::metadata(outbox.path()).unwrap().len() / 4096 + 40;
    outbox.limit_file_pages(pages_now).unwrap();
    let mut full = None;
    for round in 0..200u64 {
        match outbox.append(records(1000 + round * 100..1100 + round * 100, 400)) {
            Ok(_) => {}
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let error = full.expect("the page limit is reached");
    assert!(error.is_disk_full(), "{error}");
    assert!(error.to_string().contains("disk full"), "{error}");
    // Nothing half-written: the counts match what is stored, reads work.
    let (count, _) = outbox.pending();
    let status = outbox.status().unwrap();
    assert_eq!(status.pending_records, count);
    // Uploads free space; appends work again.
    let mut freed = 0;
    while freed < 150 {
        let batch = outbox.next_batch(50, 1 << 20).unwrap().unwrap();
        freed += outbox.ack_batch(batch.id).unwrap();
    }
    outbox.append(records(900_000..900_010, 400)).unwrap();
}

/// Group commit at volume: every record is stored once, in order, and the
/// counts stay exact. (Its speed is measured in `benches/`, not here.)
#[test]
fn many_group_commits_store_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let (total, per_commit) = (20_000u64, 500u64);
    for start in (0..total).step_by(per_commit as usize) {
        let report = outbox
            .append(records(start..start + per_commit, 300))
            .unwrap();
        assert_eq!(report.stored, per_commit);
    }
    assert_eq!(outbox.pending().0, total);
    let batch = outbox
        .next_batch(total as usize, usize::MAX)
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = batch.records.iter().map(|(id, _)| id.as_str()).collect();
    let expected: Vec<String> = records(0..total, 0).into_iter().map(|r| r.id).collect();
    assert_eq!(ids, expected);
    assert_eq!(
        outbox.status().unwrap().counters[counter::STORED],
        total as i64
    );
}

fn input(pipeline: &str, data: &[u8]) -> NewInput {
    NewInput {
        pipeline: pipeline.into(),
        content_type: "image/png".into(),
        attributes: Vec::new(),
        data: data.to_vec(),
    }
}

#[test]
fn an_idempotency_key_accepts_once_and_refuses_other_content() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let first = outbox.accept_keyed(&input("p", b"abc"), "k-1").unwrap();
    let KeyedAccept::New(seq) = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        outbox.accept_keyed(&input("p", b"abc"), "k-1").unwrap(),
        KeyedAccept::Replayed(seq)
    );
    // Same key, other bytes or another pipeline: refused, nothing stored.
    for other in [input("p", b"abd"), input("q", b"abc")] {
        assert_eq!(
            outbox.accept_keyed(&other, "k-1").unwrap(),
            KeyedAccept::Conflict
        );
    }
    assert_eq!(outbox.journal_items("p", 0, 10).unwrap().len(), 1);
    assert_eq!(outbox.journal_items("q", 0, 10).unwrap().len(), 0);
    assert_eq!(outbox.journal_bytes(), 3);
    // The key outlives its input's processing, and a restart.
    outbox.complete(&[seq], &[record(1, 50)]).unwrap();
    drop(outbox);
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    assert_eq!(
        outbox.accept_keyed(&input("p", b"abc"), "k-1").unwrap(),
        KeyedAccept::Replayed(seq)
    );
    assert!(outbox.journal_items("p", 0, 10).unwrap().is_empty());
}

#[test]
fn idempotency_keys_are_forgotten_past_their_window_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    for n in 0..10 {
        outbox
            .accept_keyed(&input("p", &[n]), &format!("k-{n}"))
            .unwrap();
    }
    // Nothing is old, and all fit: nothing forgotten.
    assert_eq!(outbox.prune_ingest_keys(0, 10).unwrap(), 0);
    // Keep the newest 4.
    assert_eq!(outbox.prune_ingest_keys(0, 4).unwrap(), 6);
    // Everything accepted before now + 1 s is past a window ending then.
    let later = sluice_types::now_ms() + 1_000;
    assert_eq!(outbox.prune_ingest_keys(later, 100).unwrap(), 4);
    // A forgotten key accepts anew.
    assert!(matches!(
        outbox.accept_keyed(&input("p", &[0]), "k-0").unwrap(),
        KeyedAccept::New(_)
    ));
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
        "DROP TABLE ingest_keys; DROP TABLE set_aside; ALTER TABLE journal DROP COLUMN refused; ALTER TABLE journal DROP COLUMN crashes; ALTER TABLE journal DROP COLUMN last_crash; DELETE FROM meta WHERE key = 'instance'; PRAGMA user_version = 1;",
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
        "ALTER TABLE journal DROP COLUMN crashes; ALTER TABLE journal DROP COLUMN last_crash; PRAGMA user_version = 4;",
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
fn an_acknowledgement_still_deletes_on_a_full_disk() {
    let Some(disk) = SmallDisk::mount(16 << 20) else {
        eprintln!(
            "SKIPPED an_acknowledgement_still_deletes_on_a_full_disk: cannot mount a tmpfs (needs root, as CI runs)"
        );
        return;
    };
    let config = OutboxConfig {
        disk_reserve_bytes: 2 << 20,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(disk.dir.path(), config).unwrap();
    assert!(disk.dir.path().join("outbox.sqlite.reserve").exists());
    // Fill the disk with results until it refuses more.
    let mut seq = 0;
    let full = loop {
        match outbox.append(records(seq..seq + 50, 1000)) {
            Ok(_) => seq += 50,
            Err(e) => break e,
        }
        assert!(seq < 100_000, "the disk never filled");
    };
    assert!(full.is_disk_full(), "{full}");
    // The collector is reachable again: the batch goes out and is
    // acknowledged, which needs writes of its own.
    let batch = outbox.next_batch(500, 1 << 20).unwrap().expect("a batch");
    assert_eq!(
        outbox.ack_batch(batch.id).unwrap(),
        batch.records.len() as u64
    );
    // The freed pages take new results.
    outbox.append(records(seq..seq + 50, 1000)).unwrap();
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

#[test]
fn a_reserve_given_back_on_a_full_disk_is_kept_for_acknowledgements_not_new_inputs() {
    let Some(disk) = SmallDisk::mount(16 << 20) else {
        eprintln!(
            "SKIPPED a_reserve_given_back_on_a_full_disk_is_kept_for_acknowledgements_not_new_inputs: cannot mount a tmpfs (needs root, as CI runs)"
        );
        return;
    };
    let reserve = disk.dir.path().join("outbox.sqlite.reserve");
    let config = OutboxConfig {
        disk_reserve_bytes: 4 << 20,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(disk.dir.path(), config).unwrap();
    assert!(reserve.exists());
    // Results wait for a collector that is down, and inputs keep coming
    // until the disk is full.
    outbox.append(records(0..500, 1000)).unwrap();
    let mut accepted = 0;
    let full = loop {
        match outbox.accept(&input("p", &[7; 4096])) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 10_000, "the disk never filled");
    };
    assert!(full.is_disk_full(), "{full}");
    // The uploader forms a batch for the collector that is down: on the
    // full disk that gives the reserve back.
    let batch = outbox.next_batch(500, 1 << 20).unwrap().expect("a batch");
    assert!(
        !reserve.exists(),
        "forming the batch did not need the reserve"
    );
    // New inputs (and the notes of failed uploads) may take what else
    // freed up, but not the reserve's space...
    let mut more = 0;
    let refused = loop {
        outbox.record_sync_error("collector unreachable").unwrap();
        match outbox.accept(&input("p", &[7; 4096])) {
            Ok(_) => more += 1,
            Err(e) => break e,
        }
        assert!(more < 10_000, "the disk never filled again");
    };
    assert!(refused.is_disk_full(), "{refused}");
    let free = sluice_agent::outbox::free_bytes(disk.dir.path()).unwrap();
    assert!(
        free >= 4 << 20,
        "{more} more inputs left {free} bytes, less than the reserve kept for acknowledgements"
    );
    // ... so the acknowledgement, once the collector is back, has it.
    assert_eq!(outbox.ack_batch(batch.id).unwrap(), 500);
    // What the acknowledgement freed takes new inputs again.
    outbox.accept(&input("p", &[7; 4096])).unwrap();
}
