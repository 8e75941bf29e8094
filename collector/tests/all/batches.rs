//! What a device gets for each kind of batch: the status it acts on, the
//! record named, and what is stored.

use crate::common::*;
use serde_json::json;
use sluice_collector_core::Limits;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn a_batch_is_stored_once_and_its_retry_is_replayed() {
    let c = Running::start(Limits::default());
    let b = batch("a", "k1", vec![record("a", 1, "x"), record("a", 2, "y")]);
    let first = post(&c.url(), "ta", &b);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["stored"], 2);
    let again = post(&c.url(), "ta", &b);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["stored"], 2);
    assert_eq!(c.results("a", "ta").len(), 2);
}

#[test]
fn a_known_key_with_other_records_is_a_conflict_and_stores_nothing() {
    let c = Running::start(Limits::default());
    let first = post(&c.url(), "ta", &batch("a", "k", vec![record("a", 1, "x")]));
    assert_eq!(first.status, 200);
    let other = post(&c.url(), "ta", &batch("a", "k", vec![record("a", 2, "y")]));
    assert_eq!(other.status, 409, "{other:?}");
    let message = other.body["error"].as_str().unwrap();
    assert!(
        message.contains("`k`") && message.contains("already used"),
        "{message}"
    );
    assert!(other.body.get("record").is_none());
    let stored = c.results("a", "ta");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["seq"], 1);
}

#[test]
fn an_id_sent_again_with_another_body_refuses_the_whole_batch() {
    let c = Running::start(Limits::default());
    assert_eq!(
        post(&c.url(), "ta", &batch("a", "k1", vec![record("a", 1, "x")])).status,
        200
    );
    // The same record under a new key (a re-formed batch): a duplicate.
    let same = post(
        &c.url(),
        "ta",
        &batch("a", "k2", vec![record("a", 1, "x"), record("a", 2, "y")]),
    );
    assert_eq!(same.status, 200, "{same:?}");
    assert_eq!(
        (same.body["stored"].clone(), same.body["duplicates"].clone()),
        (json!(1), json!(1))
    );
    // Its id with another body: refused, and record 3 is not stored either.
    let changed = post(
        &c.url(),
        "ta",
        &batch(
            "a",
            "k3",
            vec![record("a", 3, "z"), record("a", 1, "changed")],
        ),
    );
    assert_eq!(changed.status, 409, "{changed:?}");
    assert_eq!(changed.body["record"], 1);
    assert!(changed.body["error"].as_str().unwrap().contains("a/p/1"));
    let seqs: Vec<_> = c
        .results("a", "ta")
        .iter()
        .map(|r| r["seq"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(1), json!(2)]);
    assert_eq!(c.results("a", "ta")[0]["note"], "x");
    // And the key of the refused batch was not taken: fixed, it goes in.
    let fixed = post(&c.url(), "ta", &batch("a", "k3", vec![record("a", 3, "z")]));
    assert_eq!(fixed.status, 200, "{fixed:?}");
}

#[test]
fn invalid_records_are_422_naming_their_index() {
    let c = Running::start(Limits::default());
    let cases = [
        (
            json!({"id": "a/p/1", "device": "a", "pipeline": "p"}),
            "seq",
        ),
        (json!("not an object"), "object"),
        (record("b", 1, "x"), "belongs to device `b`"),
        (
            json!({"id": "a/p/9", "device": "a", "pipeline": "p", "seq": 1}),
            "is not `a/p/1`",
        ),
        (
            json!({"id": "a/p q/1", "device": "a", "pipeline": "p q", "seq": 1}),
            "pipeline name",
        ),
    ];
    for (n, (bad, says)) in cases.into_iter().enumerate() {
        let key = format!("k{n}");
        let answer = post(
            &c.url(),
            "ta",
            &batch("a", &key, vec![record("a", 5, "ok"), bad]),
        );
        assert_eq!(answer.status, 422, "{answer:?}");
        assert_eq!(answer.body["record"], 1, "{answer:?}");
        let message = answer.body["error"].as_str().unwrap();
        assert!(
            message.starts_with("record 1:") && message.contains(says),
            "{message}"
        );
    }
    assert!(c.results("a", "ta").is_empty());
}

#[test]
fn batch_level_problems_are_400_403_413_415() {
    let limits = Limits {
        max_batch_records: 3,
        max_body_bytes: 64 << 10,
        max_decompressed_bytes: 128 << 10,
        ..Limits::default()
    };
    let c = Running::start(limits);
    let url = c.url();
    let status = |a: Answer| (a.status, a.body["error"].as_str().unwrap_or("").to_owned());

    let (s, m) = status(post_raw(&url, "ta", None, b"{nope".to_vec(), true));
    assert_eq!(s, 400, "{m}");
    let (s, m) = status(post_encoded(
        &url,
        "ta",
        "zstd",
        b"not zstd at all".to_vec(),
    ));
    assert_eq!(s, 400, "{m}");
    let (s, m) = status(post(
        &url,
        "ta",
        &json!({"device": "a", "key": "k", "records": {}}),
    ));
    assert_eq!(s, 400, "{m}");
    assert!(m.contains("array"), "{m}");
    let (s, m) = status(post(
        &url,
        "ta",
        &json!({"protocol": 99, "device": "a", "key": "k", "records": []}),
    ));
    assert_eq!(s, 400, "{m}");
    let (s, m) = status(post(&url, "ta", &batch("a", &"k".repeat(201), vec![])));
    assert_eq!(s, 400, "{m}");
    let (s, m) = status(post(
        &url,
        "ta",
        &batch("b", "k", vec![record("b", 1, "x")]),
    ));
    assert_eq!(s, 403, "{m}");
    let (s, m) = status(post(&url, "nobody", &batch("a", "k", vec![])));
    assert_eq!(s, 401, "{m}");

    let four = (1..=4).map(|i| record("a", i, "x")).collect();
    let (s, m) = status(post(&url, "ta", &batch("a", "k", four)));
    assert_eq!(s, 413, "{m}");
    assert!(m.contains("--max-batch-records") && m.contains('3'), "{m}");
    // 100 KiB of JSON, well compressed: within the body limit, and within
    // the decompressed limit.
    let padded = |n: usize| {
        batch(
            "a",
            "k",
            vec![
                json!({"id": "a/p/1", "device": "a", "pipeline": "p", "seq": 1, "pad": "x".repeat(n)}),
            ],
        )
    };
    let (s, m) = status(post(&url, "ta", &padded(100 << 10)));
    assert_eq!(s, 200, "{m}");
    let (s, m) = status(post(&url, "ta", &padded(200 << 10)));
    assert_eq!(s, 413, "{m}");
    assert!(m.contains("--max-decompressed-bytes"), "{m}");
    let plain = serde_json::to_vec(&padded(100 << 10)).unwrap();
    let (s, m) = status(post_raw(&url, "ta", Some("k"), plain, false));
    assert_eq!(s, 413, "{m}");
    assert!(m.contains("--max-body-bytes"), "{m}");

    let (s, m) = status(post_encoded(&url, "ta", "gzip", b"{}".to_vec()));
    assert_eq!(s, 415, "{m}");
    assert_eq!(c.results("a", "ta").len(), 1);
}

#[test]
fn an_unknown_token_is_refused_before_the_body_is_read() {
    let c = Running::start(Limits::default());
    // Announce 50 MB and send none of it: the answer must not wait for it.
    let started = Instant::now();
    let mut stream = raw(
        &c.url(),
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 50000000\r\n\r\n",
    );
    let (seen, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(seen.starts_with("HTTP/1.1 401"), "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn past_the_batch_concurrency_a_device_is_told_to_retry() {
    let limits = Limits {
        max_concurrent_batches: 1,
        ..Limits::default()
    };
    let c = Running::start(limits);
    // A batch whose body is slow to come holds the only slot.
    let body = serde_json::to_vec(&batch("a", "slow", vec![record("a", 1, "x")])).unwrap();
    let mut slow = raw(
        &c.url(),
        format!(
            "POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ta\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    slow.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let busy = post(&c.url(), "ta", &batch("a", "k", vec![record("a", 2, "y")]));
    assert_eq!(busy.status, 503, "{busy:?}");
    assert_eq!(busy.retry_after.as_deref(), Some("1"));
    assert!(
        busy.body["error"]
            .as_str()
            .unwrap()
            .contains("--max-concurrent-batches")
    );
    slow.write_all(&body[10..]).unwrap();
    let (seen, _) = read_until_closed(&mut slow, Duration::from_millis(1500));
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen:?}");
    let retried = post(&c.url(), "ta", &batch("a", "k", vec![record("a", 2, "y")]));
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(c.results("a", "ta").len(), 2);
}
