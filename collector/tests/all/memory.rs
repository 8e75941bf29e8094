//! The real `sluice-collector` under memory attacks: its peak resident
//! memory stays within the bound its limits promise (docs/limits.md).

use crate::common::*;
use serde_json::json;
use sluice_collector_core::Limits;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the collector holds with no request at all (code, runtime, SQLite),
/// generously: measured at ~10 MiB.
const BASELINE_BYTES: u64 = 64 << 20;

struct Process {
    server: sluice_testkit::Listening,
    url: String,
    _dir: tempfile::TempDir,
}

fn start() -> Process {
    let dir = tempfile::tempdir().unwrap();
    let server = sluice_testkit::Listening::spawn(
        Command::new(crate::common::collector_bin())
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
            .stderr(Stdio::null()),
    );
    let url = server.url().to_owned();
    Process {
        server,
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
    let mut process = start();
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
    let peak = peak_rss(process.server.child().id());
    // Without `--mqtt` the MQTT consumer holds nothing; no bundle is uploaded.
    let limits = Limits::default();
    let bound = limits.memory_bound() - limits.mqtt_memory_bound() - limits.bundle_memory_bound()
        + BASELINE_BYTES;
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

/// The MQTT side under a flood, on the shipped broker: twelve devices each
/// publish three 15 MB batches (parsed in full, then refused: they claim
/// another device) and three zstd bombs, all at once, to a collector that
/// keeps `Limits::mqtt_max_held()` of them and answers the rest `503`. Its peak
/// stays within `memory_bound()`, which counts what the MQTT consumer may
/// hold, and every message is answered.
#[test]
fn peak_memory_under_an_mqtt_flood_stays_within_the_documented_bound() {
    use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
    use sluice_mqtt::rumqttc::v5::mqttbytes::v5::PublishProperties;
    use sluice_mqtt::rumqttc::v5::{Client, Event, Incoming};
    const PER_KIND: usize = 3;
    let devices: Vec<String> = (0..12).map(|i| format!("flood-{i}")).collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    let broker =
        sluice_testkit::or_skip!(sluice_testkit::Mosquitto::shipped(&names, &["collector-1"]));
    let dir = tempfile::tempdir().unwrap();
    let collector =
        crate::mqtt::CollectorProcess::on_shipped(&dir.path().join("c.db"), &broker, &[]);
    let started = Instant::now();
    let big = serde_json::to_vec(&batch(
        "someone-else",
        "big",
        vec![json!({"id": "x/p/1", "device": "someone-else", "pipeline": "p", "seq": 1, "pad": "x".repeat(15_000_000)})],
    ))
    .unwrap();
    let bomb = bomb(256 << 20);
    let floods: Vec<_> = devices
        .iter()
        .map(|device| {
            let (device, url, password) = (device.clone(), broker.url(), broker.password(device));
            let (big, bomb) = (big.clone(), bomb.clone());
            std::thread::spawn(move || {
                let broker = sluice_mqtt::Broker {
                    username: Some(device.clone()),
                    password: Some(password),
                    ..Default::default()
                };
                let options =
                    sluice_mqtt::options(&url, &format!("sluice-{device}"), &broker, 1 << 20)
                        .unwrap();
                let (client, mut connection) = Client::new(options, 64);
                let acks = sluice_protocol::mqtt::acks("sluice", &device);
                client.subscribe(acks.clone(), QoS::AtLeastOnce).unwrap();
                let mut answers = 0;
                let mut sent = false;
                let deadline = Instant::now() + Duration::from_secs(180);
                for event in connection.iter() {
                    assert!(Instant::now() < deadline, "{device}: {answers} answers");
                    match event {
                        Ok(Event::Incoming(Incoming::SubAck(_))) if !sent => {
                            sent = true;
                            for i in 0..2 * PER_KIND {
                                let (body, zstd) = if i % 2 == 0 {
                                    (big.clone(), None)
                                } else {
                                    (
                                        bomb.clone(),
                                        Some(("content-encoding".into(), "zstd".into())),
                                    )
                                };
                                let properties = PublishProperties {
                                    response_topic: Some(acks.clone()),
                                    correlation_data: Some(format!("k{i}").into_bytes().into()),
                                    user_properties: zstd.into_iter().collect(),
                                    ..Default::default()
                                };
                                client
                                    .publish_with_properties(
                                        sluice_protocol::mqtt::batches("sluice", &device),
                                        QoS::AtLeastOnce,
                                        false,
                                        body,
                                        properties,
                                    )
                                    .unwrap();
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == acks.as_bytes() => {
                            answers += 1;
                            if answers == 2 * PER_KIND {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => panic!("{device}: {e}"),
                    }
                }
            })
        })
        .collect();
    for flood in floods {
        flood.join().unwrap();
    }
    let mut collector = collector;
    let peak = peak_rss(collector.child().id());
    // No bundle is uploaded meanwhile.
    let limits = Limits::default();
    let bound = limits.memory_bound() - limits.bundle_memory_bound() + BASELINE_BYTES;
    println!(
        "collector peak RSS under the MQTT flood: {:.1} MiB (bound {:.1} MiB, of which MQTT {:.1} MiB; {} refused, {} busy; {:?})",
        peak as f64 / (1 << 20) as f64,
        bound as f64 / (1 << 20) as f64,
        Limits::default().mqtt_memory_bound() as f64 / (1 << 20) as f64,
        collector.batches("refused"),
        collector.batches("busy"),
        started.elapsed()
    );
    assert!(peak < bound, "peak RSS {peak} over the bound {bound}");
    assert_eq!(
        collector.batches("refused") + collector.batches("busy"),
        (devices.len() * 2 * PER_KIND) as u64
    );
}
