//! `pipeline`: Sluice end to end over a job's inputs, from the journal to
//! every result durably in the outbox.

use crate::common::{peak_rss_mib, repo_root, rss_split_mib};
use crate::jobs::{execution_mode, job_config, job_items};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_agent::agent::Agent;
use sluice_agent::outbox::NewInput;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sluice end to end over a job's inputs, `repeat` times: accepted into the
/// agent's journal in one transaction, then timed until every result is
/// durably in the outbox (the peer times from its first input to its last
/// commit; it keeps no journal of inputs).
pub(crate) fn pipeline(
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
