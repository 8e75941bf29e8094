//! Property tests (bounded fuzzing on stable): whatever comes in, the
//! collector answers without a server error, stores nothing unless the
//! batch is valid, and stores valid batches exactly once in any order of
//! retries. Driven in-process through the router, for speed.

use crate::common::{record, tokens};
use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_collector_core::{Limits, Store, http};
use std::collections::BTreeMap;
use tower::ServiceExt;

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    reader: Store,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let limits = Limits {
            max_body_bytes: 16 << 10,
            max_decompressed_bytes: 32 << 10,
            max_batch_records: 8,
            ..Limits::default()
        };
        let app = http::router_with(Store::open(&path).unwrap(), tokens(), limits);
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            app,
            reader: Store::open(&path).unwrap(),
            _dir: dir,
        }
    }

    /// The answer to a POST of `body` with `headers`; None for headers
    /// that are not valid HTTP, which never reach a server.
    fn try_send(&self, headers: &[(String, String)], body: Vec<u8>) -> Option<(u16, Value)> {
        let mut request = Request::post("/v1/batches");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Body::from(body)).ok()?;
        Some(self.runtime.block_on(async {
            let response = self.app.clone().oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }))
    }

    fn send(&self, headers: &[(String, String)], body: Vec<u8>) -> (u16, Value) {
        self.try_send(headers, body).expect("valid headers")
    }

    fn count(&self) -> u64 {
        self.reader.count("a").unwrap() + self.reader.count("b").unwrap()
    }
}

/// 128 cases, or `PROPTEST_CASES` for a longer run (`docs/fuzzing.md`).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A batch body: valid, mutated, or noise; plain or zstd, maybe cut.
fn bodies() -> impl Strategy<Value = (Vec<u8>, Option<String>, bool)> {
    let valid = (1i64..6, 0usize..10).prop_map(|(n, salt)| {
        let records: Vec<Value> = (0..n).map(|i| record("a", i, &salt.to_string())).collect();
        serde_json::to_vec(&json!({"device": "a", "key": format!("k{salt}"), "records": records}))
            .unwrap()
    });
    let text = prop_oneof![
        valid.clone(),
        (valid.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, i, byte)| {
            let i = i.index(b.len());
            b[i] = byte;
            b
        }),
        (valid, any::<prop::sample::Index>()).prop_map(|(b, i)| b[..i.index(b.len())].to_vec()),
        prop::collection::vec(any::<u8>(), 0..512),
        Just(br#"{"device":"a","key":"k","records":[{}]}"#.to_vec()),
        Just(br#"{"device":"a","key":"k","records":[1,2,3,4,5,6,7,8,9]}"#.to_vec()),
    ];
    let encoding = prop_oneof![
        Just(None),
        Just(Some("zstd".to_owned())),
        Just(Some("gzip".to_owned())),
        "[a-z]{0,6}".prop_map(Some),
    ];
    (text, encoding, any::<bool>(), any::<prop::sample::Index>()).prop_map(
        |(text, encoding, cut, at)| {
            let compress = encoding.as_deref() == Some("zstd");
            let mut body = if compress {
                zstd::encode_all(&text[..], 1).unwrap()
            } else {
                text
            };
            if cut && !body.is_empty() {
                body.truncate(at.index(body.len()));
            }
            let valid_json = serde_json::from_slice::<Value>(&body).is_ok() && !compress;
            (body, encoding, valid_json)
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nothing_sent_makes_a_server_error_or_stores_an_invalid_batch(
        (body, encoding, _) in bodies(),
        token in prop_oneof![Just(Some("ta")), Just(Some("tb")), Just(Some("x")), Just(None)],
        key in prop_oneof![Just(None), Just(Some("k1".to_owned())), ".{0,8}".prop_map(Some)],
        garbage in prop::collection::vec(("[A-Za-z-]{1,12}", ".{0,12}"), 0..3),
    ) {
        let harness = HARNESS.with(|h| h.clone());
        let mut headers: Vec<(String, String)> = garbage;
        if let Some(token) = token {
            headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        if let Some(encoding) = encoding {
            headers.push(("content-encoding".into(), encoding));
        }
        if let Some(key) = key {
            headers.push(("idempotency-key".into(), key));
        }
        let before = harness.count();
        let Some((status, answer)) = harness.try_send(&headers, body) else {
            return Ok(());
        };
        prop_assert!(status < 500, "{status} {answer}");
        if status == 200 {
            prop_assert_eq!(token, Some("ta"));
            let stored = answer["stored"].as_u64().unwrap();
            prop_assert_eq!(harness.count(), before + stored);
        } else {
            prop_assert_eq!(harness.count(), before, "{} {}", status, answer);
            prop_assert!(answer["error"].is_string() || status == 404 || status == 405, "{status} {answer}");
        }
    }

    #[test]
    fn valid_batches_are_stored_exactly_once_in_any_order_of_retries(
        batches in prop::collection::vec(prop::collection::vec(0i64..12, 1..6), 1..5),
        order in prop::collection::vec(any::<prop::sample::Index>(), 1..12),
        zstd in any::<bool>(),
    ) {
        let harness = Harness::new();
        // Batches may share records (a batch re-formed under a new key).
        let bodies: Vec<Vec<u8>> = batches.iter().enumerate().map(|(n, seqs)| {
            let records: Vec<Value> = seqs.iter().map(|&s| record("a", s, "same")).collect();
            let body = serde_json::to_vec(&json!({"device": "a", "key": format!("k{n}"), "records": records})).unwrap();
            if zstd { zstd::encode_all(&body[..], 1).unwrap() } else { body }
        }).collect();
        let mut sends: Vec<usize> = order.iter().map(|i| i.index(bodies.len())).collect();
        sends.extend(0..bodies.len());
        let mut first: BTreeMap<usize, Value> = BTreeMap::new();
        for n in sends {
            let mut headers = vec![("authorization".to_owned(), "Bearer ta".to_owned())];
            headers.push(("idempotency-key".into(), format!("k{n}")));
            if zstd {
                headers.push(("content-encoding".into(), "zstd".into()));
            }
            let (status, ack) = harness.send(&headers, bodies[n].clone());
            prop_assert_eq!(status, 200, "{}", ack);
            match first.get(&n) {
                None => {
                    prop_assert_eq!(&ack["replayed"], &json!(false));
                    first.insert(n, ack);
                }
                Some(earlier) => {
                    prop_assert_eq!(&ack["replayed"], &json!(true));
                    prop_assert_eq!(&ack["stored"], &earlier["stored"]);
                    prop_assert_eq!(&ack["duplicates"], &earlier["duplicates"]);
                }
            }
        }
        let unique: std::collections::BTreeSet<i64> = batches.iter().flatten().copied().collect();
        prop_assert_eq!(harness.count(), unique.len() as u64);
        let stored: u64 = first.values().map(|a| a["stored"].as_u64().unwrap()).sum();
        prop_assert_eq!(stored, unique.len() as u64);
        let seqs: Vec<i64> = harness.reader.results("a", i64::MIN, 100).unwrap().iter()
            .map(|b| serde_json::from_str::<Value>(b).unwrap()["seq"].as_i64().unwrap()).collect();
        prop_assert_eq!(seqs, unique.into_iter().collect::<Vec<_>>());
    }
}

thread_local! {
    /// One store for all cases of the first property: what is stored
    /// accumulates, as on a real collector.
    static HARNESS: std::rc::Rc<Harness> = std::rc::Rc::new(Harness::new());
}
