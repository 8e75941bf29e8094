//! `sluice infer`: one pass of a pipeline over files, one result record per
//! file as JSON Lines on stdout, in input order: the same record shape the
//! agent ships upstream.

use anyhow::Context;
use sluice_agent::ingest::files::{list_files, read_file_item};
use sluice_agent::pipeline::process_all;
use sluice_agent::record::{ItemInfo, result_record};
use sluice_protocol::InputInfo;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `sluice infer`.
pub fn run(
    config: &Path,
    pipeline: Option<&str>,
    inputs: &[PathBuf],
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let runtime = super::start_one_pipeline(super::load_config(config, data_dir)?, pipeline)?;
    let device = runtime.config().device.id.clone();
    let pipeline = runtime.pipeline(None)?;
    let provenance = runtime
        .provenance(pipeline.name())
        .context("the pipeline's parts are running")?;
    let files = list_files(inputs)?;
    let accepted_at_ms = sluice_types::now_ms();
    let items = files
        .iter()
        .enumerate()
        .map(|(ix, path)| {
            read_file_item(
                path,
                sluice_protocol::result_id(&device, pipeline.name(), None, ix as i64),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let infos: Vec<ItemInfo> = items
        .iter()
        .enumerate()
        .map(|(ix, item)| ItemInfo {
            pipeline: pipeline.name().to_owned(),
            outbox: None,
            seq: ix as i64,
            accepted_at_ms,
            input: InputInfo {
                content_type: item.meta.content_type.clone(),
                bytes: item.data.len() as u64,
                attributes: item.meta.attributes.iter().cloned().collect(),
            },
        })
        .collect();
    let bar = progress_bar(items.len());
    let outcomes = process_all(pipeline, items, &|n| bar.inc(n as u64));
    bar.finish_and_clear();
    let completed_at_ms = sluice_types::now_ms();
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (info, outcome) in infos.into_iter().zip(&outcomes) {
        failed += usize::from(outcome.result.is_err());
        let record = result_record(&device, &provenance, info, outcome, completed_at_ms);
        serde_json::to_writer(&mut out, &record)?;
        writeln!(out)?;
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
fn progress_bar(len: usize) -> indicatif::ProgressBar {
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
