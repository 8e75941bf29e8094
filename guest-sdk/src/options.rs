//! A plugin's options, discoverable: `sluice plugin inspect` lists them from
//! the component itself.
//!
//! A plugin describes its `[plugins.NAME.config]` keys in a JSON file (an
//! array of [`OptionDoc`]) and embeds it with [`options!`](crate::options) as
//! the custom section `sluice-options` of its core module. The host reads
//! that section without running the plugin. [`check`] is for the plugin's
//! own unit test: the file names exactly the keys its `Config` type accepts,
//! so the list cannot drift from the parser.
//!
//! ```json
//! [
//!   {"key": "scale", "meaning": "every byte is divided by this"},
//!   {"key": "output", "default": "\"input\"", "meaning": "name of the model input"}
//! ]
//! ```

use serde::de::{self, Deserializer, Visitor};

/// The custom section the host reads a plugin's options from.
pub const SECTION: &str = "sluice-options";

/// One configuration key, as `plugin inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptionDoc {
    /// The key in `[plugins.NAME.config]`.
    pub key: String,
    /// Its default as written in TOML (`"input"`, `5`, `[0]`), or a phrase
    /// (`none`, `all 1`); absent when the key is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What it does, its allowed values and bounds.
    pub meaning: String,
}

/// Embed the options file at `$path` (relative to the invoking source file,
/// as `include_bytes!`) as the component's `sluice-options` section. Only
/// the WebAssembly build carries it; native unit tests do not need it.
#[macro_export]
macro_rules! options {
    ($path:literal) => {
        #[cfg(target_family = "wasm")]
        #[used]
        #[unsafe(link_section = "sluice-options")]
        static __SLUICE_OPTIONS: [u8; include_bytes!($path).len()] = *include_bytes!($path);
    };
}

/// Check an options file against the configuration type it documents: it
/// parses, names no key twice, and names exactly the keys `C` accepts.
/// Meant for the plugin's unit test:
/// `sluice_guest::options::check::<Config>(include_str!("../options.json"))`.
pub fn check<C: de::DeserializeOwned>(json: &str) -> Result<Vec<OptionDoc>, String> {
    let options: Vec<OptionDoc> =
        serde_json::from_str(json).map_err(|e| format!("the options file: {e}"))?;
    let mut documented: Vec<&str> = options.iter().map(|o| o.key.as_str()).collect();
    documented.sort_unstable();
    if let Some(twice) = documented.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("the options file names `{}` twice", twice[0]));
    }
    let mut accepted = config_keys::<C>()?.to_vec();
    accepted.sort_unstable();
    let missing: Vec<_> = accepted
        .iter()
        .filter(|k| !documented.contains(k))
        .collect();
    let unknown: Vec<_> = documented
        .iter()
        .filter(|k| !accepted.contains(k))
        .collect();
    if !missing.is_empty() || !unknown.is_empty() {
        return Err(format!(
            "the options file does not match the configuration type: \
             undocumented keys {missing:?}, documented keys it does not accept {unknown:?}"
        ));
    }
    Ok(options)
}

/// The keys a `serde::Deserialize` struct accepts, as its derive declares
/// them (a struct deserializer is handed the list of its field names).
pub fn config_keys<C: de::DeserializeOwned>() -> Result<&'static [&'static str], String> {
    let mut keys = None;
    // The deserializer stops at the struct with an error once it has the
    // list; only a type that is not a plain struct gets that far without it.
    let _ = C::deserialize(FieldNames(&mut keys));
    keys.ok_or_else(|| {
        format!(
            "{} is not a struct with named fields",
            std::any::type_name::<C>()
        )
    })
}

/// A deserializer that only records the field names of the struct asked of it.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    #[serde(deny_unknown_fields)]
    struct Config {
        scale: f32,
        #[serde(default)]
        output: String,
    }

    #[test]
    fn check_accepts_exactly_the_fields_and_names_the_difference() {
        let both = r#"[{"key": "scale", "meaning": "m"},
                       {"key": "output", "default": "\"input\"", "meaning": "m"}]"#;
        assert_eq!(super::check::<Config>(both).unwrap().len(), 2);
        let short = r#"[{"key": "scale", "meaning": "m"}]"#;
        let e = super::check::<Config>(short).unwrap_err();
        assert!(e.contains("undocumented keys [\"output\"]"), "{e}");
        let extra = r#"[{"key": "scale", "meaning": "m"}, {"key": "output", "meaning": "m"},
                        {"key": "sclae", "meaning": "m"}]"#;
        let e = super::check::<Config>(extra).unwrap_err();
        assert!(e.contains("[\"sclae\"]"), "{e}");
        let twice = r#"[{"key": "scale", "meaning": "m"}, {"key": "scale", "meaning": "m"}]"#;
        assert!(super::check::<Config>(twice).unwrap_err().contains("twice"));
        assert!(
            super::check::<u32>("[]")
                .unwrap_err()
                .contains("not a struct")
        );
    }
}
