//! Group commit for inputs that arrive one per request (HTTP ingest and
//! synchronous calls): requests that arrive while a commit is on disk are
//! accepted together in the next one, one fsync for all of them, instead
//! of queueing for an fsync each behind the outbox's one connection. The
//! first request that finds no commit running commits everything waiting
//! (itself included) and hands each its answer; the others wait for theirs.
//!
//! Invariants: a request is answered only once its own input is committed
//! (or refused); a group whose commit fails is tried again input by input,
//! so one input that cannot be accepted fails alone; at most [`MAX_GROUP`]
//! inputs go in one transaction.

use super::{Accepted, Incoming, IngestError, Sink};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// The most inputs committed at once.
pub const MAX_GROUP: usize = 64;

/// The waiting inputs and the answers not yet collected.
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    answered: Condvar,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    waiting: Vec<(u64, Incoming)>,
    committing: bool,
    answers: HashMap<u64, Result<Accepted, IngestError>>,
}

impl GroupCommit {
    /// Accept `incoming` into `sink`, in a group with whatever else waits.
    /// Blocks (call it off the async workers).
    pub(crate) fn accept(&self, sink: &Sink, incoming: Incoming) -> Result<Accepted, IngestError> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push((ticket, incoming));
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if state.committing {
                state = self.answered.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.committing = true;
            let take = state.waiting.len().min(MAX_GROUP);
            let group: Vec<(u64, Incoming)> = state.waiting.drain(..take).collect();
            drop(state);
            let answers = commit(sink, group);
            state = self.lock();
            state.answers.extend(answers);
            state.committing = false;
            self.answered.notify_all();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Commit `group` in one transaction, or each alone if that fails.
fn commit(sink: &Sink, group: Vec<(u64, Incoming)>) -> Vec<(u64, Result<Accepted, IngestError>)> {
    let (tickets, inputs): (Vec<u64>, Vec<Incoming>) = group.into_iter().unzip();
    match sink.accept(&inputs) {
        Ok(accepted) => tickets
            .into_iter()
            .zip(accepted.into_iter().map(Ok))
            .collect(),
        Err(_) if inputs.len() > 1 => tickets
            .into_iter()
            .zip(&inputs)
            .map(|(ticket, incoming)| {
                let answer = sink
                    .accept(std::slice::from_ref(incoming))
                    .map(|mut accepted| accepted.remove(0));
                (ticket, answer)
            })
            .collect(),
        Err(e) => vec![(tickets[0], Err(e))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{NewInput, Outbox, OutboxConfig};
    use std::sync::Arc;

    fn sink(dir: &std::path::Path) -> Arc<Sink> {
        let outbox = Arc::new(Outbox::open_in(dir, OutboxConfig::default()).unwrap());
        let workers = [("p".to_owned(), crate::wake::Wake::new())].into();
        Arc::new(Sink::new(
            "dev",
            outbox,
            workers,
            &crate::config::IngestConfig::default(),
            Arc::default(),
        ))
    }

    fn input(pipeline: &str, bytes: usize) -> Incoming {
        Incoming {
            input: NewInput {
                pipeline: pipeline.into(),
                content_type: "application/octet-stream".into(),
                attributes: Vec::new(),
                data: vec![7; bytes],
            },
            claim: None,
        }
    }

    #[test]
    fn concurrent_requests_are_each_answered_their_own_input_and_a_bad_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path());
        let group = Arc::new(GroupCommit::default());
        let threads: Vec<_> = (0..40)
            .map(|i| {
                let (sink, group) = (sink.clone(), group.clone());
                std::thread::spawn(move || {
                    // Every tenth names a pipeline that does not exist.
                    let pipeline = if i % 10 == 3 { "nope" } else { "p" };
                    (i, group.accept(&sink, input(pipeline, i + 1)))
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for thread in threads {
            let (i, answer) = thread.join().unwrap();
            if i % 10 == 3 {
                assert!(answer.is_err(), "input {i} was accepted");
                continue;
            }
            let accepted = answer.unwrap();
            // Its own input: the journal row holds its bytes.
            let item = sink
                .outbox
                .journal_items("p", accepted.seq - 1, 1)
                .unwrap()
                .remove(0);
            assert_eq!(item.seq, accepted.seq);
            assert_eq!(item.data.len(), i + 1);
            seqs.push(accepted.seq);
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 36);
        assert_eq!(sink.outbox.journal_items("p", 0, 100).unwrap().len(), 36);
    }
}
