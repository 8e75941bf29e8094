//! Minimal cases the model test found, kept as ordinary tests.

use sluice_outbox::{AppendReport, FullPolicy, NewInput, NewRecord, Outbox, OutboxConfig};

fn full_outbox(when_full: FullPolicy) -> (tempfile::TempDir, Outbox, Vec<NewRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_bytes: 800,
        when_full,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open_in(dir.path(), config).unwrap();
    let input = NewInput {
        pipeline: "a".into(),
        content_type: "application/octet-stream".into(),
        attributes: Vec::new(),
        data: Vec::new(),
    };
    let seqs = outbox
        .accept_many(&[(&input, None), (&input, None)])
        .unwrap();
    // Two results of 300 bytes and more: a third would not fit.
    let records: Vec<NewRecord> = seqs
        .iter()
        .map(|&seq| NewRecord {
            id: outbox.result_id("dev", "a", seq),
            body: vec![b'x'; 300],
        })
        .collect();
    let report = outbox.complete(&seqs, &records).unwrap();
    assert_eq!(report.stored, 2);
    (dir, outbox, records)
}

/// Found by the model test: the result of an input completed again while
/// the outbox was full was checked against the cap before being found to be
/// a duplicate, so `drop-oldest` dropped the oldest record (here the first
/// copy itself, stored again at the end) for a record already stored.
#[test]
fn a_duplicate_in_a_full_outbox_drops_nothing() {
    let (_dir, outbox, records) = full_outbox(FullPolicy::DropOldest);
    let seq: i64 = records[0].id.rsplit('-').next().unwrap().parse().unwrap();
    let report = outbox.complete(&[seq], &records[..1]).unwrap();
    assert_eq!(
        report,
        AppendReport {
            duplicates: 1,
            ..AppendReport::default()
        }
    );
    let batch = outbox.next_batch(10, usize::MAX).unwrap().unwrap();
    let ids: Vec<&str> = batch.records.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [records[0].id.as_str(), records[1].id.as_str()]);
    assert_eq!(outbox.counter("dropped_oldest").unwrap(), 0);
    assert_eq!(outbox.counter("stored").unwrap(), 2);
}

/// The same under `reject-new`: a duplicate was counted as refused
/// (`rejected_full`), a result lost that was not.
#[test]
fn a_duplicate_in_a_full_outbox_is_not_counted_as_refused() {
    let (_dir, outbox, records) = full_outbox(FullPolicy::RejectNew);
    let report = outbox.append(records[1..].to_vec()).unwrap();
    assert_eq!(
        report,
        AppendReport {
            duplicates: 1,
            ..AppendReport::default()
        }
    );
    assert_eq!(outbox.counter("rejected_full").unwrap(), 0);
    assert_eq!(outbox.counter("duplicates").unwrap(), 1);
}
