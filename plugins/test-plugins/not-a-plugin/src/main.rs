//! # not-a-plugin
//!
//! A plain WASI command component (`wasi:cli/command`), not a Sluice plugin:
//! it exports neither `sluice:plugin/preprocess` nor `postprocess`. The host's
//! tests load it to check that a component of the wrong world is refused with
//! a clear error.

fn main() {
    println!("hello");
}
