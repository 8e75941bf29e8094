//! The collector's MQTT transport: batches through a broker the fleet
//! already runs (mosquitto, EMQX, HiveMQ...), for devices configured with
//! an `mqtt://` or `mqtts://` sync URL. The topics and properties are in
//! [`sluice_protocol::mqtt`].
//!
//! Several collectors split the load on one MQTT 5 shared subscription
//! (`$share/GROUP/...`): the broker gives each batch to one of them. The
//! same consumer answers devices asking for the bundle a rollout offers
//! them, chunk by chunk ([`bundles`]).
//!
//! Invariants:
//! * the same checks and the same store as HTTP ([`crate::accept`]): the
//!   device's bearer token travels in the message and must be the topic's
//!   device; nothing else about the sender is trusted;
//! * the answer goes to the device's own answer topic, computed from the
//!   topic the batch came on, never to a topic the message names;
//! * a batch is answered only after it is committed, and the broker's
//!   PUBACK (manual acknowledgement) is sent only after the answer: a
//!   collector that dies in between leaves the device without an answer,
//!   so it sends the batch again and is answered `replayed`;
//! * at most half of [`Limits::max_concurrent_batches`] batches are in
//!   progress, and at most [`Limits::mqtt_max_held`] held (in progress or
//!   waiting), each at most [`Limits::max_body_bytes`]: past that a batch
//!   is answered `503` with [`mqtt::RETRY_AFTER_MS`] at once and dropped
//!   (the device sends it again after the wait), so a flood costs the
//!   collector a bounded amount of memory ([`Limits::mqtt_memory_bound`])
//!   and the broker's queue, not the collector's, takes the rest.

mod bundles;

use crate::accept::{self, Received, Refusal};
use crate::limits::{Limits, MQTT_PACKET_OVERHEAD, RETRY_AFTER_SECS};
use crate::shared::Shared;
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use sluice_mqtt::rumqttc::v5::{AsyncClient, Event};
use sluice_protocol::mqtt;
use std::sync::Arc;
use std::time::Duration;

/// Where and how the collector takes batches from a broker.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub url: String,
    /// Credentials and TLS.
    pub broker: sluice_mqtt::Broker,
    /// The shared subscription group ([`mqtt::DEFAULT_GROUP`]).
    pub group: String,
    /// This collector's client id (unique among the group's).
    pub client_id: String,
    /// Batches the broker may hand this collector before it answers
    /// (the MQTT 5 receive maximum, [`DEFAULT_RECEIVE_MAXIMUM`]). Not a
    /// memory bound: the collector keeps [`Limits::mqtt_max_held`] of them
    /// and answers the others `503` at once; the rest wait in the socket.
    pub receive_maximum: u16,
    /// Take a batch without a bearer token as the batch of the device its
    /// topic names: for a broker whose accounts and ACL let each device
    /// publish only to its own topic (`deploy/mosquitto/`), so that no
    /// device's token travels through the broker. A batch that carries a
    /// token is still checked against it. Off: every batch needs its
    /// device's token (a broker without such an ACL).
    pub device_from_topic: bool,
}

/// The default [`MqttSettings::receive_maximum`]. Large on purpose:
/// mosquitto 2.0 stops delivering to a shared subscriber whose receive
/// maximum it had to queue behind (the load test stalled at 1000 devices
/// with 64), so the collector reads every batch it is sent and answers
/// those it has no room for.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 1024;

impl MqttSettings {
    /// The broker at `url` with the default group and prefix, a random
    /// client id and no credentials.
    pub fn new(url: &str) -> MqttSettings {
        MqttSettings {
            url: url.to_owned(),
            broker: Default::default(),
            group: mqtt::DEFAULT_GROUP.into(),
            client_id: format!("sluice-collector-{:08x}", rand::random::<u32>()),
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            device_from_topic: false,
        }
    }
}

/// Longest wait between two attempts to reach the broker.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Take batches from the broker until `stop` changes. Fails only when the
/// settings cannot be used; an unreachable broker is retried.
pub(crate) async fn consume(
    settings: MqttSettings,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), sluice_mqtt::MqttConfigError> {
    let limits: &Limits = &shared.limits;
    let max_packet = (limits.max_body_bytes + MQTT_PACKET_OVERHEAD).min(u32::MAX as usize) as u32;
    let mut options = sluice_mqtt::options(
        &settings.url,
        &settings.client_id,
        &settings.broker,
        max_packet,
    )?;
    // No session: a batch given to a collector that died is not kept for
    // it; the device sends it again and another collector takes it.
    options.set_clean_start(true);
    options.set_manual_acks(true);
    // The broker sends up to this many before our PUBACKs: the collector
    // reads them as they come, keeps `Limits::mqtt_max_held` and answers
    // the rest `503`, so it never idles while the broker has work and
    // never makes the broker queue behind it.
    let held = settings.receive_maximum.max(1);
    options.set_receive_maximum(Some(held));
    // Room for every batch held to queue its answer and its PUBACK without
    // waiting: the event loop below is what sends them. Answers go at QoS
    // 0: at QoS 1 they count against the broker's receive maximum, and
    // once that is full the client stops taking requests, our PUBACKs
    // included, and the broker stops sending (a deadlock the load test
    // found at 100 devices). An answer lost is a batch the device sends
    // again, answered `replayed`.
    let (client, mut events) = AsyncClient::new(options, 2 * held as usize + 64);
    let prefix = &settings.broker.topic_prefix;
    let filters = [
        mqtt::shared_batches(prefix, &settings.group),
        mqtt::shared_bundle_requests(prefix, &settings.group),
    ];
    let url = sluice_mqtt::endpoint(&settings.url).to_owned();
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                for filter in &filters {
                    if let Err(e) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                        tracing::error!("MQTT broker {url}: cannot subscribe to {filter}: {e}");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                tracing::info!(
                    "MQTT broker {url}: taking batches and bundle requests from {filters:?}: {:?}",
                    ack.return_codes
                );
            }
            Ok(Event::Incoming(Packet::Publish(mut publish))) => {
                // The body goes its own way: what is kept of the message
                // until its PUBACK is its packet id, not its bytes.
                let body = std::mem::take(&mut publish.payload);
                let (shared, client, prefix, from_topic) = (
                    shared.clone(),
                    client.clone(),
                    settings.broker.topic_prefix.clone(),
                    settings.device_from_topic,
                );
                // Never wait here: the loop must keep reading, or answers
                // and PUBACKs stop going out and the broker stops sending.
                let Ok(held) = shared.mqtt_held.clone().try_acquire_owned() else {
                    drop(body);
                    tokio::spawn(async move {
                        let reply = busy(&shared, &prefix, &publish);
                        respond(&client, reply, &publish).await;
                    });
                    continue;
                };
                tokio::spawn(async move {
                    // The MQTT share first (see `Shared::mqtt_batches`),
                    // then a permit of the whole.
                    let share = shared.mqtt_batches.clone().acquire_owned().await;
                    let permit = shared.batches.clone().acquire_owned().await;
                    let _permits = (held, share, permit);
                    let answered = tokio::task::spawn_blocking(move || {
                        // A copy if the bytes share the client's read
                        // buffer, and the original goes: one body held.
                        let body = Vec::from(body);
                        let reply = answer(&shared, &prefix, from_topic, &publish, body);
                        (reply, publish)
                    })
                    .await;
                    if let Ok((reply, publish)) = answered {
                        respond(&client, reply, &publish).await;
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("MQTT broker {url}: {e}; trying again in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    Ok(())
}

/// An answer: its topic, properties and payload.
type Reply = (String, PublishProperties, Vec<u8>);

/// Send `reply` (if any), then acknowledge `publish` to the broker: a
/// collector that dies in between leaves the batch unanswered, never
/// answered and lost.
async fn respond(client: &AsyncClient, reply: Option<Reply>, publish: &Publish) {
    if let Some((topic, properties, payload)) = reply
        && let Err(e) = client
            .publish_with_properties(topic, QoS::AtMostOnce, false, payload, properties)
            .await
    {
        tracing::warn!("cannot answer a batch: {e}");
        return;
    }
    let _ = client.ack(publish).await;
}

/// What a message asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Request {
    /// To store a batch.
    Batch,
    /// A chunk of the bundle offered to the device ([`bundles`]).
    Bundle,
}

/// The device whose topic `publish` came on and what it asks, if it is a
/// device's batches or bundle topic.
fn device_of<'a>(prefix: &str, publish: &'a Publish) -> Option<(&'a str, Request)> {
    let topic = std::str::from_utf8(&publish.topic).ok()?;
    let found = mqtt::device_of_batches(prefix, topic)
        .map(|d| (d, Request::Batch))
        .or_else(|| mqtt::device_of_bundle_requests(prefix, topic).map(|d| (d, Request::Bundle)));
    if found.is_none() {
        tracing::warn!("ignoring a message on {topic}: not a device's batches or bundle topic");
    }
    found
}

/// The batch key a message carries (its correlation data), if any.
fn key_of(publish: &Publish) -> Option<String> {
    let data = publish.properties.as_ref()?.correlation_data.as_ref()?;
    Some(String::from_utf8_lossy(data).into_owned())
}

/// `503` for a batch the collector has no room for
/// ([`Limits::mqtt_max_held`]): not read, not kept; the device sends it
/// again after [`mqtt::RETRY_AFTER_MS`].
fn busy(shared: &Shared, prefix: &str, publish: &Publish) -> Option<Reply> {
    let (device, request) = device_of(prefix, publish)?;
    if request == Request::Batch {
        shared.metrics.batch("busy", 503);
    }
    let refusal = Refusal::new(
        503,
        format!(
            "{} MQTT batches are already held (collector flags --max-concurrent-batches, --mqtt-max-waiting); retry after {RETRY_AFTER_SECS} s",
            shared.limits.mqtt_max_held()
        ),
    );
    let (topic, mut properties, payload) = reply(prefix, device, key_of(publish), refused(refusal));
    properties.user_properties.push((
        mqtt::RETRY_AFTER_MS.to_owned(),
        (u64::from(RETRY_AFTER_SECS) * 1000).to_string(),
    ));
    Some((topic, properties, payload))
}

/// A user property of `publish`, by name (case-insensitive).
fn user<'a>(publish: &'a Publish, name: &str) -> Option<&'a str> {
    publish
        .properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Check one message and do what it asks (store a batch, read a chunk of
/// a bundle): the answer, or `None` for a message on no device's topic.
fn answer(
    shared: &Shared,
    prefix: &str,
    device_from_topic: bool,
    publish: &Publish,
    body: Vec<u8>,
) -> Option<Reply> {
    let (device, request) = device_of(prefix, publish)?;
    let key = key_of(publish);
    if let Err(refusal) = identify(shared, device, publish, device_from_topic) {
        if request == Request::Batch {
            shared.metrics.batch("refused", refusal.status);
        }
        return Some(reply(prefix, device, key, refused(refusal)));
    }
    if request == Request::Bundle {
        return Some(bundles::answer(shared, prefix, device, key, publish));
    }
    let received = Received {
        device,
        key: key.as_deref(),
        encoding: user(publish, mqtt::CONTENT_ENCODING),
        body,
    };
    let result = accept::store(&shared.store, &shared.metrics, &shared.limits, received);
    fault_before_answer();
    let answer = match result {
        Ok(ack) => (200, serde_json::to_vec(&ack).expect("answers serialize")),
        Err(refusal) => refused(refusal),
    };
    Some(reply(prefix, device, key, answer))
}

/// Whether `publish` may speak for `device`: its bearer token is the
/// device's, or it has none and the broker's ACL vouches for the topic
/// ([`MqttSettings::device_from_topic`]).
fn identify(
    shared: &Shared,
    device: &str,
    publish: &Publish,
    device_from_topic: bool,
) -> Result<(), Refusal> {
    let authorization = user(publish, mqtt::AUTHORIZATION);
    let tokens = shared.tokens();
    match tokens.device_of(authorization) {
        // The broker's ACL vouches for the topic (MqttSettings::device_from_topic).
        None if authorization.is_none() && device_from_topic => Ok(()),
        None => Err(Refusal::new(
            401,
            format!(
                "missing or unknown bearer token (user property `{}`)",
                mqtt::AUTHORIZATION
            ),
        )),
        Some(own) if own != device => Err(Refusal::new(
            403,
            format!("this token is device `{own}`'s, not `{device}`'s"),
        )),
        Some(_) => Ok(()),
    }
}

/// A refusal's status and JSON body.
fn refused(refusal: Refusal) -> (u16, Vec<u8>) {
    let body = serde_json::to_vec(&refusal.body).expect("answers serialize");
    (refusal.status, body)
}

/// The answer `(status, payload)` to `device`'s message `key`, on the
/// device's own answer topic.
fn reply(
    prefix: &str,
    device: &str,
    key: Option<String>,
    (status, payload): (u16, Vec<u8>),
) -> Reply {
    let properties = PublishProperties {
        correlation_data: key.map(|k| k.into_bytes().into()),
        user_properties: vec![(mqtt::STATUS.to_owned(), status.to_string())],
        content_type: Some(sluice_protocol::CONTENT_TYPE.to_owned()),
        ..Default::default()
    };
    (mqtt::acks(prefix, device), properties, payload)
}

/// The fault tests' seam: with `SLUICE_COLLECTOR_FAULT=abort-before-answer`
/// the process dies after committing a batch and before answering it,
/// the moment that must not lose or duplicate anything.
fn fault_before_answer() {
    if std::env::var("SLUICE_COLLECTOR_FAULT").as_deref() == Ok("abort-before-answer") {
        eprintln!("sluice-collector: fault injected: aborting before the answer");
        std::process::abort();
    }
}
