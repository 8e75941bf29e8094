//! The steady stream: inputs sent at a fixed rate (open loop: a slow side
//! does not slow the sender down, so its queueing shows in the latency),
//! and each result's latency from the moment its input was due.

use anyhow::{Context, bail};
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::Packet;
use sluice_mqtt::rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one run at one rate measured.
pub struct Measured {
    pub sent: usize,
    /// Latency of each result received, in input order of arrival.
    pub latencies: Vec<Duration>,
    /// From the first input due to the last result received.
    pub seconds: f64,
}

/// How long results may come after the last input was due.
const DRAIN: Duration = Duration::from_secs(5);

/// When input `n` of a stream at `rate` per second is due, from `start`.
fn due(start: Instant, n: usize, rate: u32) -> Instant {
    start + Duration::from_secs_f64(n as f64 / f64::from(rate))
}

/// Wait until `at` (sleeping to within a millisecond, then yielding).
async fn until(at: Instant) {
    let now = Instant::now();
    if at > now + Duration::from_millis(1) {
        tokio::time::sleep(at - now - Duration::from_millis(1)).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// MQTT in and out through the broker at `port`: input `n` is published at
/// QoS 1 on `sensors/<n>/image`, its result is the message on
/// `sluice/results/#` whose `input.attributes.mqtt_topic` names it.
pub async fn mqtt(
    port: u16,
    images: &[Vec<u8>],
    rate: u32,
    seconds: u32,
) -> anyhow::Result<Measured> {
    let count = (rate * seconds) as usize;
    let received: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; count]));

    let mut options = MqttOptions::new(
        format!("live-reader-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options.set_max_packet_size(Some(1 << 20));
    let (reader, mut reader_events) = AsyncClient::new(options, 64);
    reader
        .subscribe("sluice/results/#", QoS::AtMostOnce)
        .await?;
    let subscribed = Arc::new(tokio::sync::Notify::new());
    let reading = tokio::spawn({
        let (received, subscribed) = (received.clone(), subscribed.clone());
        async move {
            loop {
                match reader_events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.notify_one(),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        let Some(n) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .ok()
                            .and_then(|r| {
                                r["input"]["attributes"]["mqtt_topic"]
                                    .as_str()?
                                    .split('/')
                                    .nth(1)?
                                    .parse::<usize>()
                                    .ok()
                            })
                        else {
                            continue;
                        };
                        if let Some(slot) = received.lock().unwrap().get_mut(n) {
                            slot.get_or_insert(at);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("live-bench: the reader's connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed.notified())
        .await
        .context("the reader's subscription")?;

    let mut options = MqttOptions::new(
        format!("live-sensor-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options.set_outgoing_inflight_upper_limit(1000);
    let (sensor, mut sensor_events) = AsyncClient::new(options, 4096);
    let sending = tokio::spawn(async move {
        loop {
            if let Err(e) = sensor_events.poll().await {
                eprintln!("live-bench: the sensor's connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let start = Instant::now() + Duration::from_millis(100);
    for n in 0..count {
        until(due(start, n, rate)).await;
        sensor
            .publish(
                format!("sensors/{n}/image"),
                QoS::AtLeastOnce,
                false,
                images[n % images.len()].clone(),
            )
            .await?;
    }
    let last_due = due(start, count, rate);
    let deadline = last_due + DRAIN;
    while Instant::now() < deadline {
        if received.lock().unwrap().iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sending.abort();
    reading.abort();
    let received = received.lock().unwrap();
    let last = received.iter().flatten().max().copied().unwrap_or(start);
    Ok(Measured {
        sent: count,
        latencies: received
            .iter()
            .enumerate()
            .filter_map(|(n, at)| Some(at.as_ref()?.saturating_duration_since(due(start, n, rate))))
            .collect(),
        seconds: last.saturating_duration_since(start).as_secs_f64(),
    })
}

/// Synchronous calls: input `n` POSTed to `url` when due (at most
/// `max_open` calls open at once; one due beyond them is not sent and
/// counts as lost), its latency until the answer.
pub async fn http(
    url: &str,
    images: &[Vec<u8>],
    rate: u32,
    seconds: u32,
) -> anyhow::Result<Measured> {
    let count = (rate * seconds) as usize;
    let max_open = 512;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_open)
        .timeout(DRAIN)
        .build()?;
    let open = Arc::new(tokio::sync::Semaphore::new(max_open));
    let answers: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let start = Instant::now() + Duration::from_millis(100);
    let mut calls = Vec::with_capacity(count);
    for n in 0..count {
        let at = due(start, n, rate);
        until(at).await;
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let request = client
            .post(url)
            .header("content-type", "image/png")
            .body(images[n % images.len()].clone());
        let answers = answers.clone();
        calls.push(tokio::spawn(async move {
            let ok = match request.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            if ok {
                answers.lock().unwrap().push(at.elapsed());
            }
            drop(permit);
        }));
    }
    for call in calls {
        let _ = call.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let latencies = std::mem::take(&mut *answers.lock().unwrap());
    if latencies.is_empty() {
        bail!("no call to {url} was answered");
    }
    Ok(Measured {
        sent: count,
        latencies,
        seconds,
    })
}

/// Quantile `q` of `sorted` (nearest rank), in ms.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}
