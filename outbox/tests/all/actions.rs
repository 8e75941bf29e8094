//! The operations a test case is made of, and their strategies (the runner
//! is `runner.rs`).
//!
//! Choices are small numbers (`pick`, `take`) resolved against the model's
//! state when the action runs, so that a shrunk case still means something
//! and prints short.

use crate::model::PIPELINES;
use crate::view::CLAIMS;
use proptest::collection::vec;
use proptest::prelude::*;
use sluice_outbox::{FullPolicy, NewInput, OutboxConfig};

pub const CONTENT_TYPES: [&str; 3] = ["application/octet-stream", "image/png", "text/csv"];
pub const KEYS: [&str; 3] = ["k0", "k1", "k2"];
pub const REASONS: [&str; 2] = ["422: not a result", "413: too large"];

/// An input: `len` bytes of `fill`, for pipeline `p`, media type `ct`.
#[derive(Clone, Copy)]
pub struct In {
    pub p: u8,
    pub ct: u8,
    pub len: u16,
    pub fill: u8,
}

impl std::fmt::Debug for In {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let In { p, ct, len, fill } = *self;
        write!(f, "In({p}/{ct}: {len}x{fill:02x})")
    }
}

impl In {
    pub fn input(self) -> NewInput {
        let ct = self.ct as usize % CONTENT_TYPES.len();
        NewInput {
            pipeline: PIPELINES[self.p as usize % PIPELINES.len()].into(),
            content_type: CONTENT_TYPES[ct].into(),
            attributes: vec![("ct".into(), ct.to_string())],
            data: vec![self.fill; self.len as usize],
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Accept(In),
    /// Accepted in one transaction, each maybe from claimed file `CLAIMS[i]`.
    AcceptMany(Vec<(In, Option<u8>)>),
    AcceptKeyed {
        key: u8,
        input: In,
    },
    /// Refused at ingest: journaled without its data, to become a failure.
    AcceptRefused {
        input: In,
        claim: Option<u8>,
    },
    /// Forget every idempotency key.
    PruneKeys,
    ForgetClaims(Vec<u8>),
    /// The pipeline crashed with its first `take` items in it.
    NoteCrash {
        p: u8,
        take: u8,
    },
    /// The first `take` journal items of pipeline `p` become results, those
    /// whose bit is set in `failed` (and refused ones) failures; `twice`:
    /// the first result is in the call twice, in a row.
    Complete {
        p: u8,
        take: u8,
        failed: u8,
        pad: u16,
        twice: bool,
    },
    /// The result of a pending record is completed again (as after a
    /// retried commit): no second record.
    CompleteAgain {
        pick: u8,
    },
    /// Records not from an input (drift windows): allocated sequence numbers.
    Append(Vec<u16>),
    NextBatch {
        max_records: u8,
        max_bytes: u16,
    },
    /// Acknowledge the batch `next_batch` returned last.
    AckLast,
    /// Acknowledge a batch id seen before (maybe gone), or one never formed.
    AckAny {
        pick: u8,
    },
    /// The collector refused the last batch (or one seen before).
    Split {
        last: bool,
        pick: u8,
        reason: u8,
    },
    Requeue,
    /// Everything is older than the age limit.
    ExpireAll,
    SyncError(u8),
    SyncOk,
    /// Cap the file at its current size (every write that needs a new page
    /// fails with SQLITE_FULL), or lift the cap.
    DiskFull(bool),
    /// The process dies: the outbox is dropped with no shutdown and opened
    /// again, from the same file or (`image`) from a copy of the file and
    /// its write-ahead log taken while it was open: what a power cut leaves.
    Crash {
        image: bool,
    },
}

fn input() -> impl Strategy<Value = In> {
    // Mostly small; sometimes a few pages, so a capped file is full.
    let len = prop_oneof![2 => 0..40u16, 1 => 0..6000u16];
    (0..2u8, 0..3u8, len, 0..4u8).prop_map(|(p, ct, len, fill)| In { p, ct, len, fill })
}

fn pad() -> impl Strategy<Value = u16> {
    prop_oneof![3 => 0..60u16, 1 => 0..900u16]
}

pub fn action() -> impl Strategy<Value = Action> {
    let claim = proptest::option::of(0..CLAIMS.len() as u8);
    prop_oneof![
        8 => input().prop_map(Action::Accept),
        3 => vec((input(), claim.clone()), 1..4).prop_map(Action::AcceptMany),
        5 => (0..KEYS.len() as u8, input()).prop_map(|(key, input)| Action::AcceptKeyed { key, input }),
        2 => (input(), claim).prop_map(|(input, claim)| Action::AcceptRefused { input, claim }),
        1 => Just(Action::PruneKeys),
        1 => vec(0..CLAIMS.len() as u8, 1..3).prop_map(Action::ForgetClaims),
        1 => (0..2u8, 1..3u8).prop_map(|(p, take)| Action::NoteCrash { p, take }),
        12 => (0..2u8, 1..5u8, any::<u8>(), pad(), prop::bool::weighted(0.15)).prop_map(
            |(p, take, failed, pad, twice)| Action::Complete { p, take, failed, pad, twice }
        ),
        3 => any::<u8>().prop_map(|pick| Action::CompleteAgain { pick }),
        2 => vec(pad(), 1..3).prop_map(Action::Append),
        12 => (0..6u8, prop_oneof![0..200u16, Just(u16::MAX)])
            .prop_map(|(max_records, max_bytes)| Action::NextBatch { max_records, max_bytes }),
        8 => Just(Action::AckLast),
        2 => any::<u8>().prop_map(|pick| Action::AckAny { pick }),
        4 => (prop::bool::weighted(0.8), any::<u8>(), 0..2u8)
            .prop_map(|(last, pick, reason)| Action::Split { last, pick, reason }),
        2 => Just(Action::Requeue),
        1 => Just(Action::ExpireAll),
        1 => (0..2u8).prop_map(Action::SyncError),
        1 => Just(Action::SyncOk),
        5 => prop::bool::weighted(0.7).prop_map(Action::DiskFull),
        3 => any::<bool>().prop_map(|image| Action::Crash { image }),
    ]
}

/// The outbox's bounds for a case: caps small enough to be reached.
pub fn outbox_config() -> impl Strategy<Value = OutboxConfig> {
    (
        prop_oneof![Just(800u64), Just(2500), Just(1 << 20)],
        prop_oneof![Just(FullPolicy::DropOldest), Just(FullPolicy::RejectNew)],
        prop_oneof![Just(300u64), Just(1 << 20)],
        prop_oneof![Just(0u64), Just(600), Just(1 << 20)],
    )
        .prop_map(
            |(max_bytes, when_full, max_set_aside_bytes, local_max_bytes)| OutboxConfig {
                max_bytes,
                when_full,
                max_set_aside_bytes,
                // Expiry only when a test says so (`ExpireAll` passes a time
                // past the limit); a reopen's expiry finds nothing that old.
                max_age_secs: 3600,
                // No reserve file: the full disk here is a page cap, which the
                // reserve cannot relieve, and a 4 MiB file per case is slow.
                disk_reserve_bytes: 0,
                // Copies kept for local readers change nothing of the upload
                // queue the model checks, whatever their bound.
                local_max_bytes,
                local_max_age_secs: 3600,
            },
        )
}

/// A record's document: the sequence number, padding or an error.
pub fn body(seq: i64, pad: u16, failure: Option<&str>) -> String {
    match failure {
        Some(error) => format!(r#"{{"seq":{seq},"error":"{error}"}}"#),
        None => format!(r#"{{"seq":{seq},"v":"{}"}}"#, "x".repeat(pad as usize)),
    }
}
