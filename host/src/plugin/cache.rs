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
//! entry that fails that check or is damaged (truncated by a crash) is
//! recompiled and overwritten by a full build, and refused with a clear
//! message by a runtime-only one.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Part of every cache file name. Change it when `engine.rs` changes a
/// setting that affects compiled code, so old entries are not even tried.
const ENGINE_SETTINGS: &str = "wasmtime-48.0.8;component-model;epoch-interruption";

/// Where a component came from and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Loaded a precompiled `.cwasm` from the cache.
    Hit,
    /// Compiled now (and stored, if a cache directory is set).
    Compiled,
}

/// The compiled components of one engine, on disk (or nowhere).
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ComponentCache {
    /// A cache in `dir`, or none at all (always compile) when `dir` is `None`,
    /// for code compiled for memories reserving `compact_bytes` each (bounds
    /// checked), or `None` for wide ones: the two compile differently, and an
    /// engine falling back to compact memories must not overwrite (and later
    /// find unusable) the entries of the usual wide ones.
    pub fn new(dir: Option<PathBuf>, compact_bytes: Option<usize>) -> Self {
        let mut key = format!("{ENGINE_SETTINGS};{}", std::env::consts::ARCH);
        if let Some(bytes) = compact_bytes {
            key.push_str(&format!(";compact-{bytes}"));
        }
        ComponentCache {
            dir,
            engine_key: hex::encode(&Sha256::digest(key.as_bytes())[..8]),
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
        if let Ok(compiled) = std::fs::read(&path) {
            // Read, not mapped: a file changed under a live mapping would
            // crash the host (SIGBUS) instead of failing one plugin.
            // SAFETY: the bytes were written by `Component::serialize` into a
            // directory owned by this host; wasmtime checks their header and
            // engine compatibility before use, and we recompile if that fails.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                // Compiled for a pool whose slots were larger than this
                // engine's (another `memory_mb`): recompiling says whether
                // it fits, and why not.
                Err(e) if format!("{e:#}").contains("pooling allocator") => {
                    tracing::debug!(path = %path.display(), "compiled plugin does not fit this pool: {e:#}")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unusable compiled plugin: {e:#}")
                }
            }
        }
        let component = compile(engine, wasm, Some(&path))?;
        if let Err(e) = store_atomically(&path, &component.serialize()?) {
            tracing::warn!(path = %path.display(), "cannot cache compiled plugin: {e}");
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

/// Write to a temporary file, then rename: a crash leaves either the old
/// entry or the new one, never half a file under the final name.
fn store_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
