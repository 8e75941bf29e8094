//! `observe`: what watching a pipeline costs per item (metrics and drift
//! detection).

use crate::common::{paired_runs, time_per_run};
use crate::jobs::{job_items, start_job};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_agent::schedule::ExecutionMode;
use sluice_agent::types::{RawItem, Tensor};
use std::sync::Arc;
use std::time::Duration;

/// What watching costs per digit: the metrics a worker records per item,
/// and drift detection (the copy of the inputs and the observer). Measured
/// apart (many repetitions over the 450 held-out digits) and as an A/B of
/// whole pipeline batches with and without the observer.
pub(crate) fn observe_cost() -> Result<Value> {
    use sluice_agent::drift::{Drift, DriftConfig, Profile, observe_items};
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
