//! A plugin's documented options, read from the component without running it:
//! the custom section `sluice-options` (an array of `{key, default?,
//! meaning}`) that `sluice_guest::options!` embeds in the plugin's core
//! module. The bundled plugins carry one; any plugin may.
//!
//! The section is the author's text, shown on a terminal: it is bounded and
//! refused whole when it holds control characters (escape sequences) or
//! keys that could not be configuration keys.

use serde::{Deserialize, Serialize};

/// The custom section's name (the guest SDK's `options::SECTION`).
pub const SECTION: &str = "sluice-options";

/// The largest options section read (64 KiB).
pub const MAX_SECTION_BYTES: usize = 64 << 10;

/// The most options one plugin may list.
pub const MAX_OPTIONS: usize = 256;

/// The longest key (a TOML bare key in `[plugins.NAME.config]`).
const MAX_KEY: usize = 64;

/// The longest `default` or `meaning` text, in bytes.
const MAX_TEXT: usize = 2048;

/// One configuration key of a plugin, as its author documents it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginOption {
    /// The key in `[plugins.NAME.config]`.
    pub key: String,
    /// Its default as the author writes it; `None`: required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What it does, its allowed values and bounds.
    pub meaning: String,
}

/// The options documented in `wasm` (a component or a core module): `None`
/// when it carries no `sluice-options` section, an error naming the problem
/// when the section is malformed or out of bounds.
pub fn component_options(wasm: &[u8]) -> Result<Option<Vec<PluginOption>>, String> {
    let mut found = None;
    // `parse_all` walks nested modules and components too: the section sits
    // in the core module inside the component.
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| format!("not a readable component: {e}"))?;
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == SECTION
        {
            if found.is_some() {
                return Err(format!("more than one `{SECTION}` section"));
            }
            found = Some(parse(section.data())?);
        }
    }
    Ok(found)
}

/// Parse and check one section's bytes.
fn parse(data: &[u8]) -> Result<Vec<PluginOption>, String> {
    if data.len() > MAX_SECTION_BYTES {
        return Err(format!(
            "the `{SECTION}` section is {} bytes, more than {MAX_SECTION_BYTES}",
            data.len()
        ));
    }
    let options: Vec<PluginOption> = serde_json::from_slice(data)
        .map_err(|e| format!("the `{SECTION}` section is not an options list: {e}"))?;
    if options.len() > MAX_OPTIONS {
        return Err(format!(
            "the `{SECTION}` section lists {} options, more than {MAX_OPTIONS}",
            options.len()
        ));
    }
    for option in &options {
        let key = &option.key;
        let key_ok = !key.is_empty()
            && key.len() <= MAX_KEY
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !key_ok {
            return Err(format!(
                "the `{SECTION}` section has the key {key:?}: a key is 1 to {MAX_KEY} \
                 ASCII letters, digits, `_` and `-`"
            ));
        }
        for (field, text) in [
            ("default", option.default.as_deref()),
            ("meaning", Some(&option.meaning)),
        ] {
            let Some(text) = text else { continue };
            if text.len() > MAX_TEXT || text.chars().any(char::is_control) {
                return Err(format!(
                    "the `{SECTION}` section's `{field}` of `{key}` is longer than \
                     {MAX_TEXT} bytes or holds control characters"
                ));
            }
        }
    }
    Ok(options)
}

/// The options as a Markdown table (docs/plugins.md lists the bundled
/// plugins' options in exactly this form; a test compares).
pub fn markdown_table(options: &[PluginOption]) -> String {
    let mut table = String::from("| key | default | meaning |\n|---|---|---|\n");
    for option in options {
        let default = match &option.default {
            Some(text) => format!("`{text}`"),
            None => "*required*".to_owned(),
        };
        table.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            option.key,
            option.meaning.replace('|', "\\|")
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_sections_are_refused_with_the_reason() {
        let ok =
            br#"[{"key": "scale", "default": "1", "meaning": "m"}, {"key": "w", "meaning": "m"}]"#;
        assert_eq!(parse(ok).unwrap()[1].default, None);
        let escape = br#"[{"key": "k", "meaning": "\u001b[2Jgone"}]"#;
        assert!(parse(escape).unwrap_err().contains("control characters"));
        let key = br#"[{"key": "a b", "meaning": "m"}]"#;
        assert!(parse(key).unwrap_err().contains("the key \"a b\""));
        let many = serde_json::to_vec(&vec![
            PluginOption {
                key: "k".into(),
                default: None,
                meaning: String::new()
            };
            MAX_OPTIONS + 1
        ])
        .unwrap();
        assert!(parse(&many).unwrap_err().contains("more than 256"));
        let big = vec![b' '; MAX_SECTION_BYTES + 1];
        assert!(parse(&big).unwrap_err().contains("bytes, more than"));
        assert!(parse(b"{}").unwrap_err().contains("not an options list"));
    }
}
