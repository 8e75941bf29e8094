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

use super::{Uplink, UplinkError};
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

/// An answer: its status, its payload and, with `503`, the wait it asks
/// for ([`mqtt::RETRY_AFTER_MS`]).
type Answer = (u16, Vec<u8>, Option<Duration>);

/// What the connection task and [`MqttUplink::deliver`] share.
#[derive(Default)]
struct State {
    /// Connected and subscribed to the answers.
    ready: AtomicBool,
    /// Why not, when not.
    last_error: Mutex<String>,
    /// Batches waiting for their answer, by key.
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    /// The batch waiting for its PUBACK (`mqtt_ack = "broker"`): one at a
    /// time, as the uploader sends one batch at a time.
    puback: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
}

/// Delivers batches through an MQTT broker.
pub struct MqttUplink {
    endpoint: String,
    /// The collector's bearer token for this device, sent in each batch;
    /// none when the broker's accounts identify the device (its topic).
    token: Option<String>,
    batches_topic: String,
    acks_topic: String,
    ack: MqttAck,
    timeout: Duration,
    zstd_level: i32,
    client: AsyncClient,
    state: Arc<State>,
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
        let max_packet = (super::http::MAX_ANSWER_BYTES + (16 << 10)) as u32;
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
            endpoint,
            token,
            batches_topic: mqtt::batches(&broker.topic_prefix, device),
            acks_topic,
            ack: config.mqtt_ack,
            timeout: Duration::from_millis(config.timeout_ms),
            zstd_level: config.zstd_level,
            client,
            state,
            runtime,
            task,
        })
    }

    async fn publish(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError> {
        if !self.state.ready.load(Ordering::SeqCst) {
            return Err(UplinkError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: self.state.last_error.lock().unwrap().clone(),
            });
        }
        let json = serde_json::to_vec(batch).expect("a raw batch serializes");
        let body =
            zstd::encode_all(&json[..], self.zstd_level).expect("zstd into memory cannot fail");
        let properties = PublishProperties {
            response_topic: Some(self.acks_topic.clone()),
            correlation_data: Some(batch.key.clone().into_bytes().into()),
            content_type: Some(protocol::CONTENT_TYPE.into()),
            user_properties: self
                .token
                .iter()
                .map(|token| (mqtt::AUTHORIZATION.into(), format!("Bearer {token}")))
                .chain([(
                    mqtt::CONTENT_ENCODING.into(),
                    protocol::CONTENT_ENCODING.into(),
                )])
                .collect(),
            ..Default::default()
        };
        let (answer_tx, answer_rx) = oneshot::channel();
        let (puback_tx, puback_rx) = oneshot::channel();
        match self.ack {
            MqttAck::Collector => {
                self.state
                    .waiting
                    .lock()
                    .unwrap()
                    .insert(batch.key.clone(), answer_tx);
            }
            MqttAck::Broker => *self.state.puback.lock().unwrap() = Some(puback_tx),
        }
        let result = self
            .exchange(batch, body, properties, answer_rx, puback_rx)
            .await;
        self.state.waiting.lock().unwrap().remove(&batch.key);
        self.state.puback.lock().unwrap().take();
        result
    }

    async fn exchange(
        &self,
        batch: &RawBatch,
        body: Vec<u8>,
        properties: PublishProperties,
        answer: oneshot::Receiver<Answer>,
        puback: oneshot::Receiver<Result<(), String>>,
    ) -> Result<BatchAck, UplinkError> {
        let unreachable = |message: String| UplinkError::Unreachable {
            endpoint: self.endpoint.clone(),
            message,
        };
        self.client
            .publish_with_properties(
                self.batches_topic.clone(),
                QoS::AtLeastOnce,
                false,
                body,
                properties,
            )
            .await
            .map_err(|e| unreachable(format!("cannot publish: {e}")))?;
        let no_answer = || {
            unreachable(format!(
                "no answer to batch {} within {} ms (sync.timeout_ms): is a collector subscribed?",
                batch.key,
                self.timeout.as_millis()
            ))
        };
        match self.ack {
            MqttAck::Broker => match tokio::time::timeout(self.timeout, puback).await {
                Ok(Ok(Ok(()))) => Ok(BatchAck::new(
                    &batch.key,
                    batch.records.len() as u64,
                    0,
                    false,
                )),
                Ok(Ok(Err(reason))) => Err(UplinkError::Refused {
                    endpoint: self.endpoint.clone(),
                    status: 503,
                    body: format!("the broker refused the batch: PUBACK {reason}"),
                }),
                _ => Err(no_answer()),
            },
            MqttAck::Collector => {
                let Ok(Ok((status, payload, retry_after))) =
                    tokio::time::timeout(self.timeout, answer).await
                else {
                    return Err(no_answer());
                };
                if let Some(retry_after) = retry_after {
                    return Err(UplinkError::Busy {
                        endpoint: self.endpoint.clone(),
                        retry_after,
                        body: upstream_text(&payload, 500),
                    });
                }
                if status != 200 {
                    return Err(UplinkError::Refused {
                        endpoint: self.endpoint.clone(),
                        status,
                        body: upstream_text(&payload, 500),
                    });
                }
                serde_json::from_slice::<BatchAck>(&payload).map_err(|e| {
                    UplinkError::NotAcknowledged {
                        endpoint: self.endpoint.clone(),
                        key: batch.key.clone(),
                        problem: format!(
                            "the answer is not an acknowledgement ({}): {}",
                            upstream_text(e.to_string().as_bytes(), 300),
                            upstream_text(&payload, 200)
                        ),
                    }
                })
            }
        }
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
                let property = |name: &str| {
                    properties
                        .user_properties
                        .iter()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                };
                let status = property(mqtt::STATUS)
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(0);
                let retry_after = property(mqtt::RETRY_AFTER_MS)
                    .filter(|_| status == 503)
                    .map(Duration::from_millis);
                if let Some(waiter) = state.waiting.lock().unwrap().remove(&key) {
                    let _ = waiter.send((status, publish.payload.to_vec(), retry_after));
                }
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
        &self.endpoint
    }

    fn deliver(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError> {
        self.runtime.block_on(self.publish(batch))
    }
}

impl Drop for MqttUplink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
