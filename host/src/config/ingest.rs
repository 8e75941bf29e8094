//! `[ingest]`: where `sluice run` takes its inputs from.

use super::sync::bearer_token;
use crate::error::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// `[ingest]`: where `sluice run` takes inputs from (see [`crate::agent`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A folder watched for input files; each is deleted once durably accepted.
    /// Dot files are ignored: writers should create files under a name
    /// starting with `.` and rename them when complete (otherwise a file is
    /// taken once it stayed unchanged for `settle_ms`).
    pub folder: Option<PathBuf>,
    /// The pipeline for files of `folder`; default: the only pipeline.
    pub folder_pipeline: Option<String>,
    /// How often the folder is scanned.
    pub poll_ms: u64,
    /// A file of `folder` is taken only once its size and modification time
    /// stayed the same for this long, so a file still being written is not
    /// taken half-written. Writers that create files under a dot name and
    /// rename them when complete can set 0.
    pub settle_ms: u64,
    /// Address of the local HTTP ingest endpoint, e.g. `127.0.0.1:8470`
    /// (port 0: any free port, printed at start-up). An address beyond
    /// loopback needs `token` (or `token_file`), or
    /// `insecure_allow_anyone = true`.
    pub listen: Option<String>,
    /// Bearer token HTTP ingest requires (`Authorization: Bearer TOKEN`);
    /// none: anyone who can reach `listen` may post inputs.
    pub token: Option<String>,
    /// A file holding the ingest token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without a token, knowingly (logged loudly at
    /// every start).
    pub insecure_allow_anyone: bool,
    /// HTTP ingest connections open at once, at most; more wait unaccepted.
    pub max_connections: usize,
    /// HTTP ingest requests reading or storing their body at once, at most;
    /// more are answered `503` at once. Bodies in memory are bounded by this
    /// times `max_input_bytes`.
    pub max_concurrent_requests: usize,
    /// Deadline for a request's head (also the idle keep-alive timeout).
    pub header_timeout_ms: u64,
    /// Deadline for a request's body once its head arrived; past it `408`.
    pub body_timeout_ms: u64,
    /// Largest accepted input.
    pub max_input_bytes: usize,
    /// Most bytes of accepted inputs waiting for their pipeline; beyond,
    /// ingest answers 503 and files wait in the folder.
    pub max_pending_bytes: u64,
    /// How long an HTTP `Idempotency-Key` is remembered: a retry within this
    /// window gets the first request's id and stores nothing.
    pub idempotency_window_secs: u64,
    /// Most idempotency keys remembered (the oldest are forgotten first).
    pub idempotency_max_keys: u64,
    /// How long `POST /v1/infer/{pipeline}` waits for its result; past it
    /// `504` with the input's id (it is journaled: its result is still
    /// made, stored and synced).
    pub infer_timeout_ms: u64,
    /// `POST /v1/infer` calls waiting for their result at once, at most
    /// (besides `max_concurrent_requests` reading bodies); more get `503`.
    pub max_waiting_calls: usize,
    /// `[ingest.mqtt]`: subscribe to a local broker.
    pub mqtt: Option<MqttIngestConfig>,
}

/// The most topic filters `[ingest.mqtt]` takes.
pub const MAX_MQTT_TOPICS: usize = 64;

/// `[ingest.mqtt]`: inputs from a local MQTT 5 broker (sensors and
/// cameras publish there), acknowledged to it only once journaled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttIngestConfig {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub url: String,
    /// The client id, kept across restarts (the broker keeps its session
    /// and what was not acknowledged under it); default `sluice-<device>-ingest`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Messages the broker may send before their acknowledgement (the MQTT
    /// 5 receive maximum): what the agent holds at most.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Credentials and TLS (`[ingest.mqtt.broker]`: `username`,
    /// `password_file`, `ca_file`, `client_cert_file`, `client_key_file`).
    #[serde(default)]
    pub broker: sluice_mqtt::Broker,
    /// What to subscribe to, and which pipeline each topic feeds.
    pub topics: Vec<MqttTopic>,
}

fn default_max_inflight() -> u16 {
    16
}

/// One subscription of `[ingest.mqtt]` (`[[ingest.mqtt.topics]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTopic {
    /// A topic filter (`+` and `#` wildcards), e.g. `line-3/+/image`.
    pub filter: String,
    /// The pipeline its messages go to.
    pub pipeline: String,
    /// The subscription's QoS: 1 (default) or 2; 0 takes what the broker
    /// sends at most once (a message lost in a crash is not sent again).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// The inputs' media type when a message does not give one (its MQTT 5
    /// content type); default `application/octet-stream`.
    #[serde(default)]
    pub content_type: Option<String>,
}

fn default_qos() -> u8 {
    1
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            folder: None,
            folder_pipeline: None,
            poll_ms: 250,
            settle_ms: 500,
            listen: None,
            token: None,
            token_file: None,
            insecure_allow_anyone: false,
            max_connections: 64,
            max_concurrent_requests: 4,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            max_input_bytes: 16 << 20,
            max_pending_bytes: 256 << 20,
            idempotency_window_secs: 24 * 3600,
            idempotency_max_keys: 100_000,
            infer_timeout_ms: 10_000,
            max_waiting_calls: 64,
            mqtt: None,
        }
    }
}

impl IngestConfig {
    /// The token HTTP ingest requires, from `token` or `token_file`.
    pub fn bearer_token(&self) -> Result<Option<String>, ConfigError> {
        bearer_token(
            self.token.as_ref(),
            self.token_file.as_ref(),
            "ingest.token_file",
        )
    }
}
