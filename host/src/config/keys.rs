//! Every number of the configuration file in one table ([`LIMITS`]): its
//! key, unit, default, range and meaning. The loader checks each value
//! against it ([`check`]); `docs/limits.md` is tested against it (every key
//! of the table is documented there with the same range and default, and
//! every range documented there is a key of the table); and a test walks
//! the configuration's types to make sure that every number they hold is in
//! the table. So a key cannot be documented without being checked, nor
//! checked differently from what is documented.
//!
//! A range's end may be another key of the same section (plus a margin):
//! that is how relations between keys are checked, and the refusal names
//! both keys.

use super::{Config, ConsumerConfig, PluginConfig, RuntimeConfig, SyncConfig};
use crate::error::ConfigError;
use crate::schedule::BatchConfig;

/// What a number counts, for messages and documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unit {
    /// Bytes (shown in B, KiB, MiB, GiB, TiB).
    Bytes,
    /// MiB (shown like bytes).
    Mib,
    /// Milliseconds (shown in ms, s, min, h).
    Ms,
    /// Seconds (shown in s, min, h, days, years).
    Secs,
    /// A plain count or level.
    Count,
    /// A fraction or a probability.
    Ratio,
}

/// A number of the configuration: the integers are exact.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Number {
    /// An integer key.
    Int(i128),
    /// A floating-point key.
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Int(v) => v as f64,
            Number::Float(v) => v,
        }
    }

    /// `self + plus`, for a bound "another key plus a margin".
    fn plus(self, plus: i128) -> Number {
        match self {
            Number::Int(v) => Number::Int(v.saturating_add(plus)),
            Number::Float(v) => Number::Float(v + plus as f64),
        }
    }

    /// `lo <= self <= hi`; false for NaN.
    pub(crate) fn within(self, lo: Number, hi: Number) -> bool {
        match (self, lo, hi) {
            (Number::Int(v), Number::Int(lo), Number::Int(hi)) => (lo..=hi).contains(&v),
            _ => (lo.as_f64()..=hi.as_f64()).contains(&self.as_f64()),
        }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Int(v) => write!(f, "{v}"),
            Number::Float(v) => write!(f, "{v}"),
        }
    }
}

/// One end of a key's range.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Bound {
    /// A fixed number.
    Is(Number),
    /// The value of another key of the same section (its last part, e.g.
    /// `max_queue_delay_ms`), plus a margin in the same unit.
    Key(&'static str, i128),
}

/// One numeric key of the configuration.
#[derive(Debug)]
pub struct Limit {
    /// The dotted key; `NAME` stands for a plugin's or model's name, `INPUT`
    /// for a model input's name.
    pub key: &'static str,
    /// What it counts.
    pub unit: Unit,
    /// Its default (`None`: the key has none, e.g. a list's items).
    pub default: Option<Number>,
    /// The least value allowed.
    pub min: Bound,
    /// The largest value allowed.
    pub max: Bound,
    /// What 0 means, when it means something other than nothing of it.
    pub zero: Option<&'static str>,
    /// What it bounds, in a few words.
    pub meaning: &'static str,
    /// Its values in a configuration, each under its full key (one per
    /// plugin or model for `NAME` keys).
    pub values: fn(&Config) -> Vec<(String, Number)>,
}

const KIB: i128 = 1 << 10;
const MIB: i128 = 1 << 20;
const GIB: i128 = 1 << 30;
const TIB: i128 = 1 << 40;
const SECOND_MS: i128 = 1_000;
const MINUTE_MS: i128 = 60 * SECOND_MS;
const HOUR_MS: i128 = 60 * MINUTE_MS;
const DAY_SECS: i128 = 24 * 3600;

/// How much longer than `max_queue_delay_ms` a model's `request_timeout_ms`
/// must be. A timeout at or below the delay asks a request to wait longer
/// for company than for its turn, which no configuration means (and while
/// the scheduler counted the wait for company, such a pair timed out every
/// request that came alone: a pipeline livelocked on its own journal); the
/// margin is for the run of the batch ahead.
pub const REQUEST_TIMEOUT_MARGIN_MS: i128 = 10;

const fn int(v: i128) -> Bound {
    Bound::Is(Number::Int(v))
}

const fn float(v: f64) -> Bound {
    Bound::Is(Number::Float(v))
}

fn per_plugin(c: &Config, field: &str, get: fn(&PluginConfig) -> u64) -> Vec<(String, Number)> {
    let key = |name| format!("plugins.{name}.{field}");
    c.plugins
        .iter()
        .map(|(name, p)| (key(name), Number::Int(get(p).into())))
        .collect()
}

fn per_consumer(
    c: &Config,
    field: &str,
    get: fn(&ConsumerConfig) -> Option<u64>,
) -> Vec<(String, Number)> {
    c.consumers
        .iter()
        .filter_map(|(name, consumer)| {
            Some((
                format!("consumers.{name}.{field}"),
                Number::Int(get(consumer)?.into()),
            ))
        })
        .collect()
}

fn per_model(c: &Config, field: &str, get: fn(&BatchConfig) -> u64) -> Vec<(String, Number)> {
    let key = |name| format!("models.{name}.batching.{field}");
    c.models
        .iter()
        .map(|(name, m)| (key(name), Number::Int(get(&m.batching).into())))
        .collect()
}

fn input_dims(c: &Config) -> Vec<(String, Number)> {
    let mut out = Vec::new();
    for (name, model) in &c.models {
        for (input, dims) in &model.input_shapes {
            let key = format!("models.{name}.input_shapes.{input}");
            out.extend(dims.iter().map(|&d| (key.clone(), Number::Int(d as i128))));
        }
    }
    out
}

/// One row of [`LIMITS`]: `key, unit, default, min, max, what 0 means,
/// meaning`, then its value (`|config| number`) or values (`each fn`).
/// Braces keep a row on the lines it is written on.
macro_rules! limit {
    ($key:literal, $unit:ident, $default:expr, $min:expr, $max:expr, $zero:expr, $meaning:literal,
     |$c:ident| $value:expr) => {
        limit! { $key, $unit, $default, $min, $max, $zero, $meaning,
        each |$c: &Config| vec![($key.to_owned(), Number::from($value))] }
    };
    ($key:literal, $unit:ident, $default:expr, $min:expr, $max:expr, $zero:expr, $meaning:literal,
     each $values:expr) => {
        Limit {
            key: $key,
            unit: Unit::$unit,
            default: $default,
            min: $min,
            max: $max,
            zero: $zero,
            meaning: $meaning,
            values: $values,
        }
    };
}

impl From<u64> for Number {
    fn from(v: u64) -> Number {
        Number::Int(v.into())
    }
}

impl From<usize> for Number {
    fn from(v: usize) -> Number {
        Number::Int(v as i128)
    }
}

impl From<i32> for Number {
    fn from(v: i32) -> Number {
        Number::Int(v.into())
    }
}

impl From<f64> for Number {
    fn from(v: f64) -> Number {
        Number::Float(v)
    }
}

const fn d(v: i128) -> Option<Number> {
    Some(Number::Int(v))
}

const WORKERS: i128 = RuntimeConfig::MAX_WORKERS as i128;

/// Every number of the configuration, with its range.
#[rustfmt::skip]
pub static LIMITS: &[Limit] = &[
    limit! { "device.memory_budget_mb", Mib, d(0), int(0), int(MIB), Some("not checked"),
        "the whole agent's memory, checked at start", |c| c.device.memory_budget_mb },
    limit! { "runtime.workers", Count, d(0), int(0), int(WORKERS), Some("one per core"),
        "threads running pipeline batches", |c| c.runtime.workers },
    limit! { "runtime.cache_max_mb", Mib, d(1024), int(16), int(MIB), None,
        "compiled plugins kept in the cache", |c| c.runtime.cache_max_bytes() >> 20 },
    limit! { "runtime.guest_model_max_bytes", Bytes, d(0), int(0), int(GIB), Some("refused"),
        "a model a plugin loads itself through wasi:nn", |c| c.runtime.guest_model_max_bytes },
    limit! { "plugins.NAME.timeout_ms", Ms, d(SECOND_MS), int(1), int(10 * MINUTE_MS), None,
        "one plugin call (a batch)", each |c| per_plugin(c, "timeout_ms", |p| p.timeout_ms) },
    limit! { "plugins.NAME.memory_mb", Mib, d(64), int(1), int(4 * KIB), None,
        "a plugin instance's linear memory", each |c| per_plugin(c, "memory_mb", |p| p.memory_mb) },
    limit! { "models.NAME.batching.max_batch_size", Count, d(32), int(1), int(BatchConfig::MAX_BATCH_SIZE as i128), None,
        "items per inference batch", each |c| per_model(c, "max_batch_size", |b| b.max_batch_size as u64) },
    limit! { "models.NAME.batching.max_queue_delay_ms", Ms, d(5), int(0), int(MINUTE_MS), None,
        "how long a wasi:nn call's batch waits to fill", each |c| per_model(c, "max_queue_delay_ms", |b| b.max_queue_delay_ms) },
    // Below the batch size a full batch could never be queued, and every
    // item past it would wait for capacity.
    limit! { "models.NAME.batching.queue_capacity", Count, d(1024), Bound::Key("max_batch_size", 0), int(1_000_000), None,
        "items admitted to a model at once", each |c| per_model(c, "queue_capacity", |b| b.queue_capacity as u64) },
    limit! { "models.NAME.batching.request_timeout_ms", Ms, d(10 * SECOND_MS),
        Bound::Key("max_queue_delay_ms", REQUEST_TIMEOUT_MARGIN_MS), int(HOUR_MS), None,
        "a wasi:nn call's wait in the model's queue", each |c| per_model(c, "request_timeout_ms", |b| b.request_timeout_ms) },
    limit! { "models.NAME.batching.threads", Count, d(0), int(0), int(WORKERS), Some("all cores"),
        "inference threads of a model", each |c| per_model(c, "threads", |b| b.threads as u64) },
    limit! { "models.NAME.input_shapes.INPUT", Count, None, int(1), int(MAX_INPUT_DIM), None,
        "a dimension the configuration gives a model input", each input_dims },
    limit! { "outbox.max_bytes", Bytes, d(256 * MIB), int(64 * KIB), int(TIB), None,
        "pending results", |c| c.outbox.max_bytes },
    limit! { "outbox.max_age_secs", Secs, d(7 * DAY_SECS), int(0), int(3650 * DAY_SECS), Some("none"),
        "age of a pending or set-aside result", |c| c.outbox.max_age_secs },
    limit! { "outbox.max_set_aside_bytes", Bytes, d(16 * MIB), int(0), int(TIB), None,
        "results the collector refused, kept aside", |c| c.outbox.max_set_aside_bytes },
    limit! { "outbox.disk_reserve_bytes", Bytes, d(4 * MIB), int(0), int(GIB), Some("none"),
        "disk kept so that acknowledgements can always delete", |c| c.outbox.disk_reserve_bytes },
    limit! { "outbox.local_max_bytes", Bytes, d(16 * MIB), int(0), int(TIB), Some("none"),
        "results kept for the device's own readers (GET /v1/results)", |c| c.outbox.local_max_bytes },
    limit! { "outbox.local_max_age_secs", Secs, d(3600), int(0), int(3650 * DAY_SECS), Some("none"),
        "age of a result kept for the device's own readers", |c| c.outbox.local_max_age_secs },
    limit! { "sync.batch_max_records", Count, d(500), int(1), int(SyncConfig::MAX_BATCH_RECORDS as i128), None,
        "records per upload", |c| c.sync.batch_max_records },
    limit! { "sync.batch_max_bytes", Bytes, d(MIB), int(KIB), int(SyncConfig::MAX_BATCH_BYTES as i128), None,
        "uncompressed bytes per upload", |c| c.sync.batch_max_bytes },
    limit! { "sync.timeout_ms", Ms, d(10 * SECOND_MS), int(100), int(10 * MINUTE_MS), None,
        "one upload, connection included", |c| c.sync.timeout_ms },
    limit! { "sync.backoff_initial_ms", Ms, d(500), int(1), int(HOUR_MS), None,
        "first retry delay", |c| c.sync.backoff_initial_ms },
    limit! { "sync.backoff_max_ms", Ms, d(MINUTE_MS), Bound::Key("backoff_initial_ms", 0), int(24 * HOUR_MS), None,
        "longest retry delay", |c| c.sync.backoff_max_ms },
    limit! { "sync.interval_ms", Ms, d(SECOND_MS), int(1), int(HOUR_MS), None,
        "idle look for new results", |c| c.sync.interval_ms },
    limit! { "sync.zstd_level", Count, d(3), int(1), int(19), None,
        "zstd level of uploads", |c| c.sync.zstd_level },
    // The MQTT keep-alive travels as 16 bits of seconds.
    limit! { "sync.mqtt.keep_alive_secs", Secs, d(30), int(5), int(u16::MAX as i128), None,
        "MQTT keep-alive", each |c| c.sync.mqtt.iter()
            .map(|m| ("sync.mqtt.keep_alive_secs".to_owned(), m.keep_alive_secs.into())).collect() },
    limit! { "ingest.poll_ms", Ms, d(250), int(1), int(10 * MINUTE_MS), None,
        "folder scan interval", |c| c.ingest.poll_ms },
    limit! { "ingest.settle_ms", Ms, d(500), int(0), int(10 * MINUTE_MS), None,
        "a folder file is taken once unchanged for", |c| c.ingest.settle_ms },
    limit! { "admin.max_connections", Count, d(16), int(1), int(65_536), None,
        "admin endpoint connections open", |c| c.admin.max_connections },
    limit! { "admin.header_timeout_ms", Ms, d(10 * SECOND_MS), int(100), int(10 * MINUTE_MS), None,
        "admin request head, and idle keep-alive", |c| c.admin.header_timeout_ms },
    limit! { "ingest.max_connections", Count, d(64), int(1), int(65_536), None,
        "HTTP connections open", |c| c.ingest.max_connections },
    limit! { "ingest.max_concurrent_requests", Count, d(4), int(1), int(1024), None,
        "HTTP bodies being read or stored at once", |c| c.ingest.max_concurrent_requests },
    limit! { "ingest.header_timeout_ms", Ms, d(10 * SECOND_MS), int(100), int(10 * MINUTE_MS), None,
        "HTTP request head, and idle keep-alive", |c| c.ingest.header_timeout_ms },
    limit! { "ingest.body_timeout_ms", Ms, d(MINUTE_MS), int(100), int(HOUR_MS), None,
        "HTTP body", |c| c.ingest.body_timeout_ms },
    limit! { "ingest.infer_timeout_ms", Ms, d(10 * SECOND_MS), int(1), int(10 * MINUTE_MS), None,
        "a synchronous call's wait for its result", |c| c.ingest.infer_timeout_ms },
    limit! { "ingest.max_waiting_calls", Count, d(64), int(1), int(65_536), None,
        "synchronous calls waiting for their result", |c| c.ingest.max_waiting_calls },
    limit! { "ingest.mqtt.max_inflight", Count, d(16), int(1), int(65_535), None,
        "MQTT messages the local broker may send before their acknowledgement",
        each |c| c.ingest.mqtt.iter().map(|m| ("ingest.mqtt.max_inflight".to_owned(), Number::from(m.max_inflight as u64))).collect() },
    limit! { "ingest.mqtt.broker.keep_alive_secs", Secs, d(30), int(5), int(u16::MAX as i128), None,
        "a dead connection to the local broker is noticed within about 1.5 times this",
        each |c| c.ingest.mqtt.iter().map(|m| ("ingest.mqtt.broker.keep_alive_secs".to_owned(), m.broker.keep_alive_secs.into())).collect() },
    limit! { "ingest.mqtt.topics.qos", Count, d(1), int(0), int(2), None,
        "the QoS of a subscription to the local broker",
        each |c| c.ingest.mqtt.iter().flat_map(|m| m.topics.iter()).map(|t| ("ingest.mqtt.topics.qos".to_owned(), Number::from(t.qos as u64))).collect() },
    limit! { "consumers.NAME.max_backoff_ms", Ms, d(30 * SECOND_MS), int(100), int(HOUR_MS), None,
        "the longest wait between two attempts to deliver to a local consumer",
        each |c| per_consumer(c, "max_backoff_ms", |c| Some(c.max_backoff_ms)) },
    limit! { "consumers.NAME.mqtt.ack_timeout_ms", Ms, d(10 * SECOND_MS), int(1), int(10 * MINUTE_MS), None,
        "a result published to a local broker waits for its PUBACK",
        each |c| per_consumer(c, "mqtt.ack_timeout_ms", |c| c.mqtt.as_ref().map(|m| m.ack_timeout_ms)) },
    limit! { "consumers.NAME.mqtt.broker.keep_alive_secs", Secs, d(30), int(5), int(u16::MAX as i128), None,
        "a dead connection of a local consumer's broker is noticed within about 1.5 times this",
        each |c| per_consumer(c, "mqtt.broker.keep_alive_secs", |c| c.mqtt.as_ref().map(|m| m.broker.keep_alive_secs)) },
    limit! { "consumers.NAME.webhook.timeout_ms", Ms, d(5 * SECOND_MS), int(1), int(10 * MINUTE_MS), None,
        "one request to a local web hook",
        each |c| per_consumer(c, "webhook.timeout_ms", |c| c.webhook.as_ref().map(|w| w.timeout_ms)) },
    limit! { "ingest.max_input_bytes", Bytes, d(16 * MIB), int(1), int(GIB), None,
        "one input", |c| c.ingest.max_input_bytes },
    limit! { "ingest.max_pending_bytes", Bytes, d(256 * MIB), Bound::Key("max_input_bytes", 0), int(TIB), None,
        "inputs waiting for their pipeline", |c| c.ingest.max_pending_bytes },
    limit! { "ingest.idempotency_window_secs", Secs, d(DAY_SECS), int(0), int(30 * DAY_SECS), None,
        "how long an idempotency key is remembered", |c| c.ingest.idempotency_window_secs },
    limit! { "ingest.idempotency_max_keys", Count, d(100_000), int(0), int(10_000_000), None,
        "idempotency keys remembered", |c| c.ingest.idempotency_max_keys },
    // Below 10 items a window's histograms say nothing; the memory of a
    // window does not grow with its items (counts per bin).
    limit! { "drift.window_items", Count, d(500), int(10), int(10_000_000), None,
        "items per drift window", |c| c.drift.window_items },
    limit! { "drift.window_secs", Secs, d(3600), int(1), int(30 * DAY_SECS), None,
        "time per drift window", |c| c.drift.window_secs },
    // Above one half an "alarm" would be mostly noise; zero would mean
    // infinite thresholds.
    limit! { "drift.false_alarm_rate", Ratio, Some(Number::Float(0.01)), float(1e-9), float(0.5), None,
        "false alarms per drift window", |c| c.drift.false_alarm_rate },
    limit! { "bundles.collector_poll_secs", Secs, d(60), int(1), int(DAY_SECS), None,
        "how often the collector is asked for a bundle", |c| c.bundles.collector_poll_secs },
    limit! { "bundles.poll_ms", Ms, d(2 * SECOND_MS), int(10), int(10 * MINUTE_MS), None,
        "how often the drop folder and a version on probation are looked at", |c| c.bundles.poll_ms },
    limit! { "bundles.settle_ms", Ms, d(SECOND_MS), int(0), int(10 * MINUTE_MS), None,
        "a dropped bundle file is taken once unchanged for", |c| c.bundles.settle_ms },
    limit! { "bundles.probation_secs", Secs, d(300), int(0), int(30 * DAY_SECS), None,
        "how long a new version is watched", |c| c.bundles.probation_secs },
    limit! { "bundles.probation_min_items", Count, d(20), int(1), int(10_000_000), None,
        "items a new version processes before it is judged", |c| c.bundles.probation_min_items },
    limit! { "bundles.probation_max_error_rate", Ratio, Some(Number::Float(0.05)), float(0.0), float(1.0), None,
        "share of failing items that rolls a new version back", |c| c.bundles.probation_max_error_rate },
];

/// The largest dimension `models.NAME.input_shapes` may give.
pub const MAX_INPUT_DIM: i128 = 1 << 20;

/// Every number of `config`: its limit, full key and value.
pub fn values(config: &Config) -> Vec<(&'static Limit, String, Number)> {
    LIMITS
        .iter()
        .flat_map(|limit| {
            (limit.values)(config)
                .into_iter()
                .map(move |(key, value)| (limit, key, value))
        })
        .collect()
}

/// The full key of `field` in the section of `key`.
fn sibling(key: &str, field: &str) -> String {
    match key.rsplit_once('.') {
        Some((section, _)) => format!("{section}.{field}"),
        None => field.to_owned(),
    }
}

/// The range of `key` (a full key of `limit`) in a configuration whose
/// numbers are `all`.
pub fn range(
    limit: &Limit,
    key: &str,
    all: &[(&'static Limit, String, Number)],
) -> (Number, Number) {
    let resolve = |bound: Bound| match bound {
        Bound::Is(n) => n,
        Bound::Key(field, plus) => {
            let other = sibling(key, field);
            all.iter()
                .find(|(_, k, _)| *k == other)
                .map(|(_, _, v)| v.plus(plus))
                .expect("a bound names a key of the same section")
        }
    };
    (resolve(limit.min), resolve(limit.max))
}

/// Check every number of `config` against its range; the refusal names the
/// key, the value and the range (and the other key, for a relation).
pub(crate) fn check(config: &Config) -> Result<(), ConfigError> {
    let all = values(config);
    for (limit, key, value) in &all {
        let (lo, hi) = range(limit, key, &all);
        if value.within(lo, hi) {
            continue;
        }
        let unit = match limit.unit {
            Unit::Bytes => " bytes",
            Unit::Mib => " MiB",
            Unit::Ms => " ms",
            Unit::Secs => " s",
            Unit::Count | Unit::Ratio => "",
        };
        let mut problem = format!("{value} is outside the allowed range {lo}..={hi}{unit}");
        let human = |b: Bound, n: Number| match b {
            Bound::Key(field, plus) => {
                let other = sibling(key, field);
                let margin = if plus == 0 {
                    String::new()
                } else {
                    format!(" + {}", show(limit.unit, Number::Int(plus)))
                };
                format!("{other}{margin}")
            }
            Bound::Is(_) => show(limit.unit, n),
        };
        problem.push_str(&format!(
            " ({} .. {})",
            human(limit.min, lo),
            human(limit.max, hi)
        ));
        return Err(ConfigError::value(key.as_str(), problem));
    }
    Ok(())
}

/// `n` as people read it: `64 KiB`, `10 min`, `30 days`, `10 000`.
pub fn show(unit: Unit, n: Number) -> String {
    let v = match n {
        Number::Float(v) if v != 0.0 && v.abs() < 1e-4 => return format!("{v:e}"),
        Number::Float(v) => return format!("{v}"),
        Number::Int(v) => v,
    };
    if v == 0 {
        return "0".into();
    }
    let scaled = |units: &[(i128, &str)]| {
        let (size, name) = units
            .iter()
            .find(|(size, _)| v % size == 0)
            .copied()
            .unwrap_or(*units.last().expect("units"));
        format!("{} {name}", grouped(v / size))
    };
    match unit {
        Unit::Bytes => scaled(&[
            (TIB, "TiB"),
            (GIB, "GiB"),
            (MIB, "MiB"),
            (KIB, "KiB"),
            (1, "B"),
        ]),
        Unit::Mib => show(Unit::Bytes, Number::Int(v.saturating_mul(MIB))),
        Unit::Ms => scaled(&[
            (HOUR_MS, "h"),
            (MINUTE_MS, "min"),
            (SECOND_MS, "s"),
            (1, "ms"),
        ]),
        Unit::Secs if v % (365 * DAY_SECS) == 0 => plural(v / (365 * DAY_SECS), "year"),
        Unit::Secs if v % DAY_SECS == 0 => plural(v / DAY_SECS, "day"),
        Unit::Secs => scaled(&[(3600, "h"), (60, "min"), (1, "s")]),
        Unit::Count | Unit::Ratio => grouped(v),
    }
}

fn plural(n: i128, unit: &str) -> String {
    format!("{} {unit}{}", grouped(n), if n == 1 { "" } else { "s" })
}

/// `10000` as `10 000`; numbers under five digits as they are (`4096`).
fn grouped(v: i128) -> String {
    let digits = v.unsigned_abs().to_string();
    if digits.len() < 5 {
        return v.to_string();
    }
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// The range of `limit` as `docs/limits.md` writes it after the key:
/// `1 ms .. 10 min`, `0 = one per core .. 256`, `` `max_input_bytes` .. 1 TiB ``.
pub fn documented_range(limit: &Limit) -> String {
    let end = |b: Bound| match b {
        Bound::Is(n) => {
            let shown = show(limit.unit, n);
            match limit.zero {
                Some(meaning) if shown == "0" => format!("0 = {meaning}"),
                _ => shown,
            }
        }
        Bound::Key(field, 0) => format!("`{field}`"),
        Bound::Key(field, plus) => {
            format!("`{field}` + {}", show(limit.unit, Number::Int(plus)))
        }
    };
    format!("{} .. {}", end(limit.min), end(limit.max))
}

/// The default of `limit` as `docs/limits.md` writes it in the row's
/// default column: what 0 means, or the number as people read it.
pub fn documented_default(limit: &Limit) -> Option<String> {
    let shown = show(limit.unit, limit.default?);
    Some(match limit.zero {
        Some(meaning) if shown == "0" => meaning.to_owned(),
        _ => shown,
    })
}
