//! A plugin's `wasi:nn` calls that fail: the guest is told why (a code
//! that fits and the cause as the error's data, not "Failed while accessing
//! backend"), and no shape a guest can write, however large, makes the host
//! overflow (it panicked on `[2^31, 2^31]`).

use crate::common::*;
use sluice_agent::infer::{InputShapes, onnx_engine};
use sluice_agent::plugin::{EngineOptions, PluginHost, PluginKind, scheduler_nn};
use sluice_agent::schedule::{BatchConfig, Scheduler};
use sluice_agent::types::ItemError;
use std::collections::BTreeMap;

fn guest(model: &str) -> (sluice_agent::plugin::Plugin, Scheduler) {
    let path = repo_root().join("models/digits/digits_mlp.onnx");
    let digits = onnx_engine()
        .load("digits", &std::fs::read(path).unwrap(), &InputShapes::new())
        .unwrap();
    let scheduler = Scheduler::start(digits, BatchConfig::default()).unwrap();
    let schedulers = BTreeMap::from([("digits".to_owned(), scheduler.clone())]);
    let host = PluginHost::with_nn(
        &EngineOptions {
            cache_dir: Some(shared_cache_dir()),
            ..EngineOptions::default()
        },
        scheduler_nn(&schedulers, 0),
    )
    .unwrap();
    let plugin = load(
        &host,
        "nn-guest",
        "nn-guest",
        PluginKind::Preprocessor,
        &format!("[plugins.p.config]\nmodel = \"{model}\"\ninput = \"input\"\n"),
    );
    (plugin, scheduler)
}

/// What the guest was told, as it reports it: `<call>: <code>: <data>`
/// (the code as its bindings print it, e.g. `ErrorCode::InvalidArgument`).
fn told(result: Result<Vec<sluice_agent::types::Tensor>, ItemError>) -> String {
    match result {
        Err(ItemError::Internal { message, .. }) => message,
        other => panic!("expected the guest's report of a failed call, got {other:?}"),
    }
}

#[test]
fn a_failing_wasi_nn_call_tells_the_guest_why() {
    let (plugin, scheduler) = guest("digits");
    let before = scheduler.stats().items;
    let results = plugin.preprocess(&[
        text("short", "dims:1,64"),
        text("overflow", "dims:2147483648,2147483648"),
        text(
            "largest",
            "dims:4294967295,4294967295,4294967295,4294967295",
        ),
        text("batch", "dims:0,64"),
    ]);
    let mut results = results.into_iter();
    let short = told(results.next().unwrap());
    assert!(
        short.starts_with("compute: ")
            && short.contains("InvalidArgument")
            && short
                .ends_with("tensor `input`: 0 bytes do not fill shape [1, 64] of F32 (256 bytes)"),
        "{short}"
    );
    for _ in 0..2 {
        let message = told(results.next().unwrap());
        assert!(
            message.contains("InvalidArgument")
                && message.contains("describes more than 1073741824 bytes"),
            "{message}"
        );
    }
    let batch = told(results.next().unwrap());
    assert!(batch.contains("batch axis 0 of 1 to 256 items"), "{batch}");
    assert_eq!(scheduler.stats().items, before, "nothing reached the model");

    let (unknown, _) = guest("no-such-model");
    let message = told(unknown.preprocess(&[text("x", "dims:1,64")]).remove(0));
    assert!(
        message.contains("NotFound")
            && message.ends_with("no model `no-such-model` (the host has: digits)"),
        "{message}"
    );
}
