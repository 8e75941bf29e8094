//! Records and batches: batches leave only when acknowledged, keep their key
//! across a restart and respect the byte limit; an id is stored once; journal
//! items become records in one transaction; group commit at volume.

use super::{record, records};
use sluice_agent::config::OutboxConfig;
use sluice_agent::outbox::{NewInput, NewRecord, Outbox, counter};

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
