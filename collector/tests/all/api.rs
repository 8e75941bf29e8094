//! The operator API: roles, bundle uploads checked against the fleet's
//! keys, groups, rollout policies (failure threshold, stage deadlines that
//! skip or fail late devices, unknown devices refused), a signed revert,
//! and the audit trail of all of it.

use crate::common::*;
use crate::rollouts::{bundle, bundle_with, offered, operator_cli, report};
use serde_json::{Value, json};
use sluice_collector_core::{Limits, Tokens};
use sluice_protocol::keys::SecretKey;
use std::time::{Duration, Instant};

const DEVICES: [&str; 4] = ["a", "b", "c", "d"];

/// Devices a..d (token `t` + name), the operator token `op-rollouts`, a
/// viewer `grafana` (`tv`) and an operator `alice` (`t-alice`).
fn fleet_tokens(dir: &std::path::Path) -> Tokens {
    let mut tokens = Tokens::default();
    for d in DEVICES {
        tokens.insert(d, &format!("t{d}")).unwrap();
    }
    tokens.set_operator("op-rollouts").unwrap();
    let file = dir.join("api-tokens");
    std::fs::write(&file, "grafana:viewer=tv\nalice:operator=t-alice\n").unwrap();
    tokens.add_api_file(&file).unwrap();
    tokens
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    Running::start_for(fleet_tokens(dir.path()), Limits::default())
}

/// `method path` with `token` and a JSON `body`: status and JSON answer.
fn call(c: &Running, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client()
        .request(method.parse().unwrap(), format!("{}{path}", c.url()))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn upload(c: &Running, token: &str, file: &std::path::Path) -> (u16, Value) {
    let response = client()
        .post(format!("{}/v1/bundles", c.url()))
        .bearer_auth(token)
        .body(std::fs::read(file).unwrap())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

/// Rollout `id` once `done` says so, within 10 s.
fn rollout_when(c: &Running, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rollout) = call(c, "GET", &format!("/v1/rollouts/{id}"), "tv", None);
        if done(&rollout) {
            return rollout;
        }
        assert!(Instant::now() < deadline, "{what}: {rollout:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn roles_decide_who_reads_and_who_changes_and_every_change_is_audited() {
    let c = start();
    let file = bundle(c.dir.path(), "p", 1);
    // A device token gets nothing here; a viewer reads but changes nothing.
    assert_eq!(call(&c, "GET", "/v1/rollouts", "ta", None).0, 403);
    assert_eq!(call(&c, "GET", "/v1/rollouts", "nobody", None).0, 401);
    assert_eq!(call(&c, "GET", "/v1/rollouts", "tv", None).0, 200);
    let (status, answer) = upload(&c, "tv", &file);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("`grafana` is a viewer"),
        "{answer}"
    );
    let (status, _) = call(
        &c,
        "PUT",
        "/v1/groups/canary",
        "tv",
        Some(json!({"devices": ["a"]})),
    );
    assert_eq!(status, 403);
    // The operator roles change things.
    let (status, info) = upload(&c, "t-alice", &file);
    assert_eq!(status, 201, "{info}");
    assert_eq!(
        (info["name"].as_str(), info["version"].as_u64()),
        (Some("p"), Some(1))
    );
    assert_eq!(info["signed_by"][0], bundle_key().public().id());
    assert_eq!(
        upload(&c, "op-rollouts", &file).0,
        200,
        "the same file again is harmless"
    );
    let (status, group) = call(
        &c,
        "PUT",
        "/v1/groups/canary",
        "t-alice",
        Some(json!({"devices": ["b", "a", "a"]})),
    );
    assert_eq!(status, 200);
    assert_eq!(group["devices"], json!(["a", "b"]));
    let (status, answer) = call(
        &c,
        "PUT",
        "/v1/groups/canary",
        "t-alice",
        Some(json!({"devices": ["a", "ghost"]})),
    );
    assert_eq!(status, 422);
    assert!(
        answer["error"].as_str().unwrap().contains("ghost"),
        "{answer}"
    );
    assert_eq!(
        call(&c, "GET", "/v1/groups/canary", "tv", None).1["devices"],
        json!(["a", "b"])
    );

    // The trail: who, from where, what, and refusals of authenticated callers.
    let (status, page) = call(&c, "GET", "/v1/audit", "tv", None);
    assert_eq!(status, 200);
    let entries = page["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let expected = [
        ("alice", "bundle.upload", "ok"),
        ("operator", "bundle.upload", "ok"),
        ("alice", "group.set", "ok"),
        ("alice", "group.set", "refused (422)"),
    ];
    assert_eq!(
        summary,
        expected
            .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
            .to_vec(),
        "{page:#}"
    );
    assert_eq!(entries[0]["target"], "bundle p/1");
    assert!(
        entries[0]["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(entries[2]["detail"]["devices"], json!(["b", "a", "a"]));
    let (_, later) = call(
        &c,
        "GET",
        &format!("/v1/audit?after={}", entries[1]["id"]),
        "tv",
        None,
    );
    assert_eq!(later["entries"].as_array().unwrap().len(), 2);
}

#[test]
fn uploads_no_device_would_accept_are_refused() {
    let c = start();
    let dir = c.dir.path();
    let signed = bundle(dir, "p", 1);
    // Unsigned, and signed by a key the fleet does not pin.
    let unsigned = bundle_with(dir, "q", 1, b"model");
    let strip = |file: &std::path::Path, out: &str| {
        let work = dir.join(format!("{out}.work"));
        let unpacked = sluice_bundle::archive::unpack(file, &work, &Default::default()).unwrap();
        let files: Vec<(String, std::path::PathBuf)> = unpacked
            .files
            .iter()
            .map(|f| (f.clone(), work.join("files").join(f)))
            .collect();
        let path = dir.join(out);
        sluice_bundle::archive::write(&path, &unpacked.manifest, &[], &files).unwrap();
        path
    };
    let bare = strip(&unsigned, "bare.bundle");
    let (status, answer) = upload(&c, "t-alice", &bare);
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("unsigned"),
        "{answer}"
    );
    let stranger = SecretKey::generate();
    sluice_bundle::sign(&bare, &stranger, sluice_collector_core::store::now_ms()).unwrap();
    let (status, answer) = upload(&c, "t-alice", &bare);
    assert_eq!(status, 422);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains(&stranger.public().id()),
        "names the key: {answer}"
    );
    // Not a bundle at all.
    std::fs::write(dir.join("junk.bundle"), b"not a bundle").unwrap();
    assert_eq!(upload(&c, "t-alice", &dir.join("junk.bundle")).0, 422);
    // Another file under a stored name and version.
    assert_eq!(upload(&c, "t-alice", &signed).0, 201);
    let other = bundle_with(dir, "p", 1, b"another model");
    let (status, answer) = upload(&c, "t-alice", &other);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("new version"),
        "{answer}"
    );
    let (_, list) = call(&c, "GET", "/v1/bundles", "tv", None);
    assert_eq!(list["bundles"].as_array().unwrap().len(), 1, "{list}");

    // A collector that pins no keys cannot tell: it takes none.
    let tokens = fleet_tokens(dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bare_collector = sluice_collector_core::Collector::start_with(
        listener,
        &dir.join("other.db"),
        tokens,
        Limits::default(),
    )
    .unwrap();
    let response = client()
        .post(format!("{}/v1/bundles", bare_collector.url()))
        .bearer_auth("t-alice")
        .body(std::fs::read(&signed).unwrap())
        .send()
        .unwrap();
    assert_eq!(response.status(), 409);
    assert!(response.text().unwrap().contains("--bundle-key"));
}

#[test]
fn a_failure_threshold_halts_only_past_its_share_and_count() {
    let c = start();
    assert_eq!(upload(&c, "t-alice", &bundle(c.dir.path(), "p", 2)).0, 201);
    let (status, rollout) = call(
        &c,
        "POST",
        "/v1/rollouts",
        "t-alice",
        Some(
            json!({"name": "p", "version": 2, "devices": DEVICES, "stages": [100],
                    "policy": {"max_failed_percent": 25, "min_failed": 2}}),
        ),
    );
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_i64().unwrap();
    report(&c, "a", "ta", 1, "p", 2, "rolled-back");
    report(&c, "b", "tb", 1, "p", 2, "committed");
    // One of four failed: 25 %, not more: it goes on.
    let (_, now) = call(&c, "GET", &format!("/v1/rollouts/{id}"), "tv", None);
    assert_eq!(now["state"], "running", "{now:#}");
    report(&c, "c", "tc", 1, "p", 2, "refused");
    let halted = rollout_when(&c, id, "the halt", |r| r["state"] == "halted");
    let reason = halted["reason"].as_str().unwrap();
    assert!(
        reason.contains("device `a` rolled-back version 2")
            && reason.contains("device `c` refused version 2")
            && reason.contains("2 of 4 device(s)"),
        "{reason}"
    );
    assert_eq!(
        offered(&c, "d", "td", None).0,
        204,
        "nobody new is offered it"
    );
}

#[test]
fn a_stage_deadline_skips_late_devices_who_catch_up_later_or_fails_them() {
    let c = start();
    assert_eq!(upload(&c, "t-alice", &bundle(c.dir.path(), "p", 2)).0, 201);
    assert_eq!(
        call(
            &c,
            "PUT",
            "/v1/groups/site",
            "t-alice",
            Some(json!({"devices": ["a", "b"]}))
        )
        .0,
        200
    );
    let (status, rollout) = call(
        &c,
        "POST",
        "/v1/rollouts",
        "t-alice",
        Some(
            json!({"name": "p", "version": 2, "group": "site", "stages": [50, 100],
                    "policy": {"stage_deadline_ms": 1500}}),
        ),
    );
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_i64().unwrap();
    assert_eq!(offered(&c, "b", "tb", None).0, 204);
    // a is offline: at the deadline the rollout goes on without it.
    let next = rollout_when(&c, id, "the next stage", |r| r["stage"] == 1);
    assert_eq!(next["devices"][0]["skipped"], true, "{next:#}");
    assert_eq!(offered(&c, "b", "tb", None).0, 200);
    report(&c, "b", "tb", 1, "p", 2, "committed");
    rollout_when(&c, id, "done", |r| r["state"] == "done");
    // a comes back: still offered it; once it committed, no longer.
    assert_eq!(offered(&c, "a", "ta", None).0, 200);
    report(&c, "a", "ta", 1, "p", 2, "committed");
    assert_eq!(offered(&c, "a", "ta", None).0, 204);

    // With `fail`, the late count against the threshold.
    assert_eq!(upload(&c, "t-alice", &bundle(c.dir.path(), "p", 3)).0, 201);
    let (_, rollout) = call(
        &c,
        "POST",
        "/v1/rollouts",
        "t-alice",
        Some(
            json!({"name": "p", "version": 3, "devices": ["c", "d"], "stages": [100],
                    "policy": {"stage_deadline_ms": 1000, "on_deadline": "fail"}}),
        ),
    );
    report(&c, "c", "tc", 2, "p", 3, "committed");
    let id = rollout["id"].as_i64().unwrap();
    let halted = rollout_when(&c, id, "the halt", |r| r["state"] == "halted");
    assert!(
        halted["reason"]
            .as_str()
            .unwrap()
            .contains("device `d` did not commit version 3 within the stage deadline of 1000 ms"),
        "{halted:#}"
    );
    // Unknown groups and devices, and bundles never uploaded, start nothing.
    for (body, why) in [
        (
            json!({"name": "p", "version": 3, "group": "nope"}),
            "no group `nope`",
        ),
        (
            json!({"name": "p", "version": 9, "devices": ["a"]}),
            "no bundle `p` version 9",
        ),
        (
            json!({"name": "p", "version": 3, "devices": ["a"], "group": "site"}),
            "exactly one",
        ),
        (
            json!({"name": "p", "version": 3, "devices": ["a"], "policy": {"min_failed": 0}}),
            "min_failed",
        ),
    ] {
        let (status, answer) = call(&c, "POST", "/v1/rollouts", "t-alice", Some(body));
        assert!(
            status >= 400 && answer["error"].as_str().unwrap().contains(why),
            "{answer}"
        );
    }
}

#[test]
fn a_revert_is_the_earlier_files_under_a_new_signed_version() {
    let c = start();
    let dir = c.dir.path();
    let v1 = bundle_with(dir, "p", 1, b"the good model");
    sluice_bundle::sign(&v1, bundle_key(), sluice_collector_core::store::now_ms()).unwrap();
    let v2 = bundle_with(dir, "p", 2, b"the bad model");
    sluice_bundle::sign(&v2, bundle_key(), sluice_collector_core::store::now_ms()).unwrap();
    for file in [&v1, &v2] {
        assert_eq!(upload(&c, "t-alice", file).0, 201);
    }
    let key = dir.join("signing.key");
    bundle_key().write_new(&key).unwrap();
    let (ok, text) = operator_cli(
        &c,
        &[
            "rollout",
            "revert",
            "--name",
            "p",
            "--to",
            "1",
            "--key",
            key.to_str().unwrap(),
            "--devices",
            "a,b",
            "--stages",
            "100",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("version 3 made: version 1's files"), "{text}");
    let (_, info) = call(&c, "GET", "/v1/bundles/p/3", "tv", None);
    assert_eq!(info["reverts_to"], 1, "{info}");
    // What a device is offered: version 3, the files of version 1, signed.
    let body = client()
        .get(format!("{}/v1/devices/a/bundle", c.url()))
        .bearer_auth("ta")
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let offered = dir.join("offered.bundle");
    std::fs::write(&offered, &body).unwrap();
    let unpacked =
        sluice_bundle::archive::unpack(&offered, &dir.join("offered"), &Default::default())
            .unwrap();
    let verified = sluice_bundle::verify_signed(
        &unpacked,
        &[bundle_key().public()],
        sluice_collector_core::store::now_ms(),
    )
    .unwrap();
    assert_eq!(
        (verified.manifest.version, verified.manifest.reverts_to),
        (3, Some(1))
    );
    assert_eq!(
        std::fs::read(verified.files.join("models/m.onnx")).unwrap(),
        b"the good model"
    );
    // The audit trail has the upload and the rollout, by the token's name.
    let (_, page) = call(&c, "GET", "/v1/audit", "tv", None);
    let actions: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "bundle.upload",
            "bundle.upload",
            "bundle.upload",
            "rollout.create"
        ]
    );
}

#[test]
fn a_scheduled_start_and_a_window_hold_offers_and_devices_are_told_the_probation_asked() {
    let c = start();
    assert_eq!(upload(&c, "t-alice", &bundle(c.dir.path(), "p", 2)).0, 201);
    let now = sluice_collector_core::store::now_ms();
    let minute = |ms: i64| {
        format!(
            "{:02}:{:02}",
            ms.rem_euclid(86_400_000) / 3_600_000,
            ms.rem_euclid(3_600_000) / 60_000
        )
    };
    // A window that closed a minute ago and opens in an hour: nothing now.
    let closed = json!({"from": minute(now + 3_600_000), "to": minute(now - 60_000)});
    let (status, rollout) = call(
        &c,
        "POST",
        "/v1/rollouts",
        "t-alice",
        Some(json!({"name": "p", "version": 2, "devices": ["a"], "policy": {"window": closed}})),
    );
    assert_eq!(status, 201, "{rollout}");
    assert_eq!(offered(&c, "a", "ta", None).0, 204, "outside the window");
    let id = rollout["id"].as_i64().unwrap();
    call(
        &c,
        "POST",
        &format!("/v1/rollouts/{id}/abort"),
        "t-alice",
        None,
    );
    // A start in an hour: nothing now.
    let (status, rollout) = call(
        &c,
        "POST",
        "/v1/rollouts",
        "t-alice",
        Some(
            json!({"name": "p", "version": 2, "devices": ["a"], "policy": {"start_at_ms": now + 3_600_000}}),
        ),
    );
    assert_eq!(status, 201, "{rollout}");
    assert_eq!(offered(&c, "a", "ta", None).0, 204, "before the start");
    assert_eq!(
        rollout["stage_started_ms"],
        now + 3_600_000,
        "the deadline counts from the start"
    );
    let id = rollout["id"].as_i64().unwrap();
    call(
        &c,
        "POST",
        &format!("/v1/rollouts/{id}/abort"),
        "t-alice",
        None,
    );
    // Open now, asking for a longer probation: the offer says so.
    let open = json!({"from": minute(now - 60_000), "to": minute(now + 3_600_000)});
    let (status, _) = call(
        &c,
        "POST",
        "/v1/rollouts",
        "t-alice",
        Some(json!({"name": "p", "version": 2, "devices": ["a"],
                    "policy": {"window": open, "min_probation_items": 12, "min_probation_secs": 30}})),
    );
    assert_eq!(status, 201);
    let response = client()
        .get(format!("{}/v1/devices/a/bundle", c.url()))
        .bearer_auth("ta")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-sluice-probation"].to_str().unwrap(),
        "items=12; secs=30"
    );
    // A window that cannot be read starts nothing.
    let (status, answer) = call(
        &c,
        "POST",
        "/v1/rollouts",
        "t-alice",
        Some(
            json!({"name": "p", "version": 2, "devices": ["b"], "policy": {"window": {"from": "25:00", "to": "02:00"}}}),
        ),
    );
    assert_eq!(status, 422, "{answer}");
}
