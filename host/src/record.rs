//! The result record: what the device stores in its outbox and ships
//! upstream for one processed input, in the wire shape of
//! [`sluice_protocol::ResultRecord`].
//!
//! Invariant: a record names exactly what made it (model and plugins by
//! name and SHA-256, the Sluice version), so a result upstream can always be
//! traced to the code and weights that produced it.

use crate::outbox::{JournalItem, NewRecord};
use crate::pipeline::Outcome;
use sluice_protocol::{
    InputInfo, ItemFailure, Outcome as WireOutcome, Provenance, RecordKind, ResultBody,
    ResultRecord,
};

/// What became of `outcome` as a wire record.
pub fn wire_outcome(outcome: &Outcome) -> WireOutcome {
    match &outcome.result {
        Ok(document) => {
            WireOutcome::Result(ResultBody::new(&document.content_type, &document.body))
        }
        Err(error) => WireOutcome::Error(ItemFailure {
            kind: error.kind().to_owned(),
            message: error.to_string(),
        }),
    }
}

/// Which input a record is about.
#[derive(Debug, Clone)]
pub struct ItemInfo {
    /// The pipeline it went through.
    pub pipeline: String,
    /// The outbox instance it was accepted into (`None` for `sluice infer`).
    pub outbox: Option<String>,
    /// Its sequence number (its position, for `sluice infer`).
    pub seq: i64,
    /// When it was accepted, ms since the Unix epoch.
    pub accepted_at_ms: i64,
    /// What it was.
    pub input: InputInfo,
}

impl ItemInfo {
    /// What is known of `item`, accepted into outbox instance `outbox`.
    pub fn of(item: &JournalItem, outbox: Option<&str>) -> ItemInfo {
        ItemInfo {
            pipeline: item.pipeline.clone(),
            outbox: outbox.map(str::to_owned),
            seq: item.seq,
            accepted_at_ms: item.accepted_at_ms,
            input: InputInfo {
                content_type: item.content_type.clone(),
                bytes: item.data.len() as u64,
                attributes: item.attributes.iter().cloned().collect(),
            },
        }
    }
}

/// The record of `item` of `device`, processed into `outcome` by what
/// `provenance` names.
pub fn result_record(
    device: &str,
    provenance: &Provenance,
    item: ItemInfo,
    outcome: &Outcome,
    completed_at_ms: i64,
) -> ResultRecord {
    ResultRecord {
        kind: RecordKind::Result,
        id: outcome.id.clone(),
        device: device.to_owned(),
        pipeline: item.pipeline,
        outbox: item.outbox,
        seq: item.seq,
        accepted_at_ms: item.accepted_at_ms,
        completed_at_ms,
        input: item.input,
        provenance: provenance.clone(),
        sluice_version: sluice_types::VERSION.to_owned(),
        timings: outcome.timings,
        outcome: wire_outcome(outcome),
    }
}

/// `record` as it is stored in the outbox.
pub fn to_outbox(record: &ResultRecord) -> NewRecord {
    NewRecord {
        id: record.id.clone(),
        body: serde_json::to_vec(record).expect("a result record serializes"),
    }
}
