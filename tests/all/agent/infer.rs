//! The synchronous call, `POST /v1/infer/{pipeline}`, against `sluice run`
//! as a child process: the result in the answer once committed, failed
//! items as results, concurrent calls batched together, a retry with the
//! same key answered with the same result, a deadline that leaves the
//! result to be read later; every result also synced upstream.

use super::harness::{Agent, collector, images, set, stored, wait_until, write_config};
use crate::common::http;
use std::time::Duration;

/// POST `body` to `/v1/infer/{pipeline}` of `url`: status, outcome header,
/// JSON answer.
fn infer(
    url: &str,
    pipeline: &str,
    body: &[u8],
    key: Option<&str>,
) -> (u16, String, serde_json::Value) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/infer/{pipeline}"))
        .header("content-type", "image/png")
        .body(body.to_vec());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let outcome = response
        .headers()
        .get("x-sluice-outcome")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        outcome,
        response.json().unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn a_synchronous_call_answers_its_committed_result_and_concurrent_calls_are_batched() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    // Room for 32 bodies at once (the default, 4, answers the rest 503).
    set(&config, "ingest", "max_concurrent_requests", 32);
    let agent = Agent::start(&config);
    let url = agent.url.clone();
    let images = images();

    let (status, outcome, record) = infer(&url, "digits", &images[0], None);
    assert_eq!((status, outcome.as_str()), (200, "ok"), "{record}");
    assert!(record["result"]["body"]["top"].is_array(), "{record}");
    let first = record["id"].as_str().unwrap().to_owned();
    // A failed item is a result too, said in a header.
    let (status, outcome, record) = infer(&url, "digits", b"not a png", None);
    assert_eq!((status, outcome.as_str()), (200, "error"), "{record}");
    assert!(record["error"]["message"].is_string(), "{record}");
    // The same key again: the same result, not a second one.
    let (_, _, keyed) = infer(&url, "digits", &images[1], Some("call-1"));
    let (status, _, again) = infer(&url, "digits", &images[1], Some("call-1"));
    assert_eq!(status, 200);
    assert_eq!(keyed["id"], again["id"]);
    assert_eq!(infer(&url, "nope", &images[0], None).0, 404);

    // 32 calls at once: each its own result, and the scheduler batched them.
    let answers: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let calls: Vec<_> = images[2..34]
            .iter()
            .map(|image| scope.spawn(|| infer(&url, "digits", image, None)))
            .collect();
        calls
            .into_iter()
            .map(|c| {
                let (status, _, record) = c.join().unwrap();
                assert_eq!(status, 200, "{record}");
                record
            })
            .collect()
    });
    let mut ids: Vec<&str> = answers.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 32);
    let largest = answers
        .iter()
        .map(|r| r["timings"]["batch_items"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        largest > 1,
        "concurrent calls were batched together: largest batch {largest}"
    );

    // Synced upstream like every other result.
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .len()
        == 35));
    assert!(stored(&collector).contains_key(&first));
}

#[test]
fn a_call_past_its_deadline_gets_its_id_and_the_result_is_read_later() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    set(&config, "ingest", "infer_timeout_ms", 1);
    // Kept for local readers, to be read after the deadline.
    set(&config, "outbox", "local_max_bytes", 16 << 20);
    // The worker dies once on the call's input and is started again after
    // a backoff: the result comes, later than the deadline whatever the
    // machine's speed (a digit alone can take under a millisecond).
    let agent = Agent::start_with(
        &config,
        &[("SLUICE_FAULT_INJECT", "worker-panic-once:digits")],
    );
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v1/infer/digits", agent.url))
        .header("content-type", "image/png")
        .body(images()[0].clone())
        .send()
        .unwrap();
    assert_eq!(response.status(), 504);
    let id = response.headers()["x-sluice-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(response.text().unwrap().contains("ingest.infer_timeout_ms"));
    let read = || {
        let (_, body) = http(reqwest::Client::new().get(format!("{}/v1/results", agent.url)));
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["record"]["id"] == id.as_str())
    };
    assert!(
        wait_until(Duration::from_secs(30), read),
        "the result is made all the same"
    );
}
