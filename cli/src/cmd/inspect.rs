//! `sluice model inspect`: what a model is, and how this machine would run it.

use anyhow::{Context, bail};
use sluice_agent::infer::{AUTO, DEFAULT_ENGINE, InputShapes, read_model_file};
use sluice_agent::schedule::{BatchConfig, ModelSource, start_model, trial_text};
use std::path::Path;

/// `sluice model inspect`.
pub fn model(
    file: &Path,
    engine: &str,
    shapes: &InputShapes,
    max_batch_size: usize,
    json: bool,
) -> anyhow::Result<()> {
    // `auto` lists operators as the reference engine sees them.
    let listing = if engine == AUTO {
        DEFAULT_ENGINE
    } else {
        engine
    };
    let backend = sluice_agent::infer::engine(listing).with_context(|| {
        format!(
            "no engine `{engine}` in this build (engines: {}, or {AUTO})",
            sluice_agent::infer::ENGINES.join(", ")
        )
    })?;
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let bytes = read_model_file(&name, file, None)?;
    let ops = backend
        .operators(&name, &bytes)
        .with_context(|| file.display().to_string())?;
    let unsupported: Vec<&str> = ops
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(op, _)| op.as_str())
        .collect();
    let scheduler = if unsupported.is_empty() || engine == AUTO {
        let source = ModelSource {
            name: &name,
            bytes: &bytes,
            engine,
            shapes,
        };
        let config = BatchConfig {
            max_batch_size,
            ..BatchConfig::default()
        };
        Some(start_model(&source, config, None)?)
    } else {
        None
    };
    if json {
        let report = serde_json::json!({
            "file": file.display().to_string(),
            "operators": ops.iter().map(|(op, ok)| serde_json::json!({"op": op, "supported": ok})).collect::<Vec<_>>(),
            "inputs": scheduler.as_ref().map(|s| s.model().inputs().to_vec()),
            "outputs": scheduler.as_ref().map(|s| s.model().outputs().to_vec()),
            "engine": scheduler.as_ref().map(|s| s.model().engine()),
            "engine_choice": scheduler.as_ref().and_then(|s| s.engine_choice().cloned()),
            "execution": scheduler.as_ref().map(|s| s.execution().clone()),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("model:      {}", file.display());
    println!(
        "operators:  {}",
        ops.iter()
            .map(|(op, ok)| if *ok {
                op.clone()
            } else {
                format!("{op} (UNSUPPORTED)")
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some(scheduler) = scheduler else {
        bail!("{engine} does not implement: {}", unsupported.join(", "));
    };
    println!("engine:     {}", scheduler.model().engine());
    if let Some(choice) = scheduler.engine_choice() {
        println!("            chosen by `auto` (µs per item, difference from {DEFAULT_ENGINE}):");
        for trial in &choice.trials {
            let chosen = trial.engine == choice.engine;
            println!(
                "  {}{}",
                trial_text(trial),
                if chosen { "  <- chosen" } else { "" }
            );
        }
    }
    for (title, specs) in [
        ("inputs", scheduler.model().inputs()),
        ("outputs", scheduler.model().outputs()),
    ] {
        println!("{title}:");
        for spec in specs {
            println!("  {} {:?} {}", spec.name, spec.dtype, spec.shape_text());
        }
    }
    let choice = scheduler.execution();
    let intra = |on: bool| if on { ", operators on every core" } else { "" };
    println!(
        "execution:  chunks of up to {} item(s) on {} thread(s){} (measured below, µs per item)",
        choice.chunk,
        choice.threads,
        intra(choice.intra_op)
    );
    if choice.lone_intra_op && !choice.intra_op {
        println!("            a batch of one chunk (a lone input): operators on every core");
    }
    for m in &choice.measurements {
        let chosen =
            (m.chunk, m.threads, m.intra_op) == (choice.chunk, choice.threads, choice.intra_op);
        println!(
            "  chunk {:>3} x {} thread(s){:<26}: {:>10.1}{}",
            m.chunk,
            m.threads,
            intra(m.intra_op),
            m.micros_per_item,
            if chosen { "  <- chosen" } else { "" }
        );
    }
    Ok(())
}

/// Parse `NAME=D,D,D` (an input's dimensions after the batch axis).
pub fn parse_input_shape(arg: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}`: expected NAME=D,D,..."))?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|e| format!("`{arg}`: dimension `{d}`: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok((name.to_owned(), dims))
}
