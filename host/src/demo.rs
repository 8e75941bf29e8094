//! `sluice demo`: the main job on bundled defaults. Runs the digits pipeline
//! (bundled image preprocessor -> tract MLP -> bundled classification
//! postprocessor) over the 450 held-out digit images shipped in `models/`,
//! writes JSON Lines results into the data directory, and reports what was
//! processed, how batches ran, and the accuracy against the known labels.

use crate::cli::{outcome_json, progress_bar};
use crate::config::Config;
use crate::ingest::{list_files, read_file_item};
use crate::runtime::{Runtime, process_all};
use anyhow::Context;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The demo configuration, relative to the repository root.
const DEMO_CONFIG: &str = "examples/digits/sluice.toml";

/// Find the demo configuration: in the working directory, else in the source
/// tree this binary was built from.
fn default_config() -> anyhow::Result<PathBuf> {
    let source_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [Path::new(".").to_path_buf(), source_root]
        .into_iter()
        .map(|root| root.join(DEMO_CONFIG))
        .find(|p| p.exists())
        .with_context(|| format!("cannot find {DEMO_CONFIG}; run from the repository root or pass --config"))
}

pub fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config_path = match config {
        Some(path) => path,
        None => default_config()?,
    };
    let config = Config::load(&config_path)?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    let inputs = base.join("../../models/digits/heldout");
    let labels = read_labels(&inputs.join("labels.csv"))?;

    let started = Instant::now();
    let runtime = Runtime::start(config)?;
    let startup = started.elapsed();
    let pipeline = runtime.pipeline(None)?;
    let files: Vec<PathBuf> = list_files(&[inputs.clone()])?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
    let items = files
        .iter()
        .enumerate()
        .map(|(ix, path)| read_file_item(path, format!("{}/{}/{ix}", runtime.config.device.id, pipeline.name)))
        .collect::<Result<Vec<_>, _>>()?;

    let started = Instant::now();
    let bar = progress_bar(items.len());
    let outcomes = process_all(pipeline, items, &|n| bar.inc(n as u64));
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    std::fs::create_dir_all(&runtime.config.device.data_dir)?;
    let results_path = runtime.config.device.data_dir.join("demo-results.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&results_path)?);
    let (mut ok, mut correct) = (0, 0);
    for (path, outcome) in files.iter().zip(&outcomes) {
        let record = outcome_json(path, outcome);
        if outcome.result.is_ok() {
            ok += 1;
            let file = path.file_name().unwrap().to_string_lossy();
            correct += usize::from(labels.get(file.as_ref()).is_some_and(|l| record["result"]["label"] == *l));
        }
        writeln!(out, "{record}")?;
    }
    out.flush()?;

    let n = outcomes.len();
    let stats = pipeline.scheduler.stats();
    let choice = pipeline.scheduler.execution();
    println!("Sluice demo: digits pipeline ({})", config_path.display());
    println!("  start-up:    {:.0} ms (plugins compiled or loaded from cache, model planned and measured)", startup.as_secs_f64() * 1e3);
    println!("  processed:   {n} images in {:.0} ms ({:.0} items/s)", elapsed.as_secs_f64() * 1e3, n as f64 / elapsed.as_secs_f64());
    println!("  succeeded:   {ok}, failed: {}", n - ok);
    println!("  accuracy:    {:.4} ({correct}/{n} match labels.csv)", correct as f64 / n.max(1) as f64);
    println!("  execution:   chunks of up to {} item(s) on {} thread(s), chosen by measurement", choice.chunk, choice.threads);
    println!("  batches:     {} ({:?})", stats.batches, stats.batch_size_histogram.iter().filter(|(_, c)| *c > 0).collect::<Vec<_>>());
    println!("  results:     {}", results_path.display());
    for problem in &runtime.problems {
        println!("  problem:     {problem}");
    }
    anyhow::ensure!(ok == n, "{} item(s) failed; see {}", n - ok, results_path.display());
    Ok(())
}

/// `file,label` lines into a map.
fn read_labels(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(','))
        .map(|(file, label)| (file.trim().to_owned(), label.trim().to_owned()))
        .collect())
}
