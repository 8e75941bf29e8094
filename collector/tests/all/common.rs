//! What the tests share: a collector on loopback, batches, uploads.

use serde_json::{Value, json};
use sluice_collector_core::{Collector, Limits, Serving, Tokens};
use sluice_protocol::keys::SecretKey;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The `sluice-collector` binary (another package's: built first, see
/// `sluice_testkit::cargo_bin`).
pub fn collector_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| sluice_testkit::cargo_bin("sluice-collector", "sluice-collector", &[]))
}

/// The key the tests' fleet pins for bundles: every collector started
/// here takes bundles it signed.
pub fn bundle_key() -> &'static SecretKey {
    static KEY: std::sync::OnceLock<SecretKey> = std::sync::OnceLock::new();
    KEY.get_or_init(SecretKey::generate)
}

/// What the tests' collectors serve besides HTTP: the fleet's bundle key.
fn serving() -> Serving {
    Serving {
        bundle_keys: vec![bundle_key().public()],
        ..Serving::default()
    }
}

/// Device `a` has token `ta`, device `b` token `tb`.
pub fn tokens() -> Tokens {
    let mut tokens = Tokens::default();
    tokens.insert("a", "ta").unwrap();
    tokens.insert("b", "tb").unwrap();
    tokens
}

/// A collector on a free loopback port with its own database.
pub struct Running {
    pub collector: Collector,
    pub dir: tempfile::TempDir,
}

impl Running {
    pub fn start(limits: Limits) -> Running {
        Running::start_for(tokens(), limits)
    }

    /// With `tokens` (an operator token, say).
    pub fn start_for(tokens: Tokens, limits: Limits) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let store = sluice_collector_core::Store::open(&dir.path().join("c.db")).unwrap();
        let collector =
            Collector::start_serving(listener, store, tokens, limits, serving()).unwrap();
        Running { collector, dir }
    }

    /// On `store` (PostgreSQL, say).
    pub fn start_store(
        store: sluice_collector_core::Store,
        tokens: Tokens,
        limits: Limits,
    ) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let collector =
            Collector::start_serving(listener, store, tokens, limits, serving()).unwrap();
        Running { collector, dir }
    }

    pub fn url(&self) -> String {
        self.collector.url()
    }

    /// `device`'s results as stored (read through the API).
    pub fn results(&self, device: &str, token: &str) -> Vec<Value> {
        let response = client()
            .get(format!(
                "{}/v1/devices/{device}/results?limit=10000",
                self.url()
            ))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().unwrap()["results"]
            .as_array()
            .unwrap()
            .clone()
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A result record of `device`, with `note` to tell bodies apart.
pub fn record(device: &str, seq: i64, note: &str) -> Value {
    json!({
        "kind": "result",
        "id": format!("{device}/p/{seq}"),
        "device": device,
        "pipeline": "p",
        "seq": seq,
        "note": note,
    })
}

pub fn batch(device: &str, key: &str, records: Vec<Value>) -> Value {
    json!({"protocol": 1, "device": device, "key": key, "records": records})
}

/// An answer: its status and its JSON body (Null if it has none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

/// POST `body` (compressed with zstd if `zstd`) to the batches endpoint.
pub fn post_raw(url: &str, token: &str, key: Option<&str>, body: Vec<u8>, zstd: bool) -> Answer {
    let mut request = client()
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let body = if zstd {
        request = request.header("Content-Encoding", "zstd");
        zstd::encode_all(&body[..], 3).unwrap()
    } else {
        body
    };
    let response = request.body(body).send().unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json::<Value>().unwrap_or(Value::Null);
    Answer {
        status,
        body,
        retry_after,
    }
}

/// POST `body` as it is, declaring `encoding`.
pub fn post_encoded(url: &str, token: &str, encoding: &str, body: Vec<u8>) -> Answer {
    let response = client()
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .header("Content-Encoding", encoding)
        .body(body)
        .send()
        .unwrap();
    Answer {
        status: response.status().as_u16(),
        retry_after: None,
        body: response.json().unwrap_or(Value::Null),
    }
}

/// POST `batch` as the device would: zstd, key header from the body.
pub fn post(url: &str, token: &str, batch: &Value) -> Answer {
    let key = batch["key"].as_str().map(str::to_owned);
    post_raw(
        url,
        token,
        key.as_deref(),
        serde_json::to_vec(batch).unwrap(),
        true,
    )
}

/// Read from `stream` until it is closed or `within` passes; what was read
/// and whether it was closed.
pub fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&seen).into_owned(), false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (String::from_utf8_lossy(&seen).into_owned(), false);
            }
            // Reset: closed too.
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), true),
        }
    }
}

/// Connect to `url` (http://ADDR) and send `bytes`.
pub fn raw(url: &str, bytes: &[u8]) -> TcpStream {
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream
}
