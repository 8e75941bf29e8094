//! How a batch runs, and how that is chosen.
//!
//! A batch is split into chunks of at most [`ExecutionChoice::chunk`] items
//! (powers of two, so plans exist for few sizes and nothing is padded); each
//! chunk is stacked into one tensor and run by the plan for its size; chunks
//! are spread over [`ExecutionChoice::threads`] threads, or each chunk's
//! operators over every core ([`ExecutionChoice::intra_op`]), never both
//! (that would only oversubscribe the cores).
//!
//! The choice is measured, not assumed: at load every candidate (chunk,
//! threads, intra-op) runs a full batch and the cheapest per item wins.
//! Small dense models gain from stacking; convolution nets in tract lose per
//! item as the batch grows and are better run as small chunks in parallel,
//! or one at a time with their matrix products spread over the cores. Measuring
//! takes a noticeable part of start-up (about 160 ms for the digits MLP), so
//! the result is remembered per machine, model and settings
//! ([`ExecutionCache`]): a restart reuses it and starts in tens of ms.

use super::BatchConfig;
use crate::{Model, ModelError};
use sha2::{Digest, Sha256};
use sluice_types::{Tensor, stack_items};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a model's batches are run (`batching.execution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ExecutionMode {
    /// Measure at start-up (or reuse a remembered measurement) and run the
    /// cheapest way per item.
    Auto,
    /// Always run the whole batch as one stacked tensor.
    Stacked,
    /// Always run items one by one (for comparison).
    Single,
}

/// How the scheduler runs a batch: split into chunks of at most `chunk`
/// items, each chunk stacked into one tensor, chunks spread over `threads`,
/// each chunk's operators over the inference pool when `intra_op`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExecutionChoice {
    /// The largest chunk, in items (a power of two).
    pub chunk: usize,
    /// How many inference threads the chunks of one batch are spread over.
    pub threads: usize,
    /// Whether one chunk's operators run on every inference thread.
    #[serde(default)]
    pub intra_op: bool,
    /// Whether a batch that is one chunk (a lone item when traffic is low)
    /// runs its operators on every inference thread: measured on one item,
    /// as the latency of a lone input, apart from the throughput choice
    /// above (MobileNetV2: 28 ms alone on one thread, 21 ms on two; a full
    /// batch is faster as parallel chunks).
    #[serde(default)]
    pub lone_intra_op: bool,
    /// Measured cost per item, in microseconds, for each way tried.
    pub measurements: Vec<Measurement>,
}

/// The measured cost of one way of running a full batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// Largest chunk, in items.
    pub chunk: usize,
    /// Threads the chunks were spread over.
    pub threads: usize,
    /// Whether a chunk's operators ran on every inference thread.
    #[serde(default)]
    pub intra_op: bool,
    /// The fastest run's wall-clock time divided by the batch size, in µs.
    pub micros_per_item: f64,
}

/// Chunk sizes for `n` items: powers of two no larger than `max_chunk`,
/// largest first, so plans exist for few sizes and nothing is padded.
pub(super) fn split_into_chunks(n: usize, max_chunk: usize) -> Vec<usize> {
    let largest = if max_chunk.is_power_of_two() {
        max_chunk
    } else {
        max_chunk.next_power_of_two() / 2
    };
    let mut chunks = Vec::new();
    let mut left = n;
    while left > 0 {
        let mut size = largest.max(1);
        while size > left {
            size /= 2;
        }
        chunks.push(size);
        left -= size;
    }
    chunks
}

/// Run items (already checked) in chunks, spread over `threads` threads,
/// each chunk over every core if `intra_op` (or if `lone_intra_op` and the
/// batch is one chunk). Returns one result per item, in order. A failing
/// chunk is retried item by item so that one bad item cannot fail its
/// neighbours.
pub(super) fn run_chunks(
    model: &dyn Model,
    items: Vec<Vec<Tensor>>,
    chunks: &[usize],
    threads: usize,
    intra_op: bool,
    lone_intra_op: bool,
) -> Vec<Result<Vec<Tensor>, ModelError>> {
    let intra_op = intra_op || (lone_intra_op && chunks.len() == 1);
    let mut groups: Vec<Vec<Vec<Tensor>>> = Vec::with_capacity(chunks.len());
    let mut rest = items.into_iter();
    for &size in chunks {
        groups.push(rest.by_ref().take(size).collect());
    }
    let run_group = |group: Vec<Vec<Tensor>>| -> Vec<Result<Vec<Tensor>, ModelError>> {
        let n = group.len();
        match run_stacked(model, &group, intra_op) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(_) if n > 1 => group
                .into_iter()
                .map(|item| run_stacked(model, &[item], intra_op).map(|mut o| o.remove(0)))
                .collect(),
            Err(e) => vec![Err(e)],
        }
    };
    if threads <= 1 || groups.len() <= 1 {
        return groups.into_iter().flat_map(run_group).collect();
    }
    // Round-robin groups over `threads` lanes run on the inference pool,
    // then put results back in order.
    let lane_count = threads.min(groups.len());
    let mut lanes: Vec<Vec<(usize, Vec<Vec<Tensor>>)>> =
        (0..lane_count).map(|_| Vec::new()).collect();
    for (ix, group) in groups.into_iter().enumerate() {
        lanes[ix % lane_count].push((ix, group));
    }
    use rayon::prelude::*;
    let mut results: Vec<(usize, Vec<Result<Vec<Tensor>, ModelError>>)> =
        crate::pool().install(|| {
            lanes
                .into_par_iter()
                .flat_map_iter(|lane| lane.into_iter().map(|(ix, g)| (ix, run_group(g))))
                .collect()
        });
    results.sort_by_key(|(ix, _)| *ix);
    results.into_iter().flat_map(|(_, r)| r).collect()
}

/// Stack items along axis 0, run the plan for that size, split the outputs.
fn run_stacked(
    model: &dyn Model,
    items: &[Vec<Tensor>],
    intra_op: bool,
) -> Result<Vec<Vec<Tensor>>, ModelError> {
    let n = items.len();
    let plan = model.plan(n)?;
    let stacked = stack_items(items);
    let outputs = plan.run(stacked, intra_op)?;
    let mut per_item: Vec<Vec<Tensor>> =
        (0..n).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        if output.shape.first() != Some(&n) {
            return Err(ModelError::BatchAxis {
                model: model.name().into(),
                output: output.name,
                shape: output.shape,
                batch: n,
            });
        }
        let item_len = output.data.len() / n;
        let mut shape = output.shape.clone();
        shape[0] = 1;
        for (ix, bytes) in output
            .data
            .chunks_exact(item_len.max(1))
            .enumerate()
            .take(n)
        {
            per_item[ix].push(Tensor {
                name: output.name.clone(),
                dtype: output.dtype,
                shape: shape.clone(),
                data: bytes.to_vec(),
            });
        }
    }
    Ok(per_item)
}

/// Candidate chunk sizes: powers of two up to the largest batch.
fn candidate_chunks(max_batch: usize) -> Vec<usize> {
    let mut sizes = vec![1];
    while sizes.last().unwrap() * 2 <= max_batch {
        sizes.push(sizes.last().unwrap() * 2);
    }
    sizes
}

/// Build and warm up every plan, and measure which way of running a full
/// batch costs least per item.
pub(super) fn choose_execution(
    model: &dyn Model,
    config: &BatchConfig,
    cache: Option<&ExecutionCache>,
) -> Result<ExecutionChoice, ModelError> {
    let candidates = candidate_chunks(config.max_batch_size);
    let example = example_item(model)?;
    // Per engine: `auto` measures each engine on the same model.
    let what = format!("execution|{}", model.engine());
    let started = Instant::now();
    let fixed = |chunk: usize| ExecutionChoice {
        chunk,
        threads: 1,
        intra_op: false,
        lone_intra_op: false,
        measurements: Vec::new(),
    };
    let remembered = match config.execution {
        ExecutionMode::Stacked => Some(fixed(*candidates.last().unwrap())),
        ExecutionMode::Single => Some(fixed(1)),
        ExecutionMode::Auto => cache
            .and_then(|c| c.load::<ExecutionChoice>(&what, config))
            .filter(|c| {
                candidates.contains(&c.chunk)
                    && (1..=config.threads).contains(&c.threads)
                    && (!c.intra_op || config.threads > 1)
            }),
    };
    let choice = match remembered {
        Some(choice) => choice,
        None => {
            let choice = measure(model, config, &candidates, &example)?;
            tracing::debug!(
                model = model.name(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "execution measured"
            );
            if let Some(cache) = cache {
                cache.store(&what, config, &choice);
            }
            choice
        }
    };
    // Batches run as chunks of powers of two up to the chosen size: only
    // those plans are kept.
    model.release_plans_above(choice.chunk);
    for size in candidates.into_iter().filter(|&size| size <= choice.chunk) {
        // Each size every way it may run (a lone chunk may spread its
        // operators): an engine may build what a way needs on first use
        // (onnxruntime's intra-op session), which is not for a real batch.
        warm_up(model, &example, size, choice.intra_op)?;
        if choice.lone_intra_op && !choice.intra_op {
            warm_up(model, &example, size, true)?;
        }
    }
    tracing::debug!(
        model = model.name(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "plans ready"
    );
    Ok(choice)
}

/// Build the plan for `size` items and run it once (with `intra_op` as it
/// will run): building optimizes it, the first run allocates; both belong
/// before serving, so that the first real batch is not slow.
fn warm_up(
    model: &dyn Model,
    example: &[Tensor],
    size: usize,
    intra_op: bool,
) -> Result<(), ModelError> {
    run_stacked(model, &vec![example.to_vec(); size], intra_op)
        .map(drop)
        .map_err(|e| ModelError::WarmUp {
            model: model.name().into(),
            batch: size,
            source: Box::new(e),
        })
}

/// A chunk size this much slower per item than the best so far ends the
/// search: a margin well above measurement noise on a shared machine (conv
/// nets in tract lose 1.7x and more per doubling).
const GIVE_UP_RATIO: f64 = 1.5;

/// The largest remembered choice read back (they are a few hundred bytes);
/// a file claiming more is damage, and the choice is measured again.
const MAX_CHOICE_BYTES: u64 = 1 << 20;

/// Time a full batch for every candidate (chunk, threads, intra-op); the
/// cheapest per item wins. One plan exists at a time (a batch of the largest size splits
/// into equal chunks), which keeps the peak memory of start-up to one plan.
/// Once a chunk size costs clearly more per item than the best so far
/// (conv nets in tract), larger ones are not tried: they would cost more
/// still, and their plans and activations are the largest (MobileNetV2 at
/// batch 8 needs about 2.5x the memory of batch 1).
fn measure(
    model: &dyn Model,
    config: &BatchConfig,
    candidates: &[usize],
    example: &[Tensor],
) -> Result<ExecutionChoice, ModelError> {
    let batch = *candidates.last().unwrap();
    let mut measurements = Vec::new();
    // (chunk lanes, intra-op): one lane; lanes on every thread; one lane
    // whose operators use every thread.
    let ways: Vec<(usize, bool)> = if config.threads > 1 {
        vec![(1, false), (config.threads, false), (1, true)]
    } else {
        vec![(1, false)]
    };
    for &chunk in candidates {
        warm_up(model, example, chunk, false)?;
        for &(threads, intra_op) in &ways {
            if threads > 1 && chunk == batch {
                continue; // one chunk cannot be spread
            }
            let chunks = split_into_chunks(batch, chunk);
            // The fastest of at least two runs and ~20 ms of work: other
            // load on the machine only ever makes a run slower.
            let started = Instant::now();
            let mut fastest = Duration::MAX;
            let mut runs = 0;
            while runs < 2 || (started.elapsed() < Duration::from_millis(20) && runs < 50) {
                let items = vec![example.to_vec(); batch];
                let run = Instant::now();
                run_chunks(model, items, &chunks, threads, intra_op, false);
                fastest = fastest.min(run.elapsed());
                runs += 1;
            }
            let micros_per_item = fastest.as_secs_f64() * 1e6 / batch as f64;
            measurements.push(Measurement {
                chunk,
                threads,
                intra_op,
                micros_per_item,
            });
        }
        model.release_plans_above(0);
        let best_here = measurements
            .iter()
            .filter(|m| m.chunk == chunk)
            .map(|m| m.micros_per_item)
            .fold(f64::INFINITY, f64::min);
        let best_so_far = measurements
            .iter()
            .map(|m| m.micros_per_item)
            .fold(f64::INFINITY, f64::min);
        if best_here > GIVE_UP_RATIO * best_so_far {
            break;
        }
    }
    let best = measurements
        .iter()
        .min_by(|a, b| a.micros_per_item.total_cmp(&b.micros_per_item))
        .expect("at least one measurement");
    let alone = |intra_op: bool| {
        measurements
            .iter()
            .find(|m| m.chunk == 1 && m.threads == 1 && m.intra_op == intra_op)
            .map(|m| m.micros_per_item)
    };
    let lone_intra_op = matches!((alone(true), alone(false)), (Some(on), Some(off)) if on < off);
    Ok(ExecutionChoice {
        chunk: best.chunk,
        threads: best.threads,
        intra_op: best.intra_op,
        lone_intra_op,
        measurements: measurements.clone(),
    })
}

/// Remembers measured choices (execution per engine, and the engine for
/// `engine = "auto"`) on disk, one small JSON file per (model digest, batch
/// settings, Sluice version, CPU model, core count):
/// anything that could change the outcome is in the key, so a different
/// model, setting, build or machine measures afresh. Delete the files to
/// force a new measurement. Failures to read or write only cost a
/// measurement; they are never fatal.
#[derive(Debug, Clone)]
pub struct ExecutionCache {
    dir: PathBuf,
    model_sha256: String,
    /// CPU model and core count, read once (a model with `engine = "auto"`
    /// looks up several choices).
    machine: String,
}

impl ExecutionCache {
    /// Choices for the model whose file has SHA-256 `model_sha256`, kept in `dir`.
    pub fn new(dir: &Path, model_sha256: &str) -> ExecutionCache {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name") || l.starts_with("CPU part"))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ExecutionCache {
            dir: dir.to_owned(),
            model_sha256: model_sha256.to_ascii_lowercase(),
            machine: format!("{cpu}|cores={cores}"),
        }
    }

    /// The file remembering `what` (e.g. `execution|tract`) for `config`.
    fn path(&self, what: &str, config: &BatchConfig) -> PathBuf {
        // `intra-op`: choices remembered before it was a dimension are
        // measured again.
        let key = format!(
            "{}|intra-op|{what}|{}|batch={}|threads={}|{}",
            env!("CARGO_PKG_VERSION"),
            self.model_sha256,
            config.max_batch_size,
            config.threads,
            self.machine
        );
        let digest = hex::encode(&Sha256::digest(key.as_bytes())[..16]);
        let kind = what.split('|').next().unwrap_or(what);
        self.dir.join(format!("{kind}-{digest}.json"))
    }

    pub(super) fn load<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        config: &BatchConfig,
    ) -> Option<T> {
        // Sealed: a choice torn by a power cut is measured again, never
        // half-believed.
        let path = self.path(what, config);
        match sluice_durable::sealed::read(&path, MAX_CHOICE_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes?).ok(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "measuring the {what} choice again: {e}");
                None
            }
        }
    }

    pub(super) fn store<T: serde::Serialize>(&self, what: &str, config: &BatchConfig, value: &T) {
        let path = self.path(what, config);
        let written = sluice_durable::create_dir_all(&self.dir).and_then(|()| {
            sluice_durable::sealed::write(
                &path,
                &serde_json::to_vec_pretty(value).expect("a choice serializes"),
            )
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "cannot remember the {what} choice: {e}");
        }
    }
}

/// A zero-filled item matching the model's inputs, for warm-up and timing.
pub(super) fn example_item(model: &dyn Model) -> Result<Vec<Tensor>, ModelError> {
    model
        .inputs()
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(axis, d)| {
                    if axis == 0 {
                        Ok(1)
                    } else {
                        d.ok_or_else(|| ModelError::OpenInput {
                            model: model.name().into(),
                            input: spec.name.clone(),
                            axis: Some(axis),
                        })
                    }
                })
                .collect::<Result<_, _>>()?;
            let len = sluice_types::shape_bytes(&shape, spec.dtype).ok_or_else(|| {
                ModelError::Run {
                    model: model.name().into(),
                    source: format!(
                        "input `{}` of shape {shape:?} is larger than the {} bytes a tensor may hold",
                        spec.name,
                        sluice_types::MAX_TENSOR_BYTES
                    )
                    .into(),
                }
            })?;
            Ok(Tensor {
                name: spec.name.clone(),
                dtype: spec.dtype,
                shape,
                data: vec![0; len],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_batch_with_powers_of_two() {
        assert_eq!(split_into_chunks(32, 32), vec![32]);
        assert_eq!(split_into_chunks(17, 32), vec![16, 1]);
        assert_eq!(split_into_chunks(7, 2), vec![2, 2, 2, 1]);
        assert_eq!(split_into_chunks(5, 1), vec![1; 5]);
        assert_eq!(split_into_chunks(10, 12), vec![8, 2]);
    }

    #[test]
    fn a_remembered_choice_comes_back_to_the_last_bit() {
        // A measured 15.626750000000001 came back as 15.62675 before
        // serde_json's exact float parsing was enabled.
        let dir = tempfile::tempdir().unwrap();
        let cache = ExecutionCache::new(dir.path(), &"ab".repeat(32));
        let config = BatchConfig::default();
        let choice = ExecutionChoice {
            chunk: 8,
            threads: 1,
            intra_op: true,
            lone_intra_op: true,
            measurements: [15.62675_f64.next_up(), 0.1 + 0.2, 41.61275, 4.080125]
                .into_iter()
                .map(|micros_per_item| Measurement {
                    chunk: 1,
                    threads: 1,
                    intra_op: false,
                    micros_per_item,
                })
                .collect(),
        };
        cache.store("execution|tract", &config, &choice);
        assert_eq!(cache.load("execution|tract", &config), Some(choice));
    }

    #[test]
    fn candidates_are_powers_of_two_up_to_the_max() {
        assert_eq!(candidate_chunks(32), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(candidate_chunks(12), vec![1, 2, 4, 8]);
        assert_eq!(candidate_chunks(1), vec![1]);
    }
}
