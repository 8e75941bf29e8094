//! `overheads`: per-item overheads: the plugin boundary (wasm vs native), the
//! scheduler vs calling tract directly, and batching choices per model.

use crate::common::{load_model, paired_runs, repo_root, time_per_run};
use crate::jobs::{job_config, job_items, start_job};
use crate::native::{native_classify, native_digits_preprocess, native_imagenet_preprocess};
use anyhow::Result;
use serde_json::{Value, json};
use sluice_agent::infer::{InputShapes, Model};
use sluice_agent::runtime::Runtime;
use sluice_agent::schedule::{BatchConfig, ExecutionMode, Scheduler};
use sluice_agent::types::{RawItem, Tensor, stack_items};
use std::path::Path;
use std::time::Duration;

/// The image preprocessing of MobileNetV2 in wasm vs native, µs per item.
fn mobilenet_boundary(model: &Path, images_dir: &Path) -> Result<Value> {
    let runtime = Runtime::start(job_config(
        "mobilenet",
        ExecutionMode::Single,
        Some(model),
        None,
    )?)?;
    let pipeline = runtime.pipeline(None)?;
    let items = job_items("mobilenet", Some(images_dir))?;
    let n = items.len() as f64;
    let budget = Duration::from_millis(2000);
    let wasm = time_per_run(budget, || {
        items
            .chunks(8)
            .for_each(|b| drop(pipeline.preprocess().preprocess(b)))
    });
    let native = time_per_run(budget, || {
        items
            .iter()
            .for_each(|i| drop(native_imagenet_preprocess(&i.data)))
    });
    Ok(json!({
        "items": n,
        "wasm_preprocess_us_per_item": wasm * 1e6 / n,
        "native_preprocess_us_per_item": native * 1e6 / n,
    }))
}

pub(crate) fn overheads(mobilenet: Option<&Path>, images_dir: Option<&Path>) -> Result<Value> {
    let runtime = start_job("digits", ExecutionMode::Auto)?;
    let pipeline = runtime.pipeline(None)?;
    let items = job_items("digits", None)?;
    let batches: Vec<&[RawItem]> = items.chunks(32).collect();
    let n = items.len() as f64;

    // Plugin boundary: wasm plugins vs the same logic in native Rust.
    let tensors: Vec<Vec<Tensor>> = items
        .iter()
        .map(|i| vec![native_digits_preprocess(&i.data)])
        .collect();
    let outputs: Vec<sluice_agent::types::Inferred> = pipeline
        .scheduler()
        .infer_many(tensors.clone())
        .into_iter()
        .zip(&items)
        .map(|(o, i)| sluice_agent::types::Inferred {
            meta: i.meta.clone(),
            tensors: o.unwrap(),
        })
        .collect();
    let labels: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let budget = Duration::from_millis(1000);
    let wasm_pre = time_per_run(budget, || {
        batches
            .iter()
            .for_each(|b| drop(pipeline.preprocess().preprocess(b)))
    });
    let native_pre = time_per_run(budget, || {
        items
            .iter()
            .for_each(|i| drop(native_digits_preprocess(&i.data)))
    });
    let wasm_post = time_per_run(budget, || {
        outputs
            .chunks(32)
            .for_each(|b| drop(pipeline.postprocess().postprocess(b)))
    });
    let native_post = time_per_run(budget, || {
        outputs
            .iter()
            .for_each(|o| drop(native_classify(&o.tensors[0], &labels)))
    });

    // Scheduler vs tract directly, on the same batches of 32.
    let mut models = vec![(
        "digits MLP".to_owned(),
        repo_root().join("models/digits/digits_mlp.onnx"),
        InputShapes::new(),
        32usize,
    )];
    models.push((
        "anomaly autoencoder".into(),
        repo_root().join("models/anomaly/autoencoder.onnx"),
        InputShapes::new(),
        32,
    ));
    models.push((
        "text direction".into(),
        repo_root().join("models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        InputShapes::from([("x".to_owned(), vec![3, 48, 192])]),
        8,
    ));
    if let Some(path) = mobilenet {
        models.push(("MobileNetV2".into(), path.to_owned(), InputShapes::new(), 8));
    }
    let mut scheduler_rows = Vec::new();
    let mut batching_rows = Vec::new();
    for (name, path, shapes, batch) in &models {
        let model = load_model(path, shapes)?;
        let example = example_item(model.as_ref());
        let items: Vec<Vec<Tensor>> = (0..*batch).map(|_| example.clone()).collect();
        let stacked = stack_items(&items);
        let plan = model.plan(*batch)?;
        let scheduler = Scheduler::start(
            model.clone(),
            BatchConfig {
                max_batch_size: *batch,
                max_queue_delay_ms: 0,
                execution: ExecutionMode::Stacked,
                threads: 1,
                ..BatchConfig::default()
            },
        )?;
        // MobileNetV2 runs take about half a second each: 31 pairs keep the
        // median's noise near a percent or two on a busy machine.
        let paired = paired_runs(
            Duration::from_secs(3),
            31,
            || drop(plan.run(stacked.clone(), false).unwrap()),
            || drop(scheduler.infer_many(items.clone())),
        );
        let per_item = 1e6 / *batch as f64;
        scheduler_rows.push(json!({
            "model": name, "batch": batch,
            "raw_tract_us_per_item": paired.first * per_item,
            "scheduler_us_per_item": paired.second * per_item,
            // From the ratio, so the two overhead figures agree in sign.
            "overhead_us_per_item": (paired.ratio - 1.0) * paired.first * per_item,
            "overhead_percent": (paired.ratio - 1.0) * 100.0,
            "overhead_percent_quartiles": [
                (paired.ratio_quartiles.0 - 1.0) * 100.0,
                (paired.ratio_quartiles.1 - 1.0) * 100.0,
            ],
        }));

        // Batching: the adaptive choice vs always stacked vs always one by one.
        let budget = Duration::from_millis(if *batch > 8 { 800 } else { 1500 });
        let many: Vec<Vec<Tensor>> = (0..*batch * 4).map(|_| example.clone()).collect();
        let mut row = json!({ "model": name, "max_batch": batch, "items": many.len() });
        for mode in [
            ExecutionMode::Auto,
            ExecutionMode::Stacked,
            ExecutionMode::Single,
        ] {
            let config = BatchConfig {
                max_batch_size: *batch,
                max_queue_delay_ms: 0,
                execution: mode,
                ..BatchConfig::default()
            };
            let scheduler = Scheduler::start(model.clone(), config)?;
            let seconds = time_per_run(budget, || drop(scheduler.infer_many(many.clone())));
            let key = format!("{mode:?}").to_lowercase();
            row[format!("{key}_us_per_item")] = json!(seconds * 1e6 / many.len() as f64);
            if mode == ExecutionMode::Auto {
                row["auto_choice"] = json!({"chunk": scheduler.execution().chunk, "threads": scheduler.execution().threads});
            }
        }
        batching_rows.push(row);
    }

    Ok(json!({
        "plugin_boundary": {
            "items": n,
            "wasm_preprocess_us_per_item": wasm_pre * 1e6 / n,
            "native_preprocess_us_per_item": native_pre * 1e6 / n,
            "wasm_postprocess_us_per_item": wasm_post * 1e6 / n,
            "native_postprocess_us_per_item": native_post * 1e6 / n,
        },
        "plugin_boundary_mobilenet": match (mobilenet, images_dir) {
            (Some(model), Some(dir)) => Some(mobilenet_boundary(model, dir)?),
            _ => None,
        },
        "scheduler_vs_raw_tract": scheduler_rows,
        "batching": batching_rows,
    }))
}

fn example_item(model: &dyn Model) -> Vec<Tensor> {
    model
        .inputs()
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(axis, d)| if axis == 0 { 1 } else { d.unwrap_or(1) })
                .collect();
            let count: usize = shape.iter().product();
            // Deterministic, non-trivial values.
            let values: Vec<f32> = (0..count)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                .collect();
            Tensor::from_f32(spec.name.clone(), shape, &values)
        })
        .collect()
}
