//! What several benchmarks share: the repository root, memory readings,
//! paired and repeated timing, medians, loading a model and reading tensors.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_agent::infer::{InputShapes, Model, onnx_engine};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Peak resident set size of this process so far, in MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Resident memory now, split into file-backed pages (the executable and
/// libraries, shared and reclaimable) and anonymous ones (what the process
/// allocated), in MiB, from `/proc/self/status`.
pub(crate) fn rss_split_mib() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    json!({ "file_mib": field("RssFile:"), "anon_mib": field("RssAnon:") })
}

/// Two ways of doing the same work, timed in alternating single runs.
pub(crate) struct Paired {
    /// Median seconds per run of the first and of the second way.
    pub(crate) first: f64,
    pub(crate) second: f64,
    /// Median of the per-pair ratios second / first.
    pub(crate) ratio: f64,
    /// The middle half of the per-pair ratios: how much noise there was.
    pub(crate) ratio_quartiles: (f64, f64),
}

/// Time `first` and `second` in pairs of single runs (after one warm-up
/// each), swapping which goes first every pair, for at least `budget` and
/// `min_pairs` pairs. Noise on a shared machine comes and goes within
/// seconds; pairing puts both sides under the same noise, and medians of the
/// per-pair figures ignore the pairs it hit hardest.
pub(crate) fn paired_runs(
    budget: Duration,
    min_pairs: usize,
    mut first: impl FnMut(),
    mut second: impl FnMut(),
) -> Paired {
    first();
    second();
    let time = |f: &mut dyn FnMut()| {
        let run = Instant::now();
        f();
        run.elapsed().as_secs_f64()
    };
    let started = Instant::now();
    let mut pairs: Vec<(f64, f64)> = Vec::new();
    while pairs.len() < min_pairs || started.elapsed() < budget {
        pairs.push(if pairs.len() % 2 == 0 {
            let a = time(&mut first);
            (a, time(&mut second))
        } else {
            let b = time(&mut second);
            (time(&mut first), b)
        });
    }
    let mut ratios: Vec<f64> = pairs.iter().map(|p| p.1 / p.0).collect();
    ratios.sort_by(f64::total_cmp);
    Paired {
        first: median(pairs.iter().map(|p| p.0).collect()),
        second: median(pairs.iter().map(|p| p.1).collect()),
        ratio: ratios[ratios.len() / 2],
        ratio_quartiles: (ratios[ratios.len() / 4], ratios[ratios.len() * 3 / 4]),
    }
}

/// Run `f` repeatedly for at least `budget` (and at least 3 times, after one
/// warm-up); mean seconds per run.
pub(crate) fn time_per_run(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let started = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || started.elapsed() < budget {
        f();
        runs += 1;
    }
    started.elapsed().as_secs_f64() / runs as f64
}

pub(crate) fn load_model(path: &Path, shapes: &InputShapes) -> Result<Arc<dyn Model>> {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    Ok(onnx_engine().load(
        &name,
        &std::fs::read(path).with_context(|| path.display().to_string())?,
        shapes,
    )?)
}

pub(crate) fn read_f32(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
