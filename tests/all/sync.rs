//! The uploader against a real collector on loopback, directly and through a
//! real TCP proxy that fails on demand: whatever goes wrong, every result
//! reaches the collector exactly once and leaves the outbox only when
//! acknowledged.

use crate::common::{http, tokio};
use crate::fault_proxy::{Fault, FaultProxy};
use sluice_agent::config::{OutboxConfig, SyncConfig};
use sluice_agent::outbox::{NewRecord, Outbox, counter};
use sluice_agent::uplink::{SyncReport, UplinkError, Uploader};
use sluice_collector_core::{Collector, Tokens};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const DEVICE: &str = "dev-1";
const TOKEN: &str = "secret-1";

fn tokens() -> Tokens {
    let mut tokens = Tokens::default();
    tokens.insert(DEVICE, TOKEN).unwrap();
    tokens.insert("dev-2", "secret-2").unwrap();
    tokens
}

fn collector(dir: &std::path::Path) -> Collector {
    Collector::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        &dir.join("collector.sqlite"),
        tokens(),
    )
    .unwrap()
}

fn sync_config(url: &str, token: &str) -> SyncConfig {
    SyncConfig {
        url: Some(url.to_owned()),
        token: Some(token.to_owned()),
        batch_max_records: 40,
        timeout_ms: 500,
        backoff_initial_ms: 10,
        backoff_max_ms: 100,
        ..SyncConfig::default()
    }
}

fn doc(device: &str, seq: u64) -> NewRecord {
    let id = format!("{device}/p/{seq}");
    let body = serde_json::json!({ "id": id, "device": device, "pipeline": "p", "seq": seq, "result": { "label": seq % 10 } });
    NewRecord {
        id,
        body: body.to_string().into_bytes(),
    }
}

fn outbox_with(dir: &std::path::Path, n: u64) -> Arc<Outbox> {
    let outbox = Outbox::open_in(&dir.join("device"), OutboxConfig::default()).unwrap();
    outbox
        .append((0..n).map(|s| doc(DEVICE, s)).collect())
        .unwrap();
    Arc::new(outbox)
}

fn get(url: &str, token: &str) -> (u16, serde_json::Value) {
    let (status, body) = http(reqwest::Client::new().get(url).bearer_auth(token));
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// An uploader of `outbox` to `url` with `token`.
fn uploader(outbox: &Arc<Outbox>, url: &str, token: &str) -> Uploader {
    let config = sync_config(url, token);
    let uplink = sluice_agent::uplink::from_config(&config, DEVICE, tokio().handle())
        .unwrap()
        .expect("sync.url is set");
    Uploader::new(outbox.clone(), uplink, &config, DEVICE).expect("sync settings")
}

fn count(collector: &Collector, device: &str, token: &str) -> u64 {
    let (status, body) = get(
        &format!("{}/v1/devices/{device}/count", collector.url()),
        token,
    );
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

/// Every seq of `0..n` stored exactly once, in order.
fn assert_all_once(collector: &Collector, n: u64) {
    let (status, body) = get(
        &format!(
            "{}/v1/devices/{DEVICE}/results?limit=10000",
            collector.url()
        ),
        TOKEN,
    );
    assert_eq!(status, 200);
    let seqs: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>());
}

fn sync(uploader: &Uploader) -> Result<SyncReport, UplinkError> {
    uploader.sync_once(&AtomicBool::new(false))
}

#[test]
fn everything_arrives_once_and_leaves_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let outbox = outbox_with(dir.path(), 250);
    let uploader = uploader(&outbox, &collector.url(), TOKEN);
    let report = sync(&uploader).unwrap();
    assert_eq!((report.batches, report.records), (7, 250));
    assert_eq!(outbox.pending(), (0, 0));
    assert_eq!(count(&collector, DEVICE, TOKEN), 250);
    assert_all_once(&collector, 250);
    let status = outbox.status().unwrap();
    assert_eq!(status.counters[counter::UPLOADED], 250);
    assert!(status.last_sync_at_ms.is_some());
}

#[test]
fn collector_down_then_up_delivers_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    // Down: every connection closes without an answer.
    let proxy = FaultProxy::start(collector.addr(), Fault::Close);
    let outbox = outbox_with(dir.path(), 100);
    let uploader = uploader(&outbox, &proxy.url(), TOKEN);
    for _ in 0..3 {
        let error = sync(&uploader).unwrap_err();
        assert!(matches!(error, UplinkError::Unreachable { .. }), "{error}");
    }
    assert_eq!(outbox.pending().0, 100);
    let status = outbox.status().unwrap();
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("unreachable"),
        "{status:?}"
    );
    // The collector comes up.
    proxy.set(Fault::Pass);
    sync(&uploader).unwrap();
    assert_eq!(outbox.pending().0, 0);
    assert_all_once(&collector, 100);
    // `outbox status` shows what is wrong now: nothing.
    let status = outbox.status().unwrap();
    assert_eq!(
        (status.last_error, status.last_error_at_ms),
        (None, None),
        "a successful upload clears the last error"
    );
    assert!(status.last_sync_at_ms.is_some());
}

#[test]
fn a_200_that_is_not_an_acknowledgement_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::Portal200);
    let outbox = outbox_with(dir.path(), 50);
    let uploader = uploader(&outbox, &proxy.url(), TOKEN);
    let error = sync(&uploader).unwrap_err();
    assert!(
        matches!(error, UplinkError::NotAcknowledged { .. }),
        "{error}"
    );
    assert_eq!(
        outbox.pending().0,
        50,
        "a captive portal's page deletes nothing"
    );
    assert_eq!(count(&collector, DEVICE, TOKEN), 0);
    proxy.set(Fault::Pass);
    sync(&uploader).unwrap();
    assert_all_once(&collector, 50);
}

#[test]
fn a_500_is_retried_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::Status500);
    let outbox = outbox_with(dir.path(), 100);
    let uploader = uploader(&outbox, &proxy.url(), TOKEN);
    let error = sync(&uploader).unwrap_err();
    assert!(
        matches!(error, UplinkError::Refused { status: 500, .. }),
        "{error}"
    );
    assert_eq!(outbox.pending().0, 100);
    proxy.set(Fault::Pass);
    sync(&uploader).unwrap();
    assert_eq!(outbox.pending().0, 0);
    assert_all_once(&collector, 100);
}

#[test]
fn a_hanging_collector_times_out_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::Hang);
    let outbox = outbox_with(dir.path(), 60);
    let uploader = uploader(&outbox, &proxy.url(), TOKEN);
    let started = std::time::Instant::now();
    let error = sync(&uploader).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the request deadline applies"
    );
    assert!(matches!(error, UplinkError::Unreachable { .. }), "{error}");
    assert_eq!(outbox.pending().0, 60);
    proxy.set(Fault::Pass);
    sync(&uploader).unwrap();
    assert_all_once(&collector, 60);
}

#[test]
fn an_answer_cut_short_after_the_collector_stored_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::CutAnswer);
    let outbox = outbox_with(dir.path(), 100);
    let uploader = uploader(&outbox, &proxy.url(), TOKEN);
    let error = sync(&uploader).unwrap_err();
    assert!(matches!(error, UplinkError::Unreachable { .. }), "{error}");
    // The collector has the first batch; the device does not know it.
    assert_eq!(count(&collector, DEVICE, TOKEN), 40);
    assert_eq!(outbox.pending().0, 100);
    proxy.set(Fault::Pass);
    sync(&uploader).unwrap();
    assert_eq!(outbox.pending().0, 0);
    assert_all_once(&collector, 100);
}

#[test]
fn a_retried_batch_survives_a_device_restart_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::CutAnswer);
    {
        let outbox = outbox_with(dir.path(), 30);
        let uploader = uploader(&outbox, &proxy.url(), TOKEN);
        sync(&uploader).unwrap_err();
        assert_eq!(count(&collector, DEVICE, TOKEN), 30);
    }
    // "Restart": a new outbox handle and uploader on the same file; new
    // results arrived meanwhile.
    let outbox =
        Arc::new(Outbox::open_in(&dir.path().join("device"), OutboxConfig::default()).unwrap());
    outbox
        .append((30..50).map(|s| doc(DEVICE, s)).collect())
        .unwrap();
    proxy.set(Fault::Pass);
    let uploader = uploader(&outbox, &proxy.url(), TOKEN);
    sync(&uploader).unwrap();
    assert_all_once(&collector, 50);
    assert_eq!(outbox.counter(counter::UPLOADED).unwrap(), 50);
}

#[test]
fn a_device_cannot_write_another_devices_results() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let outbox = outbox_with(dir.path(), 10);
    // dev-2's token, dev-1's records.
    let uploader = uploader(&outbox, &collector.url(), "secret-2");
    let error = sync(&uploader).unwrap_err();
    assert!(
        matches!(error, UplinkError::Refused { status: 403, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("dev-2"), "{error}");
    assert_eq!(count(&collector, DEVICE, TOKEN), 0);
    assert_eq!(
        outbox.pending().0,
        10,
        "a refusal that may pass keeps the records"
    );
    // Reading another device's results is refused too; an unknown token is 401.
    assert_eq!(
        get(
            &format!("{}/v1/devices/{DEVICE}/count", collector.url()),
            "secret-2"
        )
        .0,
        403
    );
    assert_eq!(
        get(
            &format!("{}/v1/devices/{DEVICE}/count", collector.url()),
            "nope"
        )
        .0,
        401
    );
}

#[test]
fn the_collector_dedupes_by_record_id_when_a_batch_is_re_formed() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let post = |key: &str, seqs: std::ops::Range<u64>| {
        let records: Vec<serde_json::Value> = seqs
            .map(|s| serde_json::from_slice(&doc(DEVICE, s).body).unwrap())
            .collect();
        let body =
            serde_json::json!({ "device": DEVICE, "key": key, "records": records }).to_string();
        let (status, answer) = http(
            reqwest::Client::new()
                .post(format!("{}/v1/batches", collector.url()))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key)
                .header("Content-Encoding", "zstd")
                .body(zstd::encode_all(body.as_bytes(), 3).unwrap()),
        );
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&answer).unwrap()
    };
    assert_eq!(
        post("k1", 0..10),
        serde_json::json!({ "protocol": 1, "key": "k1", "stored": 10, "duplicates": 0, "replayed": false })
    );
    assert_eq!(post("k1", 0..10)["replayed"], true);
    assert_eq!(
        post("k2", 5..15),
        serde_json::json!({ "protocol": 1, "key": "k2", "stored": 5, "duplicates": 5, "replayed": false })
    );
    assert_all_once(&collector, 15);
    let (_, page) = get(
        &format!(
            "{}/v1/devices/{DEVICE}/results?after=9&limit=3",
            collector.url()
        ),
        TOKEN,
    );
    let seqs: Vec<u64> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [10, 11, 12]);
}

#[test]
fn one_bad_record_is_set_aside_and_every_good_one_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let outbox =
        Arc::new(Outbox::open_in(&dir.path().join("device"), OutboxConfig::default()).unwrap());
    // 199 good records around one whose id does not match its fields: the
    // collector refuses any batch holding it.
    let mut records: Vec<NewRecord> = (0..199).map(|s| doc(DEVICE, s)).collect();
    let bad =
        serde_json::json!({ "id": "dev-1/p/7000", "device": DEVICE, "pipeline": "p", "seq": 8000 });
    records.insert(
        120,
        NewRecord {
            id: "dev-1/p/7000".into(),
            body: bad.to_string().into_bytes(),
        },
    );
    outbox.append(records).unwrap();
    let config = SyncConfig {
        batch_max_records: 200,
        ..sync_config(&collector.url(), TOKEN)
    };
    let uplink = sluice_agent::uplink::from_config(&config, DEVICE, tokio().handle())
        .unwrap()
        .unwrap();
    let uploader = Uploader::new(outbox.clone(), uplink, &config, DEVICE).expect("sync settings");
    let report = sync(&uploader).unwrap();
    assert_eq!(report.set_aside, 1, "{report:?}");
    assert!(report.splits <= 8, "found by halving: {report:?}");
    assert_eq!(report.records, 199, "{report:?}");
    assert_all_once(&collector, 199);

    // Kept, counted and reported, not deleted.
    let status = outbox.status().unwrap();
    assert_eq!(status.pending_records, 0);
    assert_eq!(status.set_aside_records, 1);
    assert_eq!(status.counters[counter::REJECTED_UPSTREAM], 1);
    let aside = outbox.set_aside_records(10).unwrap();
    assert_eq!(aside.len(), 1);
    assert_eq!(aside[0].id, "dev-1/p/7000");
    assert!(
        aside[0].reason.contains("422") && aside[0].reason.contains("dev-1/p/8000"),
        "{}",
        aside[0].reason
    );
    // Once upstream is fixed, an operator sends it again.
    assert_eq!(outbox.requeue_set_aside().unwrap().stored, 1);
    assert_eq!(outbox.status().unwrap().set_aside_records, 0);
    assert_eq!(outbox.pending().0, 1);
}

#[test]
fn a_refusal_that_is_not_about_the_records_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let outbox = outbox_with(dir.path(), 10);
    // A wrong path (404) and a wrong token (401) say nothing about the
    // records: retried later, nothing dropped or set aside.
    for (url, token) in [
        (format!("{}/not-here", collector.url()), TOKEN),
        (collector.url(), "wrong-token"),
    ] {
        let err = sync(&uploader(&outbox, &url, token)).unwrap_err();
        assert!(!err.is_about_content(), "{err}");
        let status = outbox.status().unwrap();
        assert_eq!(
            (status.pending_records, status.set_aside_records),
            (10, 0),
            "{err}"
        );
    }
    sync(&uploader(&outbox, &collector.url(), TOKEN)).unwrap();
    assert_all_once(&collector, 10);
}

#[test]
fn a_result_id_already_stored_with_other_content_is_a_conflict_not_an_upload() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let first = outbox_with(&dir.path().join("a"), 3);
    sync(&uploader(&first, &collector.url(), TOKEN)).unwrap();
    // Another outbox of the same device makes a different record under an
    // id already delivered (what clock-based ids did after a reset).
    let second = Arc::new(
        Outbox::open_in(
            &dir.path().join("b").join("device"),
            OutboxConfig::default(),
        )
        .unwrap(),
    );
    let mut clash = doc(DEVICE, 1);
    clash.body = String::from_utf8(clash.body)
        .unwrap()
        .replace("\"label\":1", "\"label\":7")
        .into_bytes();
    second.append(vec![clash, doc(DEVICE, 3)]).unwrap();
    let report = sync(&uploader(&second, &collector.url(), TOKEN)).unwrap();
    assert_eq!((report.records, report.set_aside), (1, 1), "{report:?}");
    let status = second.status().unwrap();
    assert_eq!(
        status.counters[counter::UPLOADED],
        1,
        "the clash is not counted as uploaded"
    );
    let aside = second.set_aside_records(10).unwrap();
    assert!(aside[0].reason.contains("409"), "{}", aside[0].reason);
    assert_all_once(&collector, 4);
}

#[test]
fn an_endless_answer_is_not_read_past_its_bound_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::Endless200);
    let outbox = outbox_with(dir.path(), 5);
    let err = sync(&uploader(&outbox, &proxy.url(), TOKEN)).unwrap_err();
    assert!(matches!(err, UplinkError::NotAcknowledged { .. }), "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(outbox.pending().0, 5);
    // The client stopped reading at its bound (64 KiB); what the proxy got
    // out is that plus the sockets' buffers, not the 3 GB announced.
    std::thread::sleep(Duration::from_millis(200));
    let taken = proxy.answer_bytes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(taken < 32 << 20, "{taken} bytes of answer were taken");
}

/// The count of `series` (e.g. `name_bucket{le="60.0"}`) in OpenMetrics `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn the_acknowledgement_lag_counts_how_long_each_record_waited_for_its_ack() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let outbox = outbox_with(dir.path(), 30);
    // The first 20 records were stored an hour ago (the device was offline).
    rusqlite::Connection::open(outbox.path())
        .unwrap()
        .execute(
            "UPDATE records SET created_at_ms = created_at_ms - 3600000 WHERE rowid <= 20",
            [],
        )
        .unwrap();
    let metrics = Arc::new(sluice_agent::metrics::Metrics::default());
    let uploader = uploader(&outbox, &collector.url(), TOKEN).with_metrics(metrics.clone());
    assert_eq!(sync(&uploader).unwrap().records, 30);
    let text = metrics.encode();
    let lag = |suffix: &str| sample(&text, &format!("sluice_upload_ack_lag_seconds{suffix}"));
    assert_eq!(lag("_count"), Some(30.0), "{text}");
    // 10 acknowledged within a minute of being stored, 20 after an hour
    // (and less than six).
    assert_eq!(lag("_bucket{le=\"60.0\"}"), Some(10.0), "{text}");
    assert_eq!(lag("_bucket{le=\"3600.0\"}"), Some(10.0), "{text}");
    assert_eq!(lag("_bucket{le=\"21600.0\"}"), Some(30.0), "{text}");
    assert!(lag("_sum").unwrap() >= 20.0 * 3600.0, "{text}");
}
