//! The fleet view: what devices send becomes the operator's API, metrics
//! and dashboard; only the operator token reads it; hostile record fields
//! come out escaped; a schema 2 file is migrated. (The dashboard in a real
//! browser, fed by two real agents, is tested end to end with the device:
//! `tests/all/fleet.rs`.)

use crate::common::*;
use serde_json::{Value, json};
use sluice_collector_core::{Limits, Store, Tokens};
use sluice_protocol::{
    DeviceStatus, DriftScore, DriftWindow, InputInfo, ItemFailure, Outcome, Provenance, Record,
    RecordKind, ResultBody, ResultRecord, StageTimings, UploadBatch, result_id,
};
use std::process::Command;

pub(crate) const OPERATOR: &str = "op-secret-1";

fn now_ms() -> i64 {
    sluice_collector_core::store::now_ms()
}

/// A result of `device`, pipeline `p`, failed when `failed`.
pub(crate) fn result(device: &str, seq: i64, failed: bool) -> Record {
    let now = now_ms();
    Record::Result(ResultRecord {
        kind: RecordKind::Result,
        id: result_id(device, "p", Some("0b"), seq),
        device: device.into(),
        pipeline: "p".into(),
        outbox: Some("0b".into()),
        seq,
        accepted_at_ms: now - 20,
        completed_at_ms: now - 10,
        input: InputInfo {
            content_type: "image/png".into(),
            bytes: 100,
            attributes: Default::default(),
        },
        provenance: Provenance {
            model: "digits".into(),
            model_sha256: "aa11".repeat(16),
            preprocess: "pre".into(),
            preprocess_sha256: "bb22".repeat(16),
            postprocess: "post".into(),
            postprocess_sha256: "cc33".repeat(16),
            bundle: None,
        },
        sluice_version: "0.9.1".into(),
        timings: StageTimings::default(),
        outcome: if failed {
            Outcome::Error(ItemFailure {
                kind: "invalid-input".into(),
                message: "not a PNG".into(),
            })
        } else {
            Outcome::Result(ResultBody::new("application/json", br#"{"label":"3"}"#))
        },
    })
}

/// A drift window of `device`'s pipeline `p`, with `feature` and `model`
/// as given (hostile, in one test).
pub(crate) fn window(device: &str, seq: i64, alarm: bool, feature: &str, model: &str) -> Record {
    let now = now_ms();
    Record::DriftWindow(DriftWindow {
        kind: RecordKind::DriftWindow,
        id: result_id(device, "p", Some("0b"), seq),
        device: device.into(),
        pipeline: "p".into(),
        outbox: Some("0b".into()),
        seq,
        model: model.into(),
        model_sha256: "aa11".repeat(16),
        profile_sha256: "dd44".repeat(16),
        started_at_ms: now - 60_000,
        ended_at_ms: now,
        items: 500,
        false_alarm_rate: 0.01,
        scores: vec![
            DriftScore {
                feature: feature.into(),
                statistic: "psi".into(),
                value: if alarm { 0.9 } else { 0.05 },
                threshold: 0.25,
                drifted: alarm,
            },
            DriftScore {
                feature: "output.confidence".into(),
                statistic: "ks".into(),
                value: 0.02,
                threshold: 0.1,
                drifted: false,
            },
        ],
        alarm,
        sluice_version: "0.9.1".into(),
    })
}

fn status(pending: u64) -> DeviceStatus {
    DeviceStatus {
        sluice_version: "0.9.1".into(),
        at_ms: now_ms(),
        pending_records: pending,
        journal_items: 3,
        set_aside_records: 1,
        oldest_pending_ms: Some(4_000),
    }
}

/// Upload `records` as `device` would, with its status.
pub(crate) fn upload(
    c: &Running,
    device: &str,
    token: &str,
    key: &str,
    records: Vec<Record>,
    pending: u64,
) -> Answer {
    let batch = UploadBatch {
        protocol: 1,
        device: device.into(),
        key: key.into(),
        records,
        status: Some(status(pending)),
    };
    let answer = post(&c.url(), token, &serde_json::to_value(&batch).unwrap());
    assert_eq!(answer.status, 200, "{answer:?}");
    answer
}

/// GET `path` with `authorization` (a bearer token) or none.
pub(crate) fn get(c: &Running, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = client().get(format!("{}{path}", c.url()));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

/// Two devices: `a` healthy (ok and failed results), `b` with a drift
/// alarm. Returns a's records, to send again.
fn two_devices(c: &Running) -> Vec<Record> {
    let a = vec![
        result("a", 1, false),
        result("a", 2, false),
        result("a", 3, true),
        window("a", 4, false, "input.x[3]", "digits"),
    ];
    upload(c, "a", "ta", "a-1", a.clone(), 12);
    upload(
        c,
        "b",
        "tb",
        "b-1",
        vec![
            result("b", 1, false),
            window("b", 2, true, "input.x[7]", "digits"),
        ],
        250,
    );
    a
}

#[test]
fn only_the_operator_token_reads_the_fleet() {
    let c = Running::start_for(tokens_with_operator(), Limits::default());
    for path in [
        "/v1/fleet",
        "/v1/fleet/devices/a",
        "/metrics",
        "/dashboard",
        "/dashboard/devices/a",
    ] {
        assert_eq!(get(&c, path, None).0, 401, "{path} without a token");
        assert_eq!(
            get(&c, path, Some("nope")).0,
            401,
            "{path} with an unknown token"
        );
        assert_eq!(
            get(&c, path, Some("ta")).0,
            if path.starts_with("/dashboard") {
                401
            } else {
                403
            },
            "{path} with a device token"
        );
        assert_eq!(
            get(&c, path, Some(OPERATOR)).0,
            200,
            "{path} with the operator token"
        );
    }
    assert_eq!(get(&c, "/v1/fleet/devices/zz", Some(OPERATOR)).0, 404);
    // A device's results: its own token or the operator's, as the README says.
    for path in ["/v1/devices/a/count", "/v1/devices/a/results?after=0"] {
        assert_eq!(get(&c, path, None).0, 401, "{path}");
        assert_eq!(get(&c, path, Some("ta")).0, 200, "{path}: a's own token");
        assert_eq!(get(&c, path, Some("tb")).0, 403, "{path}: b's token");
        assert_eq!(get(&c, path, Some(OPERATOR)).0, 200, "{path}: the operator");
    }
    // The operator token is no device token.
    let refused = post(
        &c.url(),
        OPERATOR,
        &batch("a", "k", vec![record("a", 1, "x")]),
    );
    assert_eq!(refused.status, 401);

    // The browser's way in: ?token= becomes a cookie, and the token leaves the URL.
    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let wrong = no_redirects
        .get(format!("{}/dashboard?token=ta", c.url()))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let login = no_redirects
        .get(format!("{}/dashboard/devices/a?token={OPERATOR}", c.url()))
        .send()
        .unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(login.headers()["location"], "/dashboard/devices/a");
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(OPERATOR),
        "the cookie must not hold the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let page = no_redirects
        .get(format!("{}/dashboard", c.url()))
        .header("Cookie", pair)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("Sluice fleet"));
    let forged = no_redirects
        .get(format!("{}/dashboard", c.url()))
        .header("Cookie", "sluice_operator=00")
        .send()
        .unwrap();
    assert_eq!(forged.status(), 401);

    // Without an operator token the fleet is closed to everyone (a
    // device token is told it is one).
    let closed = Running::start(Limits::default());
    assert_eq!(get(&closed, "/v1/fleet", Some("ta")).0, 403);
    assert_eq!(get(&closed, "/v1/fleet", None).0, 401);
}

#[test]
fn an_operator_token_equal_to_a_device_token_is_refused() {
    let mut tokens = tokens();
    assert!(tokens.set_operator("ta").is_err());
    // And through the binary's flags, at start.
    let out = Command::new(crate::common::collector_bin())
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(tempfile::tempdir().unwrap().path().join("c.db"))
        .args(["--token", "a=same", "--operator-token", "same"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("operator token") && stderr.contains("`a`"),
        "{stderr}"
    );
}

#[test]
fn the_fleet_view_shows_what_devices_sent() {
    fleet_view(&Running::start_for(
        tokens_with_operator(),
        Limits::default(),
    ));
}

/// Device tokens and the operator's.
pub fn tokens_with_operator() -> Tokens {
    let mut tokens = tokens();
    tokens.set_operator(OPERATOR).unwrap();
    tokens
}

/// Two devices' uploads, as the fleet API, metrics and dashboard show them,
/// through `c` (with [`tokens_with_operator`]) on an empty store.
pub fn fleet_view(c: &Running) {
    let a_records = two_devices(c);
    let (status, body) = get(c, "/v1/fleet", Some(OPERATOR));
    assert_eq!(status, 200, "{body}");
    let fleet: Value = serde_json::from_str(&body).unwrap();
    let devices = fleet["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let (a, b) = (&devices[0], &devices[1]);
    assert_eq!(
        (a["device"].as_str(), a["state"].as_str()),
        (Some("a"), Some("ok"))
    );
    assert_eq!(
        (b["device"].as_str(), b["state"].as_str()),
        (Some("b"), Some("drift"))
    );
    assert_eq!(b["drifting"], json!(["p"]));
    assert_eq!(a["records"], 4);
    assert_eq!(a["status"]["pending_records"], 12);
    assert_eq!(b["status"]["pending_records"], 250);
    assert_eq!(a["sluice_version"], "0.9.1");
    assert!(a["last_seen_ms"].as_i64().unwrap() > now_ms() - 60_000);

    let (status, body) = get(c, "/v1/fleet/devices/a", Some(OPERATOR));
    assert_eq!(status, 200, "{body}");
    let a: Value = serde_json::from_str(&body).unwrap();
    let sum = |field: &str| -> u64 {
        a["traffic"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[field].as_u64().unwrap())
            .sum()
    };
    assert_eq!((sum("ok"), sum("errors")), (2, 1));
    assert_eq!(a["backlog"][0]["pending_records"], 12);
    let versions: Vec<(String, String)> = a["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["what"].as_str().unwrap().to_owned(),
                v["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("model", "digits"),
        ("preprocess", "pre"),
        ("postprocess", "post"),
        ("sluice", "0.9.1"),
    ] {
        assert!(
            versions.contains(&(expected.0.into(), expected.1.into())),
            "{versions:?}"
        );
    }
    assert!(a["versions"].to_string().contains(&"aa11".repeat(16)));
    assert_eq!(a["drift"][0]["window"]["alarm"], false);
    assert_eq!(a["windows"].as_array().unwrap().len(), 1);

    // The same batch again (a retry after a lost answer) is replayed: the
    // counts stay, the status is taken (it shows the device alive).
    let again = upload(c, "a", "ta", "a-1", a_records, 7);
    assert_eq!(again.body["replayed"], true);
    let a: Value = serde_json::from_str(&get(c, "/v1/fleet/devices/a", Some(OPERATOR)).1).unwrap();
    assert_eq!(a["summary"]["records"], 4);
    assert_eq!(a["summary"]["status"]["pending_records"], 7);
    let ok: u64 = a["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ok"].as_u64().unwrap())
        .sum();
    assert_eq!(ok, 2);

    // Metrics: batches by outcome, records, conflicts, per-device gauges.
    let conflict = post(&c.url(), "ta", &batch_json("a", "a-1"));
    assert_eq!(conflict.status, 409);
    let (status, metrics) = get(c, "/metrics", Some(OPERATOR));
    assert_eq!(status, 200);
    for line in [
        "sluice_collector_batches_total{outcome=\"stored\",status=\"200\"} 2",
        "sluice_collector_batches_total{outcome=\"replayed\",status=\"200\"} 1",
        "sluice_collector_batches_total{outcome=\"refused\",status=\"409\"} 1",
        "sluice_collector_records_total{outcome=\"stored\"} 6",
        "sluice_collector_conflicts_total{kind=\"key_reused\"} 1",
        "sluice_collector_device_drift{device=\"b\"} 1",
        "sluice_collector_device_pending_records{device=\"b\"} 250",
        "sluice_collector_requests_in_progress 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("sluice_collector_device_last_seen_age_seconds{device=\"a\"}"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    // Asked for the Prometheus text format, the same in that format, which
    // promtool finds nothing wrong with.
    let plain = client()
        .get(format!("{}/metrics", c.url()))
        .bearer_auth(OPERATOR)
        .header("Accept", "text/plain;version=0.0.4")
        .send()
        .unwrap();
    assert!(
        plain.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let plain = plain.text().unwrap();
    assert!(
        plain.contains("# TYPE sluice_collector_batches_total counter"),
        "{plain}"
    );
    match sluice_testkit::promtool_check_metrics(&plain) {
        Ok(checked) => checked.unwrap(),
        Err(missing) => eprintln!("\n*** SKIPPED the promtool check: {missing} ***\n"),
    }
}

fn batch_json(device: &str, key: &str) -> Value {
    batch(device, key, vec![record(device, 99, "other")])
}

#[test]
fn hostile_record_fields_are_escaped_in_the_dashboard() {
    let c = Running::start_for(tokens_with_operator(), Limits::default());
    let script = "<script>alert('feature')</script>";
    let attribute = "\"><img src=x onerror=alert(1)>";
    upload(
        &c,
        "a",
        "ta",
        "a-1",
        vec![window("a", 1, true, script, attribute)],
        1,
    );
    // The Sluice version comes from records and status too.
    let mut hostile = serde_json::to_value(result("a", 2, false)).unwrap();
    hostile["sluice_version"] = json!("<b>bold</b>");
    hostile["provenance"]["model"] = json!("<iframe src=//evil>");
    let answer = post(
        &c.url(),
        "ta",
        &json!({"protocol": 1, "device": "a", "key": "a-2", "records": [hostile]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    for path in ["/dashboard", "/dashboard/devices/a"] {
        let (status, html) = get(&c, path, Some(OPERATOR));
        assert_eq!(status, 200);
        for raw in ["<script", "<img", "<iframe", "<b>"] {
            assert!(!html.contains(raw), "{path} has {raw} unescaped:\n{html}");
        }
    }
    let (_, html) = get(&c, "/dashboard/devices/a", Some(OPERATOR));
    assert!(
        html.contains("&lt;script&gt;alert(&#39;feature&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(html.contains("&lt;iframe src=//evil&gt;"), "{html}");
}

/// Schema 2, as the previous collector created its files.
const SCHEMA_2: &str = "
CREATE TABLE results(device TEXT NOT NULL, id TEXT NOT NULL, pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL, batch_key TEXT NOT NULL, received_at_ms INTEGER NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY(device, id));
CREATE INDEX results_device_seq ON results(device, seq);
CREATE TABLE batches(device TEXT NOT NULL, key TEXT NOT NULL, received_at_ms INTEGER NOT NULL,
    stored INTEGER NOT NULL, duplicates INTEGER NOT NULL, digest TEXT, PRIMARY KEY(device, key));
PRAGMA application_id = 1397506883;
PRAGMA user_version = 2;
";

#[test]
fn a_schema_2_file_is_migrated_with_last_seen_and_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let now = now_ms();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_2).unwrap();
        let mut insert = conn
            .prepare("INSERT INTO results VALUES ('a', ?1, 'p', ?2, 'old', ?3, ?4)")
            .unwrap();
        for (seq, failed) in [(1, false), (2, true), (3, false)] {
            let body = serde_json::to_string(&result("a", seq, failed)).unwrap();
            let id = result_id("a", "p", Some("0b"), seq);
            insert
                .execute(rusqlite::params![id, seq, now - 1000, body])
                .unwrap();
        }
        // A record from long ago: counted, but past the retention's series.
        insert
            .execute(rusqlite::params![
                "a/p/9",
                9,
                now - 30 * 86_400_000,
                "{\"kind\":\"result\"}"
            ])
            .unwrap();
        conn.execute(
            "INSERT INTO batches VALUES ('a', 'old', ?1, 4, 0, NULL)",
            [now - 1000],
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let fleet = store.fleet(&["a".into(), "b".into()], now, 60_000).unwrap();
    assert_eq!(fleet[0].last_seen_ms, Some(now - 1000));
    assert_eq!(fleet[0].records, 4);
    assert_eq!(fleet[1].last_seen_ms, None);
    let a = store
        .fleet_device("a", now - 86_400_000, now, 60_000)
        .unwrap();
    let ok: u64 = a.traffic.iter().map(|t| t.ok).sum();
    let errors: u64 = a.traffic.iter().map(|t| t.errors).sum();
    assert_eq!((ok, errors), (2, 1));
    drop(store);
    let version: i32 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    // The rollout tables came along (schema 3 to 4), and the control
    // plane's (4 to 5).
    let store = Store::open(&path).unwrap();
    assert!(store.rollouts().unwrap().is_empty());
    assert!(store.groups(None).unwrap().is_empty());
    assert!(store.audit_page(0, 10).unwrap().entries.is_empty());
    drop(store);
    // Opening again is a no-op, and new batches add to the view.
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.fleet(&["a".into()], now, 60_000).unwrap()[0].records,
        4
    );
}
