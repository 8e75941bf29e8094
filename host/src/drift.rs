//! Drift in the agent: the statistics of `sluice-drift` (re-exported here),
//! [`Drift`] as a pipeline observer, and the reference data a profile is
//! built from, run through a real pipeline.

use crate::pipeline::{Observer, Pipeline};
use crate::types::{RawItem, Tensor};
pub use sluice_drift::*;
use std::sync::Mutex;

impl Observer for Drift {
    fn observe(&self, inputs: &[Vec<Tensor>], outputs: &[&[Tensor]]) {
        Drift::observe(self, inputs, outputs)
    }
}

/// What each of `items` looks like to the model: its preprocessed inputs
/// and the model's outputs, from running it through `pipeline` (items that
/// fail a stage before the model's answer are left out). In no given order.
pub fn observe_items(pipeline: &Pipeline, items: Vec<RawItem>) -> Vec<(Vec<Tensor>, Vec<Tensor>)> {
    #[derive(Default)]
    struct Collect(Mutex<Vec<(Vec<Tensor>, Vec<Tensor>)>>);
    impl Observer for Collect {
        fn observe(&self, inputs: &[Vec<Tensor>], outputs: &[&[Tensor]]) {
            let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
            for (i, o) in inputs.iter().zip(outputs) {
                seen.push((i.clone(), o.to_vec()));
            }
        }
    }
    let collect = std::sync::Arc::new(Collect::default());
    let observed = pipeline.clone().with_observer(collect.clone());
    crate::pipeline::process_all(&observed, items, &|_| {});
    std::mem::take(&mut *collect.0.lock().unwrap_or_else(|p| p.into_inner()))
}
