//! The batch scheduler: the only place inference happens.
//!
//! Every request for a model — from the host pipeline or from a guest's
//! `wasi:nn` `compute` — goes into that model's bounded queue. One scheduler
//! thread per model takes requests as they come, with everything queued
//! behind them, and runs up to `max_batch_size` of them together. A
//! `wasi:nn` request waits at most `max_queue_delay` for more to come; a
//! pipeline's does not (its worker sends all it has at once).
//!
//! How a batch runs is measured, not assumed, at start-up (see
//! [`execution`]): chunk size and thread count are the fastest per item on
//! this machine, remembered across restarts.
//!
//! Invariants: every request gets exactly one reply; replies for one caller
//! come back in the caller's order; a bad request (wrong shape, expired)
//! fails alone; a full queue refuses new requests at once instead of growing.
//!
//! Timeouts (`request_timeout_ms`) shed load from callers that would rather
//! fail than wait (a guest's `wasi:nn` call): they count only the wait
//! behind other batches, never the wait for the request's own batch to fill
//! (the scheduler's choice, not a backlog). A pipeline's items
//! ([`Scheduler::infer_many_in_turn`]) are never timed out: they are the
//! journal's inputs, kept durably and tried again until taken, so a timeout
//! could only make them lose their place, and a short one could starve them
//! for good.
//!
//! A panic while a batch runs (a bug in an engine, reached by some input)
//! does not end the scheduler: each caller of that batch gets the panic
//! back, in its own thread, where the pipeline's worker counts it against
//! the inputs it was running (and runs them alone after: see `worker.rs`),
//! and the queue's capacity is freed as for any answer.

mod engine;
mod execution;
mod stats;

pub use engine::{
    AGREEMENT_TOLERANCE, EngineChoice, EngineTrial, ModelSource, start_model, trial_text,
};
pub use execution::{ExecutionCache, ExecutionChoice, ExecutionMode, Measurement};
pub use stats::{BATCH_SIZE_BOUNDS, QUEUE_TIME_BOUNDS_US, StatsSnapshot};

use crate::{Model, ModelError, TensorSpec};
use execution::{choose_execution, run_chunks, split_into_chunks};
use sluice_types::{ItemError, Tensor};
use stats::SchedulerStats;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// A `wasi:nn` request not taken off the queue within this (waiting
    /// behind other batches) is answered busy. A pipeline's own items are
    /// never timed out (see the module's documentation).
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

impl BatchConfig {
    /// The largest `max_batch_size` a configuration may ask for.
    pub const MAX_BATCH_SIZE: usize = 4096;

    /// `threads`, with 0 resolved to the number of cores.
    pub fn resolved_threads(&self) -> usize {
        if self.threads == 0 {
            sluice_types::available_cores()
        } else {
            self.threads
        }
    }
}

type Reply = Result<Vec<Tensor>, ItemError>;

/// One caller's items, queued together and answered together (one channel
/// message each way, however many items: that keeps the per-item cost of the
/// scheduler to a few microseconds).
struct Request {
    items: Vec<Vec<Tensor>>,
    enqueued: Instant,
    /// Answered busy if not taken off the queue within this; `None`: waits
    /// its turn however long it takes.
    timeout: Option<Duration>,
    reply: SyncSender<Answer>,
}

/// One request as the batch runner checks it: when it was queued and taken
/// off the queue, its timeout, its items.
struct Work {
    enqueued: Instant,
    taken: Instant,
    timeout: Option<Duration>,
    items: Vec<Vec<Tensor>>,
}

/// The scheduler's answer to one request: a reply per item, or the message
/// of a panic while its batch ran.
type Answer = Result<Vec<Reply>, String>;

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
    /// How `engine = "auto"` chose the engine, if it did.
    engine_choice: Option<Arc<EngineChoice>>,
}

impl Scheduler {
    /// Plan and warm up `model`, measure how to run its batches, and start
    /// its scheduler thread.
    pub fn start(model: Arc<dyn Model>, config: BatchConfig) -> Result<Scheduler, ModelError> {
        Scheduler::start_cached(model, config, None)
    }

    /// Like [`Scheduler::start`], reusing a measurement remembered in `cache`
    /// (and remembering a new one there).
    pub fn start_cached(
        model: Arc<dyn Model>,
        config: BatchConfig,
        cache: Option<&ExecutionCache>,
    ) -> Result<Scheduler, ModelError> {
        let config = BatchConfig {
            threads: config.resolved_threads(),
            max_batch_size: config.max_batch_size.max(1),
            ..config
        };
        let choice = choose_execution(model.as_ref(), &config, cache)?;
        tracing::info!(
            model = model.name(),
            chunk = choice.chunk,
            threads = choice.threads,
            intra_op = choice.intra_op,
            lone_intra_op = choice.lone_intra_op,
            "execution chosen: batches run as chunks of up to {} item(s) on {} thread(s){}",
            choice.chunk,
            choice.threads,
            if choice.intra_op {
                ", each chunk's operators on every core"
            } else {
                ""
            }
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
            engine_choice: None,
        })
    }

    /// The model it serves.
    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }

    /// How `engine = "auto"` chose its engine (`None` for a configured
    /// engine); the engine itself is `model().engine()`.
    pub fn engine_choice(&self) -> Option<&EngineChoice> {
        self.engine_choice.as_deref()
    }

    /// How its batches run, as chosen at start-up.
    pub fn execution(&self) -> &ExecutionChoice {
        &self.choice
    }

    /// Its settings, with `threads` resolved and `max_batch_size` at least 1.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// What it has done so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Items admitted and not yet answered (its queue depth).
    pub fn queue_depth(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Infer one item (tensors with a batch axis of 1); blocks until done.
    pub fn infer(&self, inputs: Vec<Tensor>) -> Reply {
        self.infer_many(vec![inputs])
            .pop()
            .expect("one reply per request")
    }

    /// Infer many items; they may share batches with other callers' items.
    /// One result per item, in order. Items beyond the queue's free capacity
    /// are refused ("queue full"), the others are served, or answered busy
    /// if they waited behind other batches longer than `request_timeout_ms`.
    pub fn infer_many(&self, items: Vec<Vec<Tensor>>) -> Vec<Reply> {
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        self.submit(items, Some(timeout))
    }

    /// Like [`Scheduler::infer_many`], but the admitted items wait their
    /// turn however long the queue is: for a pipeline's items, which the
    /// caller keeps (journaled) and tries again anyway, so that a timeout
    /// can never starve them.
    pub fn infer_many_in_turn(&self, items: Vec<Vec<Tensor>>) -> Vec<Reply> {
        self.submit(items, None)
    }

    fn submit(&self, mut items: Vec<Vec<Tensor>>, timeout: Option<Duration>) -> Vec<Reply> {
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
                timeout,
                reply,
            }) {
                Ok(()) => match rx.recv() {
                    Ok(Ok(replies)) => replies,
                    // In the caller's thread, where the inputs it sent are
                    // known (and a worker counts the crash against them).
                    Ok(Err(cause)) => std::panic::resume_unwind(Box::new(format!(
                        "model `{}` panicked on a batch: {cause}",
                        self.model.name()
                    ))),
                    Err(_) => (0..n)
                        .map(|_| Err(self.busy("the scheduler stopped before answering")))
                        .collect(),
                },
                Err(_) => {
                    self.outstanding.fetch_sub(n, Ordering::AcqRel);
                    (0..n)
                        .map(|_| Err(self.busy("the scheduler has stopped")))
                        .collect()
                }
            }
        };
        if !refused.is_empty() {
            self.stats.record_rejected_full(refused.len());
            let message = format!(
                "queue full ({} waiting); retry later",
                self.config.queue_capacity
            );
            replies.extend(refused.iter().map(|_| Err(self.busy(&message))));
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

    fn busy(&self, message: &str) -> ItemError {
        ItemError::Busy {
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
            // When each request was taken off the queue: its wait behind
            // other batches ends there (what a timeout counts).
            let taken = Instant::now();
            // A pipeline's request is all its worker has (it took every
            // journaled input it could) and nothing more comes from it until
            // it is answered: waiting for company would only add the delay
            // to every lone input. It still takes whatever else is queued
            // now, as everything queued while the previous batch ran.
            let close_at = match first.timeout {
                None => taken,
                Some(_) => first.enqueued + max_delay,
            };
            let mut items = first.items.len();
            let mut batch = vec![(first, taken)];
            while items < self.config.max_batch_size {
                match requests.recv_timeout(close_at.saturating_duration_since(Instant::now())) {
                    Ok(request) => {
                        items += request.items.len();
                        batch.push((request, Instant::now()));
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.run_batch(batch, items);
        }
    }

    fn error(&self, message: String) -> ItemError {
        ItemError::Inference {
            model: self.model.name().into(),
            message,
        }
    }

    /// Answer every request of `batch` (`items` in all, each with when it
    /// was taken off the queue): with the replies of
    /// [`BatchRunner::replies`], or, if that panicked, with the panic.
    fn run_batch(&self, batch: Vec<(Request, Instant)>, items: usize) {
        let (work, reply_to): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|(r, taken)| {
                (
                    Work {
                        enqueued: r.enqueued,
                        taken,
                        timeout: r.timeout,
                        items: r.items,
                    },
                    r.reply,
                )
            })
            .unzip();
        let answers = sluice_types::panic::catch(|| self.replies(work));
        // Free the capacity before answering: a caller that has its answer
        // may send again at once, and must find room.
        self.outstanding.fetch_sub(items, Ordering::AcqRel);
        match answers {
            Ok(answers) => {
                for (reply, answers) in reply_to.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answers));
                }
            }
            Err(cause) => {
                tracing::error!(
                    model = self.model.name(),
                    items,
                    "a batch panicked: {cause}"
                );
                for reply in reply_to {
                    let _ = reply.send(Err(cause.clone()));
                }
            }
        }
    }

    /// Check every item of every request, run the valid ones together: the
    /// replies, per request.
    fn replies(&self, batch: Vec<Work>) -> Vec<Vec<Reply>> {
        let now = Instant::now();
        let mut replies: Vec<Vec<Option<Reply>>> = Vec::with_capacity(batch.len());
        let mut valid = Vec::new();
        let mut slots = Vec::new();
        for (r, work) in batch.into_iter().enumerate() {
            self.stats
                .record_queue_time(now.duration_since(work.enqueued), work.items.len());
            let behind_others = work.taken.duration_since(work.enqueued);
            let expired = work.timeout.filter(|t| behind_others > *t);
            if expired.is_some() {
                self.stats.record_timed_out(work.items.len());
            }
            let mut answers = Vec::with_capacity(work.items.len());
            for (i, inputs) in work.items.into_iter().enumerate() {
                if let Some(timeout) = expired {
                    answers.push(Some(Err(ItemError::Busy {
                        model: self.model.name().into(),
                        message: format!("not started within {} ms", timeout.as_millis()),
                    })));
                } else if let Err(message) = check_inputs(self.model.inputs(), &inputs) {
                    answers.push(Some(Err(self.error(message))));
                } else {
                    answers.push(None);
                    valid.push(inputs);
                    slots.push((r, i));
                }
            }
            replies.push(answers);
        }
        if !valid.is_empty() {
            let chunks = split_into_chunks(valid.len(), self.choice.chunk);
            chunks
                .iter()
                .for_each(|&size| self.stats.record_batch(size));
            let outputs = run_chunks(
                self.model.as_ref(),
                valid,
                &chunks,
                self.choice.threads,
                self.choice.intra_op,
                self.choice.lone_intra_op,
            );
            for ((r, i), output) in slots.into_iter().zip(outputs) {
                replies[r][i] = Some(output.map_err(|e| self.error(e.detail())));
            }
        }
        replies
            .into_iter()
            .map(|answers| {
                answers
                    .into_iter()
                    .map(|a| a.expect("every item answered"))
                    .collect()
            })
            .collect()
    }
}

/// Check an item's tensors against the model's inputs: same number, and
/// each in its position with its name, dtype and shape.
pub(crate) fn check_inputs(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Plan;
    use sluice_types::DType;

    /// A model that answers its input, and panics on a 13 (a bug in an
    /// engine that some input reaches).
    struct Brittle(Vec<TensorSpec>);

    impl Model for Brittle {
        fn name(&self) -> &str {
            "brittle"
        }
        fn engine(&self) -> &'static str {
            "test"
        }
        fn inputs(&self) -> &[TensorSpec] {
            &self.0
        }
        fn outputs(&self) -> &[TensorSpec] {
            &self.0
        }
        fn plan(&self, _batch: usize) -> Result<Arc<dyn Plan>, ModelError> {
            Ok(Arc::new(BrittlePlan))
        }
        fn release_plans_above(&self, _batch: usize) {}
    }

    struct BrittlePlan;

    impl Plan for BrittlePlan {
        fn run(&self, inputs: Vec<Tensor>, _intra_op: bool) -> Result<Vec<Tensor>, ModelError> {
            let values = inputs[0].f32_values().expect("f32 input");
            assert!(!values.contains(&13.0), "brittle on 13");
            Ok(inputs)
        }
    }

    fn item(value: f32) -> Vec<Tensor> {
        vec![Tensor::from_f32("x", vec![1, 1], &[value])]
    }

    #[test]
    fn a_batch_that_panics_is_handed_to_its_callers_and_the_scheduler_goes_on() {
        let spec = TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![None, Some(1)],
        };
        let config = BatchConfig {
            execution: ExecutionMode::Stacked,
            max_queue_delay_ms: 0,
            threads: 1,
            ..BatchConfig::default()
        };
        let scheduler = Scheduler::start(Arc::new(Brittle(vec![spec])), config).unwrap();
        let cause =
            sluice_types::panic::catch(|| scheduler.infer_many(vec![item(1.0), item(13.0)]))
                .expect_err("the panic reaches the caller");
        assert!(
            cause.contains("model `brittle` panicked on a batch")
                && cause.contains("brittle on 13"),
            "{cause}"
        );
        assert_eq!(scheduler.queue_depth(), 0, "its capacity is freed");
        // The scheduler still serves (it used to die with the batch, and
        // every later item was "busy" forever).
        let replies = scheduler.infer_many(vec![item(1.0), item(2.0)]);
        assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    }
}
