//! `engine`: tract vs onnxruntime on the peer's exact inputs.

use crate::common::{load_model, read_f32, repo_root, time_per_run};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_agent::infer::InputShapes;
use sluice_agent::types::Tensor;
use std::path::Path;
use std::time::Duration;

/// tract vs onnxruntime on identical inputs.
pub(crate) fn engine(peer_dir: &Path) -> Result<Value> {
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
