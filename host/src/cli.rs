//! The commands behind `sluice`'s subcommands. They print for people (or
//! JSON for programs); the binary only parses arguments and calls these.

use crate::config::{Config, Grants};
use crate::infer::tract::{TractBackend, operator_support};
use crate::infer::{Backend, InputShapes, read_model_file};
use crate::ingest::{list_files, read_file_item};
use crate::pipeline::Outcome;
use crate::plugin::{BUNDLED_PREFIX, CacheOutcome, EngineOptions, PluginHost, inspect_component};
use crate::runtime::{Runtime, process_all};
use crate::schedule::{BatchConfig, Scheduler};
use crate::types::ItemError;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `sluice infer`: one pass of a pipeline over files, JSON Lines on stdout.
pub fn infer(
    config: &Path,
    pipeline: Option<&str>,
    inputs: &[PathBuf],
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut config = Config::load(config)?;
    if let Some(dir) = data_dir {
        config.device.data_dir = dir;
    }
    let runtime = Runtime::start(config)?;
    let pipeline = runtime.pipeline(pipeline)?;
    let files = list_files(inputs)?;
    let items = files
        .iter()
        .enumerate()
        .map(|(ix, path)| {
            read_file_item(
                path,
                format!("{}/{}/{ix}", runtime.config.device.id, pipeline.name),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bar = progress_bar(items.len());
    let outcomes = process_all(pipeline, items, &|n| bar.inc(n as u64));
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (path, outcome) in files.iter().zip(&outcomes) {
        failed += usize::from(outcome.result.is_err());
        writeln!(out, "{}", outcome_json(path, outcome))?;
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {} input(s) failed; see their `error` fields",
            outcomes.len()
        );
    }
    Ok(())
}

/// A progress bar on stderr, shown only on a terminal and for long runs.
pub fn progress_bar(len: usize) -> indicatif::ProgressBar {
    if len < 64 || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} items, {per_sec}, eta {eta}")
            .expect("valid progress template"),
    );
    bar
}

/// One JSON Lines record for an outcome.
pub fn outcome_json(input: &Path, outcome: &Outcome) -> serde_json::Value {
    let mut record = serde_json::json!({ "id": outcome.id, "input": input.display().to_string() });
    match &outcome.result {
        Ok(document) => {
            record["result"] = if document.content_type == "application/json" {
                serde_json::from_slice(&document.body)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&document.body).into())
            } else {
                String::from_utf8_lossy(&document.body).into()
            };
        }
        Err(error) => {
            record["error"] = error.to_string().into();
            record["error_kind"] = error_kind(error).into();
        }
    }
    record
}

/// A stable, machine-readable name for an error's kind.
pub fn error_kind(error: &ItemError) -> &'static str {
    match error {
        ItemError::InvalidInput { .. } => "invalid-input",
        ItemError::Unsupported { .. } => "unsupported",
        ItemError::Internal { .. } => "internal",
        ItemError::PluginFault { .. } => "plugin-fault",
        ItemError::Inference { .. } => "inference",
    }
}

/// `sluice model inspect`.
pub fn model_inspect(
    file: &Path,
    shapes: &InputShapes,
    max_batch_size: usize,
    json: bool,
) -> anyhow::Result<()> {
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let bytes = read_model_file(&name, file, None)?;
    let ops = operator_support(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid ONNX model: {e}", file.display()))?;
    let unsupported: Vec<&str> = ops
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(op, _)| op.as_str())
        .collect();
    let scheduler = if unsupported.is_empty() {
        let model = TractBackend.load(&name, &bytes, shapes)?;
        Some(Scheduler::start(
            model,
            BatchConfig {
                max_batch_size,
                ..BatchConfig::default()
            },
        )?)
    } else {
        None
    };
    if json {
        let report = serde_json::json!({
            "file": file.display().to_string(),
            "operators": ops.iter().map(|(op, ok)| serde_json::json!({"op": op, "supported": ok})).collect::<Vec<_>>(),
            "inputs": scheduler.as_ref().map(|s| s.model().inputs().to_vec()),
            "outputs": scheduler.as_ref().map(|s| s.model().outputs().to_vec()),
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
        bail!("tract does not implement: {}", unsupported.join(", "));
    };
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
    println!(
        "execution:  chunks of up to {} item(s) on {} thread(s) (measured below, µs per item)",
        choice.chunk, choice.threads
    );
    for m in &choice.measurements {
        let chosen = if m.chunk == choice.chunk && m.threads == choice.threads {
            "  <- chosen"
        } else {
            ""
        };
        println!(
            "  chunk {:>3} x {} thread(s): {:>10.1}{chosen}",
            m.chunk, m.threads, m.micros_per_item
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

/// `sluice plugin compile`: fill the compiled-plugin cache for every plugin
/// of a configuration (for devices running a runtime-only build).
pub fn plugin_compile(config: &Path, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(config)?;
    if let Some(dir) = data_dir {
        config.device.data_dir = dir;
    }
    let host = PluginHost::new(&EngineOptions::for_config(&config))?;
    let mut failed = 0;
    for (name, plugin) in &config.plugins {
        match host.precompile(name, plugin) {
            Ok(CacheOutcome::Hit) => println!("{name}: already compiled"),
            Ok(CacheOutcome::Compiled) => println!("{name}: compiled"),
            Err(e) => {
                failed += 1;
                println!("{name}: {e}");
            }
        }
    }
    println!("cache: {}", config.cache_dir().display());
    anyhow::ensure!(failed == 0, "{failed} plugin(s) could not be compiled");
    Ok(())
}

/// `sluice plugin inspect`.
pub fn plugin_inspect(file: &str, config: Option<(&Path, &str)>, json: bool) -> anyhow::Result<()> {
    // With a configuration: its grants, and its compiled-plugin cache.
    let (grants, cache_dir) = match config {
        Some((path, name)) => {
            let config = Config::load(path)?;
            let Some(plugin) = config.plugins.get(name) else {
                bail!("{} configures no plugin named `{name}`", path.display());
            };
            (plugin.grants.clone(), Some(config.cache_dir()))
        }
        None => (Grants::default(), None),
    };
    let wasm = match file.strip_prefix(BUNDLED_PREFIX) {
        Some(name) => crate::bundled::get(name)
            .with_context(|| {
                format!(
                    "no bundled plugin `{name}` (bundled: {})",
                    crate::bundled::names().join(", ")
                )
            })?
            .to_vec(),
        None => std::fs::read(file).with_context(|| format!("cannot read {file}"))?,
    };
    let host = PluginHost::new(&EngineOptions {
        cache_dir,
        ..EngineOptions::default()
    })?;
    let report = inspect_component(&host, &wasm, &grants).with_context(|| file.to_owned())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("plugin:   {file}\n{report}");
    }
    Ok(())
}
