//! The MQTT uplink: batches through the fleet's MQTT 5 broker instead of
//! straight to a collector (`sync.url = "mqtt://HOST:PORT"` or `mqtts://`,
//! `[sync.mqtt]` for credentials and TLS). The message format is
//! [`sluice_protocol::mqtt`]'s; the connection settings are
//! [`sluice_mqtt`]'s.
//!
//! Invariants:
//! * by default a batch is acknowledged only by the collector's answer for
//!   its key, on this device's answer topic, after the collector committed
//!   it (MQTT 5 request/response): the broker's PUBACK only says the
//!   broker has it, and a broker restarted without persistence loses it.
//!   With `sync.mqtt_ack = "broker"` the PUBACK is the acknowledgement, for
//!   brokers that are themselves the durable end (a bridge, a cloud IoT
//!   hub's rules);
//! * the device subscribes to its answer topic on every connection (a
//!   restarted broker forgets sessions) and sends only once subscribed;
//!   answers are QoS 0, so one lost while reconnecting is a batch sent
//!   again and answered `replayed`;
//! * a batch is only sent while connected and subscribed, and an answer is
//!   waited for at most `sync.timeout_ms`: a missing collector or broker
//!   delays syncing, it never blocks it or loses anything (the batch is
//!   sent again, under the same key, and stored once);
//! * answers are bounded ([`super::http::MAX_ANSWER_BYTES`] plus headers)
//!   and only answers naming a batch being waited for are looked at; their
//!   text is escaped before it is logged or kept
//!   ([`crate::error::upstream_text`]); what an answer acknowledges is
//!   checked by the uploader, as for HTTP ([`super::Uploader`]);
//! * a collector with no room answers `503` at once with the wait it asks
//!   for ([`mqtt::RETRY_AFTER_MS`]), which the uploader honours
//!   ([`UplinkError::Busy`]), as it honours HTTP's `Retry-After`.

mod bundle;

use super::{Offers, Uplink, UplinkError};
use crate::config::{MqttAck, SyncConfig};
use crate::error::{ConfigError, upstream_text};
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use sluice_mqtt::rumqttc::v5::{AsyncClient, Event};
use sluice_protocol::{self as protocol, BatchAck, RawBatch, mqtt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// An answer from a collector.
struct Answer {
    /// Its [`mqtt::STATUS`] (0 if it has none).
    status: u16,
    payload: Vec<u8>,
    /// Its user properties.
    properties: Vec<(String, String)>,
}

impl Answer {
    /// The user property `name`, if the answer has it.
    fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The wait a `503` asks for ([`mqtt::RETRY_AFTER_MS`]).
    fn retry_after(&self) -> Option<Duration> {
        let ms = self.property(mqtt::RETRY_AFTER_MS)?.parse().ok()?;
        (self.status == 503).then(|| Duration::from_millis(ms))
    }
}

/// What the connection task, [`MqttUplink::deliver`] and the bundle
/// requests ([`bundle`]) share.
#[derive(Default)]
struct State {
    /// Connected and subscribed to the answers.
    ready: AtomicBool,
    /// Why not, when not.
    last_error: Mutex<String>,
    /// Batches and bundle requests waiting for their answer, by key.
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    /// The batch waiting for its PUBACK (`mqtt_ack = "broker"`): one at a
    /// time, as the uploader sends one batch at a time.
    puback: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
}

/// The device's connection to the broker, as the uplink and the bundle
/// requests use it: one connection (the broker binds the client id
/// `sluice-<device>` to it), one answer topic.
#[derive(Clone)]
struct Link {
    endpoint: String,
    /// The collector's bearer token for this device, sent in each message;
    /// none when the broker's accounts identify the device (its topic).
    token: Option<String>,
    acks_topic: String,
    prefix: String,
    device: String,
    /// How long an answer is waited for (`sync.timeout_ms`).
    timeout: Duration,
    client: AsyncClient,
    state: Arc<State>,
}

impl Link {
    fn unreachable(&self, message: String) -> UplinkError {
        UplinkError::Unreachable {
            endpoint: self.endpoint.clone(),
            message,
        }
    }

    /// Fail unless connected and subscribed to the answers.
    fn check_ready(&self) -> Result<(), UplinkError> {
        if self.state.ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(self.unreachable(self.state.last_error.lock().unwrap().clone()))
    }

    /// The properties of a request `key` to a collector: answers on this
    /// device's topic, the token if any, and `user` properties.
    fn request_properties(&self, key: &str, user: Vec<(String, String)>) -> PublishProperties {
        PublishProperties {
            response_topic: Some(self.acks_topic.clone()),
            correlation_data: Some(key.as_bytes().to_vec().into()),
            content_type: Some(protocol::CONTENT_TYPE.into()),
            user_properties: self
                .token
                .iter()
                .map(|token| (mqtt::AUTHORIZATION.into(), format!("Bearer {token}")))
                .chain(user)
                .collect(),
            ..Default::default()
        }
    }

    /// Publish `payload` to `topic` at `qos` as request `key` and wait for
    /// the collector's answer, at most [`Link::timeout`].
    async fn ask(
        &self,
        topic: &str,
        qos: QoS,
        key: &str,
        user: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> Result<Answer, UplinkError> {
        self.check_ready()?;
        let (tx, rx) = oneshot::channel();
        self.state
            .waiting
            .lock()
            .unwrap()
            .insert(key.to_owned(), tx);
        let properties = self.request_properties(key, user);
        let answer = async {
            self.client
                .publish_with_properties(topic, qos, false, payload, properties)
                .await
                .map_err(|e| self.unreachable(format!("cannot publish: {e}")))?;
            match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => Err(self.unreachable(format!(
                    "no answer to {key} within {} ms (sync.timeout_ms): is a collector subscribed?",
                    self.timeout.as_millis()
                ))),
            }
        }
        .await;
        self.state.waiting.lock().unwrap().remove(key);
        answer
    }
}

/// Delivers batches through an MQTT broker.
pub struct MqttUplink {
    link: Link,
    batches_topic: String,
    ack: MqttAck,
    zstd_level: i32,
    runtime: tokio::runtime::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl MqttUplink {
    /// An uplink of `device` through the broker at `url`, authenticating to
    /// the collector with `token` (none: the broker's account identifies the
    /// device); connects in the background on `runtime`.
    pub fn new(
        url: &str,
        device: &str,
        token: Option<String>,
        config: &SyncConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<MqttUplink, ConfigError> {
        let broker = config.mqtt.clone().unwrap_or_default();
        let client_id = format!("sluice-{device}");
        // An acknowledgement or a chunk of a bundle, with its headers.
        let max_packet =
            (super::http::MAX_ANSWER_BYTES.max(mqtt::BUNDLE_CHUNK_BYTES) + (16 << 10)) as u32;
        let mut options = sluice_mqtt::options(url, &client_id, &broker, max_packet)
            .map_err(|e| ConfigError::value("sync.url", e.to_string()))?;
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(24 * 3600));
        let (client, events) = AsyncClient::new(options, 16);
        let state = Arc::new(State::default());
        *state.last_error.lock().unwrap() = "not connected yet".into();
        let acks_topic = mqtt::acks(&broker.topic_prefix, device);
        let endpoint = sluice_mqtt::endpoint(url).to_owned();
        let task = runtime.spawn(run(
            events,
            client.clone(),
            state.clone(),
            acks_topic.clone(),
            endpoint.clone(),
        ));
        Ok(MqttUplink {
            link: Link {
                endpoint,
                token,
                acks_topic,
                prefix: broker.topic_prefix.clone(),
                device: device.to_owned(),
                timeout: Duration::from_millis(config.timeout_ms),
                client,
                state,
            },
            batches_topic: mqtt::batches(&broker.topic_prefix, device),
            ack: config.mqtt_ack,
            zstd_level: config.zstd_level,
            runtime,
            task,
        })
    }

    async fn publish(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError> {
        let link = &self.link;
        let json = serde_json::to_vec(batch).expect("a raw batch serializes");
        let body =
            zstd::encode_all(&json[..], self.zstd_level).expect("zstd into memory cannot fail");
        let encoding = vec![(
            mqtt::CONTENT_ENCODING.into(),
            protocol::CONTENT_ENCODING.into(),
        )];
        if self.ack == MqttAck::Broker {
            return self.published(batch, body, encoding).await;
        }
        let answer = link
            .ask(
                &self.batches_topic,
                QoS::AtLeastOnce,
                &batch.key,
                encoding,
                body,
            )
            .await?;
        if let Some(retry_after) = answer.retry_after() {
            return Err(UplinkError::Busy {
                endpoint: link.endpoint.clone(),
                retry_after,
                body: upstream_text(&answer.payload, 500),
            });
        }
        if answer.status != 200 {
            return Err(UplinkError::Refused {
                endpoint: link.endpoint.clone(),
                status: answer.status,
                body: upstream_text(&answer.payload, 500),
            });
        }
        serde_json::from_slice::<BatchAck>(&answer.payload).map_err(|e| {
            UplinkError::NotAcknowledged {
                endpoint: link.endpoint.clone(),
                key: batch.key.clone(),
                problem: format!(
                    "the answer is not an acknowledgement ({}): {}",
                    upstream_text(e.to_string().as_bytes(), 300),
                    upstream_text(&answer.payload, 200)
                ),
            }
        })
    }

    /// `mqtt_ack = "broker"`: the broker's PUBACK acknowledges the batch.
    async fn published(
        &self,
        batch: &RawBatch,
        body: Vec<u8>,
        user: Vec<(String, String)>,
    ) -> Result<BatchAck, UplinkError> {
        let link = &self.link;
        link.check_ready()?;
        let (tx, puback) = oneshot::channel();
        *link.state.puback.lock().unwrap() = Some(tx);
        let properties = link.request_properties(&batch.key, user);
        let result = async {
            link.client
                .publish_with_properties(
                    self.batches_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    body,
                    properties,
                )
                .await
                .map_err(|e| link.unreachable(format!("cannot publish: {e}")))?;
            match tokio::time::timeout(link.timeout, puback).await {
                Ok(Ok(Ok(()))) => Ok(BatchAck::new(
                    &batch.key,
                    batch.records.len() as u64,
                    0,
                    false,
                )),
                Ok(Ok(Err(reason))) => Err(UplinkError::Refused {
                    endpoint: link.endpoint.clone(),
                    status: 503,
                    body: format!("the broker refused the batch: PUBACK {reason}"),
                }),
                _ => Err(link.unreachable(format!(
                    "no PUBACK for batch {} within {} ms (sync.timeout_ms)",
                    batch.key,
                    link.timeout.as_millis()
                ))),
            }
        }
        .await;
        link.state.puback.lock().unwrap().take();
        result
    }
}

/// Drive the connection: reconnect (rumqttc does, on the next poll),
/// subscribe to the answers on every connection, route answers to the
/// batches waiting for them.
async fn run(
    mut events: sluice_mqtt::rumqttc::v5::EventLoop,
    client: AsyncClient,
    state: Arc<State>,
    acks_topic: String,
    endpoint: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                if let Err(e) = client.subscribe(acks_topic.clone(), QoS::AtLeastOnce).await {
                    *state.last_error.lock().unwrap() = format!("cannot subscribe: {e}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let ok = ack.return_codes.iter().all(|c| {
                    matches!(
                        c,
                        sluice_mqtt::rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                });
                if ok {
                    state.ready.store(true, Ordering::SeqCst);
                    tracing::info!("MQTT broker {endpoint}: connected, answers on {acks_topic}");
                } else {
                    *state.last_error.lock().unwrap() = format!(
                        "the broker refused the subscription to {acks_topic}: {:?}",
                        ack.return_codes
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic.as_ref() != acks_topic.as_bytes() {
                    continue;
                }
                let properties = publish.properties.unwrap_or_default();
                let Some(key) = properties
                    .correlation_data
                    .and_then(|k| String::from_utf8(k.to_vec()).ok())
                else {
                    continue;
                };
                let Some(waiter) = state.waiting.lock().unwrap().remove(&key) else {
                    continue;
                };
                let mut answer = Answer {
                    status: 0,
                    payload: publish.payload.to_vec(),
                    properties: properties.user_properties,
                };
                answer.status = answer
                    .property(mqtt::STATUS)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let _ = waiter.send(answer);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                use sluice_mqtt::rumqttc::v5::mqttbytes::v5::PubAckReason;
                if let Some(waiter) = state.puback.lock().unwrap().take() {
                    let _ = waiter.send(match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        other => Err(format!("{other:?}")),
                    });
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                state.ready.store(false, Ordering::SeqCst);
                *state.last_error.lock().unwrap() =
                    format!("the broker disconnected: {:?}", d.reason_code);
            }
            Ok(_) => {}
            Err(e) => {
                state.ready.store(false, Ordering::SeqCst);
                *state.last_error.lock().unwrap() = format!("broker connection: {e}");
                tracing::debug!("MQTT broker {endpoint}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Uplink for MqttUplink {
    fn endpoint(&self) -> &str {
        &self.link.endpoint
    }

    fn deliver(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError> {
        self.runtime.block_on(self.publish(batch))
    }

    fn offers(&self, _device: &str) -> Box<dyn Offers> {
        Box::new(bundle::MqttOffers::new(
            self.link.clone(),
            self.runtime.clone(),
        ))
    }
}

impl Drop for MqttUplink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
