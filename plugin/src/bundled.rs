//! Plugins shipped inside the binary (`bundled:NAME` in a configuration).
//! Empty when the `bundled-plugins` feature is off, as in a minimal build
//! that only loads plugin files.

#[cfg(feature = "bundled-plugins")]
pub use sluice_bundled::{get, names};

/// The embedded bytes of product plugin `name`: none in this build.
#[cfg(not(feature = "bundled-plugins"))]
pub fn get(_name: &str) -> Option<&'static [u8]> {
    None
}

/// Names of the embedded product plugins: none in this build.
#[cfg(not(feature = "bundled-plugins"))]
pub fn names() -> Vec<&'static str> {
    Vec::new()
}
