//! `sluice model profile`: run reference data through a pipeline and write
//! its model's drift profile (see `sluice_agent::drift`).

use anyhow::Context;
use sluice_agent::drift::{Profile, observe_items};
use sluice_agent::ingest::files::{list_files, read_file_item};
use std::path::{Path, PathBuf};

/// `sluice model profile`.
pub fn run(
    config: &Path,
    pipeline: Option<&str>,
    inputs: &[PathBuf],
    output: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let runtime = super::start_one_pipeline(super::load_config(config, data_dir)?, pipeline)?;
    let pipeline = runtime.pipeline(None)?;
    let model = runtime.config().pipelines[pipeline.name()].model.clone();
    let sha256 = runtime
        .model_sha256(&model)
        .context("the pipeline's model is running")?
        .to_owned();
    let output = output.unwrap_or_else(|| runtime.config().models[&model].profile_path());
    let files = list_files(inputs)?;
    let items = files
        .iter()
        .enumerate()
        .map(|(ix, path)| read_file_item(path, format!("reference-{ix}")))
        .collect::<Result<Vec<_>, _>>()?;
    let total = items.len();
    let observed = observe_items(pipeline, items);
    let pairs: Vec<_> = observed
        .iter()
        .map(|(i, o)| (i.as_slice(), o.as_slice()))
        .collect();
    let profile = Profile::build(&model, &sha256, pipeline.name(), &pairs)?;
    profile.write(&output)?;
    let scored = profile
        .features
        .iter()
        .filter(|f| f.counts.len() > 1)
        .count();
    println!(
        "{}: {} of {total} reference item(s), {} feature(s) ({scored} scored; the others are constant in the reference), model `{model}` {sha256}",
        output.display(),
        observed.len(),
        profile.features.len(),
    );
    if observed.len() < total {
        eprintln!(
            "{} item(s) failed before the model answered and are not in the profile (see `sluice infer`)",
            total - observed.len()
        );
    }
    Ok(())
}
