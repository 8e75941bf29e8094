//! A pipeline's worker: takes the oldest accepted inputs of one pipeline
//! from the journal, runs them through the [`Pipeline`], and stores their
//! results in the outbox.
//!
//! Invariants:
//! * a group's results are stored and its inputs retired from the journal
//!   in ONE transaction ([`Outbox::complete`]): after a crash an input is
//!   either still journaled (and processed again, under the same id) or has
//!   its result stored, never both, never neither;
//! * processing and storing overlap: while one group is being committed (an
//!   fsync), the next is already in the pipeline; at most one group waits
//!   for its commit, so a commit that cannot proceed (a full disk) stops
//!   processing too and inputs wait in the journal;
//! * a failed commit is retried with backoff, with the same results; it is
//!   never turned into a lost or failed result;
//! * back-pressure is never a result: an input the model's scheduler cannot
//!   take now (queue full, waited too long) is tried again until it is
//!   taken, and left journaled if the worker stops first;
//! * on stop, the group in the pipeline finishes and is committed;
//! * what it runs is a [`Deployment`] taken from its [`Slot`] once per
//!   group: an install replaces it between groups, so a group runs and is
//!   recorded wholly on one version, never a mix.

use crate::outbox::{JournalItem, NewRecord, Outbox};
use crate::pipeline::{Outcome, Pipeline, process_all};
use crate::record::{ItemInfo, result_record, to_outbox};
use crate::types::{ItemError, Metadata, RawItem};
use crate::wake::{Wake, backoff};
use sluice_protocol::Provenance;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an idle worker waits before looking at the journal again even
/// without a wake-up (a safety net; accepting wakes it at once).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Bytes of inputs a worker takes from the journal at once, at most (a
/// single larger input still goes alone). With the group waiting for its
/// commit and the copies handed to the plugins, this bounds the memory of
/// inputs in a worker to a small multiple of it, whatever their sizes.
pub const GROUP_MAX_BYTES: u64 = 16 << 20;

/// What a worker runs: one version of its pipeline (from the device's
/// configuration or from a bundle), what its results name, and how it is
/// doing (for an install's probation).
pub struct Deployment {
    /// The pipeline, observed by `drift` when there is one.
    pub pipeline: Pipeline,
    /// Written into every result.
    pub provenance: Provenance,
    /// Drift detection, when the model has a profile; it already observes
    /// `pipeline`, the worker ships its closed windows.
    pub drift: Option<Arc<crate::drift::Drift>>,
    /// Items it has made results of, and how they went.
    pub health: Health,
    /// What keeps a bundle's own models and plugins running while in use.
    pub _runtime: Option<Arc<crate::runtime::Runtime>>,
}

/// Counts of what a deployment did, for an install's probation.
#[derive(Debug, Default)]
pub struct Health {
    items: AtomicU64,
    failed: AtomicU64,
    busy_us: AtomicU64,
    drift_windows: AtomicU64,
    drift_alarms: AtomicU64,
}

impl Health {
    /// Items it made results of.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Of those, the ones that failed in the pipeline (not refused at ingest).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Mean time in the pipeline per item, µs (0 before any).
    pub fn mean_item_us(&self) -> u64 {
        self.busy_us.load(Ordering::Relaxed) / self.items().max(1)
    }

    /// Drift windows closed, and of those the ones that raised an alarm.
    pub fn drift(&self) -> (u64, u64) {
        (
            self.drift_windows.load(Ordering::Relaxed),
            self.drift_alarms.load(Ordering::Relaxed),
        )
    }
}

/// The deployment a worker runs now. An install swaps it; the worker takes
/// the new one at its next group (the group in flight finishes on the old).
pub struct Slot(Mutex<Arc<Deployment>>);

impl Slot {
    /// A slot holding `deployment`.
    pub fn new(deployment: Deployment) -> Slot {
        Slot(Mutex::new(Arc::new(deployment)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Deployment>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What runs now.
    pub fn current(&self) -> Arc<Deployment> {
        self.lock().clone()
    }

    /// Run `deployment` from the next group on; the one it replaces.
    pub fn swap(&self, deployment: Arc<Deployment>) -> Arc<Deployment> {
        std::mem::replace(&mut *self.lock(), deployment)
    }
}

/// What one worker needs.
pub struct Worker {
    /// The device's id, part of every result id.
    pub device: String,
    /// The pipeline's name.
    pub name: String,
    /// What it runs.
    pub slot: Arc<Slot>,
    /// Where inputs come from and results go.
    pub outbox: Arc<Outbox>,
    /// Woken when inputs of this pipeline are accepted; stops the worker.
    pub wake: Arc<Wake>,
    /// Woken when results are stored (the uploader).
    pub stored: Arc<Wake>,
    /// Where items and stage times are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A closed drift window waiting to be stored, with the detector that
/// scored it (its profile's digests go into the record).
type Unstored = (Arc<crate::drift::Drift>, crate::drift::ClosedWindow);

/// A fault-injection seam for tests of what happens when a worker dies
/// (which only a bug can cause): with `SLUICE_FAULT_INJECT=<fault>:<pipeline>`
/// in the environment, the worker of that pipeline panics here.
fn fault_point(fault: &str, pipeline: &str) {
    if std::env::var("SLUICE_FAULT_INJECT").is_ok_and(|v| v == format!("{fault}:{pipeline}")) {
        panic!("injected fault {fault}");
    }
}

/// A group of results and the journal rows they retire.
struct Done {
    seqs: Vec<i64>,
    records: Vec<NewRecord>,
}

impl Worker {
    /// Run until woken with stop; returns once the last group is committed
    /// (or the commit was abandoned because of the stop).
    pub fn run(self) {
        let (to_store, stored) = sync_channel::<Done>(1);
        std::thread::scope(|scope| {
            scope.spawn(|| self.store(stored));
            // Journal rows up to here are in the pipeline or waiting for
            // their commit; only that commit deletes them.
            let mut taken_up_to = 0;
            let mut failures = 0u32;
            let name = self.name.as_str();
            let mut unstored = Vec::new();
            let mut deployment = self.slot.current();
            while !self.wake.stopped() {
                let now = self.slot.current();
                if !Arc::ptr_eq(&now, &deployment) {
                    // What the replaced version's detector closed goes out
                    // under it; its open window is not scored.
                    self.ship_drift(&deployment, &mut unstored);
                    deployment = now;
                }
                self.ship_drift(&deployment, &mut unstored);
                let pipeline = &deployment.pipeline;
                let batch = pipeline.scheduler().config().max_batch_size.max(1);
                // Enough items to keep every pipeline thread busy with full
                // batches, several times over so that one fsync covers many.
                let group = (batch * pipeline.pool().current_num_threads() * 4).clamp(1, 1024);
                let items =
                    match self
                        .outbox
                        .journal_group(name, taken_up_to, group, GROUP_MAX_BYTES)
                    {
                        Ok(items) => items,
                        Err(e) => {
                            failures += 1;
                            tracing::error!(pipeline = name, "cannot read the journal: {e}");
                            self.wake.sleep(backoff(100, 10_000, failures));
                            continue;
                        }
                    };
                failures = 0;
                let Some(last) = items.last() else {
                    self.wake.wait(IDLE_POLL);
                    continue;
                };
                taken_up_to = last.seq;
                fault_point("worker-panic", name);
                let started = std::time::Instant::now();
                let outcomes = self.process(pipeline, &items);
                let busy = started.elapsed();
                let completed_at_ms = crate::outbox::now_ms();
                // Inputs the model could not take (only left when stopping)
                // stay journaled: the next start processes them.
                let (items, outcomes): (Vec<&JournalItem>, Vec<Outcome>) = items
                    .iter()
                    .zip(outcomes)
                    .filter(|(_, outcome)| {
                        !outcome.result.as_ref().is_err_and(|e| e.is_transient())
                    })
                    .unzip();
                self.count(&deployment.health, &items, &outcomes, busy, completed_at_ms);
                let records = items
                    .iter()
                    .zip(&outcomes)
                    .map(|(item, outcome)| {
                        to_outbox(&result_record(
                            &self.device,
                            &deployment.provenance,
                            ItemInfo::of(item, self.outbox.instance()),
                            outcome,
                            completed_at_ms,
                        ))
                    })
                    .collect();
                let seqs = items.iter().map(|i| i.seq).collect();
                if to_store.send(Done { seqs, records }).is_err() {
                    break; // the store thread stopped
                }
            }
            // A window the last group closed goes out too.
            self.ship_drift(&deployment, &mut unstored);
            // Let the store thread commit what it was given, then end.
            drop(to_store);
        });
    }

    /// Run `items` through the pipeline. Items the model's scheduler could
    /// not take (a full queue, shared with other pipelines and `wasi:nn`
    /// guests) are back-pressure, not results: they are tried again, with
    /// backoff, until taken or the worker stops.
    fn process(&self, pipeline: &Pipeline, items: &[JournalItem]) -> Vec<Outcome> {
        let name = self.name.as_str();
        if items.iter().any(|item| item.refused.is_some()) {
            // Inputs refused at ingest have their failure as their result;
            // the others run.
            let (refused, run): (Vec<usize>, Vec<usize>) =
                (0..items.len()).partition(|&i| items[i].refused.is_some());
            let run_items: Vec<JournalItem> = run.iter().map(|&i| items[i].clone()).collect();
            let mut outcomes: Vec<Option<Outcome>> = (0..items.len()).map(|_| None).collect();
            for (i, outcome) in run.into_iter().zip(self.process(pipeline, &run_items)) {
                outcomes[i] = Some(outcome);
            }
            for i in refused {
                outcomes[i] = Some(Outcome {
                    id: self.outbox.result_id(&self.device, name, items[i].seq),
                    result: Err(ItemError::Refused {
                        message: items[i].refused.clone().unwrap_or_default(),
                    }),
                    timings: Default::default(),
                });
            }
            return outcomes
                .into_iter()
                .map(|o| o.expect("every item has an outcome"))
                .collect();
        }
        let raw = |item: &JournalItem| {
            let mut meta = Metadata::new(
                self.outbox.result_id(&self.device, name, item.seq),
                item.content_type.clone(),
            );
            meta.attributes = item.attributes.clone();
            RawItem {
                meta,
                data: item.data.clone(),
            }
        };
        let mut outcomes = process_all(pipeline, items.iter().map(raw).collect(), &|_| {});
        let mut attempts = 0u32;
        loop {
            let busy: Vec<usize> = (0..outcomes.len())
                .filter(|&i| outcomes[i].result.as_ref().is_err_and(|e| e.is_transient()))
                .collect();
            if busy.is_empty() || self.wake.stopped() {
                return outcomes;
            }
            attempts = attempts.saturating_add(1);
            tracing::debug!(
                pipeline = name,
                items = busy.len(),
                "model busy; trying again"
            );
            self.wake.sleep(backoff(5, 1_000, attempts));
            let again = process_all(
                pipeline,
                busy.iter().map(|&i| raw(&items[i])).collect(),
                &|_| {},
            );
            for (i, outcome) in busy.into_iter().zip(again) {
                outcomes[i] = outcome;
            }
        }
    }

    /// Close a drift window that is due, and store every closed window in
    /// the outbox (as a `drift-window` record, shipped like results): the
    /// ones that cannot be stored now (a full disk) wait in `unstored`.
    fn ship_drift(&self, deployment: &Deployment, unstored: &mut Vec<Unstored>) {
        let name = self.name.as_str();
        if let Some(drift) = &deployment.drift {
            self.close_drift(drift, &deployment.health, unstored);
        }
        if unstored.len() > crate::drift::MAX_UNSTORED_WINDOWS {
            let dropped = unstored.len() - crate::drift::MAX_UNSTORED_WINDOWS;
            tracing::warn!(
                pipeline = name,
                dropped,
                "drift windows dropped: the outbox could not store them"
            );
            unstored.drain(..dropped);
        }
        while let Some((drift, window)) = unstored.first() {
            let stored = self.outbox.allocate_seq().and_then(|seq| {
                let record = drift.record(window, &self.device, name, self.outbox.instance(), seq);
                self.outbox.append(vec![NewRecord {
                    id: record.id.clone(),
                    body: serde_json::to_vec(&record).expect("a drift window serializes"),
                }])
            });
            match stored {
                Ok(_) => {
                    unstored.remove(0);
                    self.stored.wake();
                }
                Err(e) => {
                    tracing::error!(pipeline = name, "cannot store a drift window: {e}");
                    break;
                }
            }
        }
    }

    /// Close `drift`'s window if it is due; log and count what closed.
    fn close_drift(
        &self,
        drift: &Arc<crate::drift::Drift>,
        health: &Health,
        unstored: &mut Vec<Unstored>,
    ) {
        let name = self.name.as_str();
        drift.tick();
        for window in drift.take_closed() {
            health.drift_windows.fetch_add(1, Ordering::Relaxed);
            if window.alarm {
                health.drift_alarms.fetch_add(1, Ordering::Relaxed);
            }
            self.metrics
                .drift_window(name, window.alarm, &window.scores);
            if window.alarm {
                let drifted: Vec<String> = window
                    .scores
                    .iter()
                    .filter(|s| s.drifted)
                    .map(|s| {
                        format!(
                            "{} {} {:.4} > {:.4}",
                            s.feature, s.statistic, s.value, s.threshold
                        )
                    })
                    .collect();
                tracing::warn!(
                    pipeline = name,
                    items = window.items,
                    "drift: {} score(s) crossed their thresholds: {}",
                    drifted.len(),
                    drifted.join(", ")
                );
            } else {
                tracing::info!(
                    pipeline = name,
                    items = window.items,
                    "drift window: no drift"
                );
            }
            unstored.push((drift.clone(), window));
        }
    }

    /// Count each item's outcome and the time it spent in each stage.
    fn count(
        &self,
        health: &Health,
        items: &[&JournalItem],
        outcomes: &[Outcome],
        busy: Duration,
        completed_at_ms: i64,
    ) {
        let name = self.name.as_str();
        let metrics = &self.metrics;
        let ran = items.iter().filter(|i| i.refused.is_none()).count() as u64;
        let failed = items
            .iter()
            .zip(outcomes)
            .filter(|(i, o)| i.refused.is_none() && o.result.is_err())
            .count() as u64;
        health.items.fetch_add(ran, Ordering::Relaxed);
        health.failed.fetch_add(failed, Ordering::Relaxed);
        health
            .busy_us
            .fetch_add(busy.as_micros() as u64, Ordering::Relaxed);
        for (item, outcome) in items.iter().zip(outcomes) {
            metrics.item(name, outcome.result.as_ref().err().map(|e| e.kind()));
            let t = &outcome.timings;
            for (stage, us) in [
                ("preprocess", t.batch_preprocess_us),
                ("inference", t.batch_infer_us),
                ("postprocess", t.batch_postprocess_us),
            ] {
                metrics.stage(name, stage, Duration::from_micros(us), 1);
            }
            let waited = (completed_at_ms - item.accepted_at_ms).max(0) as u64;
            metrics.stage(name, "end_to_end", Duration::from_millis(waited), 1);
        }
    }

    /// Commit each group; on failure (a full disk) keep the results and
    /// retry with backoff while the inputs stay journaled.
    fn store(&self, groups: Receiver<Done>) {
        let name = self.name.as_str();
        let mut failures = 0u32;
        for done in groups {
            loop {
                let started = std::time::Instant::now();
                match self.outbox.complete(&done.seqs, &done.records) {
                    Ok(_) => {
                        let n = done.records.len() as u64;
                        self.metrics
                            .stage(name, "outbox_commit", started.elapsed(), n);
                        failures = 0;
                        self.stored.wake();
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(
                            pipeline = name,
                            "cannot store {} result(s): {e}",
                            done.records.len()
                        );
                        if self.wake.stopped() {
                            return;
                        }
                        self.wake.sleep(backoff(100, 10_000, failures));
                    }
                }
            }
        }
    }
}
