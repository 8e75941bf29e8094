//! WIT bindings for both plugin worlds. The postprocessor world reuses the
//! imported interfaces generated for the preprocessor world, so a `Tensor` is
//! one type whichever world a plugin targets.

pub mod preprocessor {
    wit_bindgen::generate!({
        path: "wit",
        world: "sluice:plugin/preprocessor",
        pub_export_macro: true,
        default_bindings_module: "sluice_guest::bindings::preprocessor",
        additional_derives: [PartialEq],
        generate_all,
    });
}

pub mod postprocessor {
    wit_bindgen::generate!({
        path: "wit",
        world: "sluice:plugin/postprocessor",
        pub_export_macro: true,
        default_bindings_module: "sluice_guest::bindings::postprocessor",
        with: {
            "sluice:plugin/types@0.1.0": crate::bindings::preprocessor::sluice::plugin::types,
            "sluice:plugin/log@0.1.0": crate::bindings::preprocessor::sluice::plugin::log,
            "wasi:nn/graph@0.2.0-rc-2024-10-28": crate::bindings::preprocessor::wasi::nn::graph,
            "wasi:nn/inference@0.2.0-rc-2024-10-28": crate::bindings::preprocessor::wasi::nn::inference,
            "wasi:nn/tensor@0.2.0-rc-2024-10-28": crate::bindings::preprocessor::wasi::nn::tensor,
            "wasi:nn/errors@0.2.0-rc-2024-10-28": crate::bindings::preprocessor::wasi::nn::errors,
        },
    });
}

pub use postprocessor::exports::sluice::plugin::postprocess;
pub use preprocessor::exports::sluice::plugin::preprocess;
pub use preprocessor::sluice::plugin::{log as host_log, types};
pub use preprocessor::wasi::nn;
