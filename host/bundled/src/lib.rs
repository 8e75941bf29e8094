//! The plugins shipped with Sluice, compiled to `wasm32-wasip2` components by
//! this crate's build script from the `plugins/` workspace.
//!
//! Product plugins are embedded ([`get`]); every plugin, test fixtures
//! included, is also available as a file ([`path`]) for tests and benches.

#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The embedded bytes of product plugin `name` (e.g. `image-preprocess`).
pub fn get(name: &str) -> Option<&'static [u8]> {
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// Names of the embedded product plugins.
pub fn names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(name, _)| *name).collect()
}

/// Path of the built `.wasm` of any plugin, test fixtures included.
pub fn path(name: &str) -> Option<&'static std::path::Path> {
    PLUGIN_FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, p)| std::path::Path::new(*p))
}
