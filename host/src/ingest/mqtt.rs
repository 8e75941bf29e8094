//! Inputs from a local MQTT 5 broker (`[ingest.mqtt]`): sensors and
//! cameras publish to the gateway's broker; this source subscribes to the
//! configured topic filters and journals each message for its topic's
//! pipeline, with the topic, QoS, retain flag and user properties among
//! the input's attributes (they go into the result's `input.attributes`).
//!
//! Invariants:
//! * a QoS 1 or 2 message is acknowledged to the broker only after its
//!   input is committed to the journal: a crash before leaves it with the
//!   broker, which sends it again (the session is kept across restarts:
//!   a fixed client id, `clean_start = false`, no session expiry);
//! * a redelivery does not make a second result: every message is
//!   journaled under a key of its packet id and topic, and one the broker
//!   marks as a duplicate (`DUP`) is journaled only unless that key was
//!   journaled with the same content. A message carrying a user property
//!   `idempotency-key` is matched by it instead, whatever its flags;
//! * at most `ingest.mqtt.max_inflight` messages are held (the MQTT 5
//!   receive maximum), each at most `ingest.max_input_bytes` plus 1 MiB
//!   (the broker is told; a larger one it does not deliver); a payload
//!   over `max_input_bytes` becomes a failed result naming the limit;
//! * back-pressure holds acknowledgements, never drops: while too much
//!   waits for the pipelines (`ingest.max_pending_bytes`) or the disk is
//!   full, nothing is acknowledged and the broker keeps the rest.

use super::{Context, IngestError, Running, SHUTDOWN_GRACE, Sink, Source};
use crate::config::{Config, MqttIngestConfig, MqttTopic};
use crate::outbox::{Delivery, NewInput};
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use sluice_mqtt::rumqttc::v5::{AsyncClient, Event};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Messages journaled in one transaction, at most.
const MAX_GROUP: usize = 64;
/// A payload may exceed `ingest.max_input_bytes` by this and still be
/// received (to become a failed result); the broker drops larger ones.
pub const OVERSIZE_SLACK: usize = 1 << 20;
/// User properties of a message kept among its input's attributes, and
/// the characters of each name and value.
const MAX_USER_PROPERTIES: usize = 16;
const MAX_PROPERTY_CHARS: usize = 64;
/// The longest wait between attempts to reach the broker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The source, checked.
pub struct MqttSource {
    config: MqttIngestConfig,
    client_id: String,
    max_input_bytes: usize,
}

impl MqttSource {
    /// The MQTT source of `[ingest.mqtt]`, if set.
    pub fn from_config(config: &Config) -> Result<Option<MqttSource>, IngestError> {
        let Some(mqtt) = &config.ingest.mqtt else {
            return Ok(None);
        };
        let client_id = mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}-ingest", config.device.id));
        let source = MqttSource {
            config: mqtt.clone(),
            client_id,
            max_input_bytes: config.ingest.max_input_bytes,
        };
        // Settings are checked before anything runs.
        source.options().map_err(|e| IngestError::Setup {
            source_name: source.describe(),
            message: e.to_string(),
        })?;
        Ok(Some(source))
    }

    fn options(
        &self,
    ) -> Result<sluice_mqtt::rumqttc::v5::MqttOptions, sluice_mqtt::MqttConfigError> {
        let max_packet = (self.max_input_bytes + OVERSIZE_SLACK).min(u32::MAX as usize) as u32;
        let mut options = sluice_mqtt::options(
            &self.config.url,
            &self.client_id,
            &self.config.broker,
            max_packet,
        )?;
        options.set_clean_start(false);
        // MQTT 5: 0xFFFFFFFF, the session never expires.
        options.set_session_expiry_interval(Some(u32::MAX));
        options.set_manual_acks(true);
        options.set_receive_maximum(Some(self.config.max_inflight));
        Ok(options)
    }
}

impl Source for MqttSource {
    fn describe(&self) -> String {
        format!(
            "mqtt {} as {}",
            sluice_mqtt::endpoint(&self.config.url),
            self.client_id
        )
    }

    fn start(self: Box<Self>, sink: Arc<Sink>, context: &Context) -> Result<Running, IngestError> {
        let name = self.describe();
        let options = self.options().map_err(|e| IngestError::Setup {
            source_name: name.clone(),
            message: e.to_string(),
        })?;
        let (stop, stopped) = watch::channel(false);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        context.runtime.spawn(async move {
            run(*self, options, sink, stopped).await;
            let _ = done_tx.send(());
        });
        Ok(Running::new(
            name,
            move || {
                let _ = stop.send(true);
            },
            move || {
                let _ = done_rx.recv_timeout(SHUTDOWN_GRACE);
            },
        ))
    }
}

/// Read messages until `stop`; a task journals and acknowledges them.
async fn run(
    source: MqttSource,
    options: sluice_mqtt::rumqttc::v5::MqttOptions,
    sink: Arc<Sink>,
    mut stop: watch::Receiver<bool>,
) {
    let inflight = source.config.max_inflight as usize;
    let (client, mut events) = AsyncClient::new(options, 2 * inflight + 16);
    // Unbounded, yet never more than the receive maximum: the broker sends
    // no more unacknowledged messages. The loop below must never wait on
    // the journal: it is what sends the acknowledgements, and a loop
    // waiting for room while the journal waits for its acknowledgements
    // to go out would stall both.
    let (tx, rx) = mpsc::unbounded_channel::<Publish>();
    let url = sluice_mqtt::endpoint(&source.config.url).to_owned();
    let journal = tokio::spawn(journal(
        rx,
        client.clone(),
        sink,
        source.config.topics.clone(),
        source.client_id.clone(),
        source.max_input_bytes,
    ));
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                for topic in &source.config.topics {
                    let qos = match topic.qos {
                        0 => QoS::AtMostOnce,
                        2 => QoS::ExactlyOnce,
                        _ => QoS::AtLeastOnce,
                    };
                    if let Err(e) = client.subscribe(topic.filter.clone(), qos).await {
                        tracing::error!(
                            "MQTT ingest {url}: cannot subscribe to {}: {e}",
                            topic.filter
                        );
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if tx.send(publish).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("MQTT ingest {url}: {e}; trying again in {backoff:?}");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    drop(tx);
    let _ = journal.await;
    let _ = client.disconnect().await;
}

/// A message made ready to journal: its input, the key it is matched by,
/// whether it may have been journaled before (the broker's `DUP`, or a
/// publisher's key), and why it is refused, if it is.
struct Prepared {
    input: NewInput,
    key: String,
    again: bool,
    refused: Option<String>,
}

/// Journal what arrives, a group at a time, then acknowledge it.
async fn journal(
    mut rx: mpsc::UnboundedReceiver<Publish>,
    client: AsyncClient,
    sink: Arc<Sink>,
    topics: Vec<MqttTopic>,
    client_id: String,
    max_input_bytes: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(publish) => group.push(publish),
                Err(_) => break,
            }
        }
        let prepared: Arc<Vec<Prepared>> = Arc::new(
            group
                .iter()
                .filter_map(|p| prepare(p, &topics, &client_id, max_input_bytes))
                .collect(),
        );
        // The inputs hold the payloads now; what acknowledges a message is
        // its packet id, not its bytes.
        for publish in &mut group {
            publish.payload = Default::default();
        }
        let mut failures = 0u32;
        while !prepared.is_empty() {
            // A retry may follow a commit whose answer was lost: every
            // message is matched by its key then.
            let retry = failures > 0;
            let (sink, taken) = (sink.clone(), prepared.clone());
            let stored = tokio::task::spawn_blocking(move || {
                let deliveries: Vec<(&NewInput, Delivery<'_>, Option<&str>)> = taken
                    .iter()
                    .map(|p| {
                        let delivery = if p.again || retry {
                            Delivery::Again(&p.key)
                        } else {
                            Delivery::First(&p.key)
                        };
                        (&p.input, delivery, p.refused.as_deref())
                    })
                    .collect();
                sink.accept_deliveries(&deliveries).map(drop)
            })
            .await;
            match stored {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    failures += 1;
                    let wait = crate::wake::backoff(100, 5_000, failures);
                    tracing::warn!(
                        "MQTT ingest: {} message(s) not journaled ({e}); not acknowledged, trying again in {wait:?}",
                        prepared.len()
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::error!("MQTT ingest: journaling failed: {e}");
                    return;
                }
            }
        }
        // Tests kill the agent here: journaled, not acknowledged.
        if std::env::var("SLUICE_FAULT_INJECT").is_ok_and(|v| v == "mqtt-crash:journaled") {
            std::process::abort();
        }
        for publish in &group {
            if publish.qos != QoS::AtMostOnce {
                let _ = client.ack(publish).await;
            }
        }
    }
}

/// `publish` as an input of its topic's pipeline (`None`: no configured
/// filter matches it, which the broker should not have sent).
fn prepare(
    publish: &Publish,
    topics: &[MqttTopic],
    client_id: &str,
    max_input_bytes: usize,
) -> Option<Prepared> {
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let Some(subscription) = topics.iter().find(|t| matches(&t.filter, &topic)) else {
        tracing::warn!("MQTT ingest: a message on `{topic}` matches no configured filter; dropped");
        return None;
    };
    let properties = publish.properties.as_ref();
    let mut attributes = vec![
        ("source".to_owned(), "mqtt".to_owned()),
        ("mqtt_topic".to_owned(), topic.clone()),
        ("mqtt_qos".to_owned(), (publish.qos as u8).to_string()),
    ];
    if publish.retain {
        attributes.push(("mqtt_retain".to_owned(), "true".to_owned()));
    }
    let mut publisher_key = None;
    let cut = |s: &str| s.chars().take(MAX_PROPERTY_CHARS).collect::<String>();
    for (name, value) in properties
        .map(|p| p.user_properties.as_slice())
        .unwrap_or_default()
        .iter()
        .take(MAX_USER_PROPERTIES)
    {
        if name == "idempotency-key" {
            publisher_key = Some(cut(value));
        }
        attributes.push((format!("mqtt_user.{}", cut(name)), cut(value)));
    }
    let content_type = properties
        .and_then(|p| p.content_type.clone())
        .or_else(|| subscription.content_type.clone())
        .unwrap_or_else(|| "application/octet-stream".into());
    let oversize = publish.payload.len() > max_input_bytes;
    let refused = oversize.then(|| {
        format!(
            "MQTT message on `{topic}` of {} bytes exceeds ingest.max_input_bytes ({max_input_bytes})",
            publish.payload.len()
        )
    });
    let (key, again) = match (publisher_key, publish.qos) {
        (Some(key), _) => (format!("mqtt-key:{topic}:{key}"), true),
        // At most once: nothing will come again; a key only makes a retry
        // of this group safe.
        (None, QoS::AtMostOnce) => (format!("mqtt0:{:032x}", rand::random::<u128>()), false),
        (None, _) => (
            format!("mqtt:{client_id}:{}:{topic}", publish.pkid),
            publish.dup,
        ),
    };
    Some(Prepared {
        input: NewInput {
            pipeline: subscription.pipeline.clone(),
            content_type,
            attributes,
            data: if oversize {
                Vec::new()
            } else {
                publish.payload.to_vec()
            },
        },
        key,
        again,
        refused,
    })
}

/// Whether MQTT topic filter `filter` matches `topic` (`+` one level, `#`
/// the rest; topics starting with `$` only by filters that name them).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let (mut f, mut t) = (filter.split('/'), topic.split('/'));
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn topic_filters_match_as_mqtt_says() {
        assert!(matches("line/+/image", "line/3/image"));
        assert!(!matches("line/+/image", "line/3/4/image"));
        assert!(matches("line/#", "line/3/4/image"));
        assert!(matches("line/#", "line"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/b", "a/b"));
    }
}
