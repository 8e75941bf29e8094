//! `[consumers.NAME]`: where the device's results go on the device itself
//! (a local broker's topics, a local web hook), each with its own durable
//! cursor on the results the outbox keeps (`outbox.local_max_bytes`).

use crate::error::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The most consumers a device runs.
pub const MAX_CONSUMERS: usize = 16;

/// One local consumer: exactly one of `mqtt` and `webhook`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The pipelines whose results it takes (default: all).
    #[serde(default)]
    pub pipelines: Vec<String>,
    /// The longest wait between two attempts to deliver to it (the wait
    /// doubles from 100 ms after each failure).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Publish each result to a local broker.
    #[serde(default)]
    pub mqtt: Option<MqttConsumerConfig>,
    /// POST each result to a local URL.
    #[serde(default)]
    pub webhook: Option<WebhookConsumerConfig>,
}

fn default_max_backoff_ms() -> u64 {
    30_000
}

/// `[consumers.NAME.mqtt]`: results published at QoS 1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConsumerConfig {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub url: String,
    /// The client id; default `sluice-<device>-<consumer>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The topic of each result; `{pipeline}` is replaced by its pipeline.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Publish retained, so the broker gives the last result of each topic
    /// to whoever subscribes later.
    #[serde(default)]
    pub retain: bool,
    /// How long a published result may wait for the broker's PUBACK before
    /// it is published again.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Credentials and TLS, as `[ingest.mqtt.broker]`.
    #[serde(default)]
    pub broker: sluice_mqtt::Broker,
}

fn default_topic() -> String {
    "sluice/results/{pipeline}".into()
}

fn default_ack_timeout_ms() -> u64 {
    10_000
}

/// `[consumers.NAME.webhook]`: each result POSTed as JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConsumerConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// A file holding a bearer token to send (first line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for `https://`
    /// (default: the web's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// One request's deadline.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl ConsumerConfig {
    /// The files it names, to resolve against the configuration's folder.
    pub(super) fn files(&mut self) -> Vec<&mut PathBuf> {
        let mut files = Vec::new();
        if let Some(mqtt) = &mut self.mqtt {
            files.extend(mqtt.broker.files_mut());
        }
        if let Some(webhook) = &mut self.webhook {
            files.extend(
                [&mut webhook.token_file, &mut webhook.ca_file]
                    .into_iter()
                    .flatten(),
            );
        }
        files
    }
}

/// Check `consumers` against the pipelines and the kept results.
pub(super) fn check(
    consumers: &BTreeMap<String, ConsumerConfig>,
    pipelines: &[&str],
    local_max_bytes: u64,
    device: &str,
) -> Result<(), ConfigError> {
    let value = |key: String, problem: String| Err(ConfigError::value(&key, problem));
    if consumers.len() > MAX_CONSUMERS {
        return value(
            "consumers".into(),
            format!("{} consumers; at most {MAX_CONSUMERS}", consumers.len()),
        );
    }
    for (name, consumer) in consumers {
        let key = |part: &str| format!("consumers.{name}{part}");
        if let Err(e) = sluice_protocol::check_name(name) {
            return value(key(""), format!("`{name}` {e}"));
        }
        if local_max_bytes == 0 {
            return value(
                key(""),
                "reads the results the device keeps, and none are kept: set outbox.local_max_bytes (64 MiB keeps about 200 000 small results)".into(),
            );
        }
        for pipeline in &consumer.pipelines {
            if !pipelines.contains(&pipeline.as_str()) {
                return value(key(".pipelines"), format!("no pipeline `{pipeline}`"));
            }
        }
        match (&consumer.mqtt, &consumer.webhook) {
            (Some(mqtt), None) => {
                let topic = mqtt.topic.replace("{pipeline}", "p");
                if topic.is_empty()
                    || topic.len() > 1024
                    || topic.contains(['+', '#', '\0'])
                    || topic.contains('{')
                {
                    return value(
                        key(".mqtt.topic"),
                        format!(
                            "`{}` is not a topic to publish to (no wildcards; `{{pipeline}}` is the only placeholder; at most 1 KiB)",
                            mqtt.topic
                        ),
                    );
                }
                let id = format!("sluice-{device}-{name}");
                let id = mqtt.client_id.as_deref().unwrap_or(&id);
                if let Err(e) = sluice_mqtt::options(&mqtt.url, id, &mqtt.broker, 1) {
                    return value(key(".mqtt"), e.to_string());
                }
            }
            (None, Some(webhook)) => {
                let ok = webhook
                    .url
                    .parse::<reqwest::Url>()
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if !ok {
                    return value(
                        key(".webhook.url"),
                        format!("`{}` is not an http:// or https:// URL", webhook.url),
                    );
                }
            }
            _ => {
                return value(
                    key(""),
                    "give exactly one of [consumers.NAME.mqtt] and [consumers.NAME.webhook]".into(),
                );
            }
        }
    }
    Ok(())
}
