//! Listing a device's results page by page: every result exactly once,
//! even when `seq` repeats across the device's outbox instances (a board
//! without a clock starts each new outbox at the same numbers).

use crate::common::*;
use serde_json::{Value, json};
use sluice_collector_core::Limits;
use sluice_protocol::{DeviceResults, ResultsCursor, result_id};
use std::collections::BTreeMap;

/// Outbox instances of device `a`, each numbering its results from 0.
const OUTBOXES: [&str; 3] = ["0a", "0b", "0c"];
const PER_OUTBOX: i64 = 50;

/// The records of one outbox instance.
fn records(outbox: &str) -> Vec<Value> {
    (0..PER_OUTBOX)
        .map(|seq| {
            json!({
                "kind": "result",
                "id": result_id("a", "p", Some(outbox), seq),
                "device": "a",
                "pipeline": "p",
                "outbox": outbox,
                "seq": seq,
            })
        })
        .collect()
}

/// One page, as a client reads it.
fn page(c: &Running, query: &str) -> (u16, DeviceResults) {
    let response = client()
        .get(format!("{}/v1/devices/a/results?{query}", c.url()))
        .bearer_auth("ta")
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().unwrap();
    match serde_json::from_str(&body) {
        Ok(results) => (status, results),
        Err(_) => (
            status,
            DeviceResults {
                device: body,
                results: Vec::new(),
                next: None,
            },
        ),
    }
}

/// Through `c` (an empty store, SQLite or PostgreSQL): three outboxes of
/// one device reuse seq 0..50; paging 7 at a time by the documented cursor
/// lists each of the 150 exactly once, in `(seq, id)` order, and agrees
/// with `/count`.
pub fn every_result_is_listed_once_when_seq_repeats(c: &Running) {
    for (n, outbox) in OUTBOXES.iter().enumerate() {
        let answer = post(
            &c.url(),
            "ta",
            &batch("a", &format!("k{n}"), records(outbox)),
        );
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let count: Value = client()
        .get(format!("{}/v1/devices/a/count", c.url()))
        .bearer_auth("ta")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let total = PER_OUTBOX as usize * OUTBOXES.len();
    assert_eq!(count["count"], total);

    let mut listed: BTreeMap<String, usize> = BTreeMap::new();
    let mut order = Vec::new();
    let mut query = "limit=7".to_owned();
    for _ in 0..100 {
        let (status, results) = page(c, &query);
        assert_eq!(status, 200, "{query}: {}", results.device);
        for record in &results.results {
            let id = record["id"].as_str().unwrap().to_owned();
            order.push((record["seq"].as_i64().unwrap(), id.clone()));
            *listed.entry(id).or_default() += 1;
        }
        match results.next {
            Some(next) => query = format!("{}&limit=7", next.query()),
            None => break,
        }
    }
    let twice: Vec<_> = listed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    assert_eq!(listed.len(), total, "{} of {total} listed", listed.len());
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "in (seq, id) order");

    // `after=SEQ` alone keeps its meaning: every result with a greater seq.
    let (_, after) = page(c, "after=47&limit=100");
    assert_eq!(after.results.len(), 2 * OUTBOXES.len());
    assert!(
        after
            .results
            .iter()
            .all(|r| r["seq"].as_i64().unwrap() > 47)
    );
    assert!(after.next.is_none(), "a short page is the last one");
    // A cursor is the pair: `after_id` alone is refused.
    assert_eq!(page(c, "after_id=a/p/0a-1").0, 400);
    // The cursor of a result in the middle of a seq starts right after it.
    let middle = ResultsCursor {
        after: 10,
        after_id: result_id("a", "p", Some("0b"), 10),
    };
    let (_, rest) = page(c, &format!("{}&limit=2", middle.query()));
    let ids: Vec<&str> = rest
        .results
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a/p/0c-10", "a/p/0a-11"]);
}

#[test]
fn paging_lists_every_result_once_when_seq_repeats_across_outboxes() {
    every_result_is_listed_once_when_seq_repeats(&Running::start(Limits::default()));
}
