//! `[sync]`: shipping results upstream, and the bearer tokens read from
//! files (shared with `[ingest]`).

use crate::error::ConfigError;
use serde::Deserialize;
use sluice_protocol::keys::PublicKey;
use std::path::PathBuf;

/// `[sync]`: shipping results upstream (see [`crate::uplink`]). Without `url`,
/// results stay in the outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// The collector's base URL, `http://` or `https://`, e.g. `https://collector.example`.
    pub url: Option<String>,
    /// This device's bearer token (required over HTTP; over MQTT only when
    /// the collector identifies devices by token rather than by the topic
    /// the broker lets them publish to).
    pub token: Option<String>,
    /// A file holding the bearer token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Most results in one upload.
    pub batch_max_records: usize,
    /// Most uncompressed bytes in one upload (a single larger result still goes alone).
    pub batch_max_bytes: usize,
    /// Deadline of one upload, connection included.
    pub timeout_ms: u64,
    /// First retry delay after a failed upload; doubles per failure, with jitter.
    pub backoff_initial_ms: u64,
    /// Cap of the retry delay.
    pub backoff_max_ms: u64,
    /// How often an idle uploader looks for new results (it is also woken
    /// when results are stored).
    pub interval_ms: u64,
    /// zstd level of uploads (1 fast .. 19 small).
    pub zstd_level: i32,
    /// `[sync.mqtt]`: the broker's credentials, TLS and topic prefix, for
    /// an `mqtt://` or `mqtts://` `url`.
    pub mqtt: Option<sluice_mqtt::Broker>,
    /// What acknowledges a batch sent through MQTT: the collector's answer
    /// (`collector`, the default: stored upstream) or the broker's PUBACK
    /// (`broker`: only when the broker itself is durable).
    pub mqtt_ack: MqttAck,
    /// The collector's acknowledgement keys (`ed25519:<base64>`, printed by
    /// `sluice-collector ack-key`; two while a key rotates). When set, a
    /// batch is deleted only on an answer signed by one of them for this
    /// device and exactly the records sent. Required over MQTT, where any
    /// client the broker lets publish on the answer topic could answer.
    pub ack_keys: Vec<String>,
    /// HTTPS: trust only these CA certificates (PEM) for the collector,
    /// instead of the public web roots built in (a fleet's own CA).
    pub ca_file: Option<PathBuf>,
    /// HTTPS: this device's client certificate (PEM), for a collector that
    /// identifies devices by certificate (mutual TLS); needs
    /// `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

/// What acknowledges a batch sent through an MQTT broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MqttAck {
    /// The collector's answer after its commit.
    #[default]
    Collector,
    /// The broker's PUBACK.
    Broker,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            token_file: None,
            batch_max_records: 500,
            batch_max_bytes: 1 << 20,
            timeout_ms: 10_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            interval_ms: 1_000,
            zstd_level: 3,
            mqtt: None,
            mqtt_ack: MqttAck::Collector,
            ack_keys: Vec::new(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// How results travel upstream: chosen by `sync.url`'s scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `http://` or `https://`: `POST` to the collector.
    Http,
    /// `mqtt://` or `mqtts://`: through a broker.
    Mqtt,
}

impl SyncConfig {
    /// The transport `url` names, parsed (`None` without a `url`); any
    /// scheme but http, https, mqtt and mqtts is refused, naming it.
    pub fn transport(&self) -> Result<Option<Transport>, ConfigError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ConfigError::value("sync.url", format!("`{url}` is not a URL: {e}")))?;
        match parsed.scheme() {
            "http" | "https" => Ok(Some(Transport::Http)),
            "mqtt" | "mqtts" => Ok(Some(Transport::Mqtt)),
            other => Err(ConfigError::value(
                "sync.url",
                format!("`{url}`: the scheme `{other}` is none of http, https, mqtt, mqtts"),
            )),
        }
    }

    /// The most records one upload may carry (the reference collector's
    /// default limit per batch).
    pub const MAX_BATCH_RECORDS: u64 = 10_000;
    /// The most uncompressed bytes of records one upload may carry (below
    /// the reference collector's default limit, leaving room for the
    /// batch's own fields).
    pub const MAX_BATCH_BYTES: u64 = 16 << 20;

    /// The pinned acknowledgement keys, parsed; refused when the
    /// transport needs them and they are missing (an MQTT uplink answered
    /// by collectors; plain HTTP beyond loopback, where no TLS says who
    /// answers), or when nothing would check them (the broker's PUBACK
    /// acknowledges).
    pub fn pinned_ack_keys(&self) -> Result<Vec<PublicKey>, ConfigError> {
        let keys = self
            .ack_keys
            .iter()
            .enumerate()
            .map(|(ix, key)| {
                PublicKey::parse(key)
                    .map_err(|e| ConfigError::value(&format!("sync.ack_keys[{ix}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.transport()? == Some(Transport::Mqtt) {
            match self.mqtt_ack {
                MqttAck::Collector if keys.is_empty() => {
                    return Err(ConfigError::value(
                        "sync.ack_keys",
                        "is empty, and sync.url is a broker: any client allowed to publish on this device's answer topic could make it delete results; pin the collector's key (`sluice-collector ack-key`)",
                    ));
                }
                MqttAck::Broker if !keys.is_empty() => {
                    return Err(ConfigError::value(
                        "sync.ack_keys",
                        "is set, but sync.mqtt_ack = \"broker\" deletes on the broker's PUBACK, which no key signs: use one or the other",
                    ));
                }
                _ => {}
            }
        }
        if keys.is_empty()
            && let Some(url) = &self.url
            && plain_http_beyond_loopback(url)
        {
            // Named by the key that asks for it (a document may not have
            // `ack_keys` at all).
            return Err(ConfigError::value(
                "sync.url",
                format!(
                    "`{url}` is plain HTTP beyond this machine: whatever is on the way (a captive portal, a proxy) could answer in the collector's place and make this device delete results; pin the collector's key in sync.ack_keys (`sluice-collector ack-key`) or use https://"
                ),
            ));
        }
        Ok(keys)
    }

    /// The bearer token, from `token` or `token_file`.
    pub fn bearer_token(&self) -> Result<Option<String>, ConfigError> {
        bearer_token(
            self.token.as_ref(),
            self.token_file.as_ref(),
            "sync.token_file",
        )
    }
}

/// Whether `url` is `http://` to a host other than this machine (TLS does
/// not vouch for who answers).
fn plain_http_beyond_loopback(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let host = url.host_str().unwrap_or_default();
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !host.eq_ignore_ascii_case("localhost"),
    }
}

/// A bearer token given inline or as the first line of a file (`key`).
pub(super) fn bearer_token(
    token: Option<&String>,
    file: Option<&PathBuf>,
    key: &'static str,
) -> Result<Option<String>, ConfigError> {
    if let Some(token) = token {
        return Ok(Some(token.clone()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
        key,
        path: path.clone(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(ConfigError::value(
            key,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> SyncConfig {
        SyncConfig {
            url: Some(url.to_owned()),
            ..SyncConfig::default()
        }
    }

    /// Unsigned answers are believed only where nothing but this machine,
    /// or TLS, stands between the device and its collector.
    #[test]
    fn ack_keys_are_required_where_anyone_on_the_way_could_answer() {
        for url in [
            "http://127.0.0.1:8480",
            "http://localhost:8480",
            "http://[::1]:8480",
            "https://collector.example",
        ] {
            assert!(with_url(url).pinned_ack_keys().is_ok(), "{url}");
        }
        for url in [
            "http://collector.example",
            "http://10.0.0.5:8480",
            "mqtt://broker:1883",
        ] {
            let error = with_url(url).pinned_ack_keys().unwrap_err().to_string();
            assert!(error.contains("ack_keys"), "{url}: {error}");
        }
        let pinned = SyncConfig {
            ack_keys: vec!["ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into()],
            ..with_url("http://collector.example")
        };
        assert_eq!(pinned.pinned_ack_keys().unwrap().len(), 1);
    }
}
