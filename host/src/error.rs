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

/// Why the plugin engine (shared by every plugin) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// wasmtime refused the engine's settings, e.g. the pooling allocator
    /// (`runtime.pooling = "on"`) could not reserve its address space.
    #[error("cannot create the WebAssembly engine: {}", chain_text(.0.as_ref()))]
    Create(#[source] BoxError),
    /// The host's interfaces (WASI, `log`, `wasi:nn`) could not be added to
    /// the linker.
    #[error("cannot add the host interfaces to the linker: {}", chain_text(.0.as_ref()))]
    Linker(#[source] BoxError),
}

/// Why a plugin could not be loaded or started. Always names the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {cause}")]
pub struct PluginError {
    /// The plugin's name in the configuration.
    pub plugin: String,
    /// What went wrong.
    #[source]
    pub cause: PluginErrorCause,
}

/// What went wrong loading or starting a plugin (see [`PluginError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginErrorCause {
    /// The component file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `bundled:NAME` names no plugin shipped in this binary.
    #[error("no bundled plugin named `{name}` (bundled: {})", bundled.join(", "))]
    UnknownBundled {
        /// The name asked for.
        name: String,
        /// The plugins this binary ships.
        bundled: Vec<&'static str>,
    },
    /// The bytes are not a WebAssembly component (a core module, garbage,
    /// or a component for another wasmtime version). Shows the root cause.
    #[error("not a WebAssembly component: {}", root_cause(.0.as_ref()))]
    NotAComponent(#[source] BoxError),
    /// A runtime-only build (no compiler) found no usable precompiled copy
    /// of the component in the cache. Shows the root cause.
    #[error("{}", root_cause(.0.as_ref()))]
    NotPrecompiled(#[source] BoxError),
    /// The component targets neither plugin world, or not the one its
    /// pipeline role needs.
    #[error(
        "component does not target a Sluice plugin world: it exports [{exports}], expected `{expected}`"
    )]
    WrongWorld {
        /// The component's exports, comma-separated.
        exports: String,
        /// The export its role needs.
        expected: String,
    },
    /// The component imports something the host does not provide.
    #[error("cannot be linked against the host: {}", chain_text(.0.as_ref()))]
    Link(#[source] BoxError),
    /// A directory of the plugin's grants cannot be opened.
    #[error("cannot grant directory {}: {}", path.display(), chain_text(source.as_ref()))]
    Grant {
        /// The host directory.
        path: PathBuf,
        /// Why it cannot be opened.
        source: BoxError,
    },
    /// The plugin's `init` returned an error: its message, usually about
    /// its configuration.
    #[error("init refused its configuration: {0}")]
    InitRefused(String),
    /// Instantiating the plugin or running its `init` needed more memory
    /// than its cap.
    #[error("init failed: {}", crate::types::memory_cap_text(*cap_bytes, *requested_bytes))]
    InitMemoryCap {
        /// The cap (`memory_mb`), in bytes.
        cap_bytes: usize,
        /// The linear-memory size asked for, in bytes.
        requested_bytes: usize,
    },
    /// Instantiating the plugin or running its `init` trapped.
    #[error("init failed: {}{}", chain_text(source.as_ref()), stderr_suffix(stderr))]
    InitTrapped {
        /// The trap, with the guest's backtrace.
        source: BoxError,
        /// What the plugin wrote to stderr (a Rust panic's message), if
        /// stderr was captured; empty otherwise.
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

impl PluginError {
    pub(crate) fn new(plugin: &str, cause: PluginErrorCause) -> Self {
        PluginError {
            plugin: plugin.to_owned(),
            cause,
        }
    }
}

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
