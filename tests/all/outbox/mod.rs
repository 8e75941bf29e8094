//! The outbox on a real SQLite file in a temporary folder: group commit,
//! batches that survive restarts and journal hand-over (records), caps and
//! their counters, expiry, idempotency keys and a full disk (caps), damaged,
//! foreign and old files (files). The helpers they share are here.

mod caps;
mod files;
mod records;

use sluice_agent::config::{FullPolicy, OutboxConfig};
use sluice_agent::outbox::{NewInput, NewRecord};

fn config(max_bytes: u64, when_full: FullPolicy) -> OutboxConfig {
    OutboxConfig {
        max_bytes,
        max_age_secs: 0,
        when_full,
        ..OutboxConfig::default()
    }
}

fn record(seq: u64, body_len: usize) -> NewRecord {
    let id = format!("dev/p/{seq}");
    let pad = "x".repeat(body_len.saturating_sub(40));
    NewRecord {
        id: id.clone(),
        body: format!(r#"{{"id":"{id}","pad":"{pad}"}}"#).into_bytes(),
    }
}

fn records(range: std::ops::Range<u64>, body_len: usize) -> Vec<NewRecord> {
    range.map(|s| record(s, body_len)).collect()
}

fn input(pipeline: &str, data: &[u8]) -> NewInput {
    NewInput {
        pipeline: pipeline.into(),
        content_type: "image/png".into(),
        attributes: Vec::new(),
        data: data.to_vec(),
    }
}
