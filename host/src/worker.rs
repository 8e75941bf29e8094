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
//! * a crash (a panic: a bug, reached by some input) costs the group in the
//!   pipeline a retry, never the worker: the crash is counted, durably,
//!   against each input that was running ([`Outbox::note_crash`]), and the
//!   group is read again from the journal. An input that was in a crash
//!   runs alone from then on, so its neighbours are not held to account
//!   for it; one that crashed the pipeline [`MAX_CRASHES`] times is not run
//!   again but set aside as a failed result (`"kind": "crashed"`, with the
//!   cause), counted and shipped like any other. The counts are in the
//!   journal, so a restart does not start them over;
//! * a journal row that cannot be read as written (damage) becomes a failed
//!   result (`"kind": "damaged"`) naming what is wrong, and its neighbours
//!   go on;
//! * on stop, the group in the pipeline finishes and is committed;
//! * what it runs is a [`Deployment`] taken from its [`Slot`] once per
//!   group: an install replaces it between groups, so a group runs and is
//!   recorded wholly on one version, never a mix.

use crate::crash::{catch, fault_point};
pub use crate::deployment::{Deployment, Health, Slot};
use crate::outbox::{JournalItem, NewRecord, Outbox};
use crate::pipeline::{Outcome, Pipeline, process_all};
use crate::record::{ItemInfo, result_record, to_outbox};
use crate::types::{ItemError, Metadata, RawItem};
use crate::wake::{Wake, backoff};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Duration;

/// How long an idle worker waits before looking at the journal again even
/// without a wake-up (a safety net; accepting wakes it at once).
const IDLE_POLL: Duration = Duration::from_millis(500);

use crate::memory::GROUP_MAX_BYTES;

/// How many crashes of the pipeline an input may be in before it is set
/// aside as a failed result instead of being run again: once in a group,
/// then alone (twice, so that a crash that was not its own, such as a
/// neighbour's on another thread, does not condemn it).
pub const MAX_CRASHES: u32 = 3;

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
    /// Told of every committed group: synchronous calls wait there.
    pub completions: Arc<crate::completions::Completions>,
    /// Called when a worker (started or started again after it died) shows
    /// that it works: it ran a group, or found nothing to do.
    pub working: Arc<dyn Fn() + Send + Sync>,
}

/// A closed drift window waiting to be stored, with the detector that
/// scored it (its profile's digests go into the record).
type Unstored = (Arc<crate::drift::Drift>, crate::drift::ClosedWindow);

/// What `item`'s result is without running it, if anything: the refusal
/// at ingest, the damage in the journal, or the crashes it caused.
fn verdict(item: &JournalItem) -> Option<ItemError> {
    if let Some(message) = &item.damaged {
        return Some(ItemError::Damaged {
            message: message.clone(),
        });
    }
    if let Some(message) = &item.refused {
        return Some(ItemError::Refused {
            message: message.clone(),
        });
    }
    (item.crashes >= MAX_CRASHES).then(|| ItemError::Crashed {
        crashes: item.crashes,
        cause: item.last_crash.clone().unwrap_or_default(),
    })
}

/// A group of results and the journal rows they retire.
struct Done {
    seqs: Vec<i64>,
    records: Vec<NewRecord>,
}

impl Worker {
    /// Run until woken with stop; returns once the last group is committed
    /// (or the commit was abandoned because of the stop). A panic outside
    /// the pipeline (a bug in the worker itself) ends it: run it under
    /// [`crate::crash::supervise`], which starts it again.
    pub fn run(&self) {
        let (to_store, stored) = sync_channel::<Done>(1);
        std::thread::scope(|scope| {
            scope.spawn(|| self.store(stored));
            // Journal rows up to here are in the pipeline or waiting for
            // their commit; only that commit deletes them.
            let mut taken_up_to = 0;
            let mut failures = 0u32;
            let mut working = false;
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
                    if !std::mem::replace(&mut working, true) {
                        (self.working)();
                    }
                    self.wake.wait(IDLE_POLL);
                    continue;
                };
                let before = taken_up_to;
                taken_up_to = last.seq;
                let all: Vec<&JournalItem> = items.iter().collect();
                fault_point("worker-panic", name, &all);
                fault_point("worker-panic-once", name, &all);
                let started = std::time::Instant::now();
                let Some(outcomes) = self.process_guarded(pipeline, &items) else {
                    // A crash, counted against the inputs it hit: the group
                    // is read again and run as their counts say.
                    taken_up_to = before;
                    continue;
                };
                let busy = started.elapsed();
                let completed_at_ms = sluice_types::now_ms();
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
                if !std::mem::replace(&mut working, true) {
                    (self.working)();
                }
            }
            // A window the last group closed goes out too.
            self.ship_drift(&deployment, &mut unstored);
            // Let the store thread commit what it was given, then end.
            drop(to_store);
        });
    }

    /// Each of `items`' outcome, or `None` when the pipeline crashed (a
    /// panic) on some of them: the crash has been counted against those
    /// (durably), and the caller reads the group again. Inputs with a
    /// verdict (refused at ingest, damaged in the journal, in
    /// [`MAX_CRASHES`] crashes already) are not run: that verdict is their
    /// failure. Inputs that were in a crash run alone, first; the others
    /// together.
    fn process_guarded(&self, pipeline: &Pipeline, items: &[JournalItem]) -> Option<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = items.iter().map(|_| None).collect();
        let (mut alone, mut together) = (Vec::new(), Vec::new());
        for (i, item) in items.iter().enumerate() {
            match verdict(item) {
                Some(error) => {
                    outcomes[i] = Some(Outcome {
                        id: self.outbox.result_id(&self.device, &self.name, item.seq),
                        result: Err(error),
                        timings: Default::default(),
                    })
                }
                None if item.crashes > 0 => alone.push(vec![i]),
                None => together.push(i),
            }
        }
        for run in alone.into_iter().chain([together]) {
            if run.is_empty() {
                continue;
            }
            let inputs: Vec<&JournalItem> = run.iter().map(|&i| &items[i]).collect();
            match catch(|| self.process(pipeline, &inputs)) {
                Ok(done) => {
                    for (i, outcome) in run.into_iter().zip(done) {
                        outcomes[i] = Some(outcome);
                    }
                }
                Err(cause) => {
                    self.crashed(&inputs, &cause);
                    return None;
                }
            }
        }
        Some(
            outcomes
                .into_iter()
                .map(|o| o.expect("every item has an outcome"))
                .collect(),
        )
    }

    /// The pipeline crashed (`cause`) while running `inputs`: count it
    /// against each of them, durably, retrying (a full disk) until it is
    /// counted or the worker stops.
    fn crashed(&self, inputs: &[&JournalItem], cause: &str) {
        let name = self.name.as_str();
        let seqs: Vec<i64> = inputs.iter().map(|i| i.seq).collect();
        let ids: Vec<String> = seqs
            .iter()
            .take(8)
            .map(|&seq| self.outbox.result_id(&self.device, name, seq))
            .collect();
        tracing::error!(
            pipeline = name,
            inputs = inputs.len(),
            "the pipeline crashed on {} input(s) ({}{}): {cause}; each that crashes it {MAX_CRASHES} times is set aside as a failed result",
            inputs.len(),
            ids.join(", "),
            if seqs.len() > ids.len() { ", ..." } else { "" }
        );
        let mut failures = 0u32;
        while let Err(e) = self.outbox.note_crash(&seqs, cause) {
            failures += 1;
            tracing::error!(
                pipeline = name,
                "cannot count a crash against its inputs: {e}"
            );
            if self.wake.stopped() {
                return;
            }
            self.wake.sleep(backoff(100, 10_000, failures));
        }
    }

    /// Run `items` through the pipeline. Items the model's scheduler could
    /// not take (a full queue, shared with other pipelines and `wasi:nn`
    /// guests) are back-pressure, not results: they are tried again, with
    /// backoff, until taken or the worker stops.
    fn process(&self, pipeline: &Pipeline, items: &[&JournalItem]) -> Vec<Outcome> {
        let name = self.name.as_str();
        fault_point("item-panic", name, items);
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
        let mut outcomes = process_all(pipeline, items.iter().map(|&i| raw(i)).collect(), &|_| {});
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
                busy.iter().map(|&i| raw(items[i])).collect(),
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
            health.drift_window(window.alarm);
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
        health.ran(ran, failed, busy);
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
                        self.completions.done(&done.records);
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
