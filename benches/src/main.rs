//! `sluice-bench`: the Rust side of Sluice's benchmarks. Each subcommand
//! measures one thing and prints one JSON document; `benches/run.sh` runs
//! them all beside the Python + onnxruntime peer and writes BENCHMARKS.md.
//!
//! Times come from many repetitions inside one process; where two things
//! are compared (wasm vs native, scheduler vs raw tract) they are measured
//! alternately in the same run, so that machine noise hits both.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use sluice::config::Config;
use sluice::infer::tract::TractBackend;
use sluice::infer::{Backend, InputShapes, Model};
use sluice::runtime::{Runtime, process_all};
use sluice::schedule::{BatchConfig, ExecutionMode, Scheduler};
use sluice::types::{RawItem, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// tract on the peer's exact inputs: time per batch and max abs diff
    /// against onnxruntime's outputs (from `benches/peer/engine.py`).
    Engine {
        /// The folder engine.py wrote (index.json plus .bin files).
        #[arg(long)]
        peer_dir: PathBuf,
    },
    /// A whole pipeline (plugins, scheduler, tract) over a job's inputs.
    Pipeline {
        /// digits | anomaly
        #[arg(long)]
        job: String,
        /// Process the input set this many times.
        #[arg(long, default_value_t = 20)]
        repeat: usize,
        /// auto | stacked | single
        #[arg(long, default_value = "auto")]
        execution: String,
    },
    /// Per-item overheads: the plugin boundary (wasm vs native), the
    /// scheduler vs calling tract directly, and batching choices per model.
    Overheads {
        /// A MobileNetV2 ONNX file (made by models/mobilenetv2/make_mobilenetv2.py).
        #[arg(long)]
        mobilenet: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let report = match Cli::parse().command {
        Command::Engine { peer_dir } => engine(&peer_dir)?,
        Command::Pipeline {
            job,
            repeat,
            execution,
        } => pipeline(&job, repeat, &execution)?,
        Command::Overheads { mobilenet } => overheads(mobilenet.as_deref())?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Peak resident set size of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Run `f` repeatedly for at least `budget` (and at least 3 times, after one
/// warm-up); mean seconds per run.
fn time_per_run(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let started = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || started.elapsed() < budget {
        f();
        runs += 1;
    }
    started.elapsed().as_secs_f64() / runs as f64
}

fn load_model(path: &Path, shapes: &InputShapes) -> Result<Arc<dyn Model>> {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    Ok(TractBackend.load(
        &name,
        &std::fs::read(path).with_context(|| path.display().to_string())?,
        shapes,
    )?)
}

fn read_f32(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// tract vs onnxruntime on identical inputs.
fn engine(peer_dir: &Path) -> Result<Value> {
    let index: Value = serde_json::from_slice(&std::fs::read(peer_dir.join("index.json"))?)?;
    let mut rows = Vec::new();
    for case in index["cases"]
        .as_array()
        .context("index.json has no `cases`")?
    {
        let model_path = repo_root().join(case["path"].as_str().context("case.path")?);
        let batch = case["batch"].as_u64().context("case.batch")? as usize;
        let shape: Vec<usize> = serde_json::from_value(case["input_shape"].clone())?;
        let shapes = InputShapes::from([(
            case["input_name"].as_str().unwrap().to_owned(),
            shape[1..].to_vec(),
        )]);
        let model = load_model(&model_path, &shapes)?;
        let input = Tensor::from_f32(
            case["input_name"].as_str().unwrap(),
            shape.clone(),
            &read_f32(&peer_dir.join(case["inputs_file"].as_str().unwrap()))?,
        );
        let expected = read_f32(&peer_dir.join(case["outputs_file"].as_str().unwrap()))?;
        let plan = model.plan(batch)?;
        let outputs = plan.run(vec![input.clone()])?;
        let got = outputs[0].f32_values().context("f32 output")?;
        let max_abs_diff = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        anyhow::ensure!(
            got.len() == expected.len(),
            "{}: output sizes differ",
            model_path.display()
        );
        // One thread: one plan. Two threads: the batch split in two halves
        // run in parallel (tract has no intra-op threads in this build).
        let one = time_per_run(Duration::from_millis(1500), || {
            plan.run(vec![input.clone()]).unwrap();
        });
        let two = if batch >= 2 {
            let half = model.plan(batch / 2)?;
            let halves = split_batch(&input, 2);
            Some(time_per_run(Duration::from_millis(1500), || {
                std::thread::scope(|s| {
                    for part in &halves {
                        let half = &half;
                        s.spawn(move || half.run(vec![part.clone()]).unwrap());
                    }
                });
            }))
        } else {
            None
        };
        rows.push(json!({
            "model": case["model"], "batch": batch,
            "tract_ms_per_batch_1_thread": one * 1e3,
            "tract_ms_per_batch_2_threads": two.map(|t| t * 1e3),
            "max_abs_diff_vs_onnxruntime": max_abs_diff,
        }));
    }
    Ok(json!({ "engine": rows }))
}

/// Split a tensor along axis 0 into `parts` equal tensors.
fn split_batch(t: &Tensor, parts: usize) -> Vec<Tensor> {
    let len = t.data.len() / parts;
    (0..parts)
        .map(|i| {
            let mut shape = t.shape.clone();
            shape[0] /= parts;
            Tensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape,
                data: t.data[i * len..(i + 1) * len].to_vec(),
            }
        })
        .collect()
}

/// The inputs of a job, as the ingest stage would make them.
fn job_items(job: &str) -> Result<Vec<RawItem>> {
    let item = |id: String, content_type: &str, data: Vec<u8>| RawItem {
        meta: sluice::types::Metadata::new(id, content_type),
        data,
    };
    match job {
        "digits" => {
            let dir = repo_root().join("models/digits/heldout");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .collect();
            files.sort();
            files
                .iter()
                .map(|f| {
                    Ok(item(
                        f.display().to_string(),
                        "image/png",
                        std::fs::read(f)?,
                    ))
                })
                .collect()
        }
        "anomaly" => {
            let text = std::fs::read_to_string(repo_root().join("models/anomaly/heldout.csv"))?;
            let mut lines = text.lines();
            let header = lines.next().unwrap();
            Ok(lines
                .enumerate()
                .map(|(i, row)| {
                    item(
                        format!("row-{i}"),
                        "text/csv",
                        format!("{header}\n{row}\n").into_bytes(),
                    )
                })
                .collect())
        }
        other => anyhow::bail!("unknown job `{other}` (digits | anomaly)"),
    }
}

fn execution_mode(name: &str) -> Result<ExecutionMode> {
    Ok(match name {
        "auto" => ExecutionMode::Auto,
        "stacked" => ExecutionMode::Stacked,
        "single" => ExecutionMode::Single,
        other => anyhow::bail!("unknown execution `{other}`"),
    })
}

fn start_job(job: &str, execution: ExecutionMode) -> Result<Runtime> {
    let mut config = Config::load(&repo_root().join("examples").join(job).join("sluice.toml"))?;
    let data_dir = tempfile::tempdir()?.keep();
    config.device.data_dir = data_dir.clone();
    config.runtime.cache_dir = Some(data_dir.join("cache"));
    for model in config.models.values_mut() {
        model.batching.execution = execution;
    }
    Runtime::start(config)
}

/// Sluice end to end over a job's inputs, `repeat` times.
fn pipeline(job: &str, repeat: usize, execution: &str) -> Result<Value> {
    let runtime = start_job(job, execution_mode(execution)?)?;
    let pipeline = runtime.pipeline(None)?;
    let items = job_items(job)?;
    let all: Vec<RawItem> = (0..repeat).flat_map(|_| items.iter().cloned()).collect();
    let n = all.len();
    let started = Instant::now();
    let outcomes = process_all(pipeline, all, &|_| {});
    let seconds = started.elapsed().as_secs_f64();
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} items failed");
    Ok(json!({
        "job": job, "execution": execution, "items": n, "seconds": seconds,
        "items_per_s": n as f64 / seconds, "peak_rss_mib": peak_rss_mib(),
        "chosen": pipeline.scheduler.execution(),
    }))
}

/// The digits preprocessing, natively: what the wasm plugin does.
fn native_digits_preprocess(png: &[u8]) -> Tensor {
    let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .unwrap()
        .to_luma8();
    let values: Vec<f32> = image
        .pixels()
        .map(|p| p.0[0] as f32 * (1.0 / 240.0))
        .collect();
    Tensor::from_f32("input", vec![1, 64], &values)
}

/// The classification postprocessing, natively: top-3 with labels as JSON.
fn native_classify(t: &Tensor, labels: &[String]) -> Vec<u8> {
    let scores = t.f32_values().unwrap();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let top: Vec<Value> = order[..3]
        .iter()
        .map(|&i| json!({"label": labels[i], "index": i, "score": scores[i]}))
        .collect();
    serde_json::to_vec(&json!({"label": labels[order[0]], "index": order[0], "score": scores[order[0]], "top": top})).unwrap()
}

fn overheads(mobilenet: Option<&Path>) -> Result<Value> {
    let runtime = start_job("digits", ExecutionMode::Auto)?;
    let pipeline = runtime.pipeline(None)?;
    let items = job_items("digits")?;
    let batches: Vec<&[RawItem]> = items.chunks(32).collect();
    let n = items.len() as f64;

    // Plugin boundary: wasm plugins vs the same logic in native Rust.
    let tensors: Vec<Vec<Tensor>> = items
        .iter()
        .map(|i| vec![native_digits_preprocess(&i.data)])
        .collect();
    let outputs: Vec<sluice::types::Inferred> = pipeline
        .scheduler
        .infer_many(tensors.clone())
        .into_iter()
        .zip(&items)
        .map(|(o, i)| sluice::types::Inferred {
            meta: i.meta.clone(),
            tensors: o.unwrap(),
        })
        .collect();
    let labels: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let budget = Duration::from_millis(1000);
    let wasm_pre = time_per_run(budget, || {
        batches
            .iter()
            .for_each(|b| drop(pipeline.preprocess.preprocess(b)))
    });
    let native_pre = time_per_run(budget, || {
        items
            .iter()
            .for_each(|i| drop(native_digits_preprocess(&i.data)))
    });
    let wasm_post = time_per_run(budget, || {
        outputs
            .chunks(32)
            .for_each(|b| drop(pipeline.postprocess.postprocess(b)))
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
        let stacked = stack(&items);
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
        let budget = Duration::from_millis(if *batch > 8 { 800 } else { 1500 });
        let mut raw = 0.0;
        let mut via = 0.0;
        // Alternate the two, three rounds, so that noise hits both alike.
        for _ in 0..3 {
            raw += time_per_run(budget, || drop(plan.run(stacked.clone()).unwrap()));
            via += time_per_run(budget, || drop(scheduler.infer_many(items.clone())));
        }
        let (raw, via) = (raw / 3.0, via / 3.0);
        scheduler_rows.push(json!({
            "model": name, "batch": batch,
            "raw_tract_us_per_item": raw * 1e6 / *batch as f64,
            "scheduler_us_per_item": via * 1e6 / *batch as f64,
            "overhead_us_per_item": (via - raw) * 1e6 / *batch as f64,
            "overhead_percent": (via / raw - 1.0) * 100.0,
        }));

        // Batching: the adaptive choice vs always stacked vs always one by one.
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

fn stack(items: &[Vec<Tensor>]) -> Vec<Tensor> {
    (0..items[0].len())
        .map(|input| {
            let first = &items[0][input];
            let mut shape = first.shape.clone();
            shape[0] = items.len();
            Tensor {
                name: first.name.clone(),
                dtype: first.dtype,
                shape,
                data: items.iter().flat_map(|i| i[input].data.clone()).collect(),
            }
        })
        .collect()
}
