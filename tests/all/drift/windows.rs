//! Drift windows on held-out data: quiet on it, an alarm on inverted or
//! blurred digits and on scaled or offset records, every window a
//! `drift-window` record; a profile of another model file is refused and the
//! pipeline runs without drift.

use super::{
    DEVICE, TOKEN, accept, anomaly_rows, blurred, collected, csv_item, drifted, example_config,
    inverted, observe, outbox_windows, scaled, wait_for, windows_of, write_profile,
};
use crate::common::{digit_pngs, hex_sha256, http};
use sluice_agent::drift::Profile;
use sluice_agent::runtime::Runtime;
use sluice_collector_core::{Collector, Tokens};
use std::time::Duration;

#[test]
fn digits_drift_windows_stay_quiet_on_held_out_data_and_alarm_on_inverted_and_blurred_images() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = digit_pngs();
    let (reference, stream): (Vec<_>, Vec<_>) = pngs
        .iter()
        .cloned()
        .enumerate()
        .partition(|(ix, _)| ix % 2 == 0);
    let reference: Vec<Vec<u8>> = reference.into_iter().map(|(_, p)| p).collect();
    let stream: Vec<Vec<u8>> = stream.into_iter().map(|(_, p)| p).collect();

    let mut config = example_config("digits", dir.path());
    let runtime = Runtime::start(config.clone()).unwrap();
    let observed = observe(&runtime, &reference, "image/png");
    let profile_path = write_profile(&mut config, &runtime, &observed, dir.path());
    let model_sha = runtime.model_sha256("digits").unwrap().to_owned();
    drop(runtime);

    let mut tokens = Tokens::default();
    tokens.insert(DEVICE, TOKEN).unwrap();
    let collector = Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        &dir.path().join("collector.sqlite"),
        tokens,
    )
    .unwrap();
    config.sync.url = Some(collector.url().to_string());
    config.sync.token = Some(TOKEN.into());
    config.sync.interval_ms = 50;
    config.ingest.listen = Some("127.0.0.1:0".into());
    config.drift.window_items = 75;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();

    // The other half, as it is: three windows of 75, no alarm.
    accept(&agent, "digits", &stream, "image/png");
    let clean = wait_for(Duration::from_secs(60), || {
        let records = collected(&collector);
        (windows_of(&records).len() >= 3 && records.len() >= 225 + 3).then_some(records)
    })
    .expect("three drift windows and every result reach the collector");
    let windows = windows_of(&clean);
    let last_result_seq = clean
        .iter()
        .filter(|r| r["kind"] != "drift-window")
        .map(|r| r["seq"].as_i64().unwrap())
        .max()
        .unwrap();
    for w in &windows {
        assert_eq!(w["items"], 75, "{w}");
        assert_eq!(
            w["alarm"],
            false,
            "a false alarm on held-out data: {:?}",
            drifted(w)
        );
        assert_eq!(w["device"], DEVICE);
        assert_eq!(w["pipeline"], "digits");
        assert_eq!(w["model"], "digits");
        assert_eq!(w["model_sha256"], model_sha.as_str());
        assert_eq!(
            w["profile_sha256"],
            hex_sha256(&std::fs::read(&profile_path).unwrap()).as_str()
        );
        assert_eq!(w["false_alarm_rate"], 0.01);
        let outbox = w["outbox"].as_str().unwrap();
        let seq = w["seq"].as_i64().unwrap();
        assert_eq!(w["id"], format!("{DEVICE}/digits/{outbox}-{seq}").as_str());
        assert!(w["ended_at_ms"].as_i64() >= w["started_at_ms"].as_i64());
        let scores = w["scores"].as_array().unwrap();
        // 60 of 66 features vary in the reference (6 corner pixels are
        // always 0): 58 pixels and the confidence by PSI and KS, the class
        // by JS.
        assert!(scores.len() > 50, "{}", scores.len());
        assert!(
            scores
                .iter()
                .any(|s| s["statistic"] == "js" && s["feature"] == "output.probabilities.class")
        );
        for s in scores {
            assert!(s["threshold"].as_f64().unwrap() > 0.0, "{s}");
        }
    }
    // Window ids come from the results' sequence: the last window was
    // numbered after every input it covers was accepted.
    assert!(windows[2]["seq"].as_i64().unwrap() > last_result_seq);

    // Inverted, then blurred images: each window of 75 raises the alarm.
    let inverted: Vec<Vec<u8>> = stream.iter().take(75).map(|p| inverted(p)).collect();
    accept(&agent, "digits", &inverted, "image/png");
    let w = wait_for(Duration::from_secs(60), || {
        windows_of(&collected(&collector)).get(3).cloned()
    })
    .expect("a fourth drift window");
    assert_eq!(w["alarm"], true, "inverted digits went unnoticed: {w}");
    let inverted_features = drifted(&w);
    assert!(
        inverted_features.iter().any(|f| f.starts_with("input.")),
        "{inverted_features:?}"
    );

    let blurred: Vec<Vec<u8>> = stream
        .iter()
        .skip(75)
        .take(75)
        .map(|p| blurred(p))
        .collect();
    accept(&agent, "digits", &blurred, "image/png");
    let w = wait_for(Duration::from_secs(60), || {
        windows_of(&collected(&collector)).get(4).cloned()
    })
    .expect("a fifth drift window");
    assert_eq!(w["alarm"], true, "blurred digits went unnoticed: {w}");
    eprintln!(
        "inverted: {} drifted scores ({:?}...); blurred: {} ({:?}...)",
        inverted_features.len(),
        &inverted_features[..inverted_features.len().min(4)],
        drifted(&w).len(),
        &drifted(&w)[..drifted(&w).len().min(4)],
    );

    // Metrics: two alarms, three quiet windows, a score per feature.
    let (status, body) = http(
        reqwest::Client::new().get(format!("http://{}/metrics", agent.ingest_addr().unwrap())),
    );
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("sluice_drift_windows_total{pipeline=\"digits\",alarm=\"true\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("sluice_drift_windows_total{pipeline=\"digits\",alarm=\"false\"} 3"),
        "{text}"
    );
    assert!(text.contains("sluice_drift_score{pipeline=\"digits\",feature=\"output.probabilities.class\",statistic=\"js\"}"));
    agent.shutdown();
}

#[test]
fn anomaly_drift_windows_stay_quiet_on_held_out_records_and_alarm_on_scaled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (header, rows) = anomaly_rows();
    let reference: Vec<Vec<u8>> = rows
        .iter()
        .step_by(2)
        .map(|r| csv_item(&header, r))
        .collect();
    let stream: Vec<&String> = rows.iter().skip(1).step_by(2).collect();
    assert_eq!((reference.len(), stream.len()), (86, 85));

    let mut config = example_config("anomaly", dir.path());
    let runtime = Runtime::start(config.clone()).unwrap();
    let observed = observe(&runtime, &reference, "text/csv");
    write_profile(&mut config, &runtime, &observed, dir.path());
    drop(runtime);
    config.drift.window_items = 40;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();

    let clean: Vec<Vec<u8>> = stream
        .iter()
        .take(80)
        .map(|r| csv_item(&header, r))
        .collect();
    accept(&agent, "anomaly", &clean, "text/csv");
    let windows = wait_for(Duration::from_secs(60), || {
        let w = outbox_windows(&agent);
        (w.len() >= 2).then_some(w)
    })
    .expect("two drift windows in the outbox");
    for w in &windows {
        assert_eq!(w["items"], 40);
        assert_eq!(
            w["alarm"],
            false,
            "a false alarm on held-out records: {:?}",
            drifted(w)
        );
        // 30 standardized features and the score's confidence, each by PSI
        // and KS; a single output has no class distribution.
        let scores = w["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 62, "{w}");
        for pair in scores.chunks(2) {
            assert_eq!(
                (&pair[0]["statistic"], &pair[1]["statistic"]),
                (&"psi".into(), &"ks".into())
            );
            assert_eq!(pair[0]["feature"], pair[1]["feature"]);
        }
    }

    // A recalibrated sensor: every feature 30 % higher.
    let shifted: Vec<Vec<u8>> = stream
        .iter()
        .take(40)
        .map(|r| csv_item(&header, &scaled(r, 1.3)))
        .collect();
    accept(&agent, "anomaly", &shifted, "text/csv");
    let w = wait_for(Duration::from_secs(60), || {
        outbox_windows(&agent).get(2).cloned()
    })
    .expect("a third drift window");
    assert_eq!(w["alarm"], true, "scaled records went unnoticed: {w}");
    eprintln!("scaled records: {} drifted scores", drifted(&w).len());
    agent.shutdown();
}

#[test]
fn a_profile_of_another_model_file_is_refused_and_the_pipeline_runs_without_drift() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = digit_pngs();
    let mut config = example_config("digits", dir.path());
    let runtime = Runtime::start(config.clone()).unwrap();
    let observed = observe(&runtime, &pngs[..100], "image/png");
    let path = write_profile(&mut config, &runtime, &observed, dir.path());
    drop(runtime);
    // The same profile, bound to another file's digest.
    let mut profile: Profile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let running = profile.model_sha256.clone();
    profile.model_sha256 = "0".repeat(64);
    profile.write(&path).unwrap();

    let err = sluice_agent::drift::Drift::load(&path, "digits", "digits", &running, &config.drift)
        .err()
        .expect("refused")
        .to_string();
    for part in [
        &"0".repeat(64),
        &running,
        "sluice model profile",
        "--pipeline digits",
    ] {
        assert!(err.contains(part), "{part} not in: {err}");
    }

    config.drift.window_items = 10;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    accept(&agent, "digits", &pngs[100..130], "image/png");
    assert!(
        wait_for(Duration::from_secs(30), || (agent.outbox().pending().0
            >= 30)
            .then_some(()))
        .is_some(),
        "the pipeline runs"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(agent.outbox().pending().0, 30, "no drift windows");
    assert!(outbox_windows(&agent).is_empty());
    agent.shutdown();
}
