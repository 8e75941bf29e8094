//! The digits pipeline matches the model's accuracy at batch 1 and 32; the
//! anomaly pipeline matches its AUC and alerts.

use super::{batching, document, expected, start_example};
use crate::common::*;
use sluice_agent::pipeline::process_all;
use sluice_agent::types::RawItem;

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
