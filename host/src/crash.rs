//! What the agent does when its own code panics (a bug), so that a bug
//! costs one input or a moment, never the pipeline:
//! * [`catch`] turns a panic into its message (the worker counts it against
//!   the inputs it was running: see `worker.rs`);
//! * [`supervise`] restarts a pipeline's worker that died anyway, after a
//!   backoff ([`RESTART_INITIAL_MS`] doubling to [`RESTART_MAX_MS`]),
//!   marking the pipeline down meanwhile;
//! * [`fault_point`] makes such bugs on demand, for the tests.

use crate::outbox::JournalItem;
use crate::wake::{Wake, backoff};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The first wait before a dead worker is started again.
pub const RESTART_INITIAL_MS: u64 = 500;

/// The longest wait before a dead worker is started again; a worker that
/// ran that long before dying starts from [`RESTART_INITIAL_MS`] again.
pub const RESTART_MAX_MS: u64 = 30_000;

pub(crate) use sluice_types::panic::catch;

/// Bytes of input that trigger the `item-panic` fault (see [`fault_point`]).
const POISON: &[u8] = b"sluice-fault:panic";

/// A fault-injection seam for tests of what happens when a worker dies or
/// an input crashes the pipeline (which only a bug can cause): with
/// `SLUICE_FAULT_INJECT=<fault>:<pipeline>` in the environment, the worker
/// of that pipeline panics here. `worker-panic` panics wherever it is
/// reached, `worker-panic-once` the first time in the process only, and
/// `item-panic` when one of `items` starts with [`POISON`].
pub(crate) fn fault_point(fault: &str, pipeline: &str, items: &[&JournalItem]) {
    static ONCE: AtomicBool = AtomicBool::new(false);
    let Ok(injected) = std::env::var("SLUICE_FAULT_INJECT") else {
        return;
    };
    if injected != format!("{fault}:{pipeline}") {
        return;
    }
    let fires = match fault {
        "worker-panic-once" => !ONCE.swap(true, Ordering::SeqCst),
        "item-panic" => items.iter().any(|item| item.data.starts_with(POISON)),
        _ => true,
    };
    if fires {
        panic!("injected fault {fault}");
    }
}

/// Run pipeline `name`'s worker (`run`, which returns when `wake` is
/// stopped) and start it again whenever it dies, after a backoff, until
/// `wake` is stopped. Each death is logged and given to `down` (with the
/// cause and the wait) before the wait; the worker itself says when it is
/// back (it has run a group, or found nothing to do).
pub(crate) fn supervise(name: &str, wake: &Wake, run: impl Fn(), down: impl Fn(&str)) {
    let mut deaths = 0u32;
    loop {
        let started = Instant::now();
        let Err(why) = catch(&run) else {
            return;
        };
        if started.elapsed() >= Duration::from_millis(RESTART_MAX_MS) {
            deaths = 0;
        }
        deaths = deaths.saturating_add(1);
        let delay = backoff(RESTART_INITIAL_MS, RESTART_MAX_MS, deaths);
        tracing::error!(
            pipeline = name,
            deaths,
            "worker died: {why}; starting it again in {} ms",
            delay.as_millis()
        );
        down(&format!(
            "its worker died: {why}; starting it again in {} ms",
            delay.as_millis()
        ));
        wake.sleep(delay);
        if wake.stopped() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_dead_worker_is_started_again_until_it_returns() {
        let wake = Wake::new();
        let runs = AtomicU32::new(0);
        let downs = Mutex::new(Vec::new());
        supervise(
            "p",
            &wake,
            || {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("bug {}", runs.load(Ordering::SeqCst));
                }
            },
            |why| downs.lock().unwrap().push(why.to_owned()),
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let downs = downs.into_inner().unwrap();
        assert_eq!(downs.len(), 2, "{downs:?}");
        assert!(downs[0].contains("its worker died: bug 1"), "{downs:?}");
    }

    #[test]
    fn a_stop_during_the_backoff_ends_it() {
        let wake = Wake::new();
        let other = wake.clone();
        supervise("p", &wake, || panic!("always"), |_| other.stop());
        assert!(wake.stopped());
    }
}
