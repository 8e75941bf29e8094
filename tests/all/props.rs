//! Property tests (bounded fuzzing on stable) of the HTTP ingest endpoint,
//! through its public behaviour: an in-process agent on loopback gets
//! arbitrary requests (methods, paths, content types, lying
//! `Content-Length`s, idempotency keys of arbitrary bytes, bodies of valid,
//! mutated or arbitrary bytes) written on raw TCP. It never answers a server
//! error other than `503` busy, never stops answering, gives every new
//! input (`202`, not replayed) its own id, gives a replayed key the id it
//! gave first, and every id it acknowledged becomes a result in the outbox.
//!
//! `PROPTEST_CASES=100000 cargo test -p sluice --test all props` runs longer
//! (see `docs/fuzzing.md`).

use crate::common::repo_root;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest input the agent under test takes, small so that `413` is reached.
const MAX_INPUT_BYTES: usize = 2048;

#[derive(Debug, Clone)]
enum Length {
    True,
    Missing,
    Lie(i64),
    Garbage(String),
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    content_type: Option<Vec<u8>>,
    length: Length,
    key: Option<Vec<u8>>,
    extra: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let mut out =
            format!("{} {} HTTP/1.1\r\nHost: sluice\r\n", self.method, self.path).into_bytes();
        let mut header = |name: &str, value: &[u8]| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        if let Some(ct) = &self.content_type {
            header("Content-Type", ct);
        }
        match &self.length {
            Length::True => header("Content-Length", self.body.len().to_string().as_bytes()),
            Length::Missing => {}
            Length::Lie(delta) => header(
                "Content-Length",
                (self.body.len() as i64 + delta)
                    .max(0)
                    .to_string()
                    .as_bytes(),
            ),
            Length::Garbage(text) => header("Content-Length", text.as_bytes()),
        }
        if let Some(key) = &self.key {
            header("Idempotency-Key", key);
        }
        for (name, value) in &self.extra {
            header(name, value);
        }
        header("Connection", b"close");
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Bytes of a header value: anything but line breaks (which would end the
/// header; framing is fuzzed through `Content-Length` instead).
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,24}".prop_map(String::into_bytes),
        prop::collection::vec(
            any::<u8>().prop_filter("no line break", |b| *b != b'\r' && *b != b'\n'),
            0..max
        ),
    ]
}

fn digit_png(i: usize) -> Vec<u8> {
    std::fs::read(repo_root().join(format!("models/digits/heldout/{:04}.png", i % 450))).unwrap()
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (0usize..450).prop_map(digit_png),
        2 => ((0usize..450), any::<Index>(), any::<u8>(), any::<Index>()).prop_map(|(i, at, b, cut)| {
            let mut png = digit_png(i);
            let at = at.index(png.len());
            png[at] ^= b | 1;
            png.truncate(cut.index(png.len()) + 1);
            png
        }),
        2 => prop::collection::vec(any::<u8>(), 0..512),
        1 => prop::collection::vec(any::<u8>(), MAX_INPUT_BYTES - 4..MAX_INPUT_BYTES + 4),
        1 => prop::collection::vec(any::<u8>(), 0..4096),
    ]
}

fn requests() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        8 => Just("POST".to_owned()),
        1 => prop::sample::select(vec!["GET", "PUT", "DELETE", "HEAD", "OPTIONS"]).prop_map(str::to_owned),
        1 => "[A-Z]{1,7}",
    ];
    let path = prop_oneof![
        8 => Just("/v1/ingest/digits".to_owned()),
        1 => prop::sample::select(vec![
            "/v1/ingest/nope", "/v1/ingest/", "/v1/ingest/digits/x", "/v1/ingest/%64igits",
            "/v1/ingest/digits?x=1", "/v1/status", "/v1/health", "/", "*", "//v1/ingest/digits",
            "/v1/ingest/..%2fdigits",
        ]).prop_map(str::to_owned),
        1 => "/v1/ingest/[!-~]{0,12}",
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some(b"image/png".to_vec())),
        header_bytes(32).prop_map(Some),
    ];
    let length = prop_oneof![
        6 => Just(Length::True),
        1 => Just(Length::Missing),
        2 => prop_oneof![-64i64..64, Just(1 << 20), Just(i64::MAX / 2)].prop_map(Length::Lie),
        1 => "[-+0-9a-z ,]{0,12}".prop_map(Length::Garbage),
    ];
    let key = prop_oneof![
        2 => Just(None),
        // Few keys, so that some are reused, for the same or another input.
        2 => prop::sample::select(vec!["k1", "k2", "k3"]).prop_map(|k| Some(k.as_bytes().to_vec())),
        1 => header_bytes(300).prop_map(Some),
    ];
    let extra = prop::collection::vec(("[A-Za-z-]{1,12}", header_bytes(16)), 0..3);
    (method, path, content_type, length, key, extra, bodies()).prop_map(
        |(method, path, content_type, length, key, extra, body)| Request {
            method,
            path,
            content_type,
            length,
            key,
            extra,
            body,
        },
    )
}

/// One answer: status and body.
type Answer = (u16, Vec<u8>);

/// Every answer on the connection (a request whose `Content-Length` says
/// less than its body is followed by another one, made of the rest).
///
/// `short` (a request promising more body than it has): the client stops
/// sending, which hyper takes as the client going away (no half-close), so
/// there may be no answer at all.
fn send(addr: SocketAddr, request: &[u8], short: bool) -> Vec<Answer> {
    let mut stream = TcpStream::connect(addr).expect("the agent takes connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The server may answer (and close) before reading everything.
    let _ = stream.write_all(request);
    if short {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_answers(&raw)
}

fn parse_answers(mut raw: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.lines();
        let Some(status) = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let length = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(raw.len() - end - 4);
        let body_end = (end + 4 + length).min(raw.len());
        answers.push((status, raw[end + 4..body_end].to_vec()));
        raw = &raw[body_end..];
    }
    answers
}

fn config(data: &Path) -> sluice_agent::config::Config {
    let mut config =
        sluice_agent::config::Config::load(&repo_root().join("examples/digits/sluice.toml"))
            .unwrap();
    config.device.data_dir = data.to_owned();
    config.runtime.cache_dir =
        Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-plugin-cache"));
    config.sync = sluice_agent::config::SyncConfig::default();
    config.ingest = sluice_agent::config::IngestConfig {
        listen: Some("127.0.0.1:0".into()),
        max_input_bytes: MAX_INPUT_BYTES,
        folder: None,
        ..sluice_agent::config::IngestConfig::default()
    };
    config
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

#[test]
fn arbitrary_requests_never_make_a_server_error_and_every_accepted_input_becomes_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let agent = sluice_agent::agent::Agent::start(config(&dir.path().join("data"))).unwrap();
    let addr = agent.ingest_addr().expect("ingest.listen is set");
    // Accepted inputs: id -> the key it was accepted under.
    let accepted: Mutex<BTreeMap<String, Option<Vec<u8>>>> = Mutex::default();
    // Keys accepted: key -> id.
    let keys: Mutex<BTreeMap<Vec<u8>, String>> = Mutex::default();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let started = Instant::now();
    let outcome = runner.run(&requests(), |request| {
        let short = match &request.length {
            Length::Lie(delta) => *delta > 0,
            Length::Garbage(_) => true,
            Length::True | Length::Missing => false,
        };
        let answers = send(addr, &request.bytes(), short);
        for (status, body) in &answers {
            let text = String::from_utf8_lossy(body);
            prop_assert!(
                *status < 500 || *status == 503,
                "{status} {text} for {request:?}"
            );
            if *status != 202 {
                continue;
            }
            let answer: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| TestCaseError::fail(format!("202 with {text}: {e}")))?;
            let id = answer["id"].as_str().unwrap_or_default().to_owned();
            let replayed = answer["replayed"].as_bool();
            prop_assert!(id.starts_with("demo-gateway/digits/"), "{answer}");
            prop_assert!(replayed.is_some(), "{answer}");
            let mut accepted = accepted.lock().unwrap();
            let mut keys = keys.lock().unwrap();
            // The key as the server reads it: HTTP trims the value.
            let key = request.key.as_ref().map(|k| k.trim_ascii().to_vec());
            match (&key, replayed) {
                (Some(key), Some(true)) => {
                    prop_assert_eq!(keys.get(key), Some(&id), "replayed key {:?}", key);
                }
                (_, Some(true)) => prop_assert!(false, "replayed without a key: {answer}"),
                (key, _) => {
                    prop_assert!(!accepted.contains_key(&id), "id {id} given twice");
                    accepted.insert(id.clone(), key.clone());
                    if let Some(key) = key {
                        keys.insert(key.clone(), id);
                    }
                }
            }
        }
        // Still answering.
        let health = send(
            addr,
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            false,
        );
        prop_assert_eq!(health.first().map(|a| a.0), Some(200), "no health answer");
        Ok(())
    });
    let fuzzed = started.elapsed();
    if let Err(e) = outcome {
        agent.shutdown();
        panic!("{e}");
    }
    let accepted = accepted.into_inner().unwrap();
    assert!(
        !accepted.is_empty(),
        "no request was accepted: the generator is off"
    );
    // Every acknowledged input becomes a result (a document or an error):
    // the journal empties and the outbox holds exactly those ids.
    let outbox = agent.outbox().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = outbox.status().unwrap();
        if status.journal_items == 0 && status.pending_records >= accepted.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every input became a result: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.shutdown();
    let mut results = BTreeMap::new();
    while let Some(batch) = outbox.next_batch(10_000, 64 << 20).unwrap() {
        for (id, body) in &batch.records {
            assert!(
                results.insert(id.clone(), body.clone()).is_none(),
                "{id} twice"
            );
        }
        outbox.ack_batch(batch.id).unwrap();
    }
    // Every acknowledged id is a result. The outbox may hold more: an
    // answer can be lost to the client when the server closes a connection
    // with unread bytes of a body longer than its `Content-Length` (the
    // reset discards it), so only inclusion is certain.
    let missing: Vec<&String> = accepted
        .keys()
        .filter(|id| !results.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but no result: {missing:?}"
    );
    eprintln!(
        "ingest props: {} cases, {} inputs accepted, {:.1} s",
        cases(),
        accepted.len(),
        fuzzed.as_secs_f64()
    );
}
