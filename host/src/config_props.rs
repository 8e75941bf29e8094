//! Property tests (bounded fuzzing on stable) of configuration loading:
//! TOML documents made of the real sections and keys with arbitrary values
//! (and arbitrary text) given to [`Config::parse`] never panic; whatever is
//! accepted keeps the documented invariants (every number within its range
//! of `config::keys::LIMITS`, which `docs/limits.md` is tested against, pipelines naming configured plugins and models, a
//! device id that passes `check_name`, the numbers as written); whatever is
//! refused says where (a dotted key of the document, or a line).
//!
//! `PROPTEST_CASES=100000 cargo test -p sluice --lib config_props` runs
//! longer (see `docs/fuzzing.md`).

use crate::config::keys::{self, Bound, LIMITS, Limit, Number};
use crate::config::{Config, PluginSource};
use crate::error::ConfigError;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;
use toml::{Table, Value};

/// Cases: `PROPTEST_CASES` if set (longer runs), else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Integers near every range boundary, and anything.
fn integers() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => prop::sample::select(vec![
            -1i64, 0, 1, 2, 5, 19, 20, 63, 64, 99, 100, 256, 257, 1024, 4096, 4097, 10_000,
            10_001, 65_536, 600_000, 600_001, 3_600_000, 3_600_001, 10_000_000, 10_000_001,
            16 << 20, (16 << 20) + 1, 1 << 30, (1 << 30) + 1, 1 << 40, (1 << 40) + 1,
            2_592_000, 315_360_000, i64::MAX, i64::MIN,
        ]),
        2 => 0i64..2000,
        1 => any::<i64>(),
    ]
}

/// Names of plugins, models and pipelines: a few that refer to each other,
/// and some that are not names at all.
fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "m", "p"]).prop_map(str::to_owned),
        1 => "[A-Za-z0-9._/ -]{0,6}",
    ]
}

fn strings() -> impl Strategy<Value = String> {
    prop_oneof![
        names(),
        Just("gw-1".to_owned()),
        Just("127.0.0.1:0".to_owned()),
        Just("[::1]:8080".to_owned()),
        Just("http://collector:8080".to_owned()),
        Just("https://c.example".to_owned()),
        Just("bundled:image-preprocess".to_owned()),
        Just("x.wasm".to_owned()),
        Just("tract".to_owned()),
        Just("auto".to_owned()),
        Just("on".to_owned()),
        Just("drop-oldest".to_owned()),
        Just("reject-new".to_owned()),
        Just("stacked".to_owned()),
        ".{0,12}",
    ]
}

fn values() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => integers().prop_map(Value::Integer),
        3 => strings().prop_map(Value::String),
        1 => any::<bool>().prop_map(Value::Boolean),
        1 => (-1e3f64..1e3).prop_map(Value::Float),
        1 => prop::collection::vec(integers().prop_map(Value::Integer), 0..3).prop_map(Value::Array),
    ]
}

/// A value of the type `key` takes, usually within its range; sometimes
/// anything (a wrong type is refused naming the line).
fn value_for(key: &'static str) -> BoxedStrategy<Value> {
    let plausible: Option<i64> = match key {
        "max_bytes" | "batch_max_bytes" | "max_set_aside_bytes" | "disk_reserve_bytes" => {
            Some(1 << 20)
        }
        "max_connections" | "max_concurrent_requests" => Some(8),
        "max_pending_bytes" => Some(1 << 30),
        "max_input_bytes" | "guest_model_max_bytes" => Some(1 << 16),
        "timeout_ms" | "request_timeout_ms" | "backoff_max_ms" => Some(1000),
        "zstd_level" | "workers" | "threads" | "memory_mb" | "max_batch_size" => Some(3),
        "memory_budget_mb" => Some(512),
        "queue_capacity" => Some(5000),
        k if k.ends_with("_ms") || k.ends_with("_secs") || k.ends_with("_records") => Some(20),
        "idempotency_max_keys" => Some(100),
        _ => None,
    };
    let typed = match plausible {
        Some(v) => prop_oneof![Just(v), (v / 2).max(1)..=v.saturating_mul(2), integers(),]
            .prop_map(Value::Integer)
            .boxed(),
        None if matches!(key, "config" | "grants" | "input_shapes") => {
            Just(Value::Table(Table::new())).boxed()
        }
        None => {
            let choices: &[&str] = match key {
                "pooling" => &["auto", "on", "off"],
                "when_full" => &["drop-oldest", "reject-new"],
                "execution" => &["auto", "stacked", "single"],
                "engine" => &["tract", "onnxruntime"],
                "url" => &["http://collector:8080", "https://c.example", "ftp://x"],
                "listen" => &["127.0.0.1:0", "[::1]:8080", "localhost:80"],
                "id" => &["gw-1", "a/b", ""],
                _ => &[],
            };
            if choices.is_empty() {
                strings().prop_map(Value::String).boxed()
            } else {
                prop::sample::select(choices)
                    .prop_map(|s| Value::String(s.to_owned()))
                    .boxed()
            }
        }
    };
    prop_oneof![9 => typed, 1 => values()].boxed()
}

/// The keys of each section, as `Config` knows them.
const DEVICE: &[&str] = &["id", "data_dir", "memory_budget_mb"];
const RUNTIME: &[&str] = &["cache_dir", "pooling", "guest_model_max_bytes", "workers"];
const PLUGIN: &[&str] = &["path", "timeout_ms", "memory_mb", "config", "grants"];
const MODEL: &[&str] = &["path", "engine", "sha256", "input_shapes", "batching"];
const BATCHING: &[&str] = &[
    "max_batch_size",
    "max_queue_delay_ms",
    "queue_capacity",
    "request_timeout_ms",
    "threads",
    "execution",
];
const PIPELINE: &[&str] = &["preprocess", "model", "postprocess"];
const OUTBOX: &[&str] = &[
    "max_bytes",
    "max_age_secs",
    "when_full",
    "max_set_aside_bytes",
    "disk_reserve_bytes",
];
const SYNC: &[&str] = &[
    "url",
    "token",
    "token_file",
    "batch_max_records",
    "batch_max_bytes",
    "timeout_ms",
    "backoff_initial_ms",
    "backoff_max_ms",
    "interval_ms",
    "zstd_level",
];
const INGEST: &[&str] = &[
    "folder",
    "folder_pipeline",
    "poll_ms",
    "settle_ms",
    "listen",
    "max_input_bytes",
    "max_pending_bytes",
    "idempotency_window_secs",
    "idempotency_max_keys",
    "max_connections",
    "max_concurrent_requests",
    "header_timeout_ms",
    "body_timeout_ms",
];

/// A table of some of `keys` with arbitrary values, sometimes a misspelled
/// key; `fixed` entries (needed for the section to parse) most of the time.
fn table(keys: &'static [&'static str], fixed: Vec<(&'static str, Value)>) -> BoxedStrategy<Table> {
    (
        prop::collection::vec(
            prop::sample::select(keys).prop_flat_map(|k| (Just(k), value_for(k))),
            0..6,
        ),
        prop::bool::weighted(0.9),
        prop::option::weighted(0.03, "[a-z_]{1,8}"),
    )
        .prop_map(move |(entries, keep_fixed, typo)| {
            let mut table = Table::new();
            if keep_fixed {
                for (k, v) in &fixed {
                    table.insert((*k).to_owned(), v.clone());
                }
            }
            for (k, v) in entries {
                table.insert(k.to_owned(), v);
            }
            if let Some(typo) = typo {
                table.insert(typo, Value::Integer(1));
            }
            table
        })
        .boxed()
}

fn named_tables(make: impl Fn() -> BoxedStrategy<Table>) -> impl Strategy<Value = Table> {
    prop::collection::btree_map(names(), make(), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::Table(v))).collect())
}

fn plugin() -> BoxedStrategy<Table> {
    table(PLUGIN, vec![("path", Value::String("p.wasm".into()))])
}

fn model() -> BoxedStrategy<Table> {
    (
        table(MODEL, vec![("path", Value::String("m.onnx".into()))]),
        prop::option::of(table(BATCHING, vec![])),
    )
        .prop_map(|(mut model, batching)| {
            if let Some(batching) = batching {
                model.insert("batching".into(), Value::Table(batching));
            }
            model
        })
        .boxed()
}

fn pipeline() -> BoxedStrategy<Table> {
    (names(), names(), names(), table(PIPELINE, vec![]))
        .prop_map(|(pre, model, post, extra)| {
            let mut t = Table::new();
            t.insert("preprocess".into(), Value::String(pre));
            t.insert("model".into(), Value::String(model));
            t.insert("postprocess".into(), Value::String(post));
            // Sometimes a wrong type or a missing key.
            for (k, v) in extra {
                t.insert(k, v);
            }
            t
        })
        .boxed()
}

/// A document of the real sections and keys.
fn documents() -> impl Strategy<Value = Table> {
    (
        prop::option::of(table(DEVICE, vec![])),
        prop::option::of(table(RUNTIME, vec![])),
        prop::option::of(named_tables(plugin)),
        prop::option::of(named_tables(model)),
        prop::option::of(named_tables(pipeline)),
        prop::option::of(table(OUTBOX, vec![])),
        prop::option::of(table(SYNC, vec![])),
        prop::option::of(table(INGEST, vec![])),
    )
        .prop_map(
            |(device, runtime, plugins, models, pipelines, outbox, sync, ingest)| {
                let mut doc = Table::new();
                for (key, t) in [
                    ("device", device),
                    ("runtime", runtime),
                    ("plugins", plugins),
                    ("models", models),
                    ("pipelines", pipelines),
                    ("outbox", outbox),
                    ("sync", sync),
                    ("ingest", ingest),
                ] {
                    if let Some(t) = t {
                        doc.insert(key.into(), Value::Table(t));
                    }
                }
                doc
            },
        )
}

/// Every dotted key of `table` (`sync.zstd_level`, `plugins.a`, ...).
fn dotted_keys(table: &Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Value::Table(t) = v {
            dotted_keys(t, &key, out);
        }
        out.insert(key);
    }
}

/// The limit of the table (`config::keys::LIMITS`) a full key is checked
/// against: `NAME` and `INPUT` parts stand for any one part.
fn limit_of(key: &str) -> Option<&'static Limit> {
    let parts: Vec<&str> = key.split('.').collect();
    LIMITS.iter().find(|limit| {
        let pattern: Vec<&str> = limit.key.split('.').collect();
        pattern.len() == parts.len()
            && pattern
                .iter()
                .zip(&parts)
                .all(|(p, k)| matches!(*p, "NAME" | "INPUT") || p == k)
    })
}

/// The integer written at dotted `key` of `doc`, if any.
fn written(doc: &Table, key: &str) -> Option<i64> {
    let mut parts = key.split('.').peekable();
    let mut table = doc;
    while let Some(part) = parts.next() {
        let value = table.get(part)?;
        if parts.peek().is_none() {
            return value.as_integer();
        }
        table = value.as_table()?;
    }
    None
}

/// The key whose value is the lower bound of `key`'s range: a document
/// that raises it above `key`'s default is refused naming `key`, which the
/// document does not have (the message names both).
fn bound_of(key: &str) -> String {
    match limit_of(key).map(|l| l.min) {
        Some(Bound::Key(field, _)) => match key.rsplit_once('.') {
            Some((section, _)) => format!("{section}.{field}"),
            None => field.to_owned(),
        },
        _ => String::new(),
    }
}

/// Whether a table on the way to `key` is written as an array: serde reads
/// a struct from a sequence too, field by field in order, so
/// `batching = [4096]` is `max_batch_size = 4096` and the refusal names
/// a field the document does not (`queue_capacity`, below its new minimum).
fn written_as_array(doc: &Table, key: &str) -> bool {
    let mut table = doc;
    for part in key.split('.') {
        match table.get(part) {
            Some(Value::Table(t)) => table = t,
            Some(Value::Array(_)) => return true,
            _ => return false,
        }
    }
    false
}

/// What every answer of `Config::parse` must be.
fn check(text: &str, doc: Option<&Table>) -> Result<(), TestCaseError> {
    match Config::parse(text, Path::new("/etc/sluice")) {
        Ok(c) => {
            prop_assert!(
                sluice_protocol::check_name(&c.device.id).is_ok(),
                "{}",
                c.device.id
            );
            let all = keys::values(&c);
            for (limit, key, v) in &all {
                let (lo, hi) = keys::range(limit, key, &all);
                prop_assert!(v.within(lo, hi), "{key} = {v} outside {lo}..={hi}");
                if let Some(doc) = doc
                    && let Some(w) = written(doc, key)
                {
                    prop_assert_eq!(*v, Number::Int(w.into()), "{} changed", key);
                }
            }
            for (name, p) in &c.pipelines {
                prop_assert!(sluice_protocol::check_name(name).is_ok());
                prop_assert!(c.plugins.contains_key(&p.preprocess), "{name}");
                prop_assert!(c.plugins.contains_key(&p.postprocess), "{name}");
                prop_assert!(c.models.contains_key(&p.model), "{name}");
            }
            if let Some(p) = &c.ingest.folder_pipeline {
                prop_assert!(c.pipelines.contains_key(p));
            }
            if let Some(listen) = &c.ingest.listen {
                prop_assert!(listen.parse::<std::net::SocketAddr>().is_ok());
            }
            // Paths are absolute, and what is derived from numbers is usable.
            prop_assert!(c.device.data_dir.is_absolute());
            prop_assert!(c.cache_dir().is_absolute());
            for p in c.plugins.values() {
                if let PluginSource::File(path) = &p.path {
                    prop_assert!(path.is_absolute());
                }
                let _ = (p.timeout(), p.memory_bytes());
            }
            for m in c.models.values() {
                prop_assert!(m.path.is_absolute());
                let _ = m.batching.resolved_threads();
            }
            let _ = c.runtime.resolved_workers();
        }
        Err(e) => {
            let message = e.to_string();
            let named = match (&e, doc) {
                (ConfigError::Value { key, .. }, Some(doc)) => {
                    let mut keys = BTreeSet::new();
                    dotted_keys(doc, "", &mut keys);
                    // The key is in the document, or the value it checks
                    // is a default that a written key makes wrong.
                    key.contains('.')
                        && (keys.contains(key)
                            || keys.contains(&bound_of(key))
                            || written_as_array(doc, key))
                }
                (ConfigError::Value { key, .. }, None) => key.contains('.'),
                _ => message.contains("line"),
            };
            prop_assert!(
                named,
                "the refusal names no key of the document nor a line: {message}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn documents_of_the_real_keys_are_accepted_within_range_or_refused_naming_a_key(
        doc in documents(),
    ) {
        let text = toml::to_string(&doc).unwrap();
        check(&text, Some(&doc))?;
    }

    #[test]
    fn arbitrary_text_is_refused_naming_a_line_or_accepted_within_range(
        text in prop_oneof![
            ".{0,200}",
            r#"[\[\]a-z_.=" 0-9\n{},-]{0,200}"#,
            // A real document, edited.
            (documents(), any::<prop::sample::Index>(), ".{0,6}", 0usize..8).prop_map(
                |(doc, at, insert, remove)| {
                    let mut text = toml::to_string(&doc).unwrap();
                    let mut at = at.index(text.len() + 1);
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    let mut end = (at + remove).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(at..end, &insert);
                    text
                }
            ),
        ],
    ) {
        check(&text, None)?;
    }
}
