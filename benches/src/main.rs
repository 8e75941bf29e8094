//! `sluice-bench`: the Rust side of Sluice's benchmarks. Each subcommand
//! measures one thing and prints one JSON document; `benches/run.sh` runs
//! them all beside the Python + onnxruntime peer and writes BENCHMARKS.md.
//!
//! Times come from many repetitions inside one process; where two things
//! are compared (wasm vs native, scheduler vs raw tract) they are measured
//! alternately in the same run, so that machine noise hits both.

mod common;
mod engine;
mod jobs;
mod native;
mod observe;
mod outbox;
mod overheads;
mod pipeline;
mod startup;

use crate::engine::engine;
use crate::observe::observe_cost;
use crate::outbox::outbox;
use crate::overheads::overheads;
use crate::pipeline::pipeline;
use crate::startup::startup;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
        /// How inputs arrive: `burst` (all at once), `single` (one at a
        /// time, each after the previous result) or `steady:N` (N per second).
        #[arg(long, default_value = "burst")]
        arrival: pipeline::Arrival,
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
            arrival,
        } => pipeline(
            &job,
            repeat,
            &execution,
            &engine,
            model.as_deref(),
            images_dir.as_deref(),
            cache_dir,
            arrival,
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
