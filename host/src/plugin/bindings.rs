//! Host-side bindings of the plugin worlds in `wit/`. The postprocessor world
//! reuses the preprocessor world's imported interfaces, so shared types such
//! as `tensor` are one Rust type.

pub mod pre {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:plugin/preprocessor",
    });
}

pub mod post {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:plugin/postprocessor",
        with: {
            "sluice:plugin/types": super::pre::sluice::plugin::types,
            "sluice:plugin/log": super::pre::sluice::plugin::log,
            "wasi:nn": super::pre::wasi::nn,
        },
    });
}

pub use pre::sluice::plugin::{log, types as wit};

/// The export a component must have to be a preprocessor.
pub const PREPROCESS_EXPORT: &str = "sluice:plugin/preprocess@0.1.0";
/// The export a component must have to be a postprocessor.
pub const POSTPROCESS_EXPORT: &str = "sluice:plugin/postprocess@0.1.0";
