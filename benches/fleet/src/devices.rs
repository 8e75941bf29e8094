//! The simulated devices: each with its own token and sequence numbers,
//! one batch in flight (the next when the last is acknowledged), the same
//! batch again after a refusal, a lost connection or a timeout, as a real
//! device's uplink does. What each acknowledged is kept in its [`Ledger`]
//! for the per-id check.

use anyhow::{Context, bail, ensure};
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use sluice_mqtt::rumqttc::v5::{AsyncClient, Event};
use sluice_protocol::mqtt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The outbox every simulated device's results come from.
pub const OUTBOX: &str = "0b1c2d3e4f5a6b7c";
/// The pipeline every simulated device's results come from.
pub const PIPELINE: &str = "digits";

/// Device `i`'s name.
pub fn device(i: usize) -> String {
    format!("dev-{i:04}")
}

/// Device `i`'s bearer token.
pub fn token(i: usize) -> String {
    format!("token-{i:04}-{:08x}", i.wrapping_mul(2_654_435_761))
}

/// What one device sent and had acknowledged, over every run. Its
/// sequence numbers are contiguous: results `0..acked` were acknowledged;
/// `acked..sent` is the batch in flight, if any (stored or not: in doubt).
#[derive(Default)]
pub struct Ledger {
    /// The next batch's first sequence number.
    pub sent: AtomicU64,
    /// Every result below this was acknowledged.
    pub acked: AtomicU64,
}

/// What the devices of one run share: their counters and the switches of
/// the run.
#[derive(Default)]
pub struct Run {
    /// Results acknowledged while measuring.
    pub results: AtomicU64,
    /// Batches acknowledged while measuring.
    pub batches: AtomicU64,
    /// `503` (or, through MQTT, any 5xx) answers: sent again later.
    pub busy: AtomicU64,
    /// Failed sends and wrong acknowledgements.
    pub errors: AtomicU64,
    /// Acknowledgement latencies while measuring, in µs.
    pub latencies_us: Mutex<Vec<u64>>,
    /// Set while the run is measured.
    pub measuring: AtomicBool,
    /// Set when devices are to stop after their batch in flight.
    pub stop: AtomicBool,
    /// Each device sends at most one batch per this (a real device's
    /// pace); none: the next batch as soon as the last is answered.
    pub pace: Option<Duration>,
}

/// Over every run: results acknowledged, MQTT answers received and those
/// no batch waited for, MQTT batches published, MQTT devices subscribed,
/// batches answered `replayed` (sent twice, stored once).
pub static ACKED: AtomicU64 = AtomicU64::new(0);
pub static RECEIVED: AtomicU64 = AtomicU64::new(0);
pub static UNMATCHED: AtomicU64 = AtomicU64::new(0);
pub static PUBLISHED: AtomicU64 = AtomicU64::new(0);
pub static READY: AtomicU64 = AtomicU64::new(0);
pub static REPLAYED: AtomicU64 = AtomicU64::new(0);
/// The collectors' acknowledgement key, which every device pins.
pub static ACK_KEY: std::sync::OnceLock<sluice_protocol::keys::PublicKey> =
    std::sync::OnceLock::new();

impl Run {
    /// Before the next batch of a device whose last one started at
    /// `started`: wait out the rest of its pace, if it has one.
    async fn wait_pace(&self, started: Instant) {
        if let Some(pace) = self.pace {
            tokio::time::sleep_until((started + pace).into()).await;
        }
    }

    /// A `200` answer to batch `key` (results `first..first + n`) sent at
    /// `started`: checked, then counted in the run and in the ledger.
    fn answered(
        &self,
        ledger: &Ledger,
        answer: &[u8],
        (device, key, first, n): (&str, &str, u64, usize),
        started: Instant,
    ) {
        if let Err(e) = check_ack(answer, device, (key, first, n)) {
            eprintln!("{e:#}");
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        ledger.acked.store(first + n as u64, Ordering::SeqCst);
        if self.measuring.load(Ordering::Relaxed) {
            self.results.fetch_add(n as u64, Ordering::Relaxed);
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.latencies_us
                .lock()
                .unwrap()
                .push(started.elapsed().as_micros() as u64);
        }
    }
}

/// The answer to `device`'s batch `key` of results `first..first + n`: an
/// acknowledgement signed by the pinned key for exactly those records, as
/// the agent's uplink checks it.
fn check_ack(
    answer: &[u8],
    device: &str,
    (key, first, n): (&str, u64, usize),
) -> anyhow::Result<()> {
    let ack: sluice_protocol::BatchAck = serde_json::from_slice(answer).with_context(|| {
        format!(
            "not an acknowledgement: {}",
            String::from_utf8_lossy(answer)
        )
    })?;
    let ids: Vec<String> = (first..first + n as u64)
        .map(|seq| sluice_protocol::result_id(device, PIPELINE, Some(OUTBOX), seq as i64))
        .collect();
    let digest = sluice_protocol::records_digest(ids.iter().map(String::as_str));
    let pinned = ACK_KEY.get().map(std::slice::from_ref).unwrap_or_default();
    ack.acknowledges(device, key, n, &digest, pinned)
        .with_context(|| format!("{device}: batch {key}"))?;
    ensure!(
        ack.stored == n as u64 && ack.duplicates == 0,
        "batch {key}: {ack:?}"
    );
    if ack.replayed {
        // A batch that reached a collector twice (its first answer lost in
        // a reconnection or a crash): stored once, acknowledged again.
        REPLAYED.fetch_add(1, Ordering::Relaxed);
    }
    ACKED.fetch_add(n as u64, Ordering::Relaxed);
    Ok(())
}

/// The next batch of device `i`: its key, first sequence number and zstd
/// body of `n` realistic result records (as a digits device makes them).
fn next_batch(i: usize, ledger: &Ledger, n: usize) -> (String, u64, Vec<u8>) {
    let device = device(i);
    let first = ledger.sent.fetch_add(n as u64, Ordering::SeqCst);
    let key = format!("{device}-{first}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<serde_json::Value> = (first..first + n as u64)
        .map(|seq| {
            serde_json::json!({
                "kind": "result",
                "id": sluice_protocol::result_id(&device, PIPELINE, Some(OUTBOX), seq as i64),
                "device": device,
                "pipeline": PIPELINE,
                "outbox": OUTBOX,
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
    let body = zstd::encode_all(&serde_json::to_vec(&body).unwrap()[..], 3).unwrap();
    (key, first, body)
}

/// A device's backoff before sending the same batch again: doubling from
/// 200 ms to 5 s, with jitter, as the agent's uplink.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(200))
    }

    async fn wait(&mut self) {
        let jitter = rand::random_range(0.5..1.5);
        tokio::time::sleep(self.0.mul_f64(jitter)).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    /// Wait as a busy collector asked (`Retry-After`, `retry-after-ms`),
    /// as the agent does: that long, at most 5 s, plus up to half of it;
    /// otherwise the usual backoff.
    async fn honour(&mut self, asked: Option<Duration>) {
        match asked {
            Some(asked) => {
                let asked = asked.min(Duration::from_secs(5));
                tokio::time::sleep(asked.mul_f64(rand::random_range(1.0..1.5))).await;
            }
            None => self.wait().await,
        }
    }
}

/// Device `i` over HTTP to the collector at `url` (a restarted collector
/// listens on the same port), `n` results per batch.
pub async fn http_device(
    i: usize,
    url: String,
    client: reqwest::Client,
    n: usize,
    ledger: Arc<Ledger>,
    run: Arc<Run>,
) -> anyhow::Result<()> {
    let (device, token) = (device(i), token(i));
    while !run.stop.load(Ordering::Relaxed) {
        let (key, first, body) = next_batch(i, &ledger, n);
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            let answer = client
                .post(format!("{url}{}", sluice_protocol::paths::BATCHES))
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
                    run.answered(&ledger, &bytes, (&device, &key, first, n), started);
                    break;
                }
                Ok(r) if r.status() == 503 => {
                    run.busy.fetch_add(1, Ordering::Relaxed);
                    let asked = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .map(Duration::from_secs);
                    backoff.honour(asked).await;
                    continue;
                }
                Ok(r) => {
                    eprintln!(
                        "{device}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                    run.errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    eprintln!("{device}: {e}");
                    run.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            backoff.wait().await;
        }
        run.wait_pace(started).await;
    }
    Ok(())
}

/// Batches waiting for their answer, by key: the answer's status, payload
/// and the wait a busy collector asks for.
type Waiting = HashMap<String, tokio::sync::oneshot::Sender<(u16, Vec<u8>, Option<Duration>)>>;

/// Device `i` through the broker at `broker`, `n` results per batch.
pub async fn mqtt_device(
    i: usize,
    broker: String,
    password: String,
    n: usize,
    ledger: Arc<Ledger>,
    run: Arc<Run>,
) -> anyhow::Result<()> {
    let device = device(i);
    // A fleet does not connect in the same millisecond: 2 ms apart.
    tokio::time::sleep(Duration::from_millis(i as u64 * 2)).await;
    // The device's broker account is its identity (the collectors take a
    // batch's device from its topic): no token in the messages.
    let account = sluice_mqtt::Broker {
        username: Some(device.clone()),
        password: Some(password),
        ..Default::default()
    };
    let options = sluice_mqtt::options(&broker, &format!("sluice-{device}"), &account, 80 << 10)?;
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
                    // Subscribed again on every connection: a restarted
                    // broker has forgotten the session.
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
                        let property = |name: &str| {
                            props
                                .user_properties
                                .iter()
                                .find(|(k, _)| k == name)
                                .and_then(|(_, v)| v.parse::<u64>().ok())
                        };
                        let status = property(mqtt::STATUS).unwrap_or(0) as u16;
                        let asked = property(mqtt::RETRY_AFTER_MS).map(Duration::from_millis);
                        RECEIVED.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = waiting.lock().unwrap().remove(&key) {
                            let _ = tx.send((status, p.payload.to_vec(), asked));
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
    while !run.stop.load(Ordering::Relaxed) {
        let (key, first, body) = next_batch(i, &ledger, n);
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiting.lock().unwrap().insert(key.clone(), tx);
            let properties = PublishProperties {
                response_topic: Some(acks.clone()),
                correlation_data: Some(key.clone().into_bytes().into()),
                user_properties: vec![(mqtt::CONTENT_ENCODING.into(), "zstd".into())],
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
                Ok(Ok((200, payload, _))) => {
                    run.answered(&ledger, &payload, (&device, &key, first, n), started);
                    break;
                }
                // The collector had no room for it, or could not store it
                // now (its database restarting): the same batch again later.
                Ok(Ok((status, _, asked))) if status >= 500 => {
                    run.busy.fetch_add(1, Ordering::Relaxed);
                    backoff.honour(asked).await;
                }
                Ok(Ok((status, payload, _))) => {
                    bail!("{device}: {status} {}", String::from_utf8_lossy(&payload));
                }
                _ => {
                    waiting.lock().unwrap().remove(&key);
                    run.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        run.wait_pace(started).await;
    }
    loop_task.abort();
    Ok(())
}
