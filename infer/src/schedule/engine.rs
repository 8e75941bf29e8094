//! Which engine runs a model.
//!
//! A model names its engine (`models.NAME.engine`), or says `auto`: then
//! every engine of this build loads it, each is measured the way its
//! batches would run ([`super::execution`]), one input goes through each and
//! the outputs are compared with the reference engine's (tract, the first of
//! [`ENGINES`]), and the fastest engine that agrees runs the model. An engine
//! that cannot load the model (no library, an operator it lacks) or
//! disagrees is left out, with the reason kept in [`EngineChoice`] and
//! logged. The choice is remembered beside the execution choices
//! ([`ExecutionCache`]), so a restart loads only the chosen engine.
//!
//! Invariant: whatever the engine, the model is served by one
//! [`Scheduler`]: pipelines and guests' `wasi:nn` calls reach it the same way.

use super::execution::{ExecutionCache, example_item};
use super::{BatchConfig, Scheduler};
use crate::{AUTO, ENGINES, InputShapes, ModelError, engine};
use sluice_types::{DType, Tensor};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest difference allowed between an engine's outputs and the
/// reference's on the probe input, relative to the largest reference value
/// of that output (at least 1). Engines differ in summation order and
/// kernels: MobileNetV2's logits differ by about 1e-6 of their range between
/// tract and onnxruntime; a wrong kernel or operator is off by far more.
pub const AGREEMENT_TOLERANCE: f64 = 1e-3;

/// How `engine = "auto"` chose, as `sluice model inspect` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineChoice {
    /// The engine that runs the model.
    pub engine: String,
    /// Every engine of the build, as tried.
    pub trials: Vec<EngineTrial>,
}

/// One engine tried on a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineTrial {
    /// The engine.
    pub engine: String,
    /// Cost per item of its best way of running a batch, in µs.
    pub micros_per_item: Option<f64>,
    /// Largest difference from the reference engine's outputs on the probe
    /// input, relative (see [`AGREEMENT_TOLERANCE`]); `None` for the
    /// reference itself.
    pub difference: Option<f64>,
    /// Why it was not eligible, if it was not.
    pub problem: Option<String>,
}

/// A model to start: its name, file contents and engine setting.
#[derive(Debug, Clone, Copy)]
pub struct ModelSource<'a> {
    /// The model's name in the configuration.
    pub name: &'a str,
    /// The ONNX file's contents.
    pub bytes: &'a [u8],
    /// An engine of [`ENGINES`], or [`AUTO`].
    pub engine: &'a str,
    /// Dimensions for inputs the model leaves open.
    pub shapes: &'a InputShapes,
}

/// Load `source` with its engine (choosing one for `auto`) and start its
/// scheduler; choices are reused from and remembered in `cache`.
pub fn start_model(
    source: &ModelSource,
    config: BatchConfig,
    cache: Option<&ExecutionCache>,
) -> Result<Scheduler, ModelError> {
    if source.engine != AUTO {
        return start_with(source, source.engine, config, cache);
    }
    let what = format!("engine|{}", ENGINES.join(","));
    if let Some(remembered) = cache.and_then(|c| c.load::<EngineChoice>(&what, &config)) {
        match start_with(source, &remembered.engine, config.clone(), cache) {
            Ok(mut scheduler) => {
                scheduler.engine_choice = Some(Arc::new(remembered));
                return Ok(scheduler);
            }
            Err(e) => tracing::warn!(
                model = source.name,
                engine = remembered.engine,
                "the remembered engine no longer starts ({e}); choosing again"
            ),
        }
    }
    let (mut scheduler, choice) = choose(source, &config, cache)?;
    tracing::info!(
        model = source.name,
        engine = choice.engine,
        "engine chosen: {}",
        choice
            .trials
            .iter()
            .map(trial_text)
            .collect::<Vec<_>>()
            .join("; ")
    );
    if let Some(cache) = cache {
        cache.store(&what, &config, &choice);
    }
    scheduler.engine_choice = Some(Arc::new(choice));
    Ok(scheduler)
}

/// One line about a trial, for the log and `sluice model inspect`.
pub fn trial_text(trial: &EngineTrial) -> String {
    let mut text = trial.engine.clone();
    if let Some(micros) = trial.micros_per_item {
        text += &format!(" {micros:.1} µs/item");
    }
    if let Some(difference) = trial.difference {
        text += &format!(", differs by {difference:.1e}");
    }
    if let Some(problem) = &trial.problem {
        text += &format!(" (left out: {problem})");
    }
    text
}

fn start_with(
    source: &ModelSource,
    name: &str,
    config: BatchConfig,
    cache: Option<&ExecutionCache>,
) -> Result<Scheduler, ModelError> {
    let backend = engine(name).ok_or_else(|| ModelError::UnknownEngine {
        model: source.name.into(),
        engine: name.into(),
    })?;
    let model = backend.load(source.name, source.bytes, source.shapes)?;
    Scheduler::start_cached(model, config, cache)
}

/// Start the model on every engine, compare, keep the fastest that agrees.
fn choose(
    source: &ModelSource,
    config: &BatchConfig,
    cache: Option<&ExecutionCache>,
) -> Result<(Scheduler, EngineChoice), ModelError> {
    let mut started = Vec::new();
    let mut trials = Vec::new();
    let mut first_error = None;
    for &name in ENGINES {
        match start_with(source, name, config.clone(), cache) {
            Ok(scheduler) => started.push(scheduler),
            Err(e) => {
                trials.push(EngineTrial {
                    engine: name.into(),
                    micros_per_item: None,
                    difference: None,
                    problem: Some(e.detail()),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(reference) = started.first() else {
        return Err(first_error.expect("an error per engine that did not start"));
    };
    let probe = probe_item(reference)?;
    let expected = run_probe(reference, &probe)?;
    let mut best: Option<(f64, Scheduler)> = None;
    for (ix, scheduler) in started.into_iter().enumerate() {
        let mut trial = EngineTrial {
            engine: scheduler.model().engine().into(),
            micros_per_item: Some(cost_per_item(&scheduler, &probe)?),
            difference: None,
            problem: None,
        };
        if ix > 0 {
            match run_probe(&scheduler, &probe).map(|got| difference(&expected, &got)) {
                Ok(Ok(difference)) => {
                    trial.difference = Some(difference);
                    if difference > AGREEMENT_TOLERANCE {
                        trial.problem = Some(format!(
                            "its outputs differ from {}'s by {difference:.1e} (tolerance {AGREEMENT_TOLERANCE:.0e})",
                            ENGINES[0]
                        ));
                    }
                }
                Ok(Err(problem)) => trial.problem = Some(problem),
                Err(e) => trial.problem = Some(e.detail()),
            }
        }
        let cost = trial.micros_per_item.unwrap_or(f64::INFINITY);
        if trial.problem.is_none() && best.as_ref().is_none_or(|(fastest, _)| cost < *fastest) {
            best = Some((cost, scheduler));
        }
        trials.push(trial);
    }
    let (_, scheduler) = best.expect("the reference engine is always eligible");
    // Trials in the order of ENGINES, whatever failed first.
    trials.sort_by_key(|t| ENGINES.iter().position(|&e| e == t.engine));
    let choice = EngineChoice {
        engine: scheduler.model().engine().into(),
        trials,
    };
    Ok((scheduler, choice))
}

/// The cost per item of the scheduler's chosen way of running a batch, as
/// measured; with a fixed execution (no measurements), the fastest of a few
/// one-item runs.
fn cost_per_item(scheduler: &Scheduler, probe: &[Tensor]) -> Result<f64, ModelError> {
    let choice = scheduler.execution();
    if let Some(m) = choice.measurements.iter().find(|m| {
        (m.chunk, m.threads, m.intra_op) == (choice.chunk, choice.threads, choice.intra_op)
    }) {
        return Ok(m.micros_per_item);
    }
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        run_probe(scheduler, probe)?;
        fastest = fastest.min(started.elapsed());
    }
    Ok(fastest.as_secs_f64() * 1e6)
}

fn run_probe(scheduler: &Scheduler, probe: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
    scheduler.model().plan(1)?.run(probe.to_vec(), false)
}

/// One item of fixed pseudo-random values (uniform in [0, 1) for floats,
/// any byte for `u8`; integers stay 0, since they are often indices): a
/// zero input would hide most differences.
fn probe_item(scheduler: &Scheduler) -> Result<Vec<Tensor>, ModelError> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut item = example_item(scheduler.model().as_ref())?;
    for tensor in &mut item {
        let n = tensor.data.len() / tensor.dtype.size();
        tensor.data = match tensor.dtype {
            DType::F16 => (0..n)
                .flat_map(|_| half::f16::from_f64(next()).to_le_bytes())
                .collect(),
            DType::BF16 => (0..n)
                .flat_map(|_| half::bf16::from_f64(next()).to_le_bytes())
                .collect(),
            DType::F32 => (0..n).flat_map(|_| (next() as f32).to_le_bytes()).collect(),
            DType::F64 => (0..n).flat_map(|_| next().to_le_bytes()).collect(),
            DType::U8 => (0..n).map(|_| (next() * 256.0) as u8).collect(),
            DType::I32 | DType::I64 => continue,
        };
    }
    Ok(item)
}

/// The largest difference between `got` and `expected`, relative to the
/// largest reference value of each output (at least 1); integer outputs
/// must be equal (infinite difference otherwise). `Err` when the outputs do
/// not even have the same shapes.
fn difference(expected: &[Tensor], got: &[Tensor]) -> Result<f64, String> {
    if expected.len() != got.len() {
        return Err(format!(
            "{} outputs where {} has {}",
            got.len(),
            ENGINES[0],
            expected.len()
        ));
    }
    let mut largest = 0f64;
    for (e, g) in expected.iter().zip(got) {
        if e.shape != g.shape || e.dtype != g.dtype {
            return Err(format!(
                "output `{}` is {:?} {:?} where {}'s is {:?} {:?}",
                e.name, g.dtype, g.shape, ENGINES[0], e.dtype, e.shape
            ));
        }
        let n = e.data.len() / e.dtype.size();
        let integer = matches!(e.dtype, DType::I32 | DType::I64 | DType::U8);
        let values = |t: &Tensor| {
            (0..n)
                .map(|i| t.element_f64(i).unwrap_or(f64::NAN))
                .collect::<Vec<_>>()
        };
        let (e, g) = (values(e), values(g));
        let scale = e
            .iter()
            .fold(1f64, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
        for (a, b) in e.iter().zip(&g) {
            let d = if a == b || (a.is_nan() && b.is_nan()) {
                0.0
            } else if integer {
                f64::INFINITY
            } else {
                (a - b).abs() / scale
            };
            // NaN (one side only) counts as the largest difference.
            largest = if d.is_nan() {
                f64::INFINITY
            } else {
                largest.max(d)
            };
        }
    }
    Ok(largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(values: &[f32]) -> Vec<Tensor> {
        vec![Tensor::from_f32("y", vec![1, values.len()], values)]
    }

    #[test]
    fn differences_are_relative_to_the_outputs_range_and_nan_is_the_largest() {
        let reference = f32s(&[10.0, -20.0, 0.5]);
        assert_eq!(difference(&reference, &reference), Ok(0.0));
        let close = f32s(&[10.0, -20.001, 0.5]);
        let d = difference(&reference, &close).unwrap();
        assert!((d - 0.001 / 20.0).abs() < 1e-7, "{d}");
        assert!(d <= AGREEMENT_TOLERANCE);
        let off = f32s(&[10.0, -19.0, 0.5]);
        assert!(difference(&reference, &off).unwrap() > AGREEMENT_TOLERANCE);
        let nan = f32s(&[10.0, f32::NAN, 0.5]);
        assert_eq!(difference(&reference, &nan), Ok(f64::INFINITY));
        let short = f32s(&[10.0, -20.0]);
        assert!(
            difference(&reference, &short)
                .unwrap_err()
                .contains("output `y`")
        );
    }
}
