//! Drift on the device, without labels, on real held-out data: a profile
//! made from one half of the digits and anomaly held-out sets, the other
//! half streamed through the in-process agent, raises no alarm; inverted or
//! blurred digits, scaled tabular records and one offset tabular feature
//! raise one within the window;
//! every window reaches the collector (or the outbox) as a `drift-window`
//! record with the right fields; a profile of another model file is refused
//! and the pipeline runs without drift (windows). The false-alarm rate,
//! measured over many random splits of the held-out data, stays at or below
//! the configured one, and the delay to detect a shift is measured (rates).
//! `sluice model profile` writes the profile the agent uses (profile).
//!
//! The helpers they share, also used by `fleet`, are here.

mod profile;
mod rates;
mod windows;

use crate::common::{http, repo_root, shared_cache_dir};
use sluice_agent::config::Config;
use sluice_agent::drift::{Profile, observe_items};
use sluice_agent::outbox::NewInput;
use sluice_agent::runtime::Runtime;
use sluice_agent::types::{RawItem, Tensor};
use sluice_collector_core::Collector;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEVICE: &str = "dev-drift";
const TOKEN: &str = "drift-secret";

/// `png` with every pixel inverted (dark digits on a light ground).
pub(crate) fn inverted(png: &[u8]) -> Vec<u8> {
    let mut image = image::load_from_memory(png).unwrap().to_luma8();
    image::imageops::invert(&mut image);
    encode(image)
}

/// `png` blurred (a camera out of focus): Gaussian, sigma 1 pixel.
fn blurred(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(png).unwrap().to_luma8();
    encode(image::imageops::blur(&image, 1.0))
}

fn encode(image: image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The anomaly held-out records, each a CSV document (header + one row).
fn anomaly_rows() -> (String, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join("models/anomaly/heldout.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_owned();
    (header, lines.map(str::to_owned).collect())
}

/// `row` with every feature multiplied by `factor` (a sensor recalibrated).
fn scaled(row: &str, factor: f64) -> String {
    row.split(',')
        .map(|field| match field.parse::<f64>() {
            Ok(v) => (v * factor).to_string(),
            Err(_) => field.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `row` with feature `column` moved by `sigmas` of its training standard
/// deviation (`models/anomaly/scaler.json`): one sensor's offset, the
/// others unchanged.
fn offset(row: &str, column: usize, sigmas: f64) -> String {
    let scaler: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("models/anomaly/scaler.json")).unwrap(),
    )
    .unwrap();
    let step = scaler["scale"][column].as_f64().unwrap() * sigmas;
    let mut fields: Vec<String> = row.split(',').map(str::to_owned).collect();
    fields[column] = (fields[column].parse::<f64>().unwrap() + step).to_string();
    fields.join(",")
}

fn csv_item(header: &str, row: &str) -> Vec<u8> {
    format!("{header}\n{row}\n").into_bytes()
}

/// The example's configuration, for an in-process agent: test data dir,
/// shared plugin cache, no folder, no uplink unless given.
pub(crate) fn example_config(example: &str, dir: &Path) -> Config {
    let mut config = Config::load(
        &repo_root()
            .join("examples")
            .join(example)
            .join("sluice.toml"),
    )
    .unwrap();
    config.device.id = DEVICE.into();
    config.device.data_dir = dir.join("data");
    config.runtime.cache_dir = Some(shared_cache_dir());
    config.ingest = sluice_agent::config::IngestConfig::default();
    config.sync = sluice_agent::config::SyncConfig::default();
    config
}

fn raw(items: &[Vec<u8>], content_type: &str) -> Vec<RawItem> {
    items
        .iter()
        .enumerate()
        .map(|(ix, data)| RawItem {
            meta: sluice_agent::types::Metadata::new(format!("ref-{ix}"), content_type),
            data: data.clone(),
        })
        .collect()
}

pub(crate) type Observed = Vec<(Vec<Tensor>, Vec<Tensor>)>;

/// Run `items` through `config`'s only pipeline; what the model saw and said.
pub(crate) fn observe(runtime: &Runtime, items: &[Vec<u8>], content_type: &str) -> Observed {
    let pipeline = runtime.pipeline(None).unwrap();
    let observed = observe_items(pipeline, raw(items, content_type));
    assert_eq!(
        observed.len(),
        items.len(),
        "every reference item got through"
    );
    observed
}

fn pairs(observed: &[(Vec<Tensor>, Vec<Tensor>)]) -> Vec<(&[Tensor], &[Tensor])> {
    observed
        .iter()
        .map(|(i, o)| (i.as_slice(), o.as_slice()))
        .collect()
}

/// Write the profile of `reference` for `config`'s only pipeline beside the
/// test, and point the model at it; its path.
pub(crate) fn write_profile(
    config: &mut Config,
    runtime: &Runtime,
    reference: &Observed,
    dir: &Path,
) -> PathBuf {
    let pipeline = runtime.pipeline(None).unwrap().name().to_owned();
    let model = config.pipelines[&pipeline].model.clone();
    let sha = runtime.model_sha256(&model).unwrap();
    let profile = Profile::build(&model, sha, &pipeline, &pairs(reference)).unwrap();
    let path = dir.join(format!("{model}.profile.json"));
    profile.write(&path).unwrap();
    config.models.get_mut(&model).unwrap().profile = Some(path.clone());
    path
}

pub(crate) fn accept(
    agent: &sluice_agent::agent::Agent,
    pipeline: &str,
    items: &[Vec<u8>],
    content_type: &str,
) {
    let inputs: Vec<NewInput> = items
        .iter()
        .map(|data| NewInput {
            pipeline: pipeline.into(),
            content_type: content_type.into(),
            attributes: Vec::new(),
            data: data.clone(),
        })
        .collect();
    agent.accept(&inputs).unwrap();
}

/// Poll until `done` gives something (bounded).
pub(crate) fn wait_for<T>(timeout: Duration, mut done: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = done() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Every record the collector stored for the test device, in `seq` order.
fn collected(collector: &Collector) -> Vec<serde_json::Value> {
    let (status, body) = http(
        reqwest::Client::new()
            .get(format!(
                "{}/v1/devices/{DEVICE}/results?after=0&limit=10000",
                collector.url()
            ))
            .bearer_auth(TOKEN),
    );
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    body["results"].as_array().unwrap().clone()
}

fn windows_of(records: &[serde_json::Value]) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "drift-window")
        .cloned()
        .collect()
}

/// Drift-window records in the agent's outbox, in `seq` order.
fn outbox_windows(agent: &sluice_agent::agent::Agent) -> Vec<serde_json::Value> {
    windows_of(&crate::common::outbox_records(agent))
}

fn drifted(window: &serde_json::Value) -> Vec<String> {
    window["scores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["drifted"] == true)
        .map(|s| s["feature"].as_str().unwrap().to_owned())
        .collect()
}
