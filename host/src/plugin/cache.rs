//! The compiled-plugin cache: compiling a component takes from milliseconds
//! (small Rust plugins) to seconds (an 18 MB componentize-py plugin), so each
//! compiled component is kept on disk as a `.cwasm` and reused across restarts.
//!
//! The key is the SHA-256 of the `.wasm` bytes plus the engine's
//! compatibility hash (target, tunables, epoch/fuel settings, wasmtime
//! version): a `.cwasm` is only valid for an engine configured exactly like
//! the one that produced it. An entry that still fails to load (truncated by a
//! crash, written by another build) is recompiled and overwritten.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a precompiled `.cwasm` from the cache.
    Hit,
    /// Compiled now (and stored, if a cache directory is set).
    Compiled,
}

pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ComponentCache {
    /// A cache in `dir`, or none at all (always compile) when `dir` is `None`.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ComponentCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// The component for `wasm`, from the cache or compiled now.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(path) = self.entry_path(wasm) else {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Compiled));
        };
        if let Ok(compiled) = std::fs::read(&path) {
            // Read, not mapped: a file changed under a live mapping would
            // crash the host (SIGBUS) instead of failing one plugin.
            // SAFETY: the bytes were written by `Component::serialize` into a
            // directory owned by this host; wasmtime checks their header and
            // engine compatibility before use, and we recompile if that fails.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unusable compiled plugin: {e:#}")
                }
            }
        }
        let component = Component::new(engine, wasm)?;
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

/// Write to a temporary file, then rename: a crash leaves either the old
/// entry or the new one, never half a file under the final name.
fn store_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
