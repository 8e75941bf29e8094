//! Caps and their counters: drop-oldest and reject-new, a record larger than
//! the cap, expiry by age, idempotency keys and their window, acknowledgements
//! and the reserve on a full disk.

use super::{config, input, record, records};
use crate::common::SmallDisk;
use sluice_agent::config::{FullPolicy, OutboxConfig};
use sluice_agent::outbox::{KeyedAccept, Outbox, counter};

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
