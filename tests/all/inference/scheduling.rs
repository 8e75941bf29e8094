//! The scheduler: concurrent `wasi:nn` guest calls merged into batches, the
//! measured execution choice remembered, results in order and as single runs
//! give them, a full queue refusing at once; the runtime's worker and
//! intra-op threads giving the same results.

use super::{batching, digit_tensor, digits_model, measured};
use crate::common::*;
use sluice_agent::config::Config;
use sluice_agent::infer::{InputShapes, onnx_engine};
use sluice_agent::pipeline::process_all;
use sluice_agent::plugin::{EngineOptions, PluginHost, PluginKind, scheduler_nn};
use sluice_agent::runtime::Runtime;
use sluice_agent::schedule::{BatchConfig, ExecutionCache, ExecutionMode, Scheduler};
use sluice_agent::types::{ItemError, Tensor};
use std::collections::BTreeMap;

#[test]
fn concurrent_wasi_nn_guest_calls_are_merged_into_batches() {
    // A long queue delay so that the guests' calls, made at about the same
    // time from separate instances, meet in one batch.
    let config = BatchConfig {
        max_batch_size: 32,
        max_queue_delay_ms: 500,
        execution: ExecutionMode::Stacked,
        ..BatchConfig::default()
    };
    let scheduler = Scheduler::start(digits_model(), config).unwrap();
    let schedulers = BTreeMap::from([("digits".to_owned(), scheduler.clone())]);
    let host =
        PluginHost::with_nn(&EngineOptions::default(), scheduler_nn(&schedulers, 0)).unwrap();
    let guest = load(
        &host,
        "nn-guest",
        "nn-guest",
        PluginKind::Preprocessor,
        "[plugins.p.config]\nmodel = \"digits\"\ninput = \"input\"\n",
    );

    let files: Vec<String> = (0..8).map(|i| format!("{i:04}.png")).collect();
    let direct = scheduler.infer_many(files.iter().map(|f| vec![digit_tensor(f)]).collect());
    let before = scheduler.stats();
    let barrier = std::sync::Barrier::new(files.len());
    let from_guests: Vec<Vec<Tensor>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| {
                let (guest, barrier) = (&guest, &barrier);
                scope.spawn(move || {
                    let bytes = digit_tensor(file).data;
                    barrier.wait();
                    guest
                        .preprocess(&[item(file, "application/octet-stream", bytes)])
                        .remove(0)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = scheduler.stats();
    let (guest_items, guest_batches) = (after.items - before.items, after.batches - before.batches);
    assert_eq!(guest_items, files.len() as u64);
    assert!(
        guest_batches < guest_items,
        "{guest_items} guest calls ran in {guest_batches} batches: not merged"
    );
    for (guest_output, direct_output) in from_guests.iter().zip(&direct) {
        let direct_output = direct_output.as_ref().unwrap();
        assert_eq!(guest_output[0].name, direct_output[0].name);
        // Same answer through wasi:nn as through the host (up to the last bits,
        // which depend on the batch size the item ran in).
        let (a, b) = (
            guest_output[0].f32_values().unwrap(),
            direct_output[0].f32_values().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
            "{a:?} vs {b:?}"
        );
    }
}

#[test]
fn the_measured_execution_choice_is_remembered_per_model_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ExecutionCache::new(dir.path(), &"ab".repeat(32));
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    let first = Scheduler::start_cached(digits_model(), measured(8), Some(&cache)).unwrap();
    assert_eq!(files(), 1, "the measurement is kept");
    // Measurements are timings: equal to the last bit only when reused.
    let again = Scheduler::start_cached(digits_model(), measured(8), Some(&cache)).unwrap();
    assert_eq!(again.execution(), first.execution());
    assert!(!first.execution().measurements.is_empty());

    // Other settings (or another model digest) measure afresh.
    // (Which chunk sizes a measurement reaches depends on timings: the
    // search stops at one much slower than the best, as under emulation.)
    let other = Scheduler::start_cached(digits_model(), measured(16), Some(&cache)).unwrap();
    assert_eq!(files(), 2);
    assert_ne!(other.execution(), first.execution(), "measured, not reused");
    let other_model = ExecutionCache::new(dir.path(), &"cd".repeat(32));
    Scheduler::start_cached(digits_model(), measured(8), Some(&other_model)).unwrap();
    assert_eq!(files(), 3);

    // A damaged file costs a measurement, never the start: it is measured
    // again and remembered again.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"{not json").unwrap();
    }
    let remeasured = Scheduler::start_cached(digits_model(), measured(8), Some(&cache)).unwrap();
    assert!(!remeasured.execution().measurements.is_empty());
    let rewritten = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .filter(|bytes| bytes.as_slice() != b"{not json")
        .count();
    assert_eq!(
        rewritten, 1,
        "the new measurement replaced the damaged file"
    );
}

#[test]
fn results_come_back_in_order_and_match_single_item_runs() {
    let scheduler = Scheduler::start(digits_model(), batching(16)).unwrap();
    let items: Vec<Vec<Tensor>> = (0..50)
        .map(|i| vec![digit_tensor(&format!("{i:04}.png"))])
        .collect();
    let batched = scheduler.infer_many(items.clone());
    for (item, output) in items.into_iter().zip(batched) {
        let alone = scheduler.infer(item).unwrap();
        let (a, b) = (
            alone[0].f32_values().unwrap(),
            output.unwrap()[0].f32_values().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
            "{a:?} vs {b:?}"
        );
    }
}

#[test]
fn a_full_queue_refuses_new_requests_at_once() {
    let config = BatchConfig {
        max_batch_size: 100,
        max_queue_delay_ms: 300,
        queue_capacity: 4,
        ..BatchConfig::default()
    };
    let scheduler = Scheduler::start(digits_model(), config).unwrap();
    let results = scheduler.infer_many((0..10).map(|_| vec![digit_tensor("0000.png")]).collect());
    assert!(results[..4].iter().all(Result::is_ok));
    for result in &results[4..] {
        assert!(
            matches!(result, Err(ItemError::Busy { message, .. }) if message.contains("queue full")),
            "{result:?}"
        );
    }
    assert_eq!(scheduler.stats().rejected_full, 6);
    // Once answered, capacity is free again.
    assert!(scheduler.infer(vec![digit_tensor("0001.png")]).is_ok());
}

#[test]
fn runtime_workers_set_the_pipeline_threads_and_every_item_succeeds() {
    let path = repo_root().join("examples/digits/sluice.toml");
    let mut config = Config::load(&path).unwrap();
    config.runtime.cache_dir = Some(shared_cache_dir());
    config.runtime.pooling = sluice_agent::config::Pooling::On;
    config.runtime.workers = 12;
    for model in config.models.values_mut() {
        model.batching = batching(4);
    }
    let runtime = Runtime::start(config).unwrap();
    let pipeline = runtime.pipeline(None).unwrap();
    assert_eq!(pipeline.pool().current_num_threads(), 12);
    let (items, _) = digit_items();
    // 12 workers, batches of 4: up to 12 calls into each plugin at once.
    let outcomes = process_all(pipeline, items.clone(), &|_| {});
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

#[test]
fn intra_op_threads_give_the_single_threaded_results() {
    // A conv net (PP-OCR's text direction classifier): its matrix products
    // spread over the inference pool must compute what one thread does.
    let path = repo_root().join("models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx");
    let shapes = InputShapes::from([("x".to_owned(), vec![3, 48, 192])]);
    let model = onnx_engine()
        .load("text-direction", &std::fs::read(&path).unwrap(), &shapes)
        .unwrap();
    let n = 2 * 3 * 48 * 192;
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
        .collect();
    let input = Tensor::from_f32("x", vec![2, 3, 48, 192], &values);
    let plan = model.plan(2).unwrap();
    let one = plan.run(vec![input.clone()], false).unwrap();
    let many = plan.run(vec![input], true).unwrap();
    let (one, many) = (one[0].f32_values().unwrap(), many[0].f32_values().unwrap());
    assert_eq!(one.len(), 4);
    for (a, b) in one.iter().zip(&many) {
        assert!((a - b).abs() <= 1e-5, "{one:?} vs {many:?}");
    }
}
