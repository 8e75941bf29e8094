//! The batch scheduler: the only place inference happens.
//!
//! Every request for a model — from the host pipeline or from a guest's
//! `wasi:nn` `compute` — goes into that model's bounded queue. One scheduler
//! thread per model takes requests as they come, waits at most
//! `max_queue_delay` after the first one for more, and runs up to
//! `max_batch_size` of them together.
//!
//! How a batch runs is measured, not assumed: at start-up the scheduler times
//! every candidate chunk size (powers of two up to the maximum batch) on one
//! thread and on all threads, and keeps the fastest per item
//! ([`ExecutionChoice`]). Small dense models gain from stacking many items in
//! one tensor; convolution nets in tract lose, and are better run as small
//! chunks in parallel.
//!
//! Invariants: every request gets exactly one reply; replies for one caller
//! come back in the caller's order; a bad request (wrong shape, expired)
//! fails alone; a full queue refuses new requests at once instead of growing.

use crate::infer::{Model, ModelError, TensorSpec};
use crate::types::{ItemError, Tensor};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

/// Batching settings of one model. Defaults follow common serving practice
/// (Triton, TF Serving): small batches of small delay.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Largest number of items run together.
    pub max_batch_size: usize,
    /// How long the first request of a batch may wait for company.
    pub max_queue_delay_ms: u64,
    /// Requests admitted but not yet answered, at most; more are refused at
    /// once with "queue full" rather than growing memory and latency.
    pub queue_capacity: usize,
    /// A request not started within this is answered with a timeout.
    pub request_timeout_ms: u64,
    /// Threads inference may use; 0 = all cores.
    pub threads: usize,
    /// `auto` measures; `stacked` always runs one tensor of the whole batch;
    /// `single` always runs items one by one (for comparison).
    pub execution: ExecutionMode,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 32,
            max_queue_delay_ms: 5,
            queue_capacity: 1024,
            request_timeout_ms: 10_000,
            threads: 0,
            execution: ExecutionMode::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionMode {
    Auto,
    Stacked,
    Single,
}

/// How the scheduler runs a batch: split into chunks of at most `chunk`
/// items, each chunk stacked into one tensor, chunks spread over `threads`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExecutionChoice {
    pub chunk: usize,
    pub threads: usize,
    /// Measured cost per item, in microseconds, for each (chunk, threads).
    pub measurements: Vec<Measurement>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Measurement {
    pub chunk: usize,
    pub threads: usize,
    pub micros_per_item: f64,
}

/// Histograms of what the scheduler did.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Batches run, by size bucket (1, 2-3, 4-7, ... 128+).
    batch_sizes: [AtomicU64; 8],
    /// Items by queue time bucket (<0.1 ms, <1 ms, <5 ms, <10 ms, <50 ms, <100 ms, <1 s, more).
    queue_times: [AtomicU64; 8],
    pub batches: AtomicU64,
    pub items: AtomicU64,
    pub rejected_full: AtomicU64,
    pub timed_out: AtomicU64,
}

const QUEUE_TIME_BOUNDS_US: [u64; 7] = [100, 1_000, 5_000, 10_000, 50_000, 100_000, 1_000_000];

impl SchedulerStats {
    fn record_batch(&self, size: usize) {
        let bucket = (usize::BITS - size.max(1).leading_zeros() - 1).min(7) as usize;
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(size as u64, Ordering::Relaxed);
    }

    fn record_queue_time(&self, waited: Duration, items: usize) {
        let us = waited.as_micros() as u64;
        let bucket = QUEUE_TIME_BOUNDS_US
            .iter()
            .position(|&b| us < b)
            .unwrap_or(7);
        self.queue_times[bucket].fetch_add(items as u64, Ordering::Relaxed);
    }

    /// A plain snapshot for reports.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &[AtomicU64; 8]| {
            a.iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        StatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            rejected_full: self.rejected_full.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            batch_size_histogram: [
                "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127", "128+",
            ]
            .iter()
            .map(|s| s.to_string())
            .zip(load(&self.batch_sizes))
            .collect(),
            queue_time_histogram: [
                "<0.1ms", "<1ms", "<5ms", "<10ms", "<50ms", "<100ms", "<1s", ">=1s",
            ]
            .iter()
            .map(|s| s.to_string())
            .zip(load(&self.queue_times))
            .collect(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    pub batches: u64,
    pub items: u64,
    pub rejected_full: u64,
    pub timed_out: u64,
    pub batch_size_histogram: Vec<(String, u64)>,
    pub queue_time_histogram: Vec<(String, u64)>,
}

type Reply = Result<Vec<Tensor>, ItemError>;

/// One caller's items, queued together and answered together (one channel
/// message each way, however many items: that keeps the per-item cost of the
/// scheduler to a few microseconds).
struct Request {
    items: Vec<Vec<Tensor>>,
    enqueued: Instant,
    reply: SyncSender<Vec<Reply>>,
}

/// A handle to one model's scheduler; cheap to clone and share.
#[derive(Clone)]
pub struct Scheduler {
    queue: Sender<Request>,
    /// Requests admitted and not yet answered: the queue's real length,
    /// including those gathered into a batch that has not run yet.
    outstanding: Arc<AtomicUsize>,
    model: Arc<dyn Model>,
    stats: Arc<SchedulerStats>,
    choice: Arc<ExecutionChoice>,
    config: Arc<BatchConfig>,
}

impl Scheduler {
    /// Plan and warm up `model`, measure how to run its batches, and start
    /// its scheduler thread.
    pub fn start(model: Arc<dyn Model>, config: BatchConfig) -> Result<Scheduler, ModelError> {
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let config = BatchConfig {
            threads,
            max_batch_size: config.max_batch_size.max(1),
            ..config
        };
        let choice = choose_execution(model.as_ref(), &config)?;
        tracing::info!(
            model = model.name(),
            chunk = choice.chunk,
            threads = choice.threads,
            "execution chosen: batches run as chunks of up to {} item(s) on {} thread(s)",
            choice.chunk,
            choice.threads
        );
        let (queue, requests) = mpsc::channel();
        let stats = Arc::new(SchedulerStats::default());
        let config = Arc::new(config);
        let choice = Arc::new(choice);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let runner = BatchRunner {
            model: model.clone(),
            stats: stats.clone(),
            choice: choice.clone(),
            config: config.clone(),
            outstanding: outstanding.clone(),
        };
        // The thread ends when the last handle (and so the queue) is dropped.
        std::thread::Builder::new()
            .name(format!("sluice-sched-{}", model.name()))
            .spawn(move || runner.serve(requests))
            .expect("spawn scheduler thread");
        Ok(Scheduler {
            queue,
            outstanding,
            model,
            stats,
            choice,
            config,
        })
    }

    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    pub fn execution(&self) -> &ExecutionChoice {
        &self.choice
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Infer one item (tensors with a batch axis of 1); blocks until done.
    pub fn infer(&self, inputs: Vec<Tensor>) -> Reply {
        self.infer_many(vec![inputs])
            .pop()
            .expect("one reply per request")
    }

    /// Infer many items; they may share batches with other callers' items.
    /// One result per item, in order. Items beyond the queue's free capacity
    /// are refused ("queue full"), the others are served.
    pub fn infer_many(&self, mut items: Vec<Vec<Tensor>>) -> Vec<Reply> {
        let admitted = self.admit(items.len());
        let refused = items.split_off(admitted);
        let mut replies = if items.is_empty() {
            Vec::new()
        } else {
            let (reply, rx) = mpsc::sync_channel(1);
            let n = items.len();
            match self.queue.send(Request {
                items,
                enqueued: Instant::now(),
                reply,
            }) {
                Ok(()) => rx.recv().unwrap_or_else(|_| {
                    (0..n)
                        .map(|_| Err(self.error("the scheduler stopped before answering")))
                        .collect()
                }),
                Err(_) => {
                    self.outstanding.fetch_sub(n, Ordering::AcqRel);
                    (0..n)
                        .map(|_| Err(self.error("the scheduler has stopped")))
                        .collect()
                }
            }
        };
        if !refused.is_empty() {
            self.stats
                .rejected_full
                .fetch_add(refused.len() as u64, Ordering::Relaxed);
            let message = format!(
                "queue full ({} waiting); retry later",
                self.config.queue_capacity
            );
            replies.extend(refused.iter().map(|_| Err(self.error(&message))));
        }
        replies
    }

    /// Reserve queue capacity for up to `n` items; returns how many fit.
    fn admit(&self, n: usize) -> usize {
        let capacity = self.config.queue_capacity;
        let mut current = self.outstanding.load(Ordering::Acquire);
        loop {
            let admitted = n.min(capacity.saturating_sub(current));
            match self.outstanding.compare_exchange(
                current,
                current + admitted,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return admitted,
                Err(now) => current = now,
            }
        }
    }

    fn error(&self, message: &str) -> ItemError {
        ItemError::Inference {
            model: self.model.name().into(),
            message: message.into(),
        }
    }
}

/// The scheduler thread's state.
struct BatchRunner {
    model: Arc<dyn Model>,
    stats: Arc<SchedulerStats>,
    choice: Arc<ExecutionChoice>,
    config: Arc<BatchConfig>,
    outstanding: Arc<AtomicUsize>,
}

impl BatchRunner {
    fn serve(self, requests: mpsc::Receiver<Request>) {
        let max_delay = Duration::from_millis(self.config.max_queue_delay_ms);
        while let Ok(first) = requests.recv() {
            let close_at = first.enqueued + max_delay;
            let mut items = first.items.len();
            let mut batch = vec![first];
            while items < self.config.max_batch_size {
                match requests.recv_timeout(close_at.saturating_duration_since(Instant::now())) {
                    Ok(request) => {
                        items += request.items.len();
                        batch.push(request);
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.run_batch(batch);
            self.outstanding.fetch_sub(items, Ordering::AcqRel);
        }
    }

    fn error(&self, message: String) -> ItemError {
        ItemError::Inference {
            model: self.model.name().into(),
            message,
        }
    }

    /// Check every item, run the valid ones together, answer every request.
    fn run_batch(&self, batch: Vec<Request>) {
        let now = Instant::now();
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let mut replies: Vec<Vec<Option<Reply>>> = Vec::with_capacity(batch.len());
        let mut valid = Vec::new();
        let mut slots = Vec::new();
        let mut reply_to = Vec::with_capacity(batch.len());
        for (r, request) in batch.into_iter().enumerate() {
            let waited = now.duration_since(request.enqueued);
            self.stats.record_queue_time(waited, request.items.len());
            let expired = waited > timeout;
            if expired {
                self.stats
                    .timed_out
                    .fetch_add(request.items.len() as u64, Ordering::Relaxed);
            }
            let mut answers = Vec::with_capacity(request.items.len());
            for (i, inputs) in request.items.into_iter().enumerate() {
                if expired {
                    answers.push(Some(Err(
                        self.error(format!("not started within {} ms", timeout.as_millis()))
                    )));
                } else if let Err(message) = check_inputs(self.model.inputs(), &inputs) {
                    answers.push(Some(Err(self.error(message))));
                } else {
                    answers.push(None);
                    valid.push(inputs);
                    slots.push((r, i));
                }
            }
            replies.push(answers);
            reply_to.push(request.reply);
        }
        if !valid.is_empty() {
            let chunks = split_into_chunks(valid.len(), self.choice.chunk);
            chunks
                .iter()
                .for_each(|&size| self.stats.record_batch(size));
            let outputs = run_chunks(self.model.as_ref(), valid, &chunks, self.choice.threads);
            for ((r, i), output) in slots.into_iter().zip(outputs) {
                replies[r][i] = Some(output.map_err(|e| self.error(e)));
            }
        }
        for (reply, answers) in reply_to.into_iter().zip(replies) {
            let _ = reply.send(
                answers
                    .into_iter()
                    .map(|a| a.expect("every item answered"))
                    .collect(),
            );
        }
    }
}

/// Check an item's tensors against the model's inputs, by name or position.
fn check_inputs(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<(), String> {
    if inputs.len() != specs.len() {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "the model takes {} input(s) {names:?}, got {}",
            specs.len(),
            inputs.len()
        ));
    }
    specs
        .iter()
        .zip(inputs)
        .try_for_each(|(spec, tensor)| spec.check_item(tensor))
}

/// Chunk sizes for `n` items: powers of two no larger than `max_chunk`,
/// largest first, so plans exist for few sizes and nothing is padded.
fn split_into_chunks(n: usize, max_chunk: usize) -> Vec<usize> {
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

/// Run items (already checked) in chunks, spread over `threads` threads.
/// Returns one result per item, in order. A failing chunk is retried item by
/// item so that one bad item cannot fail its neighbours.
fn run_chunks(
    model: &dyn Model,
    items: Vec<Vec<Tensor>>,
    chunks: &[usize],
    threads: usize,
) -> Vec<Result<Vec<Tensor>, String>> {
    let mut groups: Vec<Vec<Vec<Tensor>>> = Vec::with_capacity(chunks.len());
    let mut rest = items.into_iter();
    for &size in chunks {
        groups.push(rest.by_ref().take(size).collect());
    }
    let run_group = |group: Vec<Vec<Tensor>>| -> Vec<Result<Vec<Tensor>, String>> {
        let n = group.len();
        match run_stacked(model, &group) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(_) if n > 1 => group
                .into_iter()
                .map(|item| run_stacked(model, &[item]).map(|mut o| o.remove(0)))
                .collect(),
            Err(e) => vec![Err(e)],
        }
    };
    if threads <= 1 || groups.len() <= 1 {
        return groups.into_iter().flat_map(run_group).collect();
    }
    // Round-robin groups over threads, then put results back in order.
    let mut lanes: Vec<Vec<(usize, Vec<Vec<Tensor>>)>> =
        (0..threads.min(groups.len())).map(|_| Vec::new()).collect();
    let lane_count = lanes.len();
    for (ix, group) in groups.into_iter().enumerate() {
        lanes[ix % lane_count].push((ix, group));
    }
    let mut results: Vec<(usize, Vec<Result<Vec<Tensor>, String>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|lane| {
                scope.spawn(move || {
                    lane.into_iter()
                        .map(|(ix, g)| (ix, run_group(g)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("inference thread panicked"))
            .collect()
    });
    results.sort_by_key(|(ix, _)| *ix);
    results.into_iter().flat_map(|(_, r)| r).collect()
}

/// Stack items along axis 0, run the plan for that size, split the outputs.
fn run_stacked(model: &dyn Model, items: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>, String> {
    let n = items.len();
    let plan = model.plan(n).map_err(|e| e.to_string())?;
    let stacked: Vec<Tensor> = (0..items[0].len())
        .map(|input| {
            let first = &items[0][input];
            let mut shape = first.shape.clone();
            shape[0] = n;
            let mut data = Vec::with_capacity(first.data.len() * n);
            for item in items {
                data.extend_from_slice(&item[input].data);
            }
            Tensor {
                name: first.name.clone(),
                dtype: first.dtype,
                shape,
                data,
            }
        })
        .collect();
    let outputs = plan.run(stacked).map_err(|e| e.to_string())?;
    let mut per_item: Vec<Vec<Tensor>> =
        (0..n).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        if output.shape.first() != Some(&n) {
            return Err(format!(
                "output `{}` has shape {:?}, expected batch axis {n}",
                output.name, output.shape
            ));
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
fn choose_execution(
    model: &dyn Model,
    config: &BatchConfig,
) -> Result<ExecutionChoice, ModelError> {
    let candidates = candidate_chunks(config.max_batch_size);
    let example = example_item(model)?;
    // Warm-up: building each plan optimizes it; the first run allocates.
    for &chunk in &candidates {
        run_stacked(model, &vec![example.clone(); chunk]).map_err(|message| ModelError::Run {
            model: model.name().into(),
            message: format!("warm-up at batch {chunk}: {message}"),
        })?;
    }
    let largest = *candidates.last().unwrap();
    let fixed = |chunk: usize| ExecutionChoice {
        chunk,
        threads: 1,
        measurements: Vec::new(),
    };
    match config.execution {
        ExecutionMode::Stacked => return Ok(fixed(largest)),
        ExecutionMode::Single => return Ok(fixed(1)),
        ExecutionMode::Auto => {}
    }
    let batch = largest;
    let mut measurements = Vec::new();
    let thread_options: Vec<usize> = if config.threads > 1 {
        vec![1, config.threads]
    } else {
        vec![1]
    };
    for &chunk in &candidates {
        for &threads in &thread_options {
            if threads > 1 && chunk == batch {
                continue; // one chunk cannot be spread
            }
            let chunks = split_into_chunks(batch, chunk);
            let started = Instant::now();
            let mut runs = 0;
            // At least two runs, and at least ~20 ms of work, for a stable figure.
            while runs < 2 || (started.elapsed() < Duration::from_millis(20) && runs < 50) {
                run_chunks(model, vec![example.clone(); batch], &chunks, threads);
                runs += 1;
            }
            let micros_per_item = started.elapsed().as_secs_f64() * 1e6 / (runs * batch) as f64;
            measurements.push(Measurement {
                chunk,
                threads,
                micros_per_item,
            });
        }
    }
    let best = measurements
        .iter()
        .min_by(|a, b| a.micros_per_item.total_cmp(&b.micros_per_item))
        .expect("at least one measurement");
    Ok(ExecutionChoice {
        chunk: best.chunk,
        threads: best.threads,
        measurements: measurements.clone(),
    })
}

/// A zero-filled item matching the model's inputs, for warm-up and timing.
fn example_item(model: &dyn Model) -> Result<Vec<Tensor>, ModelError> {
    model
        .inputs()
        .iter()
        .map(|spec| {
            let shape: Option<Vec<usize>> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(axis, d)| if axis == 0 { Some(1) } else { *d })
                .collect();
            let shape = shape.ok_or_else(|| ModelError::Run {
                model: model.name().into(),
                message: format!(
                    "input `{}` has open dimensions {} besides the batch",
                    spec.name,
                    spec.shape_text()
                ),
            })?;
            let len = shape.iter().product::<usize>() * spec.dtype.size();
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
    fn candidates_are_powers_of_two_up_to_the_max() {
        assert_eq!(candidate_chunks(32), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(candidate_chunks(12), vec![1, 2, 4, 8]);
        assert_eq!(candidate_chunks(1), vec![1]);
    }
}
