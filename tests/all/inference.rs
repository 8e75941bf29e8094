//! Inference end to end with the real plugins and real models: accuracy of
//! the digits and anomaly pipelines, batching through the scheduler (also
//! for guests calling `wasi:nn`), and each way a model or a tensor can be bad.

use crate::common::*;
use sluice_agent::config::Config;
use sluice_agent::infer::{InputShapes, ModelError, onnx_engine, read_model_file};
use sluice_agent::pipeline::process_all;
use sluice_agent::plugin::{EngineOptions, PluginHost, PluginKind, scheduler_nn};
use sluice_agent::runtime::Runtime;
use sluice_agent::schedule::{BatchConfig, ExecutionCache, ExecutionMode, Scheduler};
use sluice_agent::types::{DType, ItemError, RawItem, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn expected(model: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo_root().join("models").join(model).join("expected.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Start an example configuration with its model's batching replaced.
fn start_example(example: &str, batching: BatchConfig) -> Runtime {
    let path = repo_root()
        .join("examples")
        .join(example)
        .join("sluice.toml");
    let mut config = Config::load(&path).unwrap();
    config.runtime.cache_dir = Some(shared_cache_dir());
    for model in config.models.values_mut() {
        model.batching = batching.clone();
    }
    Runtime::start(config).unwrap()
}

/// Batching with a pinned execution (one stacked tensor per batch): tests
/// must not depend on what a measurement on a busy machine chose.
pub(crate) fn batching(max_batch_size: usize) -> BatchConfig {
    BatchConfig {
        max_batch_size,
        execution: ExecutionMode::Stacked,
        ..BatchConfig::default()
    }
}

/// Batching whose execution is measured (and remembered).
fn measured(max_batch_size: usize) -> BatchConfig {
    BatchConfig {
        execution: ExecutionMode::Auto,
        ..batching(max_batch_size)
    }
}

fn document(result: &Result<sluice_agent::types::Document, ItemError>) -> serde_json::Value {
    serde_json::from_slice(&result.as_ref().unwrap_or_else(|e| panic!("{e}")).body).unwrap()
}

#[test]
fn digits_pipeline_matches_the_models_accuracy_at_batch_1_and_32() {
    let (items, labels) = digit_items();
    let model_accuracy = expected("digits")["onnx_accuracy"].as_f64().unwrap();
    let mut runs = Vec::new();
    for batch in [1, 32] {
        let runtime = start_example("digits", batching(batch));
        let pipeline = runtime.pipeline(None).unwrap();
        // The start-up sample went through already.
        let before = pipeline.scheduler().stats();
        let outcomes = process_all(pipeline, items.clone(), &|_| {});
        assert_eq!(outcomes.len(), items.len());
        let docs: Vec<serde_json::Value> = outcomes.iter().map(|o| document(&o.result)).collect();
        for (outcome, item) in outcomes.iter().zip(&items) {
            assert_eq!(outcome.id, item.meta.id, "results keep input order");
        }
        let correct = docs
            .iter()
            .zip(&labels)
            .filter(|(d, l)| d["label"] == **l)
            .count();
        let accuracy = correct as f64 / items.len() as f64;
        // The pipeline feeds the model exactly what the reference did (X/16),
        // so it must reach the model's own held-out accuracy.
        assert!(
            (accuracy - model_accuracy).abs() <= 1.0 / items.len() as f64,
            "batch {batch}: {accuracy} vs {model_accuracy}"
        );
        let stats = pipeline.scheduler().stats();
        let (ran, batches) = (stats.items - before.items, stats.batches - before.batches);
        assert_eq!(ran, items.len() as u64);
        if batch == 32 {
            assert!(
                batches < items.len() as u64 / 4,
                "items were batched: {stats:?}"
            );
        } else {
            assert_eq!(batches, items.len() as u64);
        }
        runs.push(docs);
    }
    for (one, many) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(one["label"], many["label"]);
        let (a, b) = (
            one["score"].as_f64().unwrap(),
            many["score"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-5,
            "batch size changed a score: {a} vs {b}"
        );
    }
}

/// Area under the ROC curve: the chance a random anomaly scores above a
/// random normal record.
fn auc(scores: &[(f64, bool)]) -> f64 {
    let positives: Vec<f64> = scores.iter().filter(|(_, p)| *p).map(|(s, _)| *s).collect();
    let negatives: Vec<f64> = scores
        .iter()
        .filter(|(_, p)| !*p)
        .map(|(s, _)| *s)
        .collect();
    let wins: f64 = positives
        .iter()
        .flat_map(|p| {
            negatives.iter().map(move |n| {
                if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    wins / (positives.len() * negatives.len()) as f64
}

#[test]
fn anomaly_pipeline_matches_the_models_auc_and_alerts() {
    let text = std::fs::read_to_string(repo_root().join("models/anomaly/heldout.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let (items, anomalous): (Vec<RawItem>, Vec<bool>) = lines
        .enumerate()
        .map(|(ix, row)| {
            (
                item(
                    &format!("row-{ix}"),
                    "text/csv",
                    format!("{header}\n{row}\n"),
                ),
                row.ends_with(",anomaly"),
            )
        })
        .unzip();
    let runtime = start_example("anomaly", batching(32));
    let outcomes = process_all(runtime.pipeline(None).unwrap(), items, &|_| {});
    let docs: Vec<serde_json::Value> = outcomes.iter().map(|o| document(&o.result)).collect();
    let scored: Vec<(f64, bool)> = docs
        .iter()
        .map(|d| d["score"].as_f64().unwrap())
        .zip(anomalous.iter().copied())
        .collect();
    let reference = expected("anomaly");
    let measured_auc = auc(&scored);
    assert!(
        (measured_auc - reference["auc"].as_f64().unwrap()).abs() < 0.002,
        "AUC {measured_auc} vs {reference}"
    );
    let correct = docs
        .iter()
        .zip(&anomalous)
        .filter(|(d, a)| d["alert"].as_bool() == Some(**a))
        .count();
    let accuracy = correct as f64 / docs.len() as f64;
    assert!(
        (accuracy - reference["accuracy"].as_f64().unwrap()).abs() <= 1.0 / docs.len() as f64,
        "accuracy {accuracy}"
    );
}

pub(crate) fn digits_model() -> std::sync::Arc<dyn sluice_agent::infer::Model> {
    let path = repo_root().join("models/digits/digits_mlp.onnx");
    onnx_engine()
        .load("digits", &std::fs::read(path).unwrap(), &InputShapes::new())
        .unwrap()
}

/// One digit as the model's input tensor.
pub(crate) fn digit_tensor(file: &str) -> Tensor {
    let png = image::open(repo_root().join("models/digits/heldout").join(file))
        .unwrap()
        .to_luma8();
    let values: Vec<f32> = png.pixels().map(|p| p.0[0] as f32 / 240.0).collect();
    Tensor::from_f32("input", vec![1, 64], &values)
}

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
fn a_bad_tensor_fails_only_its_item() {
    let scheduler = Scheduler::start(digits_model(), batching(8)).unwrap();
    let good = vec![digit_tensor("0000.png")];
    let wrong_shape = vec![Tensor::from_f32("input", vec![1, 63], &[0.0; 63])];
    let wrong_dtype = vec![Tensor {
        name: "input".into(),
        dtype: DType::U8,
        shape: vec![1, 64],
        data: vec![0; 64],
    }];
    let truncated = vec![Tensor {
        data: vec![0; 10],
        ..digit_tensor("0001.png")
    }];
    let two_inputs = vec![digit_tensor("0002.png"), digit_tensor("0003.png")];
    let results = scheduler.infer_many(vec![
        good.clone(),
        wrong_shape,
        wrong_dtype,
        truncated,
        two_inputs,
        good,
    ]);
    assert!(results[0].is_ok() && results[5].is_ok());
    let message = |r: &Result<Vec<Tensor>, ItemError>| match r {
        Err(ItemError::Inference { model, message }) => {
            assert_eq!(model, "digits");
            message.clone()
        }
        other => panic!("expected an inference error, got {other:?}"),
    };
    assert!(
        message(&results[1]).contains("[N, 64]"),
        "{}",
        message(&results[1])
    );
    assert!(
        message(&results[2]).contains("F32"),
        "{}",
        message(&results[2])
    );
    assert!(
        message(&results[3]).contains("bytes"),
        "{}",
        message(&results[3])
    );
    assert!(
        message(&results[4]).contains("1 input"),
        "{}",
        message(&results[4])
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

fn load_error(path: &Path, sha256: Option<&str>) -> ModelError {
    match read_model_file("m", path, sha256)
        .and_then(|bytes| onnx_engine().load("m", &bytes, &InputShapes::new()))
    {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_models_are_refused_with_the_cause() {
    let digits = repo_root().join("models/digits/digits_mlp.onnx");
    let err = load_error(&digits, Some(&"0".repeat(64)));
    assert!(
        matches!(&err, ModelError::Digest { actual, .. } if actual.starts_with("7aeb717b")),
        "{err}"
    );

    let err = load_error(
        &repo_root().join("models/test/unsupported_scaler.onnx"),
        None,
    );
    assert!(
        matches!(&err, ModelError::Unsupported { ops, .. } if ops == &["Scaler"]),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let truncated: PathBuf = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(&digits).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load_error(&truncated, None),
        ModelError::Parse { .. }
    ));

    let err = load_error(&dir.path().join("missing.onnx"), None);
    assert!(
        matches!(&err, ModelError::Read { path, .. } if path.ends_with("missing.onnx")),
        "{err}"
    );
    // The OS error is kept as the source, not flattened into text.
    let os_error = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<std::io::Error>());
    assert_eq!(
        os_error.map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound),
        "{err}"
    );

    // An input with open dimensions must be given its shape.
    let text_direction =
        repo_root().join("models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx");
    let err = load_error(&text_direction, None);
    assert!(err.to_string().contains("input_shapes.x"), "{err}");
    let shapes = InputShapes::from([("x".to_owned(), vec![3, 48, 192])]);
    let model = onnx_engine()
        .load(
            "text-direction",
            &std::fs::read(&text_direction).unwrap(),
            &shapes,
        )
        .unwrap();
    assert_eq!(
        model.inputs()[0].shape,
        vec![None, Some(3), Some(48), Some(192)]
    );
    assert_eq!(model.outputs()[0].shape, vec![None, Some(2)]);
}

#[test]
fn a_broken_plugin_disables_only_its_pipeline() {
    let text = std::fs::read_to_string(repo_root().join("examples/digits/sluice.toml")).unwrap();
    let broken = format!(
        "{text}\n[plugins.ghost]\npath = \"/nonexistent/ghost.wasm\"\n\n[pipelines.haunted]\npreprocess = \"ghost\"\nmodel = \"digits\"\npostprocess = \"digits-post\"\n"
    );
    let config = Config::parse(&broken, &repo_root().join("examples/digits")).unwrap();
    let runtime = Runtime::start(config).unwrap();
    assert!(runtime.pipeline(Some("digits")).is_ok());
    assert!(runtime.pipeline(Some("haunted")).is_err());
    let problems: Vec<String> = runtime.problems().iter().map(|p| p.to_string()).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("plugin `ghost`") && p.contains("/nonexistent/ghost.wasm")),
        "{problems:?}"
    );
    let (items, _) = digit_items();
    let outcomes = process_all(
        runtime.pipeline(Some("digits")).unwrap(),
        items[..5].to_vec(),
        &|_| {},
    );
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
}

#[test]
fn a_preprocessor_producing_the_wrong_tensor_fails_each_item_clearly() {
    // `misbehave` echoes bytes as a u8 tensor: not what the digits model takes.
    let example = std::fs::read_to_string(repo_root().join("examples/digits/sluice.toml")).unwrap();
    let config_text = example.replace(
        "path = \"bundled:image-preprocess\"",
        &format!(
            "path = {:?}",
            plugin_path("misbehave").display().to_string()
        ),
    );
    let mut config = Config::parse(&config_text, &repo_root().join("examples/digits")).unwrap();
    config.plugins.get_mut("digits-pre").unwrap().config = toml::Table::new();
    // Without a start-up sample (which would refuse the pipeline at start).
    config.pipelines.get_mut("digits").unwrap().sample = None;
    let runtime = Runtime::start(config).unwrap();
    let outcomes = runtime
        .pipeline(None)
        .unwrap()
        .process(vec![text("a", "hello"), text("b", "invalid")]);
    assert!(
        matches!(&outcomes[0].result, Err(ItemError::Inference { message, .. }) if message.contains("input `input`")),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(&outcomes[1].result, Err(ItemError::InvalidInput { .. })),
        "{:?}",
        outcomes[1]
    );
}

#[test]
fn guests_load_model_bytes_only_when_configured_and_under_the_cap() {
    let models = repo_root().join("models/digits");
    let size = std::fs::metadata(models.join("digits_mlp.onnx"))
        .unwrap()
        .len() as usize;
    let body = format!(
        "[plugins.p.config]\nmodel_file = \"/m/digits_mlp.onnx\"\ninput = \"input\"\n[plugins.p.grants]\ndirs = [{{ host = {:?}, guest = \"/m\" }}]\n",
        models.display().to_string()
    );
    let digit = item(
        "d",
        "application/octet-stream",
        digit_tensor("0000.png").data,
    );
    // The guest is told why (not allowed, over the cap), not only that the
    // load failed.
    for (cap, expect) in [
        (0, Err("loading model bytes from a plugin is not allowed")),
        (size - 1, Err("over runtime.guest_model_max_bytes")),
        (size, Ok(())),
    ] {
        let host = PluginHost::with_nn(
            &EngineOptions::default(),
            scheduler_nn(&BTreeMap::new(), cap),
        )
        .unwrap();
        let guest = load(
            &host,
            "nn-guest",
            "nn-guest",
            PluginKind::Preprocessor,
            &body,
        );
        let result = guest.preprocess(std::slice::from_ref(&digit)).remove(0);
        match (expect, result) {
            (Ok(()), Ok(tensors)) => assert_eq!(tensors[0].shape, vec![1, 10]),
            (Err(needle), Err(ItemError::Internal { message, .. })) => {
                assert!(message.contains(needle), "cap {cap}: {message}")
            }
            (expect, result) => panic!("cap {cap}: expected {expect:?}, got {result:?}"),
        }
    }
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
