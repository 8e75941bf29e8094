//! The real `sluice-collector` under memory attacks: its peak resident
//! memory stays within the bound its limits promise (docs/limits.md).

use crate::common::*;
use serde_json::json;
use sluice_collector_core::Limits;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the collector holds with no request at all (code, runtime, SQLite),
/// generously: measured at ~10 MiB.
const BASELINE_BYTES: u64 = 64 << 20;

struct Process {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Process {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(crate::common::collector_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            "a=ta",
            "--token",
            "b=tb",
            "--db",
        ])
        .arg(dir.path().join("c.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches(',')
        .to_owned();
    Process {
        child,
        url,
        _dir: dir,
    }
}

/// Peak resident memory of `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

/// A zstd stream of `n` zeros that does not declare its size: the
/// decompressor only learns it by decompressing.
fn bomb(n: usize) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..n >> 20 {
        encoder.write_all(&zeros).unwrap();
    }
    encoder.finish().unwrap()
}

/// POST `body` with `headers`; the status, or 0 if the connection failed
/// (the collector may close a connection whose body it will not read).
fn send(url: &str, token: &str, encoding: Option<&str>, body: Vec<u8>) -> u16 {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut request = client.post(format!("{url}/v1/batches")).bearer_auth(token);
    if let Some(encoding) = encoding {
        request = request.header("Content-Encoding", encoding);
    }
    match request.body(body).send() {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

#[test]
fn peak_memory_under_attack_stays_within_the_documented_bound() {
    let process = start();
    let url = process.url.clone();
    let started = Instant::now();
    let bomb = bomb(256 << 20);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    // 15 MB of valid JSON whose batch claims another device: read and
    // parsed in full before it is refused.
    let big = serde_json::to_vec(&batch(
        "b",
        "big",
        vec![json!({"id": "b/p/1", "device": "b", "pipeline": "p", "seq": 1, "pad": "x".repeat(15_000_000)})],
    ))
    .unwrap();
    let mut threads = Vec::new();
    // Authenticated compression bombs, many at once.
    for _ in 0..24 {
        let (url, bomb) = (url.clone(), bomb.clone());
        threads.push(std::thread::spawn(move || {
            (0..4)
                .map(|_| send(&url, "ta", Some("zstd"), bomb.clone()))
                .collect::<Vec<_>>()
        }));
    }
    // Large bodies without a valid token.
    for _ in 0..16 {
        let (url, big) = (url.clone(), big.clone());
        threads.push(std::thread::spawn(move || {
            vec![send(&url, "wrong", None, big)]
        }));
    }
    // Many concurrent 15 MB posts with a valid token.
    for _ in 0..16 {
        let (url, big) = (url.clone(), big.clone());
        threads.push(std::thread::spawn(move || {
            vec![
                send(&url, "ta", None, big.clone()),
                send(&url, "ta", None, big),
            ]
        }));
    }
    let mut statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    statuses.sort();
    statuses.dedup();
    // Refused for size, busy, unauthenticated, other device, or cut off:
    // never stored, never a server error.
    for status in &statuses {
        assert!([0, 401, 403, 413, 503].contains(status), "{statuses:?}");
    }
    let peak = peak_rss(process.child.id());
    let bound = Limits::default().memory_bound() + BASELINE_BYTES;
    println!(
        "collector peak RSS under attack: {:.1} MiB (bound {:.1} MiB; answers {statuses:?}; {:?})",
        peak as f64 / (1 << 20) as f64,
        bound as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    assert!(peak < bound, "peak RSS {peak} over the bound {bound}");
    // And a device still gets its results in.
    let answer = post(&url, "ta", &batch("a", "after", vec![record("a", 1, "x")]));
    assert_eq!(answer.status, 200, "{answer:?}");
}
