//! `pipeline`: Sluice end to end over a job's inputs, from the journal to
//! every result durably in the outbox.

use crate::common::{peak_rss_mib, repo_root, rss_split_mib};
use crate::jobs::{execution_mode, job_config, job_items};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_agent::agent::Agent;
use sluice_agent::outbox::NewInput;
use sluice_agent::types::RawItem;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sluice end to end over a job's inputs, `repeat` times: accepted into the
/// agent's journal in one transaction, then timed until every result is
/// durably in the outbox (the peer times from its first input to its last
/// commit; it keeps no journal of inputs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pipeline(
    job: &str,
    repeat: usize,
    execution: &str,
    engine: &str,
    model: Option<&Path>,
    images_dir: Option<&Path>,
    cache_dir: Option<PathBuf>,
    arrival: Arrival,
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
    let items = job_items(job, images_dir)?;
    // What the parts cost alone, before the timed run: the end to end time
    // per item is compared with it (a pipeline far slower than its parts
    // is a defect, however it compares with the peer).
    let parts = parts_alone(&agent, &items)?;
    let inputs: Vec<NewInput> = items
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
    let mut lone_us = Vec::new();
    match arrival {
        // One transaction per pass over the inputs, as a burst of arrivals.
        Arrival::Burst => {
            for _ in 0..repeat {
                agent.accept(&inputs)?;
            }
            wait_for(&agent, n);
        }
        // One input at a time, each accepted when the previous result is
        // stored: the latency of a lone input on an idle device.
        Arrival::Single => {
            for (i, input) in (0..repeat).flat_map(|_| &inputs).enumerate() {
                let sent = Instant::now();
                agent.accept(std::slice::from_ref(input))?;
                wait_for(&agent, i as u64 + 1);
                lone_us.push(sent.elapsed().as_secs_f64() * 1e6);
            }
        }
        // One input every 1/rate s, whatever the device is doing.
        Arrival::Steady { per_second } => {
            let every = Duration::from_secs_f64(1.0 / per_second.max(1e-3));
            for (i, input) in (0..repeat).flat_map(|_| &inputs).enumerate() {
                let due = started + every * i as u32;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                agent.accept(std::slice::from_ref(input))?;
            }
            wait_for(&agent, n);
        }
    }
    drop(inputs);
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
    let latencies_ms: Vec<f64> = docs
        .iter()
        .filter_map(|d| {
            Some((d["completed_at_ms"].as_i64()? - d["accepted_at_ms"].as_i64()?) as f64)
        })
        .collect();
    let us_per_item = seconds * 1e6 / n as f64;
    let report = json!({
        "job": job, "execution": execution, "items": n, "seconds": seconds,
        "arrival": arrival.to_string(),
        "items_per_s": n as f64 / seconds, "peak_rss_mib": peak_rss, "rss_at_end": rss_now,
        "us_per_item": us_per_item,
        "parts_alone": parts,
        "vs_parts": us_per_item / parts["sum_us_per_item"].as_f64().unwrap_or(f64::NAN),
        "latency_ms": percentiles(latencies_ms),
        "lone_latency_us": (!lone_us.is_empty()).then(|| percentiles(lone_us)),
        "accuracy": accuracy,
        "engine": pipeline.scheduler().model().engine(),
        "engine_choice": pipeline.scheduler().engine_choice(),
        "chosen": pipeline.scheduler().execution(),
        "batches": pipeline.scheduler().stats().batch_size_histogram,
    });
    agent.shutdown();
    Ok(report)
}

/// How inputs arrive in a `pipeline` run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arrival {
    /// All at once (one transaction per pass over the inputs).
    Burst,
    /// At a steady rate, one by one.
    Steady {
        /// Inputs per second.
        per_second: f64,
    },
    /// One at a time, each after the previous one's result.
    Single,
}

impl std::str::FromStr for Arrival {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Arrival> {
        Ok(match text {
            "burst" => Arrival::Burst,
            "single" => Arrival::Single,
            _ => match text.strip_prefix("steady:").map(str::parse::<f64>) {
                Some(Ok(per_second)) if per_second > 0.0 => Arrival::Steady { per_second },
                _ => anyhow::bail!("arrival `{text}`: burst | single | steady:<items per second>"),
            },
        })
    }
}

impl std::fmt::Display for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arrival::Burst => write!(f, "burst"),
            Arrival::Single => write!(f, "single"),
            Arrival::Steady { per_second } => write!(f, "steady:{per_second}"),
        }
    }
}

/// Until `n` results are stored.
fn wait_for(agent: &Agent, n: u64) {
    while agent.outbox().pending().0 < n {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// p50, p95, p99 and max of `values`.
fn percentiles(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let ix = ((values.len() as f64 - 1.0) * q).round() as usize;
        values.get(ix).copied()
    };
    json!({"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": values.last()})
}

/// What a pipeline's parts cost per item, each alone on an idle machine:
/// its plugins (one thread, a batch of the job's inputs) and its model (the
/// scheduler's own measurement of the way it chose, on every core), on the
/// first batch of `items`.
fn parts_alone(agent: &Agent, items: &[RawItem]) -> Result<Value> {
    let pipeline = agent.runtime().pipeline(None)?;
    let batch = pipeline.scheduler().config().max_batch_size.max(1);
    let items = &items[..batch.min(items.len())];
    let n = items.len() as f64;
    let mut pre_us = f64::INFINITY;
    let mut post_us = f64::INFINITY;
    // The fastest of a few rounds: other load only ever makes one slower.
    for _ in 0..5 {
        let started = Instant::now();
        let tensors: Vec<_> = pipeline
            .preprocess()
            .preprocess(items)
            .into_iter()
            .collect::<Result<_, _>>()?;
        pre_us = pre_us.min(started.elapsed().as_secs_f64() * 1e6 / n);
        let inferred: Vec<_> = pipeline
            .scheduler()
            .infer_many(tensors)
            .into_iter()
            .zip(items)
            .map(|(tensors, item)| {
                Ok(sluice_agent::types::Inferred {
                    meta: item.meta.clone(),
                    tensors: tensors?,
                })
            })
            .collect::<Result<_>>()?;
        let started = Instant::now();
        for document in pipeline.postprocess().postprocess(&inferred) {
            document?;
        }
        post_us = post_us.min(started.elapsed().as_secs_f64() * 1e6 / n);
    }
    let chosen = pipeline.scheduler().execution();
    let model_us = chosen
        .measurements
        .iter()
        .find(|m| {
            m.chunk == chosen.chunk && m.threads == chosen.threads && m.intra_op == chosen.intra_op
        })
        .map(|m| m.micros_per_item);
    let sum = model_us.map(|m| m + pre_us + post_us);
    Ok(json!({
        "preprocess_us_per_item": pre_us,
        "model_us_per_item": model_us,
        "postprocess_us_per_item": post_us,
        "sum_us_per_item": sum,
    }))
}
