//! The table of numbers ([`super::keys::LIMITS`]) against the
//! configuration's types (every number they hold is in it), against the
//! loader's defaults, and against `docs/limits.md` (every key documented
//! with the same range and default, every documented range in the table).

use super::Config;
use super::keys::{LIMITS, Limit, documented_default, documented_range, values};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

type Error = de::value::Error;

/// A deserializer that makes up a value of whatever type asks, and notes
/// the dotted path of every number it was asked for: the configuration's
/// numeric keys, read from its types rather than from a list kept by hand.
/// Maps get one entry named `NAME`; lists one item (or none, if an empty
/// string does not make one, e.g. a socket address).
#[derive(Clone)]
struct Tracer<'a> {
    path: String,
    numbers: &'a RefCell<BTreeSet<String>>,
}

impl<'a> Tracer<'a> {
    fn at(&self, part: &str) -> Tracer<'a> {
        let path = if self.path.is_empty() {
            part.to_owned()
        } else {
            format!("{}.{part}", self.path)
        };
        Tracer {
            path,
            numbers: self.numbers,
        }
    }

    fn number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.numbers.borrow_mut().insert(self.path);
        visitor.visit_u64(0)
    }
}

macro_rules! numbers {
    ($de:lifetime; $($method:ident)*) => {$(
        fn $method<V: Visitor<$de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.number(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    numbers!('de; deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64);

    /// Self-describing values (`toml::Value`, a plugin's own `config`): an
    /// empty table, whose keys are the plugin's business.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Fields {
            names: &[],
            next: 0,
            tracer: self,
        })
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char('x')
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(&[])
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(&[])
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items(Some(self)))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items(Some(self)))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Items(Some(self)))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Fields {
            names: &["NAME"],
            next: 0,
            tracer: self,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Fields {
            names: fields,
            next: 0,
            tracer: self,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(Variant {
            name: variants[0],
            tracer: self,
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct Fields<'a> {
    names: &'static [&'static str],
    next: usize,
    tracer: Tracer<'a>,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.names.get(self.next) {
            Some(name) => seed.deserialize(name.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let name = self.names[self.next];
        self.next += 1;
        seed.deserialize(self.tracer.at(name))
    }
}

/// One item, traced under the list's own path; none if it cannot be made
/// of nothing (an address from an empty string).
struct Items<'a>(Option<Tracer<'a>>);

impl<'de> de::SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        Ok(self
            .0
            .take()
            .and_then(|tracer| seed.deserialize(tracer).ok()))
    }
}

struct Variant<'a> {
    name: &'static str,
    tracer: Tracer<'a>,
}

impl<'de, 'a> de::EnumAccess<'de> for Variant<'a> {
    type Error = Error;
    type Variant = Tracer<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Tracer<'a>), Error> {
        Ok((
            seed.deserialize(self.name.into_deserializer())?,
            self.tracer,
        ))
    }
}

impl<'de> de::VariantAccess<'de> for Tracer<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items(Some(self)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Fields {
            names: fields,
            next: 0,
            tracer: self,
        })
    }
}

/// A table key with its placeholders as the tracer names them.
fn traced_form(key: &str) -> String {
    key.split('.')
        .map(|part| if part == "INPUT" { "NAME" } else { part })
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn every_number_the_configuration_holds_is_in_the_table() {
    let numbers = RefCell::new(BTreeSet::new());
    let tracer = Tracer {
        path: String::new(),
        numbers: &numbers,
    };
    <Config as serde::Deserialize>::deserialize(tracer).expect("the tracer makes a configuration");
    let traced = numbers.into_inner();
    // The tracer sees what it must: nested sections, named tables, lists.
    for key in [
        "sync.mqtt.keep_alive_secs",
        "models.NAME.batching.request_timeout_ms",
        "models.NAME.input_shapes.NAME",
        "drift.false_alarm_rate",
    ] {
        assert!(traced.contains(key), "the tracer missed {key}: {traced:?}");
    }
    let table: BTreeSet<String> = LIMITS.iter().map(|l| traced_form(l.key)).collect();
    let unchecked: Vec<_> = traced.difference(&table).collect();
    assert!(
        unchecked.is_empty(),
        "numbers of the configuration without a range in config::keys::LIMITS: {unchecked:?}"
    );
    let stale: Vec<_> = table.difference(&traced).collect();
    assert!(
        stale.is_empty(),
        "keys of config::keys::LIMITS the configuration does not have: {stale:?}"
    );
}

/// A configuration with one plugin, one model (with an input shape), one
/// pipeline, `[sync.mqtt]`, `[ingest.mqtt]` and a consumer of each kind:
/// every key of the table
/// has a value.
const FULL: &str = "[plugins.pre]\npath = \"p.wasm\"\n[plugins.post]\npath = \"q.wasm\"\n\
    [models.m]\npath = \"m.onnx\"\ninput_shapes.x = [3]\n\
    [pipelines.p]\npreprocess = \"pre\"\nmodel = \"m\"\npostprocess = \"post\"\n\
    [sync]\nurl = \"mqtt://broker:1883\"\ntoken = \"t\"\n\
    ack_keys = [\"ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"]\n[sync.mqtt]\n\
    [ingest.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[[ingest.mqtt.topics]]\nfilter = \"cam/+\"\npipeline = \"p\"\n\
    [consumers.gate.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[consumers.app.webhook]\nurl = \"http://127.0.0.1:9000/r\"\n";

#[test]
fn the_defaults_in_the_table_are_the_loaders() {
    let config = Config::parse(FULL, Path::new("/etc/sluice")).unwrap();
    let all = values(&config);
    for limit in LIMITS {
        let Some(default) = limit.default else {
            continue;
        };
        let found: Vec<_> = all
            .iter()
            .filter(|(l, ..)| std::ptr::eq(*l, limit))
            .collect();
        assert!(
            !found.is_empty(),
            "{}: no value in the test configuration",
            limit.key
        );
        for (_, key, value) in found {
            assert_eq!(
                *value, default,
                "{key}: the table's default is not the loader's"
            );
        }
    }
}

/// Where `docs/limits.md` writes `` `key` (RANGE `` followed by `)` or `,`.
fn documented<'d>(docs: &'d str, limit: &Limit) -> Option<&'d str> {
    let written = format!("`{}` ({}", limit.key, documented_range(limit));
    docs.lines().find(|line| {
        line.match_indices(&written)
            .any(|(at, _)| matches!(line[at + written.len()..].chars().next(), Some(')' | ',')))
    })
}

fn limits_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/limits.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn docs_limits_md_gives_every_key_of_the_table_its_range_and_default() {
    let docs = limits_md();
    let mut problems = Vec::new();
    for limit in LIMITS {
        let Some(row) = documented(&docs, limit) else {
            let said: Vec<&str> = docs
                .lines()
                .filter(|l| l.contains(&format!("`{}`", limit.key)))
                .collect();
            problems.push(format!(
                "`{}` ({}) is not in docs/limits.md; it says: {said:?}",
                limit.key,
                documented_range(limit)
            ));
            continue;
        };
        if let Some(default) = documented_default(limit) {
            let column = row.split('|').nth(2).unwrap_or("");
            if !column.contains(&default) {
                problems.push(format!(
                    "`{}`: its row's default column {column:?} does not say {default:?}",
                    limit.key
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_range_docs_limits_md_gives_a_key_is_checked_by_the_loader() {
    const SECTIONS: &[&str] = &[
        "device.", "runtime.", "plugins.", "models.", "outbox.", "sync.", "ingest.", "drift.",
        "bundles.",
    ];
    let docs = limits_md();
    let keys: BTreeSet<&str> = LIMITS.iter().map(|l| l.key).collect();
    let mut unchecked = Vec::new();
    for (at, _) in docs.match_indices("` (") {
        let Some(open) = docs[..at].rfind('`') else {
            continue;
        };
        let key = &docs[open + 1..at];
        let inside = &docs[at + 3..];
        let inside = &inside[..inside.find(')').unwrap_or(inside.len())];
        let is_key = SECTIONS.iter().any(|s| key.starts_with(s)) && !key.contains(' ');
        if is_key && inside.contains(" .. ") && !keys.contains(key) {
            unchecked.push(format!("`{key}` ({inside})"));
        }
    }
    assert!(
        unchecked.is_empty(),
        "docs/limits.md gives ranges to keys the loader does not check (add them to config::keys::LIMITS): {unchecked:?}"
    );
}

fn refusal(text: &str) -> String {
    match Config::parse(text, Path::new("/etc/sluice")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn ingest_and_outbox_numbers_outside_their_ranges_are_refused_naming_key_value_range_and_line() {
    for (text, key, value, range) in [
        (
            "[ingest]\nmax_connections = 0\n",
            "ingest.max_connections",
            "0",
            "1..=65536",
        ),
        (
            "[ingest]\nmax_concurrent_requests = 0\n",
            "ingest.max_concurrent_requests",
            "0",
            "1..=1024",
        ),
        (
            "[ingest]\nheader_timeout_ms = 0\n",
            "ingest.header_timeout_ms",
            "0",
            "100..=600000 ms",
        ),
        (
            "[ingest]\nbody_timeout_ms = 7200000\n",
            "ingest.body_timeout_ms",
            "7200000",
            "100..=3600000 ms",
        ),
        (
            "[ingest]\nsettle_ms = 600001\n",
            "ingest.settle_ms",
            "600001",
            "0..=600000 ms",
        ),
        (
            "[outbox]\ndisk_reserve_bytes = 2147483648\n",
            "outbox.disk_reserve_bytes",
            "2147483648",
            "0..=1073741824 bytes",
        ),
        (
            "[outbox]\nmax_set_aside_bytes = 2199023255553\n",
            "outbox.max_set_aside_bytes",
            "2199023255553",
            "0..=1099511627776 bytes",
        ),
        (
            "[sync]\nurl = \"mqtt://b:1883\"\ntoken = \"t\"\n[sync.mqtt]\nkeep_alive_secs = 65536\n",
            "sync.mqtt.keep_alive_secs",
            "65536",
            "5..=65535 s",
        ),
    ] {
        let err = refusal(text);
        let line = text.lines().count();
        assert!(
            err.contains(&format!(
                "{key} (line {line}): {value} is outside the allowed range {range}"
            )),
            "{text}: {err}"
        );
    }
}

#[test]
fn a_request_timeout_not_above_the_queue_delay_is_refused_naming_both_keys() {
    let err = refusal(
        "[models.classifier]\npath = \"m.onnx\"\n[models.classifier.batching]\nmax_queue_delay_ms = 2\nrequest_timeout_ms = 1\n",
    );
    assert!(
        err.contains("models.classifier.batching.request_timeout_ms (line 5): 1 is outside the allowed range 12..=3600000 ms")
            && err.contains("models.classifier.batching.max_queue_delay_ms + 10 ms"),
        "{err}"
    );
    // With the margin, it is fine.
    Config::parse(
        "[models.c]\npath = \"m.onnx\"\n[models.c.batching]\nmax_queue_delay_ms = 2\nrequest_timeout_ms = 12\n",
        Path::new("/"),
    )
    .unwrap();
}
