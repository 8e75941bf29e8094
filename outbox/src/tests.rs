//! The outbox's own unit tests (its behaviour as a whole is pinned by the
//! model-based test in `tests/all`).

use super::*;

fn input(len: usize) -> NewInput {
    NewInput {
        pipeline: "p".into(),
        content_type: "application/octet-stream".into(),
        attributes: Vec::new(),
        data: vec![7; len],
    }
}

#[test]
fn journal_bytes_never_waits_for_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox.accept(&input(30)).unwrap();
    // A writer holding the connection (say, through an fsync) does not
    // block back-pressure checks.
    let _busy = outbox.lock();
    assert_eq!(outbox.journal_bytes(), 30);
}

#[test]
fn a_read_only_handle_reports_the_journal_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    writer
        .accept_many(&[(&input(10), None), (&input(25), Some("a.bin"))])
        .unwrap();
    let reader =
        Outbox::open_read_only(&dir.path().join(FILE_NAME), OutboxConfig::default()).unwrap();
    assert_eq!(reader.journal_bytes(), 35);
    assert_eq!(reader.status().unwrap().journal_bytes, 35);
}

#[test]
fn allocated_sequence_numbers_interleave_with_inputs_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let first = outbox.accept(&input(1)).unwrap();
    let allocated = outbox.allocate_seq().unwrap();
    let second = outbox.accept(&input(1)).unwrap();
    assert!(
        first < allocated && allocated < second,
        "{first} {allocated} {second}"
    );
    // The allocation is committed: a reopened file never hands it out again.
    let again = outbox.allocate_seq().unwrap();
    drop(outbox);
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let third = outbox.accept(&input(1)).unwrap();
    assert!(third > again && again > second, "{second} {again} {third}");
    // Even with the journal emptied (inputs retired), numbers only grow.
    outbox.complete(&[first, second, third], &[]).unwrap();
    assert!(outbox.allocate_seq().unwrap() > third);
}

#[test]
fn a_failed_write_changes_no_size() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    outbox.accept(&input(10)).unwrap();
    let before = (outbox.pending(), outbox.journal_bytes());
    let failed = outbox.write(|tx, sizes| {
        sizes.pending_records += 1;
        sizes.journal_bytes += 100;
        tx.execute("INSERT INTO no_such_table VALUES (1)", [])
    });
    assert!(
        matches!(failed, Err(OutboxError::Sqlite { .. })),
        "{failed:?}"
    );
    assert_eq!((outbox.pending(), outbox.journal_bytes()), before);
}

#[test]
fn a_record_reads_back_from_its_commit_until_its_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    let seq = outbox.accept(&input(3)).unwrap();
    let id = outbox.result_id("d", "p", seq);
    assert_eq!(outbox.record(&id).unwrap(), None, "not before its commit");
    let body = br#"{"kind":"result"}"#.to_vec();
    outbox
        .complete(
            &[seq],
            &[NewRecord {
                id: id.clone(),
                body: body.clone(),
            }],
        )
        .unwrap();
    assert_eq!(outbox.record(&id).unwrap(), Some(body));
    let batch = outbox.next_batch(10, 1 << 20).unwrap().unwrap();
    outbox.ack_batch(batch.id).unwrap();
    assert_eq!(outbox.record(&id).unwrap(), None, "gone once acknowledged");
}

/// Complete `n` inputs of `outbox` as results `r-<tag>-<i>` of
/// `body_len` bytes each, one commit each.
fn complete_n(outbox: &Outbox, tag: &str, n: usize, body_len: usize) {
    for i in 0..n {
        let seq = outbox.accept(&input(3)).unwrap();
        let record = NewRecord {
            id: format!("r-{tag}-{i}"),
            body: vec![b'x'; body_len],
        };
        outbox.complete(&[seq], &[record]).unwrap();
    }
}

#[test]
fn results_are_kept_for_local_readers_in_completion_order_past_their_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        local_max_bytes: 16 << 20,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config.clone()).unwrap();
    complete_n(&outbox, "a", 5, 10);
    // Acknowledged upstream: gone from the upload queue, still kept here.
    while let Some(batch) = outbox.next_batch(10, 1 << 20).unwrap() {
        outbox.ack_batch(batch.id).unwrap();
    }
    assert_eq!(outbox.pending().0, 0);
    let page = outbox.local_after(0, 3).unwrap();
    assert_eq!(page.items.len(), 3);
    let positions: Vec<i64> = page.items.iter().map(|(p, _)| *p).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let rest = outbox.local_after(positions[2], 100).unwrap();
    assert_eq!(rest.items.len(), 2, "the cursor continues where it was");
    assert_eq!(rest.first, Some(positions[0]));
    // Drift windows and install reports (appended, not completed) are not
    // results for local readers; a commit retried with the same id is kept once.
    outbox
        .append(vec![NewRecord {
            id: "drift-1".into(),
            body: b"{}".to_vec(),
        }])
        .unwrap();
    let seq = outbox.accept(&input(3)).unwrap();
    let again = NewRecord {
        id: "r-a-0".into(),
        body: vec![b'x'; 10],
    };
    outbox.complete(&[seq], &[again]).unwrap();
    assert_eq!(outbox.local_after(0, 100).unwrap().items.len(), 5);
    // Kept across a reopen, positions never repeat.
    drop(outbox);
    let outbox = Outbox::open_in(dir.path(), config).unwrap();
    complete_n(&outbox, "b", 1, 10);
    let all = outbox.local_after(0, 100).unwrap();
    assert_eq!(all.items.len(), 6);
    assert!(all.items[5].0 > positions[2]);
}

#[test]
fn kept_results_are_bounded_by_bytes_oldest_first_and_none_when_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        local_max_bytes: 1000,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config).unwrap();
    // Each record is 7 bytes of id and 300 of body: three fit in 1000.
    complete_n(&outbox, "a", 10, 300);
    let page = outbox.local_after(0, 100).unwrap();
    assert_eq!(page.items.len(), 3, "{page:?}");
    assert_eq!(page.items[0].0, page.first.unwrap());
    assert_eq!(page.items[2].0, page.last.unwrap());
    // Upstream keeps all ten.
    assert_eq!(outbox.pending().0, 10);

    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        local_max_bytes: 0,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config).unwrap();
    complete_n(&outbox, "a", 3, 10);
    assert!(
        outbox.local_after(0, 100).unwrap().items.is_empty(),
        "none kept when off"
    );
}

#[test]
fn the_kept_bytes_are_counted_again_at_open_and_old_results_go_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        local_max_bytes: 1000,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config.clone()).unwrap();
    complete_n(&outbox, "a", 3, 300);
    drop(outbox);
    // Reopened, the three kept count: one more pushes the oldest out.
    let outbox = Outbox::open_in(dir.path(), config.clone()).unwrap();
    complete_n(&outbox, "b", 1, 300);
    let page = outbox.local_after(0, 100).unwrap();
    assert_eq!(page.items.len(), 3, "{page:?}");
    drop(outbox);

    // An age bound: a result older than it goes at the next commit.
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        local_max_bytes: 1 << 20,
        local_max_age_secs: 1,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config).unwrap();
    complete_n(&outbox, "a", 2, 10);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    complete_n(&outbox, "b", 1, 10);
    let page = outbox.local_after(0, 100).unwrap();
    assert_eq!(page.items.len(), 1, "{page:?}");
}

#[test]
fn a_consumers_cursor_is_saved_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    assert_eq!(outbox.cursor("gate").unwrap(), None);
    assert_eq!(outbox.local_newest().unwrap(), 0);
    complete_n(&outbox, "a", 3, 10);
    let newest = outbox.local_after(0, 10).unwrap().last.unwrap();
    assert_eq!(outbox.local_newest().unwrap(), newest);
    outbox.save_cursor("gate", 41).unwrap();
    outbox.save_cursor("gate", 42).unwrap();
    outbox.save_cursor("app", 7).unwrap();
    drop(outbox);
    let outbox = Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap();
    assert_eq!(outbox.cursor("gate").unwrap(), Some(42));
    assert_eq!(outbox.cursor("app").unwrap(), Some(7));
}
