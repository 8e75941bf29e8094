//! The host configuration: one TOML file describing the device, its plugins,
//! its models and the pipelines that join them.
//!
//! Invariants after [`Config::load`]:
//! * unknown keys have been refused with an error naming the key and line;
//! * every relative path is resolved against the configuration file's folder,
//!   so the agent behaves the same whatever its working directory;
//! * every pipeline names plugins and models that exist.

use crate::error::ConfigError;
use serde::Deserialize;
pub use sluice_outbox::{FullPolicy, OutboxConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod keys;
#[cfg(test)]
mod keys_tests;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[device]`: who this device is and where it keeps its state.
    #[serde(default)]
    pub device: DeviceConfig,
    /// `[runtime]`: the plugin engine and the pipeline threads.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// `[plugins.NAME]`: the plugins, by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `[models.NAME]`: the models, by name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// `[pipelines.NAME]`: the pipelines, by name.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// The on-device store of results awaiting upload (`sluice run`).
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Where and how results are shipped upstream (`sluice run`).
    #[serde(default)]
    pub sync: SyncConfig,
    /// Where `sluice run` takes its inputs from.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Drift windows against each model's reference profile (`sluice run`).
    #[serde(default)]
    pub drift: crate::drift::DriftConfig,
    /// Signed bundles: which keys to trust, where they arrive, how a new
    /// version is watched (`sluice run`).
    #[serde(default)]
    pub bundles: BundlesConfig,
}

/// `[bundles]`: installing signed bundles while the agent runs (see
/// [`crate::bundle`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesConfig {
    /// Public keys (`ed25519:<base64>`, from `sluice bundle keygen`) whose
    /// signature a bundle needs; several, so that keys can rotate. None:
    /// no bundle is installed.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// A folder bundles are dropped into (`*.bundle`: a USB stick, scp).
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// Ask the collector (`[sync]`'s url and token) for the bundle a staged
    /// rollout has for this device.
    #[serde(default)]
    pub from_collector: bool,
    /// How often to ask the collector.
    #[serde(default = "default_collector_poll_secs")]
    pub collector_poll_secs: u64,
    /// How often the folder and the version on probation are looked at.
    #[serde(default = "default_bundle_poll_ms")]
    pub poll_ms: u64,
    /// A bundle file is taken once unchanged for this long (still being
    /// copied otherwise).
    #[serde(default = "default_bundle_settle_ms")]
    pub settle_ms: u64,
    /// How long a new version is watched before it is committed.
    #[serde(default = "default_probation_secs")]
    pub probation_secs: u64,
    /// Items a new version must have processed before it is judged.
    #[serde(default = "default_probation_min_items")]
    pub probation_min_items: u64,
    /// Share of items failing in the pipeline above which a new version on
    /// probation is rolled back.
    #[serde(default = "default_probation_max_error_rate")]
    pub probation_max_error_rate: f64,
}

impl Default for BundlesConfig {
    fn default() -> Self {
        BundlesConfig {
            trusted_keys: Vec::new(),
            folder: None,
            from_collector: false,
            collector_poll_secs: default_collector_poll_secs(),
            poll_ms: default_bundle_poll_ms(),
            settle_ms: default_bundle_settle_ms(),
            probation_secs: default_probation_secs(),
            probation_min_items: default_probation_min_items(),
            probation_max_error_rate: default_probation_max_error_rate(),
        }
    }
}

impl BundlesConfig {
    /// Whether bundles can be installed at all (a key is pinned).
    pub fn enabled(&self) -> bool {
        !self.trusted_keys.is_empty()
    }

    /// The pinned keys, parsed.
    pub fn trusted(&self) -> Result<Vec<sluice_bundle::keys::PublicKey>, ConfigError> {
        self.trusted_keys
            .iter()
            .enumerate()
            .map(|(ix, key)| {
                sluice_bundle::keys::PublicKey::parse(key).map_err(|e| {
                    ConfigError::value(&format!("bundles.trusted_keys[{ix}]"), e.to_string())
                })
            })
            .collect()
    }
}

fn default_bundle_poll_ms() -> u64 {
    2_000
}

fn default_collector_poll_secs() -> u64 {
    60
}

fn default_bundle_settle_ms() -> u64 {
    1_000
}

fn default_probation_secs() -> u64 {
    300
}

fn default_probation_min_items() -> u64 {
    20
}

fn default_probation_max_error_rate() -> f64 {
    0.05
}

/// `[device]`: who this device is and where it keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Stable id of this device; part of every result's id.
    #[serde(default = "default_device_id")]
    pub id: String,
    /// Where the device keeps its state (outbox, compiled-plugin cache).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The whole agent's memory budget, MiB, checked at start (see
    /// [`crate::memory`]); 0 (the default): not checked.
    #[serde(default)]
    pub memory_budget_mb: u64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            id: default_device_id(),
            data_dir: default_data_dir(),
            memory_budget_mb: 0,
        }
    }
}

fn default_device_id() -> String {
    "sluice-device".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("sluice-data")
}

/// `[runtime]`: the plugin engine and the pipeline threads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where compiled plugins (`.cwasm`) are kept; default `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling allocator: `auto` tries it and falls back to
    /// smaller reservations when the machine's address space cannot hold it
    /// (see [`crate::plugin::Allocation`]).
    #[serde(default)]
    pub pooling: Pooling,
    /// Largest model a plugin may load from its own bytes through `wasi:nn`
    /// `load`; 0 (the default) refuses such loads.
    #[serde(default)]
    pub guest_model_max_bytes: usize,
    /// Threads running pipeline batches (plugin calls, waiting for the
    /// scheduler), shared by all pipelines; 0 (the default) = one per core,
    /// at most [`RuntimeConfig::MAX_WORKERS`]. Each plugin may have this many
    /// instances busy at once.
    #[serde(default)]
    pub workers: usize,
    /// The onnxruntime shared library for models with `engine =
    /// "onnxruntime"` or `"auto"` in builds with the `onnxruntime` feature;
    /// default: the path in `ORT_DYLIB_PATH`.
    pub onnxruntime_library: Option<PathBuf>,
}

impl RuntimeConfig {
    /// The most pipeline threads a configuration may ask for.
    pub const MAX_WORKERS: usize = 256;

    /// `workers`, with 0 resolved to the number of cores.
    pub fn resolved_workers(&self) -> usize {
        match self.workers {
            0 => sluice_types::available_cores().min(Self::MAX_WORKERS),
            n => n,
        }
    }
}

/// `runtime.pooling`: whether plugin instances come from wasmtime's pooling
/// allocator (fast instantiation, a large address-space reservation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Pooling {
    /// A pool of wide memories if the address space allows, else a pool of
    /// compact ones, else compact memories on demand
    /// ([`crate::plugin::Allocation`]).
    #[default]
    Auto,
    /// One of the two pools; if neither fits, the engine does not start.
    On,
    /// Wide memories, each reserved when an instance is made.
    Off,
}

/// One plugin: a WebAssembly component and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the `.wasm` component, or `bundled:NAME` for a plugin shipped
    /// inside the `sluice` binary.
    pub path: PluginSource,
    /// Wall-clock budget of one call into the plugin (one batch).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear-memory cap of one instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// The plugin's own configuration, handed to its `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: toml::Table,
    /// What the plugin may touch. Nothing by default.
    #[serde(default)]
    pub grants: Grants,
}

/// Where a plugin's component comes from: `bundled:NAME` (shipped inside
/// the binary) or a path to a `.wasm` file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginSource {
    /// A plugin shipped inside the binary, by name.
    Bundled(String),
    /// A component file.
    File(PathBuf),
}

impl PluginSource {
    /// The prefix of bundled plugins' paths.
    pub const BUNDLED_PREFIX: &str = "bundled:";

    /// `bundled:NAME` or a file path.
    pub fn parse(text: &str) -> PluginSource {
        match text.strip_prefix(Self::BUNDLED_PREFIX) {
            Some(name) => PluginSource::Bundled(name.to_owned()),
            None => PluginSource::File(PathBuf::from(text)),
        }
    }
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Bundled(name) => write!(f, "{}{name}", Self::BUNDLED_PREFIX),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for PluginSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|text| PluginSource::parse(&text))
    }
}

fn default_timeout_ms() -> u64 {
    1_000
}

fn default_memory_mb() -> u64 {
    64
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

impl PluginConfig {
    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `memory_mb` in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize).saturating_mul(1 << 20)
    }
}

/// Capabilities granted to a plugin. The default grants nothing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Host directories the plugin may see, read-only unless `writable`.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Environment variables the plugin sees, with their values.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Log what the plugin writes to stdout and stderr (one event per line,
    /// with its name; never to the host's own stdout).
    #[serde(default)]
    pub stdio: bool,
    /// Socket addresses (`ip:port`) the plugin may connect to or bind.
    #[serde(default)]
    pub network: Vec<std::net::SocketAddr>,
}

impl Grants {
    /// Whether nothing at all is granted.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.env.is_empty() && !self.stdio && self.network.is_empty()
    }
}

/// A host directory a plugin may see.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/model`.
    pub guest: String,
    /// Whether the plugin may write there (default: read-only).
    #[serde(default)]
    pub writable: bool,
}

/// One ONNX model served by the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model file.
    pub path: PathBuf,
    /// The inference engine that runs it: one of [`crate::infer::ENGINES`],
    /// or `auto` (the fastest of them that agrees with tract, measured at
    /// first start and remembered; see `sluice model inspect`); default
    /// `tract`.
    #[serde(default = "default_engine")]
    pub engine: String,
    /// Expected SHA-256 of the file, hex; a mismatch refuses the model.
    pub sha256: Option<String>,
    /// Dimensions after the batch axis for inputs the model leaves open,
    /// e.g. `input_shapes.x = [3, 48, 192]`.
    #[serde(default)]
    pub input_shapes: crate::infer::InputShapes,
    /// How requests for this model are batched.
    #[serde(default)]
    pub batching: crate::schedule::BatchConfig,
    /// Its reference profile for drift detection (`sluice model profile`);
    /// default `<path>.profile.json`. Without one, no drift is watched.
    pub profile: Option<PathBuf>,
}

impl ModelConfig {
    /// Where its drift profile is: `profile`, or beside the model file.
    pub fn profile_path(&self) -> PathBuf {
        self.profile
            .clone()
            .unwrap_or_else(|| crate::drift::default_profile_path(&self.path))
    }
}

fn default_engine() -> String {
    crate::infer::DEFAULT_ENGINE.to_owned()
}

/// A pipeline: preprocess plugin -> model -> postprocess plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The preprocessing plugin, by its name under `[plugins]`.
    pub preprocess: String,
    /// The model, by its name under `[models]`.
    pub model: String,
    /// The postprocessing plugin, by its name under `[plugins]`.
    pub postprocess: String,
    /// A real input run through the whole pipeline at start-up: if it fails
    /// (a preprocessor's tensor named or shaped unlike the model's input, a
    /// postprocessor reading an output the model does not have), the
    /// pipeline does not start and the error says why, before any real
    /// input is accepted.
    #[serde(default)]
    pub sample: Option<PathBuf>,
}

/// `[sync]`: shipping results upstream (see [`crate::uplink`]). Without `url`,
/// results stay in the outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The collector's base URL, `http://` or `https://`, e.g. `https://collector.example`.
    pub url: Option<String>,
    /// This device's bearer token.
    pub token: Option<String>,
    /// A file holding the bearer token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Most results in one upload.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Most uncompressed bytes in one upload (a single larger result still goes alone).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Deadline of one upload, connection included.
    #[serde(default = "default_sync_timeout_ms")]
    pub timeout_ms: u64,
    /// First retry delay after a failed upload; doubles per failure, with jitter.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Cap of the retry delay.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// How often an idle uploader looks for new results (it is also woken
    /// when results are stored).
    #[serde(default = "default_sync_interval_ms")]
    pub interval_ms: u64,
    /// zstd level of uploads (1 fast .. 19 small).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// `[sync.mqtt]`: the broker's credentials, TLS and topic prefix, for
    /// an `mqtt://` or `mqtts://` `url`.
    #[serde(default)]
    pub mqtt: Option<sluice_mqtt::Broker>,
    /// What acknowledges a batch sent through MQTT: the collector's answer
    /// (`collector`, the default: stored upstream) or the broker's PUBACK
    /// (`broker`: only when the broker itself is durable).
    #[serde(default)]
    pub mqtt_ack: MqttAck,
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
            batch_max_records: default_batch_max_records(),
            batch_max_bytes: default_batch_max_bytes(),
            timeout_ms: default_sync_timeout_ms(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            interval_ms: default_sync_interval_ms(),
            zstd_level: default_zstd_level(),
            mqtt: None,
            mqtt_ack: MqttAck::Collector,
        }
    }
}

fn default_batch_max_records() -> usize {
    500
}
fn default_batch_max_bytes() -> usize {
    1 << 20
}
fn default_sync_timeout_ms() -> u64 {
    10_000
}
fn default_backoff_initial_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_sync_interval_ms() -> u64 {
    1_000
}
fn default_zstd_level() -> i32 {
    3
}

impl SyncConfig {
    /// The most records one upload may carry (the reference collector's
    /// default limit per batch).
    pub const MAX_BATCH_RECORDS: u64 = 10_000;
    /// The most uncompressed bytes of records one upload may carry (below
    /// the reference collector's default limit, leaving room for the
    /// batch's own fields).
    pub const MAX_BATCH_BYTES: u64 = 16 << 20;

    /// The bearer token, from `token` or `token_file`.
    pub fn bearer_token(&self) -> Result<Option<String>, ConfigError> {
        bearer_token(
            self.token.as_ref(),
            self.token_file.as_ref(),
            "sync.token_file",
        )
    }
}

/// A bearer token given inline or as the first line of a file (`key`).
fn bearer_token(
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

/// `[ingest]`: where `sluice run` takes inputs from (see [`crate::agent`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// A folder watched for input files; each is deleted once durably accepted.
    /// Dot files are ignored: writers should create files under a name
    /// starting with `.` and rename them when complete (otherwise a file is
    /// taken once it stayed unchanged for `settle_ms`).
    pub folder: Option<PathBuf>,
    /// The pipeline for files of `folder`; default: the only pipeline.
    pub folder_pipeline: Option<String>,
    /// How often the folder is scanned.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// A file of `folder` is taken only once its size and modification time
    /// stayed the same for this long, so a file still being written is not
    /// taken half-written. Writers that create files under a dot name and
    /// rename them when complete can set 0.
    #[serde(default = "default_settle_ms")]
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
    #[serde(default)]
    pub insecure_allow_anyone: bool,
    /// HTTP ingest connections open at once, at most; more wait unaccepted.
    #[serde(default = "default_ingest_max_connections")]
    pub max_connections: usize,
    /// HTTP ingest requests reading or storing their body at once, at most;
    /// more are answered `503` at once. Bodies in memory are bounded by this
    /// times `max_input_bytes`.
    #[serde(default = "default_ingest_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Deadline for a request's head (also the idle keep-alive timeout).
    #[serde(default = "default_ingest_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Deadline for a request's body once its head arrived; past it `408`.
    #[serde(default = "default_ingest_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Largest accepted input.
    #[serde(default = "default_max_input_bytes")]
    pub max_input_bytes: usize,
    /// Most bytes of accepted inputs waiting for their pipeline; beyond,
    /// ingest answers 503 and files wait in the folder.
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: u64,
    /// How long an HTTP `Idempotency-Key` is remembered: a retry within this
    /// window gets the first request's id and stores nothing.
    #[serde(default = "default_idempotency_window_secs")]
    pub idempotency_window_secs: u64,
    /// Most idempotency keys remembered (the oldest are forgotten first).
    #[serde(default = "default_idempotency_max_keys")]
    pub idempotency_max_keys: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            folder: None,
            folder_pipeline: None,
            poll_ms: default_poll_ms(),
            settle_ms: default_settle_ms(),
            listen: None,
            token: None,
            token_file: None,
            insecure_allow_anyone: false,
            max_connections: default_ingest_max_connections(),
            max_concurrent_requests: default_ingest_max_concurrent_requests(),
            header_timeout_ms: default_ingest_header_timeout_ms(),
            body_timeout_ms: default_ingest_body_timeout_ms(),
            max_input_bytes: default_max_input_bytes(),
            max_pending_bytes: default_max_pending_bytes(),
            idempotency_window_secs: default_idempotency_window_secs(),
            idempotency_max_keys: default_idempotency_max_keys(),
        }
    }
}

fn default_poll_ms() -> u64 {
    250
}
fn default_settle_ms() -> u64 {
    500
}
fn default_ingest_max_connections() -> usize {
    64
}
fn default_ingest_max_concurrent_requests() -> usize {
    4
}
fn default_ingest_header_timeout_ms() -> u64 {
    10_000
}
fn default_ingest_body_timeout_ms() -> u64 {
    60_000
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
fn default_max_input_bytes() -> usize {
    16 << 20
}
fn default_max_pending_bytes() -> u64 {
    256 << 20
}
fn default_idempotency_window_secs() -> u64 {
    24 * 3600
}
fn default_idempotency_max_keys() -> u64 {
    100_000
}

impl Config {
    /// Read, parse and check a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| e.in_file(path))
    }

    /// [`Config::load`] for running the device (`sluice run`): the file
    /// must configure a pipeline ([`Config::require_pipelines`]). Commands
    /// that only read the device's state (`sluice outbox status`) take any.
    pub fn load_device(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::load(path)?;
        config.require_pipelines().map_err(|e| e.in_file(path))?;
        Ok(config)
    }

    /// Parse configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(ConfigError::Parse)?;
        config.resolve_paths(base);
        config.check().map_err(|e| e.located(text))?;
        Ok(config)
    }

    /// A device's configuration runs at least one pipeline: without one
    /// (an empty file, a file of another program) nothing would ever be
    /// processed, and `sluice run` would start and look healthy.
    pub fn require_pipelines(&self) -> Result<(), ConfigError> {
        if self.pipelines.is_empty() {
            return Err(ConfigError::value(
                "pipelines",
                "no pipeline is configured: add a [pipelines.NAME] with preprocess, model and postprocess (`sluice new` writes a complete example)",
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        };
        resolve(&mut self.device.data_dir);
        if let Some(folder) = &mut self.ingest.folder {
            resolve(folder);
        }
        if let Some(file) = &mut self.sync.token_file {
            resolve(file);
        }
        if let Some(file) = &mut self.ingest.token_file {
            resolve(file);
        }
        if let Some(dir) = &mut self.runtime.cache_dir {
            resolve(dir);
        }
        if let Some(library) = &mut self.runtime.onnxruntime_library {
            resolve(library);
        }
        if let Some(folder) = &mut self.bundles.folder {
            resolve(folder);
        }
        for plugin in self.plugins.values_mut() {
            if let PluginSource::File(path) = &mut plugin.path {
                resolve(path);
            }
            for dir in &mut plugin.grants.dirs {
                resolve(&mut dir.host);
            }
        }
        for pipeline in self.pipelines.values_mut() {
            if let Some(sample) = &mut pipeline.sample {
                resolve(sample);
            }
        }
        for model in self.models.values_mut() {
            resolve(&mut model.path);
            if let Some(profile) = &mut model.profile {
                resolve(profile);
            }
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let value = |key: &str, problem: String| Err(ConfigError::value(key, problem));
        // Every number against its range (`keys::LIMITS`, which
        // `docs/limits.md` is tested against): a value outside it is refused
        // at load, naming the key, never found out by running out of memory
        // or time.
        keys::check(self)?;
        self.check_bundles()?;
        if let Err(e) = sluice_protocol::check_name(&self.device.id) {
            return value("device.id", format!("`{}` {e}", self.device.id));
        }
        // A plugin is loaded once, as one kind: it cannot be a preprocessor
        // in one place and a postprocessor in another.
        let mut roles: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (name, pipeline) in &self.pipelines {
            if let Err(e) = sluice_protocol::check_name(name) {
                return value(&format!("pipelines.{name}"), format!("the name {e}"));
            }
            for (role, plugin) in [
                ("preprocess", &pipeline.preprocess),
                ("postprocess", &pipeline.postprocess),
            ] {
                let key = format!("pipelines.{name}.{role}");
                if !self.plugins.contains_key(plugin) {
                    return value(
                        &key,
                        format!("names plugin `{plugin}`, which is not configured under [plugins]"),
                    );
                }
                match roles.insert(plugin, (role, name)) {
                    Some((other_role, other)) if other_role != role => {
                        return value(
                            &key,
                            format!(
                                "plugin `{plugin}` is already the {other_role} plugin of pipeline `{other}`; a plugin is either a preprocessor or a postprocessor"
                            ),
                        );
                    }
                    _ => {}
                }
            }
            if !self.models.contains_key(&pipeline.model) {
                return value(
                    &format!("pipelines.{name}.model"),
                    format!(
                        "names model `{}`, which is not configured under [models]",
                        pipeline.model
                    ),
                );
            }
        }
        for (name, model) in &self.models {
            if model.engine != crate::infer::AUTO
                && !crate::infer::ENGINES.contains(&model.engine.as_str())
            {
                return value(
                    &format!("models.{name}.engine"),
                    format!(
                        "`{}` is not an engine of this build (engines: {}, or `{}`){}",
                        model.engine,
                        crate::infer::ENGINES.join(", "),
                        crate::infer::AUTO,
                        if model.engine == "onnxruntime" {
                            "; onnxruntime needs a build with `--features onnxruntime`"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        self.check_store_and_forward()
    }

    fn check_store_and_forward(&self) -> Result<(), ConfigError> {
        let value = |key: &str, problem: String| Err(ConfigError::value(key, problem));
        if let Some(url) = &self.sync.url {
            let mqtt = url.starts_with("mqtt://") || url.starts_with("mqtts://");
            if !(url.starts_with("http://") || url.starts_with("https://") || mqtt) {
                return value(
                    "sync.url",
                    format!("`{url}` must start with http://, https://, mqtt:// or mqtts://"),
                );
            }
            if mqtt {
                let broker = self.sync.mqtt.clone().unwrap_or_default();
                if let Err(e) = sluice_mqtt::options(url, &self.device.id, &broker, 1) {
                    return value("sync.mqtt", e.to_string());
                }
            } else if self.sync.mqtt.is_some() {
                return value(
                    "sync.mqtt",
                    format!("is set but sync.url `{url}` is not mqtt:// or mqtts://"),
                );
            }
            if self.sync.token.is_none() && self.sync.token_file.is_none() {
                return value(
                    "sync.url",
                    "is set but neither sync.token nor sync.token_file is".into(),
                );
            }
        }
        if self.sync.token.is_some() && self.sync.token_file.is_some() {
            return value(
                "sync.token",
                "set one of sync.token and sync.token_file, not both".into(),
            );
        }
        if let Some(listen) = &self.ingest.listen {
            let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
                return value(
                    "ingest.listen",
                    format!("`{listen}` is not an ip:port address"),
                );
            };
            let open = self.ingest.token.is_none() && self.ingest.token_file.is_none();
            if !addr.ip().is_loopback() && open && !self.ingest.insecure_allow_anyone {
                return value(
                    "ingest.listen",
                    format!(
                        "`{listen}` is reachable beyond this machine: set ingest.token (or ingest.token_file) so that only clients with it may post inputs, or ingest.insecure_allow_anyone = true"
                    ),
                );
            }
        }
        if self.ingest.token.is_some() && self.ingest.token_file.is_some() {
            return value(
                "ingest.token",
                "set one of ingest.token and ingest.token_file, not both".into(),
            );
        }
        if let Some(pipeline) = &self.ingest.folder_pipeline
            && !self.pipelines.contains_key(pipeline)
        {
            return value(
                "ingest.folder_pipeline",
                format!("names pipeline `{pipeline}`, which is not configured under [pipelines]"),
            );
        }
        Ok(())
    }

    /// What `[bundles]` needs besides numbers in range: keys that parse,
    /// and a source only with a key to check it against.
    fn check_bundles(&self) -> Result<(), ConfigError> {
        let bundles = &self.bundles;
        bundles.trusted()?;
        if bundles.from_collector && self.sync.url.is_none() {
            return Err(ConfigError::value(
                "bundles.from_collector",
                "is set but [sync] has no url: there is no collector to ask",
            ));
        }
        if (bundles.folder.is_some() || bundles.from_collector) && !bundles.enabled() {
            return Err(ConfigError::value(
                "bundles",
                "a source (folder or from_collector) is set but bundles.trusted_keys is empty: no bundle could ever be installed",
            ));
        }
        Ok(())
    }

    /// Where compiled plugins are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.runtime
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.device.data_dir.join("cache"))
    }
}

/// The line of `text` where dotted `key` is written (its value's first
/// line), if it is: a name with a dot in it, or a key given by default, has
/// none. `models.m.input_shapes.x[2]` is looked up as
/// `models.m.input_shapes.x`.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let key = key.split('[').next()?;
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    let span = loop {
        let part = parts.next()?;
        let (_, value) = table.iter().find(|(k, _)| &**k.get_ref() == part)?;
        if parts.peek().is_none() {
            break value.span();
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return None,
        }
    };
    Some(text.get(..span.start)?.matches('\n').count() + 1)
}

/// `base/./x/../y` as `base/y`, lexically (as Cargo does), so that paths in
/// messages read the way a user would write them.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelled_key_is_named_in_the_error() {
        let err = Config::parse(
            "[plugins.pre]\npath = \"x.wasm\"\ntimout_ms = 5\n",
            Path::new("/etc"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("timout_ms"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn drift_bounds_are_checked_naming_the_key() {
        for (text, key) in [
            (
                "[drift]\nfalse_alarm_rate = 0.0\n",
                "drift.false_alarm_rate",
            ),
            (
                "[drift]\nfalse_alarm_rate = 0.9\n",
                "drift.false_alarm_rate",
            ),
            ("[drift]\nwindow_items = 5\n", "drift.window_items"),
            ("[drift]\nwindow_secs = 0\n", "drift.window_secs"),
        ] {
            let err = Config::parse(text, Path::new("/etc"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let config = Config::parse("[drift]\nwindow_items = 200\n", Path::new("/etc")).unwrap();
        assert_eq!(config.drift.window_items, 200);
        assert_eq!(config.drift.window_secs, 3600);
        assert_eq!(config.drift.false_alarm_rate, 0.01);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let config = Config::parse(
            "[plugins.pre]\npath = \"p/pre.wasm\"\n[plugins.pre.grants]\ndirs = [{ host = \"m\", guest = \"/m\" }]\n\
             [plugins.b]\npath = \"bundled:image-preprocess\"\n",
            Path::new("/etc/sluice"),
        )
        .unwrap();
        assert_eq!(
            config.plugins["pre"].path,
            PluginSource::File("/etc/sluice/p/pre.wasm".into())
        );
        assert_eq!(
            config.plugins["pre"].grants.dirs[0].host,
            Path::new("/etc/sluice/m")
        );
        assert_eq!(
            config.plugins["b"].path,
            PluginSource::Bundled("image-preprocess".into())
        );
        assert_eq!(
            config.cache_dir(),
            Path::new("/etc/sluice/sluice-data/cache")
        );
    }

    #[test]
    fn defaults_grant_nothing() {
        let config = Config::parse("[plugins.pre]\npath = \"a.wasm\"\n", Path::new("/")).unwrap();
        let plugin = &config.plugins["pre"];
        assert!(plugin.grants.is_empty());
        assert_eq!(plugin.timeout(), Duration::from_secs(1));
        assert_eq!(plugin.memory_bytes(), 64 << 20);
    }

    #[test]
    fn pipeline_naming_a_missing_plugin_is_refused() {
        let err = Config::parse(
            "[models.m]\npath = \"m.onnx\"\n[pipelines.p]\npreprocess = \"nope\"\nmodel = \"m\"\npostprocess = \"nope\"\n",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pipelines.p.preprocess") && err.contains("`nope`"),
            "{err}"
        );
    }

    #[test]
    fn a_device_id_that_could_pass_for_another_is_refused() {
        for id in ["a/b", "", "gate way"] {
            let err = Config::parse(&format!("[device]\nid = {id:?}\n"), Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("device.id"), "{id:?}: {err}");
        }
    }

    #[test]
    fn a_plugin_cannot_be_both_preprocessor_and_postprocessor() {
        let err = Config::parse(
            "[plugins.p]\npath = \"p.wasm\"\n[models.m]\npath = \"m.onnx\"\n\
             [pipelines.x]\npreprocess = \"p\"\nmodel = \"m\"\npostprocess = \"p\"\n",
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pipelines.x.postprocess") && err.contains("already the preprocess"),
            "{err}"
        );
    }

    #[test]
    fn every_number_out_of_its_range_is_refused_naming_the_key() {
        let model = "[models.m]\npath = \"m.onnx\"\n[models.m.batching]\n";
        for (text, key) in [
            (
                format!("{model}max_batch_size = 100000000\n"),
                "models.m.batching.max_batch_size",
            ),
            (
                format!("{model}max_batch_size = 0\n"),
                "models.m.batching.max_batch_size",
            ),
            (
                format!("{model}queue_capacity = 0\n"),
                "models.m.batching.queue_capacity",
            ),
            (
                format!("{model}max_batch_size = 64\nqueue_capacity = 63\n"),
                "models.m.batching.queue_capacity",
            ),
            (
                format!("{model}request_timeout_ms = 0\n"),
                "models.m.batching.request_timeout_ms",
            ),
            (
                "[plugins.p]\npath = \"p.wasm\"\nmemory_mb = 1000000\n".into(),
                "plugins.p.memory_mb",
            ),
            (
                "[plugins.p]\npath = \"p.wasm\"\ntimeout_ms = 0\n".into(),
                "plugins.p.timeout_ms",
            ),
            ("[outbox]\nmax_bytes = 0\n".into(), "outbox.max_bytes"),
            (
                "[sync]\nbatch_max_records = 1000000\n".into(),
                "sync.batch_max_records",
            ),
            ("[sync]\nzstd_level = -5\n".into(), "sync.zstd_level"),
            (
                "[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 10\n".into(),
                "sync.backoff_max_ms",
            ),
            (
                "[ingest]\nmax_input_bytes = 100\nmax_pending_bytes = 99\n".into(),
                "ingest.max_pending_bytes",
            ),
            ("[runtime]\nworkers = 100000\n".into(), "runtime.workers"),
        ] {
            let err = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("outside the allowed range"),
                "{text}: {err}"
            );
        }
        let fine = format!("{model}max_batch_size = 64\nqueue_capacity = 64\n");
        Config::parse(&fine, Path::new("/")).unwrap();
    }

    #[test]
    fn a_config_file_without_pipelines_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", "[device]\nid = \"gw-1\"\n"] {
            let path = dir.path().join("sluice.toml");
            std::fs::write(&path, text).unwrap();
            let err = Config::load_device(&path).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string())
                    && err.contains("pipelines: no pipeline is configured"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn ingest_beyond_loopback_needs_a_token_or_an_explicit_opt_out() {
        let err = Config::parse("[ingest]\nlisten = \"0.0.0.0:8470\"\n", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ingest.listen") && err.contains("ingest.token"),
            "{err}"
        );
        for fine in [
            "[ingest]\nlisten = \"127.0.0.1:8470\"\n",
            "[ingest]\nlisten = \"[::1]:8470\"\n",
            "[ingest]\nlisten = \"0.0.0.0:8470\"\ntoken = \"s\"\n",
            "[ingest]\nlisten = \"0.0.0.0:8470\"\ninsecure_allow_anyone = true\n",
        ] {
            Config::parse(fine, Path::new("/")).unwrap();
        }
    }
}
