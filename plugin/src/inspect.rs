//! `sluice plugin inspect`: what a component is, what it asks for, and what
//! it would be granted.

use super::{PluginHost, PluginKind};
use crate::config::Grants;
use crate::error::PluginErrorCause;
use crate::options::{PluginOption, component_options};
use sha2::{Digest, Sha256};
use std::fmt;

/// Everything `plugin inspect` reports about one component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentReport {
    /// Size of the component file.
    pub size_bytes: usize,
    /// SHA-256 of the component's bytes, hex.
    pub sha256: String,
    /// The Sluice world it targets, if any.
    pub world: Option<&'static str>,
    /// The interfaces it imports, as named in the component.
    pub imports: Vec<String>,
    /// The interfaces it exports.
    pub exports: Vec<String>,
    /// Whether the host can satisfy every import, and why not.
    pub link_error: Option<String>,
    /// The capabilities the plugin would get from its configuration.
    pub granted: Vec<String>,
    /// Imports whose capability is not granted: calls to them will fail.
    pub denied: Vec<String>,
    /// Whether the compiled component came from the compiled-plugin cache
    /// (else it was compiled now, and cached if there is a cache).
    pub from_cache: bool,
    /// The configuration keys its author documents (its `sluice-options`
    /// section); `None`: it documents none.
    pub options: Option<Vec<PluginOption>>,
    /// Why its options section could not be read, if it could not.
    pub options_error: Option<String>,
}

/// Compile `wasm` and describe it; `grants` is what its configuration grants.
pub fn inspect_component(
    host: &PluginHost,
    wasm: &[u8],
    grants: &Grants,
) -> Result<ComponentReport, PluginErrorCause> {
    let engine = host.engine().engine();
    let (component, outcome) = host
        .engine()
        .cache()
        .load(engine, wasm)
        .map_err(super::cache_error)?;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let link_error = host
        .linker
        .instantiate_pre(&component)
        .err()
        .map(|e| format!("{e:#}"));
    let (granted, denied) = capabilities(&imports, grants);
    // A malformed section is reported, not fatal: the plugin may still run.
    let (options, options_error) = match component_options(wasm) {
        Ok(options) => (options, None),
        Err(e) => (None, Some(e)),
    };
    Ok(ComponentReport {
        size_bytes: wasm.len(),
        sha256: hex::encode(Sha256::digest(wasm)),
        world: PluginKind::of(&component, engine).map(PluginKind::world),
        imports,
        exports,
        link_error,
        granted,
        denied,
        from_cache: outcome == super::CacheOutcome::Hit,
        options,
        options_error,
    })
}

/// Pair the capability-bearing WASI imports with the grants.
fn capabilities(imports: &[String], grants: &Grants) -> (Vec<String>, Vec<String>) {
    let mut granted = Vec::new();
    for dir in &grants.dirs {
        let mode = if dir.writable {
            "read-write"
        } else {
            "read-only"
        };
        granted.push(format!(
            "directory {} as {} ({mode})",
            dir.host.display(),
            dir.guest
        ));
    }
    for key in grants.env.keys() {
        granted.push(format!("environment variable {key}"));
    }
    if grants.stdio {
        granted.push("stdout/stderr, into the log".into());
    }
    for addr in &grants.network {
        granted.push(format!("network address {addr}"));
    }
    let uses = |prefix: &str| imports.iter().any(|i| i.starts_with(prefix));
    let mut denied = Vec::new();
    if uses("wasi:filesystem/") && grants.dirs.is_empty() {
        denied.push("wasi:filesystem: no directories granted, every open fails".into());
    }
    if uses("wasi:cli/environment") && grants.env.is_empty() {
        denied.push("wasi:cli/environment: no variables granted, the environment is empty".into());
    }
    if uses("wasi:sockets/") && grants.network.is_empty() {
        denied.push("wasi:sockets: no addresses granted, every connect and bind fails".into());
    }
    (granted, denied)
}

impl fmt::Display for ComponentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "size:     {} bytes", self.size_bytes)?;
        writeln!(f, "sha256:   {}", self.sha256)?;
        match self.world {
            Some(world) => writeln!(f, "world:    {world}")?,
            None => writeln!(
                f,
                "world:    none (not a Sluice plugin: it exports no sluice:plugin interface)"
            )?,
        }
        let compiled = if self.from_cache {
            "from the compiled-plugin cache"
        } else {
            "now"
        };
        writeln!(f, "compiled: {compiled}")?;
        match &self.link_error {
            None => writeln!(f, "links:    yes, the host provides every import")?,
            Some(e) => writeln!(f, "links:    NO: {e}")?,
        }
        let list = |f: &mut fmt::Formatter<'_>, title: &str, items: &[String], empty: &str| {
            writeln!(f, "{title}:")?;
            if items.is_empty() {
                writeln!(f, "  {empty}")?;
            }
            items.iter().try_for_each(|i| writeln!(f, "  {i}"))
        };
        list(f, "exports", &self.exports, "(none)")?;
        list(f, "imports", &self.imports, "(none)")?;
        list(
            f,
            "granted",
            &self.granted,
            "nothing: no files, network, environment or stdio",
        )?;
        if !self.denied.is_empty() {
            list(f, "denied", &self.denied, "")?;
        }
        writeln!(f, "options:")?;
        match (&self.options, &self.options_error) {
            (_, Some(e)) => writeln!(f, "  unreadable: {e}"),
            (None, None) => writeln!(
                f,
                "  none documented (the component has no `{}` section)",
                crate::options::SECTION
            ),
            (Some(options), None) => options.iter().try_for_each(|o| {
                match &o.default {
                    Some(default) => writeln!(f, "  {} = {default}", o.key)?,
                    None => writeln!(f, "  {} (required)", o.key)?,
                }
                writeln!(f, "      {}", o.meaning)
            }),
        }
    }
}
