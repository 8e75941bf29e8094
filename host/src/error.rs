//! Errors that refuse a whole thing at start-up: a configuration, a plugin, a
//! model. Errors of one item travel with the item instead
//! ([`crate::types::ItemError`]), so that they never fail its neighbours.

use std::path::PathBuf;

/// Why a configuration was refused. Always names the file, the key or both.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not TOML of the expected shape (the message names the
    /// key and line).
    #[error(transparent)]
    Parse(toml::de::Error),
    /// A value is out of its range or inconsistent with another.
    #[error("{key}{}: {problem}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Value {
        /// The key, e.g. `sync.zstd_level`.
        key: String,
        /// What is wrong with it.
        problem: String,
        /// Where the key is written in the file, when it is.
        line: Option<usize>,
    },
    /// A `token_file` (`sync.token_file`, `ingest.token_file`) cannot be read.
    #[error("cannot read {key} {}: {source}", path.display())]
    TokenFile {
        /// Its key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Any of the above, in this configuration file.
    #[error("config {}: {inner}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        inner: Box<ConfigError>,
    },
}

impl ConfigError {
    /// A bad value of `key`.
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            key: key.into(),
            problem: problem.into(),
            line: None,
        }
    }

    /// The same error with the line of its key in `text` (the file's
    /// text), when the key is written there.
    pub(crate) fn located(self, text: &str) -> Self {
        match self {
            ConfigError::Value {
                key,
                problem,
                line: None,
            } => {
                let line = crate::config::text::line_of(text, &key);
                ConfigError::Value { key, problem, line }
            }
            other => other,
        }
    }

    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        ConfigError::InFile {
            path: path.to_owned(),
            inner: Box::new(self),
        }
    }
}

pub use sluice_types::error::{BoxError, chain_text, root_cause};

/// Text from upstream (a collector's or broker's answer, a header it
/// sent), made safe to log and to keep as the outbox's `last_error`: at
/// most `max_chars` characters of it (invalid UTF-8 replaced), every
/// control, format or otherwise invisible character escaped as Rust does
/// (`\u{1b}`, `\n`, `\u{202e}`) and `\` doubled. An answer can then
/// neither drive the terminal that shows the log (ANSI escapes), forge log
/// lines (newlines), nor hide or reorder text (bidi overrides); quotes stay
/// as they are, so a JSON error body stays readable. Every path that puts
/// upstream bytes into an error goes through this one function.
pub fn upstream_text(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(2)));
    let mut chars = text.chars();
    for c in chars.by_ref().take(max_chars) {
        match c {
            '"' | '\'' => out.push(c),
            c => out.extend(c.escape_debug()),
        }
    }
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

pub use sluice_plugin::error::{EngineError, PluginError, PluginErrorCause};

#[cfg(test)]
mod tests {
    use super::upstream_text;

    #[test]
    fn upstream_text_escapes_what_could_drive_a_terminal_or_forge_a_line() {
        let hostile =
            b"\x1b[2J\x1b[31mok\r\nINFO forged line\x07 \xe2\x80\xae\xff back\\slash \"q\"";
        let text = upstream_text(hostile, 500);
        assert!(
            !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{text:?}"
        );
        assert_eq!(
            text,
            r#"\u{1b}[2J\u{1b}[31mok\r\nINFO forged line\u{7} \u{202e}� back\\slash "q""#
        );
        // Bounded in characters, and says it was cut.
        assert_eq!(upstream_text("ééééé".as_bytes(), 3), "ééé...");
        assert_eq!(upstream_text(b"plain", 5), "plain");
    }
}
