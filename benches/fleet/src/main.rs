//! `sluice-fleet-bench`: the upstream tier under a fleet's load.
//!
//! Starts a real PostgreSQL (fsync on) and a real mosquitto, two
//! `sluice-collector` processes on that database (and on the broker's
//! shared subscription), then simulates N devices in this one process,
//! each with its own token, sending realistic result batches in a closed
//! loop (one batch in flight per device, the next when it is
//! acknowledged), over HTTP (device i to collector i mod 2, as a load
//! balancer would) or through the broker. For each transport and device
//! count it reports sustained results/s, acknowledgement latency (p50,
//! p99), the CPU seconds of the collectors, PostgreSQL, the broker and
//! the simulator, and at the end checks exactly-once against the
//! database: every acknowledged result stored once, nothing else stored.
//!
//! Prints one JSON object per run on stdout (and the final check);
//! `benches/fleet.sh` turns them into BENCHMARKS.md's section.

use anyhow::{Context, bail, ensure};
use clap::Parser;
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use sluice_mqtt::rumqttc::v5::{AsyncClient, Event};
use sluice_protocol::mqtt;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "Load test of the collector tier: simulated devices, two collectors, PostgreSQL, mosquitto"
)]
struct Cli {
    /// The `sluice-collector` binary (a release build).
    #[arg(long)]
    collector: PathBuf,
    /// Device counts to run over HTTP, in order.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    devices: Vec<usize>,
    /// Device counts to run through MQTT, in order.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    mqtt_devices: Vec<usize>,
    /// Transports to run: http, mqtt.
    #[arg(long, value_delimiter = ',', default_value = "http,mqtt")]
    transports: Vec<String>,
    /// Seconds each run sends for (after a warm-up of 2 s).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Results per batch (a device uploading every few seconds).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Batches each collector works on at once.
    #[arg(long, default_value_t = 32)]
    concurrent_batches: usize,
    /// PostgreSQL connections per collector.
    #[arg(long, default_value_t = 12)]
    pool: u32,
}

/// CPU time (user + system) of a process and its children that are
/// still running, in seconds, from /proc.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if pids.contains(&pid) || pids.contains(&ppid) {
            let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
            let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
            total += utime + stime;
        }
    }
    total as f64 / ticks
}

struct Collector {
    child: Child,
    url: String,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_collector(
    cli: &Cli,
    db: &str,
    tokens: &std::path::Path,
    broker: &str,
) -> anyhow::Result<Collector> {
    let mut child = Command::new(&cli.collector)
        .args(["--listen", "127.0.0.1:0", "--db", db, "--mqtt", broker])
        .arg("--tokens")
        .arg(tokens)
        .args([
            "--max-concurrent-batches",
            &cli.concurrent_batches.to_string(),
        ])
        .args(["--db-pool-size", &cli.pool.to_string()])
        .args([
            "--max-connections",
            "2000",
            "--operator-token",
            "bench-operator",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", cli.collector.display()))?;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().context("the collector said nothing")??;
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .context("no URL in the collector's first line")?
        .trim_end_matches(',')
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    Ok(Collector { child, url })
}

fn device(i: usize) -> String {
    format!("dev-{i:04}")
}

fn token(i: usize) -> String {
    format!("token-{i:04}-{:08x}", i.wrapping_mul(2_654_435_761))
}

/// A batch of `n` realistic result records (as a digits device makes
/// them) of `device`, seq from `first`, under `key`: the zstd body.
fn batch(device: &str, key: &str, first: u64, n: usize) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<serde_json::Value> = (first..first + n as u64)
        .map(|seq| {
            serde_json::json!({
                "kind": "result",
                "id": sluice_protocol::result_id(device, "digits", Some("0b1c2d3e4f5a6b7c"), seq as i64),
                "device": device,
                "pipeline": "digits",
                "outbox": "0b1c2d3e4f5a6b7c",
                "seq": seq,
                "accepted_at_ms": now - 40,
                "completed_at_ms": now - 20,
                "input": {"content_type": "image/png", "bytes": 231, "attributes": {"file": format!("digit-{seq}.png")}},
                "provenance": {
                    "model": "digits", "model_sha256": "4f1a".repeat(16),
                    "preprocess": "image-to-tensor", "preprocess_sha256": "9c2e".repeat(16),
                    "postprocess": "argmax-label", "postprocess_sha256": "17bd".repeat(16)
                },
                "sluice_version": "0.1.0",
                "timings": {"batch_items": 50, "batch_preprocess_us": 310, "batch_infer_us": 95, "batch_postprocess_us": 40},
                "result": {"content_type": "application/json", "json": {"label": (seq % 10).to_string(), "confidence": 0.973}}
            })
        })
        .collect();
    let body = serde_json::json!({
        "protocol": 1,
        "device": device,
        "key": key,
        "records": records,
        "status": {"sluice_version": "0.1.0", "at_ms": now, "pending_records": 0, "journal_items": 0, "set_aside_records": 0}
    });
    zstd::encode_all(&serde_json::to_vec(&body).unwrap()[..], 3).unwrap()
}

/// What the devices of one run did.
#[derive(Default)]
struct Tally {
    results: AtomicU64,
    batches: AtomicU64,
    busy: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

impl Tally {
    /// A `200` answer to batch `key` of `n` results sent at `started`.
    fn answered(
        &self,
        answer: &[u8],
        key: &str,
        n: usize,
        started: Instant,
        measuring: &AtomicBool,
    ) {
        match check_ack(answer, key, n) {
            Ok(()) => self.acked(
                n as u64,
                started.elapsed(),
                measuring.load(Ordering::Relaxed),
            ),
            Err(e) => {
                eprintln!("{e:#}");
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn acked(&self, results: u64, latency: Duration, measuring: bool) {
        if measuring {
            self.results.fetch_add(results, Ordering::Relaxed);
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.latencies_us
                .lock()
                .unwrap()
                .push(latency.as_micros() as u64);
        }
    }
}

/// Acknowledged results of every run, for the exactly-once check.
static ACKED: AtomicU64 = AtomicU64::new(0);
/// Answers the MQTT devices received, and those no batch waited for.
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static UNMATCHED: AtomicU64 = AtomicU64::new(0);
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
/// MQTT devices connected and subscribed.
static READY: AtomicU64 = AtomicU64::new(0);
/// Batches answered `replayed` (sent twice, stored once).
static REPLAYED: AtomicU64 = AtomicU64::new(0);

fn check_ack(answer: &[u8], key: &str, n: usize) -> anyhow::Result<()> {
    let ack: sluice_protocol::BatchAck = serde_json::from_slice(answer).with_context(|| {
        format!(
            "not an acknowledgement: {}",
            String::from_utf8_lossy(answer)
        )
    })?;
    ensure!(ack.key == key, "acknowledged {} for {key}", ack.key);
    ensure!(
        ack.stored == n as u64 && ack.duplicates == 0,
        "batch {key}: {ack:?}"
    );
    if ack.replayed {
        // A batch that reached a collector twice (its first answer lost in
        // a reconnection): stored once, acknowledged again.
        REPLAYED.fetch_add(1, Ordering::Relaxed);
    }
    ACKED.fetch_add(n as u64, Ordering::Relaxed);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn http_device(
    i: usize,
    url: String,
    client: reqwest::Client,
    n: usize,
    seq: Arc<AtomicU64>,
    tally: Arc<Tally>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (device, token) = (device(i), token(i));
    while !stop.load(Ordering::Relaxed) {
        let first = seq.fetch_add(n as u64, Ordering::Relaxed);
        let key = format!("{device}-{first}");
        let body = batch(&device, &key, first, n);
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let answer = client
                .post(format!("{url}/v1/batches"))
                .bearer_auth(&token)
                .header("Idempotency-Key", &key)
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "zstd")
                .body(body.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == 200 => {
                    let bytes = r.bytes().await.unwrap_or_default();
                    tally.answered(&bytes, &key, n, started, &measuring);
                    break;
                }
                Ok(r) if r.status() == 503 => {
                    tally.busy.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => {
                    eprintln!(
                        "{device}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    eprintln!("{device}: {e}");
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // As a device does: the same batch again, after a jittered backoff.
            let jitter = rand::random_range(0.5..1.5);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    Ok(())
}

async fn mqtt_device(
    i: usize,
    broker: String,
    n: usize,
    seq: Arc<AtomicU64>,
    tally: Arc<Tally>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (device, token) = (device(i), token(i));
    // A fleet does not connect in the same millisecond: 2 ms apart.
    tokio::time::sleep(Duration::from_millis(i as u64 * 2)).await;
    let options = sluice_mqtt::options(
        &broker,
        &format!("bench-{device}"),
        &Default::default(),
        80 << 10,
    )?;
    let (client, mut events) = AsyncClient::new(options, 8);
    let acks = mqtt::acks(mqtt::DEFAULT_PREFIX, &device);
    let waiting: Arc<Mutex<Waiting>> = Default::default();
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<()>();
    let loop_task = tokio::spawn({
        let (client, acks, waiting, device) = (
            client.clone(),
            acks.clone(),
            waiting.clone(),
            device.clone(),
        );
        async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(acks.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.unwrap_or_default();
                        let key = props
                            .correlation_data
                            .map(|k| String::from_utf8_lossy(&k).into_owned())
                            .unwrap_or_default();
                        let status = props
                            .user_properties
                            .iter()
                            .find(|(k, _)| k == mqtt::STATUS)
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        RECEIVED.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = waiting.lock().unwrap().remove(&key) {
                            let _ = tx.send((status, p.payload.to_vec()));
                        } else {
                            UNMATCHED.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("{device}: broker connection: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .context("no subscription within 60 s")??;
    READY.fetch_add(1, Ordering::SeqCst);
    while !stop.load(Ordering::Relaxed) {
        let first = seq.fetch_add(n as u64, Ordering::Relaxed);
        let key = format!("{device}-{first}");
        let body = batch(&device, &key, first, n);
        let started = Instant::now();
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiting.lock().unwrap().insert(key.clone(), tx);
            let properties = PublishProperties {
                response_topic: Some(acks.clone()),
                correlation_data: Some(key.clone().into_bytes().into()),
                user_properties: vec![
                    (mqtt::AUTHORIZATION.into(), format!("Bearer {token}")),
                    (mqtt::CONTENT_ENCODING.into(), "zstd".into()),
                ],
                ..Default::default()
            };
            PUBLISHED.fetch_add(1, Ordering::Relaxed);
            client
                .publish_with_properties(
                    mqtt::batches(mqtt::DEFAULT_PREFIX, &device),
                    QoS::AtLeastOnce,
                    false,
                    body.clone(),
                    properties,
                )
                .await?;
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok((200, payload))) => {
                    tally.answered(&payload, &key, n, started, &measuring);
                    break;
                }
                Ok(Ok((status, payload))) => {
                    bail!("{device}: {status} {}", String::from_utf8_lossy(&payload));
                }
                _ => {
                    waiting.lock().unwrap().remove(&key);
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    loop_task.abort();
    Ok(())
}

/// Batches waiting for their answer, by key: the answer's status and payload.
type Waiting = HashMap<String, tokio::sync::oneshot::Sender<(u16, Vec<u8>)>>;

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let ix = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[ix] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let max_devices = cli
        .devices
        .iter()
        .chain(&cli.mqtt_devices)
        .copied()
        .max()
        .unwrap_or(0);
    ensure!(max_devices > 0, "no devices");
    let dir = tempfile_dir()?;
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        (0..max_devices)
            .map(|i| format!("{}={}\n", device(i), token(i)))
            .collect::<String>(),
    )?;
    let pg = sluice_testkit::Postgres::start(true).map_err(|m| anyhow::anyhow!("{m}"))?;
    let db = pg.database("fleet");
    let broker = sluice_testkit::Mosquitto::start().map_err(|m| anyhow::anyhow!("{m}"))?;
    let collectors = [
        start_collector(&cli, &db, &tokens, &broker.url())?,
        start_collector(&cli, &db, &tokens, &broker.url())?,
    ];
    let collector_pids: Vec<u32> = collectors.iter().map(|c| c.child.id()).collect();
    let pg_pid = pg.pid().context("PostgreSQL's pid")?;
    let broker_pid = broker.pid().context("mosquitto's pid")?;
    let me = std::process::id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let seqs: Vec<Arc<AtomicU64>> = (0..max_devices)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(max_devices)
        .timeout(Duration::from_secs(60))
        .build()?;
    for transport in &cli.transports {
        let counts = if transport == "mqtt" {
            &cli.mqtt_devices
        } else {
            &cli.devices
        };
        for &n in counts {
            let tally = Arc::new(Tally::default());
            let measuring = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (seq, tally, measuring, stop) = (
                        seqs[i].clone(),
                        tally.clone(),
                        measuring.clone(),
                        stop.clone(),
                    );
                    match transport.as_str() {
                        "http" => runtime.spawn({
                            let (url, client) = (collectors[i % 2].url.clone(), http.clone());
                            http_device(i, url, client, cli.batch, seq, tally, measuring, stop)
                        }),
                        _ => runtime.spawn(mqtt_device(
                            i,
                            broker.url(),
                            cli.batch,
                            seq,
                            tally,
                            measuring,
                            stop,
                        )),
                    }
                })
                .collect();
            // Warm-up: every device connected (MQTT), then 2 s.
            if transport == "mqtt" {
                let deadline = Instant::now() + Duration::from_secs(90);
                while READY.load(Ordering::SeqCst) < n as u64 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                READY.store(0, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_secs(2));
            let cpu = |pids: &[u32]| cpu_seconds(pids);
            let before = [
                cpu(&collector_pids),
                cpu(&[pg_pid]),
                cpu(&[broker_pid]),
                cpu(&[me]),
            ];
            measuring.store(true, Ordering::SeqCst);
            let started = Instant::now();
            std::thread::sleep(Duration::from_secs(cli.seconds));
            measuring.store(false, Ordering::SeqCst);
            let elapsed = started.elapsed().as_secs_f64();
            let after = [
                cpu(&collector_pids),
                cpu(&[pg_pid]),
                cpu(&[broker_pid]),
                cpu(&[me]),
            ];
            stop.store(true, Ordering::SeqCst);
            // Devices finish the batch in flight; one that cannot within
            // 120 s is counted, not waited for.
            let mut unfinished = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            for task in tasks {
                let left = deadline.saturating_duration_since(Instant::now());
                match runtime.block_on(async { tokio::time::timeout(left, task).await }) {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => bail!("{e:#}"),
                    _ => unfinished += 1,
                }
            }
            let mut latencies = std::mem::take(&mut *tally.latencies_us.lock().unwrap());
            latencies.sort_unstable();
            let results = tally.results.load(Ordering::Relaxed);
            let line = serde_json::json!({
                "transport": transport,
                "devices": n,
                "seconds": elapsed,
                "results_per_s": results as f64 / elapsed,
                "batches": tally.batches.load(Ordering::Relaxed),
                "batch_results": cli.batch,
                "ack_p50_ms": percentile(&latencies, 0.50),
                "ack_p99_ms": percentile(&latencies, 0.99),
                "busy_503": tally.busy.load(Ordering::Relaxed),
                "errors": tally.errors.load(Ordering::Relaxed),
                "unfinished": unfinished,
                "cpu_collectors": (after[0] - before[0]) / elapsed,
                "cpu_postgres": (after[1] - before[1]) / elapsed,
                "cpu_broker": (after[2] - before[2]) / elapsed,
                "cpu_simulator": (after[3] - before[3]) / elapsed,
                "mqtt_published": PUBLISHED.load(Ordering::Relaxed),
                "mqtt_answers": RECEIVED.load(Ordering::Relaxed),
                "mqtt_unmatched": UNMATCHED.load(Ordering::Relaxed),
            });
            println!("{line}");
            eprintln!("{line}");
        }
    }
    // Exactly once: every acknowledged result is stored once, and nothing
    // that was not acknowledged.
    let stored = pg.psql(
        "fleet",
        "SELECT COUNT(*), COUNT(DISTINCT (device, id)) FROM results",
    );
    let acked = ACKED.load(Ordering::Relaxed);
    let check =
        serde_json::json!({"check": "exactly-once", "acknowledged": acked, "stored": stored});
    println!("{check}");
    if stored != format!("{acked}|{acked}") {
        bail!("exactly-once violated: {acked} acknowledged, stored (rows|distinct) {stored}");
    }
    drop(collectors);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluice-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
