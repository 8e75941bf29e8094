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

pub struct Pipeline {
    pub name: String,
    pub preprocess: Arc<Plugin>,
    pub scheduler: Scheduler,
    pub postprocess: Arc<Plugin>,
}

/// What became of one input.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub result: Result<Document, ItemError>,
    /// Time the item's batch spent in each stage.
    pub timings: StageTimings,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimings {
    pub preprocess_us: u64,
    pub infer_us: u64,
    pub postprocess_us: u64,
}

fn micros(since: Instant) -> u64 {
    Duration::as_micros(&since.elapsed()) as u64
}

impl Pipeline {
    /// Run every stage over `items`.
    pub fn process(&self, items: Vec<RawItem>) -> Vec<Outcome> {
        let mut timings = StageTimings::default();
        let started = Instant::now();
        let preprocessed = self.preprocess.preprocess(&items);
        timings.preprocess_us = micros(started);

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

        let started = Instant::now();
        let inferred = self.scheduler.infer_many(to_infer);
        timings.infer_us = micros(started);

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
        timings.postprocess_us = micros(started);
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
