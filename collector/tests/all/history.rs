//! What the fleet view says about bundles and health: which version runs
//! where, each device's install history (replays it ignored included),
//! its error rate, and the same in `/metrics`. Run on SQLite here and on
//! PostgreSQL by `postgres.rs`.

use crate::common::*;
use crate::fleet::{OPERATOR, get, result, tokens_with_operator, upload};
use crate::rollouts::report;
use serde_json::Value;
use sluice_collector_core::Limits;
use sluice_protocol::{BundleRef, Record};

/// `device`'s result `seq` made with bundle `p` `version`.
fn with_bundle(device: &str, seq: i64, failed: bool, version: u64) -> Record {
    let mut record = result(device, seq, failed);
    if let Record::Result(r) = &mut record {
        r.provenance.bundle = Some(BundleRef {
            name: "p".into(),
            version,
        });
    }
    record
}

#[test]
fn the_fleet_shows_which_version_runs_where_install_histories_and_error_rates() {
    history(&Running::start_for(
        tokens_with_operator(),
        Limits::default(),
    ));
}

/// Device `a` runs `p` 1 then 2 (one result in four failed), `b` runs 1;
/// `a` reported its install steps: through `c` (with
/// [`tokens_with_operator`]) on an empty store.
pub fn history(c: &Running) {
    upload(c, "a", "ta", "k1", vec![with_bundle("a", 1, false, 1)], 0);
    let a2 = (2..6).map(|s| with_bundle("a", s, s == 5, 2)).collect();
    upload(c, "a", "ta", "k2", a2, 0);
    upload(c, "b", "tb", "k3", vec![with_bundle("b", 1, false, 1)], 0);
    report(c, "a", "ta", 10, "p", 2, "installed");
    report(c, "a", "ta", 11, "p", 2, "committed");
    report(c, "a", "ta", 12, "p", 1, "refused");
    report(c, "a", "ta", 13, "-", 0, "ignored");

    let (status, body) = get(c, "/v1/fleet", Some(OPERATOR));
    assert_eq!(status, 200, "{body}");
    let fleet: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        fleet["versions"],
        serde_json::json!([
            {"name": "p", "version": 1, "devices": 1},
            {"name": "p", "version": 2, "devices": 1},
        ]),
        "{fleet:#}"
    );
    let a = &fleet["devices"][0];
    assert_eq!(
        a["bundles"],
        serde_json::json!([{"name": "p", "version": 2}])
    );
    // Install records are not results: 1 failed of 5.
    assert!(
        (a["error_rate"].as_f64().unwrap() - 0.2).abs() < 1e-9,
        "{a}"
    );
    assert_eq!(fleet["devices"][1]["error_rate"].as_f64(), Some(0.0));

    let (_, body) = get(c, "/v1/fleet/devices/a", Some(OPERATOR));
    let device: Value = serde_json::from_str(&body).unwrap();
    let steps: Vec<(&str, u64)> = device["installs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["outcome"].as_str().unwrap(),
                i["version"].as_u64().unwrap(),
            )
        })
        .collect();
    for step in [
        ("installed", 2),
        ("committed", 2),
        ("refused", 1),
        ("ignored", 0),
    ] {
        assert!(steps.contains(&step), "{step:?} in {steps:?}");
    }

    let metrics = client()
        .get(format!("{}/metrics", c.url()))
        .bearer_auth(OPERATOR)
        .send()
        .unwrap()
        .text()
        .unwrap();
    // The Prometheus text format passes promtool with these families filled.
    let plain = client()
        .get(format!("{}/metrics", c.url()))
        .bearer_auth(OPERATOR)
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .unwrap()
        .text()
        .unwrap();
    match sluice_testkit::promtool_check_metrics(&plain) {
        Ok(checked) => checked.unwrap(),
        Err(missing) => eprintln!("\n*** SKIPPED the promtool check: {missing} ***\n"),
    }
    for line in [
        "sluice_collector_device_error_ratio{device=\"a\"} 0.2",
        "sluice_collector_device_install_steps{device=\"a\",outcome=\"refused\"} 1",
        "sluice_collector_device_install_steps{device=\"a\",outcome=\"ignored\"} 1",
        "sluice_collector_bundle_devices{bundle=\"p\",version=\"2\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}
