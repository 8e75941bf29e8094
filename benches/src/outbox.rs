//! `outbox`: durable appends per second and upload throughput to a collector
//! on loopback.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_agent::config::{OutboxConfig, SyncConfig};
use sluice_agent::outbox::{NewRecord, Outbox};
use sluice_agent::uplink::Uploader;
use sluice_collector_core::{Collector, Tokens};
use std::sync::Arc;
use std::time::Instant;

/// A result document the size of a digits result.
fn sample_record(seq: usize) -> NewRecord {
    let id = format!("bench-device/digits/{seq}");
    // Scores and timings vary as real ones do (a fixed LCG, so runs agree).
    let noise = |k: usize| ((seq * 2_654_435_761 + k * 40_503) % 1_000_003) as f64 / 1_000_003.0;
    let score = 0.5 + noise(1) / 2.0;
    let body = json!({
        "id": id, "device": "bench-device", "pipeline": "digits", "seq": seq,
        "accepted_at_ms": 1_795_000_000_000u64 + seq as u64, "completed_at_ms": 1_795_000_000_005u64 + seq as u64,
        "input": {"content_type": "image/png", "bytes": 97, "attributes": {"file": format!("{seq:04}.png")}},
        "provenance": {"model": "digits", "model_sha256": "7aeb717bde754c67e4cf1af823f89ad76eb15876f93c05849b39ff088259d5fd",
            "preprocess": "digits-pre", "preprocess_sha256": "0f".repeat(32), "postprocess": "digits-post", "postprocess_sha256": "a1".repeat(32)},
        "sluice_version": "0.1.0",
        "timings": {"batch_items": 1, "batch_preprocess_us": 150 + (noise(2) * 200.0) as u64, "batch_infer_us": 60 + (noise(3) * 90.0) as u64, "batch_postprocess_us": 80 + (noise(4) * 90.0) as u64},
        "result": {"content_type": "application/json", "body": {"index": seq % 10, "label": (seq % 10).to_string(), "score": score,
            "top": [{"index": seq % 10, "label": (seq % 10).to_string(), "score": score},
                    {"index": (seq + 3) % 10, "label": ((seq + 3) % 10).to_string(), "score": (1.0 - score) * noise(5)},
                    {"index": (seq + 7) % 10, "label": ((seq + 7) % 10).to_string(), "score": (1.0 - score) * noise(6) / 4.0}]}},
    });
    NewRecord {
        id,
        body: body.to_string().into_bytes(),
    }
}

/// Appends per second (group commit as the agent does it, and one commit
/// per record for contrast), then upload throughput over loopback.
pub(crate) fn outbox(records: usize) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let all: Vec<NewRecord> = (0..records).map(sample_record).collect();
    let bytes: u64 = all.iter().map(|r| r.size()).sum();

    let mut appends = Vec::new();
    for group in [64usize, 512, 1] {
        let path = dir.path().join(format!("append-{group}.sqlite"));
        let outbox = Outbox::open(&path, OutboxConfig::default())?;
        let take = if group == 1 {
            records.min(500)
        } else {
            records
        };
        let started = Instant::now();
        for chunk in all[..take].chunks(group) {
            outbox.append(chunk.to_vec())?;
        }
        let seconds = started.elapsed().as_secs_f64();
        appends.push(json!({"records_per_commit": group, "records": take, "records_per_s": take as f64 / seconds}));
    }

    // What the worker does: inputs completed as results, 64 per commit,
    // with and without the copy kept for local readers (GET /v1/results),
    // alternating rounds on fresh files.
    let mut completes = Vec::new();
    for round in 0..3 {
        for local in [true, false] {
            let path = dir.path().join(format!("complete-{round}-{local}.sqlite"));
            let config = OutboxConfig {
                local_max_bytes: if local {
                    OutboxConfig::default().local_max_bytes
                } else {
                    0
                },
                ..OutboxConfig::default()
            };
            let outbox = Outbox::open(&path, config)?;
            let input = sluice_agent::outbox::NewInput {
                pipeline: "digits".into(),
                content_type: "image/png".into(),
                attributes: Vec::new(),
                data: vec![0; 97],
            };
            let started = Instant::now();
            for chunk in all.chunks(64) {
                let seqs = outbox.accept_many(&vec![(&input, None); chunk.len()])?;
                outbox.complete(&seqs, chunk)?;
            }
            let seconds = started.elapsed().as_secs_f64();
            completes.push(json!({"round": round, "local_copies": local, "records": records, "records_per_s": records as f64 / seconds}));
        }
    }

    // Upload the 64-per-commit outbox to a collector on loopback.
    let outbox = Arc::new(Outbox::open(
        &dir.path().join("append-64.sqlite"),
        OutboxConfig::default(),
    )?);
    let mut tokens = Tokens::default();
    tokens.insert("bench-device", "bench-token")?;
    let collector = Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0")?,
        &dir.path().join("collector.sqlite"),
        tokens,
    )?;
    let sync_config = SyncConfig {
        url: Some(collector.url()),
        token: Some("bench-token".into()),
        ..SyncConfig::default()
    };
    let tokio = tokio::runtime::Runtime::new()?;
    let uplink = sluice_agent::uplink::from_config(&sync_config, "bench-device", tokio.handle())?
        .context("sync.url is set")?;
    let uploader =
        Uploader::new(outbox.clone(), uplink, &sync_config, "bench-device").expect("sync settings");
    let started = Instant::now();
    let report = uploader.sync_once(&std::sync::atomic::AtomicBool::new(false))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.records == records as u64 && outbox.pending().0 == 0,
        "upload incomplete: {report:?}"
    );
    let sample = &all[..sync_config.batch_max_records.min(records)];
    let example = sluice_agent::outbox::Batch {
        id: 0,
        key: "k".into(),
        records: sample
            .iter()
            .map(|r| (r.id.clone(), r.body.clone()))
            .collect(),
        stored_at_ms: vec![0; sample.len()],
    };
    let raw: usize = example.records.iter().map(|r| r.1.len()).sum();
    let wire =
        sluice_agent::uplink::to_wire("bench-device", &example).map_err(anyhow::Error::msg)?;
    let compressed =
        zstd::encode_all(&serde_json::to_vec(&wire)?[..], sync_config.zstd_level)?.len();
    collector.shutdown();
    Ok(json!({
        "record_bytes": bytes as f64 / records as f64,
        "appends": appends,
        "completes": completes,
        "sync": {
            "records": records, "batches": report.batches, "batch_max_records": sync_config.batch_max_records,
            "records_per_s": records as f64 / seconds, "mib_per_s": bytes as f64 / seconds / (1 << 20) as f64,
            "zstd_ratio": raw as f64 / compressed as f64,
        },
    }))
}
