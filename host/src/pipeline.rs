//! A pipeline joins the stages for one kind of input:
//! preprocess plugin -> scheduler (inference) -> postprocess plugin.
//!
//! Invariant: `process` returns exactly one [`Outcome`] per input, in input
//! order; an item that fails at any stage keeps its error and skips the rest,
//! its neighbours go on.

use crate::plugin::Plugin;
use crate::schedule::Scheduler;
use crate::types::{Document, Inferred, ItemError, RawItem};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One pipeline's parts, joined. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    name: String,
    preprocess: Arc<Plugin>,
    scheduler: Scheduler,
    postprocess: Arc<Plugin>,
    pool: Arc<rayon::ThreadPool>,
    observer: Option<Arc<dyn Observer>>,
}

/// Sees what goes into the model and what comes out, for every item that
/// got through inference (drift detection, [`crate::drift::Drift`]). Called
/// once per batch, on the pipeline's threads, concurrently: it must be quick.
pub trait Observer: Send + Sync {
    /// `inputs[i]` (the preprocessed tensors) made `outputs[i]`.
    fn observe(&self, inputs: &[Vec<crate::types::Tensor>], outputs: &[&[crate::types::Tensor]]);
}

/// What became of one input.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The input's id ([`crate::types::Metadata::id`]).
    pub id: String,
    /// Its result document, or why it has none.
    pub result: Result<Document, ItemError>,
    /// Time the item's batch spent in each stage.
    pub timings: StageTimings,
}

pub use sluice_protocol::StageTimings;

fn micros(since: Instant) -> u64 {
    Duration::as_micros(&since.elapsed()) as u64
}

impl Pipeline {
    /// Join the parts of pipeline `name`.
    pub(crate) fn new(
        name: String,
        preprocess: Arc<Plugin>,
        scheduler: Scheduler,
        postprocess: Arc<Plugin>,
        pool: Arc<rayon::ThreadPool>,
    ) -> Pipeline {
        Pipeline {
            name,
            preprocess,
            scheduler,
            postprocess,
            pool,
            observer: None,
        }
    }

    /// The same pipeline, with `observer` shown every item's inputs and
    /// outputs (the agent's workers; `sluice infer` and the benches run
    /// without one and pay nothing).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Pipeline {
        self.observer = Some(observer);
        self
    }

    /// Its name in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The preprocessing plugin.
    pub fn preprocess(&self) -> &Arc<Plugin> {
        &self.preprocess
    }

    /// The scheduler of its model.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The postprocessing plugin.
    pub fn postprocess(&self) -> &Arc<Plugin> {
        &self.postprocess
    }

    /// The threads [`process_all`] runs batches on, shared by every pipeline
    /// of a runtime: they call plugins and wait for the scheduler, so they are
    /// not the inference threads. Their number bounds how many calls a plugin
    /// serves at once, and so its instances.
    pub fn pool(&self) -> &Arc<rayon::ThreadPool> {
        &self.pool
    }

    /// Run every stage over `items`.
    pub fn process(&self, items: Vec<RawItem>) -> Vec<Outcome> {
        let mut timings = StageTimings {
            batch_items: u32::try_from(items.len()).unwrap_or(u32::MAX),
            ..StageTimings::default()
        };
        let started = Instant::now();
        let preprocessed = self.preprocess.preprocess(&items);
        timings.batch_preprocess_us = micros(started);

        let mut results: Vec<Option<Result<Document, ItemError>>> = Vec::with_capacity(items.len());
        let mut to_infer = Vec::new();
        let mut infer_slots = Vec::new();
        for (slot, tensors) in preprocessed.into_iter().enumerate() {
            match tensors {
                Ok(tensors) => {
                    to_infer.push(tensors);
                    infer_slots.push(slot);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }

        // The observer needs the inputs after the model took them: a copy,
        // made only when there is one (a few hundred bytes per digit).
        let observed_inputs = self.observer.as_ref().map(|_| to_infer.clone());
        let started = Instant::now();
        // The pipeline's items wait their turn: its callers keep them
        // (journaled) and would only try them again after a timeout.
        let inferred = self.scheduler.infer_many_in_turn(to_infer);
        timings.batch_infer_us = micros(started);
        if let (Some(observer), Some(inputs)) = (&self.observer, observed_inputs) {
            let (inputs, outputs): (Vec<_>, Vec<_>) = inputs
                .into_iter()
                .zip(&inferred)
                .filter_map(|(i, o)| Some((i, o.as_ref().ok()?.as_slice())))
                .unzip();
            observer.observe(&inputs, &outputs);
        }

        let mut to_post = Vec::new();
        let mut post_slots = Vec::new();
        for (slot, outputs) in infer_slots.into_iter().zip(inferred) {
            match outputs {
                Ok(tensors) => {
                    to_post.push(Inferred {
                        meta: items[slot].meta.clone(),
                        tensors,
                    });
                    post_slots.push(slot);
                }
                Err(e) => results[slot] = Some(Err(e)),
            }
        }

        let started = Instant::now();
        let documents = self.postprocess.postprocess(&to_post);
        timings.batch_postprocess_us = micros(started);
        for (slot, document) in post_slots.into_iter().zip(documents) {
            results[slot] = Some(document);
        }

        items
            .into_iter()
            .zip(results)
            .map(|(item, result)| Outcome {
                id: item.meta.id,
                result: result.expect("every item reaches a result"),
                timings,
            })
            .collect()
    }
}

/// Run `items` through `pipeline` in batches of the model's batch size, as
/// many batches at once as the pipeline's pool has threads, so that batches
/// from concurrent callers merge in the scheduler. `progress` is called with
/// each finished batch's size. Outcomes come back in input order.
pub fn process_all(
    pipeline: &Pipeline,
    items: Vec<RawItem>,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<Outcome> {
    use rayon::prelude::*;
    let batch = pipeline.scheduler.config().max_batch_size.max(1);
    let mut chunks = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(batch).collect::<Vec<_>>());
    }
    pipeline.pool.install(|| {
        chunks
            .into_par_iter()
            .flat_map_iter(|chunk| {
                let outcomes = pipeline.process(chunk);
                progress(outcomes.len());
                outcomes
            })
            .collect()
    })
}
