//! The jobs the pipeline and overhead benchmarks run (digits, anomaly,
//! MobileNetV2, text direction): their inputs and their configurations, as a
//! user would write them.

use crate::common::repo_root;
use anyhow::{Context, Result};
use sluice_agent::config::Config;
use sluice_agent::runtime::Runtime;
use sluice_agent::schedule::ExecutionMode;
use sluice_agent::types::RawItem;
use std::path::{Path, PathBuf};

/// The inputs of a job, as the ingest stage would make them.
pub(crate) fn job_items(job: &str, images_dir: Option<&Path>) -> Result<Vec<RawItem>> {
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

pub(crate) fn execution_mode(name: &str) -> Result<ExecutionMode> {
    Ok(match name {
        "auto" => ExecutionMode::Auto,
        "stacked" => ExecutionMode::Stacked,
        "single" => ExecutionMode::Single,
        other => anyhow::bail!("unknown execution `{other}`"),
    })
}

pub(crate) fn job_config(
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

pub(crate) fn start_job(job: &str, execution: ExecutionMode) -> Result<Runtime> {
    Ok(Runtime::start(job_config(job, execution, None, None)?)?)
}
