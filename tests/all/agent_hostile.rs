//! `sluice run` against inputs and state that once took a pipeline down for
//! good: a plugin handing `wasi:nn` a tensor shape whose size overflows, an
//! input that crashes the pipeline every time it runs (also after a
//! restart, from the journal), a worker that dies, journal rows of every
//! SQLite storage class. Each costs its own item (a failed result, with the
//! cause, delivered like any other) or a moment, never its neighbours or
//! the pipeline: `/readyz` is ready again by itself.

use crate::agent::{Agent, DEVICE, collector, images, stored, wait_until, write_config};
use crate::common::{http, plugin_path};
use crate::outbox_damage::{CLASSES, loosened, of_class};
use rusqlite::types::Value;
use sluice_agent::config::OutboxConfig;
use sluice_agent::outbox::{NewInput, Outbox};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn ready(agent: &Agent) -> u16 {
    http(reqwest::Client::new().get(format!("{}/readyz", agent.url))).0
}

/// POST `body` to the digits pipeline; the id it was accepted under.
fn post(agent: &Agent, body: &[u8]) -> String {
    let (status, answer) = http(
        reqwest::Client::new()
            .post(format!("{}/v1/ingest/digits", agent.url))
            .header("Content-Type", "application/octet-stream")
            .body(body.to_vec()),
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    answer["id"].as_str().unwrap().to_owned()
}

/// Wait (bounded) until the collector has every one of `ids`.
fn wait_for(
    collector: &sluice_collector_core::Collector,
    ids: &[String],
) -> BTreeMap<String, serde_json::Value> {
    let mut all = BTreeMap::new();
    let arrived = wait_until(Duration::from_secs(60), || {
        all = stored(collector);
        ids.iter().all(|id| all.contains_key(id))
    });
    assert!(
        arrived,
        "{} of {} results arrived",
        ids.iter().filter(|id| all.contains_key(*id)).count(),
        ids.len()
    );
    all
}

/// A digit as the model's input: 64 little-endian `f32`s.
fn digit_f32(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(png).unwrap().to_luma8();
    image
        .pixels()
        .flat_map(|p| (p.0[0] as f32 / 240.0).to_le_bytes())
        .collect()
}

/// The digits configuration with the `nn-guest` fixture as preprocessor:
/// it runs the digits model itself through `wasi:nn`, then forwards its
/// input to the pipeline's model.
fn nn_guest_config(dir: &Path, url: &str) -> PathBuf {
    let file = write_config(dir, url, None);
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let pre = config["plugins"]["digits-pre"].as_table_mut().unwrap();
    pre.insert(
        "path".into(),
        plugin_path("nn-guest").display().to_string().into(),
    );
    pre.insert(
        "config".into(),
        toml::Value::Table(
            toml::from_str("model = \"digits\"\ninput = \"input\"\nforward = true").unwrap(),
        ),
    );
    config["pipelines"]["digits"]
        .as_table_mut()
        .unwrap()
        .remove("sample");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    file
}

#[test]
fn a_wasi_nn_shape_that_overflows_fails_its_item_with_the_cause_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = nn_guest_config(dir.path(), &collector.url());
    // A backtrace, if anything logged one, would be captured.
    let mut command = Command::new(crate::common::sluice_bin());
    command.env("RUST_BACKTRACE", "1");
    let agent = Agent::start_logging(command, &config, "warn");
    let digits: Vec<Vec<u8>> = images().iter().take(6).map(|png| digit_f32(png)).collect();
    let mut ids = Vec::new();
    for digit in &digits[..3] {
        ids.push(post(&agent, digit));
    }
    // [2^31, 2^31] of FP32: 2^64 bytes, an overflow in a debug build and 0
    // (the data's length) once wrapped in a release one.
    let overflow = post(&agent, b"dims:2147483648,2147483648");
    let short = post(&agent, b"dims:1,64");
    for digit in &digits[3..] {
        ids.push(post(&agent, digit));
    }
    let all = wait_for(
        &collector,
        &[ids.clone(), vec![overflow.clone(), short.clone()]].concat(),
    );
    for id in &ids {
        assert!(
            all[id]["result"]["body"]["label"].is_string(),
            "{}",
            all[id]
        );
    }
    for (id, cause) in [
        (&overflow, "describes more than 1073741824 bytes"),
        (&short, "0 bytes do not fill shape [1, 64]"),
    ] {
        let error = &all[id]["error"];
        assert_eq!(error["kind"], "internal", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("InvalidArgument") && message.contains(cause),
            "the guest was not told why: {message}"
        );
    }
    assert_eq!(ready(&agent), 200);
    let log = agent.stderr_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wasi:nn compute failed"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per failed call:\n{log}");
    assert!(
        lines.iter().any(|l| l.contains("do not fill shape")),
        "{log}"
    );
    assert!(
        !log.contains("backtrace") && !log.contains("Failed while accessing backend"),
        "{log}"
    );
    assert_eq!(agent.sigterm(), 0);
}

/// Journal `inputs` in the outbox under `data`, before the agent starts.
fn journal(data: &Path, inputs: &[&[u8]]) -> Vec<i64> {
    let outbox = Outbox::open_in(data, OutboxConfig::default()).unwrap();
    inputs
        .iter()
        .map(|data| {
            outbox
                .accept(&NewInput {
                    pipeline: "digits".into(),
                    content_type: "image/png".into(),
                    attributes: Vec::new(),
                    data: data.to_vec(),
                })
                .unwrap()
        })
        .collect()
}

fn result_id(data: &Path, seq: i64) -> String {
    Outbox::open_in(data, OutboxConfig::default())
        .unwrap()
        .result_id(DEVICE, "digits", seq)
}

/// Bytes that make the worker panic (a fault-injection seam standing for a
/// bug that some input reaches), with `SLUICE_FAULT_INJECT=item-panic:digits`.
const POISON: &[u8] = b"sluice-fault:panic";

#[test]
fn an_input_that_crashes_the_pipeline_is_set_aside_after_three_crashes_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let data = dir.path().join("data");
    let pngs = images();
    // Left journaled by a previous run: digits, a poison input never tried,
    // and one that already crashed the pipeline twice (the count is kept
    // with the input, so a restart does not start it over).
    let seqs = journal(
        &data,
        &[&pngs[0], &pngs[1], POISON, &pngs[2], POISON, &pngs[3]],
    );
    let conn = rusqlite::Connection::open(data.join(sluice_agent::outbox::FILE_NAME)).unwrap();
    conn.execute(
        "UPDATE journal SET crashes = 2, last_crash = 'an earlier crash' WHERE seq = ?1",
        [seqs[4]],
    )
    .unwrap();
    drop(conn);
    let ids: Vec<String> = seqs.iter().map(|&seq| result_id(&data, seq)).collect();

    let agent = Agent::start_with(&config, &[("SLUICE_FAULT_INJECT", "item-panic:digits")]);
    let all = wait_for(&collector, &ids);
    for i in [0, 1, 3, 5] {
        assert!(
            all[&ids[i]]["result"]["body"]["label"].is_string(),
            "{}",
            all[&ids[i]]
        );
    }
    for i in [2, 4] {
        let error = &all[&ids[i]]["error"];
        assert_eq!(error["kind"], "crashed", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("crashed 3 times") && message.contains("injected fault item-panic"),
            "{message}"
        );
    }
    // Three crashes for the new one (in its group, then alone twice), one
    // for the one that had two: the counts survived the restart.
    let log = agent.stderr_text();
    let crashes = log
        .lines()
        .filter(|l| l.contains("the pipeline crashed on"))
        .count();
    assert_eq!(crashes, 4, "{log}");
    assert_eq!(ready(&agent), 200);
    // New inputs flow.
    let later = crate::agent::ingest(&agent.url, &pngs[4]).expect("accepted");
    wait_for(&collector, &[later]);
    agent.sigkill();
    // Nothing of them is left to crash a later start.
    let agent = Agent::start_with(&config, &[("SLUICE_FAULT_INJECT", "item-panic:digits")]);
    assert_eq!(ready(&agent), 200);
    assert!(!agent.stderr_text().contains("crashed"));
    assert_eq!(agent.sigterm(), 0);
}

#[test]
fn a_worker_that_dies_is_started_again_and_the_agent_is_ready_again() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let agent = Agent::start_with(
        &config,
        &[("SLUICE_FAULT_INJECT", "worker-panic-once:digits")],
    );
    let id = crate::agent::ingest(&agent.url, &images()[0]).expect("accepted");
    // The worker dies on its first group, is started again after a backoff
    // and delivers the input, without a restart of the agent.
    wait_for(&collector, &[id]);
    assert!(
        wait_until(Duration::from_secs(10), || ready(&agent) == 200),
        "not ready again"
    );
    let log = agent.stderr_text();
    assert!(
        log.contains("worker died: injected fault worker-panic-once; starting it again in"),
        "{log}"
    );
    assert_eq!(agent.sigterm(), 0);
}

/// The columns of `journal` a worker reads, with the storage classes the
/// outbox writes in each.
const JOURNAL_COLUMNS: [(&str, &[&str]); 7] = [
    ("content_type", &["TEXT"]),
    ("attributes", &["TEXT"]),
    ("data", &["BLOB"]),
    ("accepted_at_ms", &["INTEGER"]),
    ("refused", &["TEXT", "NULL"]),
    ("crashes", &["INTEGER"]),
    ("last_crash", &["TEXT", "NULL"]),
];

#[test]
fn journal_rows_of_every_storage_class_fail_alone_and_the_rest_are_processed() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let data = dir.path().join("data");
    let pngs = images();
    let good = journal(&data, &[&pngs[0], &pngs[1], &pngs[2]]);
    let path = data.join(sluice_agent::outbox::FILE_NAME);
    // Each column of a journal row in each storage class it is never
    // written in (a TEXT `attributes` that is not JSON too), between good
    // inputs.
    let mut damaged: Vec<(i64, &str)> = Vec::new();
    loosened(&path, "journal", |conn| {
        let mut cases: Vec<(&str, Value)> = Vec::new();
        for (column, written) in JOURNAL_COLUMNS {
            for class in CLASSES {
                if !written.contains(&class) {
                    cases.push((column, of_class(class, cases.len())));
                }
            }
        }
        cases.push(("attributes", Value::Text("not json".into())));
        for (column, value) in cases {
            let mut row: Vec<(&str, Value)> = vec![
                ("content_type", Value::Text("image/png".into())),
                ("attributes", Value::Text("[]".into())),
                ("data", Value::Blob(pngs[3].clone())),
                ("accepted_at_ms", Value::Integer(sluice_types::now_ms())),
                ("refused", Value::Null),
                ("crashes", Value::Integer(0)),
                ("last_crash", Value::Null),
            ];
            for (name, v) in &mut row {
                if *name == column {
                    *v = value.clone();
                }
            }
            conn.execute(
                "INSERT INTO journal(pipeline, content_type, attributes, data, accepted_at_ms, refused, crashes, last_crash)
                 VALUES ('digits', ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params_from_iter(row.into_iter().map(|(_, v)| v)),
            )
            .unwrap();
            damaged.push((conn.last_insert_rowid(), column));
        }
    });
    let good = [good, journal(&data, &[&pngs[4]])].concat();
    // The ids before the start: the outbox is the agent's once it runs.
    let id = |seq: i64| result_id(&data, seq);
    let good: Vec<String> = good.into_iter().map(id).collect();
    let damaged: Vec<(String, &str)> = damaged
        .into_iter()
        .map(|(seq, column)| (id(seq), column))
        .collect();

    let agent = Agent::start(&config);
    let ids: Vec<String> = good
        .iter()
        .cloned()
        .chain(damaged.iter().map(|(id, _)| id.clone()))
        .collect();
    let all = wait_for(&collector, &ids);
    for id in &good {
        let doc = &all[id];
        assert!(doc["result"]["body"]["label"].is_string(), "{doc}");
    }
    for (id, column) in &damaged {
        let error = &all[id]["error"];
        assert_eq!(error["kind"], "damaged", "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{column}`")),
            "{error}"
        );
    }
    assert_eq!(ready(&agent), 200);
    assert_eq!(agent.sigterm(), 0);
}
