//! The compiled-plugin cache: compiling a component takes from milliseconds
//! (small Rust plugins) to seconds (an 18 MB componentize-py plugin), so each
//! compiled component is kept on disk as a `.cwasm` and reused across restarts.
//!
//! The file is named after the SHA-256 of the `.wasm` bytes plus a key of
//! the engine's settings that both kinds of build compute alike: a full build
//! (with the Cranelift compiler) fills the cache, and a runtime-only build
//! (`--no-default-features`, no compiler, about 12 MB smaller) can only load
//! from it. Wasmtime checks every `.cwasm` against the loading engine
//! (version, target, CPU features, tunables, wasm features) before use; an
//! entry that fails that check is recompiled and overwritten by a full
//! build, and refused with a clear message by a runtime-only one.
//!
//! One cache serves every command and data directory of a machine (the
//! `sluice` command keeps it in the user's cache folder): the name holds
//! the CPU features compiled for, so a cache copied from another machine
//! misses instead of being overwritten, and the cache is bounded, the least
//! recently used entries pruned (every hit touches its file).
//!
//! Every entry is sealed with its length and SHA-256 (`sluice_durable::sealed`)
//! and written durably: a power cut can leave a file of the right length
//! with zeroed blocks inside, which wasmtime's deserializer (it trusts its
//! input) is never given; such an entry is recompiled with one log line.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Part of every cache file name. Change it when `engine.rs` changes a
/// setting that affects compiled code, so old entries are not even tried.
const ENGINE_SETTINGS: &str = "wasmtime-48.0.8;component-model;epoch-interruption";

/// The largest compiled plugin read back from the cache (the largest seen,
/// a componentize-py plugin, is about 60 MB); a seal claiming more is
/// treated as damage and the plugin is recompiled.
pub const MAX_COMPILED_BYTES: u64 = 512 << 20;

/// Where a component came from and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Loaded a precompiled `.cwasm` from the cache.
    Hit,
    /// Compiled now (and stored, if a cache directory is set).
    Compiled,
}

/// The default bound of the cache's compiled entries (1 GiB: some thirty
/// Python or JavaScript plugins, hundreds of Rust ones).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// The compiled components of one engine, on disk (or nowhere).
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
    max_bytes: u64,
}

impl ComponentCache {
    /// A cache in `dir`, or none at all (always compile) when `dir` is `None`,
    /// for code compiled for memories reserving `compact_bytes` each (bounds
    /// checked), or `None` for wide ones: the two compile differently, and an
    /// engine falling back to compact memories must not overwrite (and later
    /// find unusable) the entries of the usual wide ones.
    pub fn new(dir: Option<PathBuf>, compact_bytes: Option<usize>, max_bytes: u64) -> Self {
        let mut key = format!(
            "{ENGINE_SETTINGS};{};{}",
            std::env::consts::ARCH,
            cpu_features()
        );
        if let Some(bytes) = compact_bytes {
            key.push_str(&format!(";compact-{bytes}"));
        }
        // What a crash or a power cut left half-written (entries here and
        // the execution choices beside them): never read, only in the way.
        if let Some(dir) = &dir {
            let removed = sluice_durable::remove_stale_temporaries(dir);
            if removed > 0 {
                tracing::info!(dir = %dir.display(), removed, "removed half-written cache files");
            }
        }
        ComponentCache {
            dir,
            engine_key: hex::encode(&Sha256::digest(key.as_bytes())[..8]),
            max_bytes,
        }
    }

    /// The component for `wasm`, from the cache or compiled now.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(path) = self.entry_path(wasm) else {
            return Ok((compile(engine, wasm, None)?, CacheOutcome::Compiled));
        };
        match sluice_durable::sealed::read(&path, MAX_COMPILED_BYTES) {
            Ok(Some(compiled)) => match deserialize(engine, &compiled) {
                Ok(component) => {
                    touch(&path);
                    return Ok((component, CacheOutcome::Hit));
                }
                // Compiled for a pool whose slots were larger than this
                // engine's (another `memory_mb`): recompiling says whether
                // it fits, and why not.
                Err(e) if e.contains("pooling allocator") => {
                    tracing::debug!(path = %path.display(), "compiled plugin does not fit this pool: {e}")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unusable compiled plugin, recompiling: {e}")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding compiled plugin, recompiling: {e}")
            }
        }
        let component = compile(engine, wasm, Some(&path))?;
        if let Err(e) = store(&path, &component.serialize()?) {
            tracing::warn!(path = %path.display(), "cannot cache compiled plugin: {e}");
        }
        let (kept, removed) = prune(
            path.parent().expect("in a directory"),
            self.max_bytes,
            &path,
        );
        if removed > 0 {
            tracing::info!(
                removed,
                kept_bytes = kept,
                max_bytes = self.max_bytes,
                "pruned the least recently used compiled plugins"
            );
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn entry_path(&self, wasm: &[u8]) -> Option<PathBuf> {
        let digest = hex::encode(Sha256::digest(wasm));
        Some(
            self.dir
                .as_ref()?
                .join(format!("{digest}-{}.cwasm", self.engine_key)),
        )
    }
}

/// The CPU features compiled code may use, as the compiler detects them
/// (Cranelift's native flags): code compiled on another CPU of the same
/// architecture gets another name, so a shared or copied cache misses
/// instead of fighting over one file.
fn cpu_features() -> String {
    #[allow(unused_mut)]
    let mut found: Vec<&str> = Vec::new();
    macro_rules! detect {
        ($check:ident, $($feature:tt),*) => {
            $( if std::arch::$check!($feature) { found.push($feature); } )*
        };
    }
    #[cfg(target_arch = "x86_64")]
    detect!(
        is_x86_feature_detected,
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
        "avx2",
        "fma",
        "bmi1",
        "bmi2",
        "lzcnt",
        "cmpxchg16b",
        "avx512f",
        "avx512vl",
        "avx512dq",
        "avx512vbmi",
        "avx512bitalg"
    );
    #[cfg(target_arch = "aarch64")]
    detect!(is_aarch64_feature_detected, "lse", "paca", "fp16");
    found.join(",")
}

/// Mark `path` used now (its modification time): pruning keeps the entries
/// used most recently. A failure only makes the entry look older.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Remove the least recently used compiled entries of `dir` (never `keep`)
/// until they take at most `max_bytes`; returns the bytes kept and the
/// number removed. Another process may hold a removed entry: it has it in
/// memory (entries are read, never mapped), and recompiles if it needs it
/// again.
fn prune(dir: &Path, max_bytes: u64, keep: &Path) -> (u64, usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut compiled: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = compiled.iter().map(|(_, len, _)| len).sum();
    compiled.sort();
    let mut removed = 0;
    for (_, len, path) in compiled {
        if total <= max_bytes {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
            removed += 1;
        }
    }
    if removed > 0 {
        let _ = sluice_durable::sync_dir(dir);
    }
    (total, removed)
}

/// Compile `wasm` for `engine` (full builds).
#[cfg(feature = "compiler")]
fn compile(
    engine: &Engine,
    wasm: &[u8],
    _cache_entry: Option<&Path>,
) -> wasmtime::Result<Component> {
    Component::new(engine, wasm)
}

/// Runtime-only builds cannot compile: say what to do instead.
#[cfg(not(feature = "compiler"))]
fn compile(
    _engine: &Engine,
    _wasm: &[u8],
    cache_entry: Option<&Path>,
) -> wasmtime::Result<Component> {
    Err(match cache_entry {
        Some(path) => wasmtime::format_err!(
            "this runtime-only build of Sluice cannot compile plugins, and this one is not precompiled \
             ({} is missing): precompile it with `sluice plugin compile` on a full build of the same version, \
             and copy the cache",
            path.display()
        ),
        None => wasmtime::format_err!(
            "this runtime-only build of Sluice cannot compile plugins and has no cache directory"
        ),
    })
}

/// Keep `compiled` sealed (length and SHA-256) at `path`, durably: after a
/// power cut the entry is whole, absent, or refused by its seal.
fn store(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    sluice_durable::create_dir_all(path.parent().expect("cache entries live in a directory"))?;
    sluice_durable::sealed::write(path, compiled)
}

/// `compiled` as a component of `engine`, or why not.
///
/// Only bytes whose seal matched get here, so they are what
/// `Component::serialize` wrote, unless the cache directory was written by
/// someone else (it must be as protected as the binary). Wasmtime still
/// checks the header and the engine's compatibility. A panic inside its
/// deserializer (seen with a torn file before entries were sealed) is
/// caught: the entry is recompiled instead of taking the agent down at
/// every start.
fn deserialize(engine: &Engine, compiled: &[u8]) -> Result<Component, String> {
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: see above; the bytes are in memory (read, not mapped: a
        // file changed under a live mapping would crash the host with
        // SIGBUS instead of failing one plugin).
        unsafe { Component::deserialize(engine, compiled) }
    }));
    match loaded {
        Ok(Ok(component)) => Ok(component),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(format!(
            "the loader panicked: {}",
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into())
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    #[test]
    fn pruning_removes_the_least_recently_used_entries_down_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |name: &str, age_secs: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; 1000]).unwrap();
            let file = std::fs::File::options().append(true).open(&path).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
                .unwrap();
            path
        };
        let oldest = entry("a.cwasm", 300);
        let old = entry("b.cwasm", 200);
        let recent = entry("c.cwasm", 100);
        // The entry just written is never removed, however old it looks.
        let new = entry("d.cwasm", 400);
        std::fs::write(dir.path().join("choices.json"), vec![0u8; 5000]).unwrap();
        assert_eq!(super::prune(dir.path(), 2500, &new), (2000, 2));
        assert!(!oldest.exists() && !old.exists());
        assert!(recent.exists() && new.exists());
        assert!(
            dir.path().join("choices.json").exists(),
            "only compiled entries"
        );
        // A hit makes an entry the most recent.
        let touched = entry("e.cwasm", 500);
        super::touch(&touched);
        assert_eq!(super::prune(dir.path(), 2000, &new), (2000, 1));
        assert!(!recent.exists() && touched.exists() && new.exists());
    }
}
