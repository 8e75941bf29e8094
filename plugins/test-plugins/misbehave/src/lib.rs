//! # misbehave
//!
//! A test preprocessor that misbehaves on request, so the host's tests can
//! prove sandboxing and isolation: deadlines, memory caps, file and
//! environment grants, traps and per-item errors. The item's bytes, read as
//! UTF-8 text (surrounding whitespace trimmed), choose what it does:
//!
//! | item text          | behaviour                                                        |
//! |--------------------|------------------------------------------------------------------|
//! | `loop`             | spins forever                                                    |
//! | `alloc:<MiB>`      | allocates and touches that many MiB, then echoes the item        |
//! | `open:<path>`      | reads the file: u8 tensor `file`, or `internal("open <path>: <error>")` |
//! | `env:<NAME>`       | reads the variable: u8 tensor `env`, or `internal("env <NAME>: not set")` |
//! | `panic`            | panics (a trap)                                                  |
//! | `sleep:<ms>`       | sleeps that long, then echoes the item                           |
//! | `print:<text>`     | prints `<text>` on stdout and `err:<text>` on stderr, then echoes |
//! | `spam:<KiB>`       | writes that many KiB of lines to stderr, then echoes the item    |
//! | `invalid` / `unsupported` / `internal` | that item error, message `requested <kind>`  |
//! | anything else      | echo: u8 tensor `echo` of shape `[1, len]` holding the bytes     |
//!
//! Not for production use.

use serde::Deserialize;
use sluice_guest::{ItemError, Preprocessor, RawInput, Tensor};
use std::hint::black_box;

/// The plugin's `config` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `new` fails with "fail_init was requested".
    #[serde(default)]
    pub fail_init: bool,
    /// `new` logs "misbehave ready" at info level.
    #[serde(default)]
    pub log_on_init: bool,
    /// `new` panics (a trap during init).
    #[serde(default)]
    pub panic_init: bool,
    /// `new` allocates and touches this many MiB (as a language runtime
    /// starting up does).
    #[serde(default)]
    pub alloc_init_mb: usize,
}

pub struct Misbehave;

/// A u8 tensor `[1, len]` holding `bytes`.
fn bytes_tensor(name: &str, bytes: &[u8]) -> Tensor {
    Tensor::new(name, &[1, bytes.len() as u32], bytes)
}

/// `text`, trimmed, as a whole number; else an invalid-input item error
/// `"{what}: {why}"`.
fn whole<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ItemError>
where
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|e| ItemError::invalid(format!("{what}: {e}")))
}

/// Allocate `mib` MiB, touch every page and free it. More than the address
/// space is an allocation failure too: a trap.
fn allocate_and_touch(mib: usize) {
    let bytes = mib
        .checked_mul(1 << 20)
        .unwrap_or_else(|| panic!("alloc:{mib}: more than the address space"));
    let block = black_box(vec![1u8; bytes]);
    // Read it back so the allocation and the fill cannot be elided.
    black_box(block.iter().step_by(4096).map(|&b| b as u64).sum::<u64>());
}

impl Preprocessor for Misbehave {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.fail_init {
            return Err("fail_init was requested".into());
        }
        if config.panic_init {
            panic!("misbehave: panic_init was requested");
        }
        if config.alloc_init_mb > 0 {
            allocate_and_touch(config.alloc_init_mb);
        }
        if config.log_on_init {
            sluice_guest::info!("misbehave ready");
        }
        Ok(Misbehave)
    }

    fn preprocess(&mut self, input: RawInput) -> Result<Vec<Tensor>, ItemError> {
        let text = std::str::from_utf8(&input.data)
            .map(str::trim)
            .unwrap_or("");
        let echo = || Ok(vec![bytes_tensor("echo", &input.data)]);
        if text == "loop" {
            let mut counter: u64 = 0;
            loop {
                counter = black_box(counter.wrapping_add(1));
            }
        } else if let Some(mib) = text.strip_prefix("alloc:") {
            allocate_and_touch(whole(mib, "alloc:<MiB> needs a whole number of MiB")?);
            echo()
        } else if let Some(ms) = text.strip_prefix("sleep:") {
            let ms = whole(ms, "sleep:<ms> needs a whole number")?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
            echo()
        } else if let Some(text) = text.strip_prefix("print:") {
            println!("{text}");
            eprintln!("err:{text}");
            echo()
        } else if let Some(kib) = text.strip_prefix("spam:") {
            let kib: usize = whole(kib, "spam:<KiB> needs a whole number")?;
            // `eprintln!` panics if the write fails: the host must never refuse.
            let line = "x".repeat(1023);
            for _ in 0..kib {
                eprintln!("{line}");
            }
            echo()
        } else if let Some(path) = text.strip_prefix("open:") {
            match std::fs::read(path) {
                Ok(content) => Ok(vec![bytes_tensor("file", &content)]),
                Err(e) => Err(ItemError::internal(format!("open {path}: {e}"))),
            }
        } else if let Some(name) = text.strip_prefix("env:") {
            match std::env::var(name) {
                Ok(value) => Ok(vec![bytes_tensor("env", value.as_bytes())]),
                Err(_) => Err(ItemError::internal(format!("env {name}: not set"))),
            }
        } else {
            match text {
                "panic" => panic!("misbehave: panic requested"),
                "invalid" => Err(ItemError::invalid("requested invalid")),
                "unsupported" => Err(ItemError::unsupported("requested unsupported")),
                "internal" => Err(ItemError::internal("requested internal")),
                _ => echo(),
            }
        }
    }
}

sluice_guest::export_preprocessor!(Misbehave);
