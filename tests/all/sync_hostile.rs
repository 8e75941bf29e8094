//! The uploader against upstreams that lie: a redirect to a host that
//! echoes acknowledgements, acknowledgements whose counts do not add up,
//! answers full of terminal escapes. Real servers on loopback (a stub
//! collector in axum, the fault proxy, the real collector): nothing is
//! deleted that the configured collector did not account for, and nothing
//! upstream wrote reaches the log or `last_error` unescaped. A property
//! test gives the uploader arbitrary hostile answers (`PROPTEST_CASES`
//! raises the default 128): none deletes a record.

use crate::common::tokio;
use crate::fault_proxy::{Fault, FaultProxy};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_agent::config::SyncConfig;
use sluice_agent::outbox::Outbox;
use sluice_agent::uplink::{UplinkError, Uploader};
use sluice_collector_core::Collector;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const DEVICE: &str = "dev-1";
const TOKEN: &str = "secret-1";

/// What the stub answers to a batch.
#[derive(Clone, Debug)]
enum Answer {
    /// A well-formed acknowledgement of the batch's key, every record
    /// "stored", without storing anything (a host that echoes the key).
    Echo,
    /// An acknowledgement of the batch's key with these counts.
    Counts { stored: u64, duplicates: u64 },
    /// An acknowledgement of another key.
    Key(String),
    /// This status and body.
    Raw(u16, Vec<u8>),
    /// `503` with this `Retry-After`.
    Busy(&'static str),
}

/// A stub upstream on loopback that answers `POST /v1/batches` as told.
struct Stub {
    url: String,
    /// Batches it received.
    hits: Arc<AtomicUsize>,
    /// What it answers next.
    answer: Arc<Mutex<Answer>>,
}

impl Stub {
    fn start(answer: Answer) -> Stub {
        let hits = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(Mutex::new(answer));
        let (counter, told) = (hits.clone(), answer.clone());
        let app = axum::Router::new().route(
            "/v1/batches",
            axum::routing::post(move |body: Bytes| {
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = told.lock().unwrap().clone();
                async move { answer_to(&body, answer) }
            }),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await
        });
        Stub { url, hits, answer }
    }

    /// Answer `answer` from now on.
    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn answer_to(body: &[u8], answer: Answer) -> Response {
    let batch: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(body).unwrap()).unwrap();
    let key = batch["key"].as_str().unwrap().to_owned();
    let records = batch["records"].as_array().unwrap().len() as u64;
    let ack = |key: String, stored: u64, duplicates: u64| {
        axum::Json(serde_json::json!({
            "protocol": 1, "key": key, "stored": stored, "duplicates": duplicates, "replayed": false
        }))
        .into_response()
    };
    match answer {
        Answer::Echo => ack(key, records, 0),
        Answer::Counts { stored, duplicates } => ack(key, stored, duplicates),
        Answer::Key(other) => ack(other, records, 0),
        Answer::Raw(status, body) => (StatusCode::from_u16(status).unwrap(), body).into_response(),
        Answer::Busy(after) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, after)],
            "busy",
        )
            .into_response(),
    }
}

fn collector(dir: &std::path::Path) -> Collector {
    crate::common::collector_for(dir, DEVICE, TOKEN)
}

fn outbox_with(dir: &std::path::Path, n: u64) -> Arc<Outbox> {
    crate::common::outbox_of(&dir.join("device"), DEVICE, n)
}

fn uploader(
    outbox: &Arc<Outbox>,
    url: &str,
    metrics: &Arc<sluice_agent::metrics::Metrics>,
) -> Uploader {
    uploader_pinning(outbox, url, metrics, Vec::new())
}

/// [`uploader`] with the collector keys the device pins.
fn uploader_pinning(
    outbox: &Arc<Outbox>,
    url: &str,
    metrics: &Arc<sluice_agent::metrics::Metrics>,
    ack_keys: Vec<String>,
) -> Uploader {
    let config = SyncConfig {
        ack_keys,
        url: Some(url.to_owned()),
        token: Some(TOKEN.to_owned()),
        batch_max_records: 40,
        timeout_ms: 2000,
        backoff_initial_ms: 10,
        backoff_max_ms: 100,
        ..SyncConfig::default()
    };
    let uplink = sluice_agent::uplink::from_config(&config, DEVICE, tokio().handle())
        .unwrap()
        .expect("sync.url is set");
    Uploader::new(outbox.clone(), uplink, &config, DEVICE)
        .expect("sync settings")
        .with_metrics(metrics.clone())
}

/// A device whose backoff starts at 10 ms and stops growing at
/// `backoff_max_ms`, syncing on its own thread until the returned wake stops.
fn syncing(
    outbox: &Arc<Outbox>,
    url: &str,
    metrics: &Arc<sluice_agent::metrics::Metrics>,
    backoff_max_ms: u64,
) -> (Arc<sluice_agent::wake::Wake>, std::thread::JoinHandle<()>) {
    let config = SyncConfig {
        url: Some(url.to_owned()),
        token: Some(TOKEN.to_owned()),
        timeout_ms: 2000,
        backoff_initial_ms: 10,
        backoff_max_ms,
        ..SyncConfig::default()
    };
    let uplink = sluice_agent::uplink::from_config(&config, DEVICE, tokio().handle())
        .unwrap()
        .expect("sync.url is set");
    let uploader = Uploader::new(outbox.clone(), uplink, &config, DEVICE)
        .expect("sync settings")
        .with_metrics(metrics.clone());
    let wake = sluice_agent::wake::Wake::new();
    let w = wake.clone();
    (wake, std::thread::spawn(move || uploader.run(&w)))
}

fn sync(uploader: &Uploader) -> Result<sluice_agent::uplink::SyncReport, UplinkError> {
    uploader.sync_once(&AtomicBool::new(false))
}

/// The results the collector holds for the device, by seq.
fn stored_seqs(collector: &Collector) -> Vec<u64> {
    let mut seqs: Vec<u64> = crate::common::device_results(&collector.url(), DEVICE, TOKEN)
        .values()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs
}

fn no_control_chars(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

#[test]
fn a_redirect_to_a_host_that_echoes_the_key_is_not_followed_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let echo = Stub::start(Answer::Echo);
    // sync.url answers 307 to a host that would acknowledge anything.
    let proxy = FaultProxy::start(collector.addr(), Fault::Redirect307);
    let elsewhere = format!("{}/v1/batches", echo.url);
    proxy.redirect_to(&elsewhere);
    let outbox = outbox_with(dir.path(), 30);
    let metrics = Arc::new(sluice_agent::metrics::Metrics::default());
    let uploader = uploader(&outbox, &proxy.url(), &metrics);
    for _ in 0..2 {
        let error = sync(&uploader).unwrap_err();
        assert!(
            matches!(error, UplinkError::Redirected { status: 307, .. }),
            "{error}"
        );
        assert!(error.to_string().contains(&elsewhere), "{error}");
    }
    assert_eq!(echo.hits(), 0, "the records went to the other host");
    assert_eq!(outbox.pending().0, 30, "deleted on another host's word");
    let last = outbox.status().unwrap().last_error.unwrap();
    assert!(last.contains("307") && last.contains(&elsewhere), "{last}");
    assert!(stored_seqs(&collector).is_empty());
    // The collector itself answers again: everything arrives once.
    proxy.set(Fault::Pass);
    assert_eq!(sync(&uploader).unwrap().records, 30);
    assert_eq!(outbox.pending().0, 0);
    assert_eq!(stored_seqs(&collector), (0..30).collect::<Vec<_>>());
    assert_eq!(echo.hits(), 0);
}

/// A device that pins its collector's key, behind a host that answers in
/// the collector's place (a captive portal, a hijacked DNS name, a proxy
/// echoing the batch key with every count right): nothing is deleted
/// until the signed answer of the real collector.
#[test]
fn over_http_only_the_pinned_collectors_signed_answer_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let key = sluice_bundle::keys::SecretKey::generate();
    let pinned = vec![key.public().to_text()];
    let mut store = sluice_collector_core::Store::open(&dir.path().join("c.db")).unwrap();
    store.set_ack_key(key);
    let collector = Collector::start_store(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        store,
        crate::common::tokens_for(DEVICE, TOKEN),
        Default::default(),
    )
    .unwrap();
    let outbox = outbox_with(dir.path(), 5);
    let metrics = Arc::new(sluice_agent::metrics::Metrics::default());
    let impostor = Stub::start(Answer::Echo);
    let error = sync(&uploader_pinning(
        &outbox,
        &impostor.url,
        &metrics,
        pinned.clone(),
    ))
    .unwrap_err()
    .to_string();
    assert!(error.contains("is not signed"), "{error}");
    assert_eq!((impostor.hits(), outbox.pending().0), (1, 5));
    // Another collector's signature is no better than none.
    let other = sluice_bundle::keys::SecretKey::generate()
        .public()
        .to_text();
    let error = sync(&uploader_pinning(
        &outbox,
        &collector.url(),
        &metrics,
        vec![other],
    ))
    .unwrap_err()
    .to_string();
    assert!(error.contains("does not pin"), "{error}");
    assert_eq!(outbox.pending().0, 5);
    let text = metrics.encode();
    assert!(
        text.contains("sluice_upload_batches_total{outcome=\"unverified\"} 2"),
        "{text}"
    );
    let report = sync(&uploader_pinning(
        &outbox,
        &collector.url(),
        &metrics,
        pinned,
    ))
    .unwrap();
    assert_eq!((report.records, outbox.pending().0), (5, 0));
    assert_eq!(stored_seqs(&collector), (0..5).collect::<Vec<_>>());
}

#[test]
fn an_acknowledgement_that_does_not_account_for_every_record_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let outbox = outbox_with(dir.path(), 5);
    let metrics = Arc::new(sluice_agent::metrics::Metrics::default());
    let wrong = [(0, 0), (3, 1), (6, 0), (u64::MAX, 6)];
    for (stored, duplicates) in wrong {
        let hostile = Stub::start(Answer::Counts { stored, duplicates });
        let error = sync(&uploader(&outbox, &hostile.url, &metrics)).unwrap_err();
        assert!(
            matches!(error, UplinkError::Miscounted { sent: 5, .. }),
            "{error}"
        );
        assert_eq!(hostile.hits(), 1);
        assert_eq!(
            outbox.pending().0,
            5,
            "{stored} + {duplicates} of 5 deleted the batch"
        );
        let last = outbox.status().unwrap().last_error.unwrap();
        assert!(
            last.contains(&format!("{stored} stored + {duplicates} duplicate"))
                && last.contains("5 record"),
            "{last}"
        );
    }
    let text = metrics.encode();
    assert!(
        text.contains("sluice_upload_batches_total{outcome=\"miscounted\"} 4"),
        "{text}"
    );
    // The real collector accounts for all 5: the same batch is stored once.
    assert_eq!(
        sync(&uploader(&outbox, &collector.url(), &metrics))
            .unwrap()
            .records,
        5
    );
    assert_eq!(stored_seqs(&collector), (0..5).collect::<Vec<_>>());
}

#[test]
fn escapes_and_control_characters_from_upstream_are_escaped_in_errors_and_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = outbox_with(dir.path(), 3);
    let metrics = Arc::new(sluice_agent::metrics::Metrics::default());
    let hostile = b"\x1b[2J\x1b[31mdown\r\nERROR forged line\x07\xe2\x80\xae".to_vec();
    let answers = [
        Answer::Raw(503, hostile.clone()),
        Answer::Raw(200, hostile),
        Answer::Key("\u{1b}]0;owned\u{7}".into()),
    ];
    for answer in answers {
        let stub = Stub::start(answer);
        let error = sync(&uploader(&outbox, &stub.url, &metrics)).unwrap_err();
        let text = error.to_string();
        assert!(
            no_control_chars(&text) && !text.contains('\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains(r"\u{1b}"), "{text:?}");
        let last = outbox.status().unwrap().last_error.unwrap();
        assert!(no_control_chars(&last), "{last:?}");
        assert_eq!(outbox.pending().0, 3);
    }
}

/// Answers a hostile upstream can give that acknowledge nothing: any
/// status but those meaning "refused as invalid" (`400`, `409`, `413`,
/// `422`: the batch is split and one record set aside, kept; see
/// `sync.rs`), with any bytes; acknowledgements of other keys; counts that
/// do not add up to the records sent.
fn hostile_answer() -> impl proptest::strategy::Strategy<Value = Answer> {
    use proptest::prelude::*;
    let status = (100u16..600).prop_filter("a status that refuses as invalid", |s| {
        ![400, 409, 413, 422].contains(s)
    });
    let ack_text = (
        any::<Option<String>>(),
        any::<i64>(),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(|(key, stored, duplicates, replayed)| {
            serde_json::json!({
                "protocol": 1, "key": key, "stored": stored,
                "duplicates": duplicates, "replayed": replayed
            })
            .to_string()
            .into_bytes()
        });
    prop_oneof![
        (
            status.clone(),
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(s, body)| Answer::Raw(s, body)),
        (status, ack_text).prop_map(|(s, body)| Answer::Raw(s, body)),
        ".{0,64}".prop_map(Answer::Key),
        (any::<u64>(), any::<u64>())
            .prop_filter("adds up to the batch", |(s, d)| s.checked_add(*d)
                != Some(40))
            .prop_map(|(stored, duplicates)| Answer::Counts { stored, duplicates }),
    ]
}

#[test]
fn no_answer_but_a_true_acknowledgement_deletes_anything() {
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let outbox = outbox_with(dir.path(), 100);
    let metrics = Arc::new(sluice_agent::metrics::Metrics::default());
    let stub = Stub::start(Answer::Echo);
    let uploader = uploader(&outbox, &stub.url, &metrics);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner
        .run(&hostile_answer(), |answer| {
            stub.set(answer);
            let before = stub.hits();
            let result = sync(&uploader);
            proptest::prop_assert!(result.is_err(), "{:?}", result.map(|r| r.records));
            proptest::prop_assert!(stub.hits() > before, "the batch was sent");
            proptest::prop_assert_eq!(outbox.pending().0, 100, "something was deleted");
            let last = outbox.status().unwrap().last_error.unwrap_or_default();
            proptest::prop_assert!(no_control_chars(&last), "{:?}", last);
            Ok(())
        })
        .unwrap();
    // True acknowledgements still delete: every batch of the 100 records.
    stub.set(Answer::Echo);
    assert_eq!(sync(&uploader).unwrap().records, 100);
    assert_eq!(outbox.pending().0, 0);
}

/// A collector with no room answers `503` with `Retry-After`: the device
/// comes back after that wait, not after its own (much shorter) backoff,
/// and an answer asking for a day cannot park it past its longest backoff.
#[test]
fn a_busy_collector_is_asked_again_after_the_wait_it_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start(Answer::Busy("2"));
    let outbox = outbox_with(dir.path(), 10);
    let metrics = Arc::new(sluice_agent::metrics::Metrics::default());

    let once = uploader(&outbox, &stub.url, &metrics);
    match sync(&once) {
        Err(UplinkError::Busy { retry_after, .. }) => {
            assert_eq!(retry_after, std::time::Duration::from_secs(2))
        }
        other => panic!("{other:?}"),
    }
    let before = stub.hits();
    // With a 10 ms backoff doubling up to 10 s the device would have come
    // back about 8 times in 3 s; told to wait 2 s, it comes back once.
    let (wake, device) = syncing(&outbox, &stub.url, &metrics, 10_000);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let attempts = stub.hits() - before;
    assert!((1..=2).contains(&attempts), "{attempts} attempts in 3 s");
    wake.stop();
    device.join().unwrap();
    assert_eq!(outbox.pending().0, 10, "a busy answer deletes nothing");
    let text = metrics.encode();
    assert!(
        text.contains("sluice_upload_batches_total{outcome=\"busy\"}"),
        "{text}"
    );

    // Asked to wait a day, with a longest backoff of 300 ms: back within
    // 300-450 ms, each time.
    stub.set(Answer::Busy("86400"));
    let before = stub.hits();
    let (wake, device) = syncing(&outbox, &stub.url, &metrics, 300);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let attempts = stub.hits() - before;
    assert!(attempts >= 3, "{attempts} attempts in 3 s");

    // Room again: everything goes.
    stub.set(Answer::Echo);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while outbox.pending().0 > 0 {
        assert!(std::time::Instant::now() < deadline, "still pending");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wake.stop();
    device.join().unwrap();
}
