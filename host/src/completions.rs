//! Results awaited by id: a synchronous call (`POST /v1/infer/{pipeline}`)
//! journals its input like any other, then waits here for the worker to
//! commit that input's result; the worker tells after each commit.
//!
//! Invariants: a result is handed to its waiter only after it is committed
//! (it survives a crash that follows the answer); a waiter that gives up
//! (its deadline, a dropped connection) is forgotten at once, so nothing
//! here outlives its call; when nobody waits, telling costs one atomic read
//! and one bump of a counter the local consumers watch (they read what is
//! new from the outbox, see `consumers`).

use crate::outbox::NewRecord;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The waiters, by result id.
pub struct Completions {
    waiting: Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>,
    count: AtomicUsize,
    /// Commits so far (their number only: what changed is in the outbox).
    commits: tokio::sync::watch::Sender<u64>,
}

impl Default for Completions {
    fn default() -> Self {
        Completions {
            waiting: Mutex::default(),
            count: AtomicUsize::new(0),
            commits: tokio::sync::watch::channel(0).0,
        }
    }
}

/// One call waiting for result `id`; dropping it stops waiting.
pub struct Waiter {
    id: String,
    hub: Arc<Completions>,
    /// The committed record's document.
    pub result: oneshot::Receiver<Vec<u8>>,
}

impl Completions {
    /// Wait for result `id` (register before asking whether it is already
    /// there: a result committed in between is then not missed).
    pub fn wait(self: &Arc<Self>, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.to_owned(), tx);
        self.count.fetch_add(1, Ordering::SeqCst);
        Waiter {
            id: id.to_owned(),
            hub: self.clone(),
            result: rx,
        }
    }

    /// Told of every commit of results from now on.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// `records` were committed: hand each to its waiter, if any.
    pub fn done(&self, records: &[NewRecord]) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut waiting = self.lock();
        for record in records {
            if let Some(tx) = waiting.remove(&record.id) {
                self.count.fetch_sub(1, Ordering::SeqCst);
                // The waiter may have just given up: nothing to do then.
                let _ = tx.send(record.body.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Vec<u8>>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.hub.lock().remove(&self.id).is_some() {
            self.hub.count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_gets_its_own_result_and_nothing_stays_behind() {
        let hub = Arc::new(Completions::default());
        let mut a = hub.wait("a");
        let b = hub.wait("b");
        let record = |id: &str| NewRecord {
            id: id.into(),
            body: id.as_bytes().to_vec(),
        };
        hub.done(&[record("x"), record("a")]);
        assert_eq!(a.result.try_recv().unwrap(), b"a");
        drop(b);
        drop(a);
        assert!(hub.lock().is_empty());
        assert_eq!(hub.count.load(Ordering::SeqCst), 0);
        hub.done(&[record("b")]);
    }
}
