//! The scheduler's timeouts: a `wasi:nn` call that waited behind other
//! batches past `request_timeout_ms` is answered busy; a pipeline's items
//! (the journal's inputs) and a lone request waiting for its batch to fill
//! never are.

use crate::inference::{batching, digit_tensor, digits_model};
use sluice_agent::infer::ModelError;
use sluice_agent::schedule::{BatchConfig, Scheduler};
use sluice_agent::types::{ItemError, Tensor};

/// The digits model, whose next batch can be held running for as long as
/// a test needs (to have requests wait behind it).
struct Held {
    model: std::sync::Arc<dyn sluice_agent::infer::Model>,
    gate: std::sync::Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    entered: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    release: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Gate {
    /// Hold the next batch: returns when it runs, and the sender that lets
    /// it go.
    fn hold_next(&self) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (entered, running) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel();
        *self.entered.lock().unwrap() = Some(entered);
        *self.release.lock().unwrap() = Some(held);
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        (running, release)
    }
}

struct HeldPlan {
    plan: std::sync::Arc<dyn sluice_agent::infer::Plan>,
    gate: std::sync::Arc<Gate>,
}

impl sluice_agent::infer::Plan for HeldPlan {
    fn run(&self, inputs: Vec<Tensor>, intra_op: bool) -> Result<Vec<Tensor>, ModelError> {
        if self
            .gate
            .armed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let entered = self.gate.entered.lock().unwrap().take().unwrap();
            let release = self.gate.release.lock().unwrap().take().unwrap();
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        self.plan.run(inputs, intra_op)
    }
}

impl sluice_agent::infer::Model for Held {
    fn name(&self) -> &str {
        self.model.name()
    }
    fn engine(&self) -> &'static str {
        self.model.engine()
    }
    fn inputs(&self) -> &[sluice_agent::infer::TensorSpec] {
        self.model.inputs()
    }
    fn outputs(&self) -> &[sluice_agent::infer::TensorSpec] {
        self.model.outputs()
    }
    fn plan(
        &self,
        batch: usize,
    ) -> Result<std::sync::Arc<dyn sluice_agent::infer::Plan>, ModelError> {
        Ok(std::sync::Arc::new(HeldPlan {
            plan: self.model.plan(batch)?,
            gate: self.gate.clone(),
        }))
    }
    fn release_plans_above(&self, batch: usize) {
        self.model.release_plans_above(batch)
    }
}

/// A scheduler of batches of one whose next batch can be held, with
/// `request_timeout_ms` of 10.
fn held_scheduler() -> (Scheduler, std::sync::Arc<Gate>) {
    let gate = std::sync::Arc::new(Gate::default());
    let model = std::sync::Arc::new(Held {
        model: digits_model(),
        gate: gate.clone(),
    });
    let config = BatchConfig {
        max_batch_size: 1,
        max_queue_delay_ms: 0,
        request_timeout_ms: 10,
        ..batching(1)
    };
    (Scheduler::start(model, config).unwrap(), gate)
}

/// Hold a batch of `scheduler` running, queue `queued` behind it, let them
/// wait past the timeout (10 ms), and release: their replies.
fn queued_behind_a_held_batch(
    scheduler: &Scheduler,
    gate: &Gate,
    queued: Vec<Box<dyn FnOnce(Scheduler) -> Vec<Result<Vec<Tensor>, ItemError>> + Send>>,
) -> Vec<Vec<Result<Vec<Tensor>, ItemError>>> {
    let (running, release) = gate.hold_next();
    // The held batch's own request is never timed out (it waits its turn),
    // however slowly a loaded machine wakes the scheduler.
    let first = std::thread::spawn({
        let scheduler = scheduler.clone();
        move || scheduler.infer_many_in_turn(vec![vec![digit_tensor("0000.png")]])
    });
    running
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the first batch runs");
    let n = queued.len();
    let waiting: Vec<_> = queued
        .into_iter()
        .map(|call| {
            let scheduler = scheduler.clone();
            std::thread::spawn(move || call(scheduler))
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while scheduler.queue_depth() < 1 + n {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests were not queued"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Waiting past the timeout is what is tested.
    std::thread::sleep(std::time::Duration::from_millis(50));
    release.send(()).unwrap();
    assert!(first.join().unwrap()[0].is_ok());
    waiting.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_request_that_waited_behind_other_batches_past_its_timeout_is_answered_busy() {
    let (scheduler, gate) = held_scheduler();
    let replies = queued_behind_a_held_batch(
        &scheduler,
        &gate,
        vec![Box::new(|s: Scheduler| {
            vec![s.infer(vec![digit_tensor("0001.png")])]
        })],
    );
    let result = &replies[0][0];
    assert!(
        matches!(result, Err(ItemError::Busy { message, .. }) if message.contains("not started within 10 ms")),
        "{result:?}"
    );
    assert_eq!(scheduler.stats().timed_out, 1);
}

#[test]
fn a_pipelines_items_wait_their_turn_however_long_the_queue() {
    let (scheduler, gate) = held_scheduler();
    let replies = queued_behind_a_held_batch(
        &scheduler,
        &gate,
        vec![Box::new(|s: Scheduler| {
            s.infer_many_in_turn(vec![vec![digit_tensor("0001.png")]])
        })],
    );
    assert!(replies[0][0].is_ok(), "{:?}", replies[0][0]);
    assert_eq!(scheduler.stats().timed_out, 0);
}

#[test]
fn a_lone_request_waiting_for_its_batch_to_fill_is_never_timed_out() {
    // The wait for company is the scheduler's own choice, not a backlog: a
    // queue delay above the timeout must not time out every lone request.
    // (A timeout of a few ms would also count the scheduler thread's own
    // wake-up on a loaded machine.)
    let config = BatchConfig {
        max_batch_size: 100,
        max_queue_delay_ms: 400,
        request_timeout_ms: 50,
        ..batching(100)
    };
    let scheduler = Scheduler::start(digits_model(), config).unwrap();
    for file in ["0000.png", "0001.png", "0002.png"] {
        let result = scheduler.infer(vec![digit_tensor(file)]);
        assert!(result.is_ok(), "{file}: {result:?}");
    }
    assert_eq!(scheduler.stats().timed_out, 0);
}

#[test]
fn a_pipelines_lone_request_does_not_wait_for_company() {
    // A pipeline's worker sends everything it has and waits for the answer:
    // nothing else comes from it, so the queue delay would only be added
    // to every lone input (it was, 5 ms per item by default). A `wasi:nn`
    // call still waits for company.
    let delay = std::time::Duration::from_millis(1500);
    let config = BatchConfig {
        max_batch_size: 100,
        max_queue_delay_ms: delay.as_millis() as u64,
        request_timeout_ms: 10_000,
        ..batching(100)
    };
    let scheduler = Scheduler::start(digits_model(), config).unwrap();
    let started = std::time::Instant::now();
    let replies = scheduler.infer_many_in_turn(vec![vec![digit_tensor("0000.png")]]);
    let pipeline = started.elapsed();
    assert!(replies[0].is_ok(), "{:?}", replies[0]);
    let started = std::time::Instant::now();
    assert!(scheduler.infer(vec![digit_tensor("0001.png")]).is_ok());
    let guest = started.elapsed();
    assert!(
        pipeline < delay && guest >= delay,
        "pipeline request answered after {pipeline:?}, wasi:nn request after {guest:?} (queue delay {delay:?})"
    );
}
