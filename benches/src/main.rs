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
use sluice_agent::agent::Agent;
use sluice_agent::config::{Config, OutboxConfig, SyncConfig};
use sluice_agent::infer::{InputShapes, Model, onnx_engine};
use sluice_agent::outbox::{NewInput, NewRecord, Outbox};
use sluice_agent::runtime::Runtime;
use sluice_agent::schedule::{BatchConfig, ExecutionMode, Scheduler};
use sluice_agent::types::{RawItem, Tensor, stack_items};
use sluice_agent::uplink::Uploader;
use sluice_collector_core::{Collector, Tokens};
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
    /// Sluice end to end, as deployed: the agent accepts a job's inputs
    /// into its journal, runs them through the plugins, the scheduler and
    /// tract, and stores every result durably in its outbox.
    Pipeline {
        /// digits | anomaly | mobilenet | text-direction
        #[arg(long)]
        job: String,
        /// Process the input set this many times.
        #[arg(long, default_value_t = 20)]
        repeat: usize,
        /// auto | stacked | single
        #[arg(long, default_value = "auto")]
        execution: String,
        /// The model's engine: tract, onnxruntime (a build with the
        /// `sluice/onnxruntime` feature; the library from ORT_DYLIB_PATH)
        /// or auto.
        #[arg(long, default_value = "tract")]
        engine: String,
        /// mobilenet: the MobileNetV2 ONNX file.
        #[arg(long)]
        model: Option<PathBuf>,
        /// mobilenet, text-direction: the JPEG images (the peer's `--images-dir`).
        #[arg(long)]
        images_dir: Option<PathBuf>,
        /// Compiled plugins and execution choices, kept across runs as on a
        /// device (run once to fill, then measure).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Time to the first result of `sluice infer` on one digit, as a new
    /// process: with the plugin and execution caches empty (cold) and filled
    /// (warm); peak RSS of each process.
    Startup {
        /// The `sluice` binary to run.
        #[arg(long)]
        sluice: PathBuf,
        /// Also run this runtime-only build (no compiler) on the caches the
        /// full build filled.
        #[arg(long)]
        runtime_only: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// Durable outbox appends per second, and upload throughput to a
    /// collector on loopback.
    Outbox {
        #[arg(long, default_value_t = 20_000)]
        records: usize,
    },
    /// Per-item cost of watching a pipeline: the agent's metrics per item
    /// and drift detection (copying the model's inputs, binning every
    /// feature of the digits profile), measured alone and as an A/B of the
    /// digits pipeline with and without the drift observer, in one run.
    Observe,
    /// Per-item overheads: the plugin boundary (wasm vs native), the
    /// scheduler vs calling tract directly, and batching choices per model.
    Overheads {
        /// A MobileNetV2 ONNX file (made by models/mobilenetv2/make_mobilenetv2.py).
        #[arg(long)]
        mobilenet: Option<PathBuf>,
        /// JPEG images: also measure the plugin boundary of MobileNetV2's
        /// image preprocessing (needs --mobilenet).
        #[arg(long)]
        images_dir: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let report = match Cli::parse().command {
        Command::Engine { peer_dir } => engine(&peer_dir)?,
        Command::Pipeline {
            job,
            repeat,
            execution,
            engine,
            model,
            images_dir,
            cache_dir,
        } => pipeline(
            &job,
            repeat,
            &execution,
            &engine,
            model.as_deref(),
            images_dir.as_deref(),
            cache_dir,
        )?,
        Command::Startup {
            sluice,
            runtime_only,
            runs,
        } => startup(&sluice, runtime_only.as_deref(), runs)?,
        Command::Outbox { records } => outbox(records)?,
        Command::Observe => observe_cost()?,
        Command::Overheads {
            mobilenet,
            images_dir,
        } => overheads(mobilenet.as_deref(), images_dir.as_deref())?,
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

/// Resident memory now, split into file-backed pages (the executable and
/// libraries, shared and reclaimable) and anonymous ones (what the process
/// allocated), in MiB, from `/proc/self/status`.
fn rss_split_mib() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    json!({ "file_mib": field("RssFile:"), "anon_mib": field("RssAnon:") })
}

/// Two ways of doing the same work, timed in alternating single runs.
struct Paired {
    /// Median seconds per run of the first and of the second way.
    first: f64,
    second: f64,
    /// Median of the per-pair ratios second / first.
    ratio: f64,
    /// The middle half of the per-pair ratios: how much noise there was.
    ratio_quartiles: (f64, f64),
}

/// Time `first` and `second` in pairs of single runs (after one warm-up
/// each), swapping which goes first every pair, for at least `budget` and
/// `min_pairs` pairs. Noise on a shared machine comes and goes within
/// seconds; pairing puts both sides under the same noise, and medians of the
/// per-pair figures ignore the pairs it hit hardest.
fn paired_runs(
    budget: Duration,
    min_pairs: usize,
    mut first: impl FnMut(),
    mut second: impl FnMut(),
) -> Paired {
    first();
    second();
    let time = |f: &mut dyn FnMut()| {
        let run = Instant::now();
        f();
        run.elapsed().as_secs_f64()
    };
    let started = Instant::now();
    let mut pairs: Vec<(f64, f64)> = Vec::new();
    while pairs.len() < min_pairs || started.elapsed() < budget {
        pairs.push(if pairs.len() % 2 == 0 {
            let a = time(&mut first);
            (a, time(&mut second))
        } else {
            let b = time(&mut second);
            (time(&mut first), b)
        });
    }
    let mut ratios: Vec<f64> = pairs.iter().map(|p| p.1 / p.0).collect();
    ratios.sort_by(f64::total_cmp);
    Paired {
        first: median(pairs.iter().map(|p| p.0).collect()),
        second: median(pairs.iter().map(|p| p.1).collect()),
        ratio: ratios[ratios.len() / 2],
        ratio_quartiles: (ratios[ratios.len() / 4], ratios[ratios.len() * 3 / 4]),
    }
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
    Ok(onnx_engine().load(
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
        let outputs = plan.run(vec![input.clone()], false)?;
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
        // One thread: one plan. Two threads: the faster of tract's intra-op
        // threads (matrix products on the inference pool) and the batch
        // split in two halves run in parallel, the two ways the scheduler
        // chooses from.
        let one = time_per_run(Duration::from_millis(1500), || {
            plan.run(vec![input.clone()], false).unwrap();
        });
        let intra_op = time_per_run(Duration::from_millis(1500), || {
            plan.run(vec![input.clone()], true).unwrap();
        });
        let halves = if batch >= 2 {
            let half = model.plan(batch / 2)?;
            let halves = split_batch(&input, 2);
            Some(time_per_run(Duration::from_millis(1500), || {
                std::thread::scope(|s| {
                    for part in &halves {
                        let half = &half;
                        s.spawn(move || half.run(vec![part.clone()], false).unwrap());
                    }
                });
            }))
        } else {
            None
        };
        let two = halves.map_or(intra_op, |h| h.min(intra_op));
        rows.push(json!({
            "model": case["model"], "batch": batch,
            "tract_ms_per_batch_1_thread": one * 1e3,
            "tract_ms_per_batch_2_threads": two * 1e3,
            "tract_ms_per_batch_intra_op": intra_op * 1e3,
            "tract_ms_per_batch_halves": halves.map(|t| t * 1e3),
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
fn job_items(job: &str, images_dir: Option<&Path>) -> Result<Vec<RawItem>> {
    let files_in = |dir: &Path, extension: &str| -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| dir.display().to_string())?
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .collect();
        files.sort();
        Ok(files)
    };
    let file_item = |f: &PathBuf, content_type: &str| -> Result<RawItem> {
        let mut meta = sluice_agent::types::Metadata::new(f.display().to_string(), content_type);
        meta.attributes = vec![(
            "file".into(),
            f.file_name().unwrap().to_string_lossy().into_owned(),
        )];
        Ok(RawItem {
            meta,
            data: std::fs::read(f)?,
        })
    };
    match job {
        "digits" => files_in(&repo_root().join("models/digits/heldout"), "png")?
            .iter()
            .map(|f| file_item(f, "image/png"))
            .collect(),
        "mobilenet" | "text-direction" => {
            let dir = images_dir.with_context(|| format!("--job {job} needs --images-dir"))?;
            files_in(dir, "jpg")?
                .iter()
                .map(|f| file_item(f, "image/jpeg"))
                .collect()
        }
        "anomaly" => {
            let text = std::fs::read_to_string(repo_root().join("models/anomaly/heldout.csv"))?;
            let mut lines = text.lines();
            let header = lines.next().unwrap();
            Ok(lines
                .enumerate()
                .map(|(i, row)| RawItem {
                    meta: sluice_agent::types::Metadata::new(format!("row-{i}"), "text/csv"),
                    data: format!("{header}\n{row}\n").into_bytes(),
                })
                .collect())
        }
        other => {
            anyhow::bail!("unknown job `{other}` (digits | anomaly | mobilenet | text-direction)")
        }
    }
}

/// A configuration written as a user would, in a folder of its own.
fn config_from_text(text: &str) -> Result<Config> {
    let path = tempfile::tempdir()?.keep().join("sluice.toml");
    std::fs::write(&path, text)?;
    Ok(Config::load(&path)?)
}

/// The MobileNetV2 job: what a user would write for an ImageNet classifier.
fn mobilenet_config(model: &Path) -> Result<Config> {
    config_from_text(&format!(
        r#"
[plugins.pre]
path = "bundled:image-preprocess"
timeout_ms = 10000
[plugins.pre.config]
output = "input"
width = 224
height = 224
resize = "exact"
filter = "triangle"
layout = "nchw"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[plugins.post]
path = "bundled:classify-postprocess"
[plugins.post.config]
input = "logits"
softmax = true
top_k = 1

[models.mobilenet]
path = "{}"
[models.mobilenet.batching]
max_batch_size = 8

[pipelines.mobilenet]
preprocess = "pre"
model = "mobilenet"
postprocess = "post"
"#,
        model.canonicalize()?.display()
    ))
}

/// The text-direction job: PP-OCR's 0/180 degree classifier (a small conv
/// net) on 192 x 48 crops, as a user would write it.
fn text_direction_config() -> Result<Config> {
    config_from_text(&format!(
        r#"
[plugins.pre]
path = "bundled:image-preprocess"
timeout_ms = 10000
[plugins.pre.config]
output = "x"
width = 192
height = 48
resize = "exact"
filter = "triangle"
layout = "nchw"
mean = [0.5]
std = [0.5]

[plugins.post]
path = "bundled:classify-postprocess"
[plugins.post.config]
input = "save_infer_model/scale_0.tmp_1"
top_k = 1
labels = ["0", "180"]

[models.text-direction]
path = "{}"
input_shapes.x = [3, 48, 192]
[models.text-direction.batching]
max_batch_size = 8

[pipelines.text-direction]
preprocess = "pre"
model = "text-direction"
postprocess = "post"
"#,
        repo_root()
            .join("models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx")
            .display()
    ))
}

fn execution_mode(name: &str) -> Result<ExecutionMode> {
    Ok(match name {
        "auto" => ExecutionMode::Auto,
        "stacked" => ExecutionMode::Stacked,
        "single" => ExecutionMode::Single,
        other => anyhow::bail!("unknown execution `{other}`"),
    })
}

fn job_config(
    job: &str,
    execution: ExecutionMode,
    model: Option<&Path>,
    cache_dir: Option<PathBuf>,
) -> Result<Config> {
    let mut config = match job {
        "mobilenet" => mobilenet_config(model.context("--job mobilenet needs --model")?)?,
        "text-direction" => text_direction_config()?,
        _ => Config::load(&repo_root().join("examples").join(job).join("sluice.toml"))?,
    };
    let data_dir = tempfile::tempdir()?.keep();
    config.device.data_dir = data_dir.clone();
    config.runtime.cache_dir = Some(cache_dir.unwrap_or_else(|| data_dir.join("cache")));
    config.ingest = Default::default();
    config.sync = Default::default();
    for model in config.models.values_mut() {
        model.batching.execution = execution;
    }
    Ok(config)
}

fn start_job(job: &str, execution: ExecutionMode) -> Result<Runtime> {
    Ok(Runtime::start(job_config(job, execution, None, None)?)?)
}

/// Sluice end to end over a job's inputs, `repeat` times: accepted into the
/// agent's journal in one transaction, then timed until every result is
/// durably in the outbox (the peer times from its first input to its last
/// commit; it keeps no journal of inputs).
fn pipeline(
    job: &str,
    repeat: usize,
    execution: &str,
    engine: &str,
    model: Option<&Path>,
    images_dir: Option<&Path>,
    cache_dir: Option<PathBuf>,
) -> Result<Value> {
    let mut config = job_config(job, execution_mode(execution)?, model, cache_dir)?;
    for model in config.models.values_mut() {
        model.engine = engine.to_owned();
    }
    let name = config
        .pipelines
        .keys()
        .next()
        .context("the job has no pipeline")?
        .clone();
    let agent = Agent::start(config)?;
    let inputs: Vec<NewInput> = job_items(job, images_dir)?
        .into_iter()
        .map(|item| NewInput {
            pipeline: name.clone(),
            content_type: item.meta.content_type,
            attributes: item.meta.attributes,
            data: item.data,
        })
        .collect();
    let n = (inputs.len() * repeat) as u64;
    let started = Instant::now();
    // One transaction per pass over the inputs, as a burst of arrivals.
    for _ in 0..repeat {
        agent.accept(&inputs)?;
    }
    drop(inputs);
    while agent.outbox().pending().0 < n {
        std::thread::sleep(Duration::from_micros(500));
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss = peak_rss_mib(); // before reading the results back
    let rss_now = rss_split_mib();
    let batch = agent
        .outbox()
        .next_batch(n as usize, usize::MAX)?
        .context("no results")?;
    let docs: Vec<Value> = batch
        .records
        .iter()
        .map(|(_, body)| serde_json::from_slice(body))
        .collect::<Result<_, _>>()?;
    let failed = docs.iter().filter(|d| d.get("error").is_some()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} items failed: {}",
        docs.iter().find(|d| d.get("error").is_some()).unwrap()
    );
    let accuracy = (job == "digits").then(|| {
        let labels =
            std::fs::read_to_string(repo_root().join("models/digits/heldout/labels.csv")).unwrap();
        let labels: std::collections::HashMap<&str, &str> = labels
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(','))
            .collect();
        let correct = docs
            .iter()
            .filter(|d| {
                labels.get(d["input"]["attributes"]["file"].as_str().unwrap())
                    == d["result"]["body"]["label"].as_str().as_ref()
            })
            .count();
        correct as f64 / docs.len() as f64
    });
    let pipeline = agent.runtime().pipeline(None)?;
    let report = json!({
        "job": job, "execution": execution, "items": n, "seconds": seconds,
        "items_per_s": n as f64 / seconds, "peak_rss_mib": peak_rss, "rss_at_end": rss_now,
        "accuracy": accuracy,
        "engine": pipeline.scheduler().model().engine(),
        "engine_choice": pipeline.scheduler().engine_choice(),
        "chosen": pipeline.scheduler().execution(),
        "batches": pipeline.scheduler().stats().batch_size_histogram,
    });
    agent.shutdown();
    Ok(report)
}

/// What watching costs per digit: the metrics a worker records per item,
/// and drift detection (the copy of the inputs and the observer). Measured
/// apart (many repetitions over the 450 held-out digits) and as an A/B of
/// whole pipeline batches with and without the observer.
fn observe_cost() -> Result<Value> {
    use sluice_agent::drift::{Drift, DriftConfig, Profile, observe_items};
    use sluice_agent::pipeline::Observer;
    let runtime = start_job("digits", ExecutionMode::Auto)?;
    let pipeline = runtime.pipeline(None)?;
    let items = job_items("digits", None)?;
    let n = items.len() as f64;
    let observed = observe_items(pipeline, items.clone());
    let pairs: Vec<_> = observed
        .iter()
        .map(|(i, o)| (i.as_slice(), o.as_slice()))
        .collect();
    let sha = runtime.model_sha256("digits").context("digits runs")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("digits.profile.json");
    Profile::build("digits", sha, "digits", &pairs)?.write(&path)?;
    // Windows as large as possible: closing one is a rare event, not a
    // per-item cost (it is measured below, apart).
    let config = DriftConfig {
        window_items: u64::MAX,
        window_secs: u64::MAX,
        ..DriftConfig::default()
    };
    let drift = Arc::new(Drift::load(&path, "digits", "digits", sha, &config)?);
    let inputs: Vec<Vec<Tensor>> = observed.iter().map(|(i, _)| i.clone()).collect();
    let outputs: Vec<&[Tensor]> = observed.iter().map(|(_, o)| o.as_slice()).collect();
    let budget = Duration::from_millis(2000);
    let copy = time_per_run(budget, || drop(std::hint::black_box(inputs.clone()))) / n;
    let observe = time_per_run(budget, || {
        for (i, o) in inputs.chunks(32).zip(outputs.chunks(32)) {
            drift.observe(i, o);
        }
    }) / n;
    let metrics = sluice_agent::metrics::Metrics::default();
    let record_metrics = time_per_run(budget, || {
        for _ in 0..items.len() {
            metrics.item("digits", None);
            for stage in ["preprocess", "inference", "postprocess", "end_to_end"] {
                metrics.stage("digits", stage, Duration::from_micros(100), 1);
            }
        }
    }) / n;
    // Closing a window: scoring every feature (once per window_items items).
    let profile = drift.profile();
    let scorer = sluice_agent::drift::Scorer::new(profile, 0.01);
    let counts = sluice_agent::drift::bin_counts(profile, pairs.iter().copied());
    let close = time_per_run(budget, || drop(scorer.score(profile, &counts)));
    // The whole pipeline, batches of 32, with and without the observer.
    let watched = pipeline.clone().with_observer(drift.clone());
    let batches: Vec<Vec<RawItem>> = items.chunks(32).map(|c| c.to_vec()).collect();
    let ab = paired_runs(
        Duration::from_secs(10),
        10,
        || {
            batches
                .iter()
                .for_each(|b| drop(pipeline.process(b.clone())))
        },
        || {
            batches
                .iter()
                .for_each(|b| drop(watched.process(b.clone())))
        },
    );
    let drift_us = (copy + observe) * 1e6;
    Ok(json!({
        "job": "digits",
        "features": profile.features.len(),
        "scored_features": profile.features.iter().filter(|f| f.counts.len() > 1).count(),
        "per_item_us": {
            "copy_inputs": copy * 1e6,
            "drift_observe": observe * 1e6,
            "drift_total": drift_us,
            "metrics": record_metrics * 1e6,
            "drift_and_metrics": drift_us + record_metrics * 1e6,
        },
        "window_close_us": close * 1e6,
        "pipeline_ab": {
            "without_drift_us_per_item": ab.first / n * 1e6,
            "with_drift_us_per_item": ab.second / n * 1e6,
            "ratio_median": ab.ratio,
            "ratio_quartiles": ab.ratio_quartiles,
        },
    }))
}

/// Spawn `sluice infer` on one digit; seconds to its first line of output,
/// and the process's peak RSS in MiB.
fn first_result(sluice: &Path, data_dir: &Path) -> Result<(f64, f64)> {
    use std::io::Read;
    let started = Instant::now();
    let mut child = std::process::Command::new(sluice)
        .current_dir(repo_root())
        .args([
            "infer",
            "--config",
            "examples/digits/sluice.toml",
            "--data-dir",
        ])
        .arg(data_dir)
        .arg("models/digits/heldout/0000.png")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| sluice.display().to_string())?;
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    loop {
        anyhow::ensure!(
            stdout.read(&mut byte)? == 1,
            "{} printed no result",
            sluice.display()
        );
        if byte[0] == b'\n' {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // wait4 gives this child's own peak RSS (std's wait does not).
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pid of our own child and valid out-pointers.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(
        waited > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{} failed",
        sluice.display()
    );
    Ok((seconds, usage.ru_maxrss as f64 / 1024.0))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Cold and warm start to the first result, alternating so noise hits both.
fn startup(sluice: &Path, runtime_only: Option<&Path>, runs: usize) -> Result<Value> {
    let warm_dir = tempfile::tempdir()?;
    first_result(sluice, warm_dir.path())?; // fills the caches
    let (mut cold, mut warm, mut lean) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let cold_dir = tempfile::tempdir()?;
        cold.push(first_result(sluice, cold_dir.path())?);
        warm.push(first_result(sluice, warm_dir.path())?);
        if let Some(lean_binary) = runtime_only {
            lean.push(first_result(lean_binary, warm_dir.path())?);
        }
    }
    let summary = |runs: &[(f64, f64)]| {
        (!runs.is_empty()).then(|| {
            json!({
                "median_ms": median(runs.iter().map(|r| r.0 * 1e3).collect()),
                "min_ms": runs.iter().map(|r| r.0 * 1e3).fold(f64::INFINITY, f64::min),
                "peak_rss_mib": median(runs.iter().map(|r| r.1).collect()),
            })
        })
    };
    Ok(json!({
        "runs": runs,
        "cold_compile": summary(&cold),
        "warm_cached": summary(&warm),
        "runtime_only_cached": summary(&lean),
    }))
}

/// A result document the size of a digits result.
fn sample_record(seq: usize) -> NewRecord {
    let id = format!("bench-device/digits/{seq}");
    // Scores and timings vary as real ones do (a fixed LCG, so runs agree).
    let noise = |k: usize| ((seq * 2_654_435_761 + k * 40_503) % 1_000_003) as f64 / 1_000_003.0;
    let score = 0.5 + noise(1) / 2.0;
    let body = json!({
        "id": id, "device": "bench-device", "pipeline": "digits", "seq": seq,
        "accepted_at_ms": 1_795_000_000_000u64 + seq as u64, "completed_at_ms": 1_795_000_000_005u64 + seq as u64,
        "input": {"content_type": "image/png", "bytes": 97, "attributes": {"file": format!("{seq:04}.png")}},
        "provenance": {"model": "digits", "model_sha256": "7aeb717bde754c67e4cf1af823f89ad76eb15876f93c05849b39ff088259d5fd",
            "preprocess": "digits-pre", "preprocess_sha256": "0f".repeat(32), "postprocess": "digits-post", "postprocess_sha256": "a1".repeat(32)},
        "sluice_version": "0.1.0",
        "timings": {"batch_items": 1, "batch_preprocess_us": 150 + (noise(2) * 200.0) as u64, "batch_infer_us": 60 + (noise(3) * 90.0) as u64, "batch_postprocess_us": 80 + (noise(4) * 90.0) as u64},
        "result": {"content_type": "application/json", "body": {"index": seq % 10, "label": (seq % 10).to_string(), "score": score,
            "top": [{"index": seq % 10, "label": (seq % 10).to_string(), "score": score},
                    {"index": (seq + 3) % 10, "label": ((seq + 3) % 10).to_string(), "score": (1.0 - score) * noise(5)},
                    {"index": (seq + 7) % 10, "label": ((seq + 7) % 10).to_string(), "score": (1.0 - score) * noise(6) / 4.0}]}},
    });
    NewRecord {
        id,
        body: body.to_string().into_bytes(),
    }
}

/// Appends per second (group commit as the agent does it, and one commit
/// per record for contrast), then upload throughput over loopback.
fn outbox(records: usize) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let all: Vec<NewRecord> = (0..records).map(sample_record).collect();
    let bytes: u64 = all.iter().map(|r| r.size()).sum();

    let mut appends = Vec::new();
    for group in [64usize, 512, 1] {
        let path = dir.path().join(format!("append-{group}.sqlite"));
        let outbox = Outbox::open(&path, OutboxConfig::default())?;
        let take = if group == 1 {
            records.min(500)
        } else {
            records
        };
        let started = Instant::now();
        for chunk in all[..take].chunks(group) {
            outbox.append(chunk.to_vec())?;
        }
        let seconds = started.elapsed().as_secs_f64();
        appends.push(json!({"records_per_commit": group, "records": take, "records_per_s": take as f64 / seconds}));
    }

    // Upload the 64-per-commit outbox to a collector on loopback.
    let outbox = Arc::new(Outbox::open(
        &dir.path().join("append-64.sqlite"),
        OutboxConfig::default(),
    )?);
    let mut tokens = Tokens::default();
    tokens.insert("bench-device", "bench-token")?;
    let collector = Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0")?,
        &dir.path().join("collector.sqlite"),
        tokens,
    )?;
    let sync_config = SyncConfig {
        url: Some(collector.url()),
        token: Some("bench-token".into()),
        ..SyncConfig::default()
    };
    let tokio = tokio::runtime::Runtime::new()?;
    let uplink = sluice_agent::uplink::from_config(&sync_config, "bench-device", tokio.handle())?
        .context("sync.url is set")?;
    let uploader = Uploader::new(outbox.clone(), uplink, &sync_config, "bench-device");
    let started = Instant::now();
    let report = uploader.sync_once(&std::sync::atomic::AtomicBool::new(false))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.records == records as u64 && outbox.pending().0 == 0,
        "upload incomplete: {report:?}"
    );
    let sample = &all[..sync_config.batch_max_records.min(records)];
    let example = sluice_agent::outbox::Batch {
        id: 0,
        key: "k".into(),
        records: sample
            .iter()
            .map(|r| (r.id.clone(), r.body.clone()))
            .collect(),
        stored_at_ms: vec![0; sample.len()],
    };
    let raw: usize = example.records.iter().map(|r| r.1.len()).sum();
    let wire =
        sluice_agent::uplink::to_wire("bench-device", &example).map_err(anyhow::Error::msg)?;
    let compressed =
        zstd::encode_all(&serde_json::to_vec(&wire)?[..], sync_config.zstd_level)?.len();
    collector.shutdown();
    Ok(json!({
        "record_bytes": bytes as f64 / records as f64,
        "appends": appends,
        "sync": {
            "records": records, "batches": report.batches, "batch_max_records": sync_config.batch_max_records,
            "records_per_s": records as f64 / seconds, "mib_per_s": bytes as f64 / seconds / (1 << 20) as f64,
            "zstd_ratio": raw as f64 / compressed as f64,
        },
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

/// MobileNetV2's preprocessing, natively: what the wasm plugin
/// (`plugins/image-preprocess`) does with the job's configuration, with the
/// same crates: a JPEG that still covers 224 x 224 at 1/2, 1/4 or 1/8 scale
/// decoded at that scale (jpeg-decoder), otherwise in full (image's
/// zune-jpeg); resized with fast_image_resize's bilinear convolution;
/// normalized; NCHW.
fn native_imagenet_preprocess(jpeg: &[u8]) -> Tensor {
    use fast_image_resize as fir;
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    decoder.read_info().unwrap();
    let info = decoder.info().unwrap();
    let (w, h) = (info.width as u32, info.height as u32);
    let scaled = |len: u32, n: u32| (len * n - 1) / 8 + 1;
    let (rgb, w, h) = match [1, 2, 4]
        .into_iter()
        .find(|&n| scaled(w, n) >= 224 && scaled(h, n) >= 224)
    {
        Some(n) => {
            let (sw, sh) = decoder
                .scale(scaled(w, n) as u16, scaled(h, n) as u16)
                .unwrap();
            (decoder.decode().unwrap(), sw as u32, sh as u32)
        }
        None => (
            image::load_from_memory(jpeg).unwrap().to_rgb8().into_raw(),
            w,
            h,
        ),
    };
    let source = fir::images::Image::from_vec_u8(w, h, rgb, fir::PixelType::U8x3).unwrap();
    let mut resized = fir::images::Image::new(224, 224, fir::PixelType::U8x3);
    let bilinear = fir::ResizeAlg::Convolution(fir::FilterType::Bilinear);
    fir::Resizer::new()
        .resize(
            &source,
            &mut resized,
            &fir::ResizeOptions::new().resize_alg(bilinear),
        )
        .unwrap();
    let mut values = vec![0f32; 3 * 224 * 224];
    for (i, pixel) in resized.buffer().chunks_exact(3).enumerate() {
        for c in 0..3 {
            values[c * 224 * 224 + i] = (pixel[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    Tensor::from_f32("input", vec![1, 3, 224, 224], &values)
}

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

fn overheads(mobilenet: Option<&Path>, images_dir: Option<&Path>) -> Result<Value> {
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
