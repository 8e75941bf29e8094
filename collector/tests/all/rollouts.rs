//! Staged rollout from the operator's side: `sluice-collector rollout`
//! start, status, pause, resume and abort through the operator API (URL
//! and token only); devices get the bundle of the stages reached (`GET
//! /v1/devices/{id}/bundle`, `304` for one they have); a stage advances
//! when its devices report the version committed, and the rollout halts by
//! itself when one reports a rollback.

use crate::common::*;
use serde_json::json;
use sluice_collector_core::Limits;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A bundle file of `name` at `version` (the collector only reads its
/// manifest: devices verify signatures).
pub(crate) fn bundle(dir: &Path, name: &str, version: u64) -> PathBuf {
    bundle_with(dir, name, version, b"not really a model")
}

/// [`bundle`] whose model file holds `model`.
pub(crate) fn bundle_with(dir: &Path, name: &str, version: u64, model: &[u8]) -> PathBuf {
    let file = dir.join("model.onnx");
    std::fs::write(&file, model).unwrap();
    let (bytes, sha256) = sluice_bundle::sha256_of(&file).unwrap();
    let manifest = sluice_bundle::Manifest {
        format: sluice_bundle::FORMAT,
        name: name.into(),
        version,
        created_at_ms: 0,
        expires_at_ms: i64::MAX,
        min_sluice_version: "0.1.0".into(),
        wit_package: "sluice:plugin@0.1.0".into(),
        validation: Default::default(),
        files: vec![sluice_bundle::FileEntry {
            path: "models/m.onnx".into(),
            sha256,
            bytes,
        }],
        reverts_to: None,
    };
    let out = dir.join(format!("{name}-{version}.bundle"));
    sluice_bundle::archive::write(
        &out,
        &manifest.to_bytes(),
        &[],
        &[("models/m.onnx".into(), file)],
    )
    .unwrap();
    sluice_bundle::sign(&out, bundle_key(), sluice_collector_core::store::now_ms()).unwrap();
    out
}

/// `sluice-collector ARGS` against collector `c` with the operator token
/// (written to a file beside its database): success, and what it printed.
pub(crate) fn operator_cli(c: &Running, args: &[&str]) -> (bool, String) {
    let token = c.dir.path().join("operator.token");
    std::fs::write(&token, "op-rollouts\n").unwrap();
    let out = Command::new(crate::common::collector_bin())
        .args(args)
        .arg("--url")
        .arg(c.url())
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What device `device` (token `token`) is offered: status, ETag, name/version.
pub(crate) fn offered(
    c: &Running,
    device: &str,
    token: &str,
    if_none_match: Option<&str>,
) -> (u16, String, String) {
    let mut request = client()
        .get(format!("{}/v1/devices/{device}/bundle", c.url()))
        .bearer_auth(token);
    if let Some(etag) = if_none_match {
        request = request.header("If-None-Match", etag);
    }
    let response = request.send().unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        response.status().as_u16(),
        header("etag"),
        header("x-sluice-bundle"),
    )
}

/// `device` reports `outcome` for `name` `version`, as an install record.
pub(crate) fn report(
    c: &Running,
    device: &str,
    token: &str,
    seq: i64,
    name: &str,
    version: u64,
    outcome: &str,
) {
    let record = json!({
        "kind": "install", "id": format!("{device}/{name}/{seq}"), "device": device,
        "pipeline": name, "seq": seq, "at_ms": 1, "version": version,
        "bundle_sha256": "ab", "outcome": outcome,
        "reason": if outcome == "rolled-back" { Some("3 of 5 items failed on probation") } else { None },
        "sluice_version": "0.1.0"
    });
    let answer = post(
        &c.url(),
        token,
        &batch(device, &format!("k-{device}-{seq}"), vec![record]),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn a_rollout_goes_stage_by_stage_can_be_paused_and_halts_on_a_rollback() {
    let c = Running::start_for(operator_tokens(), Limits::default());
    stage_by_stage(&c);
}

/// Device tokens and the operator's, `op-rollouts`.
pub fn operator_tokens() -> sluice_collector_core::Tokens {
    let mut tokens = tokens();
    tokens.set_operator("op-rollouts").unwrap();
    tokens
}

/// The rollout of a bundle to devices `a` and `b` through collector `c`
/// (on SQLite or PostgreSQL), from start to abort.
pub fn stage_by_stage(c: &Running) {
    let rollout = |args: &[&str]| {
        let mut all = vec!["rollout"];
        all.extend(args);
        operator_cli(c, &all)
    };
    let file = bundle(c.dir.path(), "p", 3);
    // Bad stages and devices without a token are refused, and start nothing.
    let (ok, text) = rollout(&[
        "start",
        "--bundle",
        file.to_str().unwrap(),
        "--devices",
        "a,b",
        "--stages",
        "50,40",
    ]);
    assert!(!ok && text.contains("increasing percentages"), "{text}");
    let (ok, text) = rollout(&[
        "start",
        "--name",
        "p",
        "--version",
        "3",
        "--devices",
        "a,nosuchdev",
    ]);
    assert!(
        !ok && text.contains("unknown device(s) nosuchdev"),
        "{text}"
    );
    assert!(rollout(&["status"]).1.contains("no rollouts"));

    let (ok, text) = rollout(&[
        "start",
        "--bundle",
        file.to_str().unwrap(),
        "--devices",
        "a,b",
        "--stages",
        "50,100",
    ]);
    assert!(ok && text.contains("now offered to 1"), "{text}");
    let (ok, text) = rollout(&[
        "start",
        "--bundle",
        file.to_str().unwrap(),
        "--devices",
        "a,b",
    ]);
    assert!(!ok && text.contains("abort it first"), "{text}");

    // Stage 1: a only.
    let (status, etag, which) = offered(c, "a", "ta", None);
    assert_eq!((status, which.as_str()), (200, "p/3"));
    assert_eq!(offered(c, "a", "ta", Some(&etag)).0, 304, "a has it");
    assert_eq!(offered(c, "b", "tb", None).0, 204);
    assert_eq!(offered(c, "b", "ta", None).0, 403, "a's token is not b's");
    // a installs: not enough; a commits: stage 2, b is offered it.
    report(c, "a", "ta", 1, "p", 3, "installed");
    assert_eq!(offered(c, "b", "tb", None).0, 204);
    report(c, "a", "ta", 2, "p", 3, "committed");
    assert_eq!(offered(c, "b", "tb", None).0, 200);

    // Paused: nobody is offered it; resumed: again.
    assert!(rollout(&["pause", "1"]).0);
    assert_eq!(offered(c, "b", "tb", None).0, 204);
    assert!(rollout(&["resume", "1"]).0);
    assert_eq!(offered(c, "b", "tb", None).0, 200);

    // b rolls it back: halted, by itself, naming b and why.
    report(c, "b", "tb", 1, "p", 3, "rolled-back");
    assert_eq!(offered(c, "b", "tb", None).0, 204);
    let (ok, text) = rollout(&["status"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("rollout 1: `p` version 3: halted, stage 2 of 2"),
        "{text}"
    );
    assert!(
        text.contains("device `b` rolled-back version 3: 3 of 5 items failed on probation"),
        "{text}"
    );
    let (_, json) = rollout(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json[0]["devices"][0]["outcome"], "committed");
    // The operator's dashboard shows it.
    let html = client()
        .get(format!("{}/dashboard", c.url()))
        .bearer_auth("op-rollouts")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        html.contains("data-rollout=\"1\" data-state=\"halted\""),
        "{html}"
    );
    assert!(html.contains("3 of 5 items failed on probation"), "{html}");
    assert!(
        !rollout(&["resume", "1"]).0,
        "a halted rollout is not resumed"
    );
    assert!(rollout(&["abort", "1"]).0);
    let (ok, text) = rollout(&["abort", "1"]);
    assert!(
        !ok && text.contains("rollout 1 is aborted: cannot abort it"),
        "{text}"
    );
    // A new rollout of the same bundle can start once the old one ended.
    let (ok, text) = rollout(&[
        "start",
        "--bundle",
        file.to_str().unwrap(),
        "--devices",
        "a,b",
        "--stages",
        "100",
    ]);
    assert!(
        ok && text.contains("rollout 2") && text.contains("now offered to 2"),
        "{text}"
    );
}

/// What a device fetching in chunks (through MQTT) is given: the bytes of
/// the offered bundle at the offset asked, its size and SHA-256, nothing
/// past the end, nothing for a device not offered it. Run on SQLite here
/// and on PostgreSQL by `postgres.rs`.
pub(crate) fn chunks_are_the_bundles_bytes(store: &sluice_collector_core::Store) {
    let dir = tempfile::tempdir().unwrap();
    let model: Vec<u8> = (0..5_000u32).map(|_| rand::random()).collect();
    let file = bundle_with(dir.path(), "chunked", 1, &model);
    let bytes = std::fs::read(&file).unwrap();
    store
        .start_rollout(&file, vec!["a".into()], &[100])
        .unwrap();
    let chunk = store.bundle_chunk("a", 10, 100).unwrap().unwrap();
    assert_eq!(chunk.bytes, bytes[10..110]);
    assert_eq!(chunk.total, bytes.len() as u64);
    assert_eq!(chunk.sha256, sluice_bundle::sha256_of(&file).unwrap().1);
    assert_eq!((chunk.name.as_str(), chunk.version), ("chunked", 1));
    let tail = store
        .bundle_chunk("a", bytes.len() as u64 - 5, 100)
        .unwrap()
        .unwrap();
    assert_eq!(tail.bytes, bytes[bytes.len() - 5..]);
    let past = store
        .bundle_chunk("a", bytes.len() as u64 + 7, 100)
        .unwrap()
        .unwrap();
    assert!(past.bytes.is_empty());
    assert!(store.bundle_chunk("b", 0, 100).unwrap().is_none());
}

#[test]
fn chunks_of_an_offered_bundle_are_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = sluice_collector_core::Store::open(&dir.path().join("c.db")).unwrap();
    chunks_are_the_bundles_bytes(&store);
}
